//! Pointing the system's resolver at the embedded DNS server, for the
//! cluster domains only, and putting everything back.
//!
//! Most specific first ([`choose`]):
//! * **systemd-resolved** split DNS: a dummy link of the daemon ([`Resolved`])
//!   carries per-link DNS (the server) and domains (the cluster domains and a
//!   pod's search list); it is not a default route, so every other name
//!   keeps going where the user's and the VPN's links send it;
//! * **`/etc/resolver/<domain>`** on macOS ([`ResolverDir`]): one file per
//!   cluster domain; a file the daemon did not write is never touched;
//! * otherwise the hosts-file block, written by the daemon as before.
//!
//! Everything carries a mark — the link's `ifalias`, a first line in each
//! resolver file — so [`cleanup_leftovers`] can remove exactly what a crashed
//! daemon left, and nothing else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::{DnsConfig, DnsMethod};

/// `ifalias` of the daemon's dummy link; [`cleanup_leftovers`] deletes only
/// a link carrying it.
pub(crate) const LINK_ALIAS: &str = "netmux cluster DNS (netmuxd)";
/// First line of every file the daemon writes in the resolver directory.
pub(crate) const FILE_MARK: &str = "# netmux: managed by netmuxd, removed on disconnect";
/// Left in a resolver directory the daemon created, so it is removed again.
const CREATED_DIR_MARK: &str = ".netmux-created";
/// Kinds of link tried for the daemon's link, in order: `dummy`, and `ifb`
/// where the kernel has no dummy driver (some minimal VM kernels are built
/// without `CONFIG_DUMMY`). Both are inert (nothing is routed through them
/// or redirected into them) and have a carrier once up, which
/// systemd-resolved requires before it uses a link's DNS servers.
pub(crate) const LINK_KINDS: [&str; 2] = ["dummy", "ifb"];
/// Address on the dummy link: systemd-resolved only uses the DNS servers of
/// links with a routable address. A /128 from a unique-local prefix routes
/// nothing anyone else uses.
pub(crate) const LINK_ADDRESS: &str = "fd6e:6d78:5ca1::53/128";

/// What the resolver should send to the DNS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The embedded server's address.
    pub(crate) server: SocketAddr,
    /// Cluster domains routed to it.
    pub(crate) domains: Vec<String>,
    /// Search list for short names (a pod's, per endpoint).
    pub(crate) search: Vec<String>,
}

impl Plan {
    /// Nothing to route: the system as the daemon found it.
    pub(crate) fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }
}

/// Runs one command (program and arguments); `Err` carries its stderr.
pub(crate) type Runner = Box<dyn FnMut(&[String]) -> Result<(), String> + Send>;

/// Runs commands for real, each bounded to a few seconds.
pub(crate) fn system_runner() -> Runner {
    Box::new(|argv: &[String]| run_command(argv))
}

fn run_command(argv: &[String]) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", argv.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// systemd-resolved split DNS on the daemon's dummy link.
pub(crate) struct Resolved {
    link: String,
    run: Runner,
    created: bool,
}

impl Resolved {
    /// Manages link `link` with commands run by `run`.
    pub(crate) fn new(link: &str, run: Runner) -> Self {
        Resolved {
            link: link.to_owned(),
            run,
            created: false,
        }
    }

    /// Commands creating the link (once) as a link of type `kind` (one of
    /// [`LINK_KINDS`]).
    pub(crate) fn create_commands(link: &str, kind: &str) -> Vec<Vec<String>> {
        vec![
            argv(&["ip", "link", "add", link, "type", kind]),
            argv(&["ip", "link", "set", "dev", link, "alias", LINK_ALIAS]),
            argv(&[
                "ip",
                "-6",
                "addr",
                "add",
                LINK_ADDRESS,
                "dev",
                link,
                "nodad",
            ]),
            argv(&["ip", "link", "set", "dev", link, "up"]),
        ]
    }

    /// Commands putting `plan` on the link (idempotent: each replaces the
    /// link's previous setting).
    pub(crate) fn apply_commands(link: &str, plan: &Plan) -> Vec<Vec<String>> {
        // resolvectl takes ADDRESS[:PORT]; IPv6 with a port needs brackets.
        let server = match (plan.server.ip(), plan.server.port()) {
            (ip, 53) => ip.to_string(),
            _ => plan.server.to_string(),
        };
        // Search domains are routing domains too; cluster domains not in the
        // search list are routed with `~`.
        let mut domains: Vec<String> = plan.search.clone();
        for d in &plan.domains {
            if !domains.contains(d) {
                domains.push(format!("~{d}"));
            }
        }
        let mut domain_cmd = argv(&["resolvectl", "domain", link]);
        domain_cmd.extend(domains);
        vec![
            argv(&["resolvectl", "dns", link, &server]),
            domain_cmd,
            argv(&["resolvectl", "default-route", link, "false"]),
            argv(&["resolvectl", "llmnr", link, "no"]),
            argv(&["resolvectl", "mdns", link, "no"]),
            argv(&["resolvectl", "dnssec", link, "no"]),
            argv(&["resolvectl", "dnsovertls", link, "no"]),
        ]
    }

    /// Commands removing everything: resolved forgets the link's settings,
    /// the kernel forgets the link.
    pub(crate) fn remove_commands(link: &str) -> Vec<Vec<String>> {
        vec![
            argv(&["resolvectl", "revert", link]),
            argv(&["ip", "link", "del", "dev", link]),
        ]
    }

    fn apply(&mut self, plan: &Plan) -> Result<(), String> {
        if plan.is_empty() {
            return self.restore();
        }
        if !self.created {
            self.create()?;
        }
        for c in Self::apply_commands(&self.link, plan) {
            (self.run)(&c)?;
        }
        Ok(())
    }

    /// Creates the link with the first of [`LINK_KINDS`] the kernel has.
    fn create(&mut self) -> Result<(), String> {
        let mut errors = Vec::new();
        for kind in LINK_KINDS {
            let mut commands = Self::create_commands(&self.link, kind).into_iter();
            let Some(add) = commands.next() else {
                continue;
            };
            if let Err(e) = (self.run)(&add) {
                // Most likely "Unknown device type": try the next kind. Any
                // other cause (the name is taken) fails the next kind too,
                // and both errors are reported.
                errors.push(e);
                continue;
            }
            self.created = true;
            for c in commands {
                (self.run)(&c)?;
            }
            return Ok(());
        }
        Err(errors.join("; "))
    }

    fn restore(&mut self) -> Result<(), String> {
        if !self.created {
            return Ok(());
        }
        let mut first_error = None;
        for c in Self::remove_commands(&self.link) {
            // Deleting the link is what matters; revert may fail if
            // resolved already dropped it.
            if let Err(e) = (self.run)(&c) {
                first_error.get_or_insert(e);
            }
        }
        self.created = false;
        if link_is_ours(&self.link) {
            return Err(first_error.unwrap_or_else(|| "link still present".into()));
        }
        Ok(())
    }
}

/// `/sys/class/net/<link>/ifalias` is [`LINK_ALIAS`].
fn link_is_ours(link: &str) -> bool {
    std::fs::read_to_string(Path::new("/sys/class/net").join(link).join("ifalias"))
        .is_ok_and(|a| a.trim() == LINK_ALIAS)
}

/// One file per cluster domain in a resolver directory (macOS
/// `/etc/resolver`).
pub(crate) struct ResolverDir {
    dir: PathBuf,
    written: Vec<String>,
    skipped: Vec<String>,
}

impl ResolverDir {
    /// Manages files in `dir`.
    pub(crate) fn new(dir: &Path) -> Self {
        ResolverDir {
            dir: dir.to_owned(),
            written: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// The file for `domain` routing to `plan.server`.
    pub(crate) fn file_content(plan: &Plan) -> String {
        let mut s = format!(
            "{FILE_MARK}\nnameserver {}\nport {}\n",
            plan.server.ip(),
            plan.server.port()
        );
        if !plan.search.is_empty() {
            s.push_str(&format!("search {}\n", plan.search.join(" ")));
        }
        s.push_str("timeout 2\n");
        s
    }

    /// Domains left alone because the user (or a VPN) has a file for them.
    pub(crate) fn skipped(&self) -> &[String] {
        &self.skipped
    }

    fn apply(&mut self, plan: &Plan) -> Result<(), String> {
        let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
        if !plan.is_empty() && !self.dir.exists() {
            std::fs::create_dir_all(&self.dir).map_err(|e| io("creating", &self.dir, e))?;
            let mark = self.dir.join(CREATED_DIR_MARK);
            std::fs::write(&mark, "created by netmuxd; removed with the directory\n")
                .map_err(|e| io("writing", &mark, e))?;
        }
        let content = Self::file_content(plan);
        self.skipped.clear();
        let mut written = Vec::new();
        for d in &plan.domains {
            if d.contains('/') || d.starts_with('.') {
                continue;
            }
            let path = self.dir.join(d);
            match std::fs::read_to_string(&path) {
                Ok(t) if !t.starts_with(FILE_MARK) => {
                    tracing::warn!(path = %path.display(), "not overwriting a resolver file netmux did not write");
                    self.skipped.push(d.clone());
                    continue;
                }
                Ok(t) if t == content => {}
                Ok(_) => replace(&path, &content).map_err(|e| io("writing", &path, e))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    replace(&path, &content).map_err(|e| io("writing", &path, e))?
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "not overwriting an unreadable resolver file");
                    self.skipped.push(d.clone());
                    continue;
                }
            }
            written.push(d.clone());
        }
        for old in self.written.iter().filter(|d| !written.contains(d)) {
            remove_ours(&self.dir.join(old)).map_err(|e| io("removing", &self.dir, e))?;
        }
        self.written = written;
        if plan.is_empty() {
            remove_dir_if_ours(&self.dir).map_err(|e| io("removing", &self.dir, e))?;
        }
        Ok(())
    }
}

fn replace(path: &Path, content: &str) -> std::io::Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.netmux.tmp",
        path.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    ));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

/// Removes `path` if it carries [`FILE_MARK`].
fn remove_ours(path: &Path) -> std::io::Result<bool> {
    match std::fs::read_to_string(path) {
        Ok(t) if t.starts_with(FILE_MARK) => std::fs::remove_file(path).map(|()| true),
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        // Not UTF-8 or unreadable: not ours.
        Err(_) => Ok(false),
    }
}

/// Removes the directory if the daemon created it and nothing else is in
/// it.
fn remove_dir_if_ours(dir: &Path) -> std::io::Result<()> {
    let mark = dir.join(CREATED_DIR_MARK);
    if !mark.exists() {
        return Ok(());
    }
    let others = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .any(|e| e.file_name() != CREATED_DIR_MARK);
    if !others {
        std::fs::remove_file(&mark)?;
        std::fs::remove_dir(dir)?;
    }
    Ok(())
}

/// The integration in force.
pub(crate) enum Integration {
    /// systemd-resolved split DNS.
    Resolved(Resolved),
    /// Per-domain resolver files.
    ResolverDir(ResolverDir),
    /// The daemon's hosts-file block (nothing to do here).
    Hosts,
    /// Nothing: the user points a resolver at the server.
    None,
}

impl Integration {
    /// The integration for a concrete `method` (not `auto`).
    pub(crate) fn new(method: DnsMethod, cfg: &DnsConfig) -> Integration {
        match method {
            DnsMethod::Resolved => Integration::Resolved(Resolved::new(&cfg.link, system_runner())),
            DnsMethod::ResolverDir => Integration::ResolverDir(ResolverDir::new(&cfg.resolver_dir)),
            DnsMethod::Hosts | DnsMethod::Auto => Integration::Hosts,
            DnsMethod::None => Integration::None,
        }
    }

    /// Whether the daemon should keep writing its hosts block.
    pub(crate) fn uses_hosts_file(&self) -> bool {
        matches!(self, Integration::Hosts)
    }

    /// Makes the system follow `plan` (an empty plan restores it).
    pub(crate) fn apply(&mut self, plan: &Plan) -> Result<(), String> {
        match self {
            Integration::Resolved(r) => r.apply(plan),
            Integration::ResolverDir(d) => d.apply(plan),
            Integration::Hosts | Integration::None => Ok(()),
        }
    }

    /// Puts back what the daemon changed.
    pub(crate) fn restore(&mut self, server: SocketAddr) -> Result<(), String> {
        self.apply(&Plan {
            server,
            domains: vec![],
            search: vec![],
        })
    }

    /// One line for `netmux status`.
    pub(crate) fn describe(&self, cfg: &DnsConfig, plan: &Plan) -> String {
        let domains = if plan.domains.is_empty() {
            "no cluster domain routed yet (no service started)".to_owned()
        } else {
            plan.domains.join(", ")
        };
        match self {
            Integration::Resolved(_) => format!(
                "systemd-resolved split DNS on link {} -> {} for {domains}",
                cfg.link, plan.server
            ),
            Integration::ResolverDir(d) => {
                let mut s = format!(
                    "{}/<domain> -> {} for {domains}",
                    cfg.resolver_dir.display(),
                    plan.server
                );
                if !d.skipped().is_empty() {
                    s.push_str(&format!(
                        " (kept the user's files for {})",
                        d.skipped().join(", ")
                    ));
                }
                s
            }
            Integration::Hosts => format!("hosts file (DNS server on {} too)", plan.server),
            Integration::None => format!(
                "none: DNS server on {} (point your resolver at it for {domains})",
                plan.server
            ),
        }
    }
}

/// Facts [`choose`] decides on, gathered by [`Probe::system`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Probe {
    /// This is macOS.
    pub macos: bool,
    /// `resolvectl` is installed.
    pub resolvectl: bool,
    /// systemd-resolved runs (`/run/systemd/resolve/` exists).
    pub resolved_running: bool,
    /// The system's lookups go through resolved (its stub in
    /// `/etc/resolv.conf` or `resolve` in nsswitch's hosts line).
    pub system_uses_resolved: bool,
    /// The daemon shares PID 1's network namespace: link names it creates
    /// mean the same to resolved. In a test namespace they would not, and
    /// resolvectl would configure some unrelated host link.
    pub same_netns_as_init: bool,
}

impl Probe {
    /// Looks at this machine.
    pub fn system() -> Probe {
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let nsswitch = std::fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default();
        let netns = |p: &str| std::fs::read_link(p).ok();
        Probe {
            macos: cfg!(target_os = "macos"),
            resolvectl: find_in_path("resolvectl"),
            resolved_running: Path::new("/run/systemd/resolve").is_dir(),
            system_uses_resolved: uses_resolved(&resolv, &nsswitch),
            same_netns_as_init: matches!(
                (netns("/proc/self/ns/net"), netns("/proc/1/ns/net")),
                (Some(a), Some(b)) if a == b
            ),
        }
    }
}

fn find_in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Whether lookups reach systemd-resolved, from `/etc/resolv.conf` and
/// `/etc/nsswitch.conf`.
pub(crate) fn uses_resolved(resolv_conf: &str, nsswitch: &str) -> bool {
    let stub = resolv_conf.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some("nameserver") && matches!(w.next(), Some("127.0.0.53" | "127.0.0.54"))
    });
    let nss = nsswitch.lines().any(|l| {
        let l = l.split('#').next().unwrap_or_default();
        l.trim_start().starts_with("hosts:") && l.split_whitespace().any(|w| w == "resolve")
    });
    stub || nss
}

/// The concrete method for the configured one and why (for `netmux
/// status`).
pub fn choose(configured: DnsMethod, probe: &Probe) -> (DnsMethod, String) {
    match configured {
        DnsMethod::Auto => {}
        m => return (m, "set in the config".into()),
    }
    if probe.macos {
        return (DnsMethod::ResolverDir, "macOS".into());
    }
    let why_not = if !probe.resolvectl {
        "resolvectl not installed"
    } else if !probe.resolved_running {
        "systemd-resolved not running"
    } else if !probe.system_uses_resolved {
        "the system resolver does not use systemd-resolved"
    } else if !probe.same_netns_as_init {
        "netmuxd runs in another network namespace than systemd-resolved"
    } else {
        return (DnsMethod::Resolved, "systemd-resolved is in use".into());
    };
    (DnsMethod::Hosts, format!("fallback: {why_not}"))
}

/// Removes what a daemon (maybe crashed) left: the marked link and the
/// marked resolver files. Returns what was removed.
pub fn cleanup_leftovers(cfg: &DnsConfig) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    if link_is_ours(&cfg.link) {
        let mut r = Resolved::new(&cfg.link, system_runner());
        r.created = true;
        r.restore()?;
        done.push(format!(
            "removed link {} and its resolved settings",
            cfg.link
        ));
    }
    if let Ok(entries) = std::fs::read_dir(&cfg.resolver_dir) {
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            if remove_ours(&p).map_err(|err| format!("removing {}: {err}", p.display()))? {
                done.push(format!("removed {}", p.display()));
            }
        }
        remove_dir_if_ours(&cfg.resolver_dir)
            .map_err(|e| format!("removing {}: {e}", cfg.resolver_dir.display()))?;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn plan(domains: &[&str]) -> Plan {
        Plan {
            server: "127.0.77.53:53".parse().unwrap(),
            domains: domains.iter().map(|s| s.to_string()).collect(),
            search: if domains.is_empty() {
                vec![]
            } else {
                vec![
                    "demo.svc.cluster.local".into(),
                    "svc.cluster.local".into(),
                    "cluster.local".into(),
                ]
            },
        }
    }

    fn cmdline(cmds: &[Vec<String>]) -> Vec<String> {
        cmds.iter().map(|c| c.join(" ")).collect()
    }

    #[test]
    fn resolved_commands_route_only_the_cluster_domains() {
        let mut p = plan(&["cluster.local", "corp.internal"]);
        let c = cmdline(&Resolved::apply_commands("netmux0", &p));
        assert_eq!(c[0], "resolvectl dns netmux0 127.0.77.53");
        assert_eq!(
            c[1],
            "resolvectl domain netmux0 demo.svc.cluster.local svc.cluster.local cluster.local ~corp.internal"
        );
        assert!(c.contains(&"resolvectl default-route netmux0 false".to_owned()));
        p.server = "[::1]:5353".parse().unwrap();
        let c = cmdline(&Resolved::apply_commands("netmux0", &p));
        assert_eq!(c[0], "resolvectl dns netmux0 [::1]:5353");
        assert_eq!(
            cmdline(&Resolved::remove_commands("netmux0")),
            ["resolvectl revert netmux0", "ip link del dev netmux0"]
        );
        let create = cmdline(&Resolved::create_commands("netmux0", "dummy"));
        assert_eq!(create[0], "ip link add netmux0 type dummy");
        assert!(create[1].ends_with(LINK_ALIAS));
    }

    #[test]
    fn resolved_creates_once_applies_on_change_and_removes_when_empty() {
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let l = log.clone();
        let mut r = Resolved::new(
            "nmx-test0",
            Box::new(move |c: &[String]| {
                l.lock().unwrap().push(c.join(" "));
                Ok(())
            }),
        );
        r.apply(&plan(&["cluster.local"])).unwrap();
        r.apply(&plan(&["cluster.local"])).unwrap();
        r.apply(&plan(&[])).unwrap();
        r.apply(&plan(&[])).unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log.iter().filter(|c| c.contains("type dummy")).count(), 1);
        assert_eq!(
            log.iter()
                .filter(|c| c.starts_with("resolvectl dns nmx-test0"))
                .count(),
            2
        );
        assert_eq!(log.iter().filter(|c| c.contains("link del")).count(), 1);
        assert_eq!(log.last().unwrap(), "ip link del dev nmx-test0");
    }

    #[test]
    fn a_kernel_without_dummy_gets_an_ifb_link() {
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let l = log.clone();
        let mut r = Resolved::new(
            "nmx-test2",
            Box::new(move |c: &[String]| {
                let line = c.join(" ");
                l.lock().unwrap().push(line.clone());
                if line.ends_with("type dummy") {
                    Err(format!("{line}: Error: Unknown device type."))
                } else {
                    Ok(())
                }
            }),
        );
        r.apply(&plan(&["cluster.local"])).unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log[0], "ip link add nmx-test2 type dummy");
        assert_eq!(log[1], "ip link add nmx-test2 type ifb");
        assert!(log[2].ends_with(LINK_ALIAS), "{log:?}");
        assert!(log
            .iter()
            .any(|c| c == "resolvectl dns nmx-test2 127.0.77.53"));
    }

    #[test]
    fn a_failing_command_is_reported() {
        let mut r = Resolved::new("nmx-test1", Box::new(|c: &[String]| Err(c.join(" "))));
        let e = r.apply(&plan(&["cluster.local"])).unwrap_err();
        assert!(
            e.contains("type dummy") && e.contains("type ifb"),
            "both kinds tried and reported: {e}"
        );
    }

    #[test]
    fn resolver_dir_adds_keeps_user_files_and_restores_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("resolver");
        let mut d = ResolverDir::new(&dir);
        // Created from nothing, removed to nothing.
        d.apply(&plan(&["cluster.local"])).unwrap();
        let t = std::fs::read_to_string(dir.join("cluster.local")).unwrap();
        assert!(t.starts_with(FILE_MARK) && t.contains("nameserver 127.0.77.53\nport 53\n"));
        assert!(t.contains("search demo.svc.cluster.local svc.cluster.local cluster.local"));
        d.apply(&plan(&[])).unwrap();
        assert!(!dir.exists(), "the directory netmux created is gone");

        // An existing directory with a VPN's file for one of the domains.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("corp.internal"), "nameserver 10.0.0.1\n").unwrap();
        std::fs::write(dir.join("other"), "nameserver 10.0.0.2\n").unwrap();
        let before = snapshot(&dir);
        d.apply(&plan(&["cluster.local", "corp.internal"])).unwrap();
        assert_eq!(d.skipped(), ["corp.internal"]);
        assert_eq!(
            std::fs::read_to_string(dir.join("corp.internal")).unwrap(),
            "nameserver 10.0.0.1\n"
        );
        d.apply(&plan(&[])).unwrap();
        assert_eq!(snapshot(&dir), before);
    }

    #[test]
    fn leftovers_of_a_crash_are_removed_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("resolver");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("user.example"), "nameserver 10.0.0.1\n").unwrap();
        let before = snapshot(&dir);
        let mut d = ResolverDir::new(&dir);
        d.apply(&plan(&["cluster.local"])).unwrap();
        drop(d); // the daemon dies without restoring
        let cfg = DnsConfig {
            enabled: true,
            listen: "127.0.77.53:53".parse().unwrap(),
            method: DnsMethod::ResolverDir,
            link: "nmx-absent0".into(),
            resolver_dir: dir.clone(),
            default_namespaces: Default::default(),
        };
        let done = cleanup_leftovers(&cfg).unwrap();
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(snapshot(&dir), before);
        assert!(cleanup_leftovers(&cfg).unwrap().is_empty(), "idempotent");
    }

    fn snapshot(dir: &Path) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path()).unwrap_or_default(),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn auto_picks_the_most_specific_method_that_works() {
        let all = Probe {
            macos: false,
            resolvectl: true,
            resolved_running: true,
            system_uses_resolved: true,
            same_netns_as_init: true,
        };
        assert_eq!(choose(DnsMethod::Auto, &all).0, DnsMethod::Resolved);
        let mac = Probe {
            macos: true,
            ..Probe::default()
        };
        assert_eq!(choose(DnsMethod::Auto, &mac).0, DnsMethod::ResolverDir);
        let netns = Probe {
            same_netns_as_init: false,
            ..all
        };
        let (m, why) = choose(DnsMethod::Auto, &netns);
        assert_eq!(m, DnsMethod::Hosts);
        assert!(why.contains("network namespace"), "{why}");
        assert_eq!(
            choose(DnsMethod::Auto, &Probe::default()).0,
            DnsMethod::Hosts
        );
        assert_eq!(choose(DnsMethod::None, &all).0, DnsMethod::None);
    }

    #[test]
    fn detects_resolved_from_resolv_conf_or_nsswitch() {
        assert!(uses_resolved("nameserver 127.0.0.53\noptions edns0\n", ""));
        assert!(uses_resolved(
            "",
            "hosts: files resolve [!UNAVAIL=return] dns\n"
        ));
        assert!(!uses_resolved("nameserver 1.1.1.1\n", "hosts: files dns\n"));
        assert!(!uses_resolved("", "# hosts: resolve\n"));
    }
}
