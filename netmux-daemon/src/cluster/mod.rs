//! Kubernetes endpoints: the server runs in a cluster, reached with the
//! user's own kubeconfig.
//!
//! The split follows who may do what. The daemon is a system service: it
//! never reads a user's home directory and never runs a kubeconfig's
//! credential plugin. `netmux connect` (the CLI, running as the user)
//! resolves the kubeconfig into one self-contained context
//! (`netmux_cli::credentials::resolve`: files inlined, `exec` plugins run as that
//! user) and hands it to the daemon in a [`KubeAccess`]. The daemon
//! ([`forward::KubeLink`]) accepts only inline credentials, finds a ready
//! server pod behind the configured Service and opens a port-forward to
//! it, over which QUIC runs as length-prefixed datagrams
//! ([`crate::transport::dial_stream`]).

pub(crate) mod environment;
pub mod forward;
pub(crate) mod workload;

pub(crate) use netmux_api::kube::{port_ref, KubeAccess, KubeError, KubeSettings, PortRef};
