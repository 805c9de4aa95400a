//! Which redirect and DNS backends apply, and why.

use std::path::Path;

use netmux_daemon::config::RedirectMode;

use super::{Check, Status};

/// The redirect backend that will be used, and why.
pub(crate) fn redirect_backend(
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
pub(crate) fn dns_backend(hosts_file: &Path, nsswitch: Option<&str>) -> Check {
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
pub(crate) fn dns_method(
    dns: &netmux_daemon::config::DnsConfig,
    probe: &netmux_daemon::system::resolver::Probe,
) -> Check {
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
