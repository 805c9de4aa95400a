//! The `netmux` CLI, apart from the daemon.
//!
//! [`cli`] holds the subcommands that do more than send one request
//! (`status`, `logs`, `cleanup`, completions, the man page); [`doctor`]
//! checks a workstation; [`install`] puts the binaries, unit and config in
//! place; [`credentials`] resolves the user's kubeconfig, running its
//! credential plugins as that user, into the inline
//! [`netmux_api::kube::KubeAccess`] the daemon accepts. The daemon talks to
//! this crate only through [`netmux_api`].

pub mod cli;
pub mod credentials;
pub(crate) mod doctor;
pub mod environment;
pub mod install;
pub mod intercepts;
pub mod mounts;
