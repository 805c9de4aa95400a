//! `nx-delayline`: one direction of an emulated link, because this kernel
//! has no netem.
//!
//! Creates TUN device `--tun` (the harness routes the peer's address into
//! it), reads each IPv4 packet, drops it with probability `--loss`, holds it
//! for `--delay-ms` and sends it out of `--out-if` to `--peer-mac` with an
//! AF_PACKET socket, so the far namespace receives it as if it had crossed
//! the veth directly. A constant delay keeps FIFO order, so one queue and
//! one sleeping sender thread suffice. At most `--limit` packets wait (tail
//! drop beyond, like netem's `limit`); the process exits after `--seconds`.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bench_tools::XorShift;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "nx-delayline")]
struct Cli {
    /// TUN device to create.
    #[arg(long)]
    tun: String,
    /// Interface to send the delayed packets out of.
    #[arg(long)]
    out_if: String,
    /// MAC address of the receiving interface on the other side.
    #[arg(long)]
    peer_mac: String,
    /// One-way delay in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Probability of dropping each packet (0..1).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Most packets held at once.
    #[arg(long, default_value_t = 20_000)]
    limit: usize,
    /// Exit after this many seconds.
    #[arg(long, default_value_t = 3600)]
    seconds: u64,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

fn open_tun(name: &str) -> anyhow::Result<File> {
    if name.len() >= libc::IFNAMSIZ {
        bail!("interface name {name:?} too long");
    }
    let path = CString::new("/dev/net/tun")?;
    // SAFETY: plain open(2) of a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening /dev/net/tun");
    }
    // SAFETY: fd was just returned by open and is owned here only.
    let file = unsafe { File::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF takes a pointer to an ifreq that outlives the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error()).context("TUNSETIFF");
    }
    Ok(file)
}

fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC {s:?}");
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC {s:?}"))?;
    }
    Ok(mac)
}

/// An AF_PACKET datagram socket that only sends (protocol 0: it receives
/// nothing), and the link-layer address it sends to.
struct PacketOut {
    fd: OwnedFd,
    addr: libc::sockaddr_ll,
}

impl PacketOut {
    fn new(ifname: &str, mac: [u8; 6]) -> anyhow::Result<PacketOut> {
        let c = CString::new(ifname)?;
        // SAFETY: NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {ifname}");
        }
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
        }
        // SAFETY: fd is fresh and owned here only.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let buf: libc::c_int = 8 << 20;
        // SAFETY: setsockopt with a c_int value of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                (&buf as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        // SAFETY: sockaddr_ll is plain old data.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        addr.sll_ifindex = i32::try_from(ifindex)?;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&mac);
        Ok(PacketOut { fd, addr })
    }

    fn send(&self, pkt: &[u8]) -> std::io::Result<()> {
        // SAFETY: pkt and addr are valid for the duration of the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&self.addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !(0.0..1.0).contains(&cli.loss) {
        bail!("--loss must be in [0, 1)");
    }
    let mut tun = open_tun(&cli.tun)?;
    let out = PacketOut::new(&cli.out_if, parse_mac(&cli.peer_mac)?)?;
    let delay = Duration::from_secs_f64(cli.delay_ms / 1000.0);
    let (tx, rx) = sync_channel::<(Instant, Vec<u8>)>(cli.limit.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    let overflow = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(cli.seconds);
    eprintln!(
        "nx-delayline: {} -> {} delay {:?} loss {}",
        cli.tun, cli.out_if, delay, cli.loss
    );
    std::thread::spawn(move || {
        // Sender: packets arrive in due order; sleep until each is due.
        while let Ok((due, pkt)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if let Err(e) = out.send(&pkt) {
                if e.raw_os_error() != Some(libc::ENOBUFS) {
                    eprintln!("nx-delayline: send: {e}");
                }
            }
        }
    });
    let seed = u64::from(std::process::id()) ^ 0x5DEE_CE66_D1CE_4E5B;
    let mut rng = XorShift::new(seed);
    let mut buf = vec![0u8; 65_536];
    let mut seen: u64 = 0;
    while Instant::now() < deadline {
        let n = tun.read(&mut buf).context("reading the TUN device")?;
        // Only IPv4 crosses (the harness routes one IPv4 address here).
        if n == 0 || buf[0] >> 4 != 4 {
            continue;
        }
        seen += 1;
        if cli.loss > 0.0 && rng.next_f64() < cli.loss {
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match tx.try_send((Instant::now() + delay, buf[..n].to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                overflow.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => bail!("sender thread ended"),
        }
        if seen.is_multiple_of(1_000_000) {
            eprintln!(
                "nx-delayline: {seen} packets, {} dropped at random, {} over the limit",
                dropped.load(Ordering::Relaxed),
                overflow.load(Ordering::Relaxed)
            );
        }
    }
    Ok(())
}
