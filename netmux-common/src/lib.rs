//! Shared by every part of netmux.
//!
//! * [`redirect`]: `no_std`, `#[repr(C)]` map types shared between the eBPF
//!   connect hooks and the daemon that fills the maps.
//! * [`proto`] (feature `std`): the sans-IO protocol core — framing, hello,
//!   catalog events, stream headers and the control [`proto::session`] state
//!   machines. No sockets, no clock: drivers feed bytes and `now` in.
//! * [`tunnel`] (feature `std`): the thin async pieces both ends share — QUIC
//!   settings and the byte pipe between a TCP socket and a QUIC stream.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod redirect;

#[cfg(feature = "std")]
pub mod config;

#[cfg(feature = "std")]
pub mod proto;

#[cfg(feature = "std")]
pub mod tunnel;
