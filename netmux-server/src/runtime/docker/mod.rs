//! The Docker runtime: the catalog follows a Docker host's containers.
//!
//! ```toml
//! [runtime]
//! kind = "docker"
//! host = "unix:///var/run/docker.sock"  # default: $DOCKER_HOST, else this
//! networks = ["shop_default"]           # publish every container on these
//! namespace = "docker"                  # catalog namespace of containers
//! cluster_domain = "docker.internal"
//! ```
//!
//! Talks to the Docker Engine API (or Podman's Docker-compatible API) with
//! bollard. The driver subscribes to `/events` from just before a full
//! list, so nothing that happens in between is lost; each container or
//! network event re-inspects the container it names (start, die, rename,
//! health_status, network connect/disconnect...), and after each burst the
//! whole catalog is rebuilt by the sans-IO [`catalog::catalog_from`] and
//! handed to the [`CatalogStore`], which wakes daemons only if something
//! changed. When the API goes away (dockerd restarting) the driver retries
//! with backoff, then lists again and follows again. Problems (invalid
//! labels, name conflicts) are logged once per distinct problem.

pub(crate) mod catalog;
mod client;
mod time;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::Docker;
use futures::{FutureExt, StreamExt};
use netmux_common::sync::lock;
use serde::Deserialize;

pub(crate) use catalog::{catalog_from, CatalogOptions, Container, Problem, Reach};

use super::RuntimeHandle;
use crate::catalog::CatalogStore;

/// `[runtime]` with `kind = "docker"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Docker API address: `unix:///path` or `tcp://host:port` (TLS with
    /// `DOCKER_CERT_PATH`/`DOCKER_TLS_VERIFY`); default `$DOCKER_HOST`,
    /// else `unix:///var/run/docker.sock`.
    #[serde(default)]
    pub(crate) host: Option<String>,
    /// Containers on these networks are published without a label.
    #[serde(default)]
    pub(crate) networks: Vec<String>,
    /// Catalog namespace of the published containers (default `docker`).
    #[serde(default = "default_namespace")]
    pub(crate) namespace: String,
    /// Domain under which aliases are also published (default
    /// `docker.internal`); daemons set the same `cluster_domain`.
    #[serde(default = "default_domain")]
    pub(crate) cluster_domain: String,
    /// The container the server runs in (name or id), when it runs in one:
    /// only addresses on its networks are published. Default: found from
    /// `HOSTNAME` when `/.dockerenv` or `/run/.containerenv` exists; else
    /// the server runs beside dockerd and reaches every network.
    #[serde(default)]
    pub(crate) server_container: Option<String>,
    /// How long the first complete list may take before start fails (ms).
    #[serde(default = "default_initial_sync_timeout_ms")]
    pub(crate) initial_sync_timeout_ms: u64,
    /// Where entries may point (CIDRs or addresses); unset: every address
    /// Docker assigned to a container ([`crate::policy`]).
    #[serde(default)]
    pub(crate) allowed_target_cidrs: Option<Vec<crate::policy::Cidr>>,
    /// Exceptions to the never-list (loopback, link-local, the server's
    /// own addresses...).
    #[serde(default)]
    pub(crate) allow_unsafe_targets: Vec<crate::policy::Cidr>,
}

fn default_namespace() -> String {
    "docker".into()
}
fn default_domain() -> String {
    "docker.internal".into()
}
fn default_initial_sync_timeout_ms() -> u64 {
    30_000
}

impl Settings {
    /// Checks the values: `Err((key, message with the fix))`.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        let label = |s: &str| netmux_common::proto::catalog::valid_dns_name(s) && !s.contains('.');
        if !label(&self.namespace) {
            return Err((
                "runtime.namespace",
                format!("{:?} must be one DNS label such as docker", self.namespace),
            ));
        }
        if !netmux_common::proto::catalog::valid_dns_name(&self.cluster_domain) {
            return Err((
                "runtime.cluster_domain",
                format!(
                    "{:?} must be a DNS name such as docker.internal",
                    self.cluster_domain
                ),
            ));
        }
        if self.initial_sync_timeout_ms == 0 {
            return Err(("runtime.initial_sync_timeout_ms", "must be positive".into()));
        }
        if let Some(h) = &self.host {
            client::endpoint(h, None, false).map_err(|e| ("runtime.host", e.to_string()))?;
        }
        if matches!(&self.allowed_target_cidrs, Some(l) if l.is_empty()) {
            return Err((
                "runtime.allowed_target_cidrs",
                "an empty list refuses every target; fix: list the Docker networks' subnets such as [\"172.18.0.0/16\"], or remove the key to allow every container address".into(),
            ));
        }
        if let Some(bad) = self.networks.iter().find(|n| n.trim().is_empty()) {
            return Err((
                "runtime.networks",
                format!("{bad:?} is not a network name; fix: list names as `docker network ls` shows them"),
            ));
        }
        Ok(())
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The Docker API address is unusable.
    #[error("Docker API {host}: {message}")]
    Host {
        /// As configured or from `DOCKER_HOST`.
        host: String,
        /// What is wrong and the fix.
        message: String,
    },
    /// The first list did not complete.
    #[error("no complete list of containers from the Docker API at {host} within {timeout:?} (last error: {last}); check that dockerd (or `podman system service`) runs and that the server may use its socket")]
    InitialSync {
        /// Where we asked.
        host: String,
        /// How long we waited.
        timeout: Duration,
        /// Last error seen.
        last: String,
    },
}

/// Starts following the Docker API; returns once the first catalog is
/// published.
/// `server_addresses` are the server's own, never published.
pub(crate) async fn start(
    settings: &Settings,
    server_addresses: Vec<std::net::IpAddr>,
    store: Arc<CatalogStore>,
) -> Result<RuntimeHandle, Error> {
    let host = settings
        .host
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| client::DEFAULT_HOST.to_owned());
    let cert_path = std::env::var_os("DOCKER_CERT_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let tls_verify = std::env::var_os("DOCKER_TLS_VERIFY").is_some_and(|v| !v.is_empty());
    let ep = client::endpoint(&host, cert_path.as_deref(), tls_verify)?;
    let docker = client::connect(&ep)?;
    let server_container = settings.server_container.clone().or_else(|| {
        let in_container = ["/.dockerenv", "/run/.containerenv"]
            .iter()
            .any(|p| std::path::Path::new(p).exists());
        in_container
            .then(|| std::env::var("HOSTNAME").ok())
            .flatten()
    });
    let last_error = Arc::new(Mutex::new(String::from("none")));
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let driver = Driver {
        docker,
        host: ep.to_string(),
        options: CatalogOptions {
            namespace: settings.namespace.clone(),
            cluster_domain: settings.cluster_domain.clone(),
            networks: settings.networks.clone(),
            reach: Reach::All,
            policy: crate::policy::TargetPolicy {
                allowed: settings.allowed_target_cidrs.clone(),
                allow_unsafe: settings.allow_unsafe_targets.clone(),
                server_addresses,
            },
        },
        server_container,
        containers: HashMap::new(),
        store,
        reported: HashSet::new(),
        last_error: last_error.clone(),
    };
    let task = tokio::spawn(driver.run(first_tx));
    let timeout = Duration::from_millis(settings.initial_sync_timeout_ms);
    let handle = RuntimeHandle::after_first_sync(task, first_rx, timeout, &last_error)
        .await
        .map_err(|last| Error::InitialSync {
            host: ep.to_string(),
            timeout,
            last,
        })?;
    tracing::info!(host = %ep, "docker runtime synced");
    Ok(handle)
}

/// Backoff between attempts while the API is away.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Container actions after which a container is inspected again; the
/// others (exec_*, attach, top...) change nothing the catalog shows.
const RELEVANT: &[&str] = &[
    "create",
    "start",
    "restart",
    "die",
    "stop",
    "kill",
    "destroy",
    "remove",
    "rename",
    "pause",
    "unpause",
    "update",
    "health_status",
    "connect",
    "disconnect",
];

struct Driver {
    docker: Docker,
    host: String,
    options: CatalogOptions,
    server_container: Option<String>,
    /// Running containers by id.
    containers: HashMap<String, Container>,
    store: Arc<CatalogStore>,
    /// Problems already logged; one that goes away and comes back is
    /// logged again.
    reported: HashSet<Problem>,
    last_error: Arc<Mutex<String>>,
}

impl Driver {
    async fn run(mut self, first: tokio::sync::oneshot::Sender<()>) {
        let mut first = Some(first);
        let mut retry = RETRY_MIN;
        loop {
            let e = self.follow(&mut first, &mut retry).await;
            tracing::warn!(host = %self.host, error = %e, retry_in = ?retry, "docker API unavailable; will list containers again and follow events");
            *lock(&self.last_error) = e;
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(RETRY_MAX);
        }
    }

    /// One session: list, publish, then follow events until the stream
    /// breaks; returns why.
    async fn follow(
        &mut self,
        first: &mut Option<tokio::sync::oneshot::Sender<()>>,
        retry: &mut Duration,
    ) -> String {
        // Events from just before the list: anything that happens while
        // listing is replayed; a replayed event only re-inspects.
        let since = match self.docker.info().await {
            Ok(info) => info.system_time.as_deref().and_then(time::unix_seconds),
            Err(e) => return format!("GET /info: {e}"),
        }
        .or_else(time::local_unix_seconds)
        .map(|t| (t - 1).to_string());
        let mut filters = HashMap::new();
        filters.insert(
            "type".to_owned(),
            vec!["container".to_owned(), "network".to_owned()],
        );
        let mut events = self.docker.events(Some(EventsOptions {
            since,
            until: None,
            filters: Some(filters),
        }));
        if let Err(e) = self.relist().await {
            return e;
        }
        self.publish();
        *retry = RETRY_MIN;
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        loop {
            let mut touched: BTreeSet<String> = BTreeSet::new();
            match events.next().await {
                None => return "the event stream ended".into(),
                Some(Err(e)) => return format!("GET /events: {e}"),
                Some(Ok(ev)) => touched.extend(relevant(&ev)),
            }
            // Take the whole burst before rebuilding.
            while let Some(Some(item)) = events.next().now_or_never() {
                match item {
                    Ok(ev) => touched.extend(relevant(&ev)),
                    Err(e) => return format!("GET /events: {e}"),
                }
            }
            if touched.is_empty() {
                continue;
            }
            for id in &touched {
                if let Err(e) = self.refresh(id).await {
                    return e;
                }
            }
            if self.touches_self(&touched) {
                if let Err(e) = self.update_reach().await {
                    return e;
                }
            }
            self.publish();
        }
    }

    fn touches_self(&self, ids: &BTreeSet<String>) -> bool {
        let Some(me) = &self.server_container else {
            return false;
        };
        ids.iter()
            .any(|id| id.starts_with(me.as_str()) || me.starts_with(id.as_str()))
            || self
                .containers
                .values()
                .any(|c| &c.name == me && ids.contains(&c.id))
    }

    /// Lists and inspects every running container.
    async fn relist(&mut self) -> Result<(), String> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: false,
                ..Default::default()
            }))
            .await
            .map_err(|e| format!("GET /containers/json: {e}"))?;
        self.containers.clear();
        for id in list.iter().filter_map(|c| c.id.clone()) {
            self.refresh(&id).await?;
        }
        self.update_reach().await
    }

    /// Inspects one container again: kept if running, dropped if not or
    /// gone.
    async fn refresh(&mut self, id: &str) -> Result<(), String> {
        match self.docker.inspect_container(id, None).await {
            Ok(r) => match client::container(&r) {
                Some(c) => {
                    self.containers.insert(id.to_owned(), c);
                }
                None => {
                    self.containers.remove(id);
                }
            },
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                self.containers.remove(id);
            }
            Err(e) => return Err(format!("GET /containers/{id}/json: {e}")),
        }
        Ok(())
    }

    /// The networks the server shares with containers.
    async fn update_reach(&mut self) -> Result<(), String> {
        let Some(me) = self.server_container.clone() else {
            self.options.reach = Reach::All;
            return Ok(());
        };
        match self.docker.inspect_container(&me, None).await {
            Ok(r) => {
                self.options.reach = Reach::Networks(client::network_names(&r).into_iter().collect());
                Ok(())
            }
            Err(e) => Err(format!(
                "the server's own container {me:?} cannot be inspected ({e}); fix: set runtime.server_container to its name"
            )),
        }
    }

    fn publish(&mut self) {
        let all: Vec<Container> = self.containers.values().cloned().collect();
        let (entries, problems) = catalog_from(&all, &self.options);
        tracing::debug!(
            containers = all.len(),
            services = entries.len(),
            problems = problems.len(),
            "catalog rebuilt"
        );
        self.store.publish(entries);
        let now: HashSet<Problem> = problems.into_iter().collect();
        for p in now.difference(&self.reported) {
            tracing::warn!(problem = %p, "container not published");
            if let Some(r) = p.refused {
                self.store
                    .metrics()
                    .catalog_refused
                    .with_label_values(&[r.label()])
                    .inc();
            }
        }
        self.reported = now;
    }
}

/// The container an event is about, if it can change the catalog.
fn relevant(ev: &bollard::models::EventMessage) -> Option<String> {
    use bollard::models::EventMessageTypeEnum as T;
    let action = ev.action.as_deref().unwrap_or_default();
    let verb = action.split(':').next().unwrap_or_default().trim();
    if !RELEVANT.contains(&verb) {
        return None;
    }
    let actor = ev.actor.as_ref()?;
    match ev.typ? {
        T::CONTAINER => actor.id.clone(),
        T::NETWORK => actor.attributes.as_ref()?.get("container").cloned(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_defaults_and_checks() {
        let s: Settings = toml::from_str("").unwrap();
        assert_eq!(s.namespace, "docker");
        assert_eq!(s.cluster_domain, "docker.internal");
        assert!(s.validate().is_ok());
        let bad: Settings = toml::from_str("namespace = \"a.b\"").unwrap();
        assert_eq!(bad.validate().unwrap_err().0, "runtime.namespace");
        let bad: Settings = toml::from_str("host = \"ssh://x\"").unwrap();
        let (key, msg) = bad.validate().unwrap_err();
        assert_eq!(key, "runtime.host");
        assert!(msg.contains("fix:"), "{msg}");
        assert!(toml::from_str::<Settings>("netwrks = []").is_err());
    }

    #[test]
    fn server_config_takes_kind_docker() {
        use crate::config::{Config, RuntimeConfig};
        let head = "listen = \"127.0.0.1:7443\"\nstate_dir = \"s\"\n[[token]]\nname = \"a\"\ntoken = \"0123456789abcdef0123\"\n[runtime]\nkind = \"docker\"\n";
        let parse =
            |extra: &str| Config::parse(std::path::Path::new("s.toml"), &format!("{head}{extra}"));
        match parse("networks = [\"shop_default\"]\ncluster_domain = \"docker.internal\"\n")
            .unwrap()
            .runtime
        {
            RuntimeConfig::Docker(s) => {
                assert_eq!(s.networks, ["shop_default"]);
                assert_eq!(s.namespace, "docker");
            }
            other => panic!("{other:?}"),
        }
        let e = parse("namespace = \"A\"\n").unwrap_err().to_string();
        assert!(e.contains("runtime.namespace"), "{e}");
        let e = parse("services = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("services"), "{e}");
    }

    #[test]
    fn events_that_matter_name_their_container() {
        use bollard::models::{EventActor, EventMessage, EventMessageTypeEnum as T};
        let ev = |typ, action: &str, id: &str, attrs: &[(&str, &str)]| EventMessage {
            typ: Some(typ),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some(id.into()),
                attributes: Some(
                    attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            ..Default::default()
        };
        assert_eq!(
            relevant(&ev(T::CONTAINER, "start", "c1", &[])).as_deref(),
            Some("c1")
        );
        assert_eq!(
            relevant(&ev(T::CONTAINER, "health_status: healthy", "c1", &[])).as_deref(),
            Some("c1")
        );
        assert_eq!(
            relevant(&ev(T::CONTAINER, "exec_start: sh -c true", "c1", &[])),
            None
        );
        assert_eq!(
            relevant(&ev(T::NETWORK, "connect", "n1", &[("container", "c2")])).as_deref(),
            Some("c2")
        );
    }
}
