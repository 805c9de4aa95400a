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

/// Why a services file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
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
pub fn parse(path: &Path, text: &str) -> Result<Vec<Service>, ConfigError> {
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
pub fn load(path: &Path) -> Result<Vec<Service>, ConfigError> {
    let text = netmux_common::config::read(path)?;
    parse(path, &text)
}

/// Publishes the file's services, then republishes on every change.
pub async fn start(
    path: PathBuf,
    store: Arc<CatalogStore>,
) -> Result<RuntimeHandle, ServicesError> {
    store.publish(load(&path)?);
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
                    store.publish(services);
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
        let _rt = start(path.clone(), store.clone()).await.unwrap();
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
}
