//! One proxied TCP connection as one QUIC stream, at both ends.
//!
//! The side that accepted a TCP client asks for a stream ([`open`]): the
//! daemon's L2C listeners and the server's C2L listeners. The side that
//! dials answers it ([`accept`], then [`Incoming::connect`] or
//! [`Incoming::refuse`]): the server for L2C, the daemon for C2L. The
//! handshake's rules are [`crate::proto::open`]'s; this module only moves
//! its bytes, dials ([`dial`]) and reports to the caller's [`Hooks`], so
//! every site counts and resets the same way.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::net::TcpStream;

use super::pipe::{self, End, Meter, Outcome};
use crate::proto::error_code;
use crate::proto::open::{self, HeaderError, HeaderReader, Request, ResultReader, Then};
use crate::proto::stream::{OpenResult, StreamHeader, MAX_HEADER_LEN};

#[cfg(feature = "metrics")]
mod counters;
#[cfg(feature = "metrics")]
pub use counters::{Counters, Families};

/// TCP keepalive on every dialled and accepted socket: a peer that vanished
/// without a FIN or RST (machine gone, path cut) is found after about
/// `KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_RETRIES` (two minutes)
/// of silence instead of never; the kernel's default waits two hours.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between unanswered keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Unanswered probes after which the connection is reset.
pub const KEEPALIVE_RETRIES: u32 = 4;

/// Turns on [`KEEPALIVE_IDLE`]-style keepalive. Best effort: a socket that
/// refuses it still works, it just notices a vanished peer later.
pub fn keepalive(tcp: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot turn on TCP keepalive");
    }
}

/// What a stream reports, once per event, to the caller's metrics. Both
/// ends and both directions call the same hooks in the same places.
pub trait Hooks: Meter {
    /// The error reason when the peer's QUIC connection cannot carry a new
    /// stream (e.g. `endpoint_down`).
    fn peer_down(&self) -> &'static str;
    /// A stream now carries a connection (`connections_total`).
    fn opened(&self);
    /// The answer is known after `latency`: since the TCP accept for the
    /// asking side, since the dial began for the answering side
    /// (`connect_latency`; `connections_active` up when `connected`).
    fn answered(&self, connected: bool, latency: Duration);
    /// A connection failed or ended otherwise than cleanly; `reason` is a
    /// bounded label (`connection_errors`).
    fn failed(&self, reason: &str);
    /// A connection that was answered `connected` ended
    /// (`connections_active` down).
    fn closed(&self);
}

/// Settings of the bridge both ends share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// After one direction ended cleanly (a half-close), the other is reset
    /// if no byte moves for this long; `None`: never.
    pub half_close_timeout: Option<Duration>,
}

/// How an asked-for stream went, for the caller's log.
#[derive(Debug)]
pub struct Opened {
    /// The QUIC stream id (a number, unique in its connection).
    pub stream: u64,
    /// Client bytes that went out with the header.
    pub first: usize,
    /// How the bridge ended.
    pub outcome: Outcome,
}

/// Why a stream was never opened; the TCP client was reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotOpened {
    /// The peer's connection could not carry a new stream.
    PeerDown(String),
    /// The TCP client reset before its first bytes were sent.
    ClientReset,
}

/// The asking side: opens a stream on `conn` for the accepted client
/// `tcp`, writes `header` with the client's first bytes, bridges, and
/// resets `tcp` on a refusal. `accepted` is when `tcp` was accepted.
pub async fn open<H: Hooks>(
    conn: &Connection,
    tcp: TcpStream,
    header: &StreamHeader,
    accepted: Instant,
    options: Options,
    hooks: &H,
) -> Result<Opened, NotOpened> {
    let mut head = BytesMut::with_capacity(16 * 1024);
    open::write_header(header, &mut head);
    open_head(conn, tcp, head, accepted, options, hooks).await
}

/// [`open`] with the stream's opening bytes already in `head`: a
/// [`StreamHeader`], or the frame of a relay that writes the header
/// itself (the server forwarding to another replica's daemon); the far
/// end answers by the same rules.
pub async fn open_head<H: Hooks>(
    conn: &Connection,
    mut tcp: TcpStream,
    mut head: BytesMut,
    accepted: Instant,
    options: Options,
    hooks: &H,
) -> Result<Opened, NotOpened> {
    keepalive(&tcp);
    // Rule 1: the client's first bytes go with the header. A reset seen
    // here must not be lost: the next read of a reset socket says EOF.
    let header_len = head.len();
    match tcp.try_read_buf(&mut head) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(_) => {
            hooks.failed(End::TcpReset.label());
            pipe::abort_on_drop(&tcp);
            return Err(NotOpened::ClientReset);
        }
    }
    let first = head.len() - header_len;
    let (mut send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => {
            hooks.failed(hooks.peer_down());
            pipe::abort_on_drop(&tcp);
            return Err(NotOpened::PeerDown(e.to_string()));
        }
    };
    if let Err(e) = send.write_chunk(head.freeze()).await {
        hooks.failed(hooks.peer_down());
        pipe::abort_on_drop(&tcp);
        return Err(NotOpened::PeerDown(e.to_string()));
    }
    let stream = u64::from(send.id());
    tracing::debug!(stream, client = ?tcp.peer_addr().ok(), first, "stream opened");
    hooks.opened();
    hooks.tcp_to_stream(first);
    let connected = AtomicBool::new(false);
    let connected_ref = &connected;
    let prelude = |recv: RecvStream| async move {
        let result = read_result(recv).await;
        if !matches!(result, Err(End::ConnectionLost(_))) {
            hooks.answered(result.is_ok(), accepted.elapsed());
            connected_ref.store(result.is_ok(), Ordering::Relaxed);
        }
        result
    };
    let outcome = pipe::bridge(&mut tcp, send, recv, Bytes::new(), prelude, options, hooks).await;
    tracing::debug!(stream, end = ?outcome.end, "stream bridged");
    if outcome.end != End::Clean {
        hooks.failed(outcome.end.metric_label());
    }
    if connected.load(Ordering::Relaxed) {
        hooks.closed();
    }
    Ok(Opened {
        stream,
        first,
        outcome,
    })
}

/// A stream the far end answered `Connected`, as one byte stream for an
/// in-process protocol (the server's HTTP router of personal intercepts
/// speaks HTTP over it instead of bridging a TCP socket).
pub struct StreamIo {
    send: SendStream,
    recv: RecvStream,
    /// Far-end bytes that arrived with its result.
    pending: Bytes,
}

impl StreamIo {
    /// The QUIC stream id.
    pub fn stream(&self) -> u64 {
        u64::from(self.send.id())
    }
}

impl tokio::io::AsyncRead for StreamIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if !self.pending.is_empty() {
            let n = self.pending.len().min(buf.remaining());
            let chunk = self.pending.split_to(n);
            buf.put_slice(&chunk);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for StreamIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.send)
            .poll_write(cx, buf)
            .map_err(io::Error::from)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.send).poll_shutdown(cx)
    }
}

/// Why [`open_io`] has no stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoNotOpened {
    /// The peer's connection could not carry a new stream.
    PeerDown(String),
    /// The far end answered with a refusal (its target is down...).
    Refused(String),
}

impl std::fmt::Display for IoNotOpened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IoNotOpened::PeerDown(e) => write!(f, "the workstation is unreachable: {e}"),
            IoNotOpened::Refused(e) => write!(f, "{e}"),
        }
    }
}

/// The asking side without a TCP client: opens a stream on `conn`, writes
/// `header` and waits for the far end's result (rule 5); the open is
/// counted in `hooks` (`opened`, refusals; bytes and the end are the
/// caller's to count).
pub async fn open_io<H: Hooks>(
    conn: &Connection,
    header: &StreamHeader,
    hooks: &H,
) -> Result<StreamIo, IoNotOpened> {
    let mut head = BytesMut::with_capacity(MAX_HEADER_LEN);
    open::write_header(header, &mut head);
    open_io_head(conn, head.freeze(), hooks).await
}

/// [`open_io`] with the stream's opening bytes already in `head` (see
/// [`open_head`]).
pub async fn open_io_head<H: Hooks>(
    conn: &Connection,
    head: Bytes,
    hooks: &H,
) -> Result<StreamIo, IoNotOpened> {
    let started = Instant::now();
    let (mut send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => {
            hooks.failed(hooks.peer_down());
            return Err(IoNotOpened::PeerDown(e.to_string()));
        }
    };
    if let Err(e) = send.write_chunk(head).await {
        hooks.failed(hooks.peer_down());
        return Err(IoNotOpened::PeerDown(e.to_string()));
    }
    hooks.opened();
    match read_result(recv).await {
        // `answered(true)` is not reported: the caller's protocol decides
        // when the stream ends, so `connections_active` is not this one's.
        Ok((recv, pending)) => Ok(StreamIo {
            send,
            recv,
            pending,
        }),
        Err(End::ConnectionLost(e)) => {
            hooks.failed(hooks.peer_down());
            Err(IoNotOpened::PeerDown(e))
        }
        Err(end) => {
            hooks.answered(false, started.elapsed());
            hooks.failed(end.metric_label());
            let why = match end {
                End::Refused(r) => r,
                other => other.label().to_owned(),
            };
            Err(IoNotOpened::Refused(why))
        }
    }
}

/// Rule 5: the far end's result before any of its bytes reach TCP.
async fn read_result(mut recv: RecvStream) -> Result<(RecvStream, Bytes), End> {
    let mut reader = ResultReader::new();
    loop {
        let refusal = match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(c)) => match reader.feed(&c.bytes) {
                Ok(Some(rest)) => return Ok((recv, rest)),
                Ok(None) => continue,
                Err(r) => r,
            },
            Ok(None) => reader.end(),
            Err(e) => return Err(End::ConnectionLost(e.to_string())),
        };
        return Err(End::Refused(refusal.to_string()));
    }
}

/// A stream whose header arrived, on the answering side.
pub struct Incoming {
    send: SendStream,
    recv: RecvStream,
    request: Request,
}

/// The answering side: reads the header of a stream the peer opened
/// (rule 2), within `timeout`. On `Err` the stream has been reset with
/// `PROTOCOL_VIOLATION`.
pub async fn accept(
    mut send: SendStream,
    mut recv: RecvStream,
    timeout: Duration,
) -> Result<Incoming, HeaderError> {
    let read = async {
        let mut reader = HeaderReader::new();
        loop {
            match recv.read_chunk(MAX_HEADER_LEN, true).await {
                Ok(Some(c)) => {
                    if let Some(request) = reader.feed(&c.bytes)? {
                        return Ok(request);
                    }
                }
                _ => return Err(reader.end()),
            }
        }
    };
    let read = tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(HeaderError::Ended));
    match read {
        Ok(request) => Ok(Incoming {
            send,
            recv,
            request,
        }),
        Err(e) => {
            violation(&mut send, &mut recv);
            Err(e)
        }
    }
}

fn violation(send: &mut SendStream, recv: &mut RecvStream) {
    let code = VarInt::from_u32(error_code::PROTOCOL_VIOLATION);
    let _ = send.reset(code);
    let _ = recv.stop(code);
}

impl Incoming {
    /// What the peer asks for.
    pub fn header(&self) -> &StreamHeader {
        &self.request.header
    }

    /// The QUIC stream id (a number, unique in its connection).
    pub fn stream(&self) -> u64 {
        u64::from(self.send.id())
    }

    /// Drops a stream whose header this side never accepts (e.g. a kind
    /// only the other side may open): reset with `PROTOCOL_VIOLATION`.
    pub fn violation(mut self) {
        violation(&mut self.send, &mut self.recv);
    }

    /// Rules 3 and 4: answers `result` (not `Connected`) and ends the
    /// stream, so the asking side resets its client at once.
    pub async fn refuse(mut self, result: OpenResult, hooks: &impl Hooks) {
        hooks.failed(result.label());
        let _ = self.answer(result).await;
    }

    /// Writes the answer; `false` when the stream cannot carry it.
    async fn answer(&mut self, result: OpenResult) -> bool {
        let answer = self.request.answer(result);
        let written = self.send.write_all(&answer.bytes).await.is_ok();
        match answer.then() {
            Then::Bridge => written,
            Then::Close { code } => {
                let _ = self.send.finish();
                let _ = self.recv.stop(VarInt::from_u32(code));
                false
            }
        }
    }

    /// Dials with `dial`; answers its outcome, and bridges a connected
    /// target until both directions end. `Err` is the refusal answered.
    pub async fn connect<H, D>(
        mut self,
        dial: D,
        options: Options,
        hooks: &H,
    ) -> Result<Outcome, OpenResult>
    where
        H: Hooks,
        D: Future<Output = Result<TcpStream, OpenResult>>,
    {
        let started = Instant::now();
        let mut tcp = match dial.await {
            Ok(tcp) => tcp,
            Err(result) => {
                self.refuse(result, hooks).await;
                return Err(result);
            }
        };
        tracing::debug!(stream = self.stream(), local = ?tcp.local_addr().ok(), "dialled");
        hooks.opened();
        hooks.answered(true, started.elapsed());
        let outcome = if self.answer(OpenResult::Connected).await {
            let Incoming {
                send,
                recv,
                request,
            } = self;
            let send_id = send.id();
            let outcome = pipe::bridge(
                &mut tcp,
                send,
                recv,
                request.pending,
                |r| async move { Ok((r, Bytes::new())) },
                options,
                hooks,
            )
            .await;
            tracing::debug!(stream = u64::from(send_id), end = ?outcome.end, "stream bridged");
            if outcome.end != End::Clean {
                hooks.failed(outcome.end.metric_label());
            }
            outcome
        } else {
            // The asking side is gone (it reset or stopped the stream):
            // its client was reset, so is the target.
            hooks.failed(End::StreamReset.label());
            pipe::abort_on_drop(&tcp);
            Outcome {
                tcp_to_stream: 0,
                stream_to_tcp: 0,
                end: End::StreamReset,
            }
        };
        hooks.closed();
        Ok(outcome)
    }
}

/// The answer a failed dial gets: `Refused` when the target actively
/// refused (RST), `Unreachable` for anything else.
pub fn dial_result(e: &io::Error) -> OpenResult {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        OpenResult::Refused
    } else {
        OpenResult::Unreachable
    }
}

/// Connects with `connect` to the first of `addrs` that answers within
/// `timeout` each; maps failures with [`dial_result`] (a timeout is
/// `Unreachable`). The socket gets [`keepalive`].
pub async fn dial<F, Fut>(
    addrs: &[SocketAddr],
    timeout: Duration,
    connect: F,
) -> Result<TcpStream, OpenResult>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<TcpStream>>,
{
    let mut last = OpenResult::Unreachable;
    for addr in addrs {
        match tokio::time::timeout(timeout, connect(*addr)).await {
            Ok(Ok(tcp)) => {
                keepalive(&tcp);
                return Ok(tcp);
            }
            Ok(Err(e)) => {
                last = dial_result(&e);
                tracing::debug!(%addr, error = %e, result = %last, "dial failed");
            }
            Err(_) => {
                last = OpenResult::Unreachable;
                tracing::debug!(%addr, "dial timed out");
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Hooks that write down what they were told.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Recorder {
        fn push(&self, e: String) {
            self.0.lock().expect("recorder").push(e);
        }
        fn events(&self) -> Vec<String> {
            self.0.lock().expect("recorder").clone()
        }
    }

    impl Meter for Recorder {
        fn tcp_to_stream(&self, n: usize) {
            self.push(format!("sent {n}"));
        }
        fn stream_to_tcp(&self, n: usize) {
            self.push(format!("received {n}"));
        }
    }

    impl Hooks for Recorder {
        fn peer_down(&self) -> &'static str {
            "peer_down"
        }
        fn opened(&self) {
            self.push("opened".into());
        }
        fn answered(&self, connected: bool, _: Duration) {
            self.push(format!("answered {connected}"));
        }
        fn failed(&self, reason: &str) {
            self.push(format!("failed {reason}"));
        }
        fn closed(&self) {
            self.push("closed".into());
        }
    }

    /// Issue 15: a client that reset before its first bytes were read
    /// must not become a stream whose far end sees a clean FIN (the next
    /// read of a reset socket says EOF). No stream is opened; the reset
    /// is counted.
    #[tokio::test]
    async fn a_client_reset_before_its_first_bytes_opens_no_stream() {
        let (_client, _server, conn, _peer) = crate::tunnel::quic::test_pair().await;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (accepted, _) = l.accept().await.expect("accept");
        client.set_zero_linger().expect("SO_LINGER 0");
        drop(client);
        // The RST has arrived once the socket is readable.
        accepted.readable().await.expect("readable");
        let header = StreamHeader::Connect {
            service: crate::proto::catalog::ServiceId(1),
            port: 80,
        };
        let hooks = Recorder::default();
        let options = Options {
            half_close_timeout: None,
        };
        let opened = tokio::time::timeout(
            Duration::from_secs(5),
            open(&conn, accepted, &header, Instant::now(), options, &hooks),
        )
        .await
        .expect("open returns at once instead of bridging a dead client");
        assert_eq!(opened.expect_err("not opened"), NotOpened::ClientReset);
        assert_eq!(hooks.events(), ["failed tcp_reset"]);
    }

    #[tokio::test]
    async fn a_refused_dial_is_refused_and_a_closed_port_maps_the_same_everywhere() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let r = dial(&[addr], Duration::from_secs(1), TcpStream::connect).await;
        assert_eq!(r.expect_err("nothing listens"), OpenResult::Refused);
        assert_eq!(
            dial_result(&io::ErrorKind::ConnectionRefused.into()),
            OpenResult::Refused
        );
        for kind in [io::ErrorKind::TimedOut, io::ErrorKind::AddrNotAvailable] {
            assert_eq!(dial_result(&kind.into()), OpenResult::Unreachable);
        }
    }

    #[tokio::test]
    async fn the_first_address_that_answers_wins_and_gets_keepalive() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let open = l.local_addr().expect("addr");
        let tcp = dial(&[closed, open], Duration::from_secs(1), TcpStream::connect)
            .await
            .expect("second address answers");
        assert_eq!(tcp.peer_addr().expect("peer"), open);
        assert!(socket2::SockRef::from(&tcp)
            .keepalive()
            .expect("getsockopt"));
    }

    /// Issue 15: when the asking side stopped the stream before the
    /// answer, the `Connected` answer cannot be sent; the dialled target
    /// must get a reset, not a FIN.
    #[tokio::test]
    async fn an_answer_that_cannot_be_sent_resets_the_target() {
        let (_client, _server, conn, peer) = crate::tunnel::quic::test_pair().await;
        let target = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let target_addr = target.local_addr().expect("addr");
        // The asking side: header, then it stops reading (its client is gone).
        let (mut send, mut recv) = conn.open_bi().await.expect("open");
        let mut head = BytesMut::new();
        open::write_header(
            &StreamHeader::Connect {
                service: crate::proto::catalog::ServiceId(1),
                port: 80,
            },
            &mut head,
        );
        send.write_all(&head).await.expect("header");
        recv.stop(VarInt::from_u32(error_code::TCP_RESET))
            .expect("stop");
        let (asend, arecv) = peer.accept_bi().await.expect("accept");
        let incoming = accept(asend, arecv, Duration::from_secs(5))
            .await
            .expect("header");
        let hooks = Recorder::default();
        let options = Options {
            half_close_timeout: None,
        };
        // The dial completes once the STOP_SENDING had time to arrive.
        let dial = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            TcpStream::connect(target_addr)
                .await
                .map_err(|e| dial_result(&e))
        };
        let (outcome, accepted) =
            tokio::join!(incoming.connect(dial, options, &hooks), target.accept());
        assert_eq!(outcome.expect("dialled").end, End::StreamReset);
        let (mut t, _) = accepted.expect("target accept");
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut t, &mut buf),
        )
        .await
        .expect("the target hears at once");
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset),
            "the target must be reset, not see a FIN"
        );
        assert_eq!(
            hooks.events(),
            ["opened", "answered true", "failed stream_reset", "closed"]
        );
    }
}
