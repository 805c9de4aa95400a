//! Reverse (C2L) connections: the server sends each cluster connection to a
//! service this daemon holds as a server-initiated stream; the daemon dials
//! the local target and answers with an open result before any byte flows,
//! so a local target that is down gives the cluster client a prompt reset.

use std::sync::Arc;
use std::time::Duration;

use netmux_common::proto::catalog::Catalog;
use netmux_common::proto::error_code;
use netmux_common::proto::stream::{OpenResult, StreamHeader};
use netmux_common::tunnel::pipe::{self, End};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::endpoint::Claims;
use crate::metrics::Metrics;

const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to a local target with a socket the redirect hooks leave alone.
async fn dial_own(addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    crate::redirect::exempt(&socket);
    socket.connect(addr).await
}

/// Accepts reverse streams on `conn` until it closes.
pub async fn serve(
    conn: Connection,
    claims: Claims,
    catalog: watch::Receiver<Arc<Catalog>>,
    metrics: Metrics,
    endpoint: String,
) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let claims = claims.clone();
        let catalog = catalog.clone();
        let metrics = metrics.clone();
        let endpoint = endpoint.clone();
        tokio::spawn(async move { handle(send, recv, claims, catalog, metrics, endpoint).await });
    }
}

async fn handle(
    mut send: SendStream,
    mut recv: RecvStream,
    claims: Claims,
    catalog: watch::Receiver<Arc<Catalog>>,
    metrics: Metrics,
    endpoint: String,
) {
    let header = tokio::time::timeout(Duration::from_secs(10), pipe::read_header(&mut recv)).await;
    let Ok(Ok((
        StreamHeader::Reverse {
            service,
            port,
            peer,
        },
        pending,
    ))) = header
    else {
        tracing::warn!(endpoint = %endpoint, "bad reverse stream from server");
        let _ = send.reset(VarInt::from_u32(error_code::PROTOCOL_VIOLATION));
        return;
    };
    // The QUIC stream id, a number, as in listeners.rs (journald `CONN=`).
    let conn = u64::from(send.id()).to_string();
    let svc = catalog.borrow().get(&service).cloned();
    let target = svc.as_ref().and_then(|svc| {
        let claims = match claims.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        claims
            .values()
            .find(|c| c.kind.is_for(svc))
            .map(|c| c.local)
    });
    let key = svc
        .as_ref()
        .map(|s| s.key())
        .unwrap_or_else(|| "unknown".into());
    let labels = [endpoint.as_str(), key.as_str(), "c2l"];
    let Some(local) = target else {
        tracing::info!(%endpoint, %service, "reverse connection for a service this daemon does not hold");
        metrics
            .connection_errors
            .with_label_values(&[&endpoint, &key, "c2l", "unknown_service"])
            .inc();
        pipe::answer(&mut send, &mut recv, OpenResult::UnknownService).await;
        return;
    };
    let dialled = tokio::time::timeout(DIAL_TIMEOUT, dial_own(local)).await;
    let mut tcp = match dialled {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            let result = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                OpenResult::Refused
            } else {
                OpenResult::Unreachable
            };
            tracing::warn!(%endpoint, service = %key, %conn, %local, %peer, error = %e, "local target down; cluster client reset");
            metrics
                .connection_errors
                .with_label_values(&[&endpoint, &key, "c2l", result.label()])
                .inc();
            pipe::answer(&mut send, &mut recv, result).await;
            return;
        }
        Err(_) => {
            tracing::warn!(%endpoint, service = %key, %conn, %local, "local target did not answer in time");
            metrics
                .connection_errors
                .with_label_values(&[&endpoint, &key, "c2l", "unreachable"])
                .inc();
            pipe::answer(&mut send, &mut recv, OpenResult::Unreachable).await;
            return;
        }
    };
    tracing::debug!(%endpoint, service = %key, %conn, %peer, port, "reverse connection");
    metrics.connections_total.with_label_values(&labels).inc();
    let active = metrics.connections_active.with_label_values(&labels);
    active.inc();
    if pipe::answer(&mut send, &mut recv, OpenResult::Connected).await {
        let (sent, received) = (
            metrics.bytes_sent.with_label_values(&labels),
            metrics.bytes_received.with_label_values(&labels),
        );
        let meter = (
            |n: usize| sent.inc_by(n as u64),
            |n: usize| received.inc_by(n as u64),
        );
        let outcome = pipe::bridge(
            &mut tcp,
            send,
            recv,
            pending,
            |r| async move { Ok((r, bytes::Bytes::new())) },
            &meter,
        )
        .await;
        if outcome.end != End::Clean {
            metrics
                .connection_errors
                .with_label_values(&[&endpoint, &key, "c2l", outcome.end.label()])
                .inc();
        }
    }
    active.dec();
}
