//! Intercepts (docs/intercept.md): an existing Service's traffic comes to
//! a workstation, whole (global) or per HTTP request (personal), without
//! touching the workload's pods.
//!
//! For the first intercept of a Service, this replica takes a Lease for it
//! ([`cluster`]), lists its pods ([`pods`]), listens on one port of its own
//! per Service port ([`listen`]), publishes an EndpointSlice of the Service
//! pointing there, and removes the Service's selector, recorded on the
//! Service ([`record`]). Connections then arrive here: to the workstation
//! as server-initiated streams (global), through the HTTP router
//! ([`router`]: the header's requests to the workstation, every other to a
//! pod), or straight to a pod (ports nobody intercepts). Which intercepts
//! coexist and where a request goes is [`route`]'s, sans IO.
//!
//! The Service is restored when its last intercept ends: `leave`, the
//! session's end, the daemon silent for `intercept_ttl_ms`, this server
//! draining; and by any replica once the Lease expired (this replica
//! died).

pub mod cluster;
pub mod listen;
mod live;
pub mod peer;
pub mod pods;
pub mod record;
pub mod remote;
pub mod route;
pub mod router;
pub mod stop;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netmux_common::proto::catalog::ServiceId;
use netmux_common::sync::lock;
use quinn::Connection;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use cluster::{Cluster, SlicePort};
use live::{finish, renew, rx_count};
use netmux_common::proto::replaced::Replaced;
use pods::{Pods, PortPlan};
use route::{Claim, Mode};

/// What a daemon asks for.
#[derive(Debug, Clone)]
pub struct Ask {
    /// `namespace/name` of the catalog entry.
    pub key: String,
    /// The Service's namespace.
    pub namespace: String,
    /// The Kubernetes Service.
    pub service: String,
    /// The catalog id (stream headers name it).
    pub id: ServiceId,
    /// Service port; 0: the only one.
    pub port: u16,
    /// Global or personal.
    pub mode: Mode,
}

/// Requests (or connections, global) and bytes routed one way.
#[derive(Debug, Default)]
pub struct Counts {
    /// Requests (connections for a global intercept).
    pub requests: AtomicU64,
    /// Bytes, both directions.
    pub bytes: AtomicU64,
}

impl Counts {
    fn get(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// One intercept held on this replica.
#[derive(Clone)]
pub struct Held {
    /// Who, which port, which mode.
    pub claim: Claim,
    /// The port it was asked for (0: the only one), for `leave`.
    pub asked_port: u16,
    /// Where its workstation's streams are opened.
    pub via: Via,
    /// What went to its workstation.
    pub to_workstation: Arc<Counts>,
    /// Received datagrams last seen, and since when unchanged.
    heard: Arc<Mutex<(u64, Instant)>>,
}

/// How the holder reaches an intercept's workstation.
#[derive(Clone)]
pub enum Via {
    /// Its daemon is connected here: streams are opened on its connection.
    Local(Connection),
    /// Its daemon is connected to another replica (a member): streams are
    /// opened on that replica's connection, starting with a
    /// [`peer::wire::Forward`] naming the registration.
    Peer {
        /// The member replica's connection.
        conn: Connection,
        /// The member's registration id.
        registration: u64,
    },
}

impl Via {
    /// The QUIC connection streams go on (its liveness is the
    /// intercept's).
    pub fn conn(&self) -> &Connection {
        match self {
            Via::Local(c) | Via::Peer { conn: c, .. } => c,
        }
    }

    /// What opens a stream for client `peer` on Service port `port`
    /// instead of the `Reverse` header (a member relays), if any.
    pub fn head(&self, port: u16, peer: std::net::SocketAddr) -> Option<bytes::Bytes> {
        match self {
            Via::Local(_) => None,
            Via::Peer { registration, .. } => peer::wire::to_bytes(&peer::wire::Forward {
                registration: *registration,
                port,
                peer,
            })
            .ok(),
        }
    }
}

/// The daemon asking for an intercept, as intercepts know it.
#[derive(Clone)]
pub(crate) struct Who {
    /// Its session on this replica.
    pub(crate) session: u64,
    /// Its name.
    pub(crate) client: String,
    /// Its connection.
    pub(crate) conn: Connection,
}

impl From<&crate::reverse::Holder> for Who {
    fn from(h: &crate::reverse::Holder) -> Self {
        Who {
            session: h.session,
            client: h.client.clone(),
            conn: h.conn.clone(),
        }
    }
}

/// A Service this replica routes.
pub struct Routed {
    /// `namespace/name` of the catalog entry.
    pub key: String,
    /// Namespace.
    pub namespace: String,
    /// Kubernetes Service name.
    pub service: String,
    /// Catalog id.
    pub id: ServiceId,
    /// Its TCP ports.
    pub ports: Vec<PortPlan>,
    /// Its pods.
    pub pods: Arc<Pods>,
    /// What went to the pods from intercepted ports' routers.
    pub to_pods: Arc<Counts>,
    /// This replica's listening port for each Service port (its slice).
    slice_ports: Vec<SlicePort>,
    /// The workloads a replace intercept stopped, as recorded on the
    /// Service (`None`: not a replace intercept; then none may join).
    stopped: Option<Vec<Replaced>>,
    held: Mutex<Vec<Held>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Routed {
    /// The intercepts now held.
    pub fn held(&self) -> Vec<Held> {
        lock(&self.held).clone()
    }

    fn claims(&self) -> Vec<Claim> {
        lock(&self.held).iter().map(|h| h.claim.clone()).collect()
    }

    fn describe(&self) -> String {
        let claims: Vec<String> = self.claims().iter().map(Claim::to_string).collect();
        claims.join(", ")
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        for t in lock(&self.tasks).iter() {
            t.abort();
        }
    }
}

/// An intercept as `ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// `namespace/name`.
    pub key: String,
    /// Service port.
    pub port: u16,
    /// The holder as others see it, with the replica.
    pub holder: String,
    /// `global` or `personal name=value`.
    pub mode: String,
    /// Requests (connections, global) to the workstation.
    pub to_workstation: u64,
    /// Requests of the Service's intercepted ports sent to the pods.
    pub to_pods: u64,
}

/// The intercepts of this replica; its tasks end with it.
pub struct Intercepts {
    core: Core,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What [`Intercepts`] and its tasks share.
#[derive(Clone)]
pub struct Core {
    table: Arc<Mutex<HashMap<String, Arc<Routed>>>>,
    /// Serializes starts, restores and sweeps on this replica.
    ops: Arc<tokio::sync::Mutex<()>>,
    cluster: Option<Arc<Cluster>>,
    metrics: Metrics,
    options: netmux_common::tunnel::stream::Options,
    ttl: Duration,
    /// The replica endpoint (several replicas), if this one has a pod IP.
    peers: Option<Arc<peer::Peers>>,
    /// This replica's intercepts routed by another replica.
    members: remote::Members,
    /// Workloads with no Service in front, stopped for a daemon.
    stopped: stop::Table,
}

impl std::ops::Deref for Intercepts {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Drop for Intercepts {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The Service port `asked` (0: the only one) of `ports`.
fn resolve_port(key: &str, ports: &[PortPlan], asked: u16) -> Result<u16, String> {
    let list = || {
        ports
            .iter()
            .map(|p| p.port.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (asked, ports) {
        (0, [only]) => Ok(only.port),
        (0, []) => Err(format!("Service {key} has no TCP port")),
        (0, _) => Err(format!(
            "Service {key} has ports {}; fix: choose one with --port",
            list()
        )),
        (p, _) if ports.iter().any(|x| x.port == p) => Ok(p),
        (p, _) => Err(format!(
            "Service {key} has no TCP port {p}; it has {}",
            list()
        )),
    }
}

impl Intercepts {
    /// Intercepts through `cluster` (`None`: not on Kubernetes, every
    /// intercept is refused); starts the sweeper of expired Leases.
    pub fn new(
        cluster: Option<Arc<Cluster>>,
        peers: Option<Arc<peer::Peers>>,
        metrics: Metrics,
        options: netmux_common::tunnel::stream::Options,
        ttl: Duration,
    ) -> Self {
        let table: Arc<Mutex<HashMap<String, Arc<Routed>>>> = Arc::default();
        let stopped: stop::Table = Arc::default();
        let ops: Arc<tokio::sync::Mutex<()>> = Arc::default();
        if let (Some(c), Some(p)) = (&cluster, &peers) {
            c.advertise(p.addr());
        }
        let sweeper = cluster.clone().map(|c| {
            let table = Arc::downgrade(&table);
            let stopped = Arc::downgrade(&stopped);
            let ops = ops.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(ttl / 4);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let (Some(table), Some(stopped)) = (table.upgrade(), stopped.upgrade()) else {
                        return;
                    };
                    let _op = ops.lock().await;
                    c.sweep(|key| {
                        lock(&table).contains_key(key) || lock(&stopped).contains_key(key)
                    })
                    .await;
                }
            })
        });
        let core = Core {
            table,
            ops,
            cluster,
            metrics,
            options,
            ttl,
            peers,
            members: remote::Members::default(),
            stopped,
        };
        let mut tasks: Vec<_> = sweeper.into_iter().collect();
        if let Some(p) = core.peers.clone() {
            tasks.push(tokio::spawn(remote::serve(p, core.clone())));
        }
        Intercepts { core, tasks }
    }
}

impl Core {
    /// Intercepts `ask` for the daemon `holder`; `Err` says why not (names
    /// the holder of a conflicting intercept).
    pub(crate) async fn start(
        &self,
        holder: &crate::reverse::Holder,
        ask: Ask,
    ) -> Result<(), String> {
        self.start_for(&Who::from(holder), ask).await
    }

    /// [`Self::start`] for `holder`: routed here (this replica takes or
    /// holds the Lease), or registered with the replica holding it.
    pub(crate) async fn start_for(&self, holder: &Who, ask: Ask) -> Result<(), String> {
        let Some(cluster) = self.cluster.clone() else {
            return Err("this server does not run the Kubernetes runtime: intercepts change a Service's EndpointSlices; fix: intercept through a netmux-server deployed in the cluster".into());
        };
        if let Some(done) = self.members.already(holder.session, &ask) {
            return done;
        }
        let op = self.ops.lock().await;
        let existing = lock(&self.table).get(&ask.key).cloned();
        if let Some(routed) = existing {
            return self.add(&routed, holder, &ask);
        }
        let first = Claim {
            session: holder.session,
            client: holder.client.clone(),
            port: ask.port,
            mode: ask.mode.clone(),
        };
        match cluster
            .take(&ask.namespace, &ask.service, &first.to_string())
            .await
        {
            Ok(()) => {}
            Err(cluster::TakeError::Held {
                by,
                address: Some(address),
            }) if self.peers.is_some() => {
                // Routed by another replica: register there (without
                // holding this replica's operations over the network).
                drop(op);
                return remote::register(self, holder, ask, address, &by).await;
            }
            Err(cluster::TakeError::Held { by, address }) => {
                let why = match address {
                    Some(_) => {
                        "this replica has no replica endpoint (no POD_IP) to register with it"
                    }
                    None => "that replica advertises no replica endpoint (an older netmux-server?)",
                };
                return Err(format!("{by}; {why}: leave those first, or wait until that replica stops renewing the intercept Lease"));
            }
            Err(e) => return Err(e.to_string()),
        }
        self.route_new(&cluster, holder, &ask).await
    }

    /// The workloads a replace intercept of Service `ns/svc` would stop
    /// (for the RBAC check of the user asking), or why it cannot.
    pub(crate) async fn would_stop(&self, ns: &str, svc: &str) -> Result<Vec<Replaced>, String> {
        let Some(cluster) = &self.cluster else {
            return Ok(Vec::new());
        };
        let service = cluster.service(ns, svc).await?;
        cluster.would_stop(ns, svc, &service).await
    }

    /// Adds `ask` of `holder` to a Service this replica routes (called
    /// with the operations lock held).
    fn add(&self, routed: &Routed, holder: &Who, ask: &Ask) -> Result<(), String> {
        let port = resolve_port(&ask.key, &routed.ports, ask.port)?;
        // Between its last intercept's end and its restore, a Service
        // whose workload is stopped takes only a replace intercept, and
        // one whose workload runs none (the conflicts cover the rest).
        if routed.stopped.is_some() != (ask.mode == Mode::Replace) && routed.claims().is_empty() {
            return Err(format!(
                "Service {} is being restored from its last intercept; ask again in a moment",
                ask.key
            ));
        }
        let claim = Claim {
            session: holder.session,
            client: holder.client.clone(),
            port,
            mode: ask.mode.clone(),
        };
        if let Some(why) = route::conflict(&routed.claims(), &claim) {
            return Err(format!("Service {} port {port} is {why}", ask.key));
        }
        let mut held = lock(&routed.held);
        if !held.iter().any(|h| h.claim == claim) {
            held.push(self.held(holder, claim, ask.port));
        }
        tracing::info!(service = %ask.key, client = %holder.client, mode = %ask.mode, port, "intercept added");
        Ok(())
    }

    /// Routes `ask`'s Service here, the Lease just taken (called with the
    /// operations lock held); undoes everything on failure.
    async fn route_new(
        &self,
        cluster: &Arc<Cluster>,
        holder: &Who,
        ask: &Ask,
    ) -> Result<(), String> {
        match self.route(cluster, holder, ask).await {
            Ok(routed) => {
                tracing::info!(service = %ask.key, client = %holder.client, mode = %ask.mode, "Service intercepted");
                lock(&self.table).insert(ask.key.clone(), routed);
                Ok(())
            }
            Err(e) => {
                // Undo whatever was done (idempotent), Lease included.
                if let Err(undo) = cluster.restore(&ask.namespace, &ask.service).await {
                    tracing::warn!(service = %ask.key, error = %undo, "cannot undo a failed intercept");
                }
                Err(e)
            }
        }
    }

    fn held(&self, holder: &Who, claim: Claim, asked_port: u16) -> Held {
        held(Via::Local(holder.conn.clone()), claim, asked_port)
    }

    /// Lists the pods, listens, diverts the Service.
    async fn route(
        &self,
        cluster: &Arc<Cluster>,
        holder: &Who,
        ask: &Ask,
    ) -> Result<Arc<Routed>, String> {
        let service = cluster.service(&ask.namespace, &ask.service).await?;
        let ports = pods::plan(&service);
        let port = resolve_port(&ask.key, &ports, ask.port)?;
        let selector = record::pod_selector(&ask.key, &service).map_err(|e| e.to_string())?;
        // A replace intercept stops what runs the pods; a record already on
        // the Service (this replica restarted, or took over) is the truth
        // about their counts before.
        let stopped = match ask.mode {
            Mode::Replace => Some(
                cluster
                    .would_stop(&ask.namespace, &ask.service, &service)
                    .await?,
            ),
            _ => {
                cluster
                    .start_left_stopped(&ask.namespace, &ask.service, &service)
                    .await?;
                None
            }
        };
        let ip = cluster.pod_ip()?;
        let pods = Arc::new(Pods::default());
        pods.set(cluster.pods(&ask.namespace, &selector).await?);
        let mut listeners = Vec::new();
        let mut slice_ports = Vec::new();
        for p in &ports {
            let l = TcpListener::bind((ip, 0))
                .await
                .map_err(|e| format!("cannot listen on {ip} for {}: {e}", ask.key))?;
            let local = l.local_addr().map_err(|e| e.to_string())?.port();
            slice_ports.push(SlicePort {
                name: p.name.clone(),
                port: local,
            });
            listeners.push((l, p.clone()));
        }
        let claim = Claim {
            session: holder.session,
            client: holder.client.clone(),
            port,
            mode: ask.mode.clone(),
        };
        let routed = Arc::new(Routed {
            key: ask.key.clone(),
            namespace: ask.namespace.clone(),
            service: ask.service.clone(),
            id: ask.id,
            ports,
            pods: pods.clone(),
            to_pods: Arc::default(),
            slice_ports: slice_ports.clone(),
            stopped: stopped.clone(),
            held: Mutex::new(vec![self.held(holder, claim, ask.port)]),
            tasks: Mutex::new(Vec::new()),
        });
        let mut tasks: Vec<tokio::task::JoinHandle<()>> = listeners
            .into_iter()
            .map(|(l, plan)| {
                tokio::spawn(listen::accept(
                    l,
                    Arc::new(listen::PortCtx {
                        routed: Arc::downgrade(&routed),
                        plan,
                        metrics: self.metrics.clone(),
                        options: self.options,
                    }),
                ))
            })
            .collect();
        tasks.push(tokio::spawn(pods::follow(
            cluster.clone(),
            ask.namespace.clone(),
            selector,
            pods,
        )));
        // Listeners are up: now send the Service's traffic here.
        cluster
            .divert(
                &ask.namespace,
                &ask.service,
                &slice_ports,
                &format!(
                    "{} through replica {}",
                    routed.describe(),
                    cluster.replica()
                ),
                stopped.as_deref().unwrap_or_default(),
            )
            .await?;
        // Recorded: now stop them (a failure restores, counts included).
        if let Some(stopped) = &stopped {
            cluster.stop(&ask.namespace, stopped).await?;
        }
        tasks.push(tokio::spawn(renew(
            Arc::downgrade(&routed),
            self.table.clone(),
            self.ops.clone(),
            cluster.clone(),
            self.ttl,
        )));
        *lock(&routed.tasks) = tasks;
        Ok(routed)
    }

    /// Ends the intercepts `session` holds on `key` at `port` (0: all of
    /// them); restores the Service when none is left. Returns whether
    /// there was one.
    pub fn leave(&self, session: u64, key: &str, port: u16) -> bool {
        if self.members.leave(session, key, port) {
            return true;
        }
        let Some(routed) = lock(&self.table).get(key).cloned() else {
            return false;
        };
        let removed = {
            let mut held = lock(&routed.held);
            let before = held.len();
            held.retain(|h| {
                !(h.claim.session == session
                    && (port == 0 || h.claim.port == port || h.asked_port == port))
            });
            before != held.len()
        };
        if removed {
            tracing::info!(service = %key, session, "intercept ended");
            self.finish_if_empty(routed);
        }
        removed
    }

    /// Ends every intercept of `session` (its connection ended).
    pub fn release_all(&self, session: u64) {
        self.members.leave_all(session);
        self.start_all_of(session);
        let keys: Vec<String> = lock(&self.table).keys().cloned().collect();
        for k in keys {
            self.leave(session, &k, 0);
        }
    }

    /// Intercepts `session` holds.
    pub fn held_by(&self, session: u64) -> usize {
        self.members.held_by(session)
            + self.stops_held_by(session)
            + lock(&self.table)
                .values()
                .map(|r| {
                    lock(&r.held)
                        .iter()
                        .filter(|h| h.claim.session == session)
                        .count()
                })
                .sum::<usize>()
    }

    /// What `session` holds, with counts.
    pub fn views(&self, session: u64) -> Vec<View> {
        let replica = self
            .cluster
            .as_ref()
            .map(|c| c.replica().to_owned())
            .unwrap_or_default();
        let mut out = self.members.views(session);
        out.extend(self.stop_views(session, &replica));
        for r in lock(&self.table).values() {
            for h in lock(&r.held).iter().filter(|h| h.claim.session == session) {
                out.push(View {
                    key: r.key.clone(),
                    port: h.claim.port,
                    holder: format!("{} through replica {replica}", h.claim.client),
                    mode: h.claim.mode.to_string(),
                    to_workstation: h.to_workstation.get().0,
                    to_pods: r.to_pods.get().0,
                });
            }
        }
        out
    }

    fn finish_if_empty(&self, routed: Arc<Routed>) {
        if !lock(&routed.held).is_empty() {
            return;
        }
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        tokio::spawn(finish(
            routed,
            self.table.clone(),
            self.ops.clone(),
            cluster,
        ));
    }

    /// Restores every Service this replica routes (the server stops), at
    /// most `within`; the daemons intercept again through another replica.
    pub async fn release_everything(&self, within: Duration) {
        self.members.clear();
        let all: Vec<Arc<Routed>> = lock(&self.table).values().cloned().collect();
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let restores = all.into_iter().map(|r| {
            lock(&r.held).clear();
            finish(r, self.table.clone(), self.ops.clone(), cluster.clone())
        });
        // Stopped workloads are started again alongside, within the same
        // time.
        let both =
            futures::future::join(futures::future::join_all(restores), self.start_everything());
        if tokio::time::timeout(within, both).await.is_err() {
            tracing::warn!(
                ?within,
                "not every intercepted Service was restored, or stopped workload started, in time; their Leases expire and another replica does it"
            );
        }
    }
}

fn held(via: Via, claim: Claim, asked_port: u16) -> Held {
    Held {
        heard: Arc::new(Mutex::new((rx_count(via.conn()), Instant::now()))),
        claim,
        asked_port,
        via,
        to_workstation: Arc::default(),
    }
}
