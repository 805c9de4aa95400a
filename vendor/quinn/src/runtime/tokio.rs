use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use tokio::{
    io::Interest,
    time::{Sleep, sleep_until},
};

#[cfg(not(unix))]
use super::UdpPollHelper;
use super::{AsyncTimer, AsyncUdpSocket, Runtime};

/// A Quinn runtime for Tokio
#[derive(Debug)]
pub struct TokioRuntime;

impl Runtime for TokioRuntime {
    fn new_timer(&self, t: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(sleep_until(t.into()))
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        tokio::spawn(future);
    }

    #[cfg(not(unix))]
    fn wrap_udp_socket(&self, sock: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(Arc::new(UdpSocket {
            inner: udp::UdpSocketState::new((&sock).into())?,
            io: tokio::net::UdpSocket::from_std(sock)?,
        }))
    }

    // netmux (issue 17): registered for readable only, see `ReadOnlyUdpSocket`.
    #[cfg(unix)]
    fn wrap_udp_socket(&self, sock: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        sock.set_nonblocking(true)?;
        Ok(Arc::new(ReadOnlyUdpSocket {
            inner: udp::UdpSocketState::new((&sock).into())?,
            io: register(sock, Interest::READABLE)?,
            blocked: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

impl AsyncTimer for Sleep {
    fn reset(self: Pin<&mut Self>, t: Instant) {
        Self::reset(self, t.into())
    }
    fn poll(self: Pin<&mut Self>, cx: &mut Context) -> Poll<()> {
        Future::poll(self, cx)
    }
}

#[cfg(not(unix))]
#[derive(Debug)]
struct UdpSocket {
    io: tokio::net::UdpSocket,
    inner: udp::UdpSocketState,
}

#[cfg(not(unix))]
impl AsyncUdpSocket for UdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn super::UdpPoller>> {
        Box::pin(UdpPollHelper::new(move || {
            let socket = self.clone();
            async move { socket.io.writable().await }
        }))
    }

    fn try_send(&self, transmit: &udp::Transmit) -> io::Result<()> {
        self.io.try_io(Interest::WRITABLE, || {
            self.inner.send((&self.io).into(), transmit)
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            if let Ok(res) = self.io.try_io(Interest::READABLE, || {
                self.inner.recv((&self.io).into(), bufs, meta)
            }) {
                return Poll::Ready(Ok(res));
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.gro_segments()
    }
}

/// netmux (issue 17): the endpoint's socket registered with the reactor for
/// readable only. Registered for writable too (tokio's `UdpSocket`), every
/// datagram the kernel frees raises `EPOLLOUT`, which wakes a parked worker
/// that finds nothing to do: about one wasted wakeup per datagram sent.
/// Sends are plain nonblocking calls; only after one returns `WouldBlock`
/// does [`UdpPoller::poll_writable`] register a duplicate of the descriptor
/// for writable, for as long as the wait lasts.
#[cfg(unix)]
#[derive(Debug)]
struct ReadOnlyUdpSocket {
    io: tokio::io::unix::AsyncFd<std::net::UdpSocket>,
    inner: udp::UdpSocketState,
    /// The last send returned `WouldBlock` and no wait has seen room since.
    /// quinn asks `poll_writable` before every send: until a send fails,
    /// the answer is yes without a syscall.
    blocked: std::sync::atomic::AtomicBool,
}

/// `sock` registered with the reactor for `interest` only.
#[cfg(unix)]
fn register(
    sock: std::net::UdpSocket,
    interest: Interest,
) -> io::Result<tokio::io::unix::AsyncFd<std::net::UdpSocket>> {
    // SAFETY: a `std::net::UdpSocket` owns its descriptor, which stays open
    // and the same until the socket is dropped, i.e. with the `AsyncFd`.
    Ok(unsafe { tokio::io::unix::AsyncFd::register_with_interest(sock, interest) }?)
}

#[cfg(unix)]
impl ReadOnlyUdpSocket {
    /// Waits until the socket is writable, through a duplicate descriptor
    /// registered for writable only; dropping it deregisters. Registering
    /// reports a readiness that arrived since the failed send (epoll checks
    /// the current state on `EPOLL_CTL_ADD`), so no wakeup is lost.
    async fn writable(&self) -> io::Result<()> {
        let dup = self.io.get_ref().try_clone()?;
        let fd = register(dup, Interest::WRITABLE)?;
        let _ready = fd.writable().await?;
        Ok(())
    }
}

#[cfg(unix)]
impl AsyncUdpSocket for ReadOnlyUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn super::UdpPoller>> {
        Box::pin(RoomPoller {
            socket: self,
            wait: None,
        })
    }

    fn try_send(&self, transmit: &udp::Transmit) -> io::Result<()> {
        let r = self.inner.send(self.io.get_ref().into(), transmit);
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.blocked
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [udp::RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // netmux (issue 17): a batch shorter than asked for emptied the
        // queue, so the readiness is cleared here instead of by a further
        // read that fails with `WouldBlock` (one wasted `recvmmsg` per
        // wakeup). tokio clears it only if no newer event arrived, and a
        // datagram queued after this read raises a new edge, so none is
        // missed. tokio's `TcpStream` does the same after a short read.
        let asked = bufs.len().min(meta.len()).min(udp::BATCH_SIZE);
        loop {
            let mut guard = ready!(self.io.poll_read_ready(cx))?;
            if let Ok(res) = guard.try_io(|io| self.inner.recv(io.get_ref().into(), bufs, meta)) {
                if matches!(res, Ok(n) if n < asked) {
                    guard.clear_ready();
                }
                return Poll::Ready(res);
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.io.get_ref().local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.gro_segments()
    }
}

/// The [`super::UdpPoller`] of a [`ReadOnlyUdpSocket`]: ready at once unless
/// a send found the buffer full; then ready when a writable registration
/// (see [`ReadOnlyUdpSocket::writable`]) reports room.
#[cfg(unix)]
struct RoomPoller {
    socket: Arc<ReadOnlyUdpSocket>,
    wait: Option<Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>>,
}

#[cfg(unix)]
impl std::fmt::Debug for RoomPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomPoller")
            .field("socket", &self.socket)
            .field("waiting", &self.wait.is_some())
            .finish()
    }
}

#[cfg(unix)]
impl super::UdpPoller for RoomPoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        use std::sync::atomic::Ordering::Relaxed;
        let this = self.get_mut();
        if !this.socket.blocked.load(Relaxed) {
            this.wait = None;
            return Poll::Ready(Ok(()));
        }
        let socket = this.socket.clone();
        let wait = this
            .wait
            .get_or_insert_with(|| Box::pin(async move { socket.writable().await }));
        let r = ready!(wait.as_mut().poll(cx));
        this.wait = None;
        if r.is_ok() {
            this.socket.blocked.store(false, Relaxed);
        }
        Poll::Ready(r)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::{future::poll_fn, io::IoSliceMut, time::Duration};

    fn poll_one(socket: &dyn AsyncUdpSocket, cx: &mut Context) -> Poll<Vec<u8>> {
        let mut storage = [[0u8; 1500]; udp::BATCH_SIZE];
        let mut bufs: Vec<IoSliceMut<'_>> = storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let mut meta = [udp::RecvMeta::default(); udp::BATCH_SIZE];
        match socket.poll_recv(cx, &mut bufs, &mut meta) {
            Poll::Ready(Ok(n)) => {
                assert_eq!(n, 1, "one datagram was queued");
                Poll::Ready(bufs[0][..meta[0].len].to_vec())
            }
            Poll::Ready(Err(e)) => panic!("recv: {e}"),
            Poll::Pending => Poll::Pending,
        }
    }

    /// netmux (issue 17): a short batch clears the readiness, so the next
    /// poll does not read until the reactor reports the socket readable
    /// again; a datagram queued after the short batch still arrives.
    #[test]
    fn a_short_batch_clears_readiness_and_loses_nothing() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let std_rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            let addr = std_rx.local_addr().expect("addr");
            let rx = TokioRuntime.wrap_udp_socket(std_rx).expect("wrap");
            let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            for round in 0..20u8 {
                tx.send_to(&[round; 64], addr).expect("send");
                let first = tokio::time::timeout(
                    Duration::from_secs(5),
                    poll_fn(|cx| poll_one(&*rx, cx)),
                )
                .await
                .expect("the datagram arrives");
                assert_eq!(first, vec![round; 64]);
                // Queued while this task runs, so the reactor has not seen
                // it yet: the cleared readiness holds the read back.
                tx.send_to(&[round ^ 0xff; 64], addr).expect("send");
                let early = poll_fn(|cx| Poll::Ready(poll_one(&*rx, cx))).await;
                assert!(early.is_pending(), "round {round}: read before the reactor reported readiness");
                let second = tokio::time::timeout(
                    Duration::from_secs(5),
                    poll_fn(|cx| poll_one(&*rx, cx)),
                )
                .await
                .expect("a datagram queued after a short batch is not lost");
                assert_eq!(second, vec![round ^ 0xff; 64]);
            }
        });
    }
}
