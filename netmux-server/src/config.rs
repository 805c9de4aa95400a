//! Server configuration: parsed strictly, then validated into [`Config`].
//!
//! Errors name the file, line and key, and say how to fix it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub(crate) use netmux_common::config::{parse_error, ConfigError};

mod limits;
pub(crate) use limits::Limits;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: SocketAddr,
    http: Option<SocketAddr>,
    stream_listen: Option<SocketAddr>,
    state_dir: PathBuf,
    #[serde(default = "default_server_names")]
    server_names: Vec<String>,
    #[serde(default)]
    token: Vec<RawToken>,
    runtime: RuntimeConfig,
    #[serde(default = "default_dial_timeout_ms")]
    dial_timeout_ms: u64,
    #[serde(default = "default_hello_timeout_ms")]
    hello_timeout_ms: u64,
    #[serde(default = "default_reverse_bind")]
    reverse_bind: std::net::IpAddr,
    adhoc_namespace: Option<String>,
    #[serde(default = "default_expose_ports")]
    expose_ports: Vec<crate::reverse::PortRange>,
    rbac: Option<RawRbac>,
    #[serde(default = "default_max_udp_flows")]
    max_udp_flows: usize,
    #[serde(default = "default_udp_idle_timeout_ms")]
    udp_idle_timeout_ms: u64,
    #[serde(default)]
    cluster_cidrs: Vec<String>,
    #[serde(default = "default_half_close_timeout_ms")]
    half_close_timeout_ms: u64,
    #[serde(default = "default_intercept_ttl_ms")]
    intercept_ttl_ms: u64,
    #[serde(default)]
    limits: limits::RawLimits,
    #[serde(default = "default_worker_threads")]
    worker_threads: usize,
    /// Read wide so that 70000 or -1 is refused naming the key.
    #[serde(default)]
    replica_port: i64,
}

/// Default of `worker_threads`: one (issue 17). Per request, a second
/// worker cost about 40% more CPU and syscalls in the bench (futex
/// wakeups between the workers, fewer requests per packet).
fn default_worker_threads() -> usize {
    1
}

/// Default of `intercept_ttl_ms` (docs/intercept.md).
pub const DEFAULT_INTERCEPT_TTL_MS: u64 = 15_000;

fn default_intercept_ttl_ms() -> u64 {
    DEFAULT_INTERCEPT_TTL_MS
}

/// `[rbac]`: authenticate daemons by their Kubernetes credential and
/// authorize with RBAC (see [`crate::access::kubernetes`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRbac {
    #[serde(default = "default_rbac_cache_ttl_ms")]
    cache_ttl_ms: u64,
    #[serde(default = "default_rbac_audiences")]
    audiences: Vec<String>,
    #[serde(default = "default_rbac_review_timeout_ms")]
    review_timeout_ms: u64,
    #[serde(default = "default_rbac_reviews_in_flight")]
    reviews_in_flight: usize,
    #[serde(default = "default_rbac_negative_cache_ms")]
    negative_cache_ms: u64,
    #[serde(default = "default_rbac_recheck_interval_ms")]
    recheck_interval_ms: u64,
}

fn default_rbac_recheck_interval_ms() -> u64 {
    crate::access::recheck_interval_default().as_millis() as u64
}

fn default_rbac_audiences() -> Vec<String> {
    crate::access::kubernetes::TokenReviewConfig::default().audiences
}
fn default_rbac_review_timeout_ms() -> u64 {
    5_000
}
fn default_rbac_reviews_in_flight() -> usize {
    8
}
fn default_rbac_negative_cache_ms() -> u64 {
    10_000
}

fn default_rbac_cache_ttl_ms() -> u64 {
    10_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    token: String,
}

fn default_server_names() -> Vec<String> {
    vec!["netmux-server".into()]
}
fn default_dial_timeout_ms() -> u64 {
    3000
}
/// After a half-close, the other direction of a proxied connection may
/// stay silent this long before both are reset (`0`: never).
pub(crate) const DEFAULT_HALF_CLOSE_TIMEOUT_MS: u64 = 600_000;

fn default_half_close_timeout_ms() -> u64 {
    DEFAULT_HALF_CLOSE_TIMEOUT_MS
}

fn default_hello_timeout_ms() -> u64 {
    5000
}
fn default_reverse_bind() -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
}
fn default_expose_ports() -> Vec<crate::reverse::PortRange> {
    vec![crate::reverse::PortRange::UNPRIVILEGED]
}
fn default_max_udp_flows() -> usize {
    1024
}
fn default_udp_idle_timeout_ms() -> u64 {
    60_000
}

/// Where services come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RuntimeConfig {
    /// A services file, reloaded on change (bare metal, tests, demo).
    Static {
        /// Path of the services file.
        services: PathBuf,
        /// Where the file's L2C entries may point (CIDRs or addresses);
        /// unset: anywhere but the never-list ([`crate::policy`]).
        #[serde(default)]
        allowed_target_cidrs: Option<Vec<crate::policy::Cidr>>,
        /// Exceptions to the never-list (loopback, link-local, metadata,
        /// the server's own addresses...).
        #[serde(default)]
        allow_unsafe_targets: Vec<crate::policy::Cidr>,
    },
    /// Services and EndpointSlices of the cluster the server runs in (or
    /// of KUBECONFIG's); see [`crate::runtime::kubernetes`].
    Kubernetes {
        /// `"own"` (default), `"all"`, or a list of namespaces.
        #[serde(default)]
        namespaces: crate::runtime::kubernetes::Namespaces,
        /// Publish Services without an `nx` annotation (default true).
        #[serde(default = "default_true")]
        publish_unannotated: bool,
        /// Cluster DNS domain for per-pod names (default `cluster.local`).
        #[serde(default = "default_cluster_domain")]
        cluster_domain: String,
        /// How long the first list may take before start fails (ms).
        #[serde(default = "default_initial_sync_timeout_ms")]
        initial_sync_timeout_ms: u64,
        /// Where catalog entries may point (CIDRs or addresses); unset:
        /// the cluster's own Service and pod addresses
        /// ([`crate::policy`]).
        #[serde(default)]
        allowed_target_cidrs: Option<Vec<crate::policy::Cidr>>,
        /// Exceptions to the never-list (loopback, link-local, metadata,
        /// the server's own addresses...).
        #[serde(default)]
        allow_unsafe_targets: Vec<crate::policy::Cidr>,
    },
    /// Containers of a Docker host, or of Podman's Docker-compatible API;
    /// see [`crate::runtime::docker`].
    Docker(crate::runtime::docker::Settings),
}

fn default_true() -> bool {
    true
}
fn default_cluster_domain() -> String {
    "cluster.local".into()
}
fn default_initial_sync_timeout_ms() -> u64 {
    60_000
}

/// A daemon credential the server accepts.
#[derive(Clone)]
pub struct Token {
    /// Who holds it (logs, metrics).
    pub name: String,
    /// The secret.
    pub secret: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("secret", &"***")
            .finish()
    }
}

/// Validated server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// QUIC (UDP) listen address.
    pub listen: SocketAddr,
    /// Health and metrics HTTP address.
    pub http: Option<SocketAddr>,
    /// TCP address where QUIC also arrives as length-prefixed datagrams
    /// over a byte stream (`kubectl port-forward`, networks without UDP).
    pub stream_listen: Option<SocketAddr>,
    /// Where the CA and server certificate are kept.
    pub state_dir: PathBuf,
    /// Names (DNS or IP) in the server certificate.
    pub server_names: Vec<String>,
    /// Accepted bearer tokens.
    pub tokens: Vec<Token>,
    /// Service discovery.
    pub runtime: RuntimeConfig,
    /// Dial timeout towards targets.
    pub(crate) dial_timeout: Duration,
    /// Time a daemon has to complete its hello.
    pub(crate) hello_timeout: Duration,
    /// Where cluster-side listeners of C2L services without addresses bind.
    pub reverse_bind: std::net::IpAddr,
    /// Namespace of services exposed ad hoc (`netmux expose`); unset: the
    /// server's own namespace with the Kubernetes runtime, and `expose`
    /// refused with the static runtime (no silent `default`).
    pub adhoc_namespace: Option<String>,
    /// Ports `netmux expose` may listen on (`expose_ports`, default
    /// 1024-65535); the server's own listening ports never.
    pub expose_ports: Vec<crate::reverse::PortRange>,
    /// Kubernetes RBAC: `Some(how long answers are cached)`; configured
    /// tokens are accepted besides.
    pub rbac: Option<Duration>,
    /// How often a Kubernetes user's live session is checked again
    /// (`rbac.recheck_interval_ms`).
    pub rbac_recheck: Duration,
    /// UDP flows one daemon may have open at once; more are refused.
    pub(crate) max_udp_flows: usize,
    /// A UDP flow idle this long is closed.
    pub(crate) udp_idle_timeout: Duration,
    /// The cluster's Service and Pod ranges, announced to daemons in the
    /// hello: their eBPF redirect takes over only catalog addresses inside
    /// them (unless the daemon's endpoint sets its own `cluster_cidrs`).
    pub(crate) cluster_cidrs: Vec<netmux_common::proto::cidr::Cidr>,
    /// `half_close_timeout_ms`: once one direction of a proxied connection
    /// ended, the other is reset after moving no byte this long (`None`:
    /// never).
    pub(crate) half_close_timeout: Option<Duration>,
    /// `intercept_ttl_ms`: an intercept's Lease lasts this long past its
    /// last renewal, and an intercept whose daemon was silent this long
    /// ends (the Service is restored).
    pub intercept_ttl: Duration,
    /// Async runtime workers (`worker_threads`; 0 in the file: one per CPU).
    pub worker_threads: usize,
    /// `replica_port`: the UDP port of the replica endpoint on the pod IP
    /// (docs/intercept.md, "Several replicas"); 0: an ephemeral one.
    pub replica_port: u16,
    /// `[limits]`: caps on connections, pending hellos, `stream_listen`
    /// peers and per-session resources.
    pub limits: Limits,
    /// `[rbac]`'s TokenReview settings: audiences, timeout, concurrency,
    /// negative cache (defaults without `[rbac]`).
    pub(crate) token_review: crate::access::kubernetes::TokenReviewConfig,
}

/// Shortest accepted token: long enough not to be guessed.
pub(crate) const MIN_TOKEN_LEN: usize = 16;

impl Config {
    /// The server's own listening ports, `replica_port` included (never
    /// taken by `netmux expose`).
    pub fn own_ports(&self) -> Vec<u16> {
        [Some(self.listen), self.stream_listen, self.http]
            .into_iter()
            .flatten()
            .map(|a| a.port())
            .chain([self.replica_port])
            .filter(|p| *p != 0)
            .collect()
    }

    /// The ranges announced to daemons in the hello: `cluster_cidrs`, else
    /// the Kubernetes runtime's `allowed_target_cidrs` (where catalog
    /// entries may point), else none (daemons then redirect nothing
    /// unless their endpoint sets `cluster_cidrs`).
    pub(crate) fn announced_ranges(&self) -> Vec<netmux_common::proto::cidr::Cidr> {
        if !self.cluster_cidrs.is_empty() {
            return self.cluster_cidrs.clone();
        }
        match &self.runtime {
            RuntimeConfig::Kubernetes {
                allowed_target_cidrs: Some(list),
                ..
            } => list
                .iter()
                .filter_map(|c| c.to_string().parse().ok())
                .filter(|c: &netmux_common::proto::cidr::Cidr| c.prefix() >= 8)
                .take(netmux_common::proto::cidr::MAX_RANGES)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = netmux_common::config::read(path)?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text` read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field: field.to_owned(),
            message,
        };
        if raw.intercept_ttl_ms < 1000 {
            return Err(invalid(
                "intercept_ttl_ms",
                format!(
                    "{} is below 1000 (a Lease lasts whole seconds); the default is {DEFAULT_INTERCEPT_TTL_MS}",
                    raw.intercept_ttl_ms
                ),
            ));
        }
        if raw.server_names.is_empty() {
            return Err(invalid(
                "server_names",
                "list at least one name the daemons will use to reach the server".into(),
            ));
        }
        let mut tokens: Vec<Token> = Vec::new();
        for (i, t) in raw.token.into_iter().enumerate() {
            if t.token.len() < MIN_TOKEN_LEN {
                return Err(invalid(
                    &format!("token[{i}].token"),
                    format!("token of {:?} is shorter than {MIN_TOKEN_LEN} characters; use a random one (e.g. `openssl rand -hex 24`)", t.name),
                ));
            }
            if tokens.iter().any(|o| o.name == t.name) {
                return Err(invalid(
                    &format!("token[{i}].name"),
                    format!("{:?} is listed twice", t.name),
                ));
            }
            tokens.push(Token {
                name: t.name,
                secret: t.token,
            });
        }
        if tokens.is_empty() && raw.rbac.is_none() {
            return Err(invalid(
                "token",
                "no [[token]] configured and no [rbac]: every daemon would be refused; add a token or [rbac]".into(),
            ));
        }
        if raw.rbac.as_ref().is_some_and(|r| r.cache_ttl_ms == 0) {
            return Err(invalid(
                "rbac.cache_ttl_ms",
                "must be positive (a few seconds: how long an RBAC answer is reused)".into(),
            ));
        }
        if raw
            .rbac
            .as_ref()
            .is_some_and(|r| r.recheck_interval_ms == 0)
        {
            return Err(invalid(
                "rbac.recheck_interval_ms",
                format!("must be positive (how often a live session's credential and RBAC are checked again; default {})", default_rbac_recheck_interval_ms()),
            ));
        }
        let token_review = match &raw.rbac {
            Some(r) => token_review(path, r)?,
            None => Default::default(),
        };
        let limits = raw.limits.validate(path)?;
        let worker_threads = netmux_common::config::worker_threads(raw.worker_threads)
            .map_err(|m| invalid("worker_threads", m))?;
        let replica_port = u16::try_from(raw.replica_port).map_err(|_| {
            invalid(
                "replica_port",
                format!("{} is not a UDP port; use one from 1 to 65535 (a NetworkPolicy around the server pods must admit UDP on it between them), or 0 (the default) for an ephemeral one", raw.replica_port),
            )
        })?;
        if raw.dial_timeout_ms == 0 || raw.hello_timeout_ms == 0 {
            return Err(invalid(
                "dial_timeout_ms/hello_timeout_ms",
                "timeouts must be positive".into(),
            ));
        }
        if let Some(ns) = raw
            .adhoc_namespace
            .as_deref()
            .filter(|ns| !netmux_common::proto::catalog::valid_dns_name(ns) || ns.contains('.'))
        {
            return Err(invalid(
                "adhoc_namespace",
                format!("{ns:?} must be one DNS label (a Kubernetes namespace)"),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let runtime = match raw.runtime {
            RuntimeConfig::Static {
                services,
                allowed_target_cidrs,
                allow_unsafe_targets,
            } => RuntimeConfig::Static {
                services: base.join(services),
                allowed_target_cidrs,
                allow_unsafe_targets,
            },
            k @ RuntimeConfig::Kubernetes { .. } => k,
            d @ RuntimeConfig::Docker(_) => d,
        };
        if let RuntimeConfig::Docker(d) = &runtime {
            d.validate()
                .map_err(|(key, message)| invalid(key, message))?;
        }
        if let RuntimeConfig::Kubernetes {
            cluster_domain,
            initial_sync_timeout_ms,
            allowed_target_cidrs,
            ..
        } = &runtime
        {
            if !netmux_common::proto::catalog::valid_dns_name(cluster_domain) {
                return Err(invalid(
                    "runtime.cluster_domain",
                    format!("{cluster_domain:?} must be a DNS name such as cluster.local"),
                ));
            }
            if matches!(allowed_target_cidrs, Some(l) if l.is_empty()) {
                return Err(invalid(
                    "runtime.allowed_target_cidrs",
                    "an empty list refuses every target; fix: list CIDRs such as [\"10.96.0.0/12\", \"10.244.0.0/16\"], or remove the key to allow the cluster's own Service and pod addresses".into(),
                ));
            }
            if *initial_sync_timeout_ms == 0 {
                return Err(invalid(
                    "runtime.initial_sync_timeout_ms",
                    "must be positive".into(),
                ));
            }
        }
        if let RuntimeConfig::Static {
            allowed_target_cidrs: Some(l),
            ..
        } = &runtime
        {
            if l.is_empty() {
                return Err(invalid(
                    "runtime.allowed_target_cidrs",
                    "an empty list refuses every target; fix: list CIDRs such as [\"10.96.0.0/12\"], or remove the key to allow any address outside the never-list".into(),
                ));
            }
        }
        let mut cluster_cidrs = Vec::new();
        for (i, c) in raw.cluster_cidrs.iter().enumerate() {
            let cidr: netmux_common::proto::cidr::Cidr =
                c.parse()
                    .map_err(|e: netmux_common::proto::cidr::CidrError| {
                        invalid(&format!("cluster_cidrs[{i}]"), e.to_string())
                    })?;
            if cidr.prefix() < 8 {
                return Err(invalid(
                    &format!("cluster_cidrs[{i}]"),
                    format!("{cidr} is wider than a /8: list the cluster's Service and Pod ranges, e.g. \"10.96.0.0/12\""),
                ));
            }
            cluster_cidrs.push(cidr);
        }
        if cluster_cidrs.len() > netmux_common::proto::cidr::MAX_RANGES {
            return Err(invalid(
                "cluster_cidrs",
                format!("at most {} ranges", netmux_common::proto::cidr::MAX_RANGES),
            ));
        }
        Ok(Config {
            cluster_cidrs,
            listen: raw.listen,
            http: raw.http,
            stream_listen: raw.stream_listen,
            state_dir: base.join(raw.state_dir),
            server_names: raw.server_names,
            tokens,
            runtime,
            dial_timeout: Duration::from_millis(raw.dial_timeout_ms),
            hello_timeout: Duration::from_millis(raw.hello_timeout_ms),
            half_close_timeout: (raw.half_close_timeout_ms > 0)
                .then(|| Duration::from_millis(raw.half_close_timeout_ms)),
            intercept_ttl: Duration::from_millis(raw.intercept_ttl_ms),
            reverse_bind: raw.reverse_bind,
            adhoc_namespace: raw.adhoc_namespace,
            expose_ports: raw.expose_ports,
            rbac: raw
                .rbac
                .as_ref()
                .map(|r| Duration::from_millis(r.cache_ttl_ms)),
            rbac_recheck: raw
                .rbac
                .as_ref()
                .map_or(crate::access::recheck_interval_default(), |r| {
                    Duration::from_millis(r.recheck_interval_ms)
                }),
            max_udp_flows: raw.max_udp_flows,
            udp_idle_timeout: Duration::from_millis(raw.udp_idle_timeout_ms.max(100)),
            limits,
            worker_threads,
            replica_port,
            token_review,
        })
    }
}

/// `[rbac]`'s TokenReview keys, validated.
fn token_review(
    path: &Path,
    r: &RawRbac,
) -> Result<crate::access::kubernetes::TokenReviewConfig, ConfigError> {
    let invalid = |field: &str, message: &str| ConfigError::Invalid {
        path: path.to_owned(),
        field: format!("rbac.{field}"),
        message: message.to_owned(),
    };
    if r.review_timeout_ms == 0 || r.negative_cache_ms == 0 || r.reviews_in_flight == 0 {
        return Err(invalid(
            "review_timeout_ms/negative_cache_ms/reviews_in_flight",
            "must be positive (remove the key for the default)",
        ));
    }
    if r.audiences.iter().any(|a| a.trim().is_empty()) {
        return Err(invalid(
            "audiences",
            "an audience is empty; fix: audiences = [\"netmux\"] (tokens from `kubectl create token SA --audience netmux`)",
        ));
    }
    Ok(crate::access::kubernetes::TokenReviewConfig {
        audiences: r.audiences.clone(),
        timeout: Duration::from_millis(r.review_timeout_ms),
        in_flight: r.reviews_in_flight,
        negative_ttl: Duration::from_millis(r.negative_cache_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:7443"
http = "127.0.0.1:7080"
state_dir = "state"
[[token]]
name = "alice"
token = "0123456789abcdef0123"
[runtime]
kind = "static"
services = "services.toml"
"#;

    #[test]
    fn good_config_resolves_relative_paths() {
        let c = Config::parse(Path::new("/etc/netmux/server.toml"), GOOD).unwrap();
        assert_eq!(c.state_dir, Path::new("/etc/netmux/state"));
        assert!(format!("{c:?}").contains("***"));
        assert!(!format!("{c:?}").contains("0123456789abcdef0123"));
    }

    #[test]
    fn kubernetes_allowed_targets_are_announced_without_cluster_cidrs() {
        let text = GOOD.replace(
            "kind = \"static\"\nservices = \"services.toml\"",
            "kind = \"kubernetes\"\nallowed_target_cidrs = [\"10.96.0.0/12\", \"10.244.0.0/16\"]",
        );
        let c = Config::parse(Path::new("s.toml"), &text).unwrap();
        let got: Vec<String> = c.announced_ranges().iter().map(|c| c.to_string()).collect();
        assert_eq!(got, ["10.96.0.0/12", "10.244.0.0/16"]);
        let c = Config::parse(
            Path::new("s.toml"),
            &format!("cluster_cidrs = [\"10.0.0.0/8\"]\n{text}"),
        )
        .unwrap();
        assert_eq!(c.announced_ranges().len(), 1);
        assert!(Config::parse(Path::new("s.toml"), GOOD)
            .unwrap()
            .announced_ranges()
            .is_empty());
    }

    #[test]
    fn worker_threads_default_to_one_and_are_bounded() {
        let c = Config::parse(Path::new("s.toml"), GOOD).unwrap();
        assert_eq!(c.worker_threads, 1);
        let c = Config::parse(Path::new("s.toml"), &format!("worker_threads = 3\n{GOOD}")).unwrap();
        assert_eq!(c.worker_threads, 3);
        let c = Config::parse(Path::new("s.toml"), &format!("worker_threads = 0\n{GOOD}")).unwrap();
        assert!(c.worker_threads >= 1, "0 means one per CPU");
        let err = Config::parse(
            Path::new("s.toml"),
            &format!("worker_threads = 5000\n{GOOD}"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("worker_threads") && err.contains("one per CPU"),
            "{err}"
        );
        let err = Config::parse(Path::new("s.toml"), &format!("worker_threads = -1\n{GOOD}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("s.toml:1:"), "points at the line: {err}");
    }

    #[test]
    fn replica_port_defaults_to_ephemeral_and_is_a_port() {
        let c = Config::parse(Path::new("s.toml"), GOOD).unwrap();
        assert_eq!(c.replica_port, 0);
        let text = format!("replica_port = 7444\n{GOOD}");
        let c = Config::parse(Path::new("s.toml"), &text).unwrap();
        assert_eq!(c.replica_port, 7444);
        assert!(c.own_ports().contains(&7444), "never taken by expose");
        for bad in ["70000", "-1"] {
            let text = format!("replica_port = {bad}\n{GOOD}");
            let err = Config::parse(Path::new("s.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(err.contains("`replica_port`") && err.contains(bad), "{err}");
        }
        let text = format!("replica_port = \"7444\"\n{GOOD}");
        let err = Config::parse(Path::new("s.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("s.toml:1:"), "points at the line: {err}");
    }

    #[test]
    fn cluster_cidrs_are_validated() {
        let c = Config::parse(Path::new("s.toml"), GOOD).unwrap();
        assert!(c.cluster_cidrs.is_empty());
        let text = format!("cluster_cidrs = [\"10.96.0.0/12\", \"fd00::/108\"]\n{GOOD}");
        let c = Config::parse(Path::new("s.toml"), &text).unwrap();
        assert_eq!(c.cluster_cidrs.len(), 2);
        for bad in ["10.96.0.1/12", "0.0.0.0/0", "ten"] {
            let text = format!("cluster_cidrs = [\"{bad}\"]\n{GOOD}");
            let err = Config::parse(Path::new("s.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(err.contains("cluster_cidrs[0]"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = GOOD.replace("http =", "htp =");
        let err = Config::parse(Path::new("s.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("s.toml:3:"), "{err}");
        assert!(err.contains("htp"), "{err}");
    }

    #[test]
    fn short_token_is_refused_with_the_fix() {
        let text = GOOD.replace("0123456789abcdef0123", "short");
        let err = Config::parse(Path::new("s.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("token[0].token"), "{err}");
        assert!(err.contains("shorter than 16"), "{err}");
    }

    #[test]
    fn adhoc_namespace_has_no_silent_default() {
        let c = Config::parse(Path::new("s.toml"), GOOD).unwrap();
        assert_eq!(c.adhoc_namespace, None);
        let text = GOOD.replace("state_dir", "adhoc_namespace = \"dev\"\nstate_dir");
        let c = Config::parse(Path::new("s.toml"), &text).unwrap();
        assert_eq!(c.adhoc_namespace.as_deref(), Some("dev"));
        let text = GOOD.replace("state_dir", "adhoc_namespace = \"a.b\"\nstate_dir");
        let e = Config::parse(Path::new("s.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("adhoc_namespace"), "{e}");
    }

    #[test]
    fn rbac_alone_is_enough() {
        let text = GOOD.replace(
            "[[token]]\nname = \"alice\"\ntoken = \"0123456789abcdef0123\"\n",
            "[rbac]\ncache_ttl_ms = 5000\n",
        );
        let c = Config::parse(Path::new("s.toml"), &text).unwrap();
        assert_eq!(c.rbac, Some(Duration::from_secs(5)));
        assert!(c.tokens.is_empty());
    }

    #[test]
    fn no_token_is_refused() {
        let text = GOOD.replace(
            "[[token]]\nname = \"alice\"\ntoken = \"0123456789abcdef0123\"\n",
            "",
        );
        assert!(Config::parse(Path::new("s.toml"), &text).is_err());
    }

    #[test]
    fn kubernetes_runtime_defaults_and_forms() {
        use crate::runtime::kubernetes::Namespaces;
        let k8s = |table: &str| {
            let text = GOOD.replace(
                "kind = \"static\"\nservices = \"services.toml\"",
                &format!("kind = \"kubernetes\"\n{table}"),
            );
            Config::parse(Path::new("s.toml"), &text).map(|c| c.runtime)
        };
        match k8s("").unwrap() {
            RuntimeConfig::Kubernetes {
                namespaces,
                publish_unannotated,
                cluster_domain,
                ..
            } => {
                assert_eq!(namespaces, Namespaces::Own);
                assert!(publish_unannotated);
                assert_eq!(cluster_domain, "cluster.local");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            k8s("namespaces = \"all\"").unwrap(),
            RuntimeConfig::Kubernetes {
                namespaces: Namespaces::All,
                ..
            }
        ));
        assert!(matches!(
            k8s("namespaces = [\"a\", \"b\"]\npublish_unannotated = false").unwrap(),
            RuntimeConfig::Kubernetes { namespaces: Namespaces::List(l), publish_unannotated: false, .. } if l == ["a", "b"]
        ));
        let e = k8s("namespaces = \"everything\"").unwrap_err().to_string();
        assert!(e.contains("\"own\", \"all\""), "{e}");
        let e = k8s("namespace = \"a\"").unwrap_err().to_string();
        assert!(e.contains("namespace"), "{e}");
    }
}
