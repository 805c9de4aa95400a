//! UDP sockets registered with the reactor for readable only (issue 17):
//! [`FlowSocket`], a socket of the flows of [`super::udp`], and
//! [`quic_socket`], the socket of a QUIC endpoint (see [`super::quic::endpoint`]).
//!
//! tokio's `UdpSocket` registers for readable and writable. The kernel
//! raises `EPOLLOUT` every time a datagram the socket sent is freed, so each
//! send wakes a parked worker that finds nothing to do: about one wasted
//! wakeup per datagram on each end of a UDP request (traced in
//! docs/bench/issue17-udp.md). These sockets send with plain nonblocking
//! calls; only a send that returns `WouldBlock` waits for writable, through
//! a duplicate descriptor registered for writable for as long as that wait
//! lasts ([`writable`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

mod endpoint;
pub use endpoint::quic_socket;

/// Any local port on every address of the family (IPv6 or IPv4): where a
/// socket toward a peer of that family binds.
pub fn any_port(v6: bool) -> SocketAddr {
    if v6 {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    }
}

/// A nonblocking UDP socket woken only when readable.
#[derive(Debug)]
pub struct FlowSocket {
    io: AsyncFd<std::net::UdpSocket>,
}

/// `sock` registered with the current runtime's reactor for `interest` only.
pub(crate) fn register(
    sock: std::net::UdpSocket,
    interest: Interest,
) -> io::Result<AsyncFd<std::net::UdpSocket>> {
    sock.set_nonblocking(true)?;
    // SAFETY: a `std::net::UdpSocket` owns its descriptor, which stays open
    // and the same until the socket is dropped, i.e. with the `AsyncFd`.
    Ok(unsafe { AsyncFd::register_with_interest(sock, interest) }?)
}

impl FlowSocket {
    /// Binds `addr` (within a tokio runtime).
    pub fn bind(addr: SocketAddr) -> io::Result<FlowSocket> {
        FlowSocket::from_std(std::net::UdpSocket::bind(addr)?)
    }

    /// Takes over a bound socket (within a tokio runtime).
    pub fn from_std(sock: std::net::UdpSocket) -> io::Result<FlowSocket> {
        Ok(FlowSocket {
            io: register(sock, Interest::READABLE)?,
        })
    }

    /// Sets the default destination (`send`) and the only source accepted.
    pub fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        self.io.get_ref().connect(addr)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    /// Waits until a datagram may be waiting (readiness is kept until a
    /// receive finds none).
    pub async fn readable(&self) -> io::Result<()> {
        self.io.readable().await.map(|_| ())
    }

    /// Receives one datagram if one is waiting (`WouldBlock` otherwise).
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.try_io(Interest::READABLE, |s| s.recv(buf))
    }

    /// Receives the next datagram and its source.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            let mut ready = self.io.readable().await?;
            if let Ok(r) = ready.try_io(|s| s.get_ref().recv_from(buf)) {
                return r;
            }
        }
    }

    /// Sends `buf` to `to`, waiting only if the send buffer is full.
    pub async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        loop {
            match self.io.get_ref().send_to(buf, to) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    writable(self.io.get_ref()).await?
                }
                r => return r,
            }
        }
    }

    /// Sends `buf` to the connected address, waiting only if the send
    /// buffer is full.
    pub async fn send(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.io.get_ref().send(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    writable(self.io.get_ref()).await?
                }
                r => return r,
            }
        }
    }
}

/// Waits until `sock` is writable, through a duplicate descriptor
/// registered for writable only; dropping it deregisters. Registering
/// reports a readiness that arrived since the failed send (epoll checks
/// the current state on `EPOLL_CTL_ADD`), so no wakeup is lost.
pub(crate) async fn writable(sock: &std::net::UdpSocket) -> io::Result<()> {
    let dup = register(sock.try_clone()?, Interest::WRITABLE)?;
    let _ready = dup.writable().await?;
    Ok(())
}

impl AsFd for FlowSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.get_ref().as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn datagrams_go_both_ways_on_loopback() {
        let a = FlowSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = FlowSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        assert_eq!(b.send(b"ping").await.unwrap(), 4);
        let mut buf = [0u8; 16];
        let (n, from) = a.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"ping"[..], b.local_addr().unwrap()));
        a.send_to(b"pong", from).await.unwrap();
        b.readable().await.unwrap();
        assert_eq!(b.try_recv(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"pong");
        let e = b.try_recv(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    /// The wait after a `WouldBlock` registers a duplicate descriptor;
    /// epoll reports the state it finds on registration, so room that
    /// appeared between the failed send and the registration still wakes
    /// the sender (loopback frees sent datagrams at once, so a full buffer
    /// cannot be produced here; this is the property the wait relies on).
    #[tokio::test]
    async fn waiting_for_room_sees_room_that_is_already_there() {
        let s = FlowSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), writable(s.io.get_ref()))
            .await
            .expect("writable() missed the readiness present at registration")
            .unwrap();
        // The original descriptor is still registered for readable only
        // and still works.
        let peer = FlowSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        peer.send_to(b"x", s.local_addr().unwrap()).await.unwrap();
        let mut buf = [0u8; 4];
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), s.recv_from(&mut buf))
            .await
            .expect("no datagram")
            .unwrap();
        assert_eq!(got.0, 1);
    }
}
