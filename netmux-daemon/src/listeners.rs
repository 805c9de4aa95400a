//! Local listeners of started services, and the tunnelling of each accepted
//! connection over the endpoint's QUIC connection.
//!
//! Each accepted TCP connection becomes one bidirectional stream: header,
//! then the client's bytes at once (no round trip for the open); the
//! server's open result is read before any target byte is written back, and
//! a failure resets the local connection promptly.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use netmux_common::proto::catalog::{Catalog, Protocol, ServiceId};
use netmux_common::proto::stream::StreamHeader;
use netmux_common::tunnel::pipe::{self, End, Meter};
use quinn::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What a listener needs to tunnel a connection.
#[derive(Clone)]
pub struct Route {
    /// Endpoint name (metrics, logs).
    pub endpoint: String,
    /// `namespace/name` of the service; resolved to an id per connection so
    /// a reconnect that renumbers the catalog is harmless.
    pub service: String,
    /// Service port the client dialled.
    pub port: u16,
    /// The endpoint's live connection.
    pub conn: watch::Receiver<Option<Connection>>,
    /// The endpoint's catalog.
    pub catalog: watch::Receiver<std::sync::Arc<Catalog>>,
    /// Metrics.
    pub metrics: Metrics,
}

impl Route {
    fn labels(&self) -> [&str; 3] {
        [&self.endpoint, &self.service, "l2c"]
    }

    fn error(&self, reason: &str) {
        let [e, s, d] = self.labels();
        self.metrics
            .connection_errors
            .with_label_values(&[e, s, d, reason])
            .inc();
    }

    fn service_id(&self) -> Option<ServiceId> {
        let catalog = self.catalog.borrow();
        catalog
            .values()
            .find(|s| s.key() == self.service && s.port(self.port, Protocol::Tcp).is_some())
            .map(|s| s.id)
    }
}

/// Binds a TCP listener on `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections until the task is aborted.
pub async fn serve(listener: TcpListener, route: Route) {
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
pub async fn tunnel(mut tcp: TcpStream, route: Route) {
    let started = Instant::now();
    let Some(conn) = route.conn.borrow().clone() else {
        route.error("endpoint_down");
        pipe::abort_on_drop(&tcp);
        return;
    };
    let Some(service) = route.service_id() else {
        route.error("unknown_service");
        pipe::abort_on_drop(&tcp);
        return;
    };
    let (mut send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(service = %route.service, error = %e, "cannot open stream");
            route.error("endpoint_down");
            pipe::abort_on_drop(&tcp);
            return;
        }
    };
    let header = StreamHeader::Connect {
        service,
        port: route.port,
    };
    let Ok(first) = pipe::send_header(&mut send, &header, &tcp).await else {
        route.error("endpoint_down");
        pipe::abort_on_drop(&tcp);
        return;
    };
    // The QUIC stream id (RFC 9000 2.1: a number, unique in the endpoint's
    // connection) names the connection in logs (journald `CONN=`); the
    // `Display` of `StreamId` is prose ("client bidirectional stream 1").
    let conn_id = u64::from(send.id()).to_string();
    let (sent, received) = (
        route.metrics.bytes_sent.with_label_values(&route.labels()),
        route
            .metrics
            .bytes_received
            .with_label_values(&route.labels()),
    );
    let meter = (
        |n: usize| sent.inc_by(n as u64),
        |n: usize| received.inc_by(n as u64),
    );
    if first > 0 {
        meter.tcp_to_stream(first);
    }
    let labels = route.labels();
    let active = route.metrics.connections_active.with_label_values(&labels);
    let latency = route.metrics.connect_latency.with_label_values(&labels);
    let connected = std::sync::atomic::AtomicBool::new(false);
    let connected_ref = &connected;
    let prelude = |recv: quinn::RecvStream| async move {
        let result = pipe::await_open_result(recv).await;
        if !matches!(result, Err(End::ConnectionLost(_))) {
            latency.observe(started.elapsed().as_secs_f64());
        }
        if result.is_ok() {
            active.inc();
            connected_ref.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    };
    route
        .metrics
        .connections_total
        .with_label_values(&labels)
        .inc();
    let outcome = pipe::bridge(&mut tcp, send, recv, Bytes::new(), prelude, &meter).await;
    match &outcome.end {
        End::Clean => {}
        End::Refused(reason) => {
            tracing::info!(endpoint = %route.endpoint, service = %route.service, conn = %conn_id, port = route.port, %reason, "server did not connect");
            route.error(outcome.end.metric_label());
        }
        other => route.error(other.label()),
    }
    tracing::debug!(
        endpoint = %route.endpoint,
        service = %route.service,
        conn = %conn_id,
        // The client's first bytes went with the stream header.
        sent = outcome.tcp_to_stream + first as u64,
        received = outcome.stream_to_tcp,
        end = outcome.end.label(),
        "connection closed"
    );
    if connected.load(std::sync::atomic::Ordering::Relaxed) {
        route
            .metrics
            .connections_active
            .with_label_values(&labels)
            .dec();
    }
}
