//! Proxied TCP streams on the server's side: it answers the streams a
//! daemon opens (L2C: dial a catalog target, [`answer`]) and asks the
//! holder of a C2L service to take each cluster connection ([`ask`]). The
//! handshake, bridging and counting are `netmux_common::tunnel::stream`'s;
//! this module gives it the catalog, the access check and the metrics.

use std::net::SocketAddr;
use std::time::Instant;

use netmux_common::proto::catalog::{Direction, ServiceId};
use netmux_common::proto::stream::{OpenResult, StreamHeader};
use netmux_common::tunnel::pipe::End;
use netmux_common::tunnel::stream::{self, Counters, Hooks, NotOpened, Options};
use quinn::{Connection, RecvStream, SendStream};
use tokio::net::TcpStream;

use crate::access::Identity;
use crate::metrics::Metrics;
use crate::{dial, Server};

/// One proxied connection's metrics (`service`, `direction`).
pub(crate) fn counters(metrics: &Metrics, service: &str, direction: &str) -> Counters {
    Counters::new(
        &netmux_common::stream_families!(metrics),
        &[service, direction],
        "holder_gone",
    )
}

/// Answers a stream daemon `who` opened: a catalog L2C service it may
/// reach, dialled, or a refusal.
pub(crate) async fn answer(send: SendStream, recv: RecvStream, server: &Server, who: &Identity) {
    let incoming = match stream::accept(send, recv, server.config.hello_timeout).await {
        Ok(i) => i,
        Err(why) => {
            tracing::debug!(client = %who.name, %why, "stream dropped");
            counters(&server.metrics, "unknown", "l2c").failed("bad_header");
            return;
        }
    };
    let StreamHeader::Connect { service, port } = *incoming.header() else {
        // Only the server opens reverse streams.
        counters(&server.metrics, "unknown", "l2c").failed("bad_header");
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
    let counters = counters(&server.metrics, &key, direction.label());
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
    pub(crate) conn: Connection,
    /// The C2L service.
    pub(crate) service: ServiceId,
    /// `namespace/name` (metrics, logs).
    pub(crate) key: String,
    /// The cluster port it connected to.
    pub(crate) port: u16,
    /// The bridge's settings.
    pub(crate) options: Options,
    /// `direction` label of its metrics: `c2l`, `intercept`.
    pub(crate) direction: &'static str,
    /// What opens the stream instead of the `Reverse` header: the frame
    /// of another replica that relays to its daemon (intercepts).
    pub(crate) head: Option<bytes::Bytes>,
}

/// Sends cluster connection `tcp` from `peer` to the holder of the
/// service as a server-initiated stream.
pub(crate) async fn ask(ask: &Ask, tcp: TcpStream, peer: SocketAddr, metrics: &Metrics) {
    let accepted = Instant::now();
    let counters = counters(metrics, &ask.key, ask.direction);
    let header = StreamHeader::Reverse {
        service: ask.service,
        port: ask.port,
        peer,
    };
    let head = match &ask.head {
        Some(h) => {
            let mut head = bytes::BytesMut::with_capacity(16 * 1024);
            head.extend_from_slice(h);
            head
        }
        None => {
            let mut head = bytes::BytesMut::with_capacity(16 * 1024);
            netmux_common::proto::open::write_header(&header, &mut head);
            head
        }
    };
    match stream::open_head(&ask.conn, tcp, head, accepted, ask.options, &counters).await {
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
