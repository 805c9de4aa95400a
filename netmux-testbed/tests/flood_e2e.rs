//! A flood of unauthenticated peers (issue 14, section 5): 1,000 QUIC
//! connections that complete the handshake and never send a hello, and 200
//! `stream_listen` TCP connections that never send a byte, against a real
//! `netmux-server` with its default `[limits]`. Meanwhile a daemon connected
//! before the flood (over `stream_listen`, like a port-forward) keeps
//! proxying requests, and the server's RSS grows by less than
//! [`RSS_BOUND`]. The figures are printed for BENCHMARKS.md.
//!
//! Needs root; run with `--test-threads=1` (as `cargo xtask test` does).
//! All traffic stays inside the test's two network namespaces.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netmux_testbed::netmux::{Layout, Netmux, ServiceSpec, ENDPOINT, LOOPBACK, TOKEN};
use netmux_testbed::{Sandbox, Side};
use tokio::io::AsyncReadExt;

mod common;
use common::{curl, ip, nx_echo, on_failure_dump, sandbox, T};

/// Unauthenticated QUIC connections attempted at once.
const QUIC_FLOOD: usize = 1000;
/// Idle `stream_listen` connections opened at once.
const TCP_FLOOD: usize = 200;
/// Most the server's resident memory may grow during the flood.
const RSS_BOUND: u64 = 64 * 1024 * 1024;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

/// What the flood saw.
#[derive(Debug, Default)]
struct Flood {
    quic_handshakes: u64,
    quic_refused: u64,
    quic_other: u64,
    tcp_accepted: u64,
    tcp_closed_at_once: u64,
    tcp_closed_later: u64,
    tcp_left_open: u64,
}

fn client_config(ca_pem: &str) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("root");
    }
    // quinn's default transport, as a plain client's.
    netmux_common::tunnel::quic::client_config(roots, quinn::TransportConfig::default())
        .expect("client config")
}

/// Opens the flood (run inside the workstation namespace) and holds it
/// until `hold` is cleared; then waits for the server to close the TCP
/// connections.
async fn flood(
    quic: SocketAddr,
    stream: SocketAddr,
    ca_pem: String,
    hold: Arc<AtomicBool>,
) -> Flood {
    let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse().expect("addr")).expect("client");
    endpoint.set_default_client_config(client_config(&ca_pem));
    let quic_tasks: Vec<_> = (0..QUIC_FLOOD)
        .map(|_| {
            let connecting = endpoint.connect(quic, "netmux-server").expect("connect");
            let hold = hold.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(T, connecting).await {
                    Ok(Ok(conn)) => {
                        // Never a hello: hold it until told or closed.
                        while hold.load(Ordering::SeqCst) && conn.close_reason().is_none() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        0
                    }
                    Ok(Err(quinn::ConnectionError::ConnectionClosed(c)))
                        if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
                    {
                        1
                    }
                    _ => 2,
                }
            })
        })
        .collect();
    let mut tcp = Vec::new();
    for _ in 0..TCP_FLOOD {
        tcp.push(
            tokio::net::TcpStream::connect(stream)
                .await
                .expect("tcp connect"),
        );
    }
    let tcp_tasks: Vec<_> = tcp
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let closed = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut got))
                    .await
                    .is_ok();
                // The server sends its preamble to peers it keeps.
                (!got.is_empty(), closed)
            })
        })
        .collect();
    let mut out = Flood::default();
    for t in quic_tasks {
        match t.await.expect("quic task") {
            0 => out.quic_handshakes += 1,
            1 => out.quic_refused += 1,
            _ => out.quic_other += 1,
        }
    }
    for t in tcp_tasks {
        let (accepted, closed) = t.await.expect("tcp task");
        match (accepted, closed) {
            (true, true) => out.tcp_closed_later += 1,
            (false, true) => out.tcp_closed_at_once += 1,
            (_, false) => out.tcp_left_open += 1,
        }
        out.tcp_accepted += u64::from(accepted);
    }
    endpoint.close(0u32.into(), b"done");
    out
}

#[test]
fn a_flood_of_unauthenticated_peers_leaves_the_daemon_working_and_memory_bounded() {
    let sb = sandbox();
    on_failure_dump(&sb, || run(&sb));
}

fn run(sb: &Sandbox) {
    let spec = ServiceSpec::l2c("http-echo", ip("10.96.0.10"), 80, 8080);
    let layout = Layout::over_tcp(sb);
    let nm = Netmux::start_layout(sb, layout, std::slice::from_ref(&spec), TOKEN, LOOPBACK)
        .expect("netmux start");
    let _backend = nx_echo(
        sb,
        Side::Cluster,
        "backend-http-echo",
        "http",
        spec.target(),
    );
    let out = nm.cli(["connect", ENDPOINT]).expect("netmux connect");
    assert!(out.success(), "connect: {}{}", out.stdout, out.stderr);
    let out = nm.cli(["start", ENDPOINT, "+"]).expect("netmux start");
    assert!(out.success(), "start: {}{}", out.stdout, out.stderr);
    let url = format!("http://http-echo.{ENDPOINT}.svc.cluster.local/before");
    let out = curl(sb, Side::Workstation, &url);
    assert!(
        out.success() && out.stdout.contains("path=/before"),
        "{}{}",
        out.stdout,
        out.stderr
    );

    let pid = nm.server.pid().expect("server pid");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
    assert_eq!(comm.trim(), "netmux-server", "measuring the server itself");
    let rss_before = rss_bytes(pid);
    let peak = Arc::new(AtomicU64::new(rss_before));
    let hold = Arc::new(AtomicBool::new(true));
    let ca_pem = std::fs::read_to_string(nm.layout.ca_file()).expect("CA");
    let (quic, stream) = (nm.layout.quic, nm.layout.stream);

    let started = Instant::now();
    let (flood, requests) = std::thread::scope(|s| {
        let sampler = s.spawn({
            let (peak, hold) = (peak.clone(), hold.clone());
            move || {
                while hold.load(Ordering::SeqCst) {
                    peak.fetch_max(rss_bytes(pid), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        let flooder = s.spawn({
            let hold = hold.clone();
            move || {
                sb.ws()
                    .block_on(move || flood(quic, stream, ca_pem, hold))
                    .expect("flood in the workstation namespace")
            }
        });
        // The daemon's requests while the flood is held open.
        std::thread::sleep(Duration::from_secs(1));
        let mut ok = 0;
        for i in 0..20 {
            let out = curl(
                sb,
                Side::Workstation,
                &format!("http://http-echo.{ENDPOINT}.svc.cluster.local/during-{i}"),
            );
            assert!(
                out.success() && out.stdout.contains(&format!("path=/during-{i}")),
                "request {i} during the flood: {}{}",
                out.stdout,
                out.stderr
            );
            ok += 1;
        }
        hold.store(false, Ordering::SeqCst);
        let flood = flooder.join().expect("flooder");
        sampler.join().expect("sampler");
        (flood, ok)
    });
    let elapsed = started.elapsed();
    let grown = peak.load(Ordering::SeqCst).saturating_sub(rss_before);
    let metrics = curl(
        sb,
        Side::Cluster,
        &format!("http://{}/metrics", nm.layout.http),
    );
    let refused: Vec<&str> = metrics
        .stdout
        .lines()
        .filter(|l| l.starts_with("netmux_server_peers_refused_total"))
        .collect();
    println!(
        "flood figures: {flood:?}; {requests} requests through the daemon all answered; \
         server RSS {} MiB before, peak +{:.1} MiB (bound {} MiB); {:.1} s; {refused:?}",
        rss_before >> 20,
        grown as f64 / (1 << 20) as f64,
        RSS_BOUND >> 20,
        elapsed.as_secs_f64()
    );
    assert_eq!(
        flood.quic_handshakes + flood.quic_refused + flood.quic_other,
        QUIC_FLOOD as u64
    );
    assert!(
        flood.quic_refused > 0,
        "the caps refused part of the flood: {flood:?}"
    );
    assert!(
        flood.tcp_closed_at_once > 0,
        "per-source cap on stream_listen: {flood:?}"
    );
    assert_eq!(
        flood.tcp_closed_later + flood.tcp_closed_at_once,
        TCP_FLOOD as u64,
        "every idle stream_listen connection was closed by the server: {flood:?}"
    );
    assert!(
        !refused.is_empty(),
        "refusals are counted: {}",
        metrics.stdout
    );
    assert!(
        grown < RSS_BOUND,
        "server RSS grew by {grown} bytes during the flood"
    );
    // And afterwards, still working.
    let url = format!("http://http-echo.{ENDPOINT}.svc.cluster.local/after");
    let out = curl(sb, Side::Workstation, &url);
    assert!(
        out.success() && out.stdout.contains("path=/after"),
        "{}{}",
        out.stdout,
        out.stderr
    );
}
