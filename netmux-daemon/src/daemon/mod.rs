//! The daemon's state: connected endpoints, started services, and the
//! reconciliation that turns them into listeners, redirects and names.
//!
//! Intent (which endpoints are connected, which services the user started)
//! is kept apart from what runs; [`Daemon::reconcile`] makes the running set
//! follow intent and the endpoints' catalogs, whatever changed.

mod environment;
mod intercept;
mod launch;
mod reconcile;
mod reload;
mod views;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use netmux_common::proto::catalog::{Direction, Service};
use tokio::sync::{Mutex, Notify};

use crate::api::{self, Reply};
use crate::config::Config;
use crate::dns::NameRecord;
use crate::endpoint::{ClaimKind, ClaimState, Endpoint, EndpointStatus, Targets};
use crate::metrics::Metrics;
use crate::redirect::alloc::AddressAllocator;
use crate::system::hosts::HostsFile;
use reload::LiveConfig;

/// (endpoint, `namespace/name`).
pub(crate) type ServiceRef = (String, String);

pub(crate) struct Running {
    addr: Ipv4Addr,
    /// Cluster addresses redirected to the listeners (eBPF backend), and
    /// whether each is UDP.
    redirects: Vec<(SocketAddr, bool)>,
    /// Catalog addresses the redirect leaves alone, each with why
    /// ([`crate::redirect::bounds`]); listed by `netmux status`.
    unredirected: Vec<String>,
    /// Redirects another endpoint holds: `(service, udp, listener,
    /// holder)`; retried on every reconcile.
    blocked: Vec<(SocketAddr, bool, SocketAddr, String)>,
    /// UDP listeners and the flow table their flows live in.
    udp: Vec<(
        Arc<netmux_common::tunnel::udp::Flows>,
        Arc<netmux_common::tunnel::udp_socket::FlowSocket>,
    )>,
    service: Service,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    domain: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // Flows hold the socket: forget them so the port is free again.
        for (flows, socket) in &self.udp {
            flows.forget_socket(socket);
        }
    }
}

pub(crate) struct Connected {
    endpoint: Endpoint,
    watcher: tokio::task::JoinHandle<()>,
    /// Connection order ([`NameRecord::connected`]).
    order: u64,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

#[derive(Default)]
pub(crate) struct State {
    endpoints: BTreeMap<String, Connected>,
    wanted: BTreeSet<ServiceRef>,
    running: BTreeMap<ServiceRef, Running>,
    errors: BTreeMap<ServiceRef, String>,
    /// `connect`s so far; each numbers its [`Connected::order`].
    connects: u64,
}

/// The daemon.
pub struct Daemon {
    names: tokio::sync::watch::Sender<Arc<Vec<NameRecord>>>,
    config: LiveConfig,
    metrics: Metrics,
    hosts: HostsFile,
    state: Mutex<State>,
    alloc: std::sync::Mutex<AddressAllocator>,
    backend: crate::redirect::Backend,
    backend_reason: String,
    /// Which endpoint holds each redirect entry (first started wins).
    owners: std::sync::Mutex<crate::redirect::bounds::Owners>,
    /// Notified when the daemon should exit.
    pub exit: Notify,
    /// DNS status line and hosts-block switch, set by [`crate::dns::start`].
    pub(crate) name_service: crate::dns::NameService,
}

/// The address of `text`, the HOST:PORT of the CLI's `flag`: checked as
/// the CLI checks it, then resolved (a name such as `localhost` too).
async fn resolve(flag: &str, text: &str) -> Result<SocketAddr, String> {
    let (host, port) = api::args::host_port(text).map_err(|e| format!("{flag} {text:?}: {e}"))?;
    let mut found = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("{flag} {text:?}: cannot resolve {host:?}: {e}"))?;
    found
        .next()
        .ok_or_else(|| format!("{flag} {text:?}: {host:?} resolves to no address"))
}

impl Daemon {
    /// A daemon with nothing connected, using the loopback backend.
    #[cfg(test)]
    pub(crate) fn new(config: Config, metrics: Metrics) -> Arc<Self> {
        Self::with_backend(
            config,
            metrics,
            crate::redirect::Backend::Loopback,
            "loopback".into(),
        )
    }

    /// A daemon with nothing connected, using `backend` (chosen because of
    /// `reason`, shown by `netmux status`).
    pub fn with_backend(
        config: Config,
        metrics: Metrics,
        backend: crate::redirect::Backend,
        reason: String,
    ) -> Arc<Self> {
        Arc::new(Daemon {
            backend,
            backend_reason: reason,
            owners: std::sync::Mutex::default(),
            names: tokio::sync::watch::channel(Arc::new(Vec::new())).0,
            hosts: HostsFile::new(&config.hosts_file),
            alloc: std::sync::Mutex::new(AddressAllocator::new(config.address_range)),
            config: LiveConfig::new(config),
            metrics,
            state: Mutex::new(State::default()),
            exit: Notify::new(),
            name_service: crate::dns::NameService::default(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Names of running services, updated whenever they change.
    pub(crate) fn names(&self) -> tokio::sync::watch::Receiver<Arc<Vec<NameRecord>>> {
        self.names.subscribe()
    }

    /// Handles one control request from a client running as `uid`.
    pub(crate) async fn handle(
        self: &Arc<Self>,
        req: api::Request,
        uid: u32,
    ) -> Result<Reply, String> {
        use api::Request::*;
        match req {
            List { filter } => Ok(Reply::List {
                rows: self.list(filter.as_deref()).await,
            }),
            Connect {
                endpoint,
                kube,
                on_behalf_of,
            } => {
                let owner = environment::credentials_owner(uid, on_behalf_of)?;
                self.connect_request(&endpoint, kube, owner).await
            }
            Disconnect { endpoint } => self.disconnect(&endpoint).await,
            Start {
                endpoint,
                service,
                c2l,
            } => self.start(&endpoint, &service, c2l).await,
            Stop { endpoint, service } => self.stop(&endpoint, &service).await,
            Status => Ok(Reply::Status(self.status().await)),
            Reload => self.reload_from_disk().await,
            Expose {
                endpoint,
                name,
                local,
                remote_port,
            } => self.expose(&endpoint, &name, &local, remote_port).await,
            Unexpose { endpoint, name } => self.unexpose(&endpoint, &name).await,
            Intercept {
                endpoint,
                service,
                port,
                to,
                header,
                mirror,
                replace,
            } => {
                let takes = intercept::Takes {
                    header: header.as_deref(),
                    mirror,
                    replace,
                };
                self.intercept(&endpoint, &service, port, &to, takes).await
            }
            Leave {
                endpoint,
                service,
                port,
            } => self.leave(&endpoint, &service, port).await,
            Environment {
                endpoint,
                service,
                port,
                container,
                mounts,
            } => {
                let what = crate::cluster::workload::Asked {
                    port,
                    container: container.as_deref(),
                    mounts,
                };
                self.environment(&endpoint, &service, what, uid).await
            }
            Exit => {
                self.cleanup().await;
                self.exit.notify_one();
                Ok(Reply::Done {
                    message: "daemon exiting".into(),
                })
            }
            Cleanup => {
                self.cleanup().await;
                Ok(Reply::Done {
                    message: format!(
                        "disconnected everything and removed the netmux block from {}",
                        self.hosts.path().display()
                    ),
                })
            }
        }
    }

    fn unknown_endpoint(&self, name: &str) -> String {
        let known: Vec<&str> = self
            .config
            .endpoints
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        format!(
            "unknown endpoint {name:?}: configured endpoints are [{}] (see {})",
            known.join(", "),
            self.config.path.display()
        )
    }

    /// `netmux connect`: a Kubernetes endpoint needs the user's
    /// credentials, which the CLI sends once asked ([`Reply::NeedKube`]).
    async fn connect_request(
        self: &Arc<Self>,
        name: &str,
        kube: Option<crate::cluster::KubeAccess>,
        uid: u32,
    ) -> Result<Reply, String> {
        let cfg = self
            .config
            .endpoint(name)
            .ok_or_else(|| self.unknown_endpoint(name))?
            .clone();
        let Some(settings) = cfg.kubernetes.clone() else {
            return self.connect(name, None).await;
        };
        // Always asked for: `netmux connect` on a connected endpoint
        // renews its credentials (they expire).
        let Some(access) = kube else {
            return Ok(Reply::NeedKube { settings });
        };
        let link = Arc::new(
            crate::cluster::forward::KubeLink::new(&access, settings)
                .await
                .map_err(|e| format!("{name}: {e}"))?
                .owned_by(uid),
        );
        let describe = link.describe.clone();
        tracing::info!(endpoint = %name, credentials = %describe, expires = ?access.expires, "kubernetes credentials received");
        {
            let state = self.state.lock().await;
            if let Some(c) = state.endpoints.get(name) {
                c.endpoint.renew_kube(link);
                let until = access
                    .expires
                    .as_deref()
                    .map(|e| format!(" (valid until {e})"))
                    .unwrap_or_default();
                return Ok(Reply::Done {
                    message: format!("{name}: credentials of {describe} renewed{until}"),
                });
            }
        }
        self.connect(name, Some(link)).await
    }

    /// Connects an endpoint (idempotent); `kube` for Kubernetes endpoints.
    pub async fn connect(
        self: &Arc<Self>,
        name: &str,
        kube: Option<Arc<crate::cluster::forward::KubeLink>>,
    ) -> Result<Reply, String> {
        let cfg = self
            .config
            .endpoint(name)
            .ok_or_else(|| self.unknown_endpoint(name))?
            .clone();
        if cfg.kubernetes.is_some() && kube.is_none() {
            return Err(format!(
                "{name} is a Kubernetes endpoint: run `netmux connect {name}` as the user whose kubeconfig it uses"
            ));
        }
        let mut state = self.state.lock().await;
        if state.endpoints.contains_key(name) {
            return Ok(Reply::Done {
                message: format!("{name} is already connected"),
            });
        }
        // Which kubeconfig context and user, so that `netmux connect`
        // says whose credentials it used.
        let credentials: Option<String> = kube.as_ref().map(|k| k.describe.clone());
        let endpoint = Endpoint::start(cfg, self.metrics.clone(), kube);
        let mut catalog = endpoint.watch_catalog();
        let mut status = endpoint.watch_status();
        let me = Arc::downgrade(self);
        let watcher = tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = catalog.changed() => if r.is_err() { return },
                    r = status.changed() => if r.is_err() { return },
                }
                catalog.mark_unchanged();
                status.mark_unchanged();
                let Some(d) = me.upgrade() else { return };
                d.reconcile().await;
            }
        });
        state.connects += 1;
        let order = state.connects;
        state.endpoints.insert(
            name.to_owned(),
            Connected {
                endpoint,
                watcher,
                order,
            },
        );
        drop(state);
        // Wait briefly so `connect` reports the first outcome.
        let first = self.wait_first_outcome(name).await;
        Ok(Reply::Done {
            message: match first {
                EndpointStatus::Connected { server, .. } => match &credentials {
                    Some(who) => format!("{name} connected to {server} as {who}"),
                    None => format!("{name} connected to {server}"),
                },
                EndpointStatus::Down { error } => {
                    format!("{name} is not up yet ({error}); retrying in the background")
                }
                EndpointStatus::Connecting => format!("{name} connecting in the background"),
            },
        })
    }

    async fn wait_first_outcome(&self, name: &str) -> EndpointStatus {
        let rx = {
            let state = self.state.lock().await;
            match state.endpoints.get(name) {
                Some(c) => c.endpoint.watch_status(),
                None => return EndpointStatus::Connecting,
            }
        };
        let mut rx = rx;
        let wait = async {
            rx.wait_for(|s| !matches!(s, EndpointStatus::Connecting))
                .await
                .map(|s| s.clone())
        };
        match tokio::time::timeout(std::time::Duration::from_secs(5), wait).await {
            Ok(Ok(s)) => s,
            _ => EndpointStatus::Connecting,
        }
    }

    /// Disconnects an endpoint and stops its services.
    pub(crate) async fn disconnect(self: &Arc<Self>, name: &str) -> Result<Reply, String> {
        if self.config.endpoint(name).is_none() {
            return Err(self.unknown_endpoint(name));
        }
        let mut state = self.state.lock().await;
        if state.endpoints.remove(name).is_none() {
            return Err(format!("{name} is not connected"));
        }
        state.wanted.retain(|(ep, _)| ep != name);
        self.reconcile_locked(&mut state).await;
        Ok(Reply::Done {
            message: format!("{name} disconnected"),
        })
    }

    fn matching(&self, state: &State, ep: &str, pattern: &str) -> Result<Vec<Service>, String> {
        let connected = state.endpoints.get(ep).ok_or_else(|| {
            if self.config.endpoint(ep).is_none() {
                self.unknown_endpoint(ep)
            } else {
                format!("endpoint {ep} is not connected: run `netmux connect {ep}` first")
            }
        })?;
        let catalog = connected.endpoint.catalog();
        let found: Vec<Service> = catalog
            .values()
            .filter(|s| {
                api::matches(pattern, &s.name)
                    || api::matches(pattern, &s.key())
                    || api::matches(pattern, &format!("{}.{}", s.name, s.namespace))
            })
            .cloned()
            .collect();
        if found.is_empty() {
            return Err(format!(
                "no service on {ep} matches {pattern:?}: see `netmux ls` (use `+` as a wildcard)"
            ));
        }
        Ok(found)
    }

    /// Starts services matching `pattern` on `ep`. A pattern with `+`
    /// starts L2C services only: a C2L entry makes the cluster's traffic
    /// come to this machine, so it is claimed only when named, or with
    /// `c2l` (`netmux start --c2l`).
    pub(crate) async fn start(
        self: &Arc<Self>,
        ep: &str,
        pattern: &str,
        c2l: bool,
    ) -> Result<Reply, String> {
        let mut state = self.state.lock().await;
        let found = self.matching(&state, ep, pattern)?;
        let wildcard = pattern.contains('+');
        let mut started = Vec::new();
        let mut claimed = Vec::new();
        let mut skipped = Vec::new();
        // The local targets of the C2L services claimed here.
        let mut probe = BTreeSet::new();
        for svc in &found {
            match svc.direction {
                Direction::L2C => {
                    state.wanted.insert((ep.to_owned(), svc.key()));
                    started.push(svc.key());
                }
                Direction::C2L if wildcard && !c2l => skipped.push(svc.key()),
                Direction::C2L => {
                    // One local target per cluster port, each port's own.
                    let targets = Targets::for_service(svc, IpAddr::V4(Ipv4Addr::LOCALHOST));
                    if let Some(c) = state.endpoints.get(ep) {
                        probe.extend(targets.tcp());
                        c.endpoint
                            .claim(&svc.key(), ClaimKind::Catalog(svc.key()), targets);
                        claimed.push(svc.key());
                    }
                }
            }
        }
        self.reconcile_locked(&mut state).await;
        let claim_errors = match state.endpoints.get(ep) {
            Some(c) => wait_claims(&c.endpoint, &claimed).await,
            None => vec![],
        };
        if !claim_errors.is_empty() {
            return Err(format!("could not claim: {}", claim_errors.join("; ")));
        }
        let failed: Vec<String> = started
            .iter()
            .filter_map(|k| {
                state
                    .errors
                    .get(&(ep.to_owned(), k.clone()))
                    .map(|e| format!("{k}: {e}"))
            })
            .collect();
        if !failed.is_empty() {
            return Err(format!("could not start: {}", failed.join("; ")));
        }
        started.extend(claimed);
        let mut message = if started.is_empty() {
            "started nothing".to_owned()
        } else {
            format!("started {}", started.join(", "))
        };
        if !skipped.is_empty() {
            message.push_str(&format!(
                "; not claimed (C2L: cluster traffic to this machine): {}; name them, or add --c2l",
                skipped.join(", ")
            ));
        }
        drop(state);
        Ok(Reply::Done {
            message: crate::reverse::with_probe_notes(message, probe).await,
        })
    }

    /// Stops services matching `pattern` on `ep`.
    pub(crate) async fn stop(self: &Arc<Self>, ep: &str, pattern: &str) -> Result<Reply, String> {
        let mut state = self.state.lock().await;
        let found = self.matching(&state, ep, pattern)?;
        let keys: Vec<String> = found.iter().map(Service::key).collect();
        state.wanted.retain(|(e, k)| !(e == ep && keys.contains(k)));
        if let Some(c) = state.endpoints.get(ep) {
            for k in &keys {
                c.endpoint.release(k);
            }
        }
        self.reconcile_locked(&mut state).await;
        Ok(Reply::Done {
            message: format!("stopped {}", keys.join(", ")),
        })
    }

    /// Publishes `local` to the cluster as C2L service `name` on `remote_port`.
    pub(crate) async fn expose(
        self: &Arc<Self>,
        ep: &str,
        name: &str,
        local: &str,
        remote_port: u16,
    ) -> Result<Reply, String> {
        api::args::service_name(name)?;
        if remote_port == 0 {
            return Err("--remote-port must be 1-65535".into());
        }
        let local = resolve("--local", local).await?;
        // The cluster must not reach past this machine through it.
        self.config.expose_target_allowed(local.ip())?;
        let state = self.state.lock().await;
        let c = self.connected(&state, ep)?;
        c.endpoint.claim(
            name,
            ClaimKind::Adhoc {
                name: name.to_owned(),
                port: remote_port,
            },
            Targets::one(remote_port, local),
        );
        let errors = wait_claims(&c.endpoint, &[name.to_owned()]).await;
        if let Some(e) = errors.first() {
            c.endpoint.release(name);
            return Err(format!("could not expose: {e}"));
        }
        drop(state);
        let message = format!("{name}: cluster port {remote_port} => {local}");
        Ok(Reply::Done {
            message: crate::reverse::with_probe_notes(message, [local]).await,
        })
    }

    /// Withdraws an `expose`.
    pub(crate) async fn unexpose(self: &Arc<Self>, ep: &str, name: &str) -> Result<Reply, String> {
        let state = self.state.lock().await;
        let c = self.connected(&state, ep)?;
        if c.endpoint.release(name) {
            Ok(Reply::Done {
                message: format!("{name} withdrawn"),
            })
        } else {
            Err(format!("{name} is not exposed on {ep}: see `netmux ls`"))
        }
    }

    fn connected<'s>(&self, state: &'s State, ep: &str) -> Result<&'s Connected, String> {
        state.endpoints.get(ep).ok_or_else(|| {
            if self.config.endpoint(ep).is_none() {
                self.unknown_endpoint(ep)
            } else {
                format!("endpoint {ep} is not connected: run `netmux connect {ep}` first")
            }
        })
    }

    /// Disconnects everything and removes the hosts block.
    pub async fn cleanup(self: &Arc<Self>) {
        let mut state = self.state.lock().await;
        state.endpoints.clear();
        state.wanted.clear();
        self.reconcile_locked(&mut state).await;
        if let Err(e) = self.hosts.clear() {
            tracing::error!(error = %e, path = %self.hosts.path().display(), "cannot clean hosts file");
        }
    }
}

/// Waits (bounded) for the server's answer to each claim; returns errors.
async fn wait_claims(endpoint: &Endpoint, names: &[String]) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let states: Vec<(String, Option<ClaimState>)> = names
            .iter()
            .map(|n| (n.clone(), endpoint.claim_state(n)))
            .collect();
        let pending = states
            .iter()
            .any(|(_, s)| matches!(s, Some(ClaimState::Pending)));
        if !pending || tokio::time::Instant::now() >= deadline {
            return states
                .into_iter()
                .filter_map(|(n, s)| match s {
                    Some(ClaimState::Refused(e)) => Some(format!("{n}: {e}")),
                    Some(ClaimState::Pending) => Some(format!(
                        "{n}: no answer from the server yet (kept pending; see `netmux ls`)"
                    )),
                    _ => None,
                })
                .collect();
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// The DNS side reads names and configuration through this, so that
/// [`crate::dns`] does not depend on this module.
impl crate::dns::NameSource for Daemon {
    fn config(&self) -> &Config {
        Daemon::config(self)
    }
    fn names(&self) -> tokio::sync::watch::Receiver<Arc<Vec<NameRecord>>> {
        Daemon::names(self)
    }
    fn name_service(&self) -> &crate::dns::NameService {
        &self.name_service
    }
    fn reconcile(self: &Arc<Self>) -> impl std::future::Future<Output = ()> + Send {
        Daemon::reconcile(self)
    }
}

#[cfg(test)]
mod bounds_tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    fn daemon(dir: &std::path::Path, extra: &str) -> Arc<Daemon> {
        let text = format!(
            "{extra}hosts_file = \"{}/hosts\"\nredirect = \"loopback\"\n[[endpoint]]\nname = \"demo\"\nserver = \"127.0.0.1:9\"\nca_pem = \"\"\"{PEM}\"\"\"\n",
            dir.display()
        );
        let config = Config::parse(&dir.join("c.toml"), &text).expect("config");
        Daemon::new(config, Metrics::new())
    }

    #[tokio::test]
    async fn intercept_targets_loopback_only_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path(), "");
        let global = intercept::Takes::default();
        let e = d
            .intercept("demo", "web", None, "169.254.169.254:80", global)
            .await
            .unwrap_err();
        assert!(e.contains("expose_allow"), "{e}");
        let personal = |header| intercept::Takes {
            header: Some(header),
            ..global
        };
        let e = d
            .intercept("demo", "web", None, "127.0.0.1:80", personal("bad name=x"))
            .await
            .unwrap_err();
        assert!(e.contains("--header"), "{e}");
        let replace = intercept::Takes {
            replace: true,
            ..personal("x-user=a")
        };
        let e = d
            .intercept("demo", "web", None, "127.0.0.1:80", replace)
            .await
            .unwrap_err();
        assert!(e.contains("--replace is a global intercept"), "{e}");
        // A workload: --replace alone, no --port, no --to.
        let stop = intercept::Takes {
            replace: true,
            ..global
        };
        let e = d
            .intercept("demo", "deploy/worker", Some(80), "", stop)
            .await
            .unwrap_err();
        assert!(e.contains("--port names a Service's port"), "{e}");
        let e = d
            .intercept("demo", "deploy/worker", None, "", global)
            .await
            .unwrap_err();
        assert!(e.contains("add --replace"), "{e}");
        let e = d
            .intercept("demo", "ds/agent", None, "", stop)
            .await
            .unwrap_err();
        assert!(e.contains("cannot be scaled to zero"), "{e}");
        // A good target and header pass the checks, then need a connection.
        let e = d
            .intercept("demo", "web", None, "127.0.0.1:80", personal("x-user=a"))
            .await
            .unwrap_err();
        assert!(e.contains("not connected"), "{e}");
    }

    #[tokio::test]
    async fn expose_targets_loopback_only_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let d = daemon(dir.path(), "");
        let e = d
            .expose("demo", "dbg", "169.254.169.254:80", 80)
            .await
            .unwrap_err();
        assert!(
            e.contains("only loopback") && e.contains("expose_allow"),
            "{e}"
        );
        let e = d
            .expose("demo", "dbg", "[fe80::1]:80", 80)
            .await
            .unwrap_err();
        assert!(e.contains("expose_allow"), "{e}");
        // Another client of the socket than the CLI gets the CLI's check.
        let e = d.expose("demo", "dbg", "localhost", 80).await.unwrap_err();
        assert!(e.starts_with("--local \"localhost\": no port"), "{e}");
        // A port alone is a loopback target.
        let e = d.expose("demo", "dbg", "8080", 80).await.unwrap_err();
        assert!(e.contains("not connected"), "{e}");
        let e = d.expose("demo", "Dbg", "127.0.0.1:8080", 80).await;
        assert!(e.unwrap_err().contains("not a valid service name"));
        // Loopback passes the check (and then needs a connection).
        let e = d
            .expose("demo", "dbg", "127.0.0.1:8080", 80)
            .await
            .unwrap_err();
        assert!(e.contains("not connected"), "{e}");
        let d = daemon(dir.path(), "expose_allow = [\"169.254.0.0/16\"]\n");
        let e = d
            .expose("demo", "dbg", "169.254.169.254:80", 80)
            .await
            .unwrap_err();
        assert!(e.contains("not connected"), "{e}");
    }
}
