//! How an endpoint reaches its server's QUIC endpoint.
//!
//! `quic` (default) dials UDP from the endpoint's shared socket ([`dial_udp`]);
//! `tcp` opens a TCP connection to the server's `stream_listen` port and
//! runs QUIC over it as length-prefixed datagrams
//! ([`netmux_common::tunnel::stream_socket`]): for networks that drop UDP
//! and for `kubectl port-forward`, which forwards TCP only. Each attempt
//! opens a new stream, so the endpoint's reconnect loop re-dials it too.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use netmux_common::proto::error_code;
use netmux_common::tunnel::quic;
use netmux_common::tunnel::stream_socket::StreamSocket;
use netmux_common::tunnel::udp_socket::any_port;
use quinn::{Connection, VarInt};
use tokio::io::{AsyncRead, AsyncWrite};

/// How long a TCP connect to the server may take.
pub(crate) const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the QUIC handshake over a byte stream (TCP, port-forward) may
/// take once the stream is open.
const STREAM_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why dialling the server failed, before any netmux protocol ran.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// TLS or socket setup (a bad CA, no socket, no QUIC endpoint, a TCP
    /// connect that failed).
    #[error("{0}")]
    Setup(String),
    /// The QUIC handshake or connection failed.
    #[error("QUIC: {0}")]
    Quic(String),
}

/// The QUIC client configuration trusting `ca_pem` (TLS 1.3, netmux's ALPN
/// and transport settings); also used by `netmux doctor`'s probes.
pub fn client_config(ca_pem: &str) -> Result<quinn::ClientConfig, DialError> {
    client_config_with(ca_pem, quic::transport_config())
}

/// [`client_config`] with the given QUIC transport settings.
pub(crate) fn client_config_with(
    ca_pem: &str,
    transport: quinn::TransportConfig,
) -> Result<quinn::ClientConfig, DialError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut reader = ca_pem.as_bytes();
    for cert in rustls_pemfile::certs(&mut reader) {
        let cert = cert.map_err(|e| DialError::Setup(format!("CA PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| DialError::Setup(format!("CA certificate rejected: {e}")))?;
    }
    quic::client_config(roots, transport).map_err(DialError::Setup)
}

/// Dials `server` over UDP from the endpoint's QUIC socket `shared`, made
/// on first use and again when the address family changes (the `bool` is
/// "IPv6").
pub(crate) async fn dial_udp(
    client: quinn::ClientConfig,
    server: SocketAddr,
    server_name: &str,
    shared: &mut Option<(quinn::Endpoint, bool)>,
) -> Result<Connection, DialError> {
    let v6 = server.is_ipv6();
    let endpoint = match shared {
        Some((e, fam)) if *fam == v6 => e.clone(),
        _ => {
            let bind = any_port(v6);
            let socket =
                quic::bind_udp(bind).map_err(|e| DialError::Setup(format!("UDP socket: {e}")))?;
            let e = quic::endpoint(None, socket)
                .map_err(|e| DialError::Setup(format!("QUIC endpoint: {e}")))?;
            *shared = Some((e.clone(), v6));
            e
        }
    };
    endpoint
        .connect_with(client, server, server_name)
        .map_err(|e| DialError::Quic(e.to_string()))?
        .await
        .map_err(|e| DialError::Quic(e.to_string()))
}

/// Opens a TCP connection to `server` and a QUIC connection over it; the
/// TCP connection rides out blackouts up to `survive_blackout`.
pub async fn dial_tcp(
    server: SocketAddr,
    client: quinn::ClientConfig,
    server_name: &str,
    survive_blackout: Duration,
) -> Result<Connection, DialError> {
    let tcp = tokio::time::timeout(TCP_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(server))
        .await
        .map_err(|_| DialError::Setup(format!("TCP connect to {server}: timed out")))?
        .map_err(|e| DialError::Setup(format!("TCP connect to {server}: {e}")))?;
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY");
    }
    netmux_common::tunnel::stream_socket::keep_through_blackout(&tcp, survive_blackout);
    let local = tcp
        .local_addr()
        .map_err(|e| DialError::Setup(format!("TCP socket: {e}")))?;
    dial_stream(tcp, local, server, client, server_name).await
}

/// Runs a QUIC connection over a Kubernetes port-forward: the local end is
/// named as loopback of the pod address's family, the far end as the pod.
pub async fn dial_forward(
    forward: crate::cluster::forward::Forward,
    client: quinn::ClientConfig,
    server_name: &str,
) -> Result<Connection, DialError> {
    let loopback: std::net::IpAddr = if forward.peer.is_ipv6() {
        std::net::Ipv6Addr::LOCALHOST.into()
    } else {
        std::net::Ipv4Addr::LOCALHOST.into()
    };
    let local = SocketAddr::new(loopback, 0);
    dial_stream(forward.stream, local, forward.peer, client, server_name).await
}

/// Runs a QUIC connection over any byte stream whose other end feeds a
/// netmux server's stream listener (a TCP connection, a port-forward).
/// `local` and `peer` only name the two ends (same address family); the
/// connection is closed when the stream ends.
pub(crate) async fn dial_stream<S>(
    stream: S,
    local: SocketAddr,
    peer: SocketAddr,
    client: quinn::ClientConfig,
    server_name: &str,
) -> Result<Connection, DialError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (socket, mut stream_closed) = StreamSocket::new(stream, local, peer);
    // The endpoint lives as long as its connection: dropping this handle
    // leaves it to the connection, whose end drops the socket and stream.
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        quic::endpoint_config(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| DialError::Setup(format!("QUIC endpoint: {e}")))?;
    let connecting = endpoint
        .connect_with(client, peer, server_name)
        .map_err(|e| DialError::Quic(e.to_string()))?;
    // The handshake ends with the stream: a server that accepted the TCP
    // connection and died before answering (its listener still open while
    // it is being killed) must not hold the dial until the idle timeout.
    let conn = tokio::select! {
        c = connecting => c.map_err(|e| DialError::Quic(e.to_string()))?,
        _ = &mut stream_closed => {
            return Err(DialError::Quic(format!(
                "the stream to {peer} ended during the QUIC handshake"
            )))
        }
        _ = tokio::time::sleep(STREAM_HANDSHAKE_TIMEOUT) => {
            return Err(DialError::Quic(format!(
                "no QUIC handshake from {peer} within {}s over the stream",
                STREAM_HANDSHAKE_TIMEOUT.as_secs()
            )))
        }
    };
    // A closed stream ends the connection at once rather than after the
    // idle timeout.
    let watched = conn.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stream_closed => watched.close(
                VarInt::from_u32(error_code::NO_ERROR),
                b"datagram stream closed",
            ),
            _ = watched.closed() => {}
        }
    });
    Ok(conn)
}

/// What a path probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathProbe {
    /// The server's QUIC endpoint answered: the path works. `local` is the
    /// address the kernel sends from towards the server now.
    Answered {
        /// Source address of the probe.
        local: std::net::IpAddr,
    },
    /// Nothing listens on the server's port (ICMP port unreachable): the
    /// server process is gone, and every session it held with it.
    Refused,
    /// No answer within the timeout: the path is still down (or the local
    /// address could not even be chosen: `local` is `None`).
    Silent {
        /// Source address the kernel would use, if it has a route.
        local: Option<std::net::IpAddr>,
    },
}

/// How long a path probe waits for the server's answer.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Probes the path to `server`'s QUIC endpoint outside any connection.
///
/// A connected UDP socket sends one padded long-header packet with a
/// reserved version (RFC 9000 15: versions `0x?a?a?a?a` are never
/// supported): a live endpoint answers with Version Negotiation, a closed
/// port with ICMP port unreachable (reported on a connected socket), a dead
/// path with nothing. The connected socket also names the local address
/// the kernel chose, which tells a change of network.
pub(crate) async fn probe_path(server: SocketAddr) -> PathProbe {
    let bind = any_port(server.is_ipv6());
    let socket = match tokio::net::UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "probe socket");
            return PathProbe::Silent { local: None };
        }
    };
    if let Err(e) = socket.connect(server).await {
        // No route (the interface is gone): the path is down.
        tracing::debug!(%server, error = %e, "probe: no route");
        return PathProbe::Silent { local: None };
    }
    let local = match socket.local_addr() {
        Ok(a) => a.ip(),
        Err(_) => return PathProbe::Silent { local: None },
    };
    let packet = version_probe(rand_id());
    if let Err(e) = socket.send(&packet).await {
        return match e.kind() {
            std::io::ErrorKind::ConnectionRefused => PathProbe::Refused,
            _ => PathProbe::Silent { local: Some(local) },
        };
    }
    let mut buf = [0u8; 1500];
    match tokio::time::timeout(PROBE_TIMEOUT, socket.recv(&mut buf)).await {
        Ok(Ok(_)) => PathProbe::Answered { local },
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => PathProbe::Refused,
        _ => PathProbe::Silent { local: Some(local) },
    }
}

/// A QUIC long-header packet of 1200 bytes (servers ignore shorter
/// Initial-sized datagrams) with reserved version `0x1a2a3a4a` and the
/// connection ids `id`, which a server answers with Version Negotiation.
fn version_probe(id: [u8; 8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(1200);
    p.push(0xc0);
    p.extend_from_slice(&0x1a2a_3a4a_u32.to_be_bytes());
    p.push(8);
    p.extend_from_slice(&id);
    p.push(8);
    p.extend_from_slice(&id);
    p.resize(1200, 0);
    p
}

fn rand_id() -> [u8; 8] {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish().to_be_bytes()
}

/// The kernel's route towards the server, as a connected UDP socket sees it
/// (no packet sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The address packets leave from.
    pub local: IpAddr,
    /// The route's MTU (Linux `IP_MTU`/`IPV6_MTU`: the interface's, or a
    /// smaller path MTU the kernel learned from an ICMP message).
    pub mtu: Option<u32>,
}

/// The kernel's route to `server` now: a connected UDP socket, nothing sent.
pub fn route_to(server: SocketAddr) -> Option<Route> {
    let bind = any_port(server.is_ipv6());
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(server).ok()?;
    let local = s.local_addr().ok()?.ip();
    Some(Route {
        local,
        mtu: route_mtu(&s, server.is_ipv6()),
    })
}

#[cfg(target_os = "linux")]
fn route_mtu(s: &std::net::UdpSocket, v6: bool) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let (level, name) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    let mut mtu: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).ok()?;
    // SAFETY: `s` is an open socket for the duration of the call; `mtu` and
    // `len` are valid and writable, and `len` holds the size of `mtu`, so
    // the kernel writes at most that many bytes into it.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    u32::try_from(mtu).ok().filter(|m| *m > 0)
}

#[cfg(not(target_os = "linux"))]
fn route_mtu(_: &std::net::UdpSocket, _: bool) -> Option<u32> {
    None
}

impl Route {
    /// The largest UDP payload the route carries: its MTU less the IP and
    /// UDP headers.
    pub fn udp_payload(&self) -> Option<u32> {
        let headers = if self.local.is_ipv6() { 40 + 8 } else { 20 + 8 };
        self.mtu.map(|mtu| mtu.saturating_sub(headers))
    }

    /// Why QUIC over UDP cannot cross this route to `server`, if it
    /// cannot: every QUIC Initial packet carries 1,200 bytes of UDP payload.
    /// Its `Display` is the problem; [`TOO_SMALL_FOR_QUIC_FIX`] the fix.
    pub fn too_small_for_quic(&self, server: SocketAddr) -> Option<TooSmallForQuic> {
        let limit = self.udp_payload()?;
        let mtu = self.mtu?;
        (limit < u32::from(QUIC_MIN_PACKET)).then_some(TooSmallForQuic { server, limit, mtu })
    }
}

/// Whether the kernel's route to `server` now is too small for QUIC over
/// UDP (before a handshake that could only time out): `netmux connect` and
/// `netmux doctor` ask the same question.
pub fn route_too_small_for_quic(server: SocketAddr) -> Option<TooSmallForQuic> {
    route_to(server).and_then(|r| r.too_small_for_quic(server))
}

/// A route toward the server whose MTU cannot carry QUIC's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooSmallForQuic {
    /// The server.
    pub server: SocketAddr,
    /// The largest UDP payload the route carries.
    pub limit: u32,
    /// The route's MTU.
    pub mtu: u32,
}

impl std::fmt::Display for TooSmallForQuic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the route to {} carries UDP payloads of at most {} bytes (MTU {}), below the {} QUIC needs",
            self.server, self.limit, self.mtu, QUIC_MIN_PACKET
        )
    }
}

/// What to do about a [`TooSmallForQuic`] route.
pub const TOO_SMALL_FOR_QUIC_FIX: &str = "set `transport = \"tcp\"` for this endpoint (QUIC over \
     TCP), or raise the MTU of the interface toward the server";

/// The smallest UDP payload QUIC sends (RFC 9000 14): every Initial packet,
/// and where MTU discovery starts again after a restart.
pub const QUIC_MIN_PACKET: u16 = 1200;

/// Moves `endpoint`'s connections to a new UDP socket (new port, and the
/// address the kernel picks now): every connection sends from it at once,
/// which the server takes as a migration (RFC 9000 9) and answers on a
/// fresh path.
pub(crate) fn rebind(endpoint: &quinn::Endpoint, v6: bool) -> std::io::Result<SocketAddr> {
    let bind = any_port(v6);
    let socket = netmux_common::tunnel::quic::bind_udp(bind)?;
    let local = socket.local_addr()?;
    endpoint.rebind(socket)?;
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_names_its_udp_payload_and_whether_quic_fits() {
        let server: SocketAddr = "10.0.0.1:7443".parse().unwrap();
        let v4 = |mtu| Route {
            local: "10.0.0.5".parse().unwrap(),
            mtu,
        };
        let v6 = |mtu| Route {
            local: "fd00::5".parse().unwrap(),
            mtu,
        };
        assert_eq!(v4(Some(1500)).udp_payload(), Some(1472));
        assert_eq!(v6(Some(1500)).udp_payload(), Some(1452));
        assert_eq!(v4(None).udp_payload(), None);
        // 1,228 bytes of IPv4 carry QUIC's 1,200; IPv6 needs 1,248.
        assert_eq!(v4(Some(1228)).too_small_for_quic(server), None);
        assert_eq!(v6(Some(1248)).too_small_for_quic(server), None);
        assert_eq!(v4(None).too_small_for_quic(server), None);
        let why = v4(Some(1200))
            .too_small_for_quic(server)
            .expect("1,172 bytes cannot carry QUIC");
        assert_eq!(
            why.to_string(),
            "the route to 10.0.0.1:7443 carries UDP payloads of at most 1172 bytes (MTU 1200), \
             below the 1200 QUIC needs"
        );
        assert!(v6(Some(1247)).too_small_for_quic(server).is_some());
    }

    #[tokio::test]
    async fn a_probe_tells_answered_refused_and_silent_apart() {
        // A quinn server answers the reserved version.
        let server = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(
                quinn::crypto::rustls::QuicServerConfig::try_from({
                    let ck = rcgen::generate_simple_self_signed(vec!["x".into()]).expect("cert");
                    rustls::ServerConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .expect("tls13")
                    .with_no_client_auth()
                    .with_single_cert(
                        vec![ck.cert.der().clone()],
                        rustls::pki_types::PrivateKeyDer::Pkcs8(
                            ck.signing_key.serialize_der().into(),
                        ),
                    )
                    .expect("cert")
                })
                .expect("quic tls"),
            )),
            (std::net::Ipv4Addr::LOCALHOST, 0).into(),
        )
        .expect("server");
        let addr = server.local_addr().expect("addr");
        assert_eq!(
            probe_path(addr).await,
            PathProbe::Answered {
                local: std::net::Ipv4Addr::LOCALHOST.into()
            }
        );
        // Nothing on the port: ICMP port unreachable.
        server.close(VarInt::from_u32(0), b"");
        drop(server);
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let closed_addr = closed.local_addr().expect("addr");
        drop(closed);
        assert_eq!(probe_path(closed_addr).await, PathProbe::Refused);
        // A socket that reads nothing: silence.
        let mute = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        assert_eq!(
            probe_path(mute.local_addr().expect("addr")).await,
            PathProbe::Silent {
                local: Some(std::net::Ipv4Addr::LOCALHOST.into())
            }
        );
    }

    /// The server accepted the stream and died before answering: the dial
    /// fails because the stream ended, not after the idle timeout.
    #[tokio::test]
    async fn a_stream_that_ends_during_the_handshake_fails_the_dial() {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let roots = rustls::RootCertStore::empty();
        let client = quic::client_config(roots, quic::transport_config()).expect("client config");
        let peer: SocketAddr = (std::net::Ipv4Addr::new(10, 0, 0, 1), 7444).into();
        let local: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 0).into();
        let dial =
            tokio::spawn(async move { dial_stream(near, local, peer, client, "server").await });
        drop(far);
        let err = tokio::time::timeout(Duration::from_secs(60), dial)
            .await
            .expect("the dial ends")
            .expect("no panic")
            .expect_err("nobody answered");
        assert!(
            err.to_string().contains("ended during the QUIC handshake"),
            "{err}"
        );
    }
}
