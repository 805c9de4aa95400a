//! End-to-end test of the eBPF UDP redirect (`EbpfRedirect::insert_udp` and
//! the `sendmsg4/6`, `recvmsg4/6`, `connect4/6`, `getpeername4/6` programs)
//! against the real kernel.
//!
//! As in `ebpf_redirect.rs`: each test has its own network namespace (only
//! `lo` up, so 10.96.0.53 and fd00:96::53 are unroutable there, and a
//! datagram that is not redirected fails at once with ENETUNREACH) and its
//! own child cgroup under a private cgroup2 mount; the programs are attached
//! to that child only. Clients are `python3` processes moved into the
//! namespace and the cgroup before exec; they print one JSON result line.
//! The UDP echo servers are sockets created inside the namespace and served
//! from threads of the test. Everything is torn down by drop guards.
//!
//! Needs root, python3 and a daemon built with the real eBPF object;
//! otherwise the tests print a loud SKIPPED line and pass. Run with:
//! `cargo test -p netmux-daemon --test ebpf_udp -- --test-threads=1`

use netmux_daemon::redirect::ebpf;

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use ebpf::{EbpfError, EbpfRedirect, Proto, DEFAULT_EXCLUDE_MARK};

const RESULT_PREFIX: &str = "NXRESULT ";
const ENETUNREACH: i64 = 101;

fn dns4() -> SocketAddr {
    "10.96.0.53:53".parse().unwrap()
}

fn dns6() -> SocketAddr {
    "[fd00:96::53]:53".parse().unwrap()
}

fn mapped4() -> SocketAddr {
    "[::ffff:10.96.0.53]:53".parse().unwrap()
}

// ---------------------------------------------------------------- tests --

#[test]
fn udp_redirect_unconnected_connected_and_mapped() {
    let Some(fx) = Fixture::new("ebpf_udp::udp_redirect_unconnected_connected_and_mapped") else {
        return;
    };
    let echo4 = Echo::start(&fx.netns, "127.0.0.1:0".parse().unwrap());
    let echo6 = Echo::start(&fx.netns, "[::1]:0".parse().unwrap());

    let mut redirect = EbpfRedirect::load(fx.cgroup.path()).expect("load eBPF redirect");
    assert_attached(fx.cgroup.path(), ebpf::SOCK_ADDR_PROGRAMS.len() + 1);
    redirect.insert_udp(dns4(), echo4.addr).unwrap();
    redirect.insert_udp(dns6(), echo6.addr).unwrap();
    assert_eq!(
        redirect.entries_with_proto().unwrap(),
        vec![
            (Proto::Udp, dns4(), echo4.addr),
            (Proto::Udp, dns6(), echo6.addr)
        ]
    );
    assert_eq!(redirect.entries().unwrap(), vec![], "TCP-only listing");
    assert_eq!(
        redirect.udp_reply_sources().unwrap(),
        vec![(echo4.addr, dns4()), (echo6.addr, dns6())]
    );

    // (a) Unconnected sendto: the echo answers and recvfrom reports the
    // service address as the source, for every datagram.
    let r = fx.udp(Place::Inside, Mode::Unconnected, dns4(), 0);
    r.assert_echo(dns4(), None);
    assert_eq!(echo4.received(), 3);
    // The echo saw the client on loopback, not some translated address.
    assert!(echo4.peers().iter().all(|p| p.ip().is_loopback()));

    // (b) Connected: send/recv work, getpeername is the service.
    let r = fx.udp(Place::Inside, Mode::Connected, dns4(), 0);
    r.assert_echo(dns4(), Some(dns4()));
    assert_eq!(echo4.received(), 6);

    // (c) v4-mapped destination on an AF_INET6 socket, both ways: the
    // source comes back v4-mapped, as the socket would see it anyway.
    fx.udp(Place::Inside, Mode::Unconnected, mapped4(), 0)
        .assert_echo(mapped4(), None);
    fx.udp(Place::Inside, Mode::Connected, mapped4(), 0)
        .assert_echo(mapped4(), Some(mapped4()));
    assert_eq!(echo4.received(), 12);

    // Native IPv6 service on an IPv6 listener.
    fx.udp(Place::Inside, Mode::Unconnected, dns6(), 0)
        .assert_echo(dns6(), None);
    fx.udp(Place::Inside, Mode::Connected, dns6(), 0)
        .assert_echo(dns6(), Some(dns6()));
    assert_eq!(echo6.received(), 6);

    // Connected UDP sockets were remembered for getpeername and are
    // forgotten once closed.
    wait_for("redirected sockets forgotten", || {
        redirect.redirected_sockets().unwrap() == 0
    });

    // Talking to the listener directly: its replies are shown from the
    // service too (the listener address is the daemon's, never an
    // application's destination).
    fx.udp(Place::Inside, Mode::Unconnected, echo4.addr, 0)
        .assert_echo(dns4(), None);

    // (d) Same IP, unpublished port: not redirected, unroutable here.
    let other: SocketAddr = "10.96.0.53:54".parse().unwrap();
    assert_eq!(
        fx.udp(Place::Inside, Mode::Unconnected, other, 0),
        Reply::Err(ENETUNREACH)
    );
    assert_eq!(
        fx.udp(Place::Inside, Mode::Connected, other, 0),
        Reply::Err(ENETUNREACH)
    );

    // Outside the cgroup and with the daemon's mark: untouched.
    assert_eq!(
        fx.udp(Place::Outside, Mode::Unconnected, dns4(), 0),
        Reply::Err(ENETUNREACH)
    );
    assert_eq!(
        fx.udp(
            Place::Inside,
            Mode::Unconnected,
            dns4(),
            DEFAULT_EXCLUDE_MARK
        ),
        Reply::Err(ENETUNREACH)
    );
    assert_eq!(
        fx.udp(Place::Inside, Mode::Connected, dns4(), DEFAULT_EXCLUDE_MARK),
        Reply::Err(ENETUNREACH)
    );
    // A marked socket talking to the listener sees the listener's address.
    assert_eq!(
        fx.udp(
            Place::Inside,
            Mode::Unconnected,
            echo4.addr,
            DEFAULT_EXCLUDE_MARK
        ),
        Reply::Echo {
            src: echo4.addr,
            peer: None,
            data: echo_data()
        }
    );

    // (f) remove_udp: no redirect, no translation; idempotent.
    redirect.remove_udp(dns4()).unwrap();
    redirect.remove_udp(dns4()).unwrap();
    assert_eq!(
        redirect.entries_with_proto().unwrap(),
        vec![(Proto::Udp, dns6(), echo6.addr)]
    );
    assert_eq!(
        redirect.udp_reply_sources().unwrap(),
        vec![(echo6.addr, dns6())]
    );
    assert_eq!(
        fx.udp(Place::Inside, Mode::Unconnected, dns4(), 0),
        Reply::Err(ENETUNREACH)
    );
    assert_eq!(
        fx.udp(Place::Inside, Mode::Connected, mapped4(), 0),
        Reply::Err(ENETUNREACH)
    );
    fx.udp(Place::Inside, Mode::Unconnected, echo4.addr, 0)
        .assert_echo(echo4.addr, None);
    redirect.insert_udp(dns4(), echo4.addr).unwrap();
    fx.udp(Place::Inside, Mode::Unconnected, dns4(), 0)
        .assert_echo(dns4(), None);

    // (g) Dropping detaches all nine programs.
    drop(redirect);
    assert_attached(fx.cgroup.path(), 0);
    assert_eq!(
        fx.udp(Place::Inside, Mode::Unconnected, dns4(), 0),
        Reply::Err(ENETUNREACH)
    );
    fx.udp(Place::Inside, Mode::Unconnected, echo4.addr, 0)
        .assert_echo(echo4.addr, None);
}

#[test]
fn tcp_and_udp_entries_are_distinct() {
    let Some(fx) = Fixture::new("ebpf_udp::tcp_and_udp_entries_are_distinct") else {
        return;
    };
    let echo = Echo::start(&fx.netns, "127.0.0.1:0".parse().unwrap());
    // A TCP listener on the same port number as the UDP echo: if the wrong
    // entry were used, the traffic would find a socket.
    let tcp = fx.tcp_listener(echo.addr);

    let mut redirect = EbpfRedirect::load(fx.cgroup.path()).expect("load eBPF redirect");

    // (e) A TCP entry does not redirect UDP...
    redirect.insert(dns4(), tcp).unwrap();
    assert_eq!(
        fx.udp(Place::Inside, Mode::Unconnected, dns4(), 0),
        Reply::Err(ENETUNREACH)
    );
    assert_eq!(
        fx.udp(Place::Inside, Mode::Connected, dns4(), 0),
        Reply::Err(ENETUNREACH)
    );
    assert_eq!(fx.tcp(dns4()), Reply::Connected);
    assert_eq!(
        redirect.udp_reply_sources().unwrap(),
        vec![],
        "TCP entries have no reverse entry"
    );

    // ...and a UDP entry does not redirect TCP.
    redirect.remove(dns4()).unwrap();
    redirect.insert_udp(dns4(), echo.addr).unwrap();
    assert_eq!(fx.tcp(dns4()), Reply::Err(ENETUNREACH));
    fx.udp(Place::Inside, Mode::Unconnected, dns4(), 0)
        .assert_echo(dns4(), None);

    // Both at once, each to its own listener; removing one keeps the other.
    redirect.insert(dns4(), tcp).unwrap();
    assert_eq!(
        redirect.entries_with_proto().unwrap(),
        vec![(Proto::Tcp, dns4(), tcp), (Proto::Udp, dns4(), echo.addr)]
    );
    assert_eq!(redirect.entries().unwrap(), vec![(dns4(), tcp)]);
    redirect.remove(dns4()).unwrap();
    fx.udp(Place::Inside, Mode::Connected, dns4(), 0)
        .assert_echo(dns4(), Some(dns4()));
    redirect.insert(dns4(), tcp).unwrap();
    redirect.remove_udp(dns4()).unwrap();
    assert_eq!(fx.tcp(dns4()), Reply::Connected);
    assert_eq!(
        fx.udp(Place::Inside, Mode::Unconnected, dns4(), 0),
        Reply::Err(ENETUNREACH)
    );
}

#[test]
fn udp_listener_rules() {
    let Some(fx) = Fixture::new("ebpf_udp::udp_listener_rules") else {
        return;
    };
    let a = Echo::start(&fx.netns, "127.0.0.1:0".parse().unwrap());
    let b = Echo::start(&fx.netns, "127.0.0.1:0".parse().unwrap());
    let mut redirect = EbpfRedirect::load(fx.cgroup.path()).expect("load eBPF redirect");

    // Family mismatches are refused both ways for UDP.
    let v6_listener: SocketAddr = "[::1]:5353".parse().unwrap();
    assert!(matches!(
        redirect.insert_udp(dns4(), v6_listener),
        Err(EbpfError::ListenerFamily { .. })
    ));
    assert!(matches!(
        redirect.insert_udp(dns6(), a.addr),
        Err(EbpfError::ListenerFamily { .. })
    ));

    // One listener stands for one UDP service.
    let other: SocketAddr = "10.96.0.54:53".parse().unwrap();
    redirect.insert_udp(dns4(), a.addr).unwrap();
    let e = redirect.insert_udp(other, a.addr).unwrap_err();
    assert!(matches!(e, EbpfError::ListenerShared { .. }), "{e}");
    assert!(e.to_string().contains("10.96.0.53:53"), "{e}");
    // Re-inserting the same pair is a no-op.
    redirect.insert_udp(dns4(), a.addr).unwrap();

    // Moving the service to another listener drops the old reverse entry,
    // after which the old listener is free for another service.
    redirect.insert_udp(dns4(), b.addr).unwrap();
    assert_eq!(
        redirect.udp_reply_sources().unwrap(),
        vec![(b.addr, dns4())]
    );
    fx.udp(Place::Inside, Mode::Unconnected, dns4(), 0)
        .assert_echo(dns4(), None);
    assert_eq!((a.received(), b.received()), (0, 3));
    redirect.insert_udp(other, a.addr).unwrap();
    fx.udp(Place::Inside, Mode::Unconnected, other, 0)
        .assert_echo(other, None);
    // Sorted by listener, whose ports are random.
    let mut expected = vec![(a.addr, other), (b.addr, dns4())];
    expected.sort();
    assert_eq!(redirect.udp_reply_sources().unwrap(), expected);
}

// -------------------------------------------------------------- clients --

/// What a client saw.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// Every datagram was echoed; `src` is the source recvfrom reported for
    /// all of them, `peer` getpeername() of a connected socket.
    Echo {
        src: SocketAddr,
        peer: Option<SocketAddr>,
        data: Vec<String>,
    },
    /// A TCP connect succeeded.
    Connected,
    /// A syscall failed with this errno.
    Err(i64),
    /// No reply within the client's timeout.
    Timeout,
}

impl Reply {
    #[track_caller]
    fn assert_echo(&self, src: SocketAddr, peer: Option<SocketAddr>) {
        assert_eq!(
            *self,
            Reply::Echo {
                src,
                peer,
                data: echo_data()
            }
        );
    }
}

fn echo_data() -> Vec<String> {
    (0..3).map(|i| format!("echo:ping{i}")).collect()
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Unconnected,
    Connected,
}

/// The client: sends three datagrams (`sendto`, or `connect` + `send`) and
/// reads a reply to each with `recvfrom`; or makes one TCP connect. Prints
/// one JSON line.
const CLIENT_PY: &str = r#"
import json, socket, sys
mode, host, port, mark = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
def fmt(a):
    return f"[{a[0]}]:{a[1]}" if fam == socket.AF_INET6 else f"{a[0]}:{a[1]}"
res = {}
try:
    s = socket.socket(fam, socket.SOCK_STREAM if mode == "tcp" else socket.SOCK_DGRAM)
    if mark:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    s.settimeout(2.0)
    if mode == "tcp":
        s.connect((host, port))
        res = {"connected": True}
    else:
        if mode == "connected":
            s.connect((host, port))
            res["peer"] = fmt(s.getpeername())
        srcs, data = set(), []
        for i in range(3):
            msg = f"ping{i}".encode()
            if mode == "connected":
                s.send(msg)
            else:
                s.sendto(msg, (host, port))
            d, src = s.recvfrom(2048)
            data.append(d.decode())
            srcs.add(fmt(src))
        res["data"] = data
        res["srcs"] = sorted(srcs)
except socket.timeout:
    res = {"timeout": True}
except OSError as e:
    res = {"errno": e.errno}
print("NXRESULT " + json.dumps(res), flush=True)
"#;

fn decode(line: &str) -> Reply {
    let v: serde_json::Value = serde_json::from_str(line).expect("client JSON");
    if let Some(e) = v["errno"].as_i64() {
        return Reply::Err(e);
    }
    if v["timeout"].as_bool() == Some(true) {
        return Reply::Timeout;
    }
    if v["connected"].as_bool() == Some(true) {
        return Reply::Connected;
    }
    let srcs: Vec<&str> = v["srcs"]
        .as_array()
        .expect("srcs")
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(srcs.len(), 1, "replies from several sources: {srcs:?}");
    Reply::Echo {
        src: srcs[0].parse().unwrap(),
        peer: v["peer"].as_str().map(|p| p.parse().unwrap()),
        data: v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|d| d.as_str().unwrap().to_owned())
            .collect(),
    }
}

// ------------------------------------------------------------- fixtures --

fn skip_reason() -> Option<String> {
    if let Some(why) = ebpf_skip_reason() {
        Some(why)
    } else if python3().is_none() {
        Some("python3 not found".into())
    } else {
        None
    }
}

/// The real python3 binary (pyenv shims are scripts that need the
/// environment; resolve once, outside the namespace).
fn python3() -> Option<PathBuf> {
    static PY: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()?;
        let path = String::from_utf8(out.stdout).ok()?;
        out.status
            .success()
            .then(|| PathBuf::from(path.trim()))
            .filter(|p| p.is_file())
    })
    .clone()
}

/// A network namespace and a child cgroup, both unique to one test.
struct Fixture {
    // Field order is drop order: the cgroup (kills leftovers) before the
    // mount it lives in, the namespace last.
    cgroup: ChildCgroup,
    tcp_listeners: Mutex<Vec<TcpListener>>,
    netns: NetNs,
}

impl Fixture {
    fn new(test: &str) -> Option<Self> {
        if !netmux_testbed::prereq::require(test, skip_reason()) {
            return None;
        }
        let name = unique_name("nxudp");
        let netns = NetNs::new(&name);
        let cgroup = ChildCgroup::new(&name).expect("child cgroup");
        Some(Self {
            cgroup,
            tcp_listeners: Mutex::new(Vec::new()),
            netns,
        })
    }

    /// Runs the UDP client in `place` against `addr`.
    fn udp(&self, place: Place, mode: Mode, addr: SocketAddr, mark: u32) -> Reply {
        let mode = match mode {
            Mode::Unconnected => "unconnected",
            Mode::Connected => "connected",
        };
        self.client(place, mode, addr, mark)
    }

    /// A TCP connect from inside the cgroup.
    fn tcp(&self, addr: SocketAddr) -> Reply {
        self.client(Place::Inside, "tcp", addr, 0)
    }

    fn client(&self, place: Place, mode: &str, addr: SocketAddr, mark: u32) -> Reply {
        let mut cmd = Command::new(python3().unwrap());
        cmd.args(["-c", CLIENT_PY, mode])
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .arg(mark.to_string())
            .stdin(Stdio::null());
        self.place(&mut cmd, place);
        let out = run_with_timeout(cmd);
        assert!(out.status.success(), "client failed: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(RESULT_PREFIX))
            .unwrap_or_else(|| panic!("no result from client: {out:?}"));
        decode(line)
    }

    /// A TCP listener in the namespace on `addr` (kept open for the test;
    /// connections are left in the backlog).
    fn tcp_listener(&self, addr: SocketAddr) -> SocketAddr {
        let listener = in_netns(&self.netns, || TcpListener::bind(addr).expect("bind TCP"));
        let local = listener.local_addr().unwrap();
        self.tcp_listeners.lock().unwrap().push(listener);
        local
    }

    /// Spawns `cmd` in the namespace and, for `Place::Inside`, the cgroup.
    fn place(&self, cmd: &mut Command, place: Place) {
        support::place(cmd, &self.netns, &self.cgroup, place);
    }
}

mod support;
use netmux_testbed::cgroup::ChildCgroup;
use support::*;

// ----------------------------------------------------------------- echo --

/// A UDP socket inside the test namespace that answers every datagram
/// with `echo:` + its payload, from its own address.
struct Echo {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(netns: &NetNs, bind: SocketAddr) -> Self {
        let socket = in_netns(netns, || {
            UdpSocket::bind(bind).expect("bind UDP in namespace")
        });
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peers, stop) = (peers.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    match socket.recv_from(&mut buf) {
                        Ok((n, peer)) => {
                            peers.lock().unwrap().push(peer);
                            let mut reply = b"echo:".to_vec();
                            reply.extend_from_slice(&buf[..n]);
                            let _ = socket.send_to(&reply, peer);
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) => panic!("echo recv: {e}"),
                    }
                }
            })
        };
        Echo {
            addr,
            peers,
            stop,
            thread: Some(thread),
        }
    }

    fn received(&self) -> usize {
        self.peers.lock().unwrap().len()
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
