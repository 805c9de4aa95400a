//! The netmux wire protocol, sans IO.
//!
//! A QUIC connection (ALPN [`ALPN`]) carries:
//! 1. one control stream, opened first by the daemon: [`hello`] exchange, then
//!    [`control`] messages (catalog snapshot and incremental events) as
//!    length-prefixed [`frame`]s;
//! 2. one bidirectional stream per proxied TCP connection, opened by the
//!    daemon with a [`stream::StreamHeader`] and answered by the server with a
//!    [`stream::OpenResult`] before any byte of the target.
//!
//! Nothing here touches a socket or a clock; [`session`] holds the state
//! machines that the daemon and server drivers feed. [`replica`] is what
//! server replicas say to each other about intercepts (ALPN
//! [`replica::ALPN`]).

pub mod catalog;
pub mod cidr;
pub mod codec;
pub mod control;
pub mod datagram;
pub mod frame;
pub mod hello;
pub mod left_out;
pub mod open;
pub mod replaced;
pub mod replica;
pub mod session;
pub mod stream;
pub mod stream_framing;

/// ALPN protocol id negotiated by TLS; a peer without it is not netmux.
pub const ALPN: &[u8] = b"netmux/1";

/// Protocol version carried in the hello. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 1;

/// Magic bytes that open the control stream in both directions.
pub const MAGIC: [u8; 4] = *b"NMUX";

/// QUIC application error codes used to close connections and reset streams.
pub mod error_code {
    /// Orderly close (daemon disconnect, server shutdown).
    pub const NO_ERROR: u32 = 0;
    /// The peer broke the protocol (bad magic, bad frame, unexpected message).
    pub const PROTOCOL_VIOLATION: u32 = 1;
    /// The hello was refused (version, credential).
    pub const REFUSED: u32 = 2;
    /// The TCP side of a proxied connection was reset.
    pub const TCP_RESET: u32 = 3;
    /// The peer took too long to complete the hello.
    pub const HELLO_TIMEOUT: u32 = 4;
    /// Internal error on the closing side.
    pub const INTERNAL: u32 = 5;
}
