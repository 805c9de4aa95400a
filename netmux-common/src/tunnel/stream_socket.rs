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
//!   long ([`StreamDeadlines`]), unless a session holds it
//!   ([`CompositeSocket::hold`]: an authenticated daemon's stream is silent
//!   through a blackout for as long as its session is kept);
//!   [`CompositeSocket::stream_peers_from`] lets the acceptor cap peers per
//!   source address.
//!
//! GSO batches (`Transmit::segment_size`) are split into one frame per
//! datagram; the stream peers of the composite accept whatever the UDP
//! socket's `max_transmit_segments` allows.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::branch::Branch;
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
    /// (a live QUIC connection sends keepalives far more often), unless it
    /// is held ([`CompositeSocket::hold`]).
    pub idle: Duration,
}

/// Lets a TCP connection carrying QUIC ride out a blackout of `bound`
/// (`survive_blackout`): the kernel retransmits unacknowledged bytes for
/// `bound` plus [`super::blackout::IDLE_GRACE`] before it gives up
/// (`TCP_USER_TIMEOUT`), instead of its own ~15 minutes (`tcp_retries2`),
/// so the session's bound, not the kernel's, ends it. Best effort; Linux
/// only.
pub fn keep_through_blackout(tcp: &tokio::net::TcpStream, bound: Duration) {
    #[cfg(target_os = "linux")]
    if let Err(e) =
        socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(bound + super::blackout::IDLE_GRACE))
    {
        tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (tcp, bound);
}

/// Keeps a server's stream peer open however long it is silent, while
/// alive: a session within `survive_blackout` holds its stream, so a
/// blackout ends the session only at the session's own bound. Dropped, the
/// stream is closed after its next [`StreamDeadlines::idle`] without a byte.
#[derive(Debug)]
pub struct StreamHold(Arc<AtomicUsize>);

impl Drop for StreamHold {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A server's stream peer's deadlines, and how many [`StreamHold`]s lift
/// its idle one.
#[derive(Debug, Clone)]
struct Silence {
    deadlines: StreamDeadlines,
    holds: Arc<AtomicUsize>,
}

fn timed_out(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
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
/// `TimedOut` when the deadlines of `silence` expire.
async fn read_frames<R: AsyncRead + Unpin>(
    mut r: R,
    peer: SocketAddr,
    inbox: mpsc::Sender<Inbound>,
    silence: Option<Silence>,
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
        let n = match &silence {
            None => read.await?,
            Some(Silence { deadlines: d, .. }) if !decoder.preamble_seen() => {
                tokio::time::timeout_at(started + d.preamble, read)
                    .await
                    .map_err(|_| timed_out(format!("no preamble within {:?}", d.preamble)))??
            }
            Some(Silence {
                deadlines: d,
                holds,
            }) => {
                let mut read = std::pin::pin!(read);
                loop {
                    match tokio::time::timeout(d.idle, &mut read).await {
                        Ok(n) => break n?,
                        // A held stream's silence is its session's to judge
                        // (a blackout, up to survive_blackout).
                        Err(_) if holds.load(Ordering::Relaxed) > 0 => {}
                        Err(_) => return Err(timed_out(format!("silent for {:?}", d.idle))),
                    }
                }
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
    silence: Option<Silence>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let read = read_frames(r, peer, inbox, silence);
    let write = write_frames(w, &outbox);
    tokio::pin!(read, write);
    // Whichever direction ends first ends both. Each is polled only when its
    // own waker fired (`tunnel::branch`): a datagram read from the stream
    // does not poll the writer, nor a datagram queued for it the reader.
    let (read_branch, write_branch) = (Branch::new(), Branch::new());
    let result = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = read_branch.poll(read.as_mut(), cx) {
            return Poll::Ready(r.map(|()| "peer closed the stream"));
        }
        write_branch
            .poll(write.as_mut(), cx)
            .map(|w| w.map(|()| "endpoint closed"))
    })
    .await;
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

/// A stream peer of the composite.
#[derive(Debug)]
struct Peer {
    outbox: Arc<Outbox>,
    /// Where the stream comes from.
    source: IpAddr,
    /// Live [`StreamHold`]s.
    holds: Arc<AtomicUsize>,
}

/// Stream peers by the address the endpoint sees.
type Peers = HashMap<SocketAddr, Peer>;

/// Removes a stream peer from the routing table when its task ends or is
/// aborted.
struct PeerGuard {
    peers: Arc<Mutex<Peers>>,
    addr: SocketAddr,
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        if let Some(p) = lock(&self.peers).remove(&self.addr) {
            p.outbox.close();
        }
    }
}

impl CompositeSocket {
    /// Wraps a bound UDP socket (as from [`super::quic::bind_udp`]).
    pub fn new(udp: std::net::UdpSocket) -> io::Result<Arc<Self>> {
        let udp = super::udp_socket::quic_socket(udp)?;
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
            .filter(|p| p.source == source)
            .count()
    }

    /// Keeps stream peer `addr` open through silence while the returned
    /// hold lives; `None` when `addr` is not a stream peer (a UDP peer).
    pub fn hold(&self, addr: &SocketAddr) -> Option<StreamHold> {
        let peers = lock(&self.peers);
        let holds = peers.get(addr)?.holds.clone();
        holds.fetch_add(1, Ordering::Relaxed);
        Some(StreamHold(holds))
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
        let holds = Arc::new(AtomicUsize::new(0));
        lock(&self.peers).insert(
            addr,
            Peer {
                outbox: outbox.clone(),
                source,
                holds: holds.clone(),
            },
        );
        let silence = deadlines.map(|deadlines| Silence { deadlines, holds });
        let guard = PeerGuard {
            peers: self.peers.clone(),
            addr,
        };
        let inbox = self.inbox_tx.clone();
        let task = tokio::spawn(async move {
            let _guard = guard;
            pump(stream, addr, outbox, inbox, silence).await;
        });
        (addr, task)
    }

    fn stream_peer(&self, addr: &SocketAddr) -> Option<Arc<Outbox>> {
        let peers = lock(&self.peers);
        if peers.is_empty() {
            return None;
        }
        peers.get(addr).map(|p| p.outbox.clone())
    }
}

impl Drop for CompositeSocket {
    /// The endpoint is gone: end every stream (their tasks close them).
    fn drop(&mut self) {
        for p in lock(&self.peers).values() {
            p.outbox.close();
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
mod tests;
