//! Async pieces shared by daemon and server.
pub mod blackout;
mod branch;
pub mod pipe;
pub mod quic;
pub mod stream;
pub mod stream_socket;
pub mod udp;
pub mod udp_socket;
