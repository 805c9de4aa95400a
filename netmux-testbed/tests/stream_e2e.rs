//! End-to-end tests of how a proxied TCP connection ends (issue 15, "No
//! byte lost, truncated or faked"): a reset on either side reaches the
//! other side as a reset, never as a clean FIN, for L2C and C2L; a
//! half-closed connection whose other direction goes silent is reset after
//! the configured timeout; dialled and accepted sockets carry TCP
//! keepalive.
//!
//! Need root; run with `--test-threads=1` (as `cargo xtask test` does).
//! Clients and targets run in this process, inside the sandbox's
//! namespaces.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use netmux_testbed::netmux::{Netmux, ServiceSpec, ENDPOINT, LOOPBACK, TOKEN};

use netmux_testbed::{Netns, Sandbox, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::{hosts_addr, ip, on_failure_dump, sandbox, T};

/// Connections per scenario.
const ROUNDS: usize = 200;
/// Longest wait for one connection's end (a hang fails the test).
const END_WAIT: Duration = Duration::from_secs(10);

/// How a connection ended, as its reader saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    /// Clean end of stream: a FIN.
    Fin,
    /// `ECONNRESET`.
    Reset,
    /// Anything else (bytes, another error, no end within [`END_WAIT`]).
    Other(String),
}

/// Tags of the connections whose first four bytes (a client's tag) the
/// target has read.
type Seen = Mutex<HashSet<u32>>;

/// Reads until the end; once the first four bytes are in, records them in
/// `seen` as the connection's tag.
async fn read_to_end(s: &mut TcpStream, seen: &Seen) -> Ending {
    let mut buf = [0u8; 4096];
    let mut head = Vec::new();
    loop {
        match tokio::time::timeout(END_WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) => return Ending::Fin,
            Ok(Ok(n)) => {
                if head.len() < 4 {
                    head.extend_from_slice(&buf[..n]);
                    if let Some(tag) = head.get(..4) {
                        let tag = u32::from_be_bytes(tag.try_into().expect("four bytes"));
                        seen.lock().expect("seen").insert(tag);
                    }
                }
            }
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionReset => return Ending::Reset,
            Ok(Err(e)) => return Ending::Other(e.to_string()),
            Err(_) => return Ending::Other("no end in time".into()),
        }
    }
}

/// Waits until `s` (whose read side already ended) is reset by its peer.
async fn reset_seen(s: &TcpStream) -> Ending {
    let deadline = tokio::time::Instant::now() + END_WAIT;
    loop {
        match s.take_error() {
            Ok(Some(e))
                if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) =>
            {
                return Ending::Reset
            }
            Ok(Some(e)) => return Ending::Other(e.to_string()),
            Ok(None) => {}
            Err(e) => return Ending::Other(e.to_string()),
        }
        if tokio::time::Instant::now() > deadline {
            return Ending::Other("no reset in time".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the target does with each connection.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// Reads until the end and records how it ended.
    Reads,
    /// Reads the client's byte, then resets.
    ResetsAfterOneByte,
}

/// A target listening on `addr` inside `ns` until `stop`; records each
/// connection's [`Ending`] (for [`Target::Reads`]).
fn serve_target(
    ns: &Netns,
    addr: SocketAddr,
    mode: Target,
    ready: &AtomicBool,
    stop: &AtomicBool,
    seen: &Seen,
    endings: &Mutex<Vec<Ending>>,
) {
    ns.block_on(|| async move {
        let l = TcpListener::bind(addr).await.expect("target bind");
        ready.store(true, Ordering::SeqCst);
        // One connection at a time: the clients are sequential too.
        while !stop.load(Ordering::SeqCst) {
            let Ok(Ok((mut s, _))) =
                tokio::time::timeout(Duration::from_millis(100), l.accept()).await
            else {
                continue;
            };
            match mode {
                Target::Reads => {
                    let e = read_to_end(&mut s, seen).await;
                    endings.lock().expect("endings").push(e);
                }
                Target::ResetsAfterOneByte => {
                    let mut b = [0u8; 1];
                    let _ = tokio::time::timeout(END_WAIT, s.read_exact(&mut b)).await;
                    s.set_zero_linger().expect("SO_LINGER 0");
                    drop(s);
                }
            }
        }
    })
    .expect("target namespace");
}

/// Runs `clients` in `client_ns` while a `mode` target serves `target` in
/// `target_ns`; returns the target's endings, once no new connection came
/// for a second. `clients` gets the count of connections the target has
/// read a tag from (see [`read_to_end`]).
fn with_target<R: Send>(
    target_ns: &Netns,
    target: SocketAddr,
    mode: Target,
    clients: impl FnOnce(&Seen) -> R + Send,
) -> (R, Vec<Ending>) {
    let ready = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let seen = Seen::default();
    let endings = Mutex::new(Vec::new());
    let r = std::thread::scope(|s| {
        let server =
            s.spawn(|| serve_target(target_ns, target, mode, &ready, &stop, &seen, &endings));
        netmux_testbed::wait_until("the target listening", T, || ready.load(Ordering::SeqCst))
            .expect("target up");
        let r = clients(&seen);
        let mut seen = usize::MAX;
        let _ = netmux_testbed::wait_until("the target settling", T, || {
            std::thread::sleep(Duration::from_secs(1));
            let now = endings.lock().expect("endings").len();
            std::mem::replace(&mut seen, now) == now
        });
        stop.store(true, Ordering::SeqCst);
        server.join().expect("target thread");
        r
    });
    (r, endings.into_inner().expect("endings"))
}

/// Clients that reset: connect, maybe send a byte, RST.
///
/// The even rounds send their round number as a tag and reset only once
/// the target has read it, so under any load at least half the resets
/// travel the whole path; the odd ones reset at once, racing the open.
/// Returns the even rounds whose tag never reached the target.
async fn resetting_clients(to: SocketAddr, seen: &Seen) -> Vec<u32> {
    let mut lost = Vec::new();
    for i in 0..ROUNDS {
        let s = TcpStream::connect(to).await.expect("connect");
        if i % 2 == 0 {
            let mut s = s;
            let tag = u32::try_from(i).expect("few rounds");
            s.write_all(&tag.to_be_bytes()).await.expect("write");
            let reached = tokio::time::Instant::now() + END_WAIT;
            while !seen.lock().expect("seen").contains(&tag) {
                if tokio::time::Instant::now() > reached {
                    lost.push(tag);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            s.set_zero_linger().expect("SO_LINGER 0");
            drop(s);
        } else {
            s.set_zero_linger().expect("SO_LINGER 0");
            drop(s);
        }
    }
    lost
}

/// Clients that send a byte and read how the connection ends.
async fn reading_clients(to: SocketAddr) -> Vec<Ending> {
    let mut out = Vec::new();
    for _ in 0..ROUNDS {
        let mut s = TcpStream::connect(to).await.expect("connect");
        s.write_all(b"x").await.expect("write");
        out.push(read_to_end(&mut s, &Seen::default()).await);
    }
    out
}

fn count(endings: &[Ending], e: &Ending) -> usize {
    endings.iter().filter(|x| *x == e).count()
}

/// Both directions through one tunnel: clients in `client_ns` reach
/// `via`, which the tunnel sends to `target` in `target_ns`.
fn resets_stay_resets(client_ns: &Netns, via: SocketAddr, target_ns: &Netns, target: SocketAddr) {
    // The client resets: the target must see a reset (or nothing at all,
    // when the client was gone before its stream was opened), never a FIN.
    let (lost, at_target) = with_target(target_ns, target, Target::Reads, |seen| {
        client_ns
            .block_on(|| resetting_clients(via, seen))
            .expect("client namespace")
    });
    assert!(
        lost.is_empty(),
        "the bytes of these clients never reached the target: {lost:?}"
    );
    assert!(
        at_target.len() >= ROUNDS / 2,
        "only {} of the {} clients that waited for the target reached it",
        at_target.len(),
        ROUNDS / 2
    );
    assert_eq!(
        count(&at_target, &Ending::Reset),
        at_target.len(),
        "a client reset reached the target otherwise than as a reset ({} FIN): {:?}",
        count(&at_target, &Ending::Fin),
        at_target
            .iter()
            .filter(|e| **e != Ending::Reset)
            .take(5)
            .collect::<Vec<_>>()
    );
    // The target resets: every client must see a reset.
    let (at_client, _) = with_target(target_ns, target, Target::ResetsAfterOneByte, |_| {
        client_ns
            .block_on(|| reading_clients(via))
            .expect("client namespace")
    });
    assert_eq!(at_client.len(), ROUNDS);
    assert_eq!(
        count(&at_client, &Ending::Reset),
        ROUNDS,
        "a target reset reached the client otherwise than as a reset ({} FIN): {:?}",
        count(&at_client, &Ending::Fin),
        at_client
            .iter()
            .filter(|e| **e != Ending::Reset)
            .take(5)
            .collect::<Vec<_>>()
    );
}

/// L2C service `rst`: the server dials 10.96.0.40:7000 in the cluster.
fn l2c_rst() -> ServiceSpec {
    ServiceSpec::l2c("rst", ip("10.96.0.40"), 7000, 7000)
}

/// The local address the daemon gave `name` in the workstation hosts file.
fn local(sb: &Sandbox, name: &str, port: u16) -> SocketAddr {
    hosts_addr(sb, &format!("{name}.{ENDPOINT}.svc.cluster.local"), port)
}

fn up<'a>(sb: &'a Sandbox, services: &[ServiceSpec], daemon_extra: &str) -> Netmux<'a> {
    let nm = Netmux::start_with(sb, services, TOKEN, daemon_extra).unwrap_or_else(|e| {
        sb.dump_logs(50);
        panic!("netmux start: {e}")
    });
    let out = nm.cli(["connect", ENDPOINT]).expect("connect");
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    nm
}

#[test]
fn l2c_a_reset_stays_a_reset_both_ways_200_times() {
    let sb = sandbox();
    let nm = up(&sb, &[l2c_rst()], LOOPBACK);
    let out = nm.cli(["start", ENDPOINT, "rst"]).expect("start");
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    let via = local(&sb, "rst", 7000);
    on_failure_dump(&sb, || {
        resets_stay_resets(sb.ws(), via, sb.cluster(), l2c_rst().target());
    });
}

#[test]
fn c2l_a_reset_stays_a_reset_both_ways_200_times() {
    let sb = sandbox();
    let nm = up(&sb, &[l2c_rst()], LOOPBACK);
    let target: SocketAddr = "127.0.0.1:19500".parse().expect("literal");
    let out = nm
        .cli([
            "expose",
            ENDPOINT,
            "rrst",
            "--local",
            &target.to_string(),
            "--remote-port",
            "9500",
        ])
        .expect("expose");
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    let via: SocketAddr = "127.0.0.1:9500".parse().expect("literal");
    on_failure_dump(&sb, || {
        resets_stay_resets(sb.cluster(), via, sb.ws(), target);
    });
}

/// Sockets in `ns` towards or from `port` whose `ss` line shows a
/// keepalive timer.
fn keepalive_sockets(sb: &Sandbox, side: Side, port: u16) -> String {
    let out = sb
        .process(side, "ss", "ss")
        .args(["-tnoH", "state", "established"])
        .run(T)
        .expect("running ss");
    assert!(out.success(), "ss: {}", out.stderr);
    out.stdout
        .lines()
        .filter(|l| l.contains(&format!(":{port} ")) && l.contains("timer:(keepalive"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_silent_half_closed_connection_is_reset_and_sockets_keep_alive() {
    let sb = sandbox();
    // One second after a half-close without a byte, the daemon resets.
    let nm = up(
        &sb,
        &[l2c_rst()],
        &format!("{LOOPBACK}half_close_timeout_secs = 1\n"),
    );
    let out = nm.cli(["start", ENDPOINT, "rst"]).expect("start");
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    let via = local(&sb, "rst", 7000);
    let target = l2c_rst().target();
    on_failure_dump(&sb, || {
        let ready = AtomicBool::new(false);
        let (client_end, target_end, keepalive) = std::thread::scope(|s| {
            // The target reads to the client's FIN, then stays silent
            // with its own direction open.
            let t = s.spawn(|| {
                sb.cluster()
                    .block_on(|| async {
                        let l = TcpListener::bind(target).await.expect("bind");
                        ready.store(true, Ordering::SeqCst);
                        let (mut c, _) = l.accept().await.expect("accept");
                        let mut buf = Vec::new();
                        let got = tokio::time::timeout(END_WAIT, c.read_to_end(&mut buf)).await;
                        assert!(
                            matches!(got, Ok(Ok(5))),
                            "the client's bytes then FIN: {got:?}"
                        );
                        // Its own direction stays open and silent; reads
                        // now say EOF, so a reset shows in SO_ERROR (EPIPE
                        // in CLOSE_WAIT, see tcp_reset()).
                        reset_seen(&c).await
                    })
                    .expect("cluster namespace")
            });
            netmux_testbed::wait_until("the target listening", T, || ready.load(Ordering::SeqCst))
                .expect("target up");
            let (client_end, keepalive) = sb
                .ws()
                .block_on(|| async {
                    let mut c = TcpStream::connect(via).await.expect("connect");
                    c.write_all(b"hello").await.expect("write");
                    // While the connection is established: both ends of the
                    // tunnel keep their TCP peers alive (the daemon's
                    // accepted socket, the server's dialled one).
                    let mut ka = (String::new(), String::new());
                    let _ = netmux_testbed::wait_until("keepalive timers", T, || {
                        ka = (
                            keepalive_sockets(&sb, Side::Workstation, 7000),
                            keepalive_sockets(&sb, Side::Cluster, 7000),
                        );
                        !ka.0.is_empty() && !ka.1.is_empty()
                    });
                    c.shutdown().await.expect("half-close");
                    (read_to_end(&mut c, &Seen::default()).await, ka)
                })
                .expect("ws namespace");
            (client_end, t.join().expect("target thread"), keepalive)
        });
        assert_eq!(
            client_end,
            Ending::Reset,
            "the client is reset, not left hanging"
        );
        assert_eq!(target_end, Ending::Reset, "the target is reset too");
        assert!(
            !keepalive.0.is_empty(),
            "the daemon's accepted socket has no keepalive timer"
        );
        assert!(
            !keepalive.1.is_empty(),
            "the server's dialled socket has no keepalive timer"
        );
    });
}
