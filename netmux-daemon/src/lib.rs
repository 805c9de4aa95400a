//! netmuxd, the workstation daemon. The `netmux` CLI is the `netmux-cli`
//! crate; it reuses this library's config parser and dialers for `doctor`,
//! and this crate never depends on it.
//!
//! [`config`] is read at start; [`endpoint`]s hold one QUIC connection per
//! server; the [`daemon`] reconciles started services into [`listeners`],
//! [`redirect`]s and [`system::hosts`] names; [`control`] serves the CLI's
//! [`api`] on a unix socket; [`metrics`] exports Prometheus metrics.

/// The control API types, from `netmux-api` (shared with the CLI).
pub use netmux_api as api;
pub(crate) mod claims;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dns;
pub(crate) mod endpoint;
pub(crate) mod health;
pub(crate) mod listeners;
pub mod metrics;
pub mod redirect;
pub(crate) mod reverse;
pub(crate) mod status;
pub mod system;
pub mod transport;
pub(crate) mod udp;
