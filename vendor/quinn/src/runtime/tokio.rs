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
        loop {
            let mut guard = ready!(self.io.poll_read_ready(cx))?;
            if let Ok(res) = guard.try_io(|io| self.inner.recv(io.get_ref().into(), bufs, meta)) {
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
