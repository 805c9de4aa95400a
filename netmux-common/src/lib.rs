//! Shared by every part of netmux.
//!
//! * [`redirect`]: `no_std`, `#[repr(C)]` map types shared between the eBPF
//!   connect hooks and the daemon that fills the maps.
//! * [`proto`] (feature `proto`, part of `std`): the sans-IO protocol core —
//!   framing, hello, catalog events, stream headers, the stream-socket
//!   framing, the control [`proto::session`] state machines and the frames
//!   server replicas exchange ([`proto::replica`]). No sockets,
//!   no clock, no quinn or tokio: drivers feed bytes and `now` in, and the
//!   fuzz targets build it alone (`default-features = false, features =
//!   ["proto"]`).
//! * [`tunnel`] (feature `std`): the thin async pieces both ends share — QUIC
//!   settings and the byte pipe between a TCP socket and a QUIC stream.
//! * [`sync`] (feature `std`): the poison-tolerant [`sync::lock`] (and
//!   `read`/`write` for `RwLock`).
//! * `metrics` (feature `metrics`): deleting a label's Prometheus series.
#![cfg_attr(not(any(feature = "std", feature = "proto")), no_std)]

pub mod redirect;

#[cfg(feature = "std")]
pub mod config;

#[cfg(feature = "proto")]
pub mod proto;

#[cfg(feature = "metrics")]
pub mod metrics;

#[cfg(feature = "std")]
pub mod sync;

#[cfg(feature = "std")]
pub mod tunnel;
