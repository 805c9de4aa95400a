//! The HTTP router of a port with personal intercepts (hyper): each
//! request carrying an intercept's header goes to that workstation over a
//! server-initiated stream, every other request to an original pod at its
//! own address. HTTP/1.1 (keep-alive) and HTTP/2 over cleartext (h2c with
//! prior knowledge, gRPC's) are told apart by the HTTP/2 preface.
//!
//! Upstream connections belong to the downstream connection: one to the
//! workstation per intercept and one to a pod, opened on first use and
//! reused for its next requests, so requests of one client connection
//! keep their order and never mix with another's.
//!
//! An HTTP/1.1 `Upgrade` (a WebSocket handshake) is routed like any
//! request, by its header, on an upstream connection of its own; when the
//! upstream answers `101 Switching Protocols`, both connections are
//! upgraded and their bytes relayed until either side ends.
//!
//! A mirror gets a copy of each request whose body is known and at most
//! [`MIRROR_MAX_BODY`], through a queue of [`MIRROR_QUEUE`] per client
//! connection and mirror: when the workstation is slower than the
//! traffic, copies beyond are dropped (never the request itself).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use netmux_common::proto::stream::StreamHeader;
use netmux_common::tunnel::stream;
use tokio::net::TcpStream;

use super::listen::{way, PortCtx};
use super::route::{self, Choice};
use super::Counts;

/// Largest request body a mirror gets a copy of (the body is buffered).
pub const MIRROR_MAX_BODY: u64 = 1024 * 1024;
/// Copies waiting for one mirror's workstation, per client connection.
pub const MIRROR_QUEUE: usize = 64;

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// An upstream connection.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn send(&mut self, req: Request<Body>) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Upstream {
    Workstation(u64),
    Pod,
}

/// One downstream connection.
struct Conn {
    ctx: Arc<PortCtx>,
    peer: SocketAddr,
    h2: bool,
    /// Idle upstream connections (an HTTP/1.1 one is taken out while it
    /// carries a request; an HTTP/2 one is shared).
    upstreams: std::sync::Mutex<HashMap<Upstream, Sender>>,
    /// The copy queue of each mirror (by session).
    mirrors: std::sync::Mutex<HashMap<u64, tokio::sync::mpsc::Sender<Request<Body>>>>,
}

/// Whether the client starts with the HTTP/2 preface (read without
/// consuming it).
async fn is_h2(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 24];
    loop {
        let n = match tcp.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        // A prefix of the preface so far: wait for more bytes.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// Serves `tcp` until the client closes it.
pub async fn serve(tcp: TcpStream, peer: SocketAddr, ctx: Arc<PortCtx>) {
    let h2 = is_h2(&tcp).await;
    let conn = Arc::new(Conn {
        ctx,
        peer,
        h2,
        upstreams: std::sync::Mutex::new(HashMap::new()),
        mirrors: std::sync::Mutex::new(HashMap::new()),
    });
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(conn.route(req).await) }
    });
    let io = TokioIo::new(tcp);
    let result = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(io, svc)
            .with_upgrades()
            .await
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "intercepted HTTP connection ended");
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// An upstream HTTP connection over `io`: HTTP/2 when `h2`.
async fn handshake<T>(h2: bool, io: T) -> Result<Sender, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    if h2 {
        let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Ok(Sender::H2(s))
    } else {
        let (s, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn.with_upgrades());
        Ok(Sender::H1(s))
    }
}

/// An upstream HTTP connection to the workstation of intercept `h`, over
/// a server-initiated stream for client `peer`; `Err` is the 502 body.
async fn to_workstation(
    ctx: &PortCtx,
    peer: SocketAddr,
    h2: bool,
    routed: &super::Routed,
    h: &super::Held,
) -> Result<Sender, String> {
    let header = StreamHeader::Reverse {
        service: routed.id,
        port: ctx.plan.port,
        peer,
    };
    let hooks = crate::stream::counters(&ctx.metrics, &routed.key, "intercept");
    let down = |why: String| {
        format!(
            "netmux: this request matched the personal intercept of {} by {}, but its workstation target is down ({why}); it gets this answer until the target is back or the intercept ends (`netmux leave`)\n",
            routed.key, h.claim
        )
    };
    let opened = match h.via.head(ctx.plan.port, peer) {
        Some(head) => stream::open_io_head(h.via.conn(), head, &hooks).await,
        None => stream::open_io(h.via.conn(), &header, &hooks).await,
    };
    let io = opened.map_err(|e| down(e.to_string()))?;
    handshake(h2, io).await.map_err(|e| down(e.to_string()))
}

/// Counts each data frame's bytes of `body` into `counts` and `metric`.
fn counted<B>(body: B, counts: Arc<Counts>, metric: prometheus::IntCounter) -> Body
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Send + 'static,
{
    body.map_frame(move |f| {
        if let Some(d) = f.data_ref() {
            counts.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
            metric.inc_by(d.len() as u64);
        }
        f
    })
    .boxed_unsync()
}

/// Whether `req` asks to switch protocols (HTTP/1.1 `Upgrade`).
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == hyper::Version::HTTP_11 && req.headers().contains_key(hyper::header::UPGRADE)
}

/// Relays the bytes of an upgraded client connection and its upstream
/// once both switched protocols; counts them.
fn relay_upgraded(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    counts: Arc<Counts>,
    metric: prometheus::IntCounter,
) {
    tokio::spawn(async move {
        let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream) else {
            return;
        };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        if let Ok((a, b)) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            counts.bytes.fetch_add(a + b, Ordering::Relaxed);
            metric.inc_by(a + b);
        }
    });
}

impl Conn {
    async fn route(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Body> {
        let Some(routed) = self.ctx.routed.upgrade() else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "netmux: this intercept just ended; retry\n".into(),
            );
        };
        let port = self.ctx.plan.port;
        let held = routed.held();
        let claims: Vec<route::Claim> = held.iter().map(|h| h.claim.clone()).collect();
        let headers: Vec<(&str, &[u8])> = req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        let choice = route::choose(&claims, port, &headers);
        // A switch of protocols is not copied: a mirror cannot take part.
        let upgrade = is_upgrade(&req);
        let mirrors = match upgrade {
            true => Vec::new(),
            false => route::mirrors(&claims, port, &headers),
        };
        drop(headers);
        let downstream = upgrade.then(|| hyper::upgrade::on(&mut req));
        let req = if mirrors.is_empty() {
            req.map(|b| b.boxed_unsync())
        } else {
            self.copy_to_mirrors(req, &routed, &held, &mirrors).await
        };
        let (upstream, counts, label, holder) = match choice {
            Choice::Workstation(session) => {
                match held.iter().find(|h| h.claim.session == session) {
                    Some(h) => (
                        Upstream::Workstation(session),
                        h.to_workstation.clone(),
                        way::WORKSTATION,
                        Some(h.clone()),
                    ),
                    None => (Upstream::Pod, routed.to_pods.clone(), way::PODS, None),
                }
            }
            Choice::Pods => (Upstream::Pod, routed.to_pods.clone(), way::PODS, None),
        };
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let key = routed.key.clone();
        self.ctx
            .metrics
            .intercept_requests
            .with_label_values(&[&key, label])
            .inc();
        let bytes = self
            .ctx
            .metrics
            .intercept_bytes
            .with_label_values(&[&key, label]);
        // An upgrade takes its upstream connection for good: a fresh one.
        let reused = match upgrade {
            true => None,
            false => self.take(upstream),
        };
        let mut sender = match reused {
            Some(s) => s,
            None => {
                let connected = match &holder {
                    Some(h) => self.to_workstation(&routed, h).await,
                    None => self.to_pod(&routed).await,
                };
                match connected {
                    Ok(s) => s,
                    Err(body) => return text(StatusCode::BAD_GATEWAY, body),
                }
            }
        };
        drop(routed);
        let req = req.map(|b| counted(b, counts.clone(), bytes.clone()));

        match sender.send(req).await {
            Ok(mut resp) => {
                match downstream {
                    Some(down) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                        let up = hyper::upgrade::on(&mut resp);
                        relay_upgraded(down, up, counts.clone(), bytes.clone());
                    }
                    Some(_) => {}
                    None => self.put(upstream, sender),
                }
                resp.map(|b| counted(b, counts, bytes))
            }
            Err(e) => {
                let whom = match &holder {
                    Some(h) => format!("the workstation of {}", h.claim),
                    None => "the pod".to_owned(),
                };
                text(
                    StatusCode::BAD_GATEWAY,
                    format!("netmux: {whom} did not answer this request of {key}: {e}\n"),
                )
            }
        }
    }

    /// Queues a copy of `req` for each mirror in `sessions` and returns
    /// the request to send on; a body of unknown or too large size is
    /// sent on without copies.
    async fn copy_to_mirrors(
        self: &Arc<Self>,
        req: Request<Incoming>,
        routed: &Arc<super::Routed>,
        held: &[super::Held],
        sessions: &[u64],
    ) -> Request<Body> {
        let size = hyper::body::Body::size_hint(req.body()).exact();
        if size.is_none_or(|n| n > MIRROR_MAX_BODY) {
            tracing::debug!(service = %routed.key, ?size, "request not mirrored: body size unknown or over MIRROR_MAX_BODY");
            return req.map(|b| b.boxed_unsync());
        }
        let (parts, body) = req.into_parts();
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                tracing::debug!(service = %routed.key, error = %e, "request body ended early");
                Bytes::new()
            }
        };
        let full = |b: Bytes| {
            Full::new(b)
                .map_err(|never: Infallible| match never {})
                .boxed_unsync()
        };
        for session in sessions {
            let Some(h) = held.iter().find(|h| h.claim.session == *session) else {
                continue;
            };
            let mut copy = Request::new(full(bytes.clone()));
            *copy.method_mut() = parts.method.clone();
            *copy.uri_mut() = parts.uri.clone();
            *copy.version_mut() = parts.version;
            *copy.headers_mut() = parts.headers.clone();
            let queue = self.mirror_queue(routed, h);
            if queue.try_send(copy).is_err() {
                tracing::debug!(service = %routed.key, client = %h.claim.client, "mirror copy dropped: its workstation is behind");
            }
        }
        Request::from_parts(parts, full(bytes))
    }

    /// The copy queue of mirror `h` on this connection, with its worker.
    fn mirror_queue(
        self: &Arc<Self>,
        routed: &Arc<super::Routed>,
        h: &super::Held,
    ) -> tokio::sync::mpsc::Sender<Request<Body>> {
        let mut queues = netmux_common::sync::lock(&self.mirrors);
        if let Some(q) = queues.get(&h.claim.session).filter(|q| !q.is_closed()) {
            return q.clone();
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Request<Body>>(MIRROR_QUEUE);
        queues.insert(h.claim.session, tx.clone());
        // The worker outlives the client connection until its queue is
        // drained (the queue closes with this connection's senders).
        let (ctx, peer, h2) = (self.ctx.clone(), self.peer, self.h2);
        let routed = Arc::downgrade(routed);
        let h = h.clone();
        tokio::spawn(async move {
            let mut upstream: Option<Sender> = None;
            while let Some(copy) = rx.recv().await {
                let Some(routed) = routed.upgrade() else {
                    return;
                };
                if upstream.as_ref().is_none_or(Sender::is_closed) {
                    upstream = to_workstation(&ctx, peer, h2, &routed, &h).await.ok();
                }
                let Some(s) = upstream.as_mut() else {
                    continue;
                };
                let metrics = &ctx.metrics;
                match s.send(copy).await {
                    Ok(resp) => {
                        h.to_workstation.requests.fetch_add(1, Ordering::Relaxed);
                        metrics
                            .intercept_requests
                            .with_label_values(&[&routed.key, way::MIRROR])
                            .inc();
                        // The answer is discarded.
                        let _ = resp.into_body().collect().await;
                    }
                    Err(_) => upstream = None,
                }
            }
        });
        tx
    }

    fn take(&self, upstream: Upstream) -> Option<Sender> {
        let mut map = netmux_common::sync::lock(&self.upstreams);
        match map.get(&upstream) {
            Some(s) if s.is_closed() => {
                map.remove(&upstream);
                None
            }
            Some(Sender::H2(s)) => Some(Sender::H2(s.clone())),
            Some(Sender::H1(_)) => map.remove(&upstream),
            None => None,
        }
    }

    fn put(&self, upstream: Upstream, sender: Sender) {
        if !sender.is_closed() {
            netmux_common::sync::lock(&self.upstreams).insert(upstream, sender);
        }
    }

    async fn handshake<T>(&self, io: T) -> Result<Sender, hyper::Error>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        handshake(self.h2, io).await
    }

    async fn to_workstation(
        &self,
        routed: &super::Routed,
        h: &super::Held,
    ) -> Result<Sender, String> {
        to_workstation(&self.ctx, self.peer, self.h2, routed, h).await
    }

    async fn to_pod(&self, routed: &super::Routed) -> Result<Sender, String> {
        let Some((pod, addr)) = routed.pods.pick(&self.ctx.plan.target) else {
            return Err(format!(
                "netmux: Service {} has no ready pod for port {} (intercepted; requests without an intercept's header go to its pods)\n",
                routed.key, self.ctx.plan.port
            ));
        };
        let tcp = super::pods::dial(addr)
            .await
            .map_err(|e| format!("netmux: pod {pod} ({addr}) of {}: {e}\n", routed.key))?;
        let _ = tcp.set_nodelay(true);
        self.handshake(tcp)
            .await
            .map_err(|e| format!("netmux: pod {pod} ({addr}) of {}: {e}\n", routed.key))
    }
}
