//! Proxied TCP streams on the server's side: it answers the streams a
//! daemon opens (L2C: dial a catalog target, [`answer`]) and asks the
//! holder of a C2L service to take each cluster connection ([`ask`]). The
//! handshake, bridging and counting are `netmux_common::tunnel::stream`'s;
//! this module gives it the catalog, the access check and the metrics.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use netmux_common::proto::catalog::{Direction, ServiceId};
use netmux_common::proto::stream::{OpenResult, StreamHeader};
use netmux_common::tunnel::pipe::{End, Meter};
use netmux_common::tunnel::stream::{self, Hooks, NotOpened, Options};
use prometheus::{IntCounter, IntGauge};
use quinn::{Connection, RecvStream, SendStream};
use tokio::net::TcpStream;

use crate::access::Identity;
use crate::metrics::Metrics;
use crate::{dial, Server};

/// One proxied connection's metrics, labelled once (`service`,
/// `direction`).
pub(crate) struct Counters {
    metrics: Metrics,
    labels: [String; 2],
    sent: IntCounter,
    received: IntCounter,
    active: IntGauge,
}

impl Counters {
    pub(crate) fn new(metrics: &Metrics, service: &str, direction: &str) -> Self {
        let labels = [service, direction];
        Counters {
            sent: metrics.bytes_sent.with_label_values(&labels),
            received: metrics.bytes_received.with_label_values(&labels),
            active: metrics.connections_active.with_label_values(&labels),
            labels: labels.map(str::to_owned),
            metrics: metrics.clone(),
        }
    }

    fn labels(&self) -> [&str; 2] {
        [&self.labels[0], &self.labels[1]]
    }
}

impl Meter for Counters {
    fn tcp_to_stream(&self, n: usize) {
        self.sent.inc_by(n as u64);
    }
    fn stream_to_tcp(&self, n: usize) {
        self.received.inc_by(n as u64);
    }
}

impl Hooks for Counters {
    const PEER_DOWN: &'static str = "holder_gone";

    fn opened(&self) {
        self.metrics
            .connections_total
            .with_label_values(&self.labels())
            .inc();
    }

    fn answered(&self, connected: bool, latency: Duration) {
        self.metrics
            .connect_latency
            .with_label_values(&self.labels())
            .observe(latency.as_secs_f64());
        if connected {
            self.active.inc();
        }
    }

    fn failed(&self, reason: &str) {
        let [s, d] = self.labels();
        self.metrics
            .connection_errors
            .with_label_values(&[s, d, reason])
            .inc();
    }

    fn closed(&self) {
        self.active.dec();
    }
}

/// Answers a stream daemon `who` opened: a catalog L2C service it may
/// reach, dialled, or a refusal.
pub(crate) async fn answer(send: SendStream, recv: RecvStream, server: &Server, who: &Identity) {
    let incoming = match stream::accept(send, recv, server.config.hello_timeout).await {
        Ok(i) => i,
        Err(why) => {
            tracing::debug!(client = %who.name, %why, "stream dropped");
            Counters::new(&server.metrics, "unknown", "l2c").failed("bad_header");
            return;
        }
    };
    let StreamHeader::Connect { service, port } = *incoming.header() else {
        // Only the server opens reverse streams.
        Counters::new(&server.metrics, "unknown", "l2c").failed("bad_header");
        incoming.violation();
        return;
    };
    let catalog = server.catalog.borrow().clone();
    let resolved = dial::resolve(&catalog, service, port).and_then(|(svc, addrs)| {
        if server.access.may_reach(who, &svc) {
            Ok((svc, addrs))
        } else {
            Err(OpenResult::NotAllowed)
        }
    });
    let (key, direction) = match &resolved {
        Ok((svc, _)) => (svc.key(), svc.direction),
        Err(_) => ("unknown".to_owned(), Direction::L2C),
    };
    let counters = Counters::new(&server.metrics, &key, direction.label());
    let addrs = match resolved {
        Ok((_, addrs)) => addrs,
        Err(result) => {
            tracing::info!(client = %who.name, %service, port, %result, "connection not opened");
            incoming.refuse(result, &counters).await;
            return;
        }
    };
    let dial = dial::connect(&addrs, server.config.dial_timeout);
    let options = Options {
        half_close_timeout: server.config.half_close_timeout,
    };
    match incoming.connect(dial, options, &counters).await {
        Ok(outcome) => {
            tracing::debug!(client = %who.name, service = %key, up = outcome.tcp_to_stream, down = outcome.stream_to_tcp, end = ?outcome.end, "connection closed");
        }
        Err(result) => {
            tracing::info!(client = %who.name, %service, port, %result, "connection not opened");
        }
    }
}

/// Where a cluster connection to a C2L service goes.
pub(crate) struct Ask {
    /// The holder's connection.
    pub conn: Connection,
    /// The C2L service.
    pub service: ServiceId,
    /// `namespace/name` (metrics, logs).
    pub key: String,
    /// The cluster port it connected to.
    pub port: u16,
    /// The bridge's settings.
    pub options: Options,
}

/// Sends cluster connection `tcp` from `peer` to the holder of the
/// service as a server-initiated stream.
pub(crate) async fn ask(ask: &Ask, tcp: TcpStream, peer: SocketAddr, metrics: &Metrics) {
    let accepted = Instant::now();
    let counters = Counters::new(metrics, &ask.key, "c2l");
    let header = StreamHeader::Reverse {
        service: ask.service,
        port: ask.port,
        peer,
    };
    match stream::open(&ask.conn, tcp, &header, accepted, ask.options, &counters).await {
        Ok(opened) if opened.outcome.end != End::Clean => {
            tracing::debug!(service = %ask.key, %peer, end = ?opened.outcome.end, "reverse connection ended");
        }
        Ok(_) => {}
        Err(NotOpened::PeerDown(error)) => {
            tracing::debug!(service = %ask.key, %error, "holder unreachable");
        }
        Err(NotOpened::ClientReset) => {
            tracing::debug!(service = %ask.key, %peer, "cluster client reset before its first bytes");
        }
    }
}
