//! netmuxd, the workstation daemon, and the library behind the `netmux` CLI.
//!
//! [`config`] is read at start; [`endpoint`]s hold one QUIC connection per
//! server; the [`daemon`] reconciles started services into [`listeners`],
//! [`redirect`]s and [`system::hosts`] names; [`control`] serves the CLI's
//! [`api`] on a unix socket; [`metrics`] exports Prometheus metrics.

pub mod api;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod endpoint;
pub mod listeners;
pub mod metrics;
pub mod redirect;
pub mod reverse;
pub mod system;
pub mod transport;
pub mod udp;
