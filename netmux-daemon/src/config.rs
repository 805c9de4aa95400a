//! Daemon configuration (`/etc/netmux/config.toml`).
//!
//! Parsed strictly (unknown keys are errors naming file, line and key), then
//! validated into [`Config`]: secrets are masked in `Debug`, relative paths
//! resolved against the file's directory.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default control socket path.
pub const DEFAULT_SOCKET: &str = "/run/netmux/netmuxd.sock";
/// Default configuration path.
pub const DEFAULT_CONFIG: &str = "/etc/netmux/config.toml";

pub(crate) use netmux_common::config::{parse_error, ConfigError};
pub(crate) use netmux_common::proto::cidr::Cidr;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_socket")]
    socket: PathBuf,
    socket_group: Option<String>,
    #[serde(default = "default_hosts")]
    hosts_file: PathBuf,
    #[serde(default = "default_range")]
    address_range: String,
    metrics: Option<SocketAddr>,
    #[serde(default)]
    redirect: RedirectMode,
    #[serde(default = "default_cgroup")]
    cgroup: PathBuf,
    #[serde(default)]
    endpoint: Vec<RawEndpoint>,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    expose_allow: Vec<String>,
    #[serde(default = "default_half_close_timeout_secs")]
    half_close_timeout_secs: u64,
    survive_blackout: Option<RawBound>,
    #[serde(default = "default_worker_threads")]
    worker_threads: usize,
}

/// Default of `worker_threads`: one (issue 17, BENCHMARKS.md). With two,
/// each tunneled request cost a futex wakeup between the workers and more
/// packets; one core moves about 1 GiB/s through one connection.
fn default_worker_threads() -> usize {
    1
}

/// A `survive_blackout` value: seconds, or a string with a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawBound {
    Seconds(u64),
    Text(String),
}

impl RawBound {
    fn parse(&self) -> Result<std::time::Duration, String> {
        match self {
            RawBound::Seconds(n) => netmux_common::tunnel::blackout::parse_bound(&n.to_string()),
            RawBound::Text(t) => netmux_common::tunnel::blackout::parse_bound(t),
        }
    }
}

/// After a half-close, the other direction of a proxied connection may
/// stay silent this long before both are reset (`0`: never).
pub(crate) const DEFAULT_HALF_CLOSE_TIMEOUT_SECS: u64 = 600;

fn default_half_close_timeout_secs() -> u64 {
    DEFAULT_HALF_CLOSE_TIMEOUT_SECS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDns {
    enabled: bool,
    listen: SocketAddr,
    method: DnsMethod,
    link: String,
    resolver_dir: PathBuf,
}

impl Default for RawDns {
    fn default() -> Self {
        RawDns {
            enabled: true,
            listen: DEFAULT_DNS_LISTEN,
            method: DnsMethod::Auto,
            link: "netmux0".into(),
            resolver_dir: "/etc/resolver".into(),
        }
    }
}

/// Default address of the embedded DNS server: a loopback address of its
/// own, outside the default `address_range`.
pub(crate) const DEFAULT_DNS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 77, 53)), 53);

/// How the system resolver is pointed at the embedded DNS server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DnsMethod {
    /// The most specific that works: systemd-resolved, then macOS
    /// `/etc/resolver`, then the hosts file.
    #[default]
    Auto,
    /// systemd-resolved split DNS on a dummy link of the daemon.
    Resolved,
    /// One file per cluster domain in `/etc/resolver` (macOS).
    ResolverDir,
    /// The marked block in the hosts file, as before the DNS server.
    Hosts,
    /// No integration and no hosts block: point a resolver (dnsmasq,
    /// `/etc/netns/NAME/resolv.conf`, ...) at `dns.listen` yourself.
    None,
}

/// The `[dns]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Run the embedded DNS server.
    pub enabled: bool,
    /// Its UDP and TCP address (loopback).
    pub listen: SocketAddr,
    /// System integration.
    pub method: DnsMethod,
    /// Name of the dummy link carrying the systemd-resolved configuration.
    pub(crate) link: String,
    /// Directory of per-domain resolver files (macOS).
    pub(crate) resolver_dir: PathBuf,
    /// Per endpoint (`[[endpoint]] default_namespace`, default `default`):
    /// the namespace short names (`svc`) resolve in through search domains.
    pub(crate) default_namespaces: std::collections::BTreeMap<String, String>,
}

impl DnsConfig {
    /// The default namespace of endpoint `name`.
    pub(crate) fn default_namespace(&self, name: &str) -> &str {
        self.default_namespaces
            .get(name)
            .map(String::as_str)
            .unwrap_or("default")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    name: String,
    server: Option<String>,
    #[serde(default = "default_server_name")]
    server_name: String,
    ca_file: Option<PathBuf>,
    ca_pem: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    #[serde(default = "default_domain")]
    cluster_domain: String,
    #[serde(default)]
    autostart: bool,
    #[serde(default = "default_namespace")]
    default_namespace: String,
    transport: Option<Transport>,
    kubernetes: Option<RawKubernetes>,
    cluster_cidrs: Option<Vec<String>>,
    survive_blackout: Option<RawBound>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    #[serde(default = "default_server_namespace")]
    namespace: String,
    #[serde(default = "default_server_name")]
    service: String,
    #[serde(default = "default_stream_port")]
    port: String,
    api_server: Option<String>,
}

fn default_server_namespace() -> String {
    "netmux".into()
}
fn default_stream_port() -> String {
    "quic-stream".into()
}

fn default_socket() -> PathBuf {
    DEFAULT_SOCKET.into()
}
fn default_hosts() -> PathBuf {
    "/etc/hosts".into()
}
fn default_range() -> String {
    "127.77.0.0/16".into()
}
fn default_cgroup() -> PathBuf {
    default_cgroup_root()
}
fn default_server_name() -> String {
    "netmux-server".into()
}
fn default_namespace() -> String {
    "default".into()
}
fn default_domain() -> String {
    "cluster.local".into()
}

/// An endpoint's `transport` key: how it reaches its server
/// ([`crate::transport`] dials it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// QUIC over UDP to `server` (a LoadBalancer, NodePort, VPN address);
    /// `direct` is the same.
    #[default]
    #[serde(alias = "direct")]
    Quic,
    /// QUIC over a TCP connection to `server` (the server's `stream_listen`).
    Tcp,
    /// QUIC over a Kubernetes port-forward to a ready server pod, opened
    /// with the user's kubeconfig (the default with `[endpoint.kubernetes]`).
    PortForward,
    /// `quic` to `server`, falling back to `port-forward` when the server
    /// does not answer over UDP.
    Auto,
}

/// Where cgroup v2 is mounted on this machine: the default `cgroup`, where
/// the eBPF redirect attaches.
pub(crate) fn default_cgroup_root() -> PathBuf {
    // Hybrid systems mount v2 at /sys/fs/cgroup/unified.
    for dir in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        if Path::new(dir).join("cgroup.procs").exists() && is_cgroup2(Path::new(dir)) {
            return dir.into();
        }
    }
    "/sys/fs/cgroup".into()
}

fn is_cgroup2(dir: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        // CGROUP2_SUPER_MAGIC
        nix::sys::statfs::statfs(dir)
            .map(|s| s.filesystem_type().0 == 0x6367_7270)
            .unwrap_or(false)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        false
    }
}

/// How connections reach the daemon's listeners.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectMode {
    /// eBPF when it loads, loopback otherwise.
    #[default]
    Auto,
    /// eBPF cgroup connect hooks; failing to load is an error.
    Ebpf,
    /// Loopback address per service plus hosts-file names.
    Loopback,
}

/// An IPv4 range in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Range {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl std::str::FromStr for Ipv4Range {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not CIDR (like 127.77.0.0/16)"))?;
        let network: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("prefix /{prefix} must be between /8 and /30"))?;
        let mask = u32::MAX << (32 - prefix);
        if u32::from(network) & !mask != 0 {
            return Err(format!(
                "{s} has host bits set; use {}/{prefix}",
                Ipv4Addr::from(u32::from(network) & mask)
            ));
        }
        Ok(Ipv4Range { network, prefix })
    }
}

/// A secret string, masked in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// One netmux server the daemon can connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Name used by the CLI (`netmux connect NAME`).
    pub name: String,
    /// `host:port` of the server's QUIC endpoint (UDP, or TCP with
    /// `transport = "tcp"`); optional with `transport = "port-forward"`.
    pub server: Option<String>,
    /// Name the server certificate must carry.
    pub server_name: String,
    /// PEM of the CA that signs the server certificate; for a Kubernetes
    /// endpoint without one, read from the ConfigMap `netmux-ca` in the
    /// server's namespace with the user's credentials.
    pub ca_pem: Option<String>,
    /// Bearer token for the hello.
    pub(crate) token: Option<Secret>,
    /// Cluster DNS domain, for the names written for each service.
    pub cluster_domain: String,
    /// Connect when the daemon starts.
    pub autostart: bool,
    /// How the server is reached: QUIC over UDP, over a TCP stream, or
    /// over a Kubernetes port-forward.
    pub transport: Transport,
    /// Where the server runs in Kubernetes (`[endpoint.kubernetes]`).
    pub kubernetes: Option<crate::cluster::KubeSettings>,
    /// The cluster's address ranges: the eBPF redirect catches only
    /// catalog addresses inside them. `None`: the ranges the server
    /// announces in its hello.
    pub(crate) cluster_cidrs: Option<Vec<Cidr>>,
    /// Top-level `half_close_timeout_secs`: once one direction of a
    /// proxied connection ended, the other is reset after moving no byte
    /// this long (`None`: never).
    pub(crate) half_close_timeout: Option<std::time::Duration>,
    /// How long a silent server's session, its streams and the local TCP
    /// connections are kept (`survive_blackout`, top level or per
    /// endpoint; default 10 minutes; [`crate::health`]).
    pub survive_blackout: std::time::Duration,
}

impl EndpointConfig {
    /// The settings of this endpoint's proxied connections.
    pub(crate) fn stream_options(&self) -> netmux_common::tunnel::stream::Options {
        netmux_common::tunnel::stream::Options {
            half_close_timeout: self.half_close_timeout,
        }
    }

    /// How the server is reached, for `ls` and `status`.
    pub fn describe(&self) -> String {
        let forward = || match &self.kubernetes {
            Some(k) => format!("port-forward {}/{}:{}", k.namespace, k.service, k.port),
            None => "port-forward".into(),
        };
        let server = self.server.as_deref().unwrap_or("-");
        match self.transport {
            Transport::Quic => format!("quic {server}"),
            Transport::Tcp => format!("tcp {server}"),
            Transport::PortForward => forward(),
            Transport::Auto => format!("quic {server}, else {}", forward()),
        }
    }
}

/// Validated daemon configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from.
    pub(crate) path: PathBuf,
    /// Control socket path.
    pub socket: PathBuf,
    /// Group allowed to use the control socket (besides root and the
    /// daemon's own user).
    pub socket_group: Option<String>,
    /// Hosts file the daemon maintains a block in.
    pub hosts_file: PathBuf,
    /// Addresses handed to services (loopback backend).
    pub address_range: Ipv4Range,
    /// Prometheus listen address.
    pub metrics: Option<SocketAddr>,
    /// Redirect backend choice.
    pub redirect: RedirectMode,
    /// cgroup v2 directory the eBPF programs attach to.
    pub cgroup: PathBuf,
    /// Servers.
    pub endpoints: Vec<EndpointConfig>,
    /// Embedded DNS server.
    pub dns: DnsConfig,
    /// Ranges `netmux expose --local` may target besides loopback.
    pub(crate) expose_allow: Vec<Cidr>,
    /// Async runtime workers (`worker_threads`; 0 in the file: one per CPU).
    pub worker_threads: usize,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = netmux_common::config::read(path)?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text` read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let address_range: Ipv4Range = raw
            .address_range
            .parse()
            .map_err(|m| invalid("address_range".into(), m))?;
        if !address_range.network.is_loopback() {
            return Err(invalid(
                "address_range".into(),
                "must be inside 127.0.0.0/8 (loopback), e.g. 127.77.0.0/16".into(),
            ));
        }
        let survive_blackout = match &raw.survive_blackout {
            Some(b) => b
                .parse()
                .map_err(|m| invalid("survive_blackout".into(), m))?,
            None => netmux_common::tunnel::blackout::DEFAULT_SURVIVE_BLACKOUT,
        };
        let worker_threads = netmux_common::config::worker_threads(raw.worker_threads)
            .map_err(|m| invalid("worker_threads".into(), m))?;
        let half_close_timeout = (raw.half_close_timeout_secs > 0)
            .then(|| std::time::Duration::from_secs(raw.half_close_timeout_secs));
        let mut endpoints: Vec<EndpointConfig> = Vec::new();
        let mut default_namespaces = std::collections::BTreeMap::new();
        for (i, e) in raw.endpoint.into_iter().enumerate() {
            let field = |k: &str| format!("endpoint[{i}].{k}");
            let survive_blackout = match &e.survive_blackout {
                Some(b) => b
                    .parse()
                    .map_err(|m| invalid(field("survive_blackout"), m))?,
                None => survive_blackout,
            };
            if !netmux_common::proto::catalog::valid_dns_name(&e.name) || e.name.contains('.') {
                return Err(invalid(
                    field("name"),
                    format!(
                        "{:?} must be one DNS label (lower-case letters, digits, '-')",
                        e.name
                    ),
                ));
            }
            if endpoints.iter().any(|o| o.name == e.name) {
                return Err(invalid(
                    field("name"),
                    format!("{:?} is listed twice", e.name),
                ));
            }
            let transport = e.transport.unwrap_or(if e.kubernetes.is_some() {
                Transport::PortForward
            } else {
                Transport::Quic
            });
            let kubernetes = match e.kubernetes {
                Some(k) => {
                    if e.autostart {
                        return Err(invalid(
                            field("autostart"),
                            "cannot be used with [endpoint.kubernetes]: the credentials come from the kubeconfig of the user who runs `netmux connect`".into(),
                        ));
                    }
                    let mut settings = crate::cluster::KubeSettings::validate(
                        k.kubeconfig.map(|p| base.join(p)),
                        k.context,
                        k.namespace,
                        k.service,
                        k.port,
                    )
                    .map_err(|(key, m)| invalid(field(&format!("kubernetes.{key}")), m))?;
                    if let Some(url) = &k.api_server {
                        if !(url.starts_with("https://") || url.starts_with("http://")) {
                            return Err(invalid(
                                field("kubernetes.api_server"),
                                format!("{url:?} is not a URL like https://api.example.com:6443"),
                            ));
                        }
                    }
                    settings.api_server = k.api_server.map(|u| u.trim_end_matches('/').to_owned());
                    Some(settings)
                }
                None => None,
            };
            let needs_server = matches!(
                transport,
                Transport::Quic | Transport::Tcp | Transport::Auto
            );
            if matches!(transport, Transport::PortForward | Transport::Auto) && kubernetes.is_none()
            {
                return Err(invalid(
                    field("transport"),
                    "port-forward and auto need an [endpoint.kubernetes] table (the server's namespace and Service)".into(),
                ));
            }
            match &e.server {
                Some(s) if !s.contains(':') => {
                    return Err(invalid(
                        field("server"),
                        format!("{s:?} needs a port, like netmux.example.com:7443"),
                    ))
                }
                None if needs_server => {
                    return Err(invalid(
                        field("server"),
                        "missing: host:port of the server (or use [endpoint.kubernetes] with transport = \"port-forward\")".into(),
                    ))
                }
                _ => {}
            }
            let ca_pem = match (e.ca_file, e.ca_pem) {
                (Some(f), None) => {
                    let f = base.join(f);
                    std::fs::read_to_string(&f).map_err(|err| {
                        invalid(
                            field("ca_file"),
                            format!("cannot read {}: {err}", f.display()),
                        )
                    })?
                }
                (None, Some(pem)) => pem,
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        field("ca_pem"),
                        "give ca_file or ca_pem, not both".into(),
                    ))
                }
                (None, None) if kubernetes.is_some() => String::new(),
                (None, None) => {
                    return Err(invalid(
                        field("ca_file"),
                        "missing: the server's CA (state_dir/ca.pem on the server) is required"
                            .into(),
                    ))
                }
            };
            let ca_pem = if ca_pem.is_empty() {
                None
            } else if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(invalid(field("ca_file"), "no PEM certificate found".into()));
            } else {
                Some(ca_pem)
            };
            let token = match (e.token, e.token_file) {
                (Some(t), None) => Some(Secret(t)),
                (None, Some(f)) => {
                    let f = base.join(f);
                    let t = std::fs::read_to_string(&f).map_err(|err| {
                        invalid(
                            field("token_file"),
                            format!("cannot read {}: {err}", f.display()),
                        )
                    })?;
                    Some(Secret(t.trim().to_owned()))
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        field("token"),
                        "give token or token_file, not both".into(),
                    ))
                }
                (None, None) => None,
            };
            if !netmux_common::proto::catalog::valid_dns_name(&e.default_namespace)
                || e.default_namespace.contains('.')
            {
                return Err(invalid(
                    field("default_namespace"),
                    format!("{:?} must be one DNS label", e.default_namespace),
                ));
            }
            let cluster_domain = validate_domain(&e.cluster_domain)
                .map_err(|m| invalid(field("cluster_domain"), m))?;
            let cluster_cidrs = match e.cluster_cidrs {
                None => None,
                Some(list) => Some(
                    parse_cidrs(&list, false).map_err(|m| invalid(field("cluster_cidrs"), m))?,
                ),
            };
            default_namespaces.insert(e.name.clone(), e.default_namespace);
            endpoints.push(EndpointConfig {
                name: e.name,
                server: e.server,
                server_name: e.server_name,
                ca_pem,
                token,
                cluster_domain,
                autostart: e.autostart,
                transport,
                kubernetes,
                cluster_cidrs,
                half_close_timeout,
                survive_blackout,
            });
        }
        let dns = raw.dns;
        let in_range = |ip: Ipv4Addr| {
            let mask = u32::MAX << (32 - address_range.prefix);
            u32::from(ip) & mask == u32::from(address_range.network)
        };
        match dns.listen.ip() {
            std::net::IpAddr::V4(ip) if ip.is_loopback() && !in_range(ip) => {}
            std::net::IpAddr::V6(ip) if ip.is_loopback() => {}
            ip => {
                return Err(invalid(
                    "dns.listen".into(),
                    format!(
                        "{ip} must be a loopback address outside address_range, e.g. {DEFAULT_DNS_LISTEN}"
                    ),
                ))
            }
        }
        if dns.listen.port() == 0 {
            return Err(invalid("dns.listen".into(), "needs a port (53)".into()));
        }
        if dns.link.is_empty()
            || dns.link.len() > 15
            || !dns
                .link
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "dns.link".into(),
                format!(
                    "{:?} is not an interface name (1-15 of a-z 0-9 - _)",
                    dns.link
                ),
            ));
        }
        let expose_allow =
            parse_cidrs(&raw.expose_allow, true).map_err(|m| invalid("expose_allow".into(), m))?;
        Ok(Config {
            expose_allow,
            worker_threads,
            path: path.to_owned(),
            socket: base.join(raw.socket),
            socket_group: raw.socket_group,
            hosts_file: base.join(raw.hosts_file),
            address_range,
            metrics: raw.metrics,
            redirect: raw.redirect,
            cgroup: raw.cgroup,
            endpoints,
            dns: DnsConfig {
                enabled: dns.enabled,
                listen: dns.listen,
                method: dns.method,
                link: dns.link,
                resolver_dir: base.join(dns.resolver_dir),
                default_namespaces,
            },
        })
    }

    /// The endpoint called `name`.
    pub(crate) fn endpoint(&self, name: &str) -> Option<&EndpointConfig> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// Whether `netmux expose --local` may send cluster connections to
    /// `ip`: loopback always, anything else only inside `expose_allow`.
    pub(crate) fn expose_target_allowed(&self, ip: std::net::IpAddr) -> Result<(), String> {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        if ip.is_loopback() || self.expose_allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        Err(format!(
            "--local {ip}: only loopback targets (127.0.0.0/8, ::1) may be exposed to the cluster; \
             to allow {ip}, add a range containing it to `expose_allow` in {} and run `netmux reload`",
            self.path.display()
        ))
    }
}

/// A cluster DNS domain: lower-case DNS labels (`cluster.local`), without
/// the trailing dot. Anything else would end up in the hosts file and the
/// resolver configuration.
fn validate_domain(raw: &str) -> Result<String, String> {
    let domain = raw.strip_suffix('.').unwrap_or(raw);
    if !netmux_common::proto::catalog::valid_dns_name(domain) {
        return Err(format!(
            "{raw:?} is not a DNS domain: use lower-case labels of a-z, 0-9 and '-' separated by '.', like \"cluster.local\""
        ));
    }
    Ok(domain.to_owned())
}

/// Parses a list of CIDR ranges; `allow_any` permits ranges wider than a
/// /8 (up to `0.0.0.0/0`).
fn parse_cidrs(list: &[String], allow_any: bool) -> Result<Vec<Cidr>, String> {
    let mut out = Vec::new();
    for s in list {
        let c: Cidr = s
            .parse()
            .map_err(|e: netmux_common::proto::cidr::CidrError| e.to_string())?;
        if !allow_any && c.prefix() < 8 {
            return Err(format!(
                "{c} is wider than a /8: list the cluster's Service and Pod ranges (e.g. 10.96.0.0/12)"
            ));
        }
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod transport_tests;
