//! `netmux doctor`: checks the workstation and explains, each with the fix.
//!
//! Each check is a function of plain inputs (file contents, metadata, a
//! probe's outcome) so tests exercise pass and fail without the real system;
//! [`run`] gathers the inputs from the live system and calls them.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use netmux_api::StatusView;

mod blackout;
use netmux_daemon::config::{Config, EndpointConfig, Ipv4Range, RedirectMode};
use netmux_daemon::system::hosts;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Pass,
    /// Works, but worth knowing (or could not be checked).
    Warn,
    /// Broken: netmux will not work as configured.
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short name (`kernel-bpf`, `endpoint dev`, ...).
    pub name: String,
    /// Outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it (for warn and fail).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
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

// ---------------------------------------------------------------- kernel BPF

/// Parses `major.minor` from a kernel release (`6.1.0-18-amd64`).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Kernel support for the eBPF redirect: Linux 5.9 (connect 4.17,
/// getpeername 5.8, sock_release 5.9), the bpf() syscall, cgroup BPF.
/// `kconfig` is the kernel build config when readable.
pub fn kernel_bpf(release: &str, bpf_syscall: bool, kconfig: Option<&str>) -> Check {
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

// -------------------------------------------------------------- capabilities

/// Capability numbers (linux/capability.h).
pub mod cap {
    /// CAP_DAC_OVERRIDE.
    pub const DAC_OVERRIDE: u32 = 1;
    /// CAP_NET_BIND_SERVICE.
    pub const NET_BIND_SERVICE: u32 = 10;
    /// CAP_NET_ADMIN.
    pub const NET_ADMIN: u32 = 12;
    /// CAP_SYS_ADMIN.
    pub const SYS_ADMIN: u32 = 21;
    /// CAP_PERFMON.
    pub const PERFMON: u32 = 38;
    /// CAP_BPF.
    pub const BPF: u32 = 39;
}

/// `CapEff` from a `/proc/PID/status` text.
pub fn cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// What the daemon may do: from the running process (`CapEff`), else from
/// the installed unit's `AmbientCapabilities`.
pub fn capabilities(mode: RedirectMode, running: Option<(u32, u64)>, unit: Option<&str>) -> Check {
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

// ------------------------------------------------------------------- cgroup

/// cgroup v2: a `cgroup2` mount in `mountinfo` containing `cgroup`.
pub fn cgroup_v2(mountinfo: &str, cgroup: &Path) -> Check {
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

// ---------------------------------------------------------------- backends

/// The redirect backend that will be used, and why.
pub fn redirect_backend(
    mode: RedirectMode,
    kernel: &Check,
    caps: &Check,
    cgroup: &Check,
    running: Option<&str>,
) -> Check {
    const NAME: &str = "redirect";
    if let Some(r) = running {
        return Check::pass(NAME, format!("netmuxd uses {r}"));
    }
    let ebpf_ok = [kernel, caps, cgroup]
        .iter()
        .all(|c| c.status == Status::Pass);
    match mode {
        RedirectMode::Loopback => Check::pass(
            NAME,
            "loopback (configured): a 127.x address per service, names in the hosts file",
        ),
        RedirectMode::Ebpf if ebpf_ok => Check::pass(NAME, "eBPF cgroup connect redirect"),
        RedirectMode::Ebpf => Check::fail(
            NAME,
            "eBPF is configured but will not load (see the checks above)",
            "fix the failing checks above, or set `redirect = \"auto\"`",
        ),
        RedirectMode::Auto if ebpf_ok => Check::pass(NAME, "eBPF (auto)"),
        RedirectMode::Auto => Check::warn(
            NAME,
            "loopback (auto: eBPF unavailable, see the checks above)",
            "fix the checks above to get the eBPF redirect (real cluster addresses work)",
        ),
    }
}

/// Names: the hosts file, which glibc only reads if `nsswitch.conf`'s
/// `hosts:` line has `files`.
pub fn dns_backend(hosts_file: &Path, nsswitch: Option<&str>) -> Check {
    const NAME: &str = "dns";
    let system = hosts_file == Path::new("/etc/hosts");
    let line = nsswitch.and_then(|t| {
        t.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .find_map(|l| l.strip_prefix("hosts:"))
            .map(str::to_owned)
    });
    match line {
        Some(l) if system && !l.split_whitespace().any(|w| w == "files") => Check::fail(
            NAME,
            format!("nsswitch.conf `hosts:{l}` does not read /etc/hosts: service names will not resolve"),
            "add `files` to the hosts: line of /etc/nsswitch.conf (e.g. `hosts: files dns`)",
        ),
        _ if !system => Check::warn(
            NAME,
            format!(
                "names go to {} (not /etc/hosts): only programs reading that file see them",
                hosts_file.display()
            ),
            "set `hosts_file = \"/etc/hosts\"` unless this is a test setup",
        ),
        _ => Check::pass(NAME, "hosts file /etc/hosts (nsswitch reads it)"),
    }
}

/// Which DNS integration the daemon will use, and whether names reach every
/// program: split DNS through systemd-resolved or `/etc/resolver` is best;
/// the hosts-file fallback only covers programs that read it.
pub fn dns_method(dns: &netmux_daemon::config::DnsConfig, probe: &netmux_daemon::system::resolver::Probe) -> Check {
    use netmux_daemon::config::DnsMethod;
    const NAME: &str = "dns-method";
    if !dns.enabled {
        return Check::warn(
            NAME,
            "embedded DNS server disabled: names only through the hosts file",
            "set `[dns] enabled = true` for cluster DNS (A/AAAA/SRV, search domains)",
        );
    }
    let (method, why) = netmux_daemon::system::resolver::choose(dns.method, probe);
    let detail = format!(
        "embedded DNS on {}; integration {method:?} ({why})",
        dns.listen
    );
    match method {
        DnsMethod::Hosts if dns.method == DnsMethod::Auto => Check::warn(
            NAME,
            detail,
            "run systemd-resolved (split DNS for the cluster domains only) for SRV records and search domains in every program",
        ),
        _ => Check::pass(NAME, detail),
    }
}

// ------------------------------------------------------------ control socket

/// What is known about the control socket and the user running doctor.
#[derive(Debug, Clone)]
pub struct SocketFacts {
    /// Socket path.
    pub path: PathBuf,
    /// `(is a socket, mode bits, gid)` if it exists.
    pub meta: Option<(bool, u32, u32)>,
    /// gid of the configured `socket_group`, if it exists.
    pub group_gid: Option<u32>,
    /// The configured `socket_group`.
    pub group: Option<String>,
    /// Running user.
    pub uid: u32,
    /// Running user's groups (primary and supplementary).
    pub gids: Vec<u32>,
    /// Whether connect() succeeded.
    pub connectable: bool,
}

/// Control socket: exists, mode 0660, the configured group, usable by us.
pub fn control_socket(f: &SocketFacts) -> Check {
    const NAME: &str = "control-socket";
    let p = f.path.display();
    if let Some(g) = &f.group {
        if f.group_gid.is_none() {
            return Check::fail(
                NAME,
                format!("socket_group {g:?} does not exist"),
                format!("create it (`netmux install` does, or groupadd --system {g})"),
            );
        }
    }
    let Some((is_socket, mode, gid)) = f.meta else {
        return Check::fail(
            NAME,
            format!("{p} does not exist: netmuxd is not running"),
            "start it: systemctl start netmuxd (see `netmux logs` if it fails)",
        );
    };
    if !is_socket {
        return Check::fail(
            NAME,
            format!("{p} is not a socket"),
            format!("remove it (rm {p}) and restart netmuxd"),
        );
    }
    if mode & 0o777 != 0o660 {
        return Check::fail(
            NAME,
            format!("{p} has mode {:o}, expected 660", mode & 0o777),
            "restart netmuxd (it sets 0660 on its socket)",
        );
    }
    if let (Some(want), Some(g)) = (f.group_gid, &f.group) {
        if gid != want {
            return Check::fail(
                NAME,
                format!("{p} belongs to gid {gid}, not {g} ({want})"),
                "restart netmuxd; its user must be a member of the socket group",
            );
        }
        if f.uid != 0 && !f.gids.contains(&want) {
            return Check::fail(
                NAME,
                format!("you (uid {}) are not in the {g} group", f.uid),
                format!("usermod -aG {g} $USER, then log in again"),
            );
        }
    }
    if !f.connectable {
        return Check::fail(
            NAME,
            format!("{p} exists but nobody answers (stale socket?)"),
            "restart netmuxd: systemctl restart netmuxd",
        );
    }
    Check::pass(NAME, format!("{p}: mode 660, you may use it"))
}

// ---------------------------------------------------------------- endpoints

/// The outcome of a QUIC handshake probe.
#[derive(Debug, Clone)]
pub enum Probe {
    /// Handshake completed in this time; the server's certificate chain.
    Ok(Duration, Vec<Vec<u8>>),
    /// No answer over UDP.
    Timeout(Duration),
    /// The server answered but TLS failed.
    Tls(String),
    /// Anything else (resolution, local setup).
    Error(String),
    /// The Kubernetes port-forward could not be opened (kubeconfig,
    /// credentials, RBAC, no ready pod).
    PortForward(String),
}

/// Reachability of an endpoint's server over UDP (a QUIC handshake).
pub fn endpoint_reachability(ep: &str, server: &str, probe: &Probe) -> Check {
    let name = format!("endpoint {ep}");
    match probe {
        Probe::Ok(rtt, _) => Check::pass(
            name,
            format!("QUIC handshake with {server} in {} ms", rtt.as_millis()),
        ),
        Probe::Timeout(t) => Check::fail(
            name,
            format!("no answer over UDP from {server} within {} s", t.as_secs()),
            "check that netmux-server runs and that UDP to that port is not blocked (firewall, \
             load balancer without UDP); `kubectl -n netmux get svc` shows its address",
        ),
        Probe::Tls(e) => Check::fail(
            name,
            format!("{server} answered but TLS failed: {e}"),
            "see the certificate check; the CA in the config must be the server's state_dir/ca.pem \
             and server_name one of its server_names",
        ),
        Probe::Error(e) => Check::fail(
            name,
            e.clone(),
            "fix `server` for this endpoint in the config",
        ),
        Probe::PortForward(e) => Check::fail(
            name,
            format!("port-forward: {e}"),
            "check the kubeconfig context (`kubectl config current-context`), that your user may \
             create pods/portforward in the server's namespace, and that a server pod is ready \
             (`kubectl -n NAMESPACE get pods -l app.kubernetes.io/name=netmux-server`); docs/kubernetes.md",
        ),
    }
}

/// Validity and expiry of the PEM certificates in `pem` at `now`; `what`
/// names them ("CA of dev").
pub fn certificates(name: &str, what: &str, ders: &[Vec<u8>], now: SystemTime) -> Check {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if ders.is_empty() {
        return Check::fail(
            name,
            format!("{what}: no certificate"),
            "put the server's state_dir/ca.pem in ca_file",
        );
    }
    let mut soonest: Option<(i64, String)> = None;
    for der in ders {
        let cert = match x509_parser::parse_x509_certificate(der) {
            Ok((_, c)) => c,
            Err(e) => {
                return Check::fail(
                    name,
                    format!("{what}: unparsable certificate: {e}"),
                    "put the server's state_dir/ca.pem in ca_file",
                )
            }
        };
        let subject = cert.subject().to_string();
        let nb = cert.validity().not_before.timestamp();
        let na = cert.validity().not_after.timestamp();
        if now < nb {
            return Check::fail(
                name,
                format!(
                    "{what} {subject} is not valid before {} (in {} s): is this clock behind?",
                    cert.validity().not_before,
                    nb - now
                ),
                "fix the clock (timedatectl set-ntp true), see the clock check",
            );
        }
        if now > na {
            return Check::fail(
                name,
                format!("{what} {subject} expired on {}", cert.validity().not_after),
                "renew it: restart netmux-server after removing the expired file from its state_dir \
                 (it issues a new one), then update ca_file",
            );
        }
        if soonest.as_ref().is_none_or(|(t, _)| na < *t) {
            soonest = Some((na, format!("{subject} until {}", cert.validity().not_after)));
        }
    }
    let Some((na, desc)) = soonest else {
        return Check::fail(name, format!("{what}: no certificate"), "set ca_file");
    };
    let days = (na - now) / 86_400;
    if days < 30 {
        Check::warn(
            name,
            format!("{what} {desc}: expires in {days} days"),
            "renew it before it expires (see docs/install.md)",
        )
    } else {
        Check::pass(name, format!("{what} {desc} ({days} days left)"))
    }
}

/// DER certificates in a PEM text.
pub fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    let mut r = pem.as_bytes();
    rustls_pemfile::certs(&mut r)
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect()
}

/// Dials the endpoint's server the way its `transport` says and completes
/// a QUIC handshake (no hello), bounded by `timeout`. Kubernetes endpoints
/// use the kubeconfig of the user running the doctor, as `netmux connect`
/// does. Returns the probe and the CA PEM it trusted.
pub async fn probe(cfg: &EndpointConfig, timeout: Duration) -> (Probe, Option<String>) {
    use netmux_daemon::config::Transport;
    let mut ca = cfg.ca_pem.clone();
    // A Kubernetes endpoint: the user's credentials first, as `netmux
    // connect` resolves them; the CA may come from the cluster.
    let link = match &cfg.kubernetes {
        None => None,
        Some(settings) => {
            let step = async {
                let link = kube_link(settings).await?;
                if ca.is_none() {
                    ca = Some(
                        link.ca_pem()
                            .await
                            .map_err(|e| Probe::PortForward(e.to_string()))?,
                    );
                }
                Ok::<_, Probe>(link)
            };
            match tokio::time::timeout(timeout, step).await {
                Ok(Ok(l)) => Some(l),
                Ok(Err(p)) => return (p, ca),
                Err(_) => {
                    return (
                        Probe::PortForward(format!(
                            "no answer from the Kubernetes API within {} s",
                            timeout.as_secs()
                        )),
                        ca,
                    )
                }
            }
        }
    };
    let Some(pem) = ca.clone() else {
        return (Probe::Error("no CA configured (ca_file)".into()), None);
    };
    let direct = match cfg.transport {
        Transport::PortForward => None,
        Transport::Quic | Transport::Tcp | Transport::Auto => {
            Some(probe_server(cfg, &pem, timeout).await)
        }
    };
    let forward = matches!(
        (&direct, cfg.transport),
        (_, Transport::PortForward) | (Some(Probe::Timeout(_) | Probe::Error(_)), Transport::Auto)
    );
    match (direct, forward, link) {
        (Some(p), false, _) => (p, ca),
        (_, true, Some(link)) => {
            let p = match tokio::time::timeout(timeout, probe_port_forward(cfg, &link, &pem)).await
            {
                Ok(p) => p,
                Err(_) => {
                    Probe::PortForward(format!("no handshake within {} s", timeout.as_secs()))
                }
            };
            (p, ca)
        }
        _ => (
            Probe::Error("transport needs [endpoint.kubernetes]".into()),
            ca,
        ),
    }
}

/// The user's credentials for a Kubernetes endpoint, resolved as
/// `netmux connect` does (plugins do not prompt here, and run off the
/// runtime so that the probe's timeout holds even if one hangs).
async fn kube_link(
    settings: &netmux_api::kube::KubeSettings,
) -> Result<netmux_daemon::cluster::forward::KubeLink, Probe> {
    let req = crate::credentials::Request {
        settings: Some(settings.clone()),
        interactive: false,
        ..Default::default()
    };
    let access = match tokio::task::spawn_blocking(move || {
        crate::credentials::resolve_as_user(&req)
    })
    .await
    {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return Err(Probe::PortForward(e.to_string())),
        Err(e) => return Err(Probe::PortForward(format!("resolving the kubeconfig: {e}"))),
    };
    netmux_daemon::cluster::forward::KubeLink::new(&access, settings.clone())
        .await
        .map_err(|e| Probe::PortForward(e.to_string()))
}

async fn probe_port_forward(
    cfg: &EndpointConfig,
    link: &netmux_daemon::cluster::forward::KubeLink,
    ca_pem: &str,
) -> Probe {
    let client = match netmux_daemon::transport::client_config(ca_pem) {
        Ok(c) => c,
        Err(e) => return Probe::Tls(e.to_string()),
    };
    let start = std::time::Instant::now();
    let forward = match link.open().await {
        Ok(f) => f,
        Err(e) => return Probe::PortForward(e.to_string()),
    };
    let pod = forward.pod.clone();
    match netmux_daemon::transport::dial_forward(forward, client, &cfg.server_name).await {
        Ok(conn) => {
            let chain = peer_chain(&conn);
            conn.close(0u32.into(), b"doctor");
            Probe::Ok(start.elapsed(), chain)
        }
        Err(e) => Probe::PortForward(format!("QUIC over the port-forward to {pod}: {e}")),
    }
}

/// A QUIC handshake with `server` over UDP (or TCP with `transport = "tcp"`).
async fn probe_server(cfg: &EndpointConfig, ca_pem: &str, timeout: Duration) -> Probe {
    let Some(name) = &cfg.server else {
        return Probe::Error("no `server` configured".into());
    };
    let server: SocketAddr = match tokio::net::lookup_host(name).await {
        Ok(mut a) => match a.next() {
            Some(a) => a,
            None => return Probe::Error(format!("{name} resolves to no address")),
        },
        Err(e) => return Probe::Error(format!("cannot resolve {name}: {e}")),
    };
    let client = match netmux_daemon::transport::client_config(ca_pem) {
        Ok(c) => c,
        Err(e) => return Probe::Tls(e.to_string()),
    };
    if matches!(cfg.transport, netmux_daemon::config::Transport::Tcp) {
        let start = std::time::Instant::now();
        let dial = netmux_daemon::transport::dial_tcp(server, client, &cfg.server_name);
        return match tokio::time::timeout(timeout, dial).await {
            Err(_) => Probe::Timeout(timeout),
            Ok(Err(e)) => Probe::Error(format!("QUIC over TCP to {server}: {e}")),
            Ok(Ok(conn)) => {
                let chain = peer_chain(&conn);
                conn.close(0u32.into(), b"doctor");
                Probe::Ok(start.elapsed(), chain)
            }
        };
    }
    let bind: SocketAddr = if server.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = match quinn::Endpoint::client(bind) {
        Ok(e) => e,
        Err(e) => return Probe::Error(format!("UDP socket: {e}")),
    };
    let start = std::time::Instant::now();
    let connecting = match endpoint.connect_with(client, server, &cfg.server_name) {
        Ok(c) => c,
        Err(e) => return Probe::Error(format!("cannot dial {server}: {e}")),
    };
    let r = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Probe::Timeout(timeout),
        Ok(Err(quinn::ConnectionError::TimedOut)) => Probe::Timeout(timeout),
        Ok(Err(e)) => Probe::Tls(e.to_string()),
        Ok(Ok(conn)) => {
            let chain = peer_chain(&conn);
            conn.close(0u32.into(), b"doctor");
            Probe::Ok(start.elapsed(), chain)
        }
    };
    endpoint.close(0u32.into(), b"");
    r
}

/// The server's certificate chain as DER, for the validity check.
fn peer_chain(conn: &quinn::Connection) -> Vec<Vec<u8>> {
    conn.peer_identity()
        .and_then(|i| {
            i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .map(|c| c.iter().map(|d| d.to_vec()).collect())
        .unwrap_or_default()
}

// -------------------------------------------------------------------- clock

/// The kernel's NTP state (`adjtimex`): `Some(synchronized)`, `maxerror` µs.
pub fn ntp_state() -> Option<(bool, i64)> {
    // SAFETY: a zeroed timex with modes = 0 only reads the state.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: tx is a valid, exclusively borrowed timex.
    let r = unsafe { libc::adjtimex(&mut tx) };
    if r < 0 {
        return None;
    }
    Some((r != libc::TIME_ERROR, tx.maxerror as i64))
}

/// Clock: synchronized (NTP) with a small error bound. Certificates are
/// checked against this clock, so skew shows up as "not yet valid".
pub fn clock(state: Option<(bool, i64)>) -> Check {
    const NAME: &str = "clock";
    let fix = "enable time synchronisation: timedatectl set-ntp true (or chrony/ntpd)";
    match state {
        None => Check::warn(NAME, "cannot read the kernel's clock state", fix),
        Some((false, _)) => Check::fail(
            NAME,
            "the clock is not synchronised (NTP): skew breaks certificate checks",
            fix,
        ),
        Some((true, maxerr)) if maxerr > 1_000_000 => Check::warn(
            NAME,
            format!("synchronised, but the error bound is {} ms", maxerr / 1000),
            fix,
        ),
        Some((true, maxerr)) => Check::pass(
            NAME,
            format!("synchronised (error bound {} ms)", maxerr / 1000),
        ),
    }
}

// ----------------------------------------------------- hosts file and routes

fn in_range(range: &Ipv4Range, a: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - range.prefix);
    u32::from(a) & mask == u32::from(range.network)
}

/// Hosts lines outside netmux's block that claim addresses of its range or
/// cluster names (`*.svc.DOMAIN`): they shadow or fight the daemon's.
pub fn hosts_conflicts(text: &str, range: &Ipv4Range, domains: &[String]) -> Check {
    const NAME: &str = "hosts-file";
    let outside = hosts::strip_block(text);
    let mut found = Vec::new();
    for line in outside.lines() {
        let l = line.split('#').next().unwrap_or("").trim();
        let mut words = l.split_whitespace();
        let Some(addr) = words.next() else { continue };
        let names: Vec<&str> = words.collect();
        let addr_conflict = addr.parse::<Ipv4Addr>().is_ok_and(|a| in_range(range, a));
        let name_conflict = names.iter().any(|n| {
            domains
                .iter()
                .any(|d| n.ends_with(&format!(".svc.{d}")) || n.ends_with(".svc"))
        });
        if addr_conflict || name_conflict {
            found.push(l.to_owned());
        }
    }
    if found.is_empty() {
        Check::pass(NAME, "no entries outside the netmux block conflict")
    } else {
        Check::fail(
            NAME,
            format!(
                "entries outside the netmux block conflict with netmux: {}",
                found.join(" | ")
            ),
            "remove them from the hosts file (they are likely left over from another tool)",
        )
    }
}

/// Routes (from `/proc/net/route`) for addresses of the range that do not
/// go to `lo`: connections to services would leave the machine.
pub fn route_conflicts(route_table: &str, range: &Ipv4Range) -> Check {
    const NAME: &str = "routes";
    let mut found = Vec::new();
    for l in route_table.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // Host-order hex of a network-order address: its native bytes are
        // the address bytes.
        let addr = |s: &str| {
            u32::from_str_radix(s, 16)
                .ok()
                .map(|v| u32::from(Ipv4Addr::from(v.to_ne_bytes())))
        };
        let (Some(dest), Some(mask)) = (addr(f[1]), addr(f[7])) else {
            continue;
        };
        if mask == 0 || f[0] == "lo" {
            continue; // the default route does not win over lo's 127/8
        }
        let rmask = u32::MAX << (32 - range.prefix);
        let common = mask & rmask;
        if dest & common == u32::from(range.network) & common {
            found.push(format!(
                "{}/{} dev {}",
                Ipv4Addr::from(dest),
                mask.count_ones(),
                f[0]
            ));
        }
    }
    if found.is_empty() {
        Check::pass(
            NAME,
            format!("{}/{} stays on lo", range.network, range.prefix),
        )
    } else {
        Check::fail(
            NAME,
            format!(
                "routes send {}/{} away from lo: {}",
                range.network,
                range.prefix,
                found.join(", ")
            ),
            "delete them (ip route del ...) or choose another address_range in the config",
        )
    }
}

// --------------------------------------------------------------- the report

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
pub struct Options {
    /// Bound on each endpoint's handshake.
    pub timeout: Duration,
    /// The systemd unit to read when netmuxd is not running.
    pub unit: PathBuf,
}

/// Runs every check against the live system. `config` is the loaded
/// configuration (or why it failed to load); `status` the daemon's, if it
/// answered.
pub async fn run(
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

/// The exit status of `netmux doctor`: 1 when any check failed, 0 when
/// every check passed or only warned.
pub fn exit_status(checks: &[Check]) -> u8 {
    u8::from(checks.iter().any(|c| c.status == Status::Fail))
}

/// Renders the report; one block per check.
pub fn render(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let tag = match c.status {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        s.push_str(&format!("[{tag}] {}: {}\n", c.name, c.detail));
        if let Some(f) = &c.fix {
            s.push_str(&format!("       fix: {f}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> Ipv4Range {
        "127.77.0.0/16".parse().expect("literal range")
    }

    #[test]
    fn kernel() {
        assert_eq!(
            kernel_bpf("6.1.0-18-amd64", true, None).status,
            Status::Pass
        );
        let full = "CONFIG_BPF_SYSCALL=y\nCONFIG_CGROUP_BPF=y\n";
        assert_eq!(kernel_bpf("6.1.0", true, Some(full)).status, Status::Pass);
        assert_eq!(
            kernel_bpf("5.4.0-150-generic", true, None).status,
            Status::Fail
        );
        assert_eq!(kernel_bpf("6.1.0", false, None).status, Status::Fail);
        let no_cg = "CONFIG_BPF_SYSCALL=y\n# CONFIG_CGROUP_BPF is not set\n";
        let c = kernel_bpf("6.1.0", true, Some(no_cg));
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("CONFIG_CGROUP_BPF") && c.fix.is_some());
    }

    #[test]
    fn caps() {
        let bits = |l: &[u32]| l.iter().fold(0u64, |a, c| a | 1 << c);
        let all = bits(&[
            cap::BPF,
            cap::PERFMON,
            cap::NET_ADMIN,
            cap::NET_BIND_SERVICE,
            cap::DAC_OVERRIDE,
        ]);
        assert_eq!(
            capabilities(RedirectMode::Ebpf, Some((7, all)), None).status,
            Status::Pass
        );
        let c = capabilities(RedirectMode::Ebpf, Some((7, bits(&[cap::NET_ADMIN]))), None);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("CAP_BPF"), "{}", c.detail);
        let c = capabilities(RedirectMode::Auto, Some((7, 0)), None);
        assert_eq!(c.status, Status::Warn);
        // From the installed unit when the daemon is not running.
        let unit = install::Layout::new("/", "/usr/local", install::Init::Systemd).unit(
            Path::new("/etc/hosts"),
            Path::new("/run/netmux/netmuxd.sock"),
        );
        assert_eq!(
            capabilities(RedirectMode::Ebpf, None, Some(&unit)).status,
            Status::Pass
        );
        let c = capabilities(RedirectMode::Ebpf, None, Some("[Service]\nUser=x\n"));
        assert_eq!(c.status, Status::Fail);
        assert_eq!(
            capabilities(RedirectMode::Ebpf, None, None).status,
            Status::Warn
        );
        assert_eq!(
            cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Some(0x1ff_ffff_ffff)
        );
    }

    use crate::install;

    const MOUNTINFO_V2: &str =
        "25 1 0:22 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n";
    const MOUNTINFO_V1: &str =
        "25 1 0:22 / /sys/fs/cgroup/cpu rw shared:9 - cgroup cgroup rw,cpu\n";

    #[test]
    fn cgroup() {
        let c = cgroup_v2(MOUNTINFO_V2, Path::new("/sys/fs/cgroup/netmux"));
        assert_eq!(c.status, Status::Pass);
        assert_eq!(
            cgroup_v2(MOUNTINFO_V1, Path::new("/sys/fs/cgroup")).status,
            Status::Fail
        );
        let c = cgroup_v2(MOUNTINFO_V2, Path::new("/tmp/cg"));
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.as_deref().is_some_and(|f| f.contains("`cgroup`")));
    }

    #[test]
    fn backends() {
        let ok = Check::pass("x", "");
        let bad = Check::fail("x", "", "");
        let r = redirect_backend(RedirectMode::Auto, &ok, &ok, &ok, None);
        assert_eq!((r.status, r.detail.as_str()), (Status::Pass, "eBPF (auto)"));
        assert_eq!(
            redirect_backend(RedirectMode::Auto, &ok, &bad, &ok, None).status,
            Status::Warn
        );
        assert_eq!(
            redirect_backend(RedirectMode::Ebpf, &bad, &ok, &ok, None).status,
            Status::Fail
        );
        assert_eq!(
            redirect_backend(RedirectMode::Loopback, &bad, &bad, &bad, None).status,
            Status::Pass
        );
        let r = redirect_backend(RedirectMode::Ebpf, &bad, &ok, &ok, Some("ebpf: attached"));
        assert!(r.detail.contains("ebpf: attached"));

        let hosts = Path::new("/etc/hosts");
        assert_eq!(
            dns_backend(hosts, Some("hosts: files mdns4_minimal dns\n")).status,
            Status::Pass
        );
        let c = dns_backend(hosts, Some("# hosts: files\nhosts: dns myhostname\n"));
        assert_eq!(c.status, Status::Fail);
        assert_eq!(dns_backend(Path::new("/tmp/h"), None).status, Status::Warn);
    }

    #[test]
    fn dns_method_pass_and_fallback() {
        use netmux_daemon::system::resolver::Probe;
        let path = std::path::Path::new("/etc/netmux/config.toml");
        let cfg = netmux_daemon::config::Config::parse(path, "").expect("empty config is valid");
        let resolved = Probe {
            resolvectl: true,
            resolved_running: true,
            system_uses_resolved: true,
            same_netns_as_init: true,
            ..Probe::default()
        };
        let c = dns_method(&cfg.dns, &resolved);
        assert_eq!(c.status, Status::Pass, "{c:?}");
        assert!(c.detail.contains("Resolved"), "{c:?}");
        let c = dns_method(&cfg.dns, &Probe::default());
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(c.detail.contains("resolvectl not installed"), "{c:?}");
    }

    fn facts() -> SocketFacts {
        SocketFacts {
            path: "/run/netmux/netmuxd.sock".into(),
            meta: Some((true, 0o140660, 990)),
            group_gid: Some(990),
            group: Some("netmux".into()),
            uid: 1000,
            gids: vec![1000, 990],
            connectable: true,
        }
    }

    #[test]
    fn socket() {
        assert_eq!(control_socket(&facts()).status, Status::Pass);
        let cases: Vec<(SocketFacts, &str)> = vec![
            (
                SocketFacts {
                    meta: None,
                    ..facts()
                },
                "systemctl start",
            ),
            (
                SocketFacts {
                    meta: Some((true, 0o140666, 990)),
                    ..facts()
                },
                "0660",
            ),
            (
                SocketFacts {
                    meta: Some((true, 0o140660, 0)),
                    ..facts()
                },
                "restart",
            ),
            (
                SocketFacts {
                    gids: vec![1000],
                    ..facts()
                },
                "usermod -aG netmux",
            ),
            (
                SocketFacts {
                    group_gid: None,
                    ..facts()
                },
                "groupadd",
            ),
            (
                SocketFacts {
                    meta: Some((false, 0o100660, 990)),
                    ..facts()
                },
                "rm ",
            ),
            (
                SocketFacts {
                    connectable: false,
                    ..facts()
                },
                "restart",
            ),
        ];
        for (f, fix) in cases {
            let c = control_socket(&f);
            assert_eq!(c.status, Status::Fail, "{f:?}");
            assert!(c.fix.as_deref().is_some_and(|x| x.contains(fix)), "{c:?}");
        }
        // root needs no group membership.
        assert_eq!(
            control_socket(&SocketFacts {
                uid: 0,
                gids: vec![0],
                ..facts()
            })
            .status,
            Status::Pass
        );
    }

    fn cert(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(vec!["netmux-server".into()]).expect("params");
        p.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().expect("key");
        p.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn certificate_validity() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000); // 2025-06
        let good = cert((2024, 1, 1), (2030, 1, 1));
        assert_eq!(certificates("c", "CA", &[good], now).status, Status::Pass);
        let c = certificates("c", "CA", &[cert((2020, 1, 1), (2024, 1, 1))], now);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("expired"), "{}", c.detail);
        let c = certificates("c", "CA", &[cert((2026, 1, 1), (2030, 1, 1))], now);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("clock"), "{}", c.detail);
        let c = certificates("c", "CA", &[cert((2024, 1, 1), (2025, 6, 20))], now);
        assert_eq!(c.status, Status::Warn);
        assert_eq!(certificates("c", "CA", &[], now).status, Status::Fail);
        assert_eq!(
            certificates("c", "CA", &[vec![1, 2, 3]], now).status,
            Status::Fail
        );
        assert!(pem_certs("no pem").is_empty());
    }

    #[test]
    fn clock_state() {
        assert_eq!(clock(Some((true, 20_000))).status, Status::Pass);
        assert_eq!(clock(Some((false, 16_000_000))).status, Status::Fail);
        assert_eq!(clock(Some((true, 5_000_000))).status, Status::Warn);
        assert_eq!(clock(None).status, Status::Warn);
    }

    #[test]
    fn hosts_file() {
        let domains = vec!["cluster.local".to_owned()];
        let clean = format!(
            "127.0.0.1 localhost\n{}\n127.77.0.1 web web.default.svc.cluster.local\n{}\n",
            hosts::BEGIN,
            hosts::END
        );
        assert_eq!(
            hosts_conflicts(&clean, &range(), &domains).status,
            Status::Pass
        );
        let c = hosts_conflicts("127.77.0.9 other\n", &range(), &domains);
        assert_eq!(c.status, Status::Fail);
        let c = hosts_conflicts(
            "10.0.0.5 db.prod.svc.cluster.local # old\n",
            &range(),
            &domains,
        );
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("db.prod"));
    }

    #[test]
    fn routes() {
        let head =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
        // default via eth0, 10.0.0.0/24 on eth0.
        let ok = format!(
            "{head}eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\neth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        );
        assert_eq!(route_conflicts(&ok, &range()).status, Status::Pass);
        // 127.77.0.0/16 routed to a tunnel device.
        let bad = format!("{ok}tun0\t00004D7F\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n");
        let c = route_conflicts(&bad, &range());
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("127.77.0.0/16 dev tun0"), "{}", c.detail);
    }

    fn opts() -> Options {
        Options {
            timeout: Duration::from_secs(1),
            unit: "/nonexistent/netmuxd.service".into(),
        }
    }

    #[tokio::test]
    async fn config_check_fails_alone_with_the_error_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "socket = \"/run/x.sock\"\nbogus_key = 1\n").expect("write");
        let err = Config::load(&path).expect_err("unknown key").to_string();
        assert!(err.contains("bogus_key"), "{err}");
        let checks = run(Err(err.clone()), &path, None, &opts()).await;
        // Nothing else is checked against a config that does not load.
        assert_eq!(checks.len(), 1, "{checks:?}");
        let c = &checks[0];
        assert_eq!((c.name.as_str(), c.status), ("config", Status::Fail));
        assert_eq!(c.detail, err);
        let fix = c.fix.as_deref().unwrap_or_default();
        assert!(fix.contains(&format!("fix {}", path.display())), "{fix}");
        assert_eq!(exit_status(&checks), 1);

        // A missing file: the fix says how to get one.
        let missing = dir.path().join("missing.toml");
        let err = Config::load(&missing).expect_err("missing").to_string();
        let checks = run(Err(err), &missing, None, &opts()).await;
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].status, Status::Fail);
        assert!(
            checks[0]
                .fix
                .as_deref()
                .is_some_and(|f| f.contains("netmux install") && f.contains("--config")),
            "{checks:?}"
        );
    }

    #[tokio::test]
    async fn config_check_passes_first_and_the_other_checks_follow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        let socket = dir.path().join("netmuxd.sock");
        let text = format!(
            "socket = {:?}\nredirect = \"loopback\"\n",
            socket.display().to_string()
        );
        std::fs::write(&path, &text).expect("write");
        let config = Config::load(&path).expect("valid config");
        let checks = run(Ok(&config), &path, None, &opts()).await;
        let c = &checks[0];
        assert_eq!(
            (c.name.as_str(), c.status),
            ("config", Status::Pass),
            "{c:?}"
        );
        assert_eq!(c.detail, format!("{} is valid", path.display()));
        assert!(c.fix.is_none());
        for name in [
            "kernel-bpf",
            "capabilities",
            "redirect",
            "control-socket",
            "routes",
        ] {
            assert!(
                checks.iter().any(|c| c.name == name),
                "{name} missing: {checks:?}"
            );
        }
        // No daemon serves the socket: that check fails, and so does doctor.
        let sock = checks
            .iter()
            .find(|c| c.name == "control-socket")
            .expect("checked");
        assert_eq!(sock.status, Status::Fail, "{sock:?}");
        assert_eq!(exit_status(&checks), 1);
    }

    #[test]
    fn exit_status_is_1_only_when_a_check_fails() {
        assert_eq!(exit_status(&[]), 0);
        let pass = Check::pass("a", "");
        let warn = Check::warn("b", "", "");
        let fail = Check::fail("c", "", "");
        assert_eq!(exit_status(&[pass.clone(), warn.clone()]), 0);
        assert_eq!(exit_status(&[pass.clone(), warn.clone(), fail.clone()]), 1);
        assert_eq!(exit_status(&[fail]), 1);
        assert_eq!(exit_status(&[warn]), 0);
        assert_eq!(exit_status(&[pass]), 0);
    }

    #[test]
    fn the_running_daemon_is_the_one_serving_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        // This test process listens: doctor reads its CapEff.
        assert_eq!(socket_peer(&path), Some(std::process::id()));
        let own = cap_eff(&std::fs::read_to_string("/proc/self/status").expect("status"));
        let found = running_daemon(&path).expect("found");
        assert_eq!(found.0, std::process::id());
        assert_eq!(Some(found.1), own);
        assert_eq!(socket_peer(&dir.path().join("none.sock")), None);
    }

    /// Through the config parser, so new endpoint fields get their defaults.
    fn endpoint_config(server: SocketAddr, ca_pem: String) -> EndpointConfig {
        let text = format!(
            "[[endpoint]]\nname = \"dev\"\nserver = \"{server}\"\nca_pem = \"\"\"{ca_pem}\"\"\"\n"
        );
        let c = Config::parse(Path::new("/t/config.toml"), &text).expect("test config");
        c.endpoints[0].clone()
    }

    #[tokio::test]
    async fn endpoint_reachable_and_not() {
        let ck = rcgen::generate_simple_self_signed(vec!["netmux-server".into()]).expect("cert");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_no_client_auth()
            .with_single_cert(
                vec![ck.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
            )
            .expect("server cert");
        tls.alpn_protocols = vec![netmux_common::proto::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic tls");
        let server = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto)),
            (Ipv4Addr::LOCALHOST, 0).into(),
        )
        .expect("server endpoint");
        let addr = server.local_addr().expect("addr");
        let accept = tokio::spawn(async move {
            while let Some(inc) = server.accept().await {
                if let Ok(c) = inc.await {
                    let _ = c.closed().await;
                }
            }
        });
        let cfg = endpoint_config(addr, ck.cert.pem());
        let (p, _) = probe(&cfg, Duration::from_secs(5)).await;
        let c = endpoint_reachability("dev", &cfg.describe(), &p);
        assert_eq!(c.status, Status::Pass, "{c:?}");
        let Probe::Ok(_, chain) = &p else {
            unreachable!()
        };
        let cc = certificates(
            "certificate dev",
            "server certificate",
            chain,
            SystemTime::now(),
        );
        assert_eq!(cc.status, Status::Pass, "{cc:?}");

        // Wrong CA: the server answers, TLS fails.
        let other = rcgen::generate_simple_self_signed(vec!["netmux-server".into()]).expect("cert");
        let (p, _) = probe(
            &endpoint_config(addr, other.cert.pem()),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(endpoint_reachability("dev", "x", &p).status, Status::Fail);
        assert!(matches!(p, Probe::Tls(_)), "{p:?}");
        accept.abort();

        // A UDP port that never answers.
        let silent = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp");
        let cfg = endpoint_config(silent.local_addr().expect("addr"), ck.cert.pem());
        let (p, _) = probe(&cfg, Duration::from_millis(500)).await;
        let c = endpoint_reachability("dev", &cfg.describe(), &p);
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.as_deref().is_some_and(|f| f.contains("UDP")), "{c:?}");

        // A Kubernetes endpoint whose kubeconfig does not exist: the
        // port-forward check fails and says where to look.
        let text = "[[endpoint]]\nname = \"kube\"\n[endpoint.kubernetes]\nkubeconfig = \"/nonexistent/kubeconfig\"\n";
        let cfg = Config::parse(Path::new("/t/config.toml"), text).expect("config");
        let ep = &cfg.endpoints[0];
        let (p, _) = probe(ep, Duration::from_secs(5)).await;
        assert!(matches!(p, Probe::PortForward(_)), "{p:?}");
        let c = endpoint_reachability("kube", &ep.describe(), &p);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("/nonexistent/kubeconfig"), "{c:?}");
        assert!(
            c.fix
                .as_deref()
                .is_some_and(|f| f.contains("pods/portforward")),
            "{c:?}"
        );
    }
}
