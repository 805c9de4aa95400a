//! How an endpoint reaches its server's QUIC endpoint.
//!
//! `quic` (default) dials UDP from a shared socket (in [`crate::endpoint`]);
//! `tcp` opens a TCP connection to the server's `stream_listen` port and
//! runs QUIC over it as length-prefixed datagrams
//! ([`netmux_common::tunnel::stream_socket`]): for networks that drop UDP
//! and for `kubectl port-forward`, which forwards TCP only. Each attempt
//! opens a new stream, so the endpoint's reconnect loop re-dials it too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use netmux_common::proto::error_code;
use netmux_common::tunnel::stream_socket::StreamSocket;
use quinn::{Connection, VarInt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::endpoint::ConnectError;

/// How long a TCP connect to the server may take.
pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An endpoint's `transport` key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// QUIC over UDP to `server` (a LoadBalancer, NodePort, VPN address);
    /// `direct` is the same.
    #[default]
    #[serde(alias = "direct")]
    Quic,
    /// QUIC over a TCP connection to `server` (the server's `stream_listen`).
    Tcp,
    /// QUIC over a Kubernetes port-forward to a ready server pod, opened
    /// with the user's kubeconfig (the default with `[endpoint.kubernetes]`).
    PortForward,
    /// `quic` to `server`, falling back to `port-forward` when the server
    /// does not answer over UDP.
    Auto,
}

/// Opens a TCP connection to `server` and a QUIC connection over it.
pub async fn dial_tcp(
    server: SocketAddr,
    client: quinn::ClientConfig,
    server_name: &str,
) -> Result<Connection, ConnectError> {
    let tcp = tokio::time::timeout(TCP_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(server))
        .await
        .map_err(|_| ConnectError::Setup(format!("TCP connect to {server}: timed out")))?
        .map_err(|e| ConnectError::Setup(format!("TCP connect to {server}: {e}")))?;
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY");
    }
    let local = tcp
        .local_addr()
        .map_err(|e| ConnectError::Setup(format!("TCP socket: {e}")))?;
    dial_stream(tcp, local, server, client, server_name).await
}

/// Runs a QUIC connection over a Kubernetes port-forward: the local end is
/// named as loopback of the pod address's family, the far end as the pod.
pub async fn dial_forward(
    forward: crate::cluster::forward::Forward,
    client: quinn::ClientConfig,
    server_name: &str,
) -> Result<Connection, ConnectError> {
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
pub async fn dial_stream<S>(
    stream: S,
    local: SocketAddr,
    peer: SocketAddr,
    client: quinn::ClientConfig,
    server_name: &str,
) -> Result<Connection, ConnectError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (socket, stream_closed) = StreamSocket::new(stream, local, peer);
    // The endpoint lives as long as its connection: dropping this handle
    // leaves it to the connection, whose end drops the socket and stream.
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| ConnectError::Setup(format!("QUIC endpoint: {e}")))?;
    let conn = endpoint
        .connect_with(client, peer, server_name)
        .map_err(|e| ConnectError::Quic(e.to_string()))?
        .await
        .map_err(|e| ConnectError::Quic(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        transport: Transport,
    }

    #[test]
    fn transport_words() {
        let t: T = toml::from_str("transport = \"tcp\"").expect("tcp");
        assert_eq!(t.transport, Transport::Tcp);
        let t: T = toml::from_str("transport = \"quic\"").expect("quic");
        assert_eq!(t.transport, Transport::Quic);
        let t: T = toml::from_str("transport = \"direct\"").expect("direct");
        assert_eq!(t.transport, Transport::Quic);
        let t: T = toml::from_str("transport = \"port-forward\"").expect("port-forward");
        assert_eq!(t.transport, Transport::PortForward);
        let t: T = toml::from_str("transport = \"auto\"").expect("auto");
        assert_eq!(t.transport, Transport::Auto);
        assert!(toml::from_str::<T>("transport = \"udp\"").is_err());
    }
}
