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
//!
//! Both ends speak `virtio_net_hdr`: the TUN device hands over GSO
//! superpackets (up to 64 KiB of TCP, or of UDP GSO as QUIC sends) and the
//! AF_PACKET socket sends them on whole, as the bare veth carries them, so
//! the line costs one read and one send per superpacket instead of per
//! packet. Loss stays per packet of the MTU: a superpacket that loses any
//! of its segments is cut into them here (`bench_tools::gso`) and the
//! survivors go on alone.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bench_tools::gso::{self, VnetHdr};
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
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_VNET_HDR: libc::c_int = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;
const PACKET_VNET_HDR: libc::c_int = 15;

/// An `ifreq` naming interface `name` (shorter than `IFNAMSIZ`).
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

/// Creates TUN device `name` that hands over GSO superpackets (TCP and, where
/// the kernel has it, UDP), each behind a `virtio_net_hdr`.
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
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI | IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF takes a pointer to an ifreq that outlives the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error()).context("TUNSETIFF");
    }
    let tcp = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
    // UDP segmentation offload needs Linux 6.2; without it UDP arrives
    // in packets of the MTU, one read each.
    for offload in [tcp | TUN_F_USO4 | TUN_F_USO6, tcp] {
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, offload) } == 0 {
            return Ok(file);
        }
    }
    Err(std::io::Error::last_os_error()).context("TUNSETOFFLOAD")
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

/// An AF_PACKET socket that only sends (protocol 0: it receives nothing)
/// whole frames behind a `virtio_net_hdr`, so a superpacket leaves as one
/// send and crosses the veth as the kernel's own would.
struct PacketOut {
    fd: OwnedFd,
    addr: libc::sockaddr_ll,
    /// Ethernet header: the peer's MAC, ours, IPv4.
    eth: [u8; ETH_LEN],
}

const ETH_LEN: usize = 14;

impl PacketOut {
    fn new(ifname: &str, mac: [u8; 6]) -> anyhow::Result<PacketOut> {
        let c = CString::new(ifname)?;
        // SAFETY: NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {ifname}");
        }
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
        }
        // SAFETY: fd is fresh and owned here only.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20)
            .context("SO_SNDBUFFORCE")?;
        setsockopt_int(&fd, libc::SOL_PACKET, PACKET_VNET_HDR, 1).context("PACKET_VNET_HDR")?;
        let mut req = ifreq(ifname);
        // SAFETY: SIOCGIFHWADDR fills the ifreq, which outlives the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
            return Err(std::io::Error::last_os_error()).context("SIOCGIFHWADDR");
        }
        // SAFETY: SIOCGIFHWADDR set the hwaddr member of the union.
        let own = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mut eth = [0u8; ETH_LEN];
        eth[..6].copy_from_slice(&mac);
        for (d, s) in eth[6..12].iter_mut().zip(own) {
            *d = s as u8;
        }
        eth[12..].copy_from_slice(&(libc::ETH_P_IP as u16).to_be_bytes());
        // SAFETY: sockaddr_ll is plain old data.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        addr.sll_ifindex = i32::try_from(ifindex)?;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&mac);
        Ok(PacketOut { fd, addr, eth })
    }

    /// Sends IPv4 packet `pkt` described by `hdr` (offsets from the IPv4
    /// header, as TUN gives them).
    fn send(&self, hdr: VnetHdr, pkt: &[u8]) -> std::io::Result<()> {
        let vnet = hdr.shifted(ETH_LEN as u16).to_bytes();
        let mut iov = [
            libc::iovec {
                iov_base: vnet.as_ptr() as *mut libc::c_void,
                iov_len: vnet.len(),
            },
            libc::iovec {
                iov_base: self.eth.as_ptr() as *mut libc::c_void,
                iov_len: self.eth.len(),
            },
            libc::iovec {
                iov_base: pkt.as_ptr() as *mut libc::c_void,
                iov_len: pkt.len(),
            },
        ];
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&self.addr as *const libc::sockaddr_ll).cast_mut().cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len();
        // SAFETY: every buffer msg points to lives across the call, and the
        // kernel only reads them.
        let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, 0) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: setsockopt with a c_int value of the right size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A packet or superpacket waiting for its time.
struct Held {
    due: Instant,
    hdr: VnetHdr,
    pkt: Vec<u8>,
    /// Packets it is on the wire (counted against `--limit`).
    segments: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !(0.0..1.0).contains(&cli.loss) {
        bail!("--loss must be in [0, 1)");
    }
    let mut tun = open_tun(&cli.tun)?;
    let out = PacketOut::new(&cli.out_if, parse_mac(&cli.peer_mac)?)?;
    let delay = Duration::from_secs_f64(cli.delay_ms / 1000.0);
    let (tx, rx) = channel::<Held>();
    let queued = Arc::new(AtomicUsize::new(0));
    let mut dropped = 0u64;
    let mut overflow = 0u64;
    let deadline = Instant::now() + Duration::from_secs(cli.seconds);
    eprintln!(
        "nx-delayline: {} -> {} delay {:?} loss {}",
        cli.tun, cli.out_if, delay, cli.loss
    );
    let sender_queued = Arc::clone(&queued);
    std::thread::spawn(move || {
        // Sender: packets arrive in due order; sleep until each is due.
        while let Ok(held) = rx.recv() {
            let now = Instant::now();
            if held.due > now {
                std::thread::sleep(held.due - now);
            }
            if let Err(e) = out.send(held.hdr, &held.pkt) {
                if e.raw_os_error() != Some(libc::ENOBUFS) {
                    eprintln!("nx-delayline: send: {e}");
                }
            }
            sender_queued.fetch_sub(held.segments, Ordering::Relaxed);
        }
    });
    let seed = u64::from(std::process::id()) ^ 0x5DEE_CE66_D1CE_4E5B;
    let mut rng = XorShift::new(seed);
    let mut buf = vec![0u8; VnetHdr::LEN + 65_536];
    let mut seen: u64 = 0;
    let mut reads: u64 = 0;
    let mut lost = Vec::new();
    let mut survivors = Vec::new();
    while Instant::now() < deadline {
        let n = tun.read(&mut buf).context("reading the TUN device")?;
        let Some(hdr) = VnetHdr::parse(&buf[..n]) else {
            continue;
        };
        let pkt = &buf[VnetHdr::LEN..n];
        // Only IPv4 crosses (the harness routes one IPv4 address here).
        if pkt.first().is_none_or(|b| b >> 4 != 4) {
            continue;
        }
        let segments = gso::segments(&hdr, pkt);
        reads += 1;
        let before = seen;
        seen += segments as u64;
        lost.clear();
        if cli.loss > 0.0 {
            lost.extend((0..segments).filter(|_| rng.next_f64() < cli.loss));
        }
        dropped += lost.len() as u64;
        let due = Instant::now() + delay;
        let mut hold = |hdr: VnetHdr, pkt: Vec<u8>, segments: usize| {
            if queued.load(Ordering::Relaxed) + segments > cli.limit {
                overflow += segments as u64;
                return Ok(());
            }
            queued.fetch_add(segments, Ordering::Relaxed);
            tx.send(Held {
                due,
                hdr,
                pkt,
                segments,
            })
            .map_err(|_| anyhow::anyhow!("sender thread ended"))
        };
        if lost.is_empty() {
            hold(hdr, pkt.to_vec(), segments)?;
        } else if lost.len() < segments {
            // Part of a superpacket survives: its segments go on alone.
            survivors.clear();
            if gso::split(&hdr, pkt, |i| !lost.contains(&i), &mut survivors).is_none() {
                // (Not reached: `segments` counted more than one only for
                // what `split` can cut.) Lose it whole rather than stop.
                eprintln!("nx-delayline: a superpacket of {segments} could not be cut; dropped");
                dropped += (segments - lost.len()) as u64;
            }
            for seg in survivors.drain(..) {
                hold(VnetHdr::default(), seg, 1)?;
            }
        }
        if before / 1_000_000 != seen / 1_000_000 {
            eprintln!(
                "nx-delayline: {seen} packets in {reads} reads, {dropped} dropped at random, \
                 {overflow} over the limit"
            );
        }
    }
    Ok(())
}
