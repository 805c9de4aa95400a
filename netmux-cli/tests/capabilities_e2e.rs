//! netmuxd run the way the generated systemd unit runs it, minus systemd,
//! to measure that the unit's capabilities are enough and each is needed.
//!
//! The unit is the one `netmux install` writes ([`Layout::unit`]), parsed:
//! its `AmbientCapabilities` become the daemon's ambient, inheritable and
//! permitted sets and its bounding set (`setpriv --inh-caps --ambient-caps
//! --bounding-set`), `NoNewPrivileges=yes` is `--no-new-privs`, `User=` is
//! a system user created like `netmux install` creates `netmuxd`
//! (`useradd --system --user-group --groups GROUP`, named after this test
//! and removed at the end) and `SupplementaryGroups=` a system group
//! standing for `netmux` (`--init-groups` gives the daemon its membership,
//! as systemd does). `ProtectSystem=strict` is emulated in the daemon's own
//! mount namespace (the one `ip netns exec` makes, a slave of the host's,
//! so nothing propagates back): every mount is remounted read-only except
//! `/proc`, `/sys`, `/dev` and the unit's `ReadWritePaths` (`/etc/hosts`,
//! which `ip netns exec` bind-mounts from `/etc/netns/NS/hosts`); a tmpfs
//! on `/run` holds the `RuntimeDirectory` (`/run/netmux`, owned by the
//! user, `RuntimeDirectoryMode`). `UMask=` and `LimitMEMLOCK=` are applied
//! too. Not emulated: `PrivateTmp` (the test's configs are in /tmp),
//! `PrivateDevices`, the system-call filters.
//!
//! In the testbed's workstation network namespace, against a real
//! `netmux-server` in the cluster namespace:
//! * `the_units_capabilities_are_enough`: the credentials of the running
//!   daemon are exactly the unit's; the eBPF redirect attaches to a child
//!   cgroup this test creates (never the root cgroup); curl in that cgroup
//!   reaches a started service by its cluster address and by its name from
//!   the hosts block the daemon wrote through the read-only root; the
//!   embedded DNS server answers on 127.0.77.53:53; the control socket is
//!   0660 with the socket group; `netmux doctor` (root, in the daemon's
//!   mount namespace) passes config, capabilities, redirect and
//!   control-socket.
//! * `each_of_the_units_capabilities_is_needed`: for every capability of
//!   the unit, the same run without it, and the specific failure it causes
//!   (a capability with no recorded need, or whose removal breaks nothing,
//!   fails the test: the unit must change with a measured reason).
//!
//! Needs root, a netmuxd built with the eBPF programs, setpriv, nsenter,
//! useradd/groupadd, curl and dig; skipped with a loud line otherwise.
//!
//! Run: `cargo test -p netmux-cli --test capabilities_e2e -- --test-threads=1`

// The daemon tests' shared fixtures (one copy, kept there).
#[path = "../../netmux-daemon/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use netmux_cli::install::{self, Init};
use netmux_testbed::cgroup::ChildCgroup;
use netmux_testbed::netmux::{services_toml, Layout, ServiceSpec, ENDPOINT, TOKEN};
use netmux_testbed::{bin, wait_until, Process, Sandbox, Side};
use serde_json::Value;

/// Bound on every wait and command.
const T: Duration = Duration::from_secs(20);
/// The started service's cluster address and port.
const SERVICE_IP: &str = "10.96.0.30";
/// Its name in the hosts block and the DNS zone.
const SERVICE_NAME: &str = "web.demo.svc.cluster.local";
/// Where the daemon's DNS server listens (the config default).
const DNS: &str = "127.0.77.53";

/// Capability names in number order (linux/capability.h).
const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

fn cap_mask(caps: &[String]) -> u64 {
    caps.iter().fold(0, |m, c| {
        let bit = CAP_NAMES
            .iter()
            .position(|n| n == c)
            .unwrap_or_else(|| panic!("unknown capability {c} in the unit"));
        m | 1 << bit
    })
}

fn cap_list(mask: u64) -> Vec<&'static str> {
    CAP_NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Why the tests cannot run here, if they cannot.
fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root (namespaces, users, setpriv)".into());
    }
    if !netmux_daemon::redirect::ebpf::programs_built() {
        return Some("netmuxd was built without the eBPF programs (install bpf-linker)".into());
    }
    support::missing_tools(
        &[
            "setpriv", "nsenter", "useradd", "userdel", "groupadd", "groupdel", "curl", "dig",
        ],
        &["netmuxd", "netmux", "netmux-server", "nx-echo"],
    )
}

// ------------------------------------------------------------------ unit --

/// What the generated unit says about how netmuxd runs.
struct Unit {
    text: String,
    /// `[Service]` settings; repeated keys joined with a space.
    service: BTreeMap<String, String>,
}

impl Unit {
    /// The unit `netmux install` writes for the default config.
    fn generated() -> Unit {
        let text = install::Layout::new("/", "/usr/local", Init::Systemd).unit(
            Path::new("/etc/hosts"),
            Path::new(netmux_daemon::config::DEFAULT_SOCKET),
        );
        let mut service = BTreeMap::new();
        let mut section = String::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if line.starts_with('[') {
                section = line.to_owned();
                continue;
            }
            if section != "[Service]" {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                service
                    .entry(k.to_owned())
                    .and_modify(|old: &mut String| {
                        old.push(' ');
                        old.push_str(v);
                    })
                    .or_insert_with(|| v.to_owned());
            }
        }
        Unit { text, service }
    }

    fn get(&self, key: &str) -> &str {
        self.service
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("the unit has no {key}=:\n{}", self.text))
    }

    fn words(&self, key: &str) -> Vec<String> {
        self.get(key)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    fn ambient(&self) -> Vec<String> {
        self.words("AmbientCapabilities")
    }
}

/// `-all,+bpf,+net_admin,...` for setpriv.
fn setpriv_caps(caps: &[String]) -> String {
    let mut s = String::from("-all");
    for c in caps {
        s.push_str(",+");
        s.push_str(&c.trim_start_matches("CAP_").to_lowercase());
    }
    s
}

// ----------------------------------------------------------------- users --

/// A system user like the unit's `User=` and a group like its
/// `SupplementaryGroups=`, created for this test; removed on drop.
struct Users {
    user: String,
    group: String,
    uid: u32,
    gid: u32,
    socket_gid: u32,
}

const USER_PREFIX: &str = "nxcapd";
const GROUP_PREFIX: &str = "nxcaps";

fn tool(name: &str, args: &[&str]) -> Result<(), String> {
    let program = support::which(name).ok_or(format!("{name} not installed"))?;
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{name}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{name} {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Users {
    fn create() -> Users {
        Users::remove_stale();
        let pid = std::process::id();
        let user = format!("{USER_PREFIX}{pid}");
        let group = format!("{GROUP_PREFIX}{pid}");
        tool("groupadd", &["--system", &group]).expect("groupadd");
        // From here on, drop removes them.
        let mut users = Users {
            user: user.clone(),
            group: group.clone(),
            uid: 0,
            gid: 0,
            socket_gid: 0,
        };
        // As `netmux install` creates the daemon's user.
        tool(
            "useradd",
            &[
                "--system",
                "--user-group",
                "--groups",
                &group,
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "netmux capabilities test",
                &user,
            ],
        )
        .expect("useradd");
        let u = nix::unistd::User::from_name(&user)
            .ok()
            .flatten()
            .expect("the new user");
        users.uid = u.uid.as_raw();
        users.gid = u.gid.as_raw();
        users.socket_gid = nix::unistd::Group::from_name(&group)
            .ok()
            .flatten()
            .expect("the new group")
            .gid
            .as_raw();
        assert_ne!(users.uid, 0);
        users
    }

    /// Users and groups of earlier runs whose process is gone (SIGKILL).
    fn remove_stale() {
        let alive = |name: &str, prefix: &str| {
            name.strip_prefix(prefix)
                .and_then(|p| p.parse::<u32>().ok())
                .is_none_or(|p| Path::new(&format!("/proc/{p}")).exists())
        };
        for (db, prefix, del) in [
            ("/etc/passwd", USER_PREFIX, "userdel"),
            ("/etc/group", USER_PREFIX, "groupdel"),
            ("/etc/group", GROUP_PREFIX, "groupdel"),
        ] {
            let text = std::fs::read_to_string(db).unwrap_or_default();
            for name in text.lines().filter_map(|l| l.split(':').next()) {
                if name.starts_with(prefix) && !alive(name, prefix) {
                    let _ = tool(del, &[name]);
                }
            }
        }
    }
}

impl Drop for Users {
    fn drop(&mut self) {
        // userdel refuses while a process runs with the uid: the daemon
        // has been reaped by now, but give stragglers a moment.
        let mut last = Ok(());
        for _ in 0..50 {
            last = tool("userdel", &[&self.user]);
            if last.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = last {
            eprintln!("capabilities_e2e: {e}");
        }
        // userdel removes the user's own group (USERGROUPS_ENAB); in case
        // it did not:
        if install::db_has(Path::new("/etc/group"), &self.user) {
            let _ = tool("groupdel", &[&self.user]);
        }
        if let Err(e) = tool("groupdel", &[&self.group]) {
            eprintln!("capabilities_e2e: {e}");
        }
    }
}

// --------------------------------------------------------------- cluster --

/// netmux-server with `web` and its HTTP backend in the cluster namespace.
struct Cluster {
    layout: Layout,
    _server: Process,
    _backend: Process,
}

fn web() -> ServiceSpec {
    ServiceSpec::l2c("web", SERVICE_IP.parse().expect("ip"), 80, 8080)
}

fn start_cluster(sb: &Sandbox) -> Cluster {
    let layout = Layout::new(sb);
    let web = web();
    sb.add_service_address(web.address)
        .expect("service address");
    std::fs::write(
        &layout.services_file,
        services_toml(std::slice::from_ref(&web)),
    )
    .expect("services file");
    std::fs::write(&layout.server_config, layout.server_toml()).expect("server config");
    let server = netmux_testbed::netmux::start_server(sb, &layout).expect("netmux-server");
    let backend = sb
        .nx_echo(Side::Cluster, "echo-web", "http", web.target(), T)
        .expect("backend up");
    Cluster {
        layout,
        _server: server,
        _backend: backend,
    }
}

/// The daemon's config: the unit's socket and hosts file, the socket group
/// standing for `netmux`, the eBPF redirect on the test's child cgroup, the
/// hosts-file DNS integration. The CA and token are inline: the daemon's
/// user cannot read the server's state dir.
fn daemon_config(
    sb: &Sandbox,
    cluster: &Cluster,
    users: &Users,
    cgroup: &Path,
    redirect: &str,
) -> PathBuf {
    let ca = std::fs::read_to_string(cluster.layout.ca_file()).expect("CA");
    let text = format!(
        "socket = {socket:?}\nsocket_group = {group:?}\nhosts_file = \"/etc/hosts\"\n\
         redirect = {redirect:?}\ncgroup = {cgroup:?}\n\n\
         [dns]\nmethod = \"hosts\"\n\n\
         [[endpoint]]\nname = {ENDPOINT:?}\nserver = \"{server}\"\nserver_name = \"netmux-server\"\n\
         ca_pem = \"\"\"\n{ca}\"\"\"\ntoken = {TOKEN:?}\ncluster_domain = \"cluster.local\"\n",
        socket = netmux_daemon::config::DEFAULT_SOCKET,
        group = users.group,
        cgroup = cgroup.display().to_string(),
        server = cluster.layout.quic,
    );
    let path = sb.dir().join(format!("daemon-{redirect}.toml"));
    std::fs::write(&path, text).expect("daemon config");
    path
}

// ---------------------------------------------------------------- daemon --

/// netmuxd as the unit runs it: see the module docs.
struct UnitDaemon {
    process: Process,
    pid: u32,
    /// Its `NOTIFY_SOCKET` (`Type=notify`): `READY=1` once it serves.
    notify: std::os::unix::net::UnixDatagram,
}

impl UnitDaemon {
    fn start(
        sb: &Sandbox,
        unit: &Unit,
        users: &Users,
        caps: &[String],
        config: &Path,
        label: &str,
    ) -> UnitDaemon {
        assert_eq!(unit.get("User"), install::DAEMON_USER);
        assert_eq!(unit.get("SupplementaryGroups"), install::SOCKET_GROUP);
        assert_eq!(unit.get("NoNewPrivileges"), "yes");
        assert_eq!(unit.get("ProtectSystem"), "strict");
        let runtime = Path::new("/run").join(unit.get("RuntimeDirectory"));
        let rw = unit.words("ReadWritePaths");
        let memlock = match unit.get("LimitMEMLOCK") {
            "infinity" => "unlimited".to_owned(),
            v => v.to_owned(),
        };
        let caps = setpriv_caps(caps);
        let no_new_privs = if unit.get("NoNewPrivileges") == "yes" {
            "--no-new-privs"
        } else {
            ""
        };
        // ProtectSystem=strict: every mount read-only but the API
        // filesystems, then ReadWritePaths and the RuntimeDirectory
        // writable again.
        let script = format!(
            r#"set -e
awk '{{print $5}}' /proc/self/mountinfo | sort -u | while read -r m; do
  case "$m" in
    /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;;
  esac
  # Mounts shadowed by others (or with escaped names) cannot be named.
  mount -o remount,bind,ro "$m" 2>/dev/null || [ ! -e "$m" ] \
    || {{ echo "netmux-test: cannot make $m read-only" >&2; exit 1; }}
done
mount -t tmpfs -o mode=0755,nosuid,nodev netmux-caps-run /run
mkdir -m {mode} {runtime}
chown {uid}:{gid} {runtime}
mount -o remount,bind,ro /run
for p in {rw} {runtime}; do
  mount --bind "$p" "$p"
  mount -o remount,bind,rw "$p"
done
umask {umask}
# Without CAP_SYS_RESOURCE (some containers) the hard limit stays; BPF
# memory is charged to the cgroup, not RLIMIT_MEMLOCK, since Linux 5.11.
ulimit -l {memlock} 2>/dev/null \
  || echo "netmux-test: LimitMEMLOCK={memlock} not applied: $(ulimit -l)" >&2
exec setpriv --reuid={uid} --regid={gid} --init-groups \
  --inh-caps={caps} --ambient-caps={caps} --bounding-set={caps} {no_new_privs} \
  -- "$0" --config "$1"
"#,
            mode = unit.get("RuntimeDirectoryMode"),
            runtime = runtime.display(),
            uid = users.uid,
            gid = users.gid,
            rw = rw.join(" "),
            umask = unit.get("UMask"),
        );
        assert_eq!(unit.get("Type"), "notify");
        let notify_path = sb.dir().join(format!("{label}.notify"));
        let _ = std::fs::remove_file(&notify_path);
        let notify =
            std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind notify socket");
        notify.set_nonblocking(true).expect("nonblocking");
        // The daemon's user must be able to send to it, as to systemd's.
        std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o666))
            .expect("chmod notify socket");
        let process = sb
            .process(Side::Workstation, label, "sh")
            .args(["-c", &script])
            .arg(bin("netmuxd").expect("netmuxd"))
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", &notify_path)
            .spawn()
            .expect("starting netmuxd");
        let pid = process.pid().expect("running");
        UnitDaemon {
            process,
            pid,
            notify,
        }
    }

    /// The control socket, reached from outside the daemon's mount
    /// namespace.
    fn socket(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root{}",
            self.pid,
            netmux_daemon::config::DEFAULT_SOCKET
        ))
    }

    /// Waits until it reports `READY=1` (`Ok`), as systemd does for
    /// `Type=notify`, or exits (`Err` with its log).
    fn wait_ready(&mut self) -> Result<(), String> {
        let mut exited = None;
        let mut ready = false;
        let mut buf = [0u8; 4096];
        let r = wait_until("netmuxd's READY=1", T, || {
            while let Ok(n) = self.notify.recv(&mut buf) {
                ready |= buf[..n].split(|b| *b == b'\n').any(|l| l == b"READY=1");
            }
            exited = self.process.try_status();
            ready || exited.is_some()
        });
        match (exited, r) {
            (None, Ok(())) => Ok(()),
            (Some(s), _) => Err(format!("netmuxd exited with {s}:\n{}", self.process.log())),
            (None, Err(e)) => panic!("{e}:\n{}", self.process.log()),
        }
    }

    /// `netmux ARGS` as root in the workstation namespace, on this daemon.
    fn cli(&self, sb: &Sandbox, args: &[&str]) -> netmux_testbed::Output {
        sb.process(
            Side::Workstation,
            "netmux-cli",
            bin("netmux").expect("netmux"),
        )
        .arg("--socket")
        .arg(self.socket())
        .args(args)
        .run(T)
        .unwrap_or_else(|e| panic!("netmux {args:?}: {e}"))
    }

    /// `PROGRAM ARGS` as root in the daemon's mount namespace (its
    /// /run/netmux, its read-only root) and the workstation namespace.
    fn in_its_mounts(&self, sb: &Sandbox, program: &Path, args: &[&str]) -> netmux_testbed::Output {
        sb.process(Side::Workstation, "in-daemon-mounts", "nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", self.pid))
            .arg("--")
            .arg(program)
            .args(args)
            .run(T)
            .unwrap_or_else(|e| panic!("nsenter {program:?} {args:?}: {e}"))
    }

    /// `Key:` of /proc/PID/status.
    fn status_field(&self, key: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("daemon's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {key} in /proc/{}/status", self.pid))
    }

    fn caps(&self, key: &str) -> u64 {
        u64::from_str_radix(&self.status_field(key), 16).expect("hex capability set")
    }

    /// SIGTERM, as `systemctl stop`; its exit status.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.process.terminate(T)
    }
}

/// What one run of the daemon could do.
#[derive(Debug, Default)]
struct Observed {
    /// Why it did not start (its log), if it did not.
    start_error: Option<String>,
    /// `netmux start demo web`: (ok, output).
    start: (bool, String),
    /// `netmux status` output.
    status: String,
    /// Programs attached to the child cgroup while it ran.
    attached: Vec<String>,
    /// curl by cluster address, inside the cgroup: (ok, output).
    curl_ip: (bool, String),
    /// curl by name (hosts block), inside the cgroup.
    curl_name: (bool, String),
    /// The hosts block has the service's name.
    hosts_block: bool,
    /// dig @127.0.77.53 SERVICE_NAME: the answer.
    dig: String,
    /// The daemon's log.
    log: String,
}

/// Starts the daemon with `caps`, exercises it, stops it.
fn observe(
    w: &World,
    caps: &[String],
    config: &Path,
    label: &str,
    also: impl FnOnce(&UnitDaemon),
) -> Observed {
    let mut d = UnitDaemon::start(&w.sb, &w.unit, &w.users, caps, config, label);
    let mut o = Observed::default();
    if let Err(e) = d.wait_ready() {
        o.start_error = Some(e);
        o.log = d.process.log();
        return o;
    }
    let out = d.cli(&w.sb, &["connect", ENDPOINT]);
    assert!(out.success(), "connect: {}{}", out.stdout, out.stderr);
    let mut last = String::new();
    wait_until("the catalog", T, || {
        last = d.cli(&w.sb, &["ls", "--output", "json"]).stdout;
        last.contains("demo/web")
    })
    .unwrap_or_else(|e| panic!("{e}: {last}\n{}", d.process.log()));
    let out = d.cli(&w.sb, &["start", ENDPOINT, "web"]);
    o.start = (out.success(), format!("{}{}", out.stdout, out.stderr));
    o.status = d.cli(&w.sb, &["status"]).stdout;
    o.attached = support::attached(w.cg.path());
    let curl = |url: &str| {
        let out =
            w.sb.process(Side::Workstation, "curl", "sh")
                .args(w.cg.wrap("curl", &["-sS", "--max-time", "5", url]))
                .run(T)
                .expect("curl");
        (out.success(), format!("{}{}", out.stdout, out.stderr))
    };
    o.curl_ip = curl(&format!("http://{SERVICE_IP}/by-ip"));
    // The hosts block is written after the start reply: give it a moment.
    let hosts = w.sb.ws_hosts_file();
    o.hosts_block = wait_until("the hosts block", Duration::from_secs(3), || {
        std::fs::read_to_string(&hosts).is_ok_and(|t| t.contains(SERVICE_NAME))
    })
    .is_ok();
    o.curl_name = curl(&format!("http://{SERVICE_NAME}/by-name"));
    let dig =
        w.sb.process(Side::Workstation, "dig", "dig")
            .args([
                &format!("@{DNS}"),
                "+short",
                "+time=2",
                "+tries=1",
                SERVICE_NAME,
                "A",
            ])
            .run(T)
            .expect("dig");
    o.dig = format!("{}{}", dig.stdout.trim(), dig.stderr.trim());
    also(&d);
    let status = d.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "netmuxd did not exit cleanly on SIGTERM ({status:?}):\n{}",
        d.process.log()
    );
    o.log = d.process.log();
    o
}

/// Everything a run needs, torn down in reverse order on drop (also when
/// a test fails): processes, cgroup, namespaces, users.
struct World {
    // Field order is drop order.
    cg: ChildCgroup,
    cluster: Cluster,
    sb: Sandbox,
    users: Users,
    unit: Unit,
    /// One world at a time: the users are named after this process, and
    /// two daemons would only compete for the CPU.
    _serial: std::sync::MutexGuard<'static, ()>,
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn world() -> Option<World> {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED capabilities_e2e: {why}");
        return None;
    }
    let serial = netmux_common::sync::lock(&SERIAL);
    let unit = Unit::generated();
    let users = Users::create();
    let sb = Sandbox::new().expect("sandbox");
    let cluster = start_cluster(&sb);
    let cg = ChildCgroup::new(&support::unique_name("nx-caps-cg")).expect("child cgroup");
    Some(World {
        cg,
        cluster,
        sb,
        users,
        unit,
        _serial: serial,
    })
}

fn contents(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

#[test]
fn the_units_capabilities_are_enough() {
    let Some(w) = world() else { return };
    let host_hosts = contents(Path::new("/etc/hosts"));
    let caps = w.unit.ambient();
    assert_eq!(
        w.unit.words("CapabilityBoundingSet"),
        caps,
        "the bounding set is the ambient set"
    );
    let config = daemon_config(&w.sb, &w.cluster, &w.users, w.cg.path(), "ebpf");
    let mut doctor = None;
    let o = observe(&w, &caps, &config, "netmuxd-unit", |d| {
        // The daemon runs with exactly the unit's credentials.
        let want = cap_mask(&caps);
        for set in ["CapInh", "CapPrm", "CapEff", "CapAmb", "CapBnd"] {
            assert_eq!(
                cap_list(d.caps(set)),
                cap_list(want),
                "{set} of netmuxd (pid {})",
                d.pid
            );
        }
        assert_eq!(d.status_field("NoNewPrivs"), "1");
        let uid = w.users.uid.to_string();
        assert!(
            d.status_field("Uid").split_whitespace().all(|u| u == uid),
            "Uid: {}",
            d.status_field("Uid")
        );
        let groups = d.status_field("Groups");
        assert!(
            groups
                .split_whitespace()
                .any(|g| g == w.users.socket_gid.to_string()),
            "SupplementaryGroups: Groups: {groups}"
        );
        // The control socket: 0660, the socket group, the daemon's user.
        let meta = std::fs::metadata(d.socket()).expect("control socket");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o660, "socket mode");
        assert_eq!(meta.gid(), w.users.socket_gid, "socket group");
        assert_eq!(meta.uid(), w.users.uid, "socket owner");
        // ProtectSystem=strict holds in its mount namespace: even root
        // cannot write /etc there, and the daemon left no temp file in the
        // host's /etc.
        let probe = d.in_its_mounts(
            &w.sb,
            Path::new("/bin/sh"),
            &["-c", ": > /etc/.netmux-caps-probe"],
        );
        assert!(
            !probe.success() && probe.stderr.contains("Read-only file system"),
            "/etc is writable in the daemon's mount namespace: {}",
            probe.stderr
        );
        assert!(!Path::new("/etc/.hosts.netmux.tmp").exists());
        // `netmux doctor` as root in its mount namespace.
        let netmux = bin("netmux").expect("netmux");
        let out = d.in_its_mounts(
            &w.sb,
            &netmux,
            &[
                "--config",
                &config.display().to_string(),
                "doctor",
                "--json",
            ],
        );
        doctor = Some((d.pid, out));
    });
    if let Some(e) = &o.start_error {
        panic!("netmuxd did not start with the unit's capabilities: {e}");
    }
    eprintln!(
        "netmuxd as uid {} with {}:
{}curl by IP: {}
curl by name: {}
dig: {}",
        w.users.uid,
        caps.join(" "),
        o.status,
        o.curl_ip.1.trim(),
        o.curl_name.1.trim(),
        o.dig
    );
    assert!(o.start.0, "start: {}", o.start.1);
    let ok_body = |r: &(bool, String), path: &str| r.0 && r.1.contains(&format!("path={path}"));
    assert!(
        o.status.contains("redirect:   ebpf"),
        "eBPF backend: {}",
        o.status
    );
    let programs = netmux_daemon::redirect::ebpf::SOCK_ADDR_PROGRAMS.len() + 1;
    assert_eq!(o.attached.len(), programs, "{:?}", o.attached);
    assert!(ok_body(&o.curl_ip, "/by-ip"), "curl by IP: {}", o.curl_ip.1);
    assert!(o.hosts_block, "no hosts block:\n{}", o.log);
    assert!(
        ok_body(&o.curl_name, "/by-name"),
        "curl by name: {}",
        o.curl_name.1
    );
    assert_eq!(o.dig, SERVICE_IP, "DNS on {DNS}:53: {}", o.log);
    assert!(
        o.status.contains(&format!("{DNS}:53")) && !o.status.contains("cannot listen"),
        "{}",
        o.status
    );
    // Cleaned up on SIGTERM through the read-only root as well.
    let hosts = std::fs::read_to_string(w.sb.ws_hosts_file()).expect("hosts");
    assert!(!hosts.contains(SERVICE_NAME), "{hosts}");
    support::assert_attached(w.cg.path(), 0);
    assert_eq!(
        contents(Path::new("/etc/hosts")),
        host_hosts,
        "host /etc/hosts changed"
    );

    let (pid, out) = doctor.expect("doctor ran");
    let checks: Vec<Value> = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {}{}", out.stdout, out.stderr));
    let check = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {}", out.stdout))
    };
    for name in ["config", "capabilities", "redirect", "control-socket"] {
        assert_eq!(check(name)["status"], "pass", "{}", out.stdout);
    }
    assert_eq!(
        check("capabilities")["detail"],
        format!("netmuxd (pid {pid}) has the capabilities it needs"),
    );
    let any_fail = checks.iter().any(|c| c["status"] == "fail");
    assert_eq!(
        out.status.code(),
        Some(i32::from(any_fail)),
        "{}",
        out.stdout
    );
}

/// What goes wrong without each capability; a capability of the unit that
/// is missing here has no measured need.
fn expect_failure_without(cap: &str, o: &Observed) -> Result<String, String> {
    let bpf_refused = |o: &Observed| match &o.start_error {
        Some(e) if e.contains("redirect = \"ebpf\" but the programs cannot be loaded") => {
            // The error, and the verifier's verdict when it has one.
            let lines: Vec<&str> = e
                .lines()
                .filter(|l| l.contains("cannot be loaded") || l.contains("prohibited for !root"))
                .collect();
            Ok(lines.join(" / "))
        }
        Some(e) => Err(format!("netmuxd failed otherwise: {e}")),
        None => Err(format!(
            "the eBPF redirect loaded without {cap}: {}",
            o.status
        )),
    };
    match cap {
        "CAP_BPF" | "CAP_PERFMON" | "CAP_NET_ADMIN" => bpf_refused(o),
        "CAP_NET_BIND_SERVICE" => {
            // The DNS server's port 53, and the service's own port (80) on
            // its 127.77.x.y listener, which the eBPF backend redirects to
            // as the loopback backend does.
            let dns = o
                .status
                .lines()
                .find(|l| l.starts_with("dns:"))
                .unwrap_or_default();
            let dns_refused =
                dns.contains(&format!("cannot listen on {DNS}:53")) && o.dig != SERVICE_IP;
            let port_refused = !o.start.0
                && o.start.1.contains("cannot listen on 127.77.")
                && o.start.1.contains(":80: Permission denied");
            if dns_refused && port_refused {
                Ok(format!("{} / {}", dns.trim(), o.start.1.trim()))
            } else {
                Err(format!(
                    "ports below 1024 work without {cap}: {dns}; dig {}; start: {}",
                    o.dig, o.start.1
                ))
            }
        }
        "CAP_DAC_OVERRIDE" => {
            let line = o
                .log
                .lines()
                .find(|l| l.contains("cannot write hosts file"))
                .unwrap_or_default();
            if !o.hosts_block && !o.curl_name.0 && !line.is_empty() {
                Ok(line.to_owned())
            } else {
                Err(format!(
                    "the hosts block was written without {cap} (block: {}, curl by name: {})",
                    o.hosts_block, o.curl_name.1
                ))
            }
        }
        other => Err(format!(
            "the unit grants {other} but this test knows no need for it: measure one and add it here, or drop it from the unit"
        )),
    }
}

#[test]
fn each_of_the_units_capabilities_is_needed() {
    let Some(w) = world() else { return };
    let caps = w.unit.ambient();
    let config = daemon_config(&w.sb, &w.cluster, &w.users, w.cg.path(), "ebpf");
    let mut findings = Vec::new();
    let mut problems = Vec::new();
    for dropped in &caps {
        let rest: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        let label = format!("netmuxd-without-{}", dropped.to_lowercase());
        let o = observe(&w, &rest, &config, &label, |_| {});
        match expect_failure_without(dropped, &o) {
            Ok(what) => findings.push(format!("without {dropped}: {what}")),
            Err(e) => problems.push(format!("without {dropped}: {e}")),
        }
        // Whatever failed, nothing stays attached.
        support::assert_attached(w.cg.path(), 0);
    }
    eprintln!("measured:\n{}", findings.join("\n"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // With redirect = "auto" a missing CAP_BPF is no failure: the daemon
    // falls back to loopback, says why, and doctor warns about it.
    let auto = daemon_config(&w.sb, &w.cluster, &w.users, w.cg.path(), "auto");
    let rest: Vec<String> = caps.iter().filter(|c| *c != "CAP_BPF").cloned().collect();
    let mut doctor = None;
    let o = observe(&w, &rest, &auto, "netmuxd-auto-without-cap_bpf", |d| {
        let netmux = bin("netmux").expect("netmux");
        let out = d.in_its_mounts(
            &w.sb,
            &netmux,
            &["--config", &auto.display().to_string(), "doctor", "--json"],
        );
        doctor = Some((d.pid, out));
    });
    assert!(o.start_error.is_none(), "{:?}", o.start_error);
    assert!(o.start.0, "start: {}", o.start.1);
    let redirect = o
        .status
        .lines()
        .find(|l| l.starts_with("redirect:"))
        .unwrap_or_default();
    assert!(
        redirect.contains("loopback (eBPF unavailable: permission denied"),
        "{}",
        o.status
    );
    assert!(o.attached.is_empty(), "{:?}", o.attached);
    // Loopback: the name leads to a 127.77.x.y listener on port 80, which
    // CAP_NET_BIND_SERVICE allows.
    assert!(
        o.curl_name.0,
        "curl by name with loopback: {}",
        o.curl_name.1
    );
    eprintln!("auto without CAP_BPF: {redirect}");
    let (pid, out) = doctor.expect("doctor ran");
    let checks: Vec<Value> = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {}{}", out.stdout, out.stderr));
    let caps_check = checks
        .iter()
        .find(|c| c["name"] == "capabilities")
        .expect("capabilities check");
    assert_eq!(caps_check["status"], "warn", "{}", out.stdout);
    let detail = caps_check["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with(&format!("netmuxd (pid {pid}) lacks CAP_BPF"))
            && detail.contains("auto falls back to loopback"),
        "{detail}"
    );
    eprintln!("doctor: {detail}");
}
