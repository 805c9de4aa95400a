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

impl Conn {
    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
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
        drop(headers);
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
        let mut sender = match self.take(upstream) {
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
            Ok(resp) => {
                self.put(upstream, sender);
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
        let io = TokioIo::new(io);
        if self.h2 {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Ok(Sender::H2(s))
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Ok(Sender::H1(s))
        }
    }

    async fn to_workstation(
        &self,
        routed: &super::Routed,
        h: &super::Held,
    ) -> Result<Sender, String> {
        let header = StreamHeader::Reverse {
            service: routed.id,
            port: self.ctx.plan.port,
            peer: self.peer,
        };
        let hooks = crate::stream::counters(&self.ctx.metrics, &routed.key, "intercept");
        let down = |why: String| {
            format!(
                "netmux: this request matched the personal intercept of {} by {}, but its workstation target is down ({why}); it gets this answer until the target is back or the intercept ends (`netmux leave`)\n",
                routed.key, h.claim
            )
        };
        let io = stream::open_io(&h.conn, &header, &hooks)
            .await
            .map_err(|e| down(e.to_string()))?;
        self.handshake(io).await.map_err(|e| down(e.to_string()))
    }

    async fn to_pod(&self, routed: &super::Routed) -> Result<Sender, String> {
        let Some((pod, addr)) = routed.pods.pick(&self.ctx.plan.target) else {
            return Err(format!(
                "netmux: Service {} has no ready pod for port {} (intercepted; requests without an intercept's header go to its pods)\n",
                routed.key, self.ctx.plan.port
            ));
        };
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("netmux: pod {pod} ({addr}) of {}: {e}\n", routed.key))?;
        let _ = tcp.set_nodelay(true);
        self.handshake(tcp)
            .await
            .map_err(|e| format!("netmux: pod {pod} ({addr}) of {}: {e}\n", routed.key))
    }
}
