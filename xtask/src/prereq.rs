//! Installing what a fresh Debian machine lacks for the tests.

use std::process::Command;

use anyhow::Context;

use crate::util::{on_path, run, succeeds};

/// Commands the tests and the demo use, with the Debian package providing
/// each.
const COMMANDS: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("iperf3", "iperf3"),
    ("socat", "socat"),
    ("dig", "dnsutils"),
    ("busybox", "busybox-static"),
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("bpftool", "bpftool"),
    ("dnsmasq", "dnsmasq-base"),
    ("dbus-daemon", "dbus-daemon"),
    ("python3", "python3"),
    // `kubectl kustomize` for netmux-server/tests/manifests.rs.
    ("kubectl", "kubernetes-client"),
    // The Docker runtime's tests and `cargo xtask demo --runtime docker`
    // (a private dockerd, Podman's Docker API), the TLS test's certificates,
    // and the .deb checks of `cargo xtask dist --check`.
    ("dockerd", "docker.io"),
    ("podman", "podman"),
    ("openssl", "openssl"),
    ("lintian", "lintian"),
    // systemd-analyze verify of the unit, systemd-journald and journalctl
    // for netmux-daemon/tests/journal_e2e.rs (both skip without them).
    ("systemd-analyze", "systemd"),
    // `cargo xtask dist` (run by netmux-testbed/tests/dist_e2e.rs): the
    // static musl build links with musl-gcc.
    ("musl-gcc", "musl-tools"),
];

/// Packages checked with dpkg-query (libraries for bpf-linker).
const PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev"];

fn is_root() -> bool {
    nix_like_geteuid() == 0
}

fn nix_like_geteuid() -> u32 {
    // `id -u` keeps xtask free of libc bindings.
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u32::MAX)
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs missing system packages, nightly's rust-src and bpf-linker
/// (the eBPF crate's toolchain).
pub fn install() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = COMMANDS
        .iter()
        .filter(|(cmd, _)| !on_path(cmd) && !on_path_sbin(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if !on_path("bpf-linker") {
        missing.extend(PACKAGES.iter().filter(|p| !dpkg_installed(p)));
    }
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        if !is_root() {
            println!("xtask: not root, not installing {missing:?}; tests needing them will fail");
        } else {
            println!("==> installing {}", missing.join(" "));
            run(Command::new("apt-get").arg("update"))?;
            run(Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"))
            .context("apt-get install")?;
        }
    }
    if is_root() {
        // Not fatal: only the resolved end-to-end test needs it, and it
        // says why it cannot run.
        if let Err(e) = fetch_resolved() {
            println!("xtask: cannot fetch systemd-resolved for the tests: {e:#}");
        }
    }
    let has_rust_src = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("rust-src"));
    if !has_rust_src {
        println!("==> rustup component add rust-src --toolchain nightly");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if !on_path("bpf-linker") && !succeeds(Command::new("bpf-linker").arg("--version")) {
        println!("==> cargo install bpf-linker (llvm-22)");
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
    }
    Ok(())
}

/// Whether `cmd` is in an sbin dir root's PATH may lack in CI.
fn on_path_sbin(cmd: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(cmd).is_file())
}

/// Where the resolved end-to-end test (netmux-daemon/tests/resolved_e2e.rs)
/// finds systemd-resolved's binaries.
const RESOLVED_CACHE: &str = "/var/cache/netmux-test";

/// Extracts Debian's systemd-resolved package, of the installed
/// libsystemd-shared's version, into [`RESOLVED_CACHE`] without installing
/// it: installing it would take over the machine's /etc/resolv.conf. The
/// test runs it in private namespaces.
fn fetch_resolved() -> anyhow::Result<()> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "libsystemd-shared"])
        .output()
        .context("dpkg-query")?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    anyhow::ensure!(
        out.status.success() && !version.is_empty(),
        "libsystemd-shared is not installed"
    );
    let cache = std::path::Path::new(RESOLVED_CACHE);
    let dir = cache.join(format!("systemd-resolved_{}", version.replace(':', "_")));
    if dir.join("lib/systemd/systemd-resolved").is_file() {
        return Ok(());
    }
    println!("==> apt-get download systemd-resolved={version} (extracted, not installed)");
    let tmp = cache.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = (|| {
        run(Command::new("apt-get")
            .args(["download", &format!("systemd-resolved={version}")])
            .current_dir(&tmp))?;
        let deb = std::fs::read_dir(&tmp)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("apt-get download left no .deb")?;
        let root = tmp.join("root");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        std::fs::rename(&root, &dir).with_context(|| format!("renaming to {}", dir.display()))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// What the built `netmuxd` embeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EbpfBuild {
    /// The real eBPF programs.
    Real,
    /// The empty stub, with build.rs's reason.
    Stub(String),
}

/// Whether the eBPF toolchain (bpf-linker, nightly with rust-src) is here.
pub fn ebpf_toolchain_present() -> bool {
    on_path("bpf-linker")
        && Command::new("rustup")
            .args(["component", "list", "--toolchain", "nightly", "--installed"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("rust-src"))
}

/// Asks `$CARGO_TARGET_DIR` (or `target`)`/<profile>/netmuxd --build-info` what it embeds, and fails
/// when it is the stub although the toolchain is present: such a daemon
/// would silently fall back to loopback and eBPF tests would not run.
pub fn check_daemon_ebpf(profile: &str) -> anyhow::Result<EbpfBuild> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::util::root().join("target"));
    let bin = target.join(profile).join("netmuxd");
    let out = Command::new(&bin)
        .arg("--build-info")
        .output()
        .with_context(|| format!("running {} --build-info", bin.display()))?;
    let info = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    anyhow::ensure!(
        out.status.success(),
        "{} --build-info failed: {info}{}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let build = match info.split_once("ebpf=") {
        Some((_, "real")) => EbpfBuild::Real,
        Some((_, stub)) => EbpfBuild::Stub(stub.trim_start_matches("stub: ").to_owned()),
        None => anyhow::bail!("{} --build-info said {info:?}", bin.display()),
    };
    if let EbpfBuild::Stub(why) = &build {
        if ebpf_toolchain_present() {
            anyhow::bail!(
                "{} embeds the empty eBPF stub ({why}) although bpf-linker and nightly \
                 rust-src are installed; a stale build: run `cargo clean -p netmux-daemon` \
                 and build again (and unset NETMUX_SKIP_EBPF)",
                bin.display()
            );
        }
    }
    Ok(build)
}
