//! The daemon's state: connected endpoints, started services, and the
//! reconciliation that turns them into listeners, redirects and names.
//!
//! Intent (which endpoints are connected, which services the user started)
//! is kept apart from what runs; [`Daemon::reconcile`] makes the running set
//! follow intent and the endpoints' catalogs, whatever changed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use netmux_common::proto::catalog::{Direction, Protocol, Service};
use tokio::sync::{Mutex, Notify};

use crate::api::{self, EndpointView, Reply, Row, StatusView};
use crate::config::Config;
use crate::dns::NameRecord;
use crate::endpoint::{ClaimKind, ClaimState, Endpoint, EndpointStatus, Targets};
use crate::listeners::{self, Route};
use crate::metrics::Metrics;
use crate::redirect::alloc::AddressAllocator;
use crate::system::hosts::{HostsEntry, HostsFile};

/// (endpoint, `namespace/name`).
type ServiceRef = (String, String);

struct Running {
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
        Arc<tokio::net::UdpSocket>,
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

struct Connected {
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
struct State {
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
    pub name_service: crate::dns::NameService,
}

fn describe(svc: &Service, local: Option<Ipv4Addr>) -> String {
    let remote = svc
        .addresses
        .first()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".into());
    let ports: Vec<String> = svc
        .ports
        .iter()
        .map(|p| {
            let local = local.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
            let remote = if remote.contains(':') {
                format!("[{remote}]")
            } else {
                remote.clone()
            };
            let udp = if p.protocol == Protocol::Udp {
                "/udp"
            } else {
                ""
            };
            format!("{local}:{}{udp} => {remote}:{}{udp}", p.port, p.target_port)
        })
        .collect();
    format!("{}: {}", svc.direction, ports.join(", "))
}

impl Daemon {
    /// A daemon with nothing connected, using the loopback backend.
    pub fn new(config: Config, metrics: Metrics) -> Arc<Self> {
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
    pub fn names(&self) -> tokio::sync::watch::Receiver<Arc<Vec<NameRecord>>> {
        self.names.subscribe()
    }

    /// Handles one control request.
    pub async fn handle(self: &Arc<Self>, req: api::Request) -> Result<Reply, String> {
        use api::Request::*;
        match req {
            List { filter } => Ok(Reply::List {
                rows: self.list(filter.as_deref()).await,
            }),
            Connect { endpoint, kube } => self.connect_request(&endpoint, kube).await,
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
                .map_err(|e| format!("{name}: {e}"))?,
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
    pub async fn disconnect(self: &Arc<Self>, name: &str) -> Result<Reply, String> {
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
    pub async fn start(
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
        Ok(Reply::Done { message })
    }

    /// Stops services matching `pattern` on `ep`.
    pub async fn stop(self: &Arc<Self>, ep: &str, pattern: &str) -> Result<Reply, String> {
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
    pub async fn expose(
        self: &Arc<Self>,
        ep: &str,
        name: &str,
        local: &str,
        remote_port: u16,
    ) -> Result<Reply, String> {
        if !netmux_common::proto::catalog::valid_dns_name(name) || name.contains('.') {
            return Err(format!(
                "{name:?} is not a valid service name: use lower-case letters, digits and '-'"
            ));
        }
        if remote_port == 0 {
            return Err("--remote-port must be 1-65535".into());
        }
        let local: SocketAddr = tokio::net::lookup_host(local)
            .await
            .map_err(|e| {
                format!("--local {local:?}: {e} (expected HOST:PORT, e.g. 127.0.0.1:8080)")
            })?
            .next()
            .ok_or_else(|| format!("--local {local:?} resolves to no address"))?;
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
        Ok(Reply::Done {
            message: format!("{name}: cluster port {remote_port} => {local}"),
        })
    }

    /// Withdraws an `expose`.
    pub async fn unexpose(self: &Arc<Self>, ep: &str, name: &str) -> Result<Reply, String> {
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

    /// Re-derives what runs from intent and catalogs.
    pub async fn reconcile(self: &Arc<Self>) {
        let mut state = self.state.lock().await;
        self.reconcile_locked(&mut state).await;
    }

    async fn reconcile_locked(&self, state: &mut State) {
        // Stop what is no longer wanted or no longer in its catalog (or changed).
        let mut stop = Vec::new();
        for (key, running) in &state.running {
            let current = state.endpoints.get(&key.0).and_then(|c| {
                c.endpoint.catalog().by_key(&key.1).cloned()
            });
            let keep = state.wanted.contains(key)
                && current
                    .as_ref()
                    .is_some_and(|s| same_listeners(s, &running.service));
            if !keep {
                stop.push(key.clone());
            }
        }
        for key in stop {
            if let Some(r) = state.running.remove(&key) {
                for (service, udp) in &r.redirects {
                    self.drop_redirect(&key.0, *service, *udp, r.addr);
                }
                self.release(r.addr);
                tracing::info!(endpoint = %key.0, service = %key.1, "service stopped");
            }
        }
        state.errors.clear();
        // Start what is wanted, in its catalog, and not running.
        let wanted: Vec<ServiceRef> = state.wanted.iter().cloned().collect();
        for key in wanted {
            if state.running.contains_key(&key) {
                if let (Some(r), Some(c)) =
                    (state.running.get_mut(&key), state.endpoints.get(&key.0))
                {
                    if let Some(s) = c.endpoint.catalog().by_key(&key.1) {
                        r.service = s.clone();
                    }
                }
                continue;
            }
            let Some(connected) = state.endpoints.get(&key.0) else {
                continue;
            };
            let catalog = connected.endpoint.catalog();
            let Some(svc) = catalog.by_key(&key.1).cloned() else {
                continue;
            };
            match self.launch(connected, &key, svc).await {
                Ok(r) => {
                    tracing::info!(endpoint = %key.0, service = %key.1, addr = %r.addr, "service started");
                    state.running.insert(key, r);
                }
                Err(e) => {
                    tracing::error!(endpoint = %key.0, service = %key.1, error = %e, "cannot start service");
                    state.errors.insert(key, e);
                }
            }
        }
        // Redirects another endpoint held are taken over once it let go.
        for ((ep, name), r) in state.running.iter_mut() {
            for (service, udp, listener, holder) in std::mem::take(&mut r.blocked) {
                match self.take_redirect(ep, service, udp, r.addr) {
                    Ok(None) => {
                        tracing::info!(endpoint = %ep, service = %name, address = %service, "redirect taken over from {holder}");
                        r.redirects.push((service, udp));
                    }
                    Ok(Some(now)) => r.blocked.push((service, udp, listener, now)),
                    Err(e) => {
                        tracing::error!(endpoint = %ep, service = %name, address = %service, error = %e, "cannot take over redirect");
                        r.blocked.push((service, udp, listener, holder));
                    }
                }
            }
        }
        let records: Vec<NameRecord> = state
            .running
            .iter()
            .map(|((ep, _), r)| NameRecord {
                endpoint: ep.clone(),
                domain: r.domain.clone(),
                connected: state.endpoints.get(ep).map_or(u64::MAX, |c| c.order),
                service: r.service.clone(),
                addrs: self.answer_addrs(r),
            })
            .collect();
        // With a DNS integration in force, names come from the DNS server only.
        let entries: Vec<HostsEntry> = if self.name_service.hosts_block() {
            crate::system::hosts::entries(&records)
        } else {
            vec![]
        };
        self.names.send_if_modified(|current| {
            if **current == records {
                false
            } else {
                *current = Arc::new(records);
                true
            }
        });
        if let Err(e) = self.hosts.write(&entries) {
            tracing::error!(path = %self.hosts.path().display(), error = %e, "cannot write hosts file");
        }
    }

    /// Where names of a running service should point: the cluster
    /// addresses redirected to it (eBPF), else its 127.x listeners.
    fn answer_addrs(&self, r: &Running) -> Vec<IpAddr> {
        let redirected: Vec<IpAddr> = r
            .service
            .addresses
            .iter()
            .filter(|ip| r.redirects.iter().any(|(s, _)| s.ip() == **ip))
            .copied()
            .collect();
        if self.backend.uses_cluster_addresses() && !redirected.is_empty() {
            redirected
        } else {
            vec![IpAddr::V4(r.addr)]
        }
    }

    /// Redirects `service` to the listener on `addr` for endpoint `ep`;
    /// `Ok(Some(holder))` when another endpoint holds it.
    fn take_redirect(
        &self,
        ep: &str,
        service: SocketAddr,
        udp: bool,
        addr: Ipv4Addr,
    ) -> Result<Option<String>, String> {
        let listener = SocketAddr::new(IpAddr::V4(addr), service.port());
        let mut owners = match self.owners.lock() {
            Ok(o) => o,
            Err(p) => p.into_inner(),
        };
        if let Err(holder) = owners.claim((service, udp), ep, listener) {
            return Ok(Some(holder));
        }
        let inserted = if udp {
            self.backend.insert_udp(service, listener)
        } else {
            self.backend.insert(service, listener)
        };
        if let Err(e) = inserted {
            owners.release((service, udp), ep, listener);
            return Err(e);
        }
        Ok(None)
    }

    /// Removes `ep`'s redirect of `service`, and only if `ep` holds it.
    fn drop_redirect(&self, ep: &str, service: SocketAddr, udp: bool, addr: Ipv4Addr) {
        let listener = SocketAddr::new(IpAddr::V4(addr), service.port());
        let mut owners = match self.owners.lock() {
            Ok(o) => o,
            Err(p) => p.into_inner(),
        };
        if owners.release((service, udp), ep, listener) {
            self.backend.remove(service, udp);
        }
    }

    /// The redirect bounds of `connected`'s catalog addresses.
    async fn bounds(&self, connected: &Connected) -> crate::redirect::bounds::Bounds {
        let cfg = &connected.endpoint.config;
        let (ranges, source) = match &cfg.cluster_cidrs {
            Some(r) => (r.clone(), format!("cluster_cidrs of endpoint {}", cfg.name)),
            None => {
                let r = connected.endpoint.cluster_ranges();
                let source = if r.is_empty() {
                    format!(
                        "the server of endpoint {} announced none (set cluster_cidrs on the server)",
                        cfg.name
                    )
                } else {
                    format!("announced by the server of endpoint {}", cfg.name)
                };
                (r, source)
            }
        };
        let mut never = Vec::new();
        if let EndpointStatus::Connected { server, .. } = connected.endpoint.status() {
            if let Ok(s) = server.parse::<SocketAddr>() {
                never.push((s.ip(), "the netmux server's address"));
            }
        }
        for ip in resolve_quickly(cfg.server.as_deref()).await {
            never.push((ip, "the netmux server's address"));
        }
        let mut apis: Vec<String> = Vec::new();
        if let Some(u) = cfg.kubernetes.as_ref().and_then(|k| k.api_server.clone()) {
            apis.push(u);
        }
        if let Some(k) = connected.endpoint.kube() {
            apis.push(k.api_server.clone());
        }
        for url in apis {
            let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
            let hostport = rest.split('/').next().unwrap_or_default();
            let with_port = if hostport.ends_with(']') || !hostport.contains(':') {
                format!("{hostport}:443")
            } else {
                hostport.to_owned()
            };
            for ip in resolve_quickly(Some(&with_port)).await {
                never.push((ip, "the Kubernetes API server's address"));
            }
        }
        crate::redirect::bounds::Bounds {
            ranges,
            source,
            never,
        }
    }

    fn release(&self, addr: Ipv4Addr) {
        match self.alloc.lock() {
            Ok(mut a) => a.release(addr),
            Err(p) => p.into_inner().release(addr),
        }
    }

    async fn launch(
        &self,
        connected: &Connected,
        key: &ServiceRef,
        svc: Service,
    ) -> Result<Running, String> {
        let addr = {
            let mut a = match self.alloc.lock() {
                Ok(a) => a,
                Err(p) => p.into_inner(),
            };
            a.allocate().ok_or_else(|| {
                format!(
                    "address range {}/{} is exhausted: widen `address_range`",
                    self.config.address_range.network, self.config.address_range.prefix
                )
            })?
        };
        let mut tasks = Vec::new();
        for p in svc.ports.iter().filter(|p| p.protocol == Protocol::Tcp) {
            let local = SocketAddr::new(IpAddr::V4(addr), p.port);
            let listener = match listeners::bind(local).await {
                Ok(l) => l,
                Err(e) => {
                    for t in &tasks {
                        tokio::task::JoinHandle::abort(t);
                    }
                    self.release(addr);
                    return Err(format!("cannot listen on {local}: {e}"));
                }
            };
            let route = Route {
                endpoint: key.0.clone(),
                service: key.1.clone(),
                port: p.port,
                conn: connected.endpoint.watch_connection(),
                catalog: connected.endpoint.watch_catalog(),
                metrics: self.metrics.clone(),
                options: connected.endpoint.config.stream_options(),
            };
            tasks.push(tokio::spawn(listeners::serve(listener, route)));
        }
        let mut udp = Vec::new();
        for p in svc.ports.iter().filter(|p| p.protocol == Protocol::Udp) {
            let local = SocketAddr::new(IpAddr::V4(addr), p.port);
            let socket = match tokio::net::UdpSocket::bind(local).await {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    for t in &tasks {
                        tokio::task::JoinHandle::abort(t);
                    }
                    self.release(addr);
                    return Err(format!("cannot listen on udp {local}: {e}"));
                }
            };
            let conn = connected.endpoint.watch_connection();
            let catalog = connected.endpoint.watch_catalog();
            let key = key.1.clone();
            let port = p.port;
            let route = move || {
                let c = conn.borrow().clone()?;
                let id = catalog
                    .borrow()
                    .by_key(&key)
                    .filter(|s| s.port(port, Protocol::Udp).is_some())
                    .map(|s| s.id)?;
                Some((c, id))
            };
            udp.push((connected.endpoint.udp(), socket.clone()));
            tasks.push(tokio::spawn(
                connected.endpoint.udp().originate(socket, p.port, route),
            ));
        }
        let mut redirects = Vec::new();
        let mut unredirected = Vec::new();
        let mut blocked = Vec::new();
        if self.backend.uses_cluster_addresses() {
            let bounds = self.bounds(connected).await;
            for ip in &svc.addresses {
                if let Err(why) = bounds.check(*ip) {
                    tracing::warn!(endpoint = %key.0, service = %key.1, address = %ip, reason = %why, "catalog address not redirected");
                    unredirected.push(why);
                    continue;
                }
                for p in &svc.ports {
                    let service = SocketAddr::new(*ip, p.port);
                    let listener = SocketAddr::new(IpAddr::V4(addr), p.port);
                    let udp = p.protocol == Protocol::Udp;
                    if udp && !ip.is_ipv4() {
                        // UDP listeners are IPv4 (127.x); the kernel cannot
                        // send a v6 datagram to them.
                        continue;
                    }
                    match self.take_redirect(&key.0, service, udp, addr) {
                        Ok(None) => redirects.push((service, udp)),
                        Ok(Some(holder)) => {
                            tracing::warn!(endpoint = %key.0, service = %key.1, address = %service, %holder, "redirect held by another endpoint, which started it first; this service keeps its endpoint-qualified names");
                            blocked.push((service, udp, listener, holder));
                        }
                        Err(e) => {
                            for (s, u) in &redirects {
                                self.drop_redirect(&key.0, *s, *u, addr);
                            }
                            for t in &tasks {
                                tokio::task::JoinHandle::abort(t);
                            }
                            self.release(addr);
                            return Err(e);
                        }
                    }
                }
            }
        }
        Ok(Running {
            addr,
            redirects,
            unredirected,
            blocked,
            udp,
            service: svc,
            tasks,
            domain: connected.endpoint.config.cluster_domain.clone(),
        })
    }

    /// `ls` rows: every configured endpoint, then the services of connected
    /// ones.
    pub async fn list(&self, filter: Option<&str>) -> Vec<Row> {
        let state = self.state.lock().await;
        let mut rows = Vec::new();
        for cfg in &self.config.endpoints {
            let connected = state.endpoints.get(&cfg.name);
            rows.push(Row {
                kind: "EP".into(),
                name: cfg.name.clone(),
                parent: "-".into(),
                description: cfg.describe(),
                status: connected
                    .map(|c| c.endpoint.status().word().to_owned())
                    .unwrap_or_else(|| "off".into()),
            });
            let Some(c) = connected else { continue };
            let catalog = c.endpoint.catalog();
            let claims = c.endpoint.claims().snapshot();
            for svc in catalog.values().filter(|s| s.direction == Direction::C2L) {
                let claim = claims.iter().find(|cl| cl.kind.is_for(svc));
                let cluster = svc
                    .addresses
                    .first()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "*".into());
                let ports: Vec<String> = svc
                    .ports
                    .iter()
                    .map(|p| match claim {
                        Some(cl) => match cl.targets.get(p.port, p.protocol) {
                            Some(local) => format!("{cluster}:{} => {local}", p.port),
                            None => format!("{cluster}:{} => -", p.port),
                        },
                        None => format!("{cluster}:{} => -:{}", p.port, p.target_port),
                    })
                    .collect();
                rows.push(Row {
                    kind: "SVC".into(),
                    name: svc.key(),
                    parent: cfg.name.clone(),
                    description: format!("C2L: {}", ports.join(", ")),
                    status: match claim.map(|c| &c.state) {
                        Some(ClaimState::Held) => "on".into(),
                        Some(ClaimState::Pending) => "pending".into(),
                        Some(ClaimState::Refused(e)) => format!("error: {e}"),
                        None => "off".into(),
                    },
                });
            }
            for svc in catalog.values().filter(|s| s.direction == Direction::L2C) {
                let key = (cfg.name.clone(), svc.key());
                let running = state.running.get(&key);
                rows.push(Row {
                    kind: "SVC".into(),
                    name: svc.key(),
                    parent: cfg.name.clone(),
                    description: match running {
                        Some(r) => {
                            let notes = redirect_notes(r);
                            let d = describe(svc, Some(r.addr));
                            if notes.is_empty() {
                                d
                            } else {
                                format!("{d} ({})", notes.join("; "))
                            }
                        }
                        None => describe(svc, None),
                    },
                    status: if running.is_some() {
                        "on".into()
                    } else if state.wanted.contains(&key) {
                        "error".into()
                    } else {
                        "off".into()
                    },
                });
            }
            for (ep, k) in state.wanted.iter().filter(|(ep, _)| *ep == cfg.name) {
                if catalog.by_key(k).is_none() {
                    rows.push(Row {
                        kind: "SVC".into(),
                        name: k.clone(),
                        parent: ep.clone(),
                        description: "no longer published".into(),
                        status: "gone".into(),
                    });
                }
            }
        }
        if let Some(f) = filter {
            rows.retain(|r| r.name.contains(f) || r.parent.contains(f));
        }
        rows
    }

    /// `status`.
    pub async fn status(&self) -> StatusView {
        let state = self.state.lock().await;
        StatusView {
            version: env!("CARGO_PKG_VERSION").into(),
            redirect: self.backend_reason.clone(),
            dns: self.name_service.status(),
            hosts_file: self.hosts.path().display().to_string(),
            endpoints: self
                .config
                .endpoints
                .iter()
                .map(|cfg| {
                    let c = state.endpoints.get(&cfg.name);
                    let st = c.map(|c| c.endpoint.status());
                    EndpointView {
                        name: cfg.name.clone(),
                        server: cfg.describe(),
                        state: st
                            .as_ref()
                            .map(|s| s.word().to_owned())
                            .unwrap_or_else(|| "off".into()),
                        error: match st {
                            Some(EndpointStatus::Down { error }) => Some(error),
                            // How long the blackout lasts, what happens at the bound.
                            Some(EndpointStatus::Connected { degraded: true, .. }) => {
                                c.and_then(|c| c.endpoint.blackout()).map(|b| b.describe())
                            }
                            _ => None,
                        },
                        services: c.map(|c| c.endpoint.catalog().len()).unwrap_or(0),
                        started: state.running.keys().filter(|(e, _)| *e == cfg.name).count(),
                        notes: state
                            .running
                            .iter()
                            .filter(|((e, _), _)| *e == cfg.name)
                            .flat_map(|((_, k), r)| {
                                redirect_notes(r)
                                    .into_iter()
                                    .map(move |n| format!("{k}: {n}"))
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}

/// What `status` and `ls` say about a running service's redirects.
fn redirect_notes(r: &Running) -> Vec<String> {
    let mut notes: Vec<String> = r
        .unredirected
        .iter()
        .map(|why| format!("not redirected: {why}"))
        .collect();
    for (service, udp, _, holder) in &r.blocked {
        let udp = if *udp { "/udp" } else { "" };
        notes.push(format!(
            "{service}{udp} is redirected to endpoint {holder}, which started it first; use this endpoint's names ({}.{}.svc.ENDPOINT.{})",
            r.service.name, r.service.namespace, r.domain
        ));
    }
    notes
}

/// The addresses of `hostport` (`host:port`), from the literal or a
/// lookup bounded to two seconds; none when it fails.
async fn resolve_quickly(hostport: Option<&str>) -> Vec<IpAddr> {
    let Some(hostport) = hostport else {
        return vec![];
    };
    if let Ok(s) = hostport.parse::<SocketAddr>() {
        return vec![s.ip()];
    }
    let lookup = tokio::net::lookup_host(hostport.to_owned());
    match tokio::time::timeout(std::time::Duration::from_secs(2), lookup).await {
        Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
        _ => vec![],
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

/// Whether a running service's listeners still fit its new catalog entry.
fn same_listeners(a: &Service, b: &Service) -> bool {
    let ports = |s: &Service| -> Vec<(u16, bool)> {
        let mut v: Vec<(u16, bool)> = s
            .ports
            .iter()
            .map(|p| (p.port, p.protocol == Protocol::Udp))
            .collect();
        v.sort_unstable();
        v
    };
    ports(a) == ports(b) && a.direction == b.direction && a.addresses == b.addresses
}

/// The configuration in force, replaced by [`Daemon::reload`].
///
/// Readers get a plain `&Config` (through `Deref`) that stays consistent for
/// as long as they hold it, without a lock across `.await`s and without
/// changing any reader. To make that safe each configuration is leaked:
/// a reload keeps the previous one alive. That is a few KiB per reload, and
/// reloads are operator actions.
struct LiveConfig(std::sync::RwLock<&'static Config>);

impl LiveConfig {
    fn new(config: Config) -> Self {
        LiveConfig(std::sync::RwLock::new(Box::leak(Box::new(config))))
    }

    fn get(&self) -> &'static Config {
        match self.0.read() {
            Ok(c) => *c,
            Err(p) => *p.into_inner(),
        }
    }

    fn set(&self, config: Config) {
        let leaked: &'static Config = Box::leak(Box::new(config));
        match self.0.write() {
            Ok(mut c) => *c = leaked,
            Err(p) => *p.into_inner() = leaked,
        }
    }
}

impl std::ops::Deref for LiveConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        self.get()
    }
}

/// Settings that only take effect when the daemon restarts.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.socket != new.socket || old.socket_group != new.socket_group {
        v.push("socket");
    }
    if old.hosts_file != new.hosts_file {
        v.push("hosts_file");
    }
    if old.address_range != new.address_range {
        v.push("address_range");
    }
    if old.metrics != new.metrics {
        v.push("metrics");
    }
    if old.redirect != new.redirect || old.cgroup != new.cgroup {
        v.push("redirect");
    }
    // Endpoints' domains and default namespaces follow a reload; where the
    // server listens and how the system is pointed at it do not.
    let dns = |c: &Config| {
        (
            c.dns.enabled,
            c.dns.listen,
            c.dns.method,
            c.dns.link.clone(),
            c.dns.resolver_dir.clone(),
        )
    };
    if dns(old) != dns(new) {
        v.push("[dns]");
    }
    v
}

impl Daemon {
    /// Re-reads the configuration file and applies it ([`Self::reload`]).
    pub async fn reload_from_disk(self: &Arc<Self>) -> Result<Reply, String> {
        let path = self.config.path.clone();
        let new = Config::load(&path).map_err(|e| {
            format!("{e}; the running configuration is unchanged (fix the file and reload again)")
        })?;
        self.reload(new).await
    }

    /// Applies a new configuration without dropping tunnels: connected
    /// endpoints whose settings are unchanged keep their connection and
    /// running services; changed ones are reconnected (their started
    /// services restart once the new catalog arrives); removed ones are
    /// disconnected; new `autostart` ones are connected.
    pub async fn reload(self: &Arc<Self>, new: Config) -> Result<Reply, String> {
        let old = self.config.get();
        let restart = restart_only_changes(old, &new);
        let mut kept = Vec::new();
        let mut reconnect = Vec::new();
        let mut removed = Vec::new();
        let mut kube_links = BTreeMap::new();
        {
            let mut state = self.state.lock().await;
            for (name, c) in &state.endpoints {
                match new.endpoint(name) {
                    None => removed.push(name.clone()),
                    Some(cfg) if *cfg != c.endpoint.config => reconnect.push(name.clone()),
                    Some(_) => kept.push(name.clone()),
                }
            }
            for name in &removed {
                state.endpoints.remove(name);
                state.wanted.retain(|(ep, _)| ep != name);
            }
            for name in &reconnect {
                // Started services stay wanted: reconcile stops them now (no
                // endpoint) and starts them again on the new connection.
                // The user's Kubernetes credentials are kept when the
                // endpoint still points at the same place.
                if let Some(c) = state.endpoints.remove(name) {
                    if let Some(k) = c.endpoint.kube() {
                        if new.endpoint(name).and_then(|e| e.kubernetes.as_ref())
                            == Some(k.settings())
                        {
                            kube_links.insert(name.clone(), k);
                        }
                    }
                }
            }
            self.config.set(new);
            self.reconcile_locked(&mut state).await;
        }
        let new = self.config.get();
        let added: Vec<String> = new
            .endpoints
            .iter()
            .filter(|e| e.autostart && old.endpoint(&e.name).is_none())
            .map(|e| e.name.clone())
            .collect();
        let mut not_reconnected = Vec::new();
        for name in reconnect.iter().chain(&added) {
            if let Err(e) = self.connect(name, kube_links.remove(name)).await {
                tracing::error!(endpoint = %name, error = %e, "reconnect after reload failed");
                not_reconnected.push(format!("{name} ({e})"));
            }
        }
        tracing::info!(
            ?kept,
            ?reconnect,
            ?removed,
            ?added,
            "configuration reloaded"
        );
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(", ")
            }
        };
        let mut message = format!(
            "reloaded {}: kept {}; reconnected {}; disconnected {}; connected {}",
            new.path.display(),
            list(&kept),
            list(&reconnect),
            list(&removed),
            list(&added)
        );
        if !restart.is_empty() {
            message.push_str(&format!(
                "; changes to {} take effect after a restart (systemctl restart netmuxd)",
                restart.join(", ")
            ));
        }
        if !not_reconnected.is_empty() {
            message.push_str(&format!(
                "; not reconnected: {}",
                not_reconnected.join("; ")
            ));
        }
        Ok(Reply::Done { message })
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
mod reload_tests {
    use super::*;

    #[test]
    fn settings_that_need_a_restart_are_named() {
        let parse = |extra: &str| {
            Config::parse(
                std::path::Path::new("/t/c.toml"),
                &format!("hosts_file = \"/t/hosts\"\n{extra}"),
            )
            .expect("config")
        };
        let base = parse("");
        assert!(restart_only_changes(&base, &parse("")).is_empty());
        assert_eq!(
            restart_only_changes(&base, &parse("[dns]\nmethod = \"hosts\"\n")),
            ["[dns]"]
        );
        assert_eq!(
            restart_only_changes(&base, &parse("redirect = \"loopback\"\n")),
            ["redirect"]
        );
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
