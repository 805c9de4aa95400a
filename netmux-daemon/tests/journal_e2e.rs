//! netmuxd's logs in a real journald, end to end.
//!
//! `systemd-journald` runs standalone (not a child of systemd) in a private
//! mount namespace: a tmpfs over `/run` (its sockets in
//! `/run/systemd/journal`, its volatile journal in `/run/log/journal`, its
//! settings in a `/run/systemd/journald.conf.d` drop-in) and one over
//! `/var/log/journal`, so the host's directories, journal and kernel log
//! are neither read nor written; without CAP_AUDIT_* in its bounding set it
//! cannot join the audit multicast group, so it never switches kernel
//! auditing on. It dies, with its mounts, when the test ends (also on
//! failure: [`Journald`] kills it on drop).
//!
//! netmuxd runs in the testbed's workstation network namespace and in
//! journald's mount namespace (`nsenter`), its stdout and stderr connected
//! to journald's stream socket the way systemd connects a service's (the
//! stream header, then `JOURNAL_STREAM=dev:ino` of that socket), against a
//! real `netmux-server` with an HTTP backend. A curl through a started
//! service and a connect with a wrong token produce entries with
//! `ENDPOINT=`, `SERVICE=` and `CONN=`; `journalctl -o json` must show
//! them as fields of native entries of `SYSLOG_IDENTIFIER=netmuxd`, and
//! `netmux logs` (text and JSON, `--endpoint`, `--service`, `-n`) must show
//! exactly the matching ones. The daemon has no systemd unit here (no
//! `_SYSTEMD_UNIT`): `journalctl -u netmuxd.service` finds none of its
//! entries, `netmux logs` finds them by identifier. A stream opened with
//! unit id `netmuxd.service` (what systemd sends for the unit's processes)
//! checks that unit entries are still shown. The rest of what systemd
//! sees of the unit is checked on the way: sd_notify `READY=1` once the
//! control socket accepts, `RELOADING=1` (with `MONOTONIC_USEC`) then
//! `READY=1` on SIGHUP, `STOPPING=1` and a clean exit on SIGTERM, each
//! logged.
//!
//! Needs root, the built binaries (`cargo build --workspace`),
//! `/lib/systemd/systemd-journald`, journalctl, unshare, nsenter, setpriv,
//! curl; skipped with a loud line otherwise.
//!
//! Run: `cargo test -p netmux-daemon --test journal_e2e`

use std::collections::BTreeSet;
use std::io::Read as _;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use netmux_testbed::netmux::{Layout, ServiceSpec, ENDPOINT, LOOPBACK, TOKEN};
use netmux_testbed::{bin, wait_until, Process, Sandbox, Side};

mod support;
use serde_json::{Map, Value};

/// Bound on every wait and command.
const T: Duration = Duration::from_secs(20);
/// The second endpoint: same server, refused token.
const OTHER: &str = "other";

type Entry = Map<String, Value>;

const JOURNALD_CANDIDATES: &[&str] = &[
    "/lib/systemd/systemd-journald",
    "/usr/lib/systemd/systemd-journald",
];

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (mount and network namespaces)".into());
    }
    if !JOURNALD_CANDIDATES.iter().any(|p| Path::new(p).is_file()) {
        return Some("systemd-journald not installed (apt-get install systemd)".into());
    }
    support::missing_tools(
        &["journalctl", "unshare", "nsenter", "setpriv", "curl"],
        &["netmuxd", "netmux", "netmux-server", "nx-echo"],
    )
}

/// What a command printed, and how it ended; killed after `timeout`.
struct Captured {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn capture(mut cmd: Command, timeout: Duration) -> Captured {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = ChildGuard(Some(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}")),
    ));
    let c = child.0.as_mut().expect("just spawned");
    // Read both pipes while it runs: journalctl's JSON can exceed a pipe.
    let reader = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(c.stdout.take().map(|s| Box::new(s) as _));
    let err = reader(c.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = c.try_wait().expect("try_wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "timed out: {cmd:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    Captured {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// SIGTERMs the child's process group, SIGKILLs it after a grace period,
/// and reaps the child, on drop.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn pid(&self) -> i32 {
        self.0
            .as_ref()
            .and_then(|c| i32::try_from(c.id()).ok())
            .expect("running child")
    }

    fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        let group = i32::try_from(child.id())
            .ok()
            .map(nix::unistd::Pid::from_raw);
        if let Some(g) = group {
            let _ = nix::sys::signal::killpg(g, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(g) = group {
            let _ = nix::sys::signal::killpg(g, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// systemd-journald alone in a private mount namespace.
struct Journald {
    child: ChildGuard,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Its settings: keep everything in memory, read nothing from and forward
/// nothing to the kernel log, syslog, console or terminals.
const JOURNALD_CONF: &str = "[Journal]\nStorage=volatile\nReadKMsg=no\nForwardToSyslog=no\n\
                             ForwardToKMsg=no\nForwardToConsole=no\nForwardToWall=no\n";

impl Journald {
    fn start() -> Journald {
        let journald = JOURNALD_CANDIDATES
            .iter()
            .find(|p| Path::new(p).is_file())
            .expect("checked by missing_prerequisite");
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("journald.log");
        let log_file = std::fs::File::create(&log).expect("journald log");
        // In the new mount namespace (mounts private: nothing propagates to
        // the host), then exec journald with the same pid.
        let script = format!(
            "set -e\n\
             mount -t tmpfs -o mode=0755 netmux-test-run /run\n\
             if [ -d /var/log/journal ]; then\n\
               mount -t tmpfs -o mode=2755 netmux-test-journal /var/log/journal\n\
             fi\n\
             mkdir -p /run/systemd/journal /run/systemd/journald.conf.d\n\
             printf '%s' '{JOURNALD_CONF}' > /run/systemd/journald.conf.d/netmux-test.conf\n\
             exec setpriv --bounding-set -audit_control,-audit_read,-audit_write -- \"$0\"\n"
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(script)
            .arg(journald)
            // Its own messages to stderr (our log file), not to /dev/kmsg.
            .env("SYSTEMD_LOG_TARGET", "console")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup"))
            .stderr(log_file)
            .process_group(0);
        let child = ChildGuard(Some(cmd.spawn().expect("starting unshare")));
        let mut j = Journald {
            child,
            log,
            _dir: dir,
        };
        let socket = j.root().join("run/systemd/journal/socket");
        let stdout = j.stdout_socket();
        let up = wait_until("journald's sockets", T, || {
            socket.exists() && stdout.exists()
        });
        if let Err(e) = up {
            let exited = j.child.0.as_mut().and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "systemd-journald did not start ({e}; exit status {exited:?}):\n{}",
                j.log()
            );
        }
        j
    }

    fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// Its root, seen from the host's mount namespace.
    fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid()))
    }

    /// Its stdout stream socket, reachable from the host's mount namespace.
    fn stdout_socket(&self) -> PathBuf {
        self.root().join("run/systemd/journal/stdout")
    }

    /// What journald wrote about itself.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `program` run in journald's mount namespace.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{}/ns/mnt", self.pid()))
            .arg("--")
            .arg(program);
        c
    }

    /// `journalctl -o json MATCHES...` in journald's namespace.
    fn entries(&self, matches: &[&str]) -> Vec<Entry> {
        let mut c = self.command("journalctl");
        c.args(["--output", "json", "--no-pager", "--quiet"])
            .args(matches);
        let out = capture(c, T);
        assert!(
            out.status.success(),
            "journalctl {matches:?}: {}\n{}",
            out.status,
            out.stderr
        );
        out.stdout
            .lines()
            .map(|l| match serde_json::from_str(l) {
                Ok(Value::Object(m)) => m,
                _ => panic!("journalctl printed a line that is not a JSON object: {l}"),
            })
            .collect()
    }

    /// `netmux ARGS` (the CLI's `logs`) in journald's namespace.
    fn netmux_logs(&self, args: &[&str]) -> Vec<String> {
        let mut c = self.command(bin("netmux").expect("netmux"));
        c.arg("logs")
            .args(args)
            .env_remove("NETMUX_JOURNALCTL")
            .env_remove("NETMUX_CONFIG")
            .env_remove("NETMUX_SOCKET");
        let out = capture(c, T);
        assert!(
            out.status.success(),
            "netmux logs {args:?}: {}\n{}{}",
            out.status,
            out.stdout,
            out.stderr
        );
        out.stdout.lines().map(str::to_owned).collect()
    }
}

/// A stream connection to journald's stdout socket, for a child's stdout
/// and stderr, made as systemd makes one for a service (src/core/execute.c
/// `connect_logger_as`): the socket is created here so that its device and
/// inode can go into `JOURNAL_STREAM`; the child connects it (journald
/// takes the peer's pid from the connection), writes the header and puts it
/// on fds 1 and 2 before exec.
struct JournalStream {
    fd: OwnedFd,
}

impl JournalStream {
    fn new() -> JournalStream {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: raw is a fresh fd nobody else owns.
        JournalStream {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        }
    }

    /// `dev:ino` of the socket, as systemd puts it in `JOURNAL_STREAM`.
    fn journal_stream(&self) -> String {
        let meta = std::fs::metadata(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
            .expect("fstat socket");
        format!("{}:{}", meta.dev(), meta.ino())
    }

    /// Makes `cmd`'s stdout and stderr this stream to journald's `socket`,
    /// with `identifier` and `unit` (empty: none) in the header and
    /// `JOURNAL_STREAM` set. The fd stays open until `self` is dropped.
    fn attach(&self, cmd: &mut Command, socket: &Path, identifier: &str, unit: &str) {
        // syslog identifier, unit id, priority (info), level prefix,
        // forward to syslog, kmsg, console.
        let header = format!("{identifier}\n{unit}\n6\n1\n0\n0\n0\n").into_bytes();
        // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = socket.as_os_str().as_encoded_bytes();
        assert!(path.len() < addr.sun_path.len(), "socket path too long");
        for (d, s) in addr.sun_path.iter_mut().zip(path) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        let fd = self.fd.as_raw_fd();
        cmd.env("JOURNAL_STREAM", self.journal_stream());
        // SAFETY: the closure only makes async-signal-safe system calls on
        // data prepared before fork.
        unsafe {
            cmd.pre_exec(move || {
                let a = std::ptr::addr_of!(addr).cast::<libc::sockaddr>();
                if libc::connect(fd, a, len) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut rest = &header[..];
                while !rest.is_empty() {
                    let n = libc::write(fd, rest.as_ptr().cast(), rest.len());
                    if n <= 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    rest = &rest[n.unsigned_abs()..];
                }
                libc::shutdown(fd, libc::SHUT_RD);
                if libc::dup2(fd, 1) < 0 || libc::dup2(fd, 2) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// A `NOTIFY_SOCKET` (sd_notify(3)): a datagram socket in a temp dir.
struct Notify {
    socket: std::os::unix::net::UnixDatagram,
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Notify {
    fn bind() -> Notify {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(T))
            .expect("notify socket timeout");
        Notify {
            socket,
            _dir: dir,
            path,
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Waits (bounded) for the next message and checks it.
    fn expect(&self, ok: impl Fn(&str) -> bool, what: &str) {
        let mut buf = [0u8; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no sd_notify message ({e}); expected {what}"));
        let msg = String::from_utf8_lossy(&buf[..n]);
        assert!(ok(&msg), "sd_notify sent {msg:?}; expected {what}");
    }
}

/// What this test could leave behind on the host: the journal directories
/// (`ls -laR`) and journald's socket directory.
fn host_journal_dirs() -> String {
    let out = Command::new("ls")
        .args(["-laR", "--time-style=full-iso"])
        .args(
            ["/run/log", "/var/log/journal"]
                .iter()
                .filter(|p| Path::new(p).exists()),
        )
        .output()
        .expect("ls");
    format!(
        "{}/run/systemd/journal exists: {}\n",
        String::from_utf8_lossy(&out.stdout),
        Path::new("/run/systemd/journal").exists()
    )
}

fn str_field<'a>(e: &'a Entry, k: &str) -> Option<&'a str> {
    e.get(k).and_then(Value::as_str)
}

fn find<'a>(entries: &'a [Entry], message: &str, fields: &[(&str, &str)]) -> Option<&'a Entry> {
    entries.iter().find(|e| {
        str_field(e, "MESSAGE") == Some(message)
            && fields.iter().all(|(k, v)| str_field(e, k) == Some(*v))
    })
}

fn dump(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| Value::Object(e.clone()).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// netmux-server with `web` (and its HTTP backend) in the cluster
/// namespace; configs for a daemon with endpoints `demo` and `other`.
struct Cluster {
    layout: Layout,
    web: ServiceSpec,
    _server: Process,
    _backend: Process,
}

fn start_cluster(sb: &Sandbox) -> Cluster {
    let layout = Layout::new(sb);
    let web = ServiceSpec::l2c("web", "10.96.0.30".parse().expect("ip"), 80, 8080);
    sb.add_service_address(web.address)
        .expect("service address");
    std::fs::write(
        &layout.services_file,
        netmux_testbed::netmux::services_toml(std::slice::from_ref(&web)),
    )
    .expect("services file");
    std::fs::write(&layout.server_config, layout.server_toml()).expect("server config");
    let extra = format!("{LOOPBACK}dns = {{ method = \"hosts\" }}\n");
    let mut daemon = layout.daemon_toml(&sb.ws_hosts_file(), TOKEN, &extra);
    daemon.push_str(&format!(
        "\n[[endpoint]]\nname = \"{OTHER}\"\nserver = \"{}\"\nserver_name = \"netmux-server\"\n\
         ca_file = {:?}\ntoken = \"not-the-token-of-this-server\"\n\
         cluster_domain = \"other.local\"\nautostart = false\n",
        layout.quic,
        layout.ca_file().display().to_string(),
    ));
    std::fs::write(&layout.daemon_config, daemon).expect("daemon config");
    let server = netmux_testbed::netmux::start_server(sb, &layout).expect("netmux-server");
    let backend = sb
        .nx_echo(Side::Cluster, "echo-web", "http", web.target(), T)
        .expect("backend up");
    Cluster {
        layout,
        web,
        _server: server,
        _backend: backend,
    }
}

fn cli(sb: &Sandbox, layout: &Layout, args: &[&str]) -> netmux_testbed::Output {
    sb.process(
        Side::Workstation,
        "netmux-cli",
        bin("netmux").expect("netmux"),
    )
    .arg("--socket")
    .arg(&layout.socket)
    .args(args)
    .run(T)
    .unwrap_or_else(|e| panic!("netmux {args:?}: {e}"))
}

#[test]
fn structured_fields_reach_journald_and_netmux_logs_shows_them() {
    if !netmux_testbed::prereq::require(
        "journal_e2e::structured_fields_reach_journald_and_netmux_logs_shows_them",
        missing_prerequisite(),
    ) {
        return;
    }
    let host_before = host_journal_dirs();
    {
        let journal = Journald::start();
        let sb = Sandbox::new().expect("sandbox");
        let cluster = start_cluster(&sb);
        let layout = &cluster.layout;

        // netmuxd in the workstation's network namespace and journald's
        // mount namespace (for /run/systemd/journal/socket), stdout and
        // stderr on the journal stream; no unit. Its sd_notify messages
        // (Type=notify) come here.
        let notify = Notify::bind();
        let stream = JournalStream::new();
        let mut daemon_cmd = Command::new("nsenter");
        daemon_cmd
            .arg(format!("--mount=/proc/{}/ns/mnt", journal.pid()))
            .arg(format!("--net=/run/netns/{}", sb.ws().name()))
            .arg("--")
            .arg(bin("netmuxd").expect("netmuxd"))
            .arg("--config")
            .arg(&layout.daemon_config)
            .env("RUST_LOG", "info,netmux_daemon::listeners=debug")
            .env("NOTIFY_SOCKET", notify.path())
            .stdin(Stdio::null())
            .process_group(0);
        stream.attach(&mut daemon_cmd, &journal.stdout_socket(), "netmuxd", "");
        let mut daemon = ChildGuard(Some(daemon_cmd.spawn().expect("starting netmuxd")));
        let daemon_pid = daemon.pid().to_string();
        drop(stream);
        if let Err(e) = wait_until("netmuxd's socket", T, || layout.socket.exists()) {
            let exited = daemon.0.as_mut().and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "netmuxd did not start ({e}; exit status {exited:?}); its journal:\n{}\njournald:\n{}",
                dump(&journal.entries(&[])),
                journal.log()
            );
        }
        notify.expect(
            |m| m == "READY=1",
            "READY=1 once the control socket accepts",
        );

        // Traffic: connect, start web, one HTTP request through it; a
        // connect that the server refuses.
        let out = cli(&sb, layout, &["connect", ENDPOINT]);
        assert!(out.success(), "connect: {}{}", out.stdout, out.stderr);
        let mut last = String::new();
        wait_until("the catalog", T, || {
            last = cli(&sb, layout, &["ls", "--output", "json"]).stdout;
            last.contains("demo/web")
        })
        .unwrap_or_else(|e| panic!("{e}: {last}"));
        let out = cli(&sb, layout, &["start", ENDPOINT, "web"]);
        assert!(out.success(), "start: {}{}", out.stdout, out.stderr);
        let url = format!("http://{}/journal-check", cluster.web.fqdn());
        let curl = sb
            .process(Side::Workstation, "curl", "curl")
            .args(["-sS", "--max-time", "10", &url])
            .run(T)
            .expect("curl");
        assert!(
            curl.success() && curl.stdout.contains("path=/journal-check"),
            "curl {url}: {}{}",
            curl.stdout,
            curl.stderr
        );
        let _ = cli(&sb, layout, &["connect", OTHER]);

        // journald has the records, with the fields as journal fields.
        let service = format!("{ENDPOINT}/web");
        let ident = "SYSLOG_IDENTIFIER=netmuxd";
        let mut entries = Vec::new();
        let all_there = wait_until("netmuxd's entries in the journal", T, || {
            entries = journal.entries(&[ident]);
            find(&entries, "connected", &[("ENDPOINT", ENDPOINT)]).is_some()
                && find(
                    &entries,
                    "service started",
                    &[("ENDPOINT", ENDPOINT), ("SERVICE", &service)],
                )
                .is_some()
                && find(
                    &entries,
                    "connection closed",
                    &[("ENDPOINT", ENDPOINT), ("SERVICE", &service)],
                )
                .is_some()
                && find(&entries, "cannot connect", &[("ENDPOINT", OTHER)]).is_some()
        });
        if let Err(e) = all_there {
            panic!(
                "{e}; netmuxd's entries:\n{}\nall entries:\n{}",
                dump(&entries),
                dump(&journal.entries(&[]))
            );
        }
        let closed = find(
            &entries,
            "connection closed",
            &[("ENDPOINT", ENDPOINT), ("SERVICE", &service)],
        )
        .expect("found above");
        let conn = str_field(closed, "CONN").unwrap_or_default().to_owned();
        assert!(
            !conn.is_empty() && conn.chars().all(|c| c.is_ascii_digit()),
            "CONN= is the connection's stream id: {}",
            dump(std::slice::from_ref(closed))
        );
        assert_eq!(str_field(closed, "END"), Some("clean"), "{closed:?}");
        assert!(
            str_field(closed, "SENT").is_some() && str_field(closed, "RECEIVED").is_some(),
            "{closed:?}"
        );
        let refused = find(&entries, "cannot connect", &[("ENDPOINT", OTHER)]).expect("found");
        assert_eq!(
            str_field(refused, "PRIORITY"),
            Some("4"),
            "warn: {refused:?}"
        );
        assert!(str_field(refused, "ERROR").is_some(), "{refused:?}");
        assert!(find(&entries, "netmuxd ready", &[]).is_some());
        for e in &entries {
            // Native protocol (journal::init chose journald because of
            // JOURNAL_STREAM), from the daemon itself, not under a unit.
            assert_eq!(str_field(e, "_TRANSPORT"), Some("journal"), "{e:?}");
            assert_eq!(str_field(e, "_PID"), Some(daemon_pid.as_str()), "{e:?}");
            assert_ne!(str_field(e, "_SYSTEMD_UNIT"), Some("netmuxd.service"));
            assert!(str_field(e, "TARGET").is_some_and(|t| t.starts_with("netmux")));
        }
        // Nothing on stderr: no text fallback, no panic.
        let stderr = journal.entries(&["_TRANSPORT=stdout", &format!("_PID={daemon_pid}")]);
        assert!(stderr.is_empty(), "netmuxd wrote text: {}", dump(&stderr));
        // What `journalctl -u netmuxd.service` (the old `netmux logs`)
        // finds without systemd: nothing.
        assert!(
            journal.entries(&["-u", "netmuxd.service"]).is_empty(),
            "no _SYSTEMD_UNIT without systemd"
        );

        // `netmux logs`: every filter shows exactly the matching entries,
        // with their fields.
        let demo = journal.netmux_logs(&["--endpoint", ENDPOINT]);
        let text = demo.join("\n");
        assert!(
            demo.iter()
                .all(|l| l.contains(&format!(" ENDPOINT={ENDPOINT}"))),
            "{text}"
        );
        assert!(
            demo.iter()
                .any(|l| l.contains(" netmuxd[") && l.contains(": connected ENDPOINT=demo")),
            "{text}"
        );
        assert!(
            demo.iter().any(|l| l.contains(&format!(
                "connection closed ENDPOINT={ENDPOINT} SERVICE={service} CONN={conn} END=clean"
            ))),
            "{text}"
        );
        assert!(!text.contains(OTHER), "{text}");
        let demo_entries = journal.entries(&[ident, &format!("ENDPOINT={ENDPOINT}")]);
        assert_eq!(demo.len(), demo_entries.len(), "{text}");

        let other = journal.netmux_logs(&["--endpoint", OTHER]);
        let text = other.join("\n");
        assert!(
            other
                .iter()
                .all(|l| l.contains(&format!(" ENDPOINT={OTHER}")))
                && other
                    .iter()
                    .any(|l| l.contains(&format!("WARN cannot connect ENDPOINT={OTHER} ERROR="))),
            "{text}"
        );

        let web = journal.netmux_logs(&["--service", &service]);
        let text = web.join("\n");
        assert!(
            web.iter()
                .all(|l| l.contains(&format!(" SERVICE={service}"))),
            "{text}"
        );
        assert!(text.contains("service started") && text.contains(&format!("CONN={conn}")));

        let json = journal.netmux_logs(&["--output", "json", "--endpoint", ENDPOINT]);
        let conns: BTreeSet<String> = json
            .iter()
            .map(|l| match serde_json::from_str(l) {
                Ok(Value::Object(e)) => {
                    assert_eq!(str_field(&e, "ENDPOINT"), Some(ENDPOINT), "{l}");
                    str_field(&e, "CONN").unwrap_or_default().to_owned()
                }
                _ => panic!("netmux logs -o json printed a non-object: {l}"),
            })
            .filter(|c| !c.is_empty())
            .collect();
        assert!(conns.contains(&conn), "{json:?}");

        let last = journal.netmux_logs(&["-n", "1"]);
        assert_eq!(last.len(), 1, "{last:?}");
        let everything = journal.netmux_logs(&[]).join("\n");
        eprintln!("`netmux logs`:\n{everything}");
        assert!(everything.contains("netmuxd ready"), "{everything}");

        // Under systemd the unit's other processes log with the unit's id
        // (journald records it as _SYSTEMD_UNIT): `netmux logs` shows them
        // as `journalctl -u` did. journald takes the unit id from the
        // stream header only for processes in the root cgroup.
        let in_root_cgroup = std::fs::read_to_string("/proc/self/cgroup")
            .is_ok_and(|c| c.lines().any(|l| l == "0::/"));
        if in_root_cgroup {
            let stream = JournalStream::new();
            let mut pre = Command::new("sh");
            pre.args(["-c", "echo unit-stream-check"]);
            stream.attach(
                &mut pre,
                &journal.stdout_socket(),
                "netmuxd-pre",
                "netmuxd.service",
            );
            let out = capture(pre, T);
            assert!(out.status.success(), "sh: {}", out.stderr);
            drop(stream);
            let mut unit = Vec::new();
            wait_until("the unit's entry", T, || {
                unit = journal.entries(&["-u", "netmuxd.service"]);
                !unit.is_empty()
            })
            .unwrap_or_else(|e| panic!("{e}: journald gave no entry _SYSTEMD_UNIT"));
            assert_eq!(
                str_field(&unit[0], "MESSAGE"),
                Some("unit-stream-check"),
                "{}",
                dump(&unit)
            );
            let all = journal.netmux_logs(&[]).join("\n");
            assert!(all.contains("netmuxd-pre["), "{all}");
            assert!(all.contains("unit-stream-check"), "{all}");
            let filtered = journal.netmux_logs(&["--endpoint", ENDPOINT]).join("\n");
            assert!(!filtered.contains("unit-stream-check"), "{filtered}");
        } else {
            netmux_testbed::prereq::require(
                "journal_e2e: the _SYSTEMD_UNIT part",
                Some(
                    "this test is not in the root cgroup, so journald would not take the \
                     unit from the stream header; run it from the root cgroup",
                ),
            );
        }

        // `systemctl reload` (SIGHUP): reloading, ready again, and logged.
        let pid = nix::unistd::Pid::from_raw(daemon.pid());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
        notify.expect(
            |m| m.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "RELOADING=1 with MONOTONIC_USEC on SIGHUP",
        );
        notify.expect(|m| m == "READY=1", "READY=1 after the reload");
        let mut reloaded = Vec::new();
        wait_until("the reload's entry", T, || {
            reloaded = journal.entries(&[ident, "MESSAGE=SIGHUP: reloaded"]);
            !reloaded.is_empty()
        })
        .unwrap_or_else(|e| panic!("{e}: {}", dump(&journal.entries(&[ident]))));
        assert!(str_field(&reloaded[0], "RESULT").is_some(), "{reloaded:?}");
        let all = journal.netmux_logs(&[]).join("\n");
        assert!(all.contains("SIGHUP: reloaded RESULT="), "{all}");

        // `systemctl stop` (SIGTERM): stopping, a clean exit, logged.
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        notify.expect(|m| m == "STOPPING=1", "STOPPING=1 on SIGTERM");
        let child = daemon.0.as_mut().expect("running");
        let deadline = Instant::now() + T;
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "netmuxd did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "netmuxd exited with {status}");
        assert!(
            !journal.entries(&[ident, "MESSAGE=terminated"]).is_empty(),
            "{}",
            dump(&journal.entries(&[ident]))
        );
        daemon.stop(T);
    }
    assert_eq!(
        host_journal_dirs(),
        host_before,
        "the host's journal directories changed"
    );
}
