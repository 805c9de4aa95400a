//! The socket of a QUIC endpoint: quinn's [`AsyncUdpSocket`] over a UDP
//! socket registered for readable only, handed to quinn through
//! `Endpoint::new_with_abstract_socket` (see [`crate::tunnel::quic::endpoint`]).
//!
//! Besides the readable-only registration shared with
//! [`super::FlowSocket`], a `recvmmsg` batch shorter than asked for clears
//! the readiness (issue 17): it emptied the socket's queue, so the next
//! receive waits for the reactor instead of failing once with `WouldBlock`
//! (one wasted `recvmmsg` per wakeup). tokio's `TcpStream` does the same
//! after a short read.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use quinn::udp::{self, RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// `sock` (bound, as from [`crate::tunnel::quic::bind_udp`]) as the socket
/// of a quinn endpoint, registered with the current runtime's reactor for
/// readable only.
pub fn quic_socket(sock: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
    Ok(Arc::new(EndpointSocket::new(sock)?))
}

/// See the module documentation.
#[derive(Debug)]
struct EndpointSocket {
    io: AsyncFd<std::net::UdpSocket>,
    state: UdpSocketState,
    /// The last send returned `WouldBlock` and no wait has seen room since.
    /// quinn asks `poll_writable` before every send: until a send fails,
    /// the answer is yes without a syscall.
    blocked: AtomicBool,
}

impl EndpointSocket {
    fn new(sock: std::net::UdpSocket) -> io::Result<EndpointSocket> {
        let state = UdpSocketState::new((&sock).into())?;
        Ok(EndpointSocket {
            io: super::register(sock, Interest::READABLE)?,
            state,
            blocked: AtomicBool::new(false),
        })
    }
}

impl AsyncUdpSocket for EndpointSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(RoomPoller {
            socket: self,
            wait: None,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let r = self.state.send(self.io.get_ref().into(), transmit);
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.blocked.store(true, Relaxed);
        }
        r
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // tokio clears the readiness only if no newer event arrived, and a
        // datagram queued after this read raises a new edge: none is missed.
        let asked = bufs.len().min(meta.len()).min(udp::BATCH_SIZE);
        loop {
            let mut guard = ready!(self.io.poll_read_ready(cx))?;
            if let Ok(res) = guard.try_io(|io| self.state.recv(io.get_ref().into(), bufs, meta)) {
                if matches!(res, Ok(n) if n < asked) {
                    guard.clear_ready();
                }
                return Poll::Ready(res);
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

/// The [`UdpPoller`] of an [`EndpointSocket`]: ready at once unless a send
/// found the buffer full; then ready when [`super::writable`] reports room.
struct RoomPoller {
    socket: Arc<EndpointSocket>,
    wait: Option<Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>>,
}

impl fmt::Debug for RoomPoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomPoller")
            .field("socket", &self.socket)
            .field("waiting", &self.wait.is_some())
            .finish()
    }
}

impl UdpPoller for RoomPoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.socket.blocked.load(Relaxed) {
            this.wait = None;
            return Poll::Ready(Ok(()));
        }
        let socket = this.socket.clone();
        let wait = this.wait.get_or_insert_with(|| {
            Box::pin(async move { super::writable(socket.io.get_ref()).await })
        });
        let r = ready!(wait.as_mut().poll(cx));
        this.wait = None;
        if r.is_ok() {
            this.socket.blocked.store(false, Relaxed);
        }
        Poll::Ready(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    fn poll_one(socket: &dyn AsyncUdpSocket, cx: &mut Context) -> Poll<Vec<u8>> {
        let mut storage = [[0u8; 1500]; udp::BATCH_SIZE];
        let mut bufs: Vec<IoSliceMut<'_>> =
            storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let mut meta = [RecvMeta::default(); udp::BATCH_SIZE];
        match socket.poll_recv(cx, &mut bufs, &mut meta) {
            Poll::Ready(Ok(n)) => {
                assert_eq!(n, 1, "one datagram was queued");
                Poll::Ready(bufs[0][..meta[0].len].to_vec())
            }
            Poll::Ready(Err(e)) => panic!("recv: {e}"),
            Poll::Pending => Poll::Pending,
        }
    }

    /// A short batch clears the readiness, so the next poll does not read
    /// until the reactor reports the socket readable again; a datagram
    /// queued after the short batch still arrives.
    #[tokio::test]
    async fn a_short_batch_clears_readiness_and_loses_nothing() {
        let std_rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = std_rx.local_addr().expect("addr");
        let rx = quic_socket(std_rx).expect("socket");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        for round in 0..20u8 {
            tx.send_to(&[round; 64], addr).expect("send");
            let first =
                tokio::time::timeout(Duration::from_secs(5), poll_fn(|cx| poll_one(&*rx, cx)))
                    .await
                    .expect("the datagram arrives");
            assert_eq!(first, vec![round; 64]);
            // Queued while this task runs, so the reactor has not seen it
            // yet: the cleared readiness holds the read back.
            tx.send_to(&[round ^ 0xff; 64], addr).expect("send");
            let early = poll_fn(|cx| Poll::Ready(poll_one(&*rx, cx))).await;
            assert!(
                early.is_pending(),
                "round {round}: read before the reactor reported readiness"
            );
            let second =
                tokio::time::timeout(Duration::from_secs(5), poll_fn(|cx| poll_one(&*rx, cx)))
                    .await
                    .expect("a datagram queued after a short batch is not lost");
            assert_eq!(second, vec![round ^ 0xff; 64]);
        }
    }

    /// The poller says "ready" without a wait while no send has failed,
    /// and a QUIC exchange of 256 KiB each way works over two such sockets
    /// (GSO and GRO batches included on Linux).
    #[tokio::test]
    async fn the_poller_is_ready_until_a_send_blocks_and_quic_works_over_it() {
        let sock =
            quic_socket(std::net::UdpSocket::bind("127.0.0.1:0").expect("bind")).expect("socket");
        let mut poller = sock.clone().create_io_poller();
        let ready = poll_fn(|cx| Poll::Ready(poller.as_mut().poll_writable(cx))).await;
        assert!(matches!(ready, Poll::Ready(Ok(()))), "{ready:?}");
        drop(poller);

        let (_client, _server, conn, peer) = crate::tunnel::quic::test_pair().await;
        let echo = tokio::spawn(async move {
            let (mut send, mut recv) = peer.accept_bi().await.expect("stream");
            let got = recv.read_to_end(1 << 20).await.expect("read");
            send.write_all(&got).await.expect("echo");
            send.finish().expect("finish");
            peer.closed().await;
        });
        let (mut send, mut recv) = conn.open_bi().await.expect("open");
        let payload: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
        send.write_all(&payload).await.expect("write");
        send.finish().expect("finish");
        let back = recv.read_to_end(1 << 20).await.expect("read back");
        assert_eq!(back, payload);
        conn.close(0u32.into(), b"done");
        tokio::time::timeout(Duration::from_secs(5), echo)
            .await
            .expect("the echo task ends with the connection")
            .expect("echo task");
    }
}
