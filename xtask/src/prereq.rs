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
    ("python3", "python3"),
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
