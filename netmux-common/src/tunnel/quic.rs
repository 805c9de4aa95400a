//! QUIC settings shared by daemon and server.
//!
//! Tuned from measurements (BENCHMARKS.md): large UDP socket buffers (the
//! default 208 KiB receive buffer overflows at multi-Gbit/s), BBR congestion
//! control (random loss must not collapse the tunnel) with a windowed
//! minimum RTT and delivery-rate bandwidth samples ([`congestion`]: the
//! tunnel outlives the path it was opened on), a send window that follows
//! the congestion window ([`SEND_WINDOW_ABOVE_CWND`]), generous
//! flow-control windows (on the server only once the hello
//! succeeded: [`server_transport_config`]), keepalive so a dead peer is noticed
//! within seconds, and MTU discovery up to jumbo frames ([`MAX_UDP_PAYLOAD`]).
//!
//! MTU discovery runs once per path, then every ten minutes (quinn's
//! default). When the workstation changes network, netmuxd migrates the
//! session and restarts discovery from 1,200 bytes (`health.rs`,
//! vendor/quinn change 5), so a connection carried from a jumbo network
//! onto a 1,500-byte one, or onto a VPN with smaller packets, does not
//! send the old size into a black hole.

mod client;
pub mod congestion;
mod crypto;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) use tests::test_pair;

pub use client::client_config;
pub use crypto::crypto_provider;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::ControllerFactory;
use quinn::{IdleTimeout, TransportConfig, VarInt};

/// Keepalive interval: a PING when the connection is otherwise idle.
pub const KEEPALIVE: Duration = Duration::from_secs(1);
/// Idle timeout of [`transport_config`] as it comes (the bench's peers).
/// Daemon and server replace it with `survive_blackout`
/// ([`super::blackout::set_idle_timeout`]): a silent peer is shown
/// `degraded` within seconds, and its session is kept up to the bound.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// UDP socket send and receive buffer size requested.
pub const SOCKET_BUFFER: usize = 8 * 1024 * 1024;
/// Concurrent proxied connections one QUIC connection may carry.
pub const MAX_STREAMS: u32 = 16 * 1024;
/// Bytes one stream may have in flight towards the receiver. One stream is
/// one proxied TCP connection, so this caps a single transfer at about
/// window ÷ RTT, and under loss at about window ÷ 2 RTT (the bytes behind
/// a lost packet wait for its retransmission): at 20 ms raw quinn moved
/// 2.9 Gbit/s with 8 MiB and 6.0 with 32 MiB. It also bounds the queue a
/// bulk stream can build where the path is slowest, which every other
/// stream of the connection then waits in: on the bench's lossy path
/// (20 ms, 1% loss, a receiver short of CPU) 8 / 16 / 32 MiB gave 1.0–1.2 /
/// 1.6–1.7 / 2.0–2.3 Gbit/s of bulk and 44–49 / 59–81 / 118–169 ms p99 for
/// echo requests beside it (BENCHMARKS.md History, 2026-12-05 09:00).
pub const STREAM_RECEIVE_WINDOW: u32 = 16 * 1024 * 1024;
/// Bytes all streams of a connection may have in flight towards the
/// receiver.
pub const RECEIVE_WINDOW: u32 = 64 * 1024 * 1024;
/// Bytes written to a connection's streams may exceed its congestion window
/// by this much before writers wait (vendored quinn-proto, change 8): what
/// waits to be sent is still in the caches when it is copied into a packet,
/// and the window still grows with the path's bandwidth-delay product. On
/// the bench's lan BBR's window is 0.5–1 MB; with this margin the sender
/// moves as much as with a fixed 64 MiB window, with none it moved half
/// (BENCHMARKS.md History, 2026-12-05 02:35–03:55).
pub const SEND_WINDOW_ABOVE_CWND: u64 = 512 * 1024;
/// The largest UDP payload netmux sends and accepts: a 9,000-byte MTU
/// (jumbo frames, as in an AWS VPC or a data centre's network) less an
/// IPv6 and a UDP header. MTU discovery (quinn's DPLPMTUD, RFC 8899) climbs
/// towards it on each path and stops within 20 bytes of what the path
/// carries: about 1,450 on Ethernet's 1,500, 8,952 on a jumbo path, where a
/// packet carries six times the data for the same per-packet work
/// (BENCHMARKS.md, "MTU 9000" rows).
pub const MAX_UDP_PAYLOAD: u16 = 8952;
const _: () = assert!(MAX_UDP_PAYLOAD >= 1200 && MAX_UDP_PAYLOAD <= 65_527);
/// The server's connection-level receive window until the hello succeeded:
/// room for the hello (one frame, at most 64 KiB) and little more, so an
/// unauthenticated peer cannot make the server buffer megabytes.
pub const PRE_HELLO_RECEIVE_WINDOW: u32 = 128 * 1024;

/// The transport configuration both ends use, with netmux's BBR
/// ([`congestion::BbrConfig`]).
pub fn transport_config() -> TransportConfig {
    transport_config_with(Arc::new(congestion::BbrConfig::default()))
}

/// [`transport_config`] with another congestion controller (the bench's raw
/// quinn peer runs quinn's own BBR with otherwise identical settings).
pub fn transport_config_with(
    congestion: Arc<dyn ControllerFactory + Send + Sync + 'static>,
) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(KEEPALIVE));
    if let Ok(idle) = IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.receive_window(VarInt::from_u32(RECEIVE_WINDOW));
    t.send_window(64 * 1024 * 1024);
    t.send_window_above_congestion_window(Some(SEND_WINDOW_ABOVE_CWND));
    t.congestion_controller_factory(congestion);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    t
}

/// How `netmux status` describes a connection's path: its round-trip time
/// and the size of its packets (the largest UDP payload MTU discovery
/// found), naming jumbo frames when the path carries them.
pub fn describe_path(rtt: Duration, packet: u16) -> String {
    let jumbo = if packet > 1500 { " (jumbo frames)" } else { "" };
    format!(
        "RTT {:.1} ms, packets of {packet} bytes{jumbo}",
        rtt.as_secs_f64() * 1000.0
    )
}

/// The endpoint configuration of daemon and server: datagrams up to
/// [`MAX_UDP_PAYLOAD`] accepted (quinn's default is 1,472, which would cap
/// the peer's MTU discovery there).
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::default();
    // In range by the assertion above, so this cannot fail.
    let _ = c.max_udp_payload_size(MAX_UDP_PAYLOAD);
    c
}

/// The server's transport configuration: [`transport_config`] with the
/// windows nearly closed until the daemon's hello succeeded: one
/// bidirectional stream (the control stream) and
/// [`PRE_HELLO_RECEIVE_WINDOW`] bytes. [`open_after_hello`] opens them.
pub fn server_transport_config() -> TransportConfig {
    let mut t = transport_config();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1));
    t.receive_window(VarInt::from_u32(PRE_HELLO_RECEIVE_WINDOW));
    t
}

/// Opens the windows of a connection whose hello succeeded: the full
/// receive window, and `streams` concurrent bidirectional streams from the
/// peer (the control stream included).
pub fn open_after_hello(conn: &quinn::Connection, streams: u32) {
    conn.set_receive_window(VarInt::from_u32(RECEIVE_WINDOW));
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(streams));
}

/// A QUIC endpoint on `socket` (as from [`bind_udp`]), a server too if
/// `server` is given, whose socket is netmux's
/// ([`super::udp_socket::quic_socket`]: registered for readable only, a
/// short receive batch clears the readiness). Must be called within a
/// tokio runtime.
pub fn endpoint(
    server: Option<quinn::ServerConfig>,
    socket: UdpSocket,
) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(),
        server,
        super::udp_socket::quic_socket(socket)?,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Binds a UDP socket with large buffers for a QUIC endpoint.
///
/// As root, `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` bypass `net.core.rmem_max`;
/// otherwise the kernel clamps the request, which is logged, not fatal.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    if socket.set_recv_buffer_size(SOCKET_BUFFER).is_err() {
        tracing::debug!("could not set UDP receive buffer");
    }
    if socket.set_send_buffer_size(SOCKET_BUFFER).is_err() {
        tracing::debug!("could not set UDP send buffer");
    }
    force_buffers(&socket);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

#[cfg(target_os = "linux")]
fn force_buffers(socket: &socket2::Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    // Only root may exceed net.core.{r,w}mem_max; others keep what they got.
    if let Err(e) = setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER) {
        tracing::debug!(error = %e, "SO_RCVBUFFORCE not permitted");
    }
    if let Err(e) = setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER) {
        tracing::debug!(error = %e, "SO_SNDBUFFORCE not permitted");
    }
}

#[cfg(not(target_os = "linux"))]
fn force_buffers(_: &socket2::Socket) {}
