//! The systemd-resolved integration (`dns.method = "resolved"`) against a
//! real systemd-resolved, isolated from the machine's.
//!
//! systemd-resolved is not installed on the host (installing Debian's
//! package would take over the host's `/etc/resolv.conf`): the test takes
//! the binaries from the package without installing it (`apt-get download
//! systemd-resolved=<the installed libsystemd-shared's version>`, `dpkg-deb
//! -x` into `/var/cache/netmux-test/`, fetched on first use and by `cargo
//! xtask test`'s prerequisite step; see [`extracted_resolved`]).
//!
//! Everything runs in the testbed's workstation network namespace, in one
//! private mount namespace held by a `sleep` ([`Isolated`]):
//! * tmpfs over `/run/dbus` and `/run/systemd`: a private `dbus-daemon`
//!   listens on `/run/dbus/system_bus_socket` with a system-bus policy plus
//!   the package's `org.freedesktop.resolve1.conf`; resolved's state
//!   (`/run/systemd/resolve`) and a drop-in `resolved.conf.d` are private;
//! * `/etc/passwd` and `/etc/group` copies with the `systemd-resolve` user
//!   resolved drops privileges to (bind mounts, the host's files untouched);
//! * `/etc/resolv.conf` is the namespace's own (`/etc/netns/NAME/`),
//!   pointing at resolved's stub `127.0.0.53`;
//! * an "upstream" dnsmasq on `127.0.0.2` plays the user's DNS server
//!   (resolved's global `DNS=`), answering `*.example.test`.
//!
//! netmuxd runs there with `dns.method = "resolved"` against a
//! netmux-server in the cluster namespace. The test checks what resolved
//! reports (`resolvectl status/domain/dns`), that glibc (`getent`), curl and
//! `resolvectl query` reach the service by name through resolved, that
//! cluster names go only to the daemon and other names only upstream, and
//! that disconnect, `netmux cleanup` after a SIGKILL, and a restarted
//! netmuxd leave resolved's state exactly as before.
//!
//! Needs root, apt (first run) and the built binaries (`cargo build
//! --workspace`). Run: `cargo test -p netmux-daemon --test resolved_e2e`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use netmux_testbed::netmux::{services_toml, Layout, ServiceSpec, ENDPOINT, TOKEN};
use netmux_testbed::Side;
use netmux_testbed::{bin, wait_for_file, wait_until, Output, Process, ProcessBuilder, Sandbox};

const T: Duration = Duration::from_secs(20);
/// The daemon's DNS server.
const DNS: &str = "127.0.77.53";
/// The daemon's link.
const LINK: &str = "netmux0";
/// The "user's" DNS server (dnsmasq) and the name it answers.
const UPSTREAM: &str = "127.0.0.2";
const UPSTREAM_NAME: &str = "www.example.test";
const UPSTREAM_ADDR: &str = "192.0.2.10";
/// Where extracted packages are cached.
const CACHE: &str = "/var/cache/netmux-test";

fn command_output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The systemd-resolved package of the version of the installed
/// `libsystemd-shared` (its binaries link against it), extracted under
/// [`CACHE`] (or `$NETMUX_RESOLVED_DIR`). Downloaded with `apt-get download`
/// when missing; nothing is installed.
fn extracted_resolved() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("NETMUX_RESOLVED_DIR") {
        return Ok(dir.into());
    }
    let version = command_output(Command::new("dpkg-query").args([
        "-W",
        "-f=${Version}",
        "libsystemd-shared",
    ]))?;
    let version = version.trim();
    let dir = Path::new(CACHE).join(format!("systemd-resolved_{}", version.replace(':', "_")));
    if dir.join("lib/systemd/systemd-resolved").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(CACHE).map_err(|e| format!("creating {CACHE}: {e}"))?;
    let tmp = tempfile::tempdir_in(CACHE).map_err(|e| format!("temp dir in {CACHE}: {e}"))?;
    command_output(
        Command::new("timeout")
            .args(["120", "apt-get", "download"])
            .arg(format!("systemd-resolved={version}"))
            .current_dir(tmp.path()),
    )?;
    let deb = std::fs::read_dir(tmp.path())
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download left no .deb")?;
    let out = tmp.path().join("root");
    command_output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&out))?;
    match std::fs::rename(&out, &dir) {
        Ok(()) => Ok(dir),
        // Another run got there first.
        Err(_) if dir.join("lib/systemd/systemd-resolved").is_file() => Ok(dir),
        Err(e) => Err(format!("renaming to {}: {e}", dir.display())),
    }
}

/// `/etc/passwd` or `/etc/group` with a `systemd-resolve` entry added.
fn with_resolve_user(host: &str, line: impl Fn(u32) -> String, id: u32) -> String {
    if host.lines().any(|l| l.starts_with("systemd-resolve:")) {
        return host.to_owned();
    }
    let mut s = host.to_owned();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s.push_str(&line(id));
    s.push('\n');
    s
}

/// A uid/gid used by neither file.
fn free_id(passwd: &str, group: &str) -> u32 {
    let used: Vec<u32> = passwd
        .lines()
        .chain(group.lines())
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect();
    (900..999)
        .rev()
        .find(|i| !used.contains(i))
        .unwrap_or(64053)
}

const BUS_POLICY: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include>RESOLVE1_POLICY</include>
</busconfig>
"#;

/// resolved's settings: the upstream as global DNS server, and no
/// multicast protocols or cache, so every lookup shows where it went.
const RESOLVED_CONF: &str = "[Resolve]\nDNS=127.0.0.2\nLLMNR=no\nMulticastDNS=no\n\
     DNSSEC=no\nDNSOverTLS=no\nCache=no\nDNSStubListener=yes\n";

/// systemd-resolved, a D-Bus system bus and the upstream DNS server in a
/// private mount namespace of the sandbox's workstation. Processes are
/// killed on drop (and by the sandbox, with everything in its namespace);
/// the mounts exist only in that namespace and vanish with its last
/// process.
struct Isolated<'a> {
    // Field order is drop order: the holder of the namespace goes last.
    upstream: Process,
    resolved: Process,
    dbus: Process,
    _holder: Process,
    sb: &'a Sandbox,
    mntns: PathBuf,
    /// `/proc/<holder>/root`: the namespace's files, seen from outside.
    view: PathBuf,
    path: String,
}

impl<'a> Isolated<'a> {
    fn start(sb: &'a Sandbox, pkg: &Path) -> Isolated<'a> {
        let dir = sb.dir();
        let passwd = std::fs::read_to_string("/etc/passwd").expect("reading /etc/passwd");
        let group = std::fs::read_to_string("/etc/group").expect("reading /etc/group");
        let id = free_id(&passwd, &group);
        let user = |i| format!("systemd-resolve:x:{i}:{i}:systemd Resolver:/:/usr/sbin/nologin");
        std::fs::write(dir.join("passwd"), with_resolve_user(&passwd, user, id)).expect("passwd");
        let grp = |i| format!("systemd-resolve:x:{i}:");
        std::fs::write(dir.join("group"), with_resolve_user(&group, grp, id)).expect("group");
        let policy = pkg.join("usr/share/dbus-1/system.d/org.freedesktop.resolve1.conf");
        assert!(policy.is_file(), "{} missing", policy.display());
        std::fs::write(
            dir.join("bus.conf"),
            BUS_POLICY.replace("RESOLVE1_POLICY", &policy.to_string_lossy()),
        )
        .expect("bus.conf");
        std::fs::write(dir.join("resolved.conf"), RESOLVED_CONF).expect("resolved.conf");
        // The namespace's resolv.conf: resolved's stub, as on a host using
        // resolved.
        std::fs::write(
            sb.ws().etc_dir().join("resolv.conf"),
            "nameserver 127.0.0.53\noptions edns0 trust-ad timeout:2 attempts:2\n",
        )
        .expect("resolv.conf");
        let ready = dir.join("mntns-ready");
        let d = dir.display();
        let script = format!(
            "set -e\n\
             mount -t tmpfs -o mode=0755,size=8m netmux-test /run/dbus\n\
             mount -t tmpfs -o mode=0755,size=8m netmux-test /run/systemd\n\
             mkdir -p /run/systemd/resolved.conf.d\n\
             cp {d}/resolved.conf /run/systemd/resolved.conf.d/netmux-test.conf\n\
             mount --bind {d}/passwd /etc/passwd\n\
             mount --bind {d}/group /etc/group\n\
             echo ready > {}\n\
             exec sleep 900\n",
            ready.display()
        );
        // `ip netns exec` gives a mount namespace with the netns' /sys and
        // /etc/netns files; unshare makes a private one of it that stays.
        let mut holder = sb
            .process(Side::Workstation, "mntns", "unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .spawn()
            .expect("unshare");
        if let Err(e) = wait_for_file(&ready, T) {
            holder.kill();
            panic!("mount namespace not ready: {e}\n{}", holder.log());
        }
        let pid = holder.pid().expect("holder pid");
        let mntns = PathBuf::from(format!("/proc/{pid}/ns/mnt"));
        let view = PathBuf::from(format!("/proc/{pid}/root"));
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            pkg.join("usr/bin").display()
        );
        let inside = |label: &str, program: &Path| {
            sb.process(Side::Workstation, label, "nsenter")
                .arg(format!("--mount={}", mntns.display()))
                .arg("--")
                .arg(program)
                .env("PATH", &path)
        };
        let dbus = inside("dbus-daemon", Path::new("dbus-daemon"))
            .arg(format!("--config-file={d}/bus.conf"))
            .args(["--nofork", "--nopidfile"])
            .spawn()
            .expect("dbus-daemon");
        let socket = view.join("run/dbus/system_bus_socket");
        if let Err(e) = wait_until("the bus socket", T, || socket.exists()) {
            panic!("dbus-daemon did not start: {e}\n{}", dbus.log());
        }
        let resolved = inside(
            "systemd-resolved",
            &pkg.join("lib/systemd/systemd-resolved"),
        )
        .env("SYSTEMD_LOG_TARGET", "console")
        .env("SYSTEMD_LOG_LEVEL", "info")
        .spawn()
        .expect("systemd-resolved");
        let upstream = inside("upstream-dns", Path::new("dnsmasq"))
            .args([
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
                "--log-queries",
                "--log-facility=-",
            ])
            .arg(format!("--listen-address={UPSTREAM}"))
            .arg(format!("--pid-file={d}/upstream.pid"))
            .arg(format!("--address=/example.test/{UPSTREAM_ADDR}"))
            .spawn()
            .expect("dnsmasq");
        let iso = Isolated {
            upstream,
            resolved,
            dbus,
            _holder: holder,
            sb,
            mntns,
            view,
            path,
        };
        let mut last = String::new();
        wait_until("systemd-resolved on the bus", T, || {
            let out = iso.run("resolvectl", &["status"]);
            last = format!("{}{}", out.stdout, out.stderr);
            out.success() && out.stdout.contains("Global")
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {last}\n--- resolved\n{}\n--- dbus\n{}",
                iso.resolved.log(),
                iso.dbus.log()
            )
        });
        iso
    }

    /// `program` inside the namespaces, with resolvectl on `PATH`.
    fn process(&self, label: &str, program: impl AsRef<std::ffi::OsStr>) -> ProcessBuilder {
        self.sb
            .process(Side::Workstation, label, "nsenter")
            .arg(format!("--mount={}", self.mntns.display()))
            .arg("--")
            .arg(program)
            .env("PATH", &self.path)
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.process(program, program)
            .args(args)
            .run(T)
            .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
    }

    /// A file of the namespace (e.g. resolved's `stub-resolv.conf`).
    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.view.join(path.trim_start_matches('/'))).unwrap_or_default()
    }

    /// What netmux may change and must put back: resolved's view
    /// (`resolvectl status`, `dns`, `domain`), the resolv.conf resolved
    /// writes, the namespace's links and hosts file.
    fn state(&self) -> String {
        let mut s = String::new();
        for args in [&["status"][..], &["dns"], &["domain"]] {
            let out = self.run("resolvectl", args);
            assert!(out.success(), "resolvectl {args:?}: {}", out.stderr);
            s.push_str(&format!(
                "--- resolvectl {}\n{}",
                args.join(" "),
                out.stdout
            ));
        }
        let links = self.sb.ws().ip(["-o", "link", "show"]).unwrap_or_default();
        let links: Vec<&str> = links
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        s.push_str(&format!(
            "--- stub-resolv.conf\n{}--- links {links:?}\n--- hosts\n{}",
            self.read("/run/systemd/resolve/stub-resolv.conf"),
            std::fs::read_to_string(self.sb.ws_hosts_file()).unwrap_or_default()
        ));
        s
    }

    /// First address `getent hosts NAME` gives, through glibc, the
    /// namespace's resolv.conf and resolved's stub.
    fn getent(&self, name: &str) -> Option<String> {
        self.getent_searching(name, None)
    }

    /// [`Self::getent`] with glibc's search list set to `search`
    /// (`LOCALDOMAIN`).
    fn getent_searching(&self, name: &str, search: Option<&str>) -> Option<String> {
        let mut p = self.process("getent", "getent").args(["hosts", name]);
        if let Some(s) = search {
            p = p.env("LOCALDOMAIN", s);
        }
        let out = p.run(T).unwrap_or_else(|e| panic!("getent {name}: {e}"));
        out.stdout.split_whitespace().next().map(str::to_owned)
    }

    /// Whether resolved has settings for the daemon's link.
    fn has_link(&self) -> bool {
        self.run("resolvectl", &["domain"])
            .stdout
            .contains(&format!("({LINK})"))
    }
}

/// netmux-server in the cluster namespace and netmuxd inside [`Isolated`].
struct Deployment<'a> {
    daemon: Process,
    _server: Process,
    layout: Layout,
    iso: &'a Isolated<'a>,
}

impl<'a> Deployment<'a> {
    fn start(sb: &Sandbox, iso: &'a Isolated<'a>, services: &[ServiceSpec]) -> Deployment<'a> {
        let layout = Layout::new(sb);
        for s in services {
            sb.add_service_address(s.address).expect("service address");
        }
        std::fs::write(&layout.services_file, services_toml(services)).expect("services");
        std::fs::write(&layout.server_config, layout.server_toml()).expect("server.toml");
        let extra = format!(
            "redirect = \"loopback\"\n\
             dns = {{ listen = \"{DNS}:53\", method = \"resolved\", link = \"{LINK}\" }}\n"
        );
        // The endpoint table comes last: short names resolve in `demo`.
        let toml = layout.daemon_toml(&sb.ws_hosts_file(), TOKEN, &extra)
            + "default_namespace = \"demo\"\n";
        std::fs::write(&layout.daemon_config, toml).expect("daemon.toml");
        let server = netmux_testbed::netmux::start_server(sb, &layout).expect("netmux-server");
        let daemon = iso
            .process("netmuxd", bin("netmuxd").expect("bin"))
            .arg("--config")
            .arg(&layout.daemon_config)
            .env("RUST_LOG", "info,netmux_daemon::dns=debug")
            .spawn()
            .expect("netmuxd");
        let d = Deployment {
            daemon,
            _server: server,
            layout,
            iso,
        };
        d.wait_for_socket();
        d
    }

    fn wait_for_socket(&self) {
        wait_until("netmuxd's socket", T, || self.cli(&["status"]).success())
            .unwrap_or_else(|e| panic!("netmuxd did not start: {e}\n{}", self.daemon.log()));
    }

    /// `netmux ARGS` inside [`Isolated`] (`cleanup` without a daemon runs
    /// resolvectl itself).
    fn cli(&self, args: &[&str]) -> Output {
        self.iso
            .process("netmux-cli", bin("netmux").expect("bin"))
            .arg("--socket")
            .arg(&self.layout.socket)
            .arg("--config")
            .arg(&self.layout.daemon_config)
            .args(args)
            .run(T)
            .unwrap_or_else(|e| panic!("netmux {args:?}: {e}"))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.success(),
            "netmux {args:?}: {}{}\n--- netmuxd\n{}",
            out.stdout,
            out.stderr,
            self.daemon.log()
        );
        out.stdout
    }

    /// Connects, starts `web` and waits until resolved routes the cluster
    /// domain to the daemon.
    fn connect_and_start_web(&self) {
        self.ok(&["connect", ENDPOINT]);
        let mut last = String::new();
        wait_until("the catalog", T, || {
            last = self.cli(&["ls", "--output", "json"]).stdout;
            last.contains("demo/web")
        })
        .unwrap_or_else(|e| panic!("{e}: {last}"));
        self.ok(&["start", ENDPOINT, "web"]);
        // The status line changes once every resolvectl command is done.
        let routed = format!("split DNS on link {LINK} -> {DNS}:53 for cluster.local");
        let mut last = String::new();
        wait_until("the daemon to configure resolved", T, || {
            last = self.cli(&["status"]).stdout;
            last.contains(&routed)
        })
        .unwrap_or_else(|e| panic!("{e}: {last}\n--- netmuxd\n{}", self.daemon.log()));
        assert!(self.iso.has_link());
    }
}

#[test]
fn resolved_split_dns_routes_the_cluster_domain_to_the_daemon_and_cleanup_restores_it() {
    if !netmux_testbed::prereq::require(
        "resolved_e2e::resolved_split_dns_routes_the_cluster_domain_to_the_daemon_and_cleanup_restores_it",
        netmux_testbed::prereq::root(),
    ) {
        return;
    }
    let pkg = extracted_resolved().unwrap_or_else(|e| {
        panic!("cannot get systemd-resolved's binaries (apt-get download): {e}")
    });
    let sb = Sandbox::new().expect("sandbox");
    let iso = Isolated::start(&sb, &pkg);

    // The user's DNS works through resolved before netmux runs; the state
    // after that first lookup is what netmux must leave behind.
    assert_eq!(
        iso.getent(UPSTREAM_NAME).as_deref(),
        Some(UPSTREAM_ADDR),
        "upstream through resolved\n--- resolved\n{}\n--- upstream\n{}",
        iso.resolved.log(),
        iso.upstream.log()
    );
    let before = iso.state();
    eprintln!("resolved before netmux:\n{before}");
    assert!(!iso.has_link(), "{before}");

    let web = ServiceSpec::l2c("web", "10.96.0.20".parse().expect("ip"), 80, 8080);
    let mut nm = Deployment::start(&sb, &iso, std::slice::from_ref(&web));
    let _backend = sb
        .nx_echo(Side::Cluster, "echo-web", "http", web.target(), T)
        .expect("backend up");
    nm.connect_and_start_web();

    // What resolved reports.
    let status = iso.run("resolvectl", &["status", LINK]).stdout;
    for want in [
        format!("({LINK})"),
        format!("DNS Servers: {DNS}"),
        "DNS Domain: demo.svc.cluster.local svc.cluster.local cluster.local".to_owned(),
        "-DefaultRoute".to_owned(),
        "-LLMNR".to_owned(),
        "-mDNS".to_owned(),
        "-DNSOverTLS".to_owned(),
        "DNSSEC=no".to_owned(),
    ] {
        assert!(
            status.contains(&want),
            "`resolvectl status {LINK}` lacks {want:?}:\n{status}"
        );
    }
    let domain = iso.run("resolvectl", &["domain"]).stdout;
    assert!(
        domain.lines().any(|l| l.contains(&format!("({LINK}):"))
            && l.ends_with("demo.svc.cluster.local svc.cluster.local cluster.local")),
        "{domain}"
    );
    let dns = iso.run("resolvectl", &["dns", LINK]).stdout;
    assert!(dns.contains(&format!("({LINK}): {DNS}")), "{dns}");
    // The stub resolv.conf that /etc/resolv.conf links to on a resolved
    // host carries the pod's search list.
    let stub = iso.read("/run/systemd/resolve/stub-resolv.conf");
    let search = stub
        .lines()
        .find_map(|l| l.strip_prefix("search "))
        .unwrap_or_else(|| panic!("no search line in stub-resolv.conf:\n{stub}"));
    assert_eq!(
        search,
        "demo.svc.cluster.local svc.cluster.local cluster.local"
    );
    let st = nm.ok(&["status"]);
    assert!(
        st.contains(&format!(
            "systemd-resolved split DNS on link {LINK} -> {DNS}:53 for cluster.local"
        )),
        "{st}"
    );

    // Names through resolved: glibc via the stub, curl, resolved's own API
    // (which applies the search list to short names).
    let addr = iso
        .getent(&web.fqdn())
        .unwrap_or_else(|| panic!("getent {}\n--- netmuxd\n{}", web.fqdn(), nm.daemon.log()));
    assert!(addr.starts_with("127.77."), "the loopback alias: {addr}");
    // resolved itself applies search domains to single-label names only
    // (nss-resolve, resolvectl); glibc, reading the stub resolv.conf's
    // search line (here through LOCALDOMAIN, since the namespace's
    // resolv.conf is a plain file), expands the others too.
    for name in [web.fqdn().as_str(), "web"] {
        let q = iso.run("resolvectl", &["query", name]);
        assert!(
            q.success() && q.stdout.contains(&addr),
            "resolvectl query {name}: {}{}",
            q.stdout,
            q.stderr
        );
    }
    for name in ["web", "web.demo", "web.demo.svc"] {
        assert_eq!(
            iso.getent_searching(name, Some(search)).as_deref(),
            Some(addr.as_str()),
            "getent {name} with the stub's search list"
        );
    }
    let url = format!("http://{}/through-resolved", web.fqdn());
    let out = iso.run("curl", &["-sS", "--max-time", "10", &url]);
    assert!(
        out.success() && out.stdout.contains("path=/through-resolved"),
        "curl {url}: {}{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(iso.getent("nope.demo.svc.cluster.local"), None);

    // Other names go upstream, never to the daemon; cluster names never
    // upstream.
    assert_eq!(iso.getent(UPSTREAM_NAME).as_deref(), Some(UPSTREAM_ADDR));
    assert_eq!(iso.getent("other.example.org"), None);
    let daemon_log = nm.daemon.log();
    assert!(
        daemon_log.contains("web.demo.svc.cluster.local"),
        "the daemon logs the queries it answers (debug):\n{daemon_log}"
    );
    for outside in ["example.test", "example.org"] {
        assert!(
            !daemon_log.contains(outside),
            "{outside} reached the daemon:\n{daemon_log}"
        );
    }
    let upstream_log = iso.upstream.log();
    assert!(
        upstream_log.contains(&format!("query[A] {UPSTREAM_NAME}")),
        "{upstream_log}"
    );
    assert!(upstream_log.contains("other.example.org"), "{upstream_log}");
    assert!(
        !upstream_log.contains("cluster.local"),
        "cluster names leaked upstream:\n{upstream_log}"
    );

    // Disconnect, then cleanup: resolved as before.
    nm.ok(&["disconnect", ENDPOINT]);
    wait_until("the link to go", T, || !iso.has_link()).expect("link removed");
    assert_eq!(iso.state(), before, "after disconnect");
    nm.ok(&["cleanup"]);
    assert_eq!(iso.state(), before, "after cleanup");
    assert_eq!(
        iso.getent(&web.fqdn()),
        None,
        "nothing routes to the daemon"
    );

    // A crash leaves the link; the next netmuxd removes it at start.
    nm.connect_and_start_web();
    nm.daemon.kill();
    assert!(iso.has_link(), "SIGKILL leaves the link behind");
    nm.daemon.start_again().expect("netmuxd again");
    nm.wait_for_socket();
    assert_eq!(iso.state(), before, "after a restart following SIGKILL");

    // A crash, then `netmux cleanup` without a daemon.
    nm.connect_and_start_web();
    nm.daemon.kill();
    assert!(iso.has_link(), "SIGKILL leaves the link behind");
    let out = nm.ok(&["cleanup"]);
    assert!(out.contains(LINK), "offline cleanup names the link: {out}");
    assert_eq!(iso.state(), before, "after SIGKILL and `netmux cleanup`");
    assert_eq!(iso.getent(UPSTREAM_NAME).as_deref(), Some(UPSTREAM_ADDR));
}
