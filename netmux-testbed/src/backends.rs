//! Pod backends and the HTTP clients that talk to them.
//!
//! A backend is what a pod of a [`crate::cluster::FakeCluster`] runs: one
//! socket per container port serving HTTP/1.1 and h2c (HTTP/2 with prior
//! knowledge, as gRPC speaks it in a cluster) side by side. Every answer
//! names the pod, so a test can tell where each request went:
//! - any request: `200`, body the pod name, headers `x-served-by: <pod>`
//!   and `x-seen-user: <the request's x-netmux-user, or empty>`;
//! - `content-type: application/grpc…`: a gRPC-shaped answer, one
//!   length-prefixed message whose payload is the pod name, then trailers
//!   `grpc-status: 0`;
//! - an HTTP/1.1 `Upgrade` (as a WebSocket handshake): `101 Switching
//!   Protocols` with `x-served-by`, then on the upgraded connection the pod
//!   name and a newline, and every byte echoed back ([`upgrade_echo`]).
//!
//! Each pod counts the requests it answered ([`Counts`]).
//!
//! The clients ([`Http1`], [`H2c`]) are async; run them where their
//! sockets must be, e.g. in `sandbox.cluster().block_on(|| async { .. })`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Buf as _, Bytes};
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use crate::{lock, Error, Result};

/// Requests one pod answered, by protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Over HTTP/1.x (gRPC excluded).
    pub http1: u64,
    /// Over HTTP/2 (gRPC excluded).
    pub h2: u64,
    /// gRPC-shaped requests (`content-type: application/grpc…`).
    pub grpc: u64,
}

impl Counts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.http1 + self.h2 + self.grpc
    }
}

/// Requests per pod, shared by every backend of a cluster; with
/// [`Tally::with_paths`], also the path of every request, in order (a
/// [`Standalone`] keeps them; a cluster's pods, which may serve a bench's
/// load, do not).
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    counts: Arc<Mutex<BTreeMap<String, Counts>>>,
    paths: Option<Arc<Mutex<Vec<String>>>>,
}

impl Tally {
    fn with_paths() -> Tally {
        Tally {
            paths: Some(Arc::default()),
            ..Tally::default()
        }
    }

    fn bump(&self, pod: &str, path: &str, version: Version, grpc: bool) {
        if let Some(paths) = &self.paths {
            lock(paths).push(path.to_owned());
        }
        let mut all = lock(&self.counts);
        let c = all.entry(pod.to_owned()).or_default();
        match (grpc, version) {
            (true, _) => c.grpc += 1,
            (false, Version::HTTP_2) => c.h2 += 1,
            (false, _) => c.http1 += 1,
        }
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<String, Counts> {
        lock(&self.counts).clone()
    }

    fn paths(&self) -> Vec<String> {
        self.paths
            .as_deref()
            .map(|p| lock(p).clone())
            .unwrap_or_default()
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// Serves `listener` as pod `pod` until the task is dropped or aborted;
/// its connections end with it (a crashed pod).
pub(crate) async fn serve(listener: TcpListener, pod: String, tally: Tally) {
    let pod: Arc<str> = pod.into();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors or the like: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        // Reap finished connections so the set stays small.
        while connections.try_join_next().is_some() {}
        let (pod, tally) = (pod.clone(), tally.clone());
        connections.spawn(async move {
            let service =
                hyper::service::service_fn(move |req| answer(req, pod.clone(), tally.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// An `Upgrade` request: `101`, then the pod's name and a newline on the
/// upgraded connection, then every byte echoed.
fn switch_to_echo(mut req: Request<Incoming>, pod: Arc<str>, tally: &Tally) -> Response<Body> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tally.bump(&pod, req.uri().path(), req.version(), false);
    let protocol = req
        .headers()
        .get(UPGRADE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("echo"));
    let on = hyper::upgrade::on(&mut req);
    let name = pod.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on.await else { return };
        let mut io = TokioIo::new(upgraded);
        if io.write_all(format!("{name}\n").as_bytes()).await.is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = io.read(&mut buf).await {
            if io.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(hyper::StatusCode::SWITCHING_PROTOCOLS)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, protocol)
        .header(
            "x-served-by",
            HeaderValue::from_str(&pod).unwrap_or_else(|_| HeaderValue::from_static("?")),
        )
        .body(BoxBody::new(Full::new(Bytes::new())))
        .unwrap_or_else(|_| Response::new(BoxBody::new(Full::new(Bytes::new()))))
}

async fn answer(
    req: Request<Incoming>,
    pod: Arc<str>,
    tally: Tally,
) -> Result<Response<Body>, Infallible> {
    if req.version() == Version::HTTP_11 && req.headers().contains_key(UPGRADE) {
        return Ok(switch_to_echo(req, pod, &tally));
    }
    let version = req.version();
    let path = req.uri().path().to_owned();
    let grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let user = req
        .headers()
        .get("x-netmux-user")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(""));
    // Read the whole request first, as a real handler would.
    let _ = req.into_body().collect().await;
    tally.bump(&pod, &path, version, grpc);
    let served_by = HeaderValue::from_str(&pod).unwrap_or_else(|_| HeaderValue::from_static("?"));
    let builder = Response::builder()
        .header("x-served-by", served_by)
        .header("x-seen-user", user);
    let response = if grpc {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames = futures::stream::iter([
            Ok::<_, Infallible>(Frame::data(grpc_frame(pod.as_bytes()))),
            Ok(Frame::trailers(trailers)),
        ]);
        builder
            .header(CONTENT_TYPE, "application/grpc")
            .body(BoxBody::new(StreamBody::new(frames)))
    } else {
        builder
            .header(CONTENT_TYPE, "text/plain")
            .body(BoxBody::new(Full::new(Bytes::from(pod.to_string()))))
    };
    Ok(response.unwrap_or_else(|_| Response::new(BoxBody::new(Full::new(Bytes::new())))))
}

/// A backend serving on its own thread inside a namespace, outside any
/// fake cluster: a workstation's `--to` target, say. It answers as a pod
/// named `name` does (see the module docs), counts its requests and keeps
/// their paths; [`Standalone::stop`] or dropping it closes the listener and every open
/// connection (a target that went down).
#[derive(Debug)]
pub struct Standalone {
    addr: SocketAddr,
    name: String,
    tally: Tally,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Standalone {
    /// Starts serving on `addr` (port 0: any) inside `netns` (a
    /// [`crate::Sandbox`]'s `ws()` or `cluster()`).
    pub fn start(netns: &crate::Netns, addr: SocketAddr, name: &str) -> Result<Standalone> {
        let ns = netns.name().to_owned();
        let tally = Tally::with_paths();
        let (pod, served) = (name.to_owned(), tally.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("backend-{name}"))
            .spawn(move || {
                let rt = match crate::netns::runtime_in(&ns) {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match TcpListener::bind(addr).await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(Error::Io {
                                context: format!("binding backend {pod} to {addr} in {ns}"),
                                source: e,
                            }));
                            return;
                        }
                    };
                    let bound = listener.local_addr().unwrap_or(addr);
                    let _ = ready_tx.send(Ok(bound));
                    tokio::select! {
                        () = serve(listener, pod, served) => {}
                        _ = stopped => {}
                    }
                });
                // The runtime drops here: every connection task with it.
            })
            .map_err(Error::io("starting a backend thread"))?;
        match ready_rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(Ok(addr)) => Ok(Standalone {
                addr,
                name: name.to_owned(),
                tally,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(Error::Check(format!("backend {name} did not start"))),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far, by protocol.
    pub fn counts(&self) -> Counts {
        self.tally
            .snapshot()
            .get(&self.name)
            .copied()
            .unwrap_or_default()
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.counts().total()
    }

    /// The paths of the requests answered so far, in the order they were
    /// answered.
    pub fn paths(&self) -> Vec<String> {
        self.tally.paths()
    }

    /// Stops serving now: the listener and every open connection close
    /// (new connections are refused) before this returns.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One gRPC message: not compressed, u32 big-endian length, payload.
fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(0);
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// The first gRPC message of `body`, if it holds a whole one.
fn grpc_message(mut body: Bytes) -> Option<Vec<u8>> {
    if body.len() < 5 {
        return None;
    }
    body.advance(1);
    let len = usize::try_from(body.get_u32()).ok()?;
    (body.len() >= len).then(|| body[..len].to_vec())
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body, as text (lossy).
    pub body: String,
    headers: HeaderMap,
}

impl Reply {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A gRPC-shaped answer.
#[derive(Debug, Clone)]
pub struct GrpcReply {
    /// The HTTP status code.
    pub status: u16,
    /// The `grpc-status` trailer (or header, for a trailers-only answer).
    pub grpc_status: Option<String>,
    /// The first message's payload (empty without one).
    pub message: Vec<u8>,
    headers: HeaderMap,
}

impl GrpcReply {
    /// A response header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn http_error(what: String) -> impl FnOnce(hyper::Error) -> Error {
    move |e| Error::Io {
        context: what,
        source: std::io::Error::other(e),
    }
}

async fn dial(addr: SocketAddr) -> Result<TokioIo<TcpStream>> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(Error::io(format!("connecting to {addr}")))?;
    let _ = stream.set_nodelay(true);
    Ok(TokioIo::new(stream))
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    version: Version,
) -> Result<Request<Full<Bytes>>> {
    let mut b = Request::builder().method(method).uri(path);
    b = b.header(HOST, addr.to_string());
    b = b.version(version);
    if version == Version::HTTP_2 {
        // HTTP/2 carries the authority in the URI (`:authority`), not Host.
        b = Request::builder()
            .method(method)
            .version(version)
            .uri(format!("http://{addr}{path}"));
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body))
        .map_err(|e| Error::Check(format!("building a request for {path}: {e}")))
}

async fn read_reply(what: &str, resp: Response<Incoming>) -> Result<Reply> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(http_error(format!("reading the answer to {what}")))?
        .to_bytes();
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        headers,
    })
}

/// One HTTP/1.1 connection, kept alive across requests.
#[derive(Debug)]
pub struct Http1 {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Http1 {
    /// Connects to `addr` (call inside a tokio runtime).
    pub async fn connect(addr: SocketAddr) -> Result<Http1> {
        let io = dial(addr).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(http_error(format!("HTTP/1.1 handshake with {addr}")))?;
        tokio::spawn(conn);
        Ok(Http1 { addr, sender })
    }

    /// `GET path` with `headers` on this connection.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        let what = format!("GET http://{}{path} (HTTP/1.1)", self.addr);
        self.sender
            .ready()
            .await
            .map_err(http_error(format!("{what}: connection")))?;
        let req = request(
            self.addr,
            "GET",
            path,
            headers,
            Bytes::new(),
            Version::HTTP_11,
        )?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(http_error(what.clone()))?;
        read_reply(&what, resp).await
    }
}

/// What an [`upgrade_echo`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    /// The handshake's status (101 when the protocol was switched).
    pub status: u16,
    /// Who answered: the first line on the upgraded connection (a
    /// backend's name), or the body of a refusal.
    pub by: String,
    /// What came back for the line sent after it.
    pub echoed: String,
}

/// An HTTP/1.1 `Upgrade: echo` to `addr` (`GET path` with `headers`, as a
/// WebSocket handshake is), then `line` sent on the upgraded connection
/// and its echo read back (call inside a tokio runtime).
pub async fn upgrade_echo(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    line: &str,
) -> Result<Switched> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let what = format!("Upgrade of http://{addr}{path}");
    let io = dial(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http_error(format!("{what}: handshake")))?;
    tokio::spawn(conn.with_upgrades());
    let mut all: Vec<(&str, &str)> = vec![("connection", "upgrade"), ("upgrade", "echo")];
    all.extend_from_slice(headers);
    let req = request(addr, "GET", path, &all, Bytes::new(), Version::HTTP_11)?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(http_error(what.clone()))?;
    let status = resp.status().as_u16();
    if status != 101 {
        let reply = read_reply(&what, resp).await?;
        return Ok(Switched {
            status,
            by: reply.body,
            echoed: String::new(),
        });
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(http_error(format!("{what}: switching")))?;
    let mut io = tokio::io::BufReader::new(TokioIo::new(upgraded));
    let io_error = |e| Error::Io {
        context: what.clone(),
        source: e,
    };
    let mut by = String::new();
    io.read_line(&mut by).await.map_err(io_error)?;
    io.get_mut()
        .write_all(line.as_bytes())
        .await
        .map_err(io_error)?;
    let mut echoed = vec![0u8; line.len()];
    io.read_exact(&mut echoed).await.map_err(io_error)?;
    Ok(Switched {
        status,
        by: by.trim_end().to_owned(),
        echoed: String::from_utf8_lossy(&echoed).into_owned(),
    })
}

/// One HTTP/2 connection with prior knowledge (h2c), shared by its clones:
/// requests on clones run concurrently as streams of the one connection.
#[derive(Debug, Clone)]
pub struct H2c {
    addr: SocketAddr,
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2c {
    /// Connects to `addr` (call inside a tokio runtime).
    pub async fn connect(addr: SocketAddr) -> Result<H2c> {
        let io = dial(addr).await?;
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(http_error(format!("HTTP/2 handshake with {addr}")))?;
        tokio::spawn(conn);
        Ok(H2c { addr, sender })
    }

    async fn send(&self, what: &str, req: Request<Full<Bytes>>) -> Result<Response<Incoming>> {
        let mut sender = self.sender.clone();
        sender
            .ready()
            .await
            .map_err(http_error(format!("{what}: connection")))?;
        sender
            .send_request(req)
            .await
            .map_err(http_error(what.to_owned()))
    }

    /// `GET path` with `headers`, one stream.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        let what = format!("GET http://{}{path} (h2c)", self.addr);
        let req = request(
            self.addr,
            "GET",
            path,
            headers,
            Bytes::new(),
            Version::HTTP_2,
        )?;
        let resp = self.send(&what, req).await?;
        read_reply(&what, resp).await
    }

    /// A unary gRPC-shaped call: `POST path`, `content-type:
    /// application/grpc`, `te: trailers`, `payload` as one message.
    pub async fn grpc(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<GrpcReply> {
        let what = format!("gRPC http://{}{path} (h2c)", self.addr);
        let mut all = vec![("content-type", "application/grpc"), ("te", "trailers")];
        all.extend_from_slice(headers);
        let req = request(
            self.addr,
            "POST",
            path,
            &all,
            grpc_frame(payload),
            Version::HTTP_2,
        )?;
        let resp = self.send(&what, req).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let collected = resp
            .into_body()
            .collect()
            .await
            .map_err(http_error(format!("reading the answer to {what}")))?;
        let grpc_status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let message = grpc_message(collected.to_bytes()).unwrap_or_default();
        Ok(GrpcReply {
            status,
            grpc_status,
            message,
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_frames_round_trip_and_short_ones_are_refused() {
        let f = grpc_frame(b"web-0");
        assert_eq!(&f[..5], &[0, 0, 0, 0, 5]);
        assert_eq!(grpc_message(f), Some(b"web-0".to_vec()));
        assert_eq!(grpc_message(Bytes::from_static(&[0, 0, 0, 0, 9, 1])), None);
        assert_eq!(grpc_message(Bytes::from_static(&[0, 0])), None);
    }

    /// Both protocols on one socket, each answer naming the pod, each
    /// request counted once under its protocol.
    #[tokio::test]
    async fn a_backend_answers_http1_h2c_and_grpc_with_its_pod_name() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tally = Tally::default();
        let server = tokio::spawn(serve(listener, "web-0".into(), tally.clone()));

        let mut h1 = Http1::connect(addr).await.expect("h1");
        for _ in 0..3 {
            let r = h1
                .get("/x", &[("x-netmux-user", "alice")])
                .await
                .expect("get");
            assert_eq!((r.status, r.body.as_str()), (200, "web-0"));
            assert_eq!(r.header("x-served-by"), Some("web-0"));
            assert_eq!(r.header("x-seen-user"), Some("alice"));
        }
        let h2 = H2c::connect(addr).await.expect("h2c");
        let r = h2.get("/y", &[]).await.expect("h2 get");
        assert_eq!((r.status, r.body.as_str()), (200, "web-0"));
        let g = h2.grpc("/pkg.Svc/Call", &[], b"hi").await.expect("grpc");
        assert_eq!(g.status, 200);
        assert_eq!(g.grpc_status.as_deref(), Some("0"));
        assert_eq!(g.message, b"web-0");
        assert_eq!(
            tally.snapshot().get("web-0").copied(),
            Some(Counts {
                http1: 3,
                h2: 1,
                grpc: 1
            })
        );
        server.abort();
    }
}
