//! The static runtime: services listed in a TOML file, reloaded on change.
//!
//! ```toml
//! [[service]]
//! name = "postgres"
//! namespace = "db"              # default "default"
//! addresses = ["10.96.0.20"]    # what clients dial and the server dials
//! aliases = ["pg.example.internal"]
//! direction = "L2C"             # default L2C
//! ports = [{ port = 5432, target_port = 5432, name = "pg", protocol = "tcp" }]
//! ```
//!
//! A file that fails to parse or validate on reload is reported and the
//! previous catalog stays in force: a typo never empties the catalog.
//!
//! The target policy ([`crate::policy`], `allowed_target_cidrs` and
//! `allow_unsafe_targets` beside `services`) screens every L2C address, the
//! ones the server dials: a refused address is left out, logged and counted
//! in `netmux_server_catalog_refused_total`; an entry left with none is not
//! published; the other entries are. The file's author is the server's
//! admin, so a listed address counts as assigned: without
//! `allowed_target_cidrs` only the never-list refuses. C2L addresses are
//! where this server listens, not targets, and are kept.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use netmux_common::proto::catalog::{Direction, Protocol, Service, ServiceId, ServicePort};
use notify::Watcher;
use serde::Deserialize;

use super::RuntimeHandle;
use crate::catalog::CatalogStore;
use crate::config::{parse_error, ConfigError};
use crate::policy::{Refusal, TargetPolicy};

/// Why a services file is unusable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServicesError {
    /// Read, syntax or schema problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The file could not be watched for changes.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// File.
        path: PathBuf,
        /// Cause.
        source: notify::Error,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default)]
    addresses: Vec<IpAddr>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default = "default_direction")]
    direction: Direction,
    ports: Vec<RawPort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    port: u16,
    target_port: Option<u16>,
    name: Option<String>,
    #[serde(default = "default_protocol")]
    protocol: RawProtocol,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawProtocol {
    Tcp,
    Udp,
}

fn default_namespace() -> String {
    "default".into()
}
fn default_direction() -> Direction {
    Direction::L2C
}
fn default_protocol() -> RawProtocol {
    RawProtocol::Tcp
}

/// Parses and validates a services file's text.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Vec<Service>, ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
    let mut out: Vec<Service> = Vec::with_capacity(raw.service.len());
    for (i, s) in raw.service.into_iter().enumerate() {
        let svc = Service {
            id: ServiceId(0),
            name: s.name,
            namespace: s.namespace,
            aliases: s.aliases,
            addresses: s.addresses,
            ports: s
                .ports
                .into_iter()
                .map(|p| ServicePort {
                    name: p.name,
                    port: p.port,
                    target_port: p.target_port.unwrap_or(p.port),
                    protocol: match p.protocol {
                        RawProtocol::Tcp => Protocol::Tcp,
                        RawProtocol::Udp => Protocol::Udp,
                    },
                })
                .collect(),
            direction: s.direction,
        };
        let field = format!("service[{i}]");
        svc.validate().map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            field: field.clone(),
            message: e.to_string(),
        })?;
        if out
            .iter()
            .any(|o| o.name == svc.name && o.namespace == svc.namespace)
        {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                field,
                message: format!("{} is listed twice", svc.key()),
            });
        }
        out.push(svc);
    }
    Ok(out)
}

/// Reads and validates a services file.
pub(crate) fn load(path: &Path) -> Result<Vec<Service>, ConfigError> {
    let text = netmux_common::config::read(path)?;
    parse(path, &text)
}

/// An address the target policy left out of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    /// The entry's key (`namespace/name`).
    pub(crate) service: String,
    /// The refused address.
    pub(crate) address: IpAddr,
    /// Why.
    pub(crate) why: Refusal,
}

/// `services` without the L2C addresses `policy` refuses (an entry left
/// with none is dropped), and what was refused.
pub(crate) fn screen(
    services: Vec<Service>,
    policy: &TargetPolicy,
) -> (Vec<Service>, Vec<Refused>) {
    let mut refused = Vec::new();
    let kept = services
        .into_iter()
        .filter_map(|mut svc| {
            if svc.direction != Direction::L2C || svc.addresses.is_empty() {
                return Some(svc);
            }
            let key = svc.key();
            svc.addresses.retain(|ip| match policy.check(*ip, true) {
                Ok(()) => true,
                Err(why) => {
                    refused.push(Refused {
                        service: key.clone(),
                        address: *ip,
                        why,
                    });
                    false
                }
            });
            (!svc.addresses.is_empty()).then_some(svc)
        })
        .collect();
    (kept, refused)
}

/// Screens `services`, tells every refusal (log line, metric), publishes
/// the rest.
fn publish(store: &CatalogStore, policy: &TargetPolicy, services: Vec<Service>) {
    let (kept, refused) = screen(services, policy);
    for r in &refused {
        tracing::warn!(service = %r.service, address = %r.address, reason = r.why.label(), "services file entry's address refused: {}", r.why);
        store
            .metrics()
            .catalog_refused
            .with_label_values(&[r.why.label()])
            .inc();
    }
    store.publish(kept);
}

/// Publishes the file's services that `policy` allows, then republishes
/// on every change.
pub(crate) async fn start(
    path: PathBuf,
    policy: TargetPolicy,
    store: Arc<CatalogStore>,
) -> Result<RuntimeHandle, ServicesError> {
    publish(&store, &policy, load(&path)?);
    tracing::info!(path = %path.display(), services = store.current().len(), "static runtime loaded");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let name = path.file_name().map(|n| n.to_owned());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if event
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_owned()) == name)
            {
                let _ = tx.try_send(());
            }
        }
    })
    .map_err(|source| ServicesError::Watch {
        path: path.clone(),
        source,
    })?;
    // Watch the directory: editors and `mv` replace the file's inode.
    let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|source| ServicesError::Watch {
            path: dir.clone(),
            source,
        })?;
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Let a burst of writes settle before reading.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            match load(&path) {
                Ok(services) => {
                    publish(&store, &policy, services);
                    tracing::info!(path = %path.display(), services = store.current().len(), "services reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "services file rejected; keeping the previous catalog")
                }
            }
        }
    });
    Ok(RuntimeHandle {
        _task: task,
        _watcher: Some(watcher),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_defaults() {
        let text = r#"
[[service]]
name = "web"
addresses = ["10.96.0.10"]
ports = [{ port = 80, target_port = 8080, name = "http" }, { port = 443 }]
"#;
        let s = parse(Path::new("svc.toml"), text).unwrap();
        assert_eq!(s[0].namespace, "default");
        assert_eq!(s[0].direction, Direction::L2C);
        assert_eq!(s[0].ports[1].target_port, 443);
        assert_eq!(s[0].ports[1].protocol, Protocol::Tcp);
    }

    #[test]
    fn errors_name_the_entry_and_the_problem() {
        let text = "[[service]]\nname = \"Bad_Name\"\naddresses = [\"10.0.0.1\"]\nports = [{ port = 80 }]\n";
        let e = parse(Path::new("svc.toml"), text).unwrap_err().to_string();
        assert!(e.contains("service[0]") && e.contains("DNS label"), "{e}");

        let text = "[[service]]\nname = \"a\"\nadresses = []\nports = []\n";
        let e = parse(Path::new("svc.toml"), text).unwrap_err().to_string();
        assert!(e.starts_with("svc.toml:3:"), "{e}");

        let text = "[[service]]\nname = \"a\"\naddresses = [\"10.0.0.1\"]\nports = [{ port = 80 }]\n[[service]]\nname = \"a\"\naddresses = [\"10.0.0.2\"]\nports = [{ port = 80 }]\n";
        let e = parse(Path::new("svc.toml"), text).unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
    }

    #[tokio::test]
    async fn reload_publishes_changes_and_keeps_catalog_on_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("services.toml");
        let one =
            "[[service]]\nname = \"a\"\naddresses = [\"10.0.0.1\"]\nports = [{ port = 80 }]\n";
        std::fs::write(&path, one).unwrap();
        let (store, mut rx) = CatalogStore::new(crate::metrics::Metrics::new());
        let _rt = start(path.clone(), TargetPolicy::default(), store.clone())
            .await
            .unwrap();
        rx.borrow_and_update();
        let two = format!("{one}[[service]]\nname = \"b\"\naddresses = [\"10.0.0.2\"]\nports = [{{ port = 81 }}]\n");
        std::fs::write(&path, two).unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("reload within 10s")
            .unwrap();
        assert_eq!(rx.borrow_and_update().len(), 2);
        std::fs::write(&path, "garbage = [").unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            store.current().len(),
            2,
            "bad file must not change the catalog"
        );
    }

    #[tokio::test]
    async fn the_target_policy_screens_the_file_and_counts_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("services.toml");
        let text = "[[service]]\nname = \"web\"\naddresses = [\"10.0.0.1\", \"169.254.169.254\"]\nports = [{ port = 80 }]\n\
                    [[service]]\nname = \"lo\"\naddresses = [\"127.0.0.1\"]\nports = [{ port = 80 }]\n\
                    [[service]]\nname = \"own\"\naddresses = [\"10.0.0.9\"]\nports = [{ port = 80 }]\n\
                    [[service]]\nname = \"far\"\naddresses = [\"192.0.2.7\"]\nports = [{ port = 80 }]\n\
                    [[service]]\nname = \"rev\"\naddresses = [\"127.0.0.1\"]\ndirection = \"C2L\"\nports = [{ port = 81 }]\n";
        std::fs::write(&path, text).unwrap();
        let cidr = |s: &str| crate::policy::Cidr::try_from(s.to_owned()).unwrap();
        let policy = TargetPolicy {
            allowed: Some(vec![cidr("10.0.0.0/8")]),
            allow_unsafe: vec![],
            server_addresses: vec!["10.0.0.9".parse().unwrap()],
        };
        let (store, _rx) = CatalogStore::new(crate::metrics::Metrics::new());
        let _rt = start(path.clone(), policy, store.clone()).await.unwrap();
        let catalog = store.current();
        let by_name = |n: &str| catalog.values().find(|s| s.name == n).cloned();
        let web = by_name("web").expect("web keeps its allowed address");
        assert_eq!(web.addresses, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert!(by_name("lo").is_none(), "loopback only: not published");
        assert!(by_name("own").is_none(), "the server's own address");
        assert!(by_name("far").is_none(), "outside allowed_target_cidrs");
        assert!(by_name("rev").is_some(), "C2L addresses are not targets");
        let metrics = store.metrics().render();
        for reason in ["link_local", "loopback", "server_address", "not_allowed"] {
            assert!(
                metrics.contains(&format!(
                    "netmux_server_catalog_refused_total{{reason=\"{reason}\"}} 1"
                )),
                "{reason} counted: {metrics}"
            );
        }
    }

    #[test]
    fn without_allowed_cidrs_only_the_never_list_refuses() {
        let text = "[[service]]\nname = \"a\"\naddresses = [\"192.0.2.7\", \"fd00:ec2::254\"]\nports = [{ port = 80 }]\n";
        let services = parse(Path::new("svc.toml"), text).unwrap();
        let (kept, refused) = screen(services.clone(), &TargetPolicy::default());
        assert_eq!(
            kept[0].addresses,
            vec!["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            refused,
            vec![Refused {
                service: "default/a".into(),
                address: "fd00:ec2::254".parse().unwrap(),
                why: Refusal::LinkLocal,
            }]
        );
        let unsafe_ok = TargetPolicy {
            allow_unsafe: vec![crate::policy::Cidr::try_from("fd00:ec2::254".to_owned()).unwrap()],
            ..TargetPolicy::default()
        };
        assert_eq!(screen(services, &unsafe_ok).0[0].addresses.len(), 2);
    }
}
