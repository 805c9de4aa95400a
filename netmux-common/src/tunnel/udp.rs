//! UDP flows carried as QUIC datagrams: the async side of
//! [`crate::proto::datagram`], shared by daemon and server.
//!
//! Either end plays two roles:
//! * **originator**: a local UDP socket (the daemon's L2C listener, the
//!   server's C2L cluster-side socket) receives from many peers; each peer is
//!   a flow with an id; datagrams go out as `Open`, replies come back as
//!   `Reply` and are sent to the peer from the same socket, so the peer sees
//!   them coming from the address it sent to;
//! * **answerer**: on the first `Open` of a flow it creates one UDP socket
//!   connected to the resolved target (catalog addresses only), and sends
//!   what the target answers back as `Reply`.
//!
//! Flows expire when idle; originated and answered flows are each bounded
//! per connection and overflow is refused (counted as
//! [`Drop::FlowLimit`]). An answered flow holds a connected socket and a
//! task, no buffer of its own: replies are read into one buffer per
//! [`Flows`] when the socket is readable. A datagram too large for the path
//! is dropped and counted, never sent fragmented through a stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn::Connection;

use crate::proto::catalog::ServiceId;
use crate::proto::datagram::Datagram;
use crate::sync::lock;
use crate::tunnel::udp_socket::FlowSocket;

/// Why a datagram was dropped (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Larger than the path's datagram size.
    TooLarge,
    /// No QUIC connection, or it refused the datagram.
    NoConnection,
    /// The flow limit was reached.
    FlowLimit,
    /// No such service/port, or not allowed.
    Unknown,
    /// Malformed datagram from the peer.
    Malformed,
    /// The local socket failed.
    Socket,
}

impl Drop {
    /// Label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Drop::TooLarge => "too_large",
            Drop::NoConnection => "no_connection",
            Drop::FlowLimit => "flow_limit",
            Drop::Unknown => "unknown_service",
            Drop::Malformed => "malformed",
            Drop::Socket => "socket_error",
        }
    }
}

/// Which way a datagram went, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Into the tunnel.
    Sent,
    /// Out of the tunnel.
    Received,
}

impl Way {
    /// The metric label: `sent` or `received`.
    pub fn label(self) -> &'static str {
        match self {
            Way::Sent => "sent",
            Way::Received => "received",
        }
    }
}

/// The `service` and `direction` metric labels of a flow's service as the
/// catalog names it (`unknown`/`l2c` once it left the catalog); both ends'
/// UDP meters use them.
pub fn metric_labels(
    catalog: &crate::proto::catalog::Catalog,
    service: Option<crate::proto::catalog::ServiceId>,
) -> (String, &'static str) {
    match service.and_then(|id| catalog.get(&id)) {
        Some(s) => (s.key(), s.direction.label()),
        None => ("unknown".into(), "l2c"),
    }
}

/// Receives UDP accounting; implemented by each binary's metrics.
pub trait UdpMeter: Send + Sync {
    /// A datagram of `bytes` payload for `service` moved `way`.
    fn datagram(&self, service: ServiceId, way: Way, bytes: usize);
    /// A datagram for `service` (if known) was dropped.
    fn dropped(&self, service: Option<ServiceId>, why: Drop);
    /// Active flows for `service` changed by `delta`.
    fn flows(&self, service: ServiceId, delta: i64);
}

struct Origin {
    socket: Arc<FlowSocket>,
    peer: SocketAddr,
    service: ServiceId,
    last: Instant,
}

struct Answer {
    socket: Arc<FlowSocket>,
    service: ServiceId,
    last: Arc<Mutex<Instant>>,
    task: tokio::task::JoinHandle<()>,
}

impl core::ops::Drop for Answer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The UDP flows of one side of one QUIC connection (or of one endpoint,
/// across reconnects: flow ids stay unique).
pub struct Flows {
    next: AtomicU32,
    originated: Mutex<HashMap<u32, Origin>>,
    by_peer: Mutex<HashMap<(usize, SocketAddr), u32>>,
    answered: Mutex<HashMap<u32, Answer>>,
    /// The most flows of each table (originated, answered).
    max_answered: usize,
    /// Where answered flows' replies are read, one at a time.
    reply_buf: Mutex<Vec<u8>>,
    idle: Duration,
    meter: Arc<dyn UdpMeter>,
}

impl Flows {
    /// Flow tables with at most `max_answered` answered flows and as many
    /// originated ones, expiring flows idle for `idle`.
    pub fn new(max_answered: usize, idle: Duration, meter: Arc<dyn UdpMeter>) -> Arc<Self> {
        Arc::new(Flows {
            next: AtomicU32::new(1),
            originated: Mutex::new(HashMap::new()),
            by_peer: Mutex::new(HashMap::new()),
            answered: Mutex::new(HashMap::new()),
            max_answered,
            reply_buf: Mutex::new(Vec::new()),
            idle,
            meter,
        })
    }

    /// Answered flows now open.
    pub fn answered_len(&self) -> usize {
        lock(&self.answered).len()
    }

    /// Originated flows now open.
    pub fn originated_len(&self) -> usize {
        lock(&self.originated).len()
    }

    /// The flow of `peer` on `socket`, new if need be; `None` when the
    /// originated table is full.
    fn flow_for(
        &self,
        socket: &Arc<FlowSocket>,
        peer: SocketAddr,
        service: ServiceId,
    ) -> Option<u32> {
        let key = (Arc::as_ptr(socket) as usize, peer);
        let mut by_peer = lock(&self.by_peer);
        let mut originated = lock(&self.originated);
        if let Some(flow) = by_peer.get(&key) {
            if let Some(o) = originated.get_mut(flow) {
                o.last = Instant::now();
                return Some(*flow);
            }
        }
        if originated.len() >= self.max_answered {
            return None;
        }
        let flow = self.next.fetch_add(1, Ordering::Relaxed);
        by_peer.insert(key, flow);
        originated.insert(
            flow,
            Origin {
                socket: socket.clone(),
                peer,
                service,
                last: Instant::now(),
            },
        );
        self.meter.flows(service, 1);
        Some(flow)
    }

    /// Originator loop: every datagram received on `socket` becomes an
    /// `Open` datagram on the current connection. Runs until aborted.
    ///
    /// `route` gives the current connection and the service's current id
    /// (ids can change when a server restarts); `None` drops the datagram.
    pub async fn originate(
        self: Arc<Self>,
        socket: Arc<FlowSocket>,
        port: u16,
        route: impl Fn() -> Option<(Connection, ServiceId)> + Send + 'static,
    ) {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, peer) = match socket.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                    self.meter.dropped(None, Drop::Socket);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Some((c, service)) = route() else {
                self.meter.dropped(None, Drop::NoConnection);
                continue;
            };
            let Some(flow) = self.flow_for(&socket, peer, service) else {
                self.meter.dropped(Some(service), Drop::FlowLimit);
                continue;
            };
            let d = Datagram::Open {
                flow,
                service,
                port,
                payload: &buf[..n],
            };
            self.send(&c, d, service);
        }
    }

    fn send(&self, conn: &Connection, d: Datagram<'_>, service: ServiceId) {
        let payload = match d {
            Datagram::Open { payload, .. } | Datagram::Reply { payload, .. } => payload.len(),
        };
        match conn.max_datagram_size() {
            Some(max) if d.len() <= max => {}
            Some(max) => {
                tracing::info!(size = payload, max, %service, "UDP datagram too large for the path; dropped");
                self.meter.dropped(Some(service), Drop::TooLarge);
                return;
            }
            None => {
                self.meter.dropped(Some(service), Drop::NoConnection);
                return;
            }
        }
        let mut out = BytesMut::with_capacity(d.len());
        d.encode(&mut out);
        match conn.send_datagram(out.freeze()) {
            Ok(()) => self.meter.datagram(service, Way::Sent, payload),
            Err(e) => {
                tracing::debug!(error = %e, "datagram not sent");
                self.meter.dropped(Some(service), Drop::NoConnection);
            }
        }
    }

    /// Handles one received QUIC datagram. `resolve` maps an `Open`'s
    /// service and port to the target to dial (catalog only); it is called
    /// once per new flow.
    pub async fn receive(
        self: &Arc<Self>,
        conn: &Connection,
        bytes: &[u8],
        resolve: impl FnOnce(ServiceId, u16) -> Option<SocketAddr>,
        exempt: impl FnOnce(&FlowSocket),
    ) {
        let d = match Datagram::decode(bytes) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "malformed datagram");
                self.meter.dropped(None, Drop::Malformed);
                return;
            }
        };
        match d {
            Datagram::Reply { flow, payload } => {
                let target = {
                    let mut originated = lock(&self.originated);
                    originated.get_mut(&flow).map(|o| {
                        o.last = Instant::now();
                        (o.socket.clone(), o.peer, o.service)
                    })
                };
                let Some((socket, peer, service)) = target else {
                    self.meter.dropped(None, Drop::Unknown);
                    return;
                };
                match socket.send_to(payload, peer).await {
                    Ok(_) => self.meter.datagram(service, Way::Received, payload.len()),
                    Err(_) => self.meter.dropped(Some(service), Drop::Socket),
                }
            }
            Datagram::Open {
                flow,
                service,
                port,
                payload,
            } => {
                let existing = lock(&self.answered).get(&flow).map(|a| {
                    if let Ok(mut l) = a.last.lock() {
                        *l = Instant::now();
                    }
                    a.socket.clone()
                });
                let socket = match existing {
                    Some(s) => s,
                    None => {
                        if self.answered_len() >= self.max_answered {
                            self.meter.dropped(Some(service), Drop::FlowLimit);
                            return;
                        }
                        let Some(target) = resolve(service, port) else {
                            self.meter.dropped(Some(service), Drop::Unknown);
                            return;
                        };
                        match self.open_answer(conn, flow, service, target, exempt).await {
                            Some(s) => s,
                            None => return,
                        }
                    }
                };
                match socket.send(payload).await {
                    Ok(_) => self.meter.datagram(service, Way::Received, payload.len()),
                    Err(_) => self.meter.dropped(Some(service), Drop::Socket),
                }
            }
        }
    }

    async fn open_answer(
        self: &Arc<Self>,
        conn: &Connection,
        flow: u32,
        service: ServiceId,
        target: SocketAddr,
        exempt: impl FnOnce(&FlowSocket),
    ) -> Option<Arc<FlowSocket>> {
        let socket = match FlowSocket::bind(super::udp_socket::any_port(target.is_ipv6())) {
            Ok(s) => s,
            Err(_) => {
                self.meter.dropped(Some(service), Drop::Socket);
                return None;
            }
        };
        exempt(&socket);
        if socket.connect(target).is_err() {
            self.meter.dropped(Some(service), Drop::Socket);
            return None;
        }
        let socket = Arc::new(socket);
        let last = Arc::new(Mutex::new(Instant::now()));
        let task = {
            let socket = socket.clone();
            let conn = conn.clone();
            let me = Arc::downgrade(self);
            let last = last.clone();
            tokio::spawn(async move {
                while socket.readable().await.is_ok() {
                    let Some(flows) = me.upgrade() else { return };
                    let mut buf = lock(&flows.reply_buf);
                    if buf.is_empty() {
                        buf.resize(65536, 0);
                    }
                    let n = match socket.try_recv(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(_) => return,
                    };
                    if let Ok(mut l) = last.lock() {
                        *l = Instant::now();
                    }
                    flows.send(
                        &conn,
                        Datagram::Reply {
                            flow,
                            payload: &buf[..n],
                        },
                        service,
                    );
                }
            })
        };
        self.meter.flows(service, 1);
        lock(&self.answered).insert(
            flow,
            Answer {
                socket: socket.clone(),
                service,
                last,
                task,
            },
        );
        Some(socket)
    }

    /// Forgets flows idle longer than the idle timeout.
    pub fn expire(&self, now: Instant) {
        let idle = self.idle;
        let mut gone = Vec::new();
        lock(&self.answered).retain(|_, a| {
            let last = a.last.lock().map(|l| *l).unwrap_or(now);
            let keep = now.saturating_duration_since(last) < idle;
            if !keep {
                gone.push(a.service);
            }
            keep
        });
        let mut expired = Vec::new();
        lock(&self.originated).retain(|flow, o| {
            let keep = now.saturating_duration_since(o.last) < idle;
            if !keep {
                gone.push(o.service);
                expired.push((Arc::as_ptr(&o.socket) as usize, o.peer, *flow));
            }
            keep
        });
        let mut by_peer = lock(&self.by_peer);
        for (sock, peer, flow) in expired {
            if by_peer.get(&(sock, peer)) == Some(&flow) {
                by_peer.remove(&(sock, peer));
            }
        }
        for s in gone {
            self.meter.flows(s, -1);
        }
    }

    /// Forgets every flow originated on `socket` (its listener stopped).
    pub fn forget_socket(&self, socket: &Arc<FlowSocket>) {
        let id = Arc::as_ptr(socket) as usize;
        let mut gone = Vec::new();
        lock(&self.originated).retain(|_, o| {
            let keep = Arc::as_ptr(&o.socket) as usize != id;
            if !keep {
                gone.push(o.service);
            }
            keep
        });
        lock(&self.by_peer).retain(|(s, _), _| *s != id);
        for s in gone {
            self.meter.flows(s, -1);
        }
    }

    /// Drops every answered flow (the connection is gone).
    pub fn clear_answered(&self) {
        let drained: Vec<Answer> = lock(&self.answered).drain().map(|(_, a)| a).collect();
        for a in drained {
            self.meter.flows(a.service, -1);
        }
    }

    /// Expires idle flows every quarter of the idle timeout until aborted.
    pub async fn sweep(self: Arc<Self>) {
        let period = (self.idle / 4).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(period).await;
            self.expire(Instant::now());
        }
    }
}
