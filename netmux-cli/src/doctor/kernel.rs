//! Kernel checks: BPF support, netmuxd's capabilities, cgroup v2.

use std::path::{Path, PathBuf};

use netmux_daemon::config::RedirectMode;

use super::{Check, Status};

/// Parses `major.minor` from a kernel release (`6.1.0-18-amd64`).
pub(crate) fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Kernel support for the eBPF redirect: Linux 5.9 (connect 4.17,
/// getpeername 5.8, sock_release 5.9), the bpf() syscall, cgroup BPF.
/// `kconfig` is the kernel build config when readable.
pub(crate) fn kernel_bpf(release: &str, bpf_syscall: bool, kconfig: Option<&str>) -> Check {
    const NAME: &str = "kernel-bpf";
    let fix_kernel = "use Linux 5.9 or newer built with CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF, \
                      or set `redirect = \"loopback\"` in the config";
    match kernel_version(release) {
        Some(v) if v >= (5, 9) => {}
        Some(_) => {
            return Check::fail(
                NAME,
                format!("Linux {release} lacks the cgroup getpeername/sock_release hooks"),
                fix_kernel,
            )
        }
        None => {
            return Check::warn(
                NAME,
                format!("cannot parse kernel release {release:?}"),
                fix_kernel,
            )
        }
    }
    if !bpf_syscall {
        return Check::fail(
            NAME,
            "no bpf() syscall (/proc/sys/kernel/unprivileged_bpf_disabled is missing)",
            fix_kernel,
        );
    }
    if let Some(cfg) = kconfig {
        for opt in ["CONFIG_BPF_SYSCALL", "CONFIG_CGROUP_BPF"] {
            if !cfg.lines().any(|l| l == format!("{opt}=y")) {
                return Check::fail(NAME, format!("kernel built without {opt}"), fix_kernel);
            }
        }
    }
    Check::pass(
        NAME,
        format!("Linux {release}: bpf() and cgroup sock_addr hooks available"),
    )
}

/// Capability numbers (linux/capability.h).
pub(crate) mod cap {
    /// CAP_DAC_OVERRIDE.
    pub(crate) const DAC_OVERRIDE: u32 = 1;
    /// CAP_NET_BIND_SERVICE.
    pub(crate) const NET_BIND_SERVICE: u32 = 10;
    /// CAP_NET_ADMIN.
    pub(crate) const NET_ADMIN: u32 = 12;
    /// CAP_SYS_ADMIN.
    pub(crate) const SYS_ADMIN: u32 = 21;
    /// CAP_PERFMON.
    pub(crate) const PERFMON: u32 = 38;
    /// CAP_BPF.
    pub(crate) const BPF: u32 = 39;
}

/// `CapEff` from a `/proc/PID/status` text.
pub(crate) fn cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// What the daemon may do: from the running process (`CapEff`), else from
/// the installed unit's `AmbientCapabilities`.
pub(crate) fn capabilities(
    mode: RedirectMode,
    running: Option<(u32, u64)>,
    unit: Option<&str>,
) -> Check {
    const NAME: &str = "capabilities";
    let fix = "install the unit with `netmux install` (it grants AmbientCapabilities=CAP_BPF \
               CAP_NET_ADMIN ...), or run netmuxd as root";
    let has = |caps: u64, c: u32| caps & (1u64 << c) != 0;
    let (caps, source) = match (running, unit) {
        (Some((pid, caps)), _) => (caps, format!("netmuxd (pid {pid})")),
        (None, Some(unit)) => {
            let mut caps = 0u64;
            for l in unit
                .lines()
                .filter_map(|l| l.trim().strip_prefix("AmbientCapabilities="))
            {
                for c in l.split_whitespace() {
                    let bit = match c {
                        "CAP_DAC_OVERRIDE" => cap::DAC_OVERRIDE,
                        "CAP_NET_BIND_SERVICE" => cap::NET_BIND_SERVICE,
                        "CAP_NET_ADMIN" => cap::NET_ADMIN,
                        "CAP_SYS_ADMIN" => cap::SYS_ADMIN,
                        "CAP_PERFMON" => cap::PERFMON,
                        "CAP_BPF" => cap::BPF,
                        _ => continue,
                    };
                    caps |= 1 << bit;
                }
            }
            (caps, "the installed unit".to_owned())
        }
        (None, None) => {
            return Check::warn(
                NAME,
                "netmuxd is not running and no systemd unit is installed",
                fix,
            )
        }
    };
    // Measured (docs/install.md): loading the programs as a non-root user
    // needs CAP_PERFMON besides CAP_BPF; CAP_SYS_ADMIN covers both.
    let sys_admin = has(caps, cap::SYS_ADMIN);
    let bpf = has(caps, cap::BPF) || sys_admin;
    let perfmon = has(caps, cap::PERFMON) || sys_admin;
    let net_admin = has(caps, cap::NET_ADMIN);
    if mode != RedirectMode::Loopback && !(bpf && perfmon && net_admin) {
        let missing: Vec<&str> = [
            (!bpf, "CAP_BPF"),
            (!perfmon, "CAP_PERFMON"),
            (!net_admin, "CAP_NET_ADMIN"),
        ]
        .into_iter()
        .filter_map(|(m, n)| m.then_some(n))
        .collect();
        let status = if mode == RedirectMode::Ebpf {
            Status::Fail
        } else {
            Status::Warn
        };
        return Check {
            name: NAME.into(),
            status,
            detail: format!(
                "{source} lacks {}: the eBPF redirect cannot load{}",
                missing.join(" and "),
                if status == Status::Warn {
                    " (auto falls back to loopback)"
                } else {
                    ""
                }
            ),
            fix: Some(fix.into()),
        };
    }
    let mut notes = Vec::new();
    if !has(caps, cap::NET_BIND_SERVICE) {
        notes.push(
            "no CAP_NET_BIND_SERVICE: services on ports below 1024 (their 127.77.x.y listener, \
             with either redirect backend) and the DNS server on port 53 fail",
        );
    }
    if !has(caps, cap::DAC_OVERRIDE) {
        notes.push("no CAP_DAC_OVERRIDE: the hosts file can only be written if netmuxd owns it");
    }
    if notes.is_empty() {
        Check::pass(NAME, format!("{source} has the capabilities it needs"))
    } else {
        Check::warn(NAME, format!("{source}: {}", notes.join("; ")), fix)
    }
}

/// cgroup v2: a `cgroup2` mount in `mountinfo` containing `cgroup`.
pub(crate) fn cgroup_v2(mountinfo: &str, cgroup: &Path) -> Check {
    const NAME: &str = "cgroup-v2";
    let mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .collect();
    match mounts.iter().find(|m| cgroup.starts_with(m)) {
        Some(m) => Check::pass(
            NAME,
            format!(
                "{} is in the cgroup2 mount {}",
                cgroup.display(),
                m.display()
            ),
        ),
        None if mounts.is_empty() => Check::fail(
            NAME,
            "no cgroup2 filesystem is mounted (legacy cgroup v1 only)",
            "boot with systemd.unified_cgroup_hierarchy=1, or mount one: \
             mount -t cgroup2 none /sys/fs/cgroup; else use redirect = \"loopback\"",
        ),
        None => Check::fail(
            NAME,
            format!(
                "`cgroup` = {} is not inside a cgroup2 mount ({})",
                cgroup.display(),
                mounts
                    .iter()
                    .map(|m| m.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "set `cgroup` in the config to a directory inside the cgroup2 mount",
        ),
    }
}
