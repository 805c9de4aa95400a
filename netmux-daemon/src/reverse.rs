//! Reverse (C2L) connections: the server sends each cluster connection to a
//! service this daemon holds as a server-initiated stream; the daemon dials
//! the local target of the stream's cluster port and answers with an open
//! result before any byte flows, so a local target that is down gives the
//! cluster client a prompt reset.

use std::sync::Arc;
use std::time::Duration;

use netmux_common::proto::catalog::{Indexed, Protocol};
use netmux_common::proto::stream::{OpenResult, StreamHeader};
use netmux_common::tunnel::stream::{self, Options};
use quinn::{Connection, RecvStream, SendStream};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::claims::Claims;
use crate::listeners::counters;
use crate::metrics::Metrics;

const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the server may take to send a stream's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to a local target with a socket the redirect hooks leave alone.
async fn dial_own(addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    crate::redirect::exempt(&socket);
    socket.connect(addr).await
}

/// How long `expose`, `intercept` and `start` wait for a local target.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// `message` of `expose`, `intercept` or `start` (of a C2L service), with
/// a note line for each of the `targets` where nothing answers yet: one
/// TCP connection each, closed at once. The claim stands (the user may
/// start the program afterwards), but until something listens there what
/// the cluster sends to it fails (a reset; a 502 for a personal
/// intercept's requests), which is worth saying now rather than leaving it
/// to the cluster side to find out.
pub(crate) async fn with_probe_notes(
    mut message: String,
    targets: impl IntoIterator<Item = std::net::SocketAddr>,
) -> String {
    for local in targets {
        let why = match tokio::time::timeout(PROBE_TIMEOUT, dial_own(local)).await {
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
        };
        message.push_str(&format!(
            "\nnote: nothing answers at {local} yet ({why}); cluster connections to it fail \
             until a program listens there"
        ));
    }
    message
}

/// What the reverse streams of one connection share.
#[derive(Clone)]
pub(crate) struct Reverse {
    /// The endpoint's claims.
    pub(crate) claims: Claims,
    /// The endpoint's catalog.
    pub(crate) catalog: watch::Receiver<Arc<Indexed>>,
    /// Metrics.
    pub(crate) metrics: Metrics,
    /// Endpoint name (metrics, logs).
    pub(crate) endpoint: String,
    /// The bridge's settings.
    pub(crate) options: Options,
}

/// Accepts reverse streams on `conn` until it closes.
pub(crate) async fn serve(conn: Connection, reverse: Reverse) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let reverse = reverse.clone();
        tokio::spawn(async move { handle(send, recv, reverse).await });
    }
}

async fn handle(send: SendStream, recv: RecvStream, r: Reverse) {
    let endpoint = r.endpoint.as_str();
    let incoming = match stream::accept(send, recv, HEADER_TIMEOUT).await {
        Ok(i) => i,
        Err(why) => {
            tracing::warn!(%endpoint, %why, "bad reverse stream from server");
            return;
        }
    };
    let StreamHeader::Reverse {
        service,
        port,
        peer,
    } = *incoming.header()
    else {
        tracing::warn!(%endpoint, "bad reverse stream from server: not a reverse header");
        incoming.violation();
        return;
    };
    // The QUIC stream id, a number, as in listeners.rs (journald `CONN=`).
    let conn = incoming.stream().to_string();
    let svc = r.catalog.borrow().get(&service).cloned();
    let target = svc
        .as_ref()
        .and_then(|svc| r.claims.local_for(svc, port, Protocol::Tcp));
    let key = svc
        .as_ref()
        .map(|s| s.key())
        .unwrap_or_else(|| "unknown".into());
    let counters = counters(&r.metrics, endpoint, &key, "c2l");
    let Some(local) = target else {
        tracing::info!(%endpoint, %service, port, "reverse connection for a service or port this daemon does not hold");
        incoming.refuse(OpenResult::UnknownService, &counters).await;
        return;
    };
    let targets = [local];
    let dial = stream::dial(&targets, DIAL_TIMEOUT, dial_own);
    match incoming.connect(dial, r.options, &counters).await {
        Ok(outcome) => {
            tracing::debug!(%endpoint, service = %key, %conn, %peer, port, %local, up = outcome.tcp_to_stream, down = outcome.stream_to_tcp, end = outcome.end.label(), "reverse connection closed");
        }
        Err(result) => {
            tracing::warn!(%endpoint, service = %key, %conn, %local, %peer, %result, "local target down; cluster client reset");
        }
    }
}
