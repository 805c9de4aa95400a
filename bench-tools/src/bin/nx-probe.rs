//! `nx-probe`: latency and scale probes against an echo server (`nx-echo
//! tcp`). Each prints one JSON object on stdout.
//!
//! * `connect-rtt`: fresh TCP connection, 1 byte out, 1 byte back, close;
//!   the time of all that per sample.
//! * `reqlat`: one connection, 64-byte request/echo at a fixed rate for a
//!   while (run next to a bulk transfer for head-of-line blocking).
//! * `udp-echo`: one UDP socket, a numbered datagram at a fixed rate to a
//!   UDP echo server (`nx-echo udp`), the time until its echo returns; a
//!   datagram whose echo is not back within the timeout counts as lost.
//! * `idle`: opens N connections, echoes once on each, holds them, reads
//!   the RSS of the given processes, echoes again on every one.
//! * `connect-close`: connect() + close() N times (no data), total time.
//! * `connect-paired`: the eBPF redirect's own cost, paired per sample:
//!   connect()+close() to the listener from outside the hooked cgroup, to
//!   the service from inside it (redirected to that listener), and to the
//!   listener from inside (a lookup miss), in random order each round; the
//!   process moves itself between the cgroups between timings.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bench_tools::Stats;
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Parser)]
#[command(name = "nx-probe")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    ConnectRtt {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// Pause between samples.
        #[arg(long, default_value_t = 20)]
        pause_ms: u64,
    },
    Reqlat {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Requests per second.
        #[arg(long, default_value_t = 50)]
        rate: u32,
    },
    UdpEcho {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Datagrams per second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Payload bytes per datagram (at least 8: the sequence number).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// How long to wait for an echo before counting it lost.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    Idle {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Processes whose VmRSS to report (label=pid).
        #[arg(long)]
        rss: Vec<String>,
        /// Seconds to hold the connections idle before re-checking.
        #[arg(long, default_value_t = 3)]
        hold_secs: u64,
    },
    ConnectClose {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 2000)]
        count: usize,
    },
    ConnectPaired {
        /// The cgroup the hooks are attached to.
        #[arg(long)]
        inside: std::path::PathBuf,
        /// A cgroup without the hooks (e.g. the hierarchy's root).
        #[arg(long)]
        outside: std::path::PathBuf,
        /// The service's cluster address (redirected inside).
        #[arg(long)]
        service: SocketAddr,
        /// The daemon's listener the service is redirected to.
        #[arg(long)]
        listener: SocketAddr,
        #[arg(long, default_value_t = 5000)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Paces a loop at `rate` iterations a second for `seconds`; an iteration
/// that ran late does not make the next ones burst to catch up.
struct Pacer {
    period: Duration,
    end: Instant,
    next: Instant,
}

impl Pacer {
    fn new(rate: u32, seconds: f64) -> Pacer {
        let start = Instant::now();
        Pacer {
            period: Duration::from_secs_f64(1.0 / f64::from(rate.max(1))),
            end: start + Duration::from_secs_f64(seconds),
            next: start,
        }
    }

    /// Whether the time is not over yet.
    fn running(&self) -> bool {
        Instant::now() < self.end
    }

    /// Sleeps until the next iteration is due.
    fn wait(&mut self) {
        self.next += self.period;
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        } else {
            self.next = now;
        }
    }
}

fn connect_rtt(addr: SocketAddr, count: usize, pause: Duration) -> anyhow::Result<()> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let t0 = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.write_all(b"x")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).context("reading the echo")?;
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
        drop(s);
        std::thread::sleep(pause);
    }
    let st = Stats::of(&mut samples).context("no samples")?;
    println!("{{{}}}", st.json_fields());
    Ok(())
}

fn reqlat(addr: SocketAddr, seconds: f64, rate: u32) -> anyhow::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let req = [0x42u8; 64];
    let mut resp = [0u8; 64];
    let mut pace = Pacer::new(rate, seconds);
    let mut samples = Vec::new();
    while pace.running() {
        let t0 = Instant::now();
        s.write_all(&req)?;
        s.read_exact(&mut resp).context("reading the echo")?;
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
        pace.wait();
    }
    let st = Stats::of(&mut samples).context("no samples")?;
    println!("{{{}}}", st.json_fields());
    Ok(())
}

fn udp_echo(
    addr: SocketAddr,
    seconds: f64,
    rate: u32,
    size: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = std::net::UdpSocket::bind(bind)?;
    s.connect(addr)?;
    let mut req = vec![0x42u8; size.max(8)];
    let mut resp = vec![0u8; 65536];
    let mut pace = Pacer::new(rate, seconds);
    let mut samples = Vec::new();
    let (mut sent, mut lost) = (0u64, 0u64);
    while pace.running() {
        sent += 1;
        req[..8].copy_from_slice(&sent.to_be_bytes());
        let t0 = Instant::now();
        s.send(&req)?;
        // Wait for this sequence number; late echoes of earlier ones are
        // skipped (they were counted lost).
        let answered = loop {
            let left = timeout.saturating_sub(t0.elapsed());
            if left.is_zero() {
                break false;
            }
            s.set_read_timeout(Some(left))?;
            match s.recv(&mut resp) {
                Ok(n) if n >= 8 && resp[..8] == sent.to_be_bytes() => break true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break false
                }
                Err(e) => return Err(e).context("receiving the echo"),
            }
        };
        if answered {
            samples.push(t0.elapsed().as_secs_f64() * 1e6);
        } else {
            lost += 1;
        }
        pace.wait();
    }
    let st = Stats::of(&mut samples).context("no echo came back")?;
    println!("{{{},\"sent\":{sent},\"lost\":{lost}}}", st.json_fields());
    Ok(())
}

fn rss_kib(pid: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

fn rss_all(specs: &[String]) -> anyhow::Result<Vec<(String, u64)>> {
    specs
        .iter()
        .map(|s| {
            let (label, pid) = s.split_once('=').context("--rss wants label=pid")?;
            Ok((label.to_owned(), rss_kib(pid)?))
        })
        .collect()
}

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

async fn echo_once(s: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    s.write_all(b"ping").await?;
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await?;
    Ok(())
}

async fn idle(addr: SocketAddr, count: usize, rss: Vec<String>, hold: u64) -> anyhow::Result<()> {
    raise_nofile();
    let before = rss_all(&rss)?;
    let t0 = Instant::now();
    let mut conns: Vec<tokio::net::TcpStream> = Vec::with_capacity(count);
    // Open in waves of 200 to keep accept queues short.
    for wave in (0..count).collect::<Vec<_>>().chunks(200) {
        let mut set = tokio::task::JoinSet::new();
        for _ in wave {
            set.spawn(async move {
                let mut s = tokio::time::timeout(IO_TIMEOUT, tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(|_| std::io::Error::other("connect timeout"))??;
                s.set_nodelay(true)?;
                tokio::time::timeout(IO_TIMEOUT, echo_once(&mut s))
                    .await
                    .map_err(|_| std::io::Error::other("echo timeout"))??;
                Ok::<_, std::io::Error>(s)
            });
        }
        while let Some(r) = set.join_next().await {
            conns.push(r?.with_context(|| format!("connection {}", conns.len()))?);
        }
    }
    let open_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let after = rss_all(&rss)?;
    // Every connection still usable.
    let mut ok = 0usize;
    for chunk in conns.chunks_mut(500) {
        let mut futs = Vec::new();
        for s in chunk.iter_mut() {
            futs.push(tokio::time::timeout(IO_TIMEOUT, echo_once(s)));
        }
        for r in futures_join(futs).await {
            if matches!(r, Ok(Ok(()))) {
                ok += 1;
            }
        }
    }
    let rss_json: Vec<String> = before
        .iter()
        .zip(&after)
        .map(|((l, b), (_, a))| format!("\"{l}\":{{\"before_kib\":{b},\"after_kib\":{a}}}"))
        .collect();
    println!(
        "{{\"count\":{count},\"usable_after\":{ok},\"open_seconds\":{open_secs:.2},\"rss\":{{{}}}}}",
        rss_json.join(",")
    );
    if ok != count {
        bail!(
            "{} of {count} connections failed the second echo",
            count - ok
        );
    }
    Ok(())
}

/// Awaits all futures concurrently (no extra dependency for join_all).
async fn futures_join<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in pinned.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

fn connect_close(addr: SocketAddr, count: usize) -> anyhow::Result<()> {
    let mut samples = Vec::with_capacity(count);
    let t0 = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        drop(s);
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = t0.elapsed().as_secs_f64();
    let st = Stats::of(&mut samples).context("no samples")?;
    println!("{{{},\"total_seconds\":{total:.4}}}", st.json_fields());
    Ok(())
}

/// Moves this process into `cgroup`.
fn enter(cgroup: &std::path::Path) -> anyhow::Result<()> {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
        .with_context(|| format!("moving into {}", cgroup.display()))
}

fn time_connect(addr: SocketAddr) -> anyhow::Result<f64> {
    let t = Instant::now();
    let s =
        TcpStream::connect_timeout(&addr, IO_TIMEOUT).with_context(|| format!("connect {addr}"))?;
    drop(s);
    Ok(t.elapsed().as_secs_f64() * 1e6)
}

/// xorshift64*: the shuffle needs no more.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median of the paired differences and its 95% bootstrap interval.
fn paired(diffs: &[f64], rng: &mut Rng) -> (f64, f64, f64) {
    let mut d = diffs.to_vec();
    let m = median(&mut d);
    let mut boots = Vec::with_capacity(1000);
    let mut sample = vec![0.0; diffs.len()];
    for _ in 0..1000 {
        for x in sample.iter_mut() {
            *x = diffs[(rng.next() % diffs.len() as u64) as usize];
        }
        boots.push(median(&mut sample));
    }
    boots.sort_by(f64::total_cmp);
    (m, boots[25], boots[974])
}

fn connect_paired(
    inside: &std::path::Path,
    outside: &std::path::Path,
    service: SocketAddr,
    listener: SocketAddr,
    count: usize,
    seed: u64,
) -> anyhow::Result<()> {
    // (cgroup, address): direct (no hook), redirected, lookup miss.
    let cases = [(outside, listener), (inside, service), (inside, listener)];
    let mut rng = Rng(seed.max(1));
    let mut t: [Vec<f64>; 3] = [vec![], vec![], vec![]];
    // Warm-up round, not kept.
    for (cg, addr) in cases {
        enter(cg)?;
        time_connect(addr)?;
    }
    for _ in 0..count {
        let mut order = [0usize, 1, 2];
        for i in (1..3).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        for k in order {
            let (cg, addr) = cases[k];
            enter(cg)?;
            t[k].push(time_connect(addr)?);
        }
    }
    enter(outside)?;
    let redirect: Vec<f64> = t[1].iter().zip(&t[0]).map(|(b, a)| b - a).collect();
    let miss: Vec<f64> = t[2].iter().zip(&t[0]).map(|(c, a)| c - a).collect();
    let (rd, rlo, rhi) = paired(&redirect, &mut rng);
    let (md, mlo, mhi) = paired(&miss, &mut rng);
    let [mut a, mut b, mut c] = t;
    let base = median(&mut a);
    println!(
        "{{\"count\":{count},\"direct_us\":{base:.3},\"redirected_us\":{:.3},\"miss_us\":{:.3},\
         \"redirect_delta_us\":[{rd:.3},{rlo:.3},{rhi:.3}],\"miss_delta_us\":[{md:.3},{mlo:.3},{mhi:.3}]}}",
        median(&mut b),
        median(&mut c),
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        Mode::ConnectRtt {
            addr,
            count,
            pause_ms,
        } => connect_rtt(addr, count, Duration::from_millis(pause_ms)),
        Mode::Reqlat {
            addr,
            seconds,
            rate,
        } => reqlat(addr, seconds, rate),
        Mode::UdpEcho {
            addr,
            seconds,
            rate,
            size,
            timeout_ms,
        } => udp_echo(addr, seconds, rate, size, Duration::from_millis(timeout_ms)),
        Mode::Idle {
            addr,
            count,
            rss,
            hold_secs,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(idle(addr, count, rss, hold_secs)),
        Mode::ConnectClose { addr, count } => connect_close(addr, count),
        Mode::ConnectPaired {
            inside,
            outside,
            service,
            listener,
            count,
            seed,
        } => connect_paired(&inside, &outside, service, listener, count, seed),
    }
}
