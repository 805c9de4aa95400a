//! Moves bytes between a TCP socket and a QUIC bidirectional stream.
//!
//! Semantics, both directions: TCP EOF becomes a stream FIN and a stream FIN
//! becomes a TCP write shutdown (half-close); a TCP reset becomes a stream
//! reset (and `STOP_SENDING`) and a stream reset becomes a TCP RST (linger 0).
//! Bytes are never lost, duplicated or reordered: QUIC streams are reliable
//! and every chunk is fully written before the next read.

use std::future::Future;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use quinn::{ReadError, RecvStream, SendStream, VarInt, WriteError};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::proto::error_code;

use super::branch::Branch;

/// Read size for the TCP side; large enough to fill QUIC packets in batches.
const TCP_READ_CHUNK: usize = 64 * 1024;

/// Stream chunks gathered into one TCP `writev`. A chunk is what one QUIC
/// STREAM frame carried (~1.4 KiB at MTU 1500): written one by one they cost
/// a syscall and, with `TCP_NODELAY`, a TCP segment each. This many slots
/// live in every connection's task.
const WRITE_BATCH: usize = 32;

/// Slots of the batch a stream takes on the heap while its reads come back
/// full (a bulk transfer): up to about 180 KB per `writev` (80–90 KB on
/// average in the bench), so the local reader (reading 128 KiB at a time,
/// as iperf3 does) is woken about half as often as with [`WRITE_BATCH`]
/// (BENCHMARKS.md History 2026-12-05 12:40); an idle connection keeps none
/// of it.
const BULK_WRITE_BATCH: usize = 128;

/// Whether the next read of a stream uses the bulk batch, from the last
/// read: `filled` chunks into a batch of `slots`. A full small batch means
/// the stream had more ready; a bulk read that would have fit the small
/// batch means the burst is over.
fn bulk_next(filled: usize, slots: usize) -> bool {
    if slots < BULK_WRITE_BATCH {
        filled == slots
    } else {
        filled > WRITE_BATCH
    }
}

/// How a bridged connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Both directions finished cleanly.
    Clean,
    /// The local TCP peer reset the connection; the stream was reset.
    TcpReset,
    /// The remote side reset the stream; the TCP peer got a RST.
    StreamReset,
    /// The QUIC connection was lost.
    ConnectionLost(String),
    /// The far end refused before any byte flowed (see
    /// [`crate::proto::stream::OpenResult`]); the TCP peer got a RST.
    Refused(String),
    /// One direction had ended and the other moved no byte for the
    /// half-close timeout; both were reset.
    HalfCloseTimeout,
}

impl End {
    /// Bounded metric label: for a refusal, the far end's
    /// [`OpenResult`](crate::proto::stream::OpenResult) label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            End::Refused(reason) => crate::proto::stream::OpenResult::ALL
                .into_iter()
                .find(|r| r.label() == reason)
                .map(|r| r.label())
                .unwrap_or("protocol_error"),
            other => other.label(),
        }
    }

    /// Label for metrics (`reason`).
    pub fn label(&self) -> &'static str {
        match self {
            End::Clean => "clean",
            End::TcpReset => "tcp_reset",
            End::StreamReset => "stream_reset",
            End::ConnectionLost(_) => "connection_lost",
            End::Refused(_) => "refused",
            End::HalfCloseTimeout => "half_close_timeout",
        }
    }
}

/// Byte counters the bridge reports to as data moves.
pub trait Meter {
    /// `n` bytes went from TCP into the stream.
    fn tcp_to_stream(&self, n: usize);
    /// `n` bytes went from the stream into TCP.
    fn stream_to_tcp(&self, n: usize);
}

/// A pair of callbacks is a meter: `(tcp_to_stream, stream_to_tcp)`.
/// Callers resolve their counters once per connection, off the data path.
impl<F: Fn(usize), G: Fn(usize)> Meter for (F, G) {
    fn tcp_to_stream(&self, n: usize) {
        (self.0)(n)
    }
    fn stream_to_tcp(&self, n: usize) {
        (self.1)(n)
    }
}

/// Counts every byte moved, either way, besides the caller's meter: the
/// half-close timer's sign of life.
struct Activity<'m, M> {
    meter: &'m M,
    moved: AtomicU64,
}

impl<M: Meter> Meter for Activity<'_, M> {
    fn tcp_to_stream(&self, n: usize) {
        self.moved.fetch_add(n as u64, Ordering::Relaxed);
        self.meter.tcp_to_stream(n)
    }
    fn stream_to_tcp(&self, n: usize) {
        self.moved.fetch_add(n as u64, Ordering::Relaxed);
        self.meter.stream_to_tcp(n)
    }
}

/// A meter that counts nothing.
pub struct NoMeter;

impl Meter for NoMeter {
    fn tcp_to_stream(&self, _: usize) {}
    fn stream_to_tcp(&self, _: usize) {}
}

/// Totals of a finished bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes moved TCP → stream.
    pub tcp_to_stream: u64,
    /// Bytes moved stream → TCP.
    pub stream_to_tcp: u64,
    /// How it ended.
    pub end: End,
}

fn reset_code() -> VarInt {
    VarInt::from_u32(error_code::TCP_RESET)
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Sends a RST to the TCP peer when the socket is dropped.
pub fn abort_on_drop(tcp: &TcpStream) {
    // Best effort: if setting linger fails the peer sees a FIN instead.
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}

async fn tcp_to_stream(
    rd: &mut ReadHalf<'_>,
    send: &mut SendStream,
    meter: &impl Meter,
) -> Result<u64, End> {
    let mut total = 0u64;
    let mut buf = BytesMut::with_capacity(TCP_READ_CHUNK);
    // The far end may stop this direction while the TCP peer is silent
    // (e.g. its half-close timer fired): notice it without waiting for a
    // byte to write.
    let stopped = send.stopped();
    tokio::pin!(stopped);
    loop {
        if buf.capacity() < TCP_READ_CHUNK / 4 {
            buf.reserve(TCP_READ_CHUNK);
        }
        let read = tokio::select! {
            biased;
            r = rd.read_buf(&mut buf) => r,
            s = &mut stopped => {
                return Err(match s {
                    Ok(_) => End::StreamReset,
                    Err(e) => End::ConnectionLost(e.to_string()),
                });
            }
        };
        match read {
            Ok(0) => {
                // Half-close: the stream's FIN tells the far end.
                let _ = send.finish();
                return Ok(total);
            }
            Ok(n) => {
                total += n as u64;
                meter.tcp_to_stream(n);
                if let Err(e) = send.write_chunk(buf.split().freeze()).await {
                    return Err(write_error(e));
                }
            }
            Err(e) if is_reset(&e) => {
                let _ = send.reset(reset_code());
                return Err(End::TcpReset);
            }
            Err(e) => {
                let _ = send.reset(reset_code());
                return Err(End::ConnectionLost(format!("tcp read: {e}")));
            }
        }
    }
}

fn write_error(e: WriteError) -> End {
    match e {
        WriteError::Stopped(_) => End::StreamReset,
        WriteError::ConnectionLost(c) => End::ConnectionLost(c.to_string()),
        other => End::ConnectionLost(other.to_string()),
    }
}

/// Writes all of `bufs` to `wr`, gathering them into `writev` calls; the
/// written prefix is consumed from `bufs`.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    wr: &mut W,
    bufs: &mut [Bytes],
) -> io::Result<()> {
    let mut first = 0;
    loop {
        while bufs.get(first).is_some_and(Bytes::is_empty) {
            first += 1;
        }
        let rest = &bufs[first.min(bufs.len())..];
        if rest.is_empty() {
            return Ok(());
        }
        // The slices are built on each poll's stack, not kept in the
        // future across the wait: a connection's task stays small.
        let mut written = std::future::poll_fn(|cx| {
            if rest.len() <= WRITE_BATCH {
                poll_writev::<W, WRITE_BATCH>(wr, cx, rest)
            } else {
                poll_writev::<W, BULK_WRITE_BATCH>(wr, cx, rest)
            }
        })
        .await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        for buf in &mut bufs[first..] {
            let n = written.min(buf.len());
            buf.advance(n);
            written -= n;
            if written == 0 {
                break;
            }
        }
    }
}

/// One `writev` of the first `N` of `bufs` (a request's few chunks fill a
/// small array, a bulk batch a large one).
fn poll_writev<W: AsyncWrite + Unpin, const N: usize>(
    wr: &mut W,
    cx: &mut std::task::Context<'_>,
    bufs: &[Bytes],
) -> Poll<io::Result<usize>> {
    let mut io = [IoSlice::new(&[]); N];
    let k = bufs.len().min(N);
    for (slice, buf) in io.iter_mut().zip(bufs) {
        *slice = IoSlice::new(buf);
    }
    std::pin::Pin::new(wr).poll_write_vectored(cx, &io[..k])
}

async fn stream_to_tcp(
    recv: &mut RecvStream,
    wr: &mut WriteHalf<'_>,
    pending: Bytes,
    meter: &impl Meter,
) -> Result<u64, End> {
    let mut total = 0u64;
    let mut small: [Bytes; WRITE_BATCH] = Default::default();
    // The bulk batch, allocated while reads come back full.
    let mut large: Vec<Bytes> = Vec::new();
    small[0] = pending;
    let mut filled = 1;
    loop {
        let bufs: &mut [Bytes] = if large.is_empty() {
            &mut small
        } else {
            &mut large
        };
        let len: usize = bufs[..filled].iter().map(Bytes::len).sum();
        if len > 0 {
            if let Err(e) = write_all_vectored(wr, &mut bufs[..filled]).await {
                let _ = recv.stop(reset_code());
                return Err(if is_reset(&e) {
                    End::TcpReset
                } else {
                    End::ConnectionLost(format!("tcp write: {e}"))
                });
            }
            total += len as u64;
            meter.stream_to_tcp(len);
            // An emptied `Bytes` still pins quinn's receive buffer: drop
            // them before waiting (idle connections hold no packet memory).
            for b in &mut bufs[..filled] {
                *b = Bytes::new();
            }
        }
        let bulk = bulk_next(filled, bufs.len());
        if bulk && large.is_empty() {
            large.resize(BULK_WRITE_BATCH, Bytes::new());
        } else if !bulk && !large.is_empty() {
            large = Vec::new();
        }
        let bufs: &mut [Bytes] = if large.is_empty() {
            &mut small
        } else {
            &mut large
        };
        // Every chunk the stream has ready, up to the batch's size, in order.
        match recv.read_chunks(bufs).await {
            Ok(Some(n)) => filled = n,
            Ok(None) => {
                let _ = wr.shutdown().await;
                return Ok(total);
            }
            Err(ReadError::Reset(_)) => return Err(End::StreamReset),
            Err(ReadError::ConnectionLost(c)) => return Err(End::ConnectionLost(c.to_string())),
            Err(other) => return Err(End::ConnectionLost(other.to_string())),
        }
    }
}

/// What woke [`bridge`]'s loop.
enum Event {
    Idle,
    Up(Result<u64, End>),
    Down(Result<u64, End>),
}

/// Bridges `tcp` and the stream until both directions end.
///
/// `pending` holds bytes already read from the stream (e.g. behind a header)
/// that go to TCP first. `prelude` runs on the receive side before any stream
/// byte is written to TCP (the asking side reads the open result there);
/// an `Err` from it resets the TCP connection at once. Once one direction
/// has ended, the other is reset after moving no byte for
/// `options.half_close_timeout` ([`End::HalfCloseTimeout`]).
pub async fn bridge<P, F>(
    tcp: &mut TcpStream,
    mut send: SendStream,
    recv: RecvStream,
    pending: Bytes,
    prelude: P,
    options: super::stream::Options,
    meter: &impl Meter,
) -> Outcome
where
    P: FnOnce(RecvStream) -> F,
    F: Future<Output = Result<(RecvStream, Bytes), End>>,
{
    let _ = tcp.set_nodelay(true);
    let meter = &Activity {
        meter,
        moved: AtomicU64::new(0),
    };
    let (up_total, down_total, end) = {
        let (mut rd, mut wr) = tcp.split();
        let up = tcp_to_stream(&mut rd, &mut send, meter);
        let down = async {
            let (mut recv, extra) = prelude(recv).await?;
            let mut first = BytesMut::from(&pending[..]);
            first.extend_from_slice(&extra);
            stream_to_tcp(&mut recv, &mut wr, first.freeze(), meter).await
        };
        // Armed once one direction ended: fires when the other moved no
        // byte for the half-close timeout.
        let idle = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(up, down, idle);
        let mut last_moved = None;
        let mut timed_out = false;
        let (mut up_res, mut down_res) = (None, None);
        let (up_branch, down_branch) = (Branch::new(), Branch::new());
        while up_res.is_none() || down_res.is_none() {
            if last_moved.is_none() && (up_res.is_some() || down_res.is_some()) {
                if let Some(t) = options.half_close_timeout {
                    last_moved = Some(meter.moved.load(Ordering::Relaxed));
                    idle.as_mut().reset(tokio::time::Instant::now() + t);
                }
            }
            // Each direction is polled only when its own waker fired (see
            // `tunnel::branch`); the idle timer, armed at most once per connection,
            // with the task's.
            let event = std::future::poll_fn(|cx| {
                if last_moved.is_some() && idle.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Idle);
                }
                if up_res.is_none() {
                    if let Poll::Ready(r) = up_branch.poll(up.as_mut(), cx) {
                        return Poll::Ready(Event::Up(r));
                    }
                }
                if down_res.is_none() {
                    if let Poll::Ready(r) = down_branch.poll(down.as_mut(), cx) {
                        return Poll::Ready(Event::Down(r));
                    }
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Idle => {
                    let moved = meter.moved.load(Ordering::Relaxed);
                    if last_moved == Some(moved) {
                        timed_out = true;
                        break;
                    }
                    last_moved = Some(moved);
                    if let Some(t) = options.half_close_timeout {
                        idle.as_mut().reset(tokio::time::Instant::now() + t);
                    }
                }
                Event::Up(r) => {
                    // The peer stopping our direction (STOP_SENDING) does
                    // not end its own: it may still be sending, e.g. the
                    // open result that says why it refused.
                    let fatal = matches!(&r, Err(e) if *e != End::StreamReset);
                    up_res = Some(r);
                    if fatal {
                        break;
                    }
                }
                Event::Down(r) => {
                    let failed = r.is_err();
                    down_res = Some(r);
                    if failed {
                        break;
                    }
                }
            }
        }
        let total = |r: &Option<Result<u64, End>>| match r {
            Some(Ok(n)) => *n,
            _ => 0,
        };
        let end = match (&down_res, &up_res) {
            (Some(Err(e)), _) | (_, Some(Err(e))) => e.clone(),
            _ if timed_out => End::HalfCloseTimeout,
            _ => End::Clean,
        };
        (total(&up_res), total(&down_res), end)
    };
    if end != End::Clean {
        // Whatever failed, neither side may believe the connection ended
        // cleanly: reset the stream and RST the TCP peer.
        let _ = send.reset(reset_code());
        abort_on_drop(tcp);
    }
    Outcome {
        tcp_to_stream: up_total,
        stream_to_tcp: down_total,
        end,
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A writer that takes at most `limit` bytes per call, vectored or not.
    struct Trickle {
        out: Vec<u8>,
        limit: usize,
        calls: usize,
    }

    impl Trickle {
        fn take(&mut self, bufs: &[IoSlice<'_>]) -> usize {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.limit - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.limit {
                    break;
                }
            }
            n
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(self.take(&[IoSlice::new(buf)])))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(self.take(bufs)))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn chunks() -> (Vec<Bytes>, Vec<u8>) {
        let parts: Vec<Bytes> = (0..40u8)
            .map(|i| Bytes::from(vec![i; usize::from(i % 7) * 100]))
            .collect();
        let all = parts.iter().flat_map(|b| b.iter().copied()).collect();
        (parts, all)
    }

    #[tokio::test]
    async fn partial_vectored_writes_keep_every_byte_in_order() {
        for limit in [1, 99, 100, 1_000, 1 << 20] {
            let (mut parts, all) = chunks();
            let mut w = Trickle {
                out: Vec::new(),
                limit,
                calls: 0,
            };
            for batch in parts.chunks_mut(WRITE_BATCH) {
                write_all_vectored(&mut w, batch).await.expect("write");
                assert!(batch.iter().all(Bytes::is_empty), "limit {limit}");
            }
            assert_eq!(w.out, all, "limit {limit}");
        }
    }

    #[tokio::test]
    async fn a_batch_is_one_call_when_the_writer_takes_it_all() {
        let (mut parts, all) = chunks();
        let mut w = Trickle {
            out: Vec::new(),
            limit: usize::MAX,
            calls: 0,
        };
        write_all_vectored(&mut w, &mut parts[..WRITE_BATCH])
            .await
            .expect("write");
        assert_eq!(w.calls, 1);
        let first: usize = (0..WRITE_BATCH).map(|i| (i % 7) * 100).sum();
        assert_eq!(w.out, all[..first]);
    }

    #[test]
    fn a_stream_takes_the_bulk_batch_while_its_reads_come_back_full() {
        // Requests: one chunk at a time, the small batch.
        assert!(!bulk_next(1, WRITE_BATCH));
        assert!(!bulk_next(WRITE_BATCH - 1, WRITE_BATCH));
        // A full small batch: the stream had more ready.
        assert!(bulk_next(WRITE_BATCH, WRITE_BATCH));
        // Bulk reads that need more than the small batch keep the large one.
        assert!(bulk_next(BULK_WRITE_BATCH, BULK_WRITE_BATCH));
        assert!(bulk_next(WRITE_BATCH + 1, BULK_WRITE_BATCH));
        // A read the small batch would have held ends the burst.
        assert!(!bulk_next(WRITE_BATCH, BULK_WRITE_BATCH));
        assert!(!bulk_next(0, BULK_WRITE_BATCH));
    }

    #[tokio::test]
    async fn a_bulk_batch_is_one_call_when_the_writer_takes_it_all() {
        let mut parts: Vec<Bytes> = (0..BULK_WRITE_BATCH)
            .map(|i| Bytes::from(vec![(i % 251) as u8; 1400]))
            .collect();
        let all: Vec<u8> = parts.iter().flat_map(|b| b.iter().copied()).collect();
        let mut w = Trickle {
            out: Vec::new(),
            limit: usize::MAX,
            calls: 0,
        };
        write_all_vectored(&mut w, &mut parts).await.expect("write");
        assert_eq!(w.calls, 1);
        assert_eq!(w.out, all);
    }

    #[tokio::test]
    async fn a_writer_that_takes_nothing_is_an_error_not_a_spin() {
        let mut w = Trickle {
            out: Vec::new(),
            limit: 0,
            calls: 0,
        };
        let mut bufs = [Bytes::from_static(b"x")];
        let e = write_all_vectored(&mut w, &mut bufs)
            .await
            .expect_err("zero");
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
    }
}
