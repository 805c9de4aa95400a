//! `netmux doctor`: checks the workstation and explains, each with the fix.
//!
//! Each check is a function of plain inputs (file contents, metadata, a
//! probe's outcome) so tests exercise pass and fail without the real system;
//! [`run`] gathers the inputs from the live system and calls them.
//!
//! One module per family of checks (`kernel`, `backends`, `socket`,
//! `endpoints`, `clock`, `conflicts`, `blackout`); `render` turns them
//! into the report.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use netmux_api::StatusView;
use netmux_daemon::config::Config;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Fine.
    Pass,
    /// Works, but worth knowing (or could not be checked).
    Warn,
    /// Broken: netmux will not work as configured.
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Check {
    /// Short name (`kernel-bpf`, `endpoint dev`, ...).
    pub(crate) name: String,
    /// Outcome.
    pub(crate) status: Status,
    /// What was found.
    pub(crate) detail: String,
    /// What to do about it (for warn and fail).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fix: Option<String>,
}

impl Check {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }
    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

mod backends;
mod blackout;
mod clock;
mod conflicts;
mod endpoints;
mod kernel;
mod render;
mod socket;
#[cfg(test)]
mod tests;

pub(crate) use backends::*;
pub(crate) use clock::*;
pub(crate) use conflicts::*;
pub(crate) use endpoints::*;
pub(crate) use kernel::*;
pub(crate) use render::*;
pub(crate) use socket::*;

/// The running `netmuxd` and its effective capabilities: the one serving
/// `socket` (its pid from `SO_PEERCRED`), so that another netmuxd on the
/// machine (a second config, a test) is not mistaken for it; else the first
/// process named `netmuxd` (the socket may not be ours to connect to).
fn running_daemon(socket: &Path) -> Option<(u32, u64)> {
    socket_peer(socket)
        .and_then(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            Some((pid, cap_eff(&status)?))
        })
        .or_else(any_netmuxd)
}

/// The pid of the process listening on the unix socket `socket`.
fn socket_peer(socket: &Path) -> Option<u32> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    let creds = getsockopt(&stream, PeerCredentials).ok()?;
    u32::try_from(creds.pid()).ok().filter(|p| *p > 0)
}

/// The first process named `netmuxd` and its effective capabilities.
fn any_netmuxd() -> Option<(u32, u64)> {
    let dir = std::fs::read_dir("/proc").ok()?;
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() == "netmuxd" {
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            return Some((pid, cap_eff(&status)?));
        }
    }
    None
}

fn kernel_config(release: &str) -> Option<String> {
    if let Ok(t) = std::fs::read_to_string(format!("/boot/config-{release}")) {
        return Some(t);
    }
    None
}

/// Options for [`run`].
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Bound on each endpoint's handshake.
    pub(crate) timeout: Duration,
    /// The systemd unit to read when netmuxd is not running.
    pub(crate) unit: PathBuf,
}

/// Runs every check against the live system. `config` is the loaded
/// configuration (or why it failed to load); `status` the daemon's, if it
/// answered.
pub(crate) async fn run(
    config: Result<&Config, String>,
    config_path: &Path,
    status: Option<&StatusView>,
    opts: &Options,
) -> Vec<Check> {
    let mut out = Vec::new();
    let config = match config {
        Ok(c) => {
            out.push(Check::pass(
                "config",
                format!("{} is valid", config_path.display()),
            ));
            c
        }
        Err(e) => {
            let fix = if config_path.exists() {
                format!("fix {} (the error names the line)", config_path.display())
            } else {
                "`netmux install` writes a default one; or pass --config FILE".to_owned()
            };
            out.push(Check::fail("config", e, fix));
            return out;
        }
    };
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let kernel = kernel_bpf(
        &release,
        Path::new("/proc/sys/kernel/unprivileged_bpf_disabled").exists(),
        kernel_config(&release).as_deref(),
    );
    let unit = std::fs::read_to_string(&opts.unit).ok();
    let caps = capabilities(
        config.redirect,
        running_daemon(&config.socket),
        unit.as_deref(),
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroup = cgroup_v2(&mountinfo, &config.cgroup);
    let redirect = redirect_backend(
        config.redirect,
        &kernel,
        &caps,
        &cgroup,
        status.map(|s| s.redirect.as_str()),
    );
    out.extend([kernel, caps, cgroup, redirect]);
    out.push(dns_backend(
        &config.hosts_file,
        std::fs::read_to_string("/etc/nsswitch.conf")
            .ok()
            .as_deref(),
    ));
    out.push(dns_method(
        &config.dns,
        &netmux_daemon::system::resolver::Probe::system(),
    ));
    out.push(control_socket(&socket_facts(config)));
    for ep in &config.endpoints {
        let (p, ca) = probe(ep, opts.timeout).await;
        out.push(certificates(
            &format!("certificate {}", ep.name),
            &format!("CA of {}", ep.name),
            &pem_certs(ca.as_deref().unwrap_or_default()),
            SystemTime::now(),
        ));
        out.push(endpoint_reachability(&ep.name, &ep.describe(), &p));
        out.extend(probe_intercept_rights(ep, opts.timeout).await);
        if let Probe::Ok(_, chain) = &p {
            out.push(certificates(
                &format!("certificate {}", ep.name),
                &format!("server certificate of {}", ep.name),
                chain.get(..1).unwrap_or(&[]),
                SystemTime::now(),
            ));
        }
    }
    out.push(clock(ntp_state()));
    out.push(hosts_conflicts(
        &std::fs::read_to_string(&config.hosts_file).unwrap_or_default(),
        &config.address_range,
        &config
            .endpoints
            .iter()
            .map(|e| e.cluster_domain.clone())
            .collect::<Vec<_>>(),
    ));
    out.push(route_conflicts(
        &std::fs::read_to_string("/proc/net/route").unwrap_or_default(),
        &config.address_range,
    ));
    out.extend(blackout::checks(status));
    out
}

fn socket_facts(config: &Config) -> SocketFacts {
    let meta = std::fs::metadata(&config.socket)
        .ok()
        .map(|m| (m.file_type().is_socket(), m.mode(), m.gid()));
    let group_gid = config.socket_group.as_deref().and_then(|g| {
        nix::unistd::Group::from_name(g)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    });
    let mut gids: Vec<u32> = nix::unistd::getgroups()
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default();
    gids.push(nix::unistd::getegid().as_raw());
    SocketFacts {
        path: config.socket.clone(),
        meta,
        group_gid,
        group: config.socket_group.clone(),
        uid: nix::unistd::geteuid().as_raw(),
        gids,
        connectable: std::os::unix::net::UnixStream::connect(&config.socket).is_ok(),
    }
}
