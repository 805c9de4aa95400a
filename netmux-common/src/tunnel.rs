//! Async pieces shared by daemon and server.
pub mod pipe;
pub mod quic;
pub mod stream_socket;
pub mod udp;
