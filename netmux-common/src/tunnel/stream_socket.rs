//! QUIC over a byte stream (a TCP connection, a `kubectl port-forward`):
//! datagrams framed with a length prefix, and quinn sockets built on them.
//!
//! * [`Encoder`]/[`Decoder`]: the sans-IO framing (in
//!   [`crate::proto::stream_framing`], re-exported). A stream starts with
//!   [`PREAMBLE`] (magic and version, so a stray HTTP probe on the port is
//!   an error, not a flood of nonsense datagrams); then each datagram is a
//!   u16 big-endian length (1..=65535) and that many bytes.
//! * [`StreamSocket`]: a [`quinn::AsyncUdpSocket`] over one stream, for the
//!   daemon: one peer, back-pressure from the stream (`WouldBlock` while the
//!   send queue is full).
//! * [`CompositeSocket`]: the server's socket: the real UDP socket plus any
//!   number of stream peers added with [`CompositeSocket::add_stream`], all
//!   feeding the same quinn `Endpoint`. Each stream peer gets a fake address
//!   in `100::/64` (RFC 6666, discard-only: no real UDP datagram comes from
//!   there), so routing `try_send` by destination is unambiguous. A full
//!   stream queue drops the datagram, as a congested UDP path would: a
//!   `WouldBlock` here would stall connections of other peers, since
//!   quinn's pollers cannot say which peer they wait for. A server's stream
//!   peer is closed when it sends no preamble in time or stays silent too
//!   long ([`StreamDeadlines`]); [`CompositeSocket::stream_peers_from`]
//!   lets the acceptor cap peers per source address.
//!
//! GSO batches (`Transmit::segment_size`) are split into one frame per
//! datagram; the stream peers of the composite accept whatever the UDP
//! socket's `max_transmit_segments` allows.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

pub use crate::proto::stream_framing::{Decoder, Encoder, FrameError, MAX_DATAGRAM, PREAMBLE};
use crate::sync::lock;

/// Bytes of encoded frames queued towards one stream before `try_send`
/// pushes back (daemon) or drops (server).
pub const SEND_QUEUE_BYTES: usize = 1024 * 1024;
/// Datagrams received from streams, waiting for the endpoint.
const RECV_QUEUE: usize = 1024;
/// Read buffer growth per read.
const READ_CHUNK: usize = 64 * 1024;

/// When the server gives up on a stream peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamDeadlines {
    /// The [`PREAMBLE`] must have arrived this long after the stream was
    /// added.
    pub preamble: Duration,
    /// After the preamble, a stream with no byte for this long is closed
    /// (a live QUIC connection sends keepalives far more often).
    pub idle: Duration,
}

/// What became of a datagram handed to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Push {
    /// Queued for the writer.
    Queued,
    /// The queue is full; nothing was queued.
    Full,
    /// The stream is gone.
    Closed,
}

/// Encoded frames on their way from `try_send` to one stream's writer.
#[derive(Debug, Default)]
struct Outbox {
    state: Mutex<OutboxState>,
}

#[derive(Debug, Default)]
struct OutboxState {
    encoder: Encoder,
    frames: BytesMut,
    closed: bool,
    /// The writer task, waiting for frames.
    writer: Option<Waker>,
    /// Senders waiting for room.
    senders: Vec<Waker>,
}

impl Outbox {
    /// Queues every datagram of `t` (split by `segment_size`), all or none.
    fn push(&self, t: &Transmit<'_>) -> Push {
        let mut s = lock(&self.state);
        if s.closed {
            return Push::Closed;
        }
        // Full once the queue reaches its size: it may exceed it by one
        // transmit, and `poll_room` agrees exactly (a disagreement would
        // make quinn spin between poll_writable and try_send).
        if s.frames.len() >= SEND_QUEUE_BYTES {
            return Push::Full;
        }
        let seg = t.segment_size.unwrap_or(t.contents.len());
        if seg == 0 || seg > MAX_DATAGRAM {
            // Not frameable; a UDP socket would refuse it too.
            tracing::debug!(len = t.contents.len(), seg, "datagram not framed");
            return Push::Queued;
        }
        let OutboxState {
            encoder, frames, ..
        } = &mut *s;
        encoder.preamble(frames);
        let before = frames.len();
        for d in t.contents.chunks(seg) {
            if let Err(e) = encoder.encode(d, frames) {
                tracing::debug!(error = %e, "datagram not framed");
                frames.truncate(before);
                return Push::Queued;
            }
        }
        if let Some(w) = s.writer.take() {
            w.wake();
        }
        Push::Queued
    }

    /// Ready when a push may fit (or the stream is gone).
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = lock(&self.state);
        if s.closed || s.frames.len() < SEND_QUEUE_BYTES {
            return Poll::Ready(());
        }
        if !s.senders.iter().any(|w| w.will_wake(cx.waker())) {
            s.senders.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// All queued bytes, or `None` once closed.
    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut s = lock(&self.state);
        if s.closed {
            return Poll::Ready(None);
        }
        if s.frames.is_empty() {
            s.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let out = s.frames.split().freeze();
        for w in s.senders.drain(..) {
            w.wake();
        }
        Poll::Ready(Some(out))
    }

    fn close(&self) {
        let mut s = lock(&self.state);
        s.closed = true;
        s.frames.clear();
        if let Some(w) = s.writer.take() {
            w.wake();
        }
        for w in s.senders.drain(..) {
            w.wake();
        }
    }
}

/// A datagram from a stream peer.
type Inbound = (SocketAddr, Bytes);

/// Datagrams read from streams, waiting for the endpoint's `poll_recv`.
#[derive(Debug)]
struct Inbox {
    rx: Mutex<mpsc::Receiver<Inbound>>,
}

impl Inbox {
    fn new() -> (Self, mpsc::Sender<Inbound>) {
        let (tx, rx) = mpsc::channel(RECV_QUEUE);
        (Inbox { rx: Mutex::new(rx) }, tx)
    }

    /// Fills `bufs`/`meta` with one datagram each, at least one.
    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<usize> {
        let mut rx = lock(&self.rx);
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let next = if n == 0 {
                ready!(rx.poll_recv(cx))
            } else {
                rx.try_recv().ok()
            };
            let Some((addr, data)) = next else {
                // All senders gone: nothing will ever arrive.
                return if n == 0 {
                    Poll::Pending
                } else {
                    Poll::Ready(n)
                };
            };
            let buf = &mut bufs[n];
            if data.len() > buf.len() {
                tracing::debug!(%addr, len = data.len(), "stream datagram larger than the receive buffer dropped");
                continue;
            }
            buf[..data.len()].copy_from_slice(&data);
            meta[n] = RecvMeta {
                addr,
                len: data.len(),
                stride: data.len(),
                ecn: None,
                dst_ip: None,
            };
            n += 1;
        }
        Poll::Ready(n)
    }
}

/// Reads frames from `r` into `inbox` as coming from `peer`, until EOF;
/// `TimedOut` when `deadlines` expire.
async fn read_frames<R: AsyncRead + Unpin>(
    mut r: R,
    peer: SocketAddr,
    inbox: mpsc::Sender<Inbound>,
    deadlines: Option<StreamDeadlines>,
) -> io::Result<()> {
    let started = tokio::time::Instant::now();
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::new();
    loop {
        while let Some(d) = decoder
            .decode(&mut buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            if inbox.send((peer, d)).await.is_err() {
                return Ok(());
            }
        }
        // A peer that has not even sent the preamble gets no 64 KiB buffer.
        buf.reserve(if decoder.preamble_seen() {
            READ_CHUNK
        } else {
            PREAMBLE.len()
        });
        let read = r.read_buf(&mut buf);
        let n = match deadlines {
            None => read.await?,
            Some(d) => {
                let (until, what) = if decoder.preamble_seen() {
                    (tokio::time::Instant::now() + d.idle, "silent for")
                } else {
                    (started + d.preamble, "no preamble within")
                };
                let limit = if decoder.preamble_seen() {
                    d.idle
                } else {
                    d.preamble
                };
                tokio::time::timeout_at(until, read).await.map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, format!("{what} {limit:?}"))
                })??
            }
        };
        if n == 0 {
            return Ok(());
        }
    }
}

/// Writes what `outbox` collects to `w`, until the outbox closes.
async fn write_frames<W: AsyncWrite + Unpin>(mut w: W, outbox: &Outbox) -> io::Result<()> {
    // The preamble goes out at once, so the peer can tell a netmux stream
    // before the first datagram.
    let mut hello = BytesMut::new();
    lock(&outbox.state).encoder.preamble(&mut hello);
    w.write_all(&hello).await?;
    w.flush().await?;
    while let Some(frames) = std::future::poll_fn(|cx| outbox.poll_take(cx)).await {
        w.write_all(&frames).await?;
        w.flush().await?;
    }
    w.shutdown().await
}

/// Moves datagrams between `stream` and the endpoint until either side
/// ends; then closes `outbox`.
async fn pump<S>(
    stream: S,
    peer: SocketAddr,
    outbox: Arc<Outbox>,
    inbox: mpsc::Sender<Inbound>,
    deadlines: Option<StreamDeadlines>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let result = tokio::select! {
        r = read_frames(r, peer, inbox, deadlines) => r.map(|()| "peer closed the stream"),
        w = write_frames(w, &outbox) => w.map(|()| "endpoint closed"),
    };
    match result {
        Ok(why) => tracing::debug!(%peer, why, "datagram stream ended"),
        Err(e) => tracing::debug!(%peer, error = %e, "datagram stream failed"),
    }
    outbox.close();
}

/// Poller ready when the outbox has room.
#[derive(Debug)]
struct OutboxPoller(Arc<Outbox>);

impl UdpPoller for OutboxPoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_room(cx).map(Ok)
    }
}

/// A quinn socket over one byte stream: the daemon's side.
///
/// Every datagram goes to the stream whatever its destination; everything
/// read comes from `peer`. Dropping the socket (the quinn `Endpoint`)
/// closes the stream.
#[derive(Debug)]
pub struct StreamSocket {
    local: SocketAddr,
    outbox: Arc<Outbox>,
    inbox: Inbox,
    /// Keeps the inbox open after the stream ends: the endpoint then just
    /// hears nothing; [`StreamSocket::new`]'s `closed` says why.
    _inbox_tx: mpsc::Sender<Inbound>,
    task: tokio::task::AbortHandle,
}

impl StreamSocket {
    /// Starts moving datagrams over `stream` (spawns a task on the current
    /// tokio runtime). `local` is what the endpoint reports as its address
    /// and `peer` where datagrams come from; use the same address family.
    /// `closed` resolves when the stream ends (`Err` if the socket was
    /// dropped first).
    pub fn new<S>(
        stream: S,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> (Arc<Self>, tokio::sync::oneshot::Receiver<()>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (inbox, tx) = Inbox::new();
        let outbox = Arc::new(Outbox::default());
        let (done, closed) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let outbox = outbox.clone();
            let tx = tx.clone();
            async move {
                pump(stream, peer, outbox, tx, None).await;
                let _ = done.send(());
            }
        })
        .abort_handle();
        let socket = StreamSocket {
            local,
            outbox,
            inbox,
            _inbox_tx: tx,
            task,
        };
        (Arc::new(socket), closed)
    }
}

impl Drop for StreamSocket {
    fn drop(&mut self) {
        self.outbox.close();
        self.task.abort();
    }
}

impl AsyncUdpSocket for StreamSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(OutboxPoller(self.outbox.clone()))
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        match self.outbox.push(transmit) {
            Push::Full => Err(io::ErrorKind::WouldBlock.into()),
            // A dead stream drops datagrams like an unplugged cable; the
            // connection notices through its idle timeout or `closed`.
            Push::Queued | Push::Closed => Ok(()),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inbox.poll_recv(cx, bufs, meta).map(Ok)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

/// The server's socket: real UDP plus stream peers, one endpoint.
pub struct CompositeSocket {
    udp: Arc<dyn AsyncUdpSocket>,
    peers: Arc<Mutex<Peers>>,
    inbox: Inbox,
    inbox_tx: mpsc::Sender<Inbound>,
    next_peer: AtomicU64,
    /// Alternates which source `poll_recv` tries first.
    streams_first: AtomicBool,
    dropped: AtomicU64,
}

impl fmt::Debug for CompositeSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompositeSocket")
            .field("udp", &self.udp)
            .field("stream_peers", &self.stream_peers())
            .finish_non_exhaustive()
    }
}

/// Stream peers by the address the endpoint sees: their outbox and the
/// source address of the stream.
type Peers = HashMap<SocketAddr, (Arc<Outbox>, IpAddr)>;

/// Removes a stream peer from the routing table when its task ends or is
/// aborted.
struct PeerGuard {
    peers: Arc<Mutex<Peers>>,
    addr: SocketAddr,
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        if let Some((o, _)) = lock(&self.peers).remove(&self.addr) {
            o.close();
        }
    }
}

impl CompositeSocket {
    /// Wraps a bound UDP socket (as from [`super::quic::bind_udp`]).
    pub fn new(udp: std::net::UdpSocket) -> io::Result<Arc<Self>> {
        use quinn::Runtime;
        let udp = quinn::TokioRuntime.wrap_udp_socket(udp)?;
        let (inbox, inbox_tx) = Inbox::new();
        Ok(Arc::new(CompositeSocket {
            udp,
            peers: Arc::default(),
            inbox,
            inbox_tx,
            next_peer: AtomicU64::new(1),
            streams_first: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }))
    }

    /// Stream peers currently connected.
    pub fn stream_peers(&self) -> usize {
        lock(&self.peers).len()
    }

    /// Stream peers currently connected whose stream comes from `source`.
    pub fn stream_peers_from(&self, source: IpAddr) -> usize {
        lock(&self.peers)
            .values()
            .filter(|(_, s)| *s == source)
            .count()
    }

    /// Datagrams dropped because a stream's send queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Feeds `stream` into the endpoint as a new peer; returns the address
    /// the endpoint sees it at. The stream runs until either side closes
    /// it or the returned task handle is aborted.
    pub fn add_stream<S>(&self, stream: S) -> (SocketAddr, tokio::task::JoinHandle<()>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        self.add_stream_from(stream, IpAddr::V6(Ipv6Addr::UNSPECIFIED), None)
    }

    /// [`Self::add_stream`] for a stream from `source` (counted by
    /// [`Self::stream_peers_from`]), closed when `deadlines` expire.
    pub fn add_stream_from<S>(
        &self,
        stream: S,
        source: IpAddr,
        deadlines: Option<StreamDeadlines>,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let n = self.next_peer.fetch_add(1, Ordering::Relaxed);
        // 100::/64, the discard-only prefix; the counter fills the low 64
        // bits and never wraps in practice.
        let ip = Ipv6Addr::from((0x0100_u128 << 112) | u128::from(n));
        let addr = SocketAddr::V6(SocketAddrV6::new(ip, 443, 0, 0));
        let outbox = Arc::new(Outbox::default());
        lock(&self.peers).insert(addr, (outbox.clone(), source));
        let guard = PeerGuard {
            peers: self.peers.clone(),
            addr,
        };
        let inbox = self.inbox_tx.clone();
        let task = tokio::spawn(async move {
            let _guard = guard;
            pump(stream, addr, outbox, inbox, deadlines).await;
        });
        (addr, task)
    }

    fn stream_peer(&self, addr: &SocketAddr) -> Option<Arc<Outbox>> {
        let peers = lock(&self.peers);
        if peers.is_empty() {
            return None;
        }
        peers.get(addr).map(|(o, _)| o.clone())
    }
}

impl Drop for CompositeSocket {
    /// The endpoint is gone: end every stream (their tasks close them).
    fn drop(&mut self) {
        for (outbox, _) in lock(&self.peers).values() {
            outbox.close();
        }
    }
}

impl AsyncUdpSocket for CompositeSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        // Stream peers never push back (see the module doc), so writability
        // is the UDP socket's.
        self.udp.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        match self.stream_peer(&transmit.destination) {
            None => self.udp.try_send(transmit),
            Some(outbox) => {
                if outbox.push(transmit) == Push::Full {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Both sources register the waker before Pending is returned.
        if self.streams_first.fetch_xor(true, Ordering::Relaxed) {
            if let Poll::Ready(n) = self.inbox.poll_recv(cx, bufs, meta) {
                return Poll::Ready(Ok(n));
            }
            self.udp.poll_recv(cx, bufs, meta)
        } else {
            if let Poll::Ready(r) = self.udp.poll_recv(cx, bufs, meta) {
                return Poll::Ready(r);
            }
            self.inbox.poll_recv(cx, bufs, meta).map(Ok)
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.udp.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.udp.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.udp.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_all(datagrams: &[Vec<u8>]) -> BytesMut {
        let mut enc = Encoder::default();
        let mut out = BytesMut::new();
        enc.preamble(&mut out);
        for d in datagrams {
            enc.encode(d, &mut out).expect("encodable");
        }
        out
    }

    fn decode_all(bytes: &[u8], chunk: usize) -> Result<Vec<Bytes>, FrameError> {
        let mut dec = Decoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for c in bytes.chunks(chunk.max(1)) {
            buf.extend_from_slice(c);
            while let Some(d) = dec.decode(&mut buf)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    #[test]
    fn frame_layout() {
        let out = encode_all(&[b"ab".to_vec()]);
        assert_eq!(&out[..], b"NMXDGRM\x01\x00\x02ab");
    }

    #[test]
    fn limits() {
        let mut enc = Encoder::default();
        let mut out = BytesMut::new();
        assert_eq!(enc.encode(&[], &mut out), Err(FrameError::Empty));
        assert_eq!(
            enc.encode(&vec![0; MAX_DATAGRAM + 1], &mut out),
            Err(FrameError::TooLong(MAX_DATAGRAM + 1))
        );
        assert!(out.is_empty(), "nothing written on error");
        let max = vec![7; MAX_DATAGRAM];
        enc.encode(&max, &mut out).expect("max fits");
        let got = decode_all(&out, 1000).expect("decodes");
        assert_eq!(got, vec![Bytes::from(max)]);
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(
            decode_all(b"GET / HTTP/1.1\r\n", 3),
            Err(FrameError::NotNetmux)
        );
        // Recognised at the first wrong byte, not after 8.
        assert_eq!(decode_all(b"NMX!", 4), Err(FrameError::NotNetmux));
        assert_eq!(decode_all(b"NMXDGRM\x02", 8), Err(FrameError::Version(2)));
        assert_eq!(
            decode_all(b"NMXDGRM\x01\x00\x00", 8),
            Err(FrameError::Empty)
        );
        // Incomplete is not invalid.
        assert_eq!(decode_all(b"NMXDG", 1), Ok(vec![]));
        assert_eq!(decode_all(b"NMXDGRM\x01\x00\x05abc", 2), Ok(vec![]));
    }

    proptest! {
        #[test]
        fn roundtrip_any_split(
            datagrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..2000), 0..20),
            chunk in 1usize..5000,
        ) {
            let bytes = encode_all(&datagrams);
            let got = decode_all(&bytes, chunk).expect("valid stream");
            let want: Vec<Bytes> = datagrams.into_iter().map(Bytes::from).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..4000), chunk in 1usize..100) {
            let _ = decode_all(&bytes, chunk);
            let mut with_preamble = PREAMBLE.to_vec();
            with_preamble.extend_from_slice(&bytes);
            let _ = decode_all(&with_preamble, chunk);
        }
    }

    #[test]
    fn gso_batches_split_into_frames() {
        let outbox = Outbox::default();
        let contents = [1u8; 25];
        let t = Transmit {
            destination: "127.0.0.1:1".parse().expect("addr"),
            ecn: None,
            contents: &contents,
            segment_size: Some(10),
            src_ip: None,
        };
        assert_eq!(outbox.push(&t), Push::Queued);
        let frames = lock(&outbox.state).frames.split();
        let got = decode_all(&frames, 7).expect("valid");
        let lens: Vec<usize> = got.iter().map(Bytes::len).collect();
        assert_eq!(lens, vec![10, 10, 5]);
    }

    #[test]
    fn full_queue_pushes_back_then_closed_drops() {
        let outbox = Outbox::default();
        let contents = vec![0u8; 60_000];
        let t = Transmit {
            destination: "127.0.0.1:1".parse().expect("addr"),
            ecn: None,
            contents: &contents,
            segment_size: None,
            src_ip: None,
        };
        let mut queued = 0;
        while outbox.push(&t) == Push::Queued {
            queued += 1;
            assert!(queued < 100, "queue never fills");
        }
        assert!(lock(&outbox.state).frames.len() < SEND_QUEUE_BYTES + 60_010);
        outbox.close();
        assert_eq!(outbox.push(&t), Push::Closed);
    }

    /// Echoes one bidirectional stream back, then waits for the close.
    async fn echo_once(conn: quinn::Connection) {
        let (mut send, mut recv) = conn.accept_bi().await.expect("stream");
        let data = recv.read_to_end(4 << 20).await.expect("read");
        send.write_all(&data).await.expect("echo");
        send.finish().expect("finish");
        conn.closed().await;
    }

    /// Sends 2 MB on a new stream and checks the echo.
    async fn roundtrip(conn: &quinn::Connection) {
        let (mut send, mut recv) = conn.open_bi().await.expect("open");
        let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let writer = async {
            send.write_all(&payload).await.expect("write");
            send.finish().expect("finish");
        };
        let (_, echoed) = tokio::join!(writer, recv.read_to_end(4 << 20));
        assert!(echoed.expect("echo") == payload, "echo differs");
    }

    /// One server endpoint on a `CompositeSocket` serving a client over an
    /// in-memory stream (the daemon's `StreamSocket`) and a client over
    /// real UDP at the same time; the stream peer goes away with its stream.
    #[tokio::test]
    async fn quic_over_a_stream_and_udp_in_one_endpoint() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let udp = super::super::quic::bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let composite = CompositeSocket::new(udp).expect("composite");
        let udp_addr = composite.local_addr().expect("local addr");
        let (peer, _task) = composite.add_stream(server_io);

        let cert = test_cert();
        let mut server_config = quinn::ServerConfig::with_single_cert(vec![cert.0.clone()], cert.1)
            .expect("server config");
        server_config.transport_config(Arc::new(super::super::quic::transport_config()));
        let server = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            Some(server_config),
            composite.clone(),
            Arc::new(quinn::TokioRuntime),
        )
        .expect("server endpoint");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.0).expect("root");
        let client_config =
            quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config");

        let local: SocketAddr = "[::]:0".parse().expect("addr");
        let (socket, closed) = StreamSocket::new(client_io, local, peer);
        let mut stream_client = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .expect("stream client endpoint");
        stream_client.set_default_client_config(client_config.clone());
        let mut udp_client =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("udp client");
        udp_client.set_default_client_config(client_config);

        let acceptor = tokio::spawn(async move {
            let mut remotes = Vec::new();
            for _ in 0..2 {
                let conn = server
                    .accept()
                    .await
                    .expect("incoming")
                    .await
                    .expect("handshake");
                remotes.push(conn.remote_address());
                tokio::spawn(echo_once(conn));
            }
            (server, remotes)
        });
        let over_stream = stream_client
            .connect(peer, "localhost")
            .expect("connect")
            .await
            .expect("stream handshake");
        let over_udp = udp_client
            .connect(udp_addr, "localhost")
            .expect("connect")
            .await
            .expect("udp handshake");
        tokio::join!(roundtrip(&over_stream), roundtrip(&over_udp));
        let (_server, remotes) = acceptor.await.expect("acceptor");
        assert!(
            remotes.contains(&peer),
            "{remotes:?} lacks the stream peer {peer}"
        );
        assert_eq!(composite.stream_peers(), 1);

        // The client endpoint goes away: its socket closes the stream, the
        // server side forgets the peer.
        over_stream.close(0u32.into(), b"done");
        over_udp.close(0u32.into(), b"done");
        drop(over_stream);
        stream_client.wait_idle().await;
        drop(stream_client);
        // Err: the socket dropped with its stream, which also counts.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), closed)
            .await
            .expect("stream closed in time");
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while composite.stream_peers() != 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("stream peer removed");
    }

    /// A server's stream peer that never sends the preamble, and one that
    /// goes silent after it, are closed by their deadlines; each counts
    /// under its source address until then.
    #[tokio::test]
    async fn silent_stream_peers_are_closed_by_their_deadlines() {
        let udp = super::super::quic::bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let composite = CompositeSocket::new(udp).expect("composite");
        let deadlines = StreamDeadlines {
            preamble: Duration::from_millis(300),
            idle: Duration::from_millis(500),
        };
        let source: IpAddr = "192.0.2.7".parse().expect("ip");
        let (mut mute, server_io) = tokio::io::duplex(4096);
        let (_, no_preamble) = composite.add_stream_from(server_io, source, Some(deadlines));
        let (mut quiet, server_io) = tokio::io::duplex(4096);
        quiet.write_all(&PREAMBLE).await.expect("preamble");
        let (_, went_silent) = composite.add_stream_from(server_io, source, Some(deadlines));
        assert_eq!(composite.stream_peers_from(source), 2);
        assert_eq!(
            composite.stream_peers_from("192.0.2.8".parse().expect("ip")),
            0
        );
        for (task, what) in [(no_preamble, "no preamble"), (went_silent, "silent")] {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .unwrap_or_else(|_| panic!("{what} stream peer still open"))
                .expect("stream task");
        }
        assert_eq!(composite.stream_peers_from(source), 0);
        // Both ends see the server close: its preamble, then EOF.
        for peer in [&mut mute, &mut quiet] {
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(20), peer.read_to_end(&mut got))
                .await
                .expect("closed")
                .expect("read");
            assert_eq!(got, PREAMBLE);
        }
    }

    /// A self-signed certificate for `localhost`.
    fn test_cert() -> (
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        (
            cert.cert.der().clone(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
        )
    }
}
