//! End-to-end test of the eBPF connect redirect (`src/redirect/ebpf.rs` and
//! the `netmux-ebpf` programs) against the real kernel.
//!
//! Each test creates its own network namespace (only `lo` up, so
//! 10.96.0.10 and fd00:96::10 are unreachable there) and its own child
//! cgroup under a private cgroup2 mount, attaches the programs to that child
//! cgroup only, and runs clients as separate processes placed into the
//! namespace (and, for "inside", the cgroup) before exec. Clients are this
//! test binary re-executed in helper mode (`helper_entry`), or the static
//! busybox wget. Everything is torn down by drop guards, also on failure.
//!
//! Needs root and a daemon built with the real eBPF object; otherwise the
//! tests print a loud SKIPPED line and pass. Run with:
//! `cargo test -p netmux-daemon --test ebpf_redirect -- --test-threads=1`

use netmux_daemon::redirect::ebpf;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ebpf::{EbpfError, EbpfRedirect, DEFAULT_EXCLUDE_MARK};

const HELPER_ENV: &str = "NXEBPF_HELPER";
const RESULT_PREFIX: &str = "NXRESULT ";
const ENETUNREACH: i32 = 101;
/// Every program `load` attaches (the sock_addr ones and sock_release).
const ALL_PROGRAMS: usize = ebpf::SOCK_ADDR_PROGRAMS.len() + 1;

fn service4() -> SocketAddr {
    "10.96.0.10:80".parse().unwrap()
}

fn service6() -> SocketAddr {
    "[fd00:96::10]:80".parse().unwrap()
}

fn mapped4() -> SocketAddr {
    "[::ffff:10.96.0.10]:80".parse().unwrap()
}

// ---------------------------------------------------------------- tests --

#[test]
fn redirects_published_services_only_inside_the_cgroup() {
    let Some(fx) =
        Fixture::new("ebpf_redirect::redirects_published_services_only_inside_the_cgroup")
    else {
        return;
    };
    let srv4 = Server::start(&fx.netns, "127.0.0.1:0".parse().unwrap(), "hello-v4");
    let srv6 = Server::start(&fx.netns, "[::1]:0".parse().unwrap(), "hello-v6");

    let mut redirect = EbpfRedirect::load(fx.cgroup.path()).expect("load eBPF redirect");
    assert_eq!(redirect.cgroup(), fx.cgroup.path());
    assert_eq!(redirect.exclude_mark(), DEFAULT_EXCLUDE_MARK);
    assert_attached(fx.cgroup.path(), ALL_PROGRAMS);

    redirect.insert(service4(), srv4.addr).unwrap();
    redirect.insert(service6(), srv6.addr).unwrap();
    assert_eq!(
        redirect.entries().unwrap(),
        vec![(service4(), srv4.addr), (service6(), srv6.addr)]
    );

    // Inside the cgroup: IPv4 reaches the listener, getpeername() shows the
    // service address that was dialled.
    let r = fx.connect(Place::Inside, service4(), 0);
    assert_eq!(
        r,
        Connect::Ok {
            peer: service4(),
            data: http_body("hello-v4")
        }
    );
    assert_eq!(srv4.accepted(), 1);

    // Outside the cgroup (same namespace): untouched, fast ENETUNREACH.
    let started = Instant::now();
    assert_eq!(
        fx.connect(Place::Outside, service4(), 0),
        Connect::Err(ENETUNREACH)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failure was not fast"
    );

    // IPv4-mapped IPv6 destination takes the IPv4 entry.
    let r = fx.connect(Place::Inside, mapped4(), 0);
    assert_eq!(
        r,
        Connect::Ok {
            peer: mapped4(),
            data: http_body("hello-v4")
        }
    );

    // Native IPv6 service.
    let r = fx.connect(Place::Inside, service6(), 0);
    assert_eq!(
        r,
        Connect::Ok {
            peer: service6(),
            data: http_body("hello-v6")
        }
    );
    assert_eq!(srv6.accepted(), 1);

    // Same IP, unpublished port: untouched.
    let other_port: SocketAddr = "10.96.0.10:81".parse().unwrap();
    assert_eq!(
        fx.connect(Place::Inside, other_port, 0),
        Connect::Err(ENETUNREACH)
    );

    // The daemon's own sockets (marked) are left alone; other marks are not.
    assert_eq!(
        fx.connect(Place::Inside, service4(), DEFAULT_EXCLUDE_MARK),
        Connect::Err(ENETUNREACH)
    );
    assert!(matches!(
        fx.connect(Place::Inside, service4(), 7),
        Connect::Ok { .. }
    ));

    // A statically linked client (no libc interposition possible).
    let out = fx.busybox_wget(Place::Inside, "http://10.96.0.10/");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == "hello-v4",
        "busybox wget: {out:?}"
    );

    // remove() stops redirection, insert() while loaded starts it again.
    redirect.remove(service4()).unwrap();
    redirect.remove(service4()).unwrap(); // idempotent
    assert_eq!(redirect.entries().unwrap(), vec![(service6(), srv6.addr)]);
    assert_eq!(
        fx.connect(Place::Inside, service4(), 0),
        Connect::Err(ENETUNREACH)
    );
    redirect.insert(service4(), srv4.addr).unwrap();
    assert!(matches!(
        fx.connect(Place::Inside, service4(), 0),
        Connect::Ok { .. }
    ));

    // An IPv4 service cannot use an IPv6 listener.
    assert!(matches!(
        redirect.insert("10.96.0.11:80".parse().unwrap(), srv6.addr),
        Err(EbpfError::ListenerFamily { .. })
    ));

    // The original destination is kept while the socket is open...
    let mut cmd = helper_command(&format!("connect-and-wait {}", service4()));
    fx.place(&mut cmd, Place::Inside);
    let mut waiter = ChildGuard(cmd.stdout(Stdio::piped()).spawn().unwrap());
    let mut lines = BufReader::new(waiter.0.stdout.take().unwrap()).lines();
    let line = lines.find_map(|l| l.ok()?.strip_prefix(RESULT_PREFIX).map(str::to_owned));
    assert_eq!(line.as_deref(), Some("connected"));
    assert_eq!(redirect.redirected_sockets().unwrap(), 1);
    drop(waiter); // SIGKILL closes the socket

    // ...and forgotten by sock_release once it is closed, as for every
    // client above.
    wait_for("redirected sockets forgotten", || {
        redirect.redirected_sockets().unwrap() == 0
    });

    // Dropping detaches everything.
    drop(redirect);
    assert_attached(fx.cgroup.path(), 0);
    assert_eq!(
        fx.connect(Place::Inside, service4(), 0),
        Connect::Err(ENETUNREACH)
    );
}

#[test]
fn sigkill_of_the_holder_detaches_the_programs() {
    let Some(fx) = Fixture::new("ebpf_redirect::sigkill_of_the_holder_detaches_the_programs")
    else {
        return;
    };
    let srv4 = Server::start(&fx.netns, "127.0.0.1:0".parse().unwrap(), "held");

    // The holder runs in this test's own cgroup and namespace; it only
    // attaches to the child cgroup.
    let args = format!(
        "hold {} {} {}",
        fx.cgroup.path().display(),
        service4(),
        srv4.addr
    );
    let mut holder = ChildGuard(
        helper_command(&args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // libtest prints its own lines first; wait for the helper's.
    let mut lines = BufReader::new(holder.0.stdout.take().unwrap()).lines();
    let ready = lines.find_map(|l| l.ok()?.strip_prefix(RESULT_PREFIX).map(str::to_owned));
    assert_eq!(ready.as_deref(), Some("ready"), "holder failed to load");
    assert_attached(fx.cgroup.path(), ALL_PROGRAMS);
    assert_eq!(
        fx.connect(Place::Inside, service4(), 0),
        Connect::Ok {
            peer: service4(),
            data: http_body("held")
        }
    );

    holder.0.kill().unwrap(); // SIGKILL
    holder.0.wait().unwrap();
    assert_attached(fx.cgroup.path(), 0);
    assert_eq!(
        fx.connect(Place::Inside, service4(), 0),
        Connect::Err(ENETUNREACH)
    );
}

#[test]
fn not_a_cgroup_is_a_named_error() {
    if !netmux_testbed::prereq::require(
        "ebpf_redirect::not_a_cgroup_is_a_named_error",
        skip_reason(),
    ) {
        return;
    }
    let e = EbpfRedirect::load(Path::new("/tmp")).unwrap_err();
    assert!(matches!(e, EbpfError::NotCgroup2 { .. }), "{e}");
    assert!(e.to_string().contains("cgroup v2"), "{e}");
}

/// Entry point of the re-executed helper processes; a no-op in a normal run.
#[test]
fn helper_entry() {
    let Ok(cmd) = std::env::var(HELPER_ENV) else {
        return;
    };
    let words: Vec<&str> = cmd.split_whitespace().collect();
    match words.as_slice() {
        ["connect", addr, mark] => {
            let r = helper_connect(addr.parse().unwrap(), mark.parse().unwrap());
            println!("{RESULT_PREFIX}{}", r.encode());
        }
        ["connect-and-wait", addr] => {
            // Keep the socket open until killed.
            use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType};
            let addr: SocketAddr = addr.parse().unwrap();
            let fd = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::empty(),
                None,
            )
            .unwrap();
            connect(
                fd.as_raw_fd(),
                &nix::sys::socket::SockaddrStorage::from(addr),
            )
            .unwrap();
            println!("{RESULT_PREFIX}connected");
            std::io::stdout().flush().unwrap();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        ["hold", cgroup, service, listener] => {
            // RUST_LOG=netmux_ebpf=debug shows the programs' own logs.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_writer(std::io::stderr)
                .try_init();
            let mut r = EbpfRedirect::load(Path::new(cgroup)).unwrap();
            r.insert(service.parse().unwrap(), listener.parse().unwrap())
                .unwrap();
            println!("{RESULT_PREFIX}ready");
            std::io::stdout().flush().unwrap();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        _ => panic!("bad helper command {cmd:?}"),
    }
    std::io::stdout().flush().unwrap();
    std::process::exit(0);
}

// -------------------------------------------------------------- clients --

#[derive(Debug, PartialEq, Eq)]
enum Connect {
    /// Connected; `peer` from getpeername(), `data` all bytes read.
    Ok { peer: SocketAddr, data: String },
    /// connect() failed with this errno.
    Err(i32),
}

impl Connect {
    fn encode(&self) -> String {
        match self {
            Connect::Ok { peer, data } => format!("ok {peer} {}", data.escape_default()),
            Connect::Err(errno) => format!("err {errno}"),
        }
    }

    fn decode(s: &str) -> Self {
        let mut it = s.splitn(3, ' ');
        match (it.next(), it.next(), it.next()) {
            (Some("ok"), Some(peer), Some(data)) => Connect::Ok {
                peer: peer.parse().unwrap(),
                data: data.replace("\\r", "\r").replace("\\n", "\n"),
            },
            (Some("err"), Some(errno), None) => Connect::Err(errno.parse().unwrap()),
            _ => panic!("bad helper result {s:?}"),
        }
    }
}

/// In the helper process: connect (optionally with `SO_MARK`), report the
/// peer name and everything the server sends.
fn helper_connect(addr: SocketAddr, mark: u32) -> Connect {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    if mark != 0 {
        ebpf::mark_socket(&fd, mark).unwrap();
    }
    if let Err(errno) = connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
        return Connect::Err(errno as i32);
    }
    let mut stream = TcpStream::from(fd);
    let peer = stream.peer_addr().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut data = String::new();
    stream.read_to_string(&mut data).unwrap();
    Connect::Ok { peer, data }
}

/// A command re-running this test binary as a helper.
fn helper_command(args: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "helper_entry",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env(HELPER_ENV, args)
    .stdin(Stdio::null())
    .stderr(Stdio::inherit());
    cmd
}

fn http_body(body: &str) -> String {
    format!(
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

// ------------------------------------------------------------- fixtures --

fn skip_reason() -> Option<String> {
    ebpf_skip_reason()
}

/// A network namespace and a child cgroup, both unique to one test.
struct Fixture {
    // Field order is drop order: the cgroup (kills leftovers) before the
    // mount it lives in, the namespace last.
    cgroup: ChildCgroup,
    netns: NetNs,
}

impl Fixture {
    fn new(test: &str) -> Option<Self> {
        if !netmux_testbed::prereq::require(test, skip_reason()) {
            return None;
        }
        let name = unique_name("nxebpf");
        let netns = NetNs::new(&name);
        let cgroup = ChildCgroup::new(&name).expect("child cgroup");
        Some(Self { cgroup, netns })
    }

    /// Spawns `cmd` in the namespace and, for `Place::Inside`, the cgroup.
    fn place(&self, cmd: &mut Command, place: Place) {
        support::place(cmd, &self.netns, &self.cgroup, place);
    }

    fn connect(&self, place: Place, addr: SocketAddr, mark: u32) -> Connect {
        let mut cmd = helper_command(&format!("connect {addr} {mark}"));
        self.place(&mut cmd, place);
        let out = run_with_timeout(cmd);
        assert!(out.status.success(), "helper failed: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(RESULT_PREFIX))
            .unwrap_or_else(|| panic!("no result from helper: {out:?}"));
        Connect::decode(line)
    }

    fn busybox_wget(&self, place: Place, url: &str) -> Output {
        let mut cmd = Command::new("/bin/busybox");
        // Debian's busybox-static 1.35 wget segfaults here with `-T` and
        // with some large environments; the test's own timeout applies.
        cmd.args(["wget", "-q", "-O", "-", url])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null());
        self.place(&mut cmd, place);
        run_with_timeout(cmd)
    }
}

mod support;
use netmux_testbed::cgroup::ChildCgroup;
use support::*;

// --------------------------------------------------------------- server --

/// A TCP listener inside the test namespace that answers every connection
/// with a fixed HTTP response, then reads until the client closes.
struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(netns: &NetNs, bind: SocketAddr, body: &str) -> Self {
        let listener = in_netns(netns, || {
            TcpListener::bind(bind).expect("bind in namespace")
        });
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let response = http_body(body);
        let thread = {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            serve(s, response.as_bytes());
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
            })
        };
        Server {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn serve(mut s: TcpStream, response: &[u8]) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(response);
    let _ = s.shutdown(Shutdown::Write);
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
