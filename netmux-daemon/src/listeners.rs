//! Local listeners of started services, and the tunnelling of each accepted
//! connection over the endpoint's QUIC connection.
//!
//! Each accepted TCP connection becomes one bidirectional stream: header,
//! then the client's bytes at once (no round trip for the open); the
//! server's open result is read before any target byte is written back, and
//! a failure resets the local connection promptly.

use std::net::SocketAddr;
use std::time::Instant;

use netmux_common::proto::catalog::{Indexed, Protocol, ServiceId};
use netmux_common::proto::stream::StreamHeader;
use netmux_common::tunnel::pipe::{self, End};
use netmux_common::tunnel::stream::{self, Counters, Hooks, NotOpened, Options};
use quinn::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What a listener needs to tunnel a connection.
#[derive(Clone)]
pub(crate) struct Route {
    /// Endpoint name (metrics, logs).
    pub(crate) endpoint: String,
    /// `namespace/name` of the service; resolved to an id per connection so
    /// a reconnect that renumbers the catalog is harmless.
    pub(crate) service: String,
    /// Service port the client dialled.
    pub(crate) port: u16,
    /// The endpoint's live connection.
    pub(crate) conn: watch::Receiver<Option<Connection>>,
    /// The endpoint's catalog.
    pub(crate) catalog: watch::Receiver<std::sync::Arc<Indexed>>,
    /// Metrics.
    pub(crate) metrics: Metrics,
    /// The bridge's settings (the endpoint's `half_close_timeout_secs`).
    pub(crate) options: Options,
}

impl Route {
    fn service_id(&self) -> Option<ServiceId> {
        let catalog = self.catalog.borrow();
        catalog
            .by_key(&self.service)
            .filter(|s| s.port(self.port, Protocol::Tcp).is_some())
            .map(|s| s.id)
    }
}

/// One proxied connection's metrics (`endpoint`, `service`, `direction`):
/// the [`Hooks`] of both the L2C listeners and the C2L streams
/// ([`crate::reverse`]).
pub(crate) fn counters(
    metrics: &Metrics,
    endpoint: &str,
    service: &str,
    direction: &str,
) -> Counters {
    Counters::new(
        &netmux_common::stream_families!(metrics),
        &[endpoint, service, direction],
        "endpoint_down",
    )
}

/// Binds a TCP listener on `addr`.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, route: Route) {
    loop {
        match listener.accept().await {
            Ok((tcp, _peer)) => {
                let route = route.clone();
                tokio::spawn(async move { tunnel(tcp, route).await });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                tracing::warn!(service = %route.service, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Tunnels one accepted connection.
pub(crate) async fn tunnel(tcp: TcpStream, route: Route) {
    let accepted = Instant::now();
    let counters = counters(&route.metrics, &route.endpoint, &route.service, "l2c");
    let Some(conn) = route.conn.borrow().clone() else {
        counters.failed(counters.peer_down());
        pipe::abort_on_drop(&tcp);
        return;
    };
    let Some(service) = route.service_id() else {
        counters.failed("unknown_service");
        pipe::abort_on_drop(&tcp);
        return;
    };
    // In a blackout: wait a little for the server, then fail promptly
    // (docs/sleep.md).
    if let Err(why) = crate::health::wait_usable(&conn).await {
        tracing::info!(endpoint = %route.endpoint, service = %route.service, "{why}");
        counters.failed("blackout");
        pipe::abort_on_drop(&tcp);
        return;
    }
    let header = StreamHeader::Connect {
        service,
        port: route.port,
    };
    let opened = match stream::open(&conn, tcp, &header, accepted, route.options, &counters).await {
        Ok(o) => o,
        Err(NotOpened::PeerDown(error)) => {
            tracing::debug!(service = %route.service, %error, "cannot open stream");
            return;
        }
        Err(NotOpened::ClientReset) => {
            tracing::debug!(service = %route.service, "client reset before its first bytes");
            return;
        }
    };
    // The QUIC stream id (RFC 9000 2.1: a number, unique in the endpoint's
    // connection) names the connection in logs (journald `CONN=`); the
    // `Display` of `StreamId` is prose ("client bidirectional stream 1").
    let conn_id = opened.stream.to_string();
    let outcome = &opened.outcome;
    if let End::Refused(reason) = &outcome.end {
        tracing::info!(endpoint = %route.endpoint, service = %route.service, conn = %conn_id, port = route.port, %reason, "server did not connect");
    }
    tracing::debug!(
        endpoint = %route.endpoint,
        service = %route.service,
        conn = %conn_id,
        // The client's first bytes went with the stream header.
        sent = outcome.tcp_to_stream + opened.first as u64,
        received = outcome.stream_to_tcp,
        end = outcome.end.label(),
        "connection closed"
    );
}
