//! What `cargo xtask dist` ships, installed as users install it (issue 21):
//! the .deb (contents, lintian, `dpkg --root` install, `systemd-analyze
//! verify`, remove and purge back to the root's state before), the server
//! image in a real dockerd serving a workstation's netmuxd, and install.sh
//! from the dist directory and over HTTP, refusing bad checksums.
//!
//! Uses `$NETMUX_DIST_DIR` when set (`cargo xtask dist --check` sets it);
//! otherwise runs `cargo xtask dist` once (a release musl build: many
//! minutes the first time). Needs root, dpkg, lintian, systemd-analyze,
//! useradd, curl and Debian's docker.io. Run with `--test-threads=1`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{curl, nx_echo, sandbox, T};
use netmux_testbed::docker::{self, Dockerd, RunSpec};
use netmux_testbed::netmux::{services_toml, Layout, ServiceSpec, ENDPOINT, LOOPBACK, TOKEN};
use netmux_testbed::{prereq, wait_for_file, Side};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const PLATFORM: &str = "x86_64-linux";

fn deb_name() -> String {
    format!("netmux_{VERSION}_amd64.deb")
}

/// The dist directory, built once per test binary unless given.
fn dist() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        if let Some(d) = std::env::var_os("NETMUX_DIST_DIR") {
            return PathBuf::from(d);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_owned();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["run", "--quiet", "-p", "xtask", "--", "dist"])
            .status()
            .expect("running cargo xtask dist");
        assert!(status.success(), "cargo xtask dist failed: {status}");
        root.join("target/dist")
    })
}

fn require(test: &str, tools: &[&str]) -> bool {
    prereq::require(test, prereq::first([prereq::root(), prereq::tools(tools)]))
}

/// Runs `program args`, returning (success, stdout, stderr).
fn sh(program: impl AsRef<std::ffi::OsStr>, args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let program = program.as_ref();
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new(&$a)),*] };
}

/// A directory removed on drop, also when a test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("nx-dist-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A system root for `dpkg --root` as a Debian system with systemd has it,
/// but nothing else: dpkg's database, the account files with root only,
/// systemd's targets (from this machine, so that `systemd-analyze verify
/// --root` can resolve the unit's dependencies), its state directory and an
/// enabled unit in multi-user.target.wants (Debian enables remote-fs.target).
fn fresh_root(dir: &Path) -> PathBuf {
    let r = dir.join("root");
    for d in [
        "etc/systemd/system/multi-user.target.wants",
        "usr/lib/systemd/system",
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "var/lib/systemd",
        "var/log",
        "tmp",
    ] {
        std::fs::create_dir_all(r.join(d)).expect("mkdir");
    }
    for (f, text, mode) in [
        ("var/lib/dpkg/status", "", 0o644),
        ("var/lib/dpkg/available", "", 0o644),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
        ("etc/group", "root:x:0:\n", 0o644),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n", 0o640),
        ("etc/gshadow", "root:*::\n", 0o640),
    ] {
        std::fs::write(r.join(f), text).expect("write");
        std::fs::set_permissions(r.join(f), std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let units = Path::new("/usr/lib/systemd/system");
    for e in std::fs::read_dir(units).expect("this machine's systemd units") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "target") && p.is_file() {
            let name = p.file_name().expect("name");
            std::fs::copy(&p, r.join("usr/lib/systemd/system").join(name)).expect("copy target");
        }
    }
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/remote-fs.target",
        r.join("etc/systemd/system/multi-user.target.wants/remote-fs.target"),
    )
    .expect("symlink");
    r
}

/// Every path under `root` with its type, mode, owner and content.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            let m = std::fs::symlink_metadata(&p).expect("stat");
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let what = if m.file_type().is_symlink() {
                format!(
                    "link {}",
                    std::fs::read_link(&p).expect("readlink").display()
                )
            } else if m.is_dir() {
                todo.push(p.clone());
                "dir".to_owned()
            } else {
                let bytes = std::fs::read(&p).expect("read");
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&bytes, &mut h);
                format!("file {} {:x}", bytes.len(), std::hash::Hasher::finish(&h))
            };
            out.insert(
                rel,
                format!("{what} {:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid()),
            );
        }
    }
    out
}

/// Paths whose state differs between two snapshots, leaving out dpkg's own
/// database and log (checked by [`assert_not_in_dpkg_db`]) and the backup
/// and lock files the shadow tools and systemd-sysusers leave next to
/// /etc/passwd (`passwd-`, `.pwd.lock`; on every Debian system).
fn diff(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    let ignored = |p: &str| {
        p.starts_with("var/lib/dpkg")
            || p == "var/log/dpkg.log"
            || p == "etc/.pwd.lock"
            || (p.starts_with("etc/") && p.ends_with('-') && !p[4..].contains('/'))
    };
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !ignored(k) && before.get(*k) != after.get(*k))
        .map(|k| format!("{k}: {:?} -> {:?}", before.get(k), after.get(k)))
        .collect()
}

fn assert_not_in_dpkg_db(root: &Path) {
    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).expect("status");
    assert!(
        !status.lines().any(|l| l == "Package: netmux"),
        "dpkg still lists netmux after purge:\n{status}"
    );
    let info: Vec<String> = std::fs::read_dir(root.join("var/lib/dpkg/info"))
        .expect("info")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("netmux."))
        .collect();
    assert!(info.is_empty(), "dpkg info files left: {info:?}");
}

fn dpkg(root: &Path, action: &[&str]) {
    let root_arg = format!("--root={}", root.display());
    let mut args = vec![root_arg.as_str(), "--force-script-chrootless"];
    args.extend(action);
    let out = Command::new("dpkg")
        .args(&args)
        .output()
        .expect("running dpkg");
    assert!(
        out.status.success(),
        "dpkg {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// What an installed package (or `netmux install`) must have put into
/// `root`, with binaries under `bindir`.
fn assert_installed(root: &Path, bindir: &str, unit: &str) {
    let netmuxd = root.join(bindir).join("netmuxd");
    let (ok, out, err) = sh(&netmuxd, args!["--build-info"]);
    assert!(
        ok && out.contains("ebpf=real"),
        "{} --build-info: {out}{err}",
        netmuxd.display()
    );
    let (ok, out, err) = sh(root.join(bindir).join("netmux"), args!["--help"]);
    assert!(ok && out.contains("connect"), "netmux --help: {out}{err}");
    let passwd = read(root, "etc/passwd");
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("netmuxd:") && l.ends_with(":/usr/sbin/nologin")),
        "no netmuxd system user:\n{passwd}"
    );
    let group = read(root, "etc/group");
    assert!(
        group
            .lines()
            .any(|l| l.starts_with("netmux:") && l.ends_with("netmuxd")),
        "no netmux group with netmuxd in it:\n{group}"
    );
    let unit_text = read(root, unit);
    assert!(
        unit_text.contains(&format!(
            "ExecStart=/{bindir}/netmuxd --config /etc/netmux/config.toml"
        )),
        "{unit_text}"
    );
    let wants = root.join("etc/systemd/system/multi-user.target.wants/netmuxd.service");
    let target = std::fs::read_link(&wants).unwrap_or_else(|e| panic!("{}: {e}", wants.display()));
    assert_eq!(target, Path::new("/").join(unit), "enable link");
    assert!(read(root, "etc/netmux/config.toml").contains("socket_group = \"netmux\""));
}

#[test]
fn deb_contents_lintian_dpkg_root_verify_remove_and_purge() {
    if !require(
        "dist_e2e::deb",
        &[
            "dpkg",
            "dpkg-deb",
            "lintian",
            "systemd-analyze",
            "systemd-sysusers",
            "userdel",
        ],
    ) {
        return;
    }
    let deb = dist().join(deb_name());

    // Metadata: static binaries need no library packages.
    let (ok, fields, err) = sh(
        "dpkg-deb",
        args![
            "--field",
            deb,
            "Package",
            "Version",
            "Architecture",
            "Depends"
        ],
    );
    assert!(ok, "dpkg-deb --field: {err}");
    assert!(fields.contains("Package: netmux\n"), "{fields}");
    assert!(
        fields.contains(&format!("Version: {VERSION}\n")),
        "{fields}"
    );
    assert!(fields.contains("Architecture: amd64\n"), "{fields}");
    assert!(
        !fields.contains("Depends"),
        "no dependencies expected: {fields}"
    );
    let (_, conffiles, _) = sh("dpkg-deb", args!["--info", deb, "conffiles"]);
    assert_eq!(conffiles.trim(), "/etc/netmux/config.toml");

    // Contents, all owned by root.
    let (ok, listing, err) = sh("dpkg-deb", args!["--contents", deb]);
    assert!(ok, "dpkg-deb --contents: {err}");
    for want in [
        "./usr/bin/netmux",
        "./usr/bin/netmuxd",
        "./usr/lib/systemd/system/netmuxd.service",
        "./usr/lib/sysusers.d/netmux.conf",
        "./etc/netmux/config.toml",
        "./usr/share/man/man1/netmux.1.gz",
        "./usr/share/man/man1/netmux-connect.1.gz",
        "./usr/share/man/man8/netmuxd.8.gz",
        "./usr/share/bash-completion/completions/netmux",
        "./usr/share/zsh/vendor-completions/_netmux",
        "./usr/share/fish/vendor_completions.d/netmux.fish",
        "./usr/share/doc/netmux/copyright",
        "./usr/share/doc/netmux/changelog.gz",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {want}"))),
            "{want} not in the package:\n{listing}"
        );
    }
    assert!(
        listing.lines().all(|l| l.contains(" root/root ")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" ./usr/bin/netmuxd")),
        "{listing}"
    );

    // lintian: no errors (warnings are printed for the reader).
    let (ok, out, err) = sh(
        "lintian",
        args!["--fail-on", "error", "--tag-display-limit", "0", deb],
    );
    println!("lintian:\n{out}{err}");
    assert!(ok, "lintian reports errors:\n{out}{err}");
    assert!(!out.lines().any(|l| l.starts_with("E:")), "{out}");

    // Install into an empty root.
    let tmp = TempDir::new("deb");
    let root = fresh_root(&tmp.0);
    let before = snapshot(&root);
    dpkg(&root, &["--install", deb.to_str().expect("utf-8 path")]);
    assert_installed(&root, "usr/bin", "usr/lib/systemd/system/netmuxd.service");
    let (_, status, _) = sh(
        "dpkg",
        args![format!("--root={}", root.display()), "--status", "netmux"],
    );
    assert!(status.contains("Status: install ok installed"), "{status}");

    // The unit as systemd reads it, with its binaries in that root.
    let (ok, out, err) = sh(
        "systemd-analyze",
        args![
            "verify",
            format!("--root={}", root.display()),
            "--man=no",
            root.join("usr/lib/systemd/system/netmuxd.service")
        ],
    );
    assert!(
        ok && !err.contains("netmuxd.service:"),
        "systemd-analyze verify:\n{out}{err}"
    );

    // remove: only the configuration and the accounts stay.
    dpkg(&root, &["--remove", "netmux"]);
    let after_remove = snapshot(&root);
    let d = diff(&before, &after_remove);
    let expected = [
        "etc/group",
        "etc/gshadow",
        "etc/netmux",
        "etc/netmux/config.toml",
        "etc/passwd",
        "etc/shadow",
    ];
    let changed: Vec<&str> = d
        .iter()
        .map(|l| l.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        changed,
        expected,
        "after remove, unexpected differences:\n{}",
        d.join("\n")
    );

    // purge: the root is as it was.
    dpkg(&root, &["--purge", "netmux"]);
    let d = diff(&before, &snapshot(&root));
    assert!(
        d.is_empty(),
        "after purge the root differs:\n{}",
        d.join("\n")
    );
    assert_not_in_dpkg_db(&root);
}

/// The files of the image's only layer.
fn image_layer_listing(image: &Path, tmp: &Path) -> Vec<String> {
    let x = tmp.join("image");
    std::fs::create_dir_all(&x).expect("mkdir");
    let (ok, _, err) = sh("tar", args!["-xf", image, "-C", x]);
    assert!(ok, "tar -x: {err}");
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&x, "manifest.json")).expect("manifest.json");
    let layers = manifest[0]["Layers"].as_array().expect("Layers");
    assert_eq!(layers.len(), 1, "{manifest}");
    let layer = x.join(layers[0].as_str().expect("layer path"));
    let (ok, list, err) = sh("tar", args!["-tvf", layer]);
    assert!(ok, "tar -t: {err}");
    for l in list.lines() {
        assert!(l.contains(" 0/0 "), "not owned by root: {l}");
    }
    let mut names: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    names.sort();
    names
}

#[test]
fn image_loads_into_dockerd_and_serves_a_workstation_daemon() {
    if !prereq::require("dist_e2e::image", docker::missing()) {
        return;
    }
    let image = dist().join(format!("netmux-server-{VERSION}-image.tar"));
    let reference = format!("netmux/netmux-server:{VERSION}");
    let tmp = TempDir::new("image");
    assert_eq!(
        image_layer_listing(&image, &tmp.0),
        [
            "etc/",
            "etc/group",
            "etc/passwd",
            "etc/ssl/",
            "etc/ssl/certs/",
            "etc/ssl/certs/ca-certificates.crt",
            "usr/",
            "usr/local/",
            "usr/local/bin/",
            "usr/local/bin/netmux-server",
        ]
    );

    let sb = sandbox();
    let svc = ServiceSpec::l2c("http-echo", "10.96.0.10".parse().expect("ip"), 80, 8080);
    sb.add_service_address(svc.address)
        .expect("service address");
    let _backend = nx_echo(&sb, Side::Cluster, "http-echo", "http", svc.target());

    let d = Dockerd::start(sb.cluster(), sb.dir()).expect("starting dockerd");
    let loaded = d.load_image(&image).expect("docker load");
    assert!(
        loaded.contains(&format!("Loaded image: {reference}")),
        "{loaded}"
    );
    assert_eq!(
        d.inspect(&reference, "{{.Config.User}}").expect("inspect"),
        "65532:65532"
    );
    assert_eq!(
        d.inspect(
            &reference,
            "{{index .Config.Labels \"org.opencontainers.image.version\"}}"
        )
        .expect("inspect"),
        VERSION
    );

    // The server's config and state, mounted; state writable by 65532 only.
    let etc = sb.dir().join("image-etc");
    let state = sb.dir().join("image-state");
    std::fs::create_dir_all(&etc).expect("mkdir");
    std::fs::create_dir_all(&state).expect("mkdir");
    std::os::unix::fs::chown(&state, Some(65532), Some(65532)).expect("chown");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::write(
        etc.join("server.toml"),
        format!(
            "listen = \"0.0.0.0:7443\"\nhttp = \"0.0.0.0:7080\"\nstate_dir = \"/var/lib/netmux\"\n\
             server_names = [\"netmux-server\"]\n\n[[token]]\nname = \"alice\"\ntoken = \"{TOKEN}\"\n\n\
             [runtime]\nkind = \"static\"\nservices = \"/etc/netmux/services.toml\"\n"
        ),
    )
    .expect("server.toml");
    std::fs::write(
        etc.join("services.toml"),
        services_toml(std::slice::from_ref(&svc)),
    )
    .expect("services.toml");
    for f in ["server.toml", "services.toml"] {
        std::fs::set_permissions(etc.join(f), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // A bridge network in the cluster namespace; the workstation routes to
    // it through the cluster end of the veth.
    let subnet = format!("172.31.{}.0/24", sb.subnet());
    let net = d.create_network("nxdist", &subnet).expect("network");
    let server_ip: IpAddr = format!("172.31.{}.10", sb.subnet()).parse().expect("ip");
    let container = d
        .run(
            &RunSpec::new(&reference)
                .name("netmux-server")
                .network(&net.name)
                .ip(server_ip)
                .env("RUST_LOG", "info")
                .option(&format!("--volume={}:/etc/netmux:ro", etc.display()))
                .option(&format!("--volume={}:/var/lib/netmux", state.display())),
        )
        .expect("docker run");
    sb.ws()
        .ip([
            "route",
            "add",
            &subnet,
            "via",
            &sb.cluster_addr().to_string(),
        ])
        .expect("route to the docker network");
    let ca = state.join("ca.pem");
    if let Err(e) = wait_for_file(&ca, T) {
        let logs = d
            .docker(["logs", &container.id])
            .map(|o| o.stdout + &o.stderr);
        panic!("the server in the container wrote no CA: {e}\n{logs:?}");
    }
    // It runs as 65532, not root (the image has no shell: ask the kernel).
    let pid = d
        .inspect(&container.id, "{{.State.Pid}}")
        .expect("inspect pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let uids = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or_default();
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65532"; 4],
        "{uids}"
    );

    // netmuxd (the dist binary) in the workstation namespace.
    let mut layout = Layout::new(&sb);
    layout.quic = SocketAddr::new(server_ip, 7443);
    layout.state_dir = state.clone();
    std::fs::write(
        &layout.daemon_config,
        layout.daemon_toml(&sb.ws_hosts_file(), TOKEN, LOOPBACK),
    )
    .expect("daemon.toml");
    let netmux = dist().join(format!("netmux-{PLATFORM}"));
    let _daemon = sb
        .process(
            Side::Workstation,
            "netmuxd",
            dist().join(format!("netmuxd-{PLATFORM}")),
        )
        .arg("--config")
        .arg(&layout.daemon_config)
        .spawn()
        .expect("netmuxd");
    netmux_testbed::wait_until("netmuxd's socket", T, || layout.socket.exists()).expect("socket");
    let cli = |args: &[&str]| {
        let out = sb
            .process(Side::Workstation, "netmux", &netmux)
            .arg("--socket")
            .arg(&layout.socket)
            .args(args)
            .run(T)
            .expect("netmux");
        assert!(
            out.success(),
            "netmux {args:?}: {}{}",
            out.stdout,
            out.stderr
        );
        out
    };
    cli(&["connect", ENDPOINT]);
    cli(&["start", ENDPOINT, "+"]);
    let mut last = None;
    let reached = netmux_testbed::wait_until("the service through the image", T, || {
        let out = curl(
            &sb,
            Side::Workstation,
            "http://http-echo.demo.svc.cluster.local/via-image",
        );
        let ok = out.success() && out.stdout.contains("path=/via-image");
        last = Some(out);
        ok
    });
    if reached.is_err() {
        sb.dump_logs(40);
        let logs = d
            .docker(["logs", &container.id])
            .map(|o| o.stdout + &o.stderr);
        panic!("no answer through the containerized server: {last:?}\nserver: {logs:?}");
    }
    let out = last.expect("curl output");
    println!(
        "{loaded}; through the image's server: {}",
        out.stdout.trim()
    );
    assert!(
        out.stdout.starts_with("hello from nx-echo"),
        "{}",
        out.stdout
    );
}

/// Serves `dir` over HTTP on 127.0.0.1 (GET only) until dropped.
struct FileServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl FileServer {
    fn start(dir: &Path) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, flag) = (dir.to_owned(), stop.clone());
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => serve(&dir, s),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        FileServer { addr, stop }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(dir: &Path, stream: std::net::TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Headers up to the blank line.
    let mut h = String::new();
    while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
        h.clear();
    }
    let name = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/');
    let file = (!name.contains('/') && !name.is_empty()).then(|| dir.join(name));
    let mut w = &stream;
    match file.and_then(|f| std::fs::File::open(f).ok()) {
        Some(mut f) => {
            let mut body = Vec::new();
            let _ = f.read_to_end(&mut body);
            let _ = write!(
                w,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = w.write_all(&body);
        }
        None => {
            let _ = w.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        }
    }
}

/// `sh install.sh ARGS` from the dist directory.
fn install_sh(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let script = dist().join("install.sh");
    let mut all: Vec<&std::ffi::OsStr> = vec![script.as_os_str()];
    all.extend(args);
    sh("sh", &all)
}

#[test]
fn install_sh_from_dist_and_url_refuses_any_mismatch() {
    if !require(
        "dist_e2e::install_sh",
        &["dpkg", "curl", "useradd", "systemctl", "sha256sum"],
    ) {
        return;
    }
    let dist = dist();

    // The .deb path (dpkg exists here), from the directory.
    let tmp = TempDir::new("install-sh");
    let root = fresh_root(&tmp.0.join("deb"));
    let before = snapshot(&root);
    let (ok, out, err) = install_sh(args!["--root", root, dist]);
    assert!(ok, "install.sh (deb): {out}{err}");
    assert!(out.contains(&format!("installed {}", deb_name())), "{out}");
    assert_installed(&root, "usr/bin", "usr/lib/systemd/system/netmuxd.service");
    dpkg(&root, &["--purge", "netmux"]);
    assert!(diff(&before, &snapshot(&root)).is_empty());

    // The binaries path (as where there is no dpkg), from a URL.
    let server = FileServer::start(dist);
    let url = format!("http://{}/", server.addr);
    let root = fresh_root(&tmp.0.join("bin"));
    let (ok, out, err) = install_sh(args!["--method", "binaries", "--root", root, url]);
    assert!(ok, "install.sh (binaries, URL): {out}{err}");
    assert_installed(&root, "usr/local/bin", "etc/systemd/system/netmuxd.service");
    assert!(root.join("etc/netmux/install-manifest.json").is_file());

    // A corrupted file: refused before anything is installed.
    let bad = tmp.0.join("bad-dist");
    std::fs::create_dir_all(&bad).expect("mkdir");
    for e in std::fs::read_dir(dist).expect("dist") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, bad.join(p.file_name().expect("name"))).expect("copy");
    }
    for (victim, method) in [
        (deb_name(), "deb"),
        (format!("netmuxd-{PLATFORM}"), "binaries"),
    ] {
        let path = bad.join(&victim);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let root = fresh_root(&tmp.0.join(format!("bad-{method}")));
        let before = snapshot(&root);
        let (ok, out, err) = install_sh(args!["--method", method, "--root", root, bad]);
        assert!(!ok, "install.sh accepted a corrupted {victim}: {out}{err}");
        assert!(
            err.contains(&format!("checksum mismatch for {victim}"))
                && err.contains("nothing was installed"),
            "{err}"
        );
        assert!(
            diff(&before, &snapshot(&root)).is_empty(),
            "{method}: the root changed"
        );
    }

    // SHA256SUMS pinned to another hash; an architecture without a build.
    let root = fresh_root(&tmp.0.join("pin"));
    let (ok, _, err) = install_sh(args!["--sha256sums", "0".repeat(64), "--root", root, dist]);
    assert!(
        !ok && err.contains("checksum mismatch for SHA256SUMS"),
        "{err}"
    );
    let (ok, _, err) = install_sh(args!["--arch", "aarch64", "--root", root, dist]);
    assert!(!ok && err.contains("no build for aarch64"), "{err}");
    let (ok, _, err) = install_sh(args!["--arch", "mips", "--root", root, dist]);
    assert!(
        !ok && err.contains("unsupported architecture mips"),
        "{err}"
    );
}
