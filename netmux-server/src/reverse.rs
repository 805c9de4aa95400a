//! Reverse (C2L) services: claims and cluster-side listeners.
//!
//! A daemon claims a C2L service (or exposes one ad hoc); exactly one
//! session holds a service at a time. While held, the server listens on the
//! service's cluster-side addresses and sends every accepted connection to
//! the holder as a server-initiated stream. Listeners close when the claim is
//! released or the holder's session ends.
//!
//! Beyond this process, a [`ClaimLock`] says whether this replica may hold
//! a service at all ([`lock::MemoryLock`] for one server, Leases and
//! EndpointSlices in [`lease`] with the Kubernetes runtime).

pub mod lease;
pub(crate) mod lock;

pub use lock::{ClaimLock, ClaimRequest, MemoryLock};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use netmux_common::proto::catalog::{Direction, Protocol, Service, ServiceId, ServicePort};
use netmux_common::sync::lock;
use quinn::Connection;
use tokio::net::TcpListener;

use crate::catalog::CatalogStore;
use crate::metrics::Metrics;

/// Ports `netmux expose` may listen on (`expose_ports`: `8080` or
/// `"8000-8999"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "RawPortRange")]
pub struct PortRange {
    /// First port.
    pub(crate) first: u16,
    /// Last port (inclusive).
    pub(crate) last: u16,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum RawPortRange {
    One(u16),
    Text(String),
}

impl TryFrom<RawPortRange> for PortRange {
    type Error = String;
    fn try_from(raw: RawPortRange) -> Result<Self, String> {
        let bad = |t: &str| {
            format!("{t:?} is not a port or range; fix: write 8080 or \"8000-8999\" (1-65535)")
        };
        let (first, last) = match raw {
            RawPortRange::One(p) => (p, p),
            RawPortRange::Text(t) => {
                let (a, b) = t.split_once('-').unwrap_or((&t, &t));
                match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                    (Ok(a), Ok(b)) => (a, b),
                    _ => return Err(bad(&t)),
                }
            }
        };
        if first == 0 || first > last {
            return Err(bad(&format!("{first}-{last}")));
        }
        Ok(PortRange { first, last })
    }
}

impl PortRange {
    /// Unprivileged ports, the default of `expose_ports`.
    pub(crate) const UNPRIVILEGED: PortRange = PortRange {
        first: 1024,
        last: 65535,
    };

    fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// The session that asks, as the claims table knows it.
#[derive(Clone)]
pub(crate) struct Holder {
    /// Unique per daemon session.
    pub(crate) session: u64,
    /// Client name from the hello (shown to others whose claim is refused).
    pub(crate) client: String,
    /// Its QUIC connection, where reverse streams are opened.
    pub(crate) conn: Connection,
    /// Its UDP flows (C2L UDP services originate flows here).
    pub(crate) flows: Arc<netmux_common::tunnel::udp::Flows>,
}

struct Claim {
    holder: Holder,
    adhoc: bool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// What the [`ClaimLock`] was given.
    request: ClaimRequest,
}

impl Drop for Claim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Who holds which reverse service.
pub struct Claims {
    table: Arc<Mutex<HashMap<String, Claim>>>,
    store: Arc<CatalogStore>,
    metrics: Metrics,
    bind: IpAddr,
    /// Where `expose` publishes; `None`: `expose` is refused.
    adhoc_namespace: Option<String>,
    lock: Arc<dyn ClaimLock>,
    options: netmux_common::tunnel::stream::Options,
    /// Ports `expose` may listen on.
    expose_ports: Vec<PortRange>,
    /// Ports `expose` never takes (the server's own).
    reserved_ports: Vec<u16>,
}

impl Claims {
    /// An empty table; listeners of services without addresses bind `bind`.
    pub fn new(
        store: Arc<CatalogStore>,
        metrics: Metrics,
        bind: IpAddr,
        adhoc_namespace: impl Into<Option<String>>,
    ) -> Self {
        Self::with_lock(
            store,
            metrics,
            bind,
            adhoc_namespace,
            Arc::new(MemoryLock::default()),
        )
    }

    /// An empty table whose claims also take `lock` (shared with other
    /// replicas).
    pub fn with_lock(
        store: Arc<CatalogStore>,
        metrics: Metrics,
        bind: IpAddr,
        adhoc_namespace: impl Into<Option<String>>,
        lock: Arc<dyn ClaimLock>,
    ) -> Self {
        Claims {
            table: Arc::new(Mutex::new(HashMap::new())),
            store,
            metrics,
            bind,
            adhoc_namespace: adhoc_namespace.into(),
            lock,
            options: netmux_common::tunnel::stream::Options {
                half_close_timeout: Some(std::time::Duration::from_millis(
                    crate::config::DEFAULT_HALF_CLOSE_TIMEOUT_MS,
                )),
            },
            expose_ports: vec![PortRange::UNPRIVILEGED],
            reserved_ports: vec![],
        }
    }

    /// `expose` listens only on `allowed` ports, never on `reserved` ones
    /// (the server's own listeners).
    pub fn with_expose_ports(mut self, allowed: Vec<PortRange>, reserved: Vec<u16>) -> Self {
        self.expose_ports = allowed;
        self.reserved_ports = reserved;
        self
    }

    /// Sets the bridge's settings of the cluster connections it sends to
    /// holders (`half_close_timeout_ms`).
    pub(crate) fn with_stream_options(
        mut self,
        options: netmux_common::tunnel::stream::Options,
    ) -> Self {
        self.options = options;
        self
    }

    /// The Kubernetes Service behind catalog entry `key`, if the runtime
    /// knows it (an `nx` annotation may publish entries under other names).
    pub fn origin(&self, key: &str) -> Option<String> {
        self.store.origin(key)
    }

    /// The catalog key `netmux expose NAME` publishes under, if exposing
    /// is on (`adhoc_namespace`).
    pub(crate) fn adhoc_key(&self, name: &str) -> Option<String> {
        self.adhoc_namespace
            .as_ref()
            .map(|ns| format!("{ns}/{name}"))
    }

    /// Claims the C2L catalog service `key` for `holder`.
    pub(crate) async fn claim(&self, holder: &Holder, key: &str) -> Result<(), String> {
        let svc = self
            .store
            .service(key)
            .ok_or_else(|| format!("no service {key} in the catalog"))?;
        if svc.direction != Direction::C2L {
            return Err(format!(
                "{key} is an L2C service; only C2L services can be claimed"
            ));
        }
        self.hold(holder, svc, false).await
    }

    /// Publishes an ad hoc C2L service and claims it for `holder`.
    pub(crate) async fn expose(
        &self,
        holder: &Holder,
        name: &str,
        port: u16,
        target_port: u16,
    ) -> Result<(), String> {
        let reserved = self.reserved_ports.contains(&port);
        if reserved || !self.expose_ports.iter().any(|r| r.contains(port)) {
            let allowed: Vec<String> = self.expose_ports.iter().map(|r| r.to_string()).collect();
            return Err(format!(
                "the server does not expose port {port}: it allows {} (its expose_ports){}; fix: choose --remote-port in that range",
                allowed.join(", "),
                if reserved {
                    ", never its own listening ports"
                } else {
                    ""
                }
            ));
        }
        let Some(namespace) = self.adhoc_namespace.clone() else {
            return Err("this server publishes no ad hoc services: its adhoc_namespace is not set; fix: the server's admin sets adhoc_namespace (a namespace where netmux may create Services)".into());
        };
        let svc = Service {
            id: ServiceId(0),
            name: name.to_owned(),
            namespace,
            aliases: vec![],
            addresses: if self.bind.is_unspecified() {
                vec![]
            } else {
                vec![self.bind]
            },
            ports: vec![ServicePort {
                name: None,
                port,
                target_port,
                protocol: Protocol::Tcp,
            }],
            direction: Direction::C2L,
        };
        svc.validate().map_err(|e| e.to_string())?;
        let key = svc.key();
        if let Some(existing) = lock(&self.table).get(&key) {
            if existing.holder.session != holder.session {
                return Err(format!("{key} is held by {}", existing.holder.client));
            }
        }
        self.store.add_adhoc(svc)?;
        let svc = self
            .store
            .service(&key)
            .ok_or_else(|| format!("{key} vanished from the catalog"))?;
        let result = self.hold(holder, svc, true).await;
        if result.is_err() {
            self.store.remove_adhoc(&key);
        }
        result
    }

    async fn hold(&self, holder: &Holder, svc: Service, adhoc: bool) -> Result<(), String> {
        let key = svc.key();
        {
            let table = lock(&self.table);
            if let Some(existing) = table.get(&key) {
                return if existing.holder.session == holder.session {
                    Ok(())
                } else {
                    Err(format!(
                        "{key} is held by {}; it is released when that daemon stops it or disconnects",
                        existing.holder.client
                    ))
                };
            }
        }
        let request = ClaimRequest {
            service: self.store.origin(&key).unwrap_or_else(|| svc.name.clone()),
            key: key.clone(),
            namespace: svc.namespace.clone(),
            name: svc.name.clone(),
            session: holder.session,
            client: holder.client.clone(),
            ports: svc.ports.clone(),
            adhoc,
        };
        self.lock.acquire(&request).await?;
        let tasks = match self.listen(holder, &svc).await {
            Ok(t) => t,
            Err(e) => {
                tokio::spawn(self.lock.release(&request));
                return Err(e);
            }
        };
        let mut claim = Claim {
            holder: holder.clone(),
            adhoc,
            tasks,
            request,
        };
        // Listeners are up: now send the cluster's traffic here.
        if let Err(e) = self.lock.publish(&claim.request).await {
            tokio::spawn(self.lock.release(&claim.request));
            return Err(e);
        }
        if let Some(every) = self.lock.renew_every() {
            claim.tasks.push(tokio::spawn(renew(
                Arc::downgrade(&self.table),
                self.lock.clone(),
                self.store.clone(),
                claim.request.clone(),
                every,
            )));
        }
        let mut table = lock(&self.table);
        if let Some(existing) = table.get(&key) {
            // Lost a race with another claim: keep theirs.
            tokio::spawn(self.lock.release(&claim.request));
            return Err(format!("{key} is held by {}", existing.holder.client));
        }
        tracing::info!(service = %key, client = %holder.client, "reverse service claimed");
        table.insert(key, claim);
        Ok(())
    }

    /// Binds `svc`'s listeners and starts accepting for `holder`.
    async fn listen(
        &self,
        holder: &Holder,
        svc: &Service,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
        let key = svc.key();
        let addrs: Vec<IpAddr> = if svc.addresses.is_empty() {
            vec![self.bind]
        } else {
            svc.addresses.clone()
        };
        let mut listeners = Vec::new();
        for ip in &addrs {
            for p in svc.ports.iter().filter(|p| p.protocol == Protocol::Tcp) {
                let addr = SocketAddr::new(*ip, p.port);
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on {addr} for {key}: {e}"))?;
                listeners.push((l, p.port));
            }
        }
        let mut udp_tasks = Vec::new();
        for ip in &addrs {
            for p in svc.ports.iter().filter(|p| p.protocol == Protocol::Udp) {
                let addr = SocketAddr::new(*ip, p.port);
                let socket = netmux_common::tunnel::udp_socket::FlowSocket::bind(addr)
                    .map_err(|e| format!("cannot listen on udp {addr} for {key}: {e}"))?;
                let conn = holder.conn.clone();
                let id = svc.id;
                udp_tasks.push(tokio::spawn(holder.flows.clone().originate(
                    Arc::new(socket),
                    p.port,
                    move || Some((conn.clone(), id)),
                )));
            }
        }
        let tasks: Vec<_> = listeners
            .into_iter()
            .map(|(l, port)| {
                tokio::spawn(accept(
                    l,
                    crate::stream::Ask {
                        conn: holder.conn.clone(),
                        service: svc.id,
                        key: key.clone(),
                        port,
                        options: self.options,
                        direction: "c2l",
                        head: None,
                    },
                    self.metrics.clone(),
                ))
            })
            .chain(udp_tasks)
            .collect();
        Ok(tasks)
    }

    /// Releases `key` if `session` holds it.
    pub(crate) fn release(&self, session: u64, key: &str) {
        let removed = {
            let mut table = lock(&self.table);
            match table.get(key) {
                Some(c) if c.holder.session == session => table.remove(key),
                _ => None,
            }
        };
        if let Some(claim) = removed {
            tracing::info!(service = %key, client = %claim.holder.client, "reverse service released");
            finish(claim, &*self.lock, &self.store);
        }
    }

    /// Claims and exposes `session` holds now.
    pub(crate) fn held_by(&self, session: u64) -> usize {
        lock(&self.table)
            .values()
            .filter(|c| c.holder.session == session)
            .count()
    }

    /// Releases every claim of every session and waits, at most `within`,
    /// until the lock has given each up: a stopping server frees its
    /// Leases and EndpointSlices at once instead of leaving them to
    /// expire, so a daemon that reconnects to another replica can claim
    /// again right away.
    pub(crate) async fn release_everything(&self, within: std::time::Duration) {
        let claims: Vec<Claim> = lock(&self.table).drain().map(|(_, c)| c).collect();
        let releases: Vec<_> = claims
            .iter()
            .map(|c| self.lock.release(&c.request))
            .collect();
        for c in &claims {
            tracing::info!(service = %c.request.key, client = %c.holder.client, "reverse service released: server shutting down");
            if c.adhoc {
                self.store.remove_adhoc(&c.request.key);
            }
        }
        // Stops the listeners.
        drop(claims);
        if tokio::time::timeout(within, futures::future::join_all(releases))
            .await
            .is_err()
        {
            tracing::warn!(
                ?within,
                "not every claim was released in time; the rest expire"
            );
        }
    }

    /// Releases everything `session` holds (its connection ended).
    pub(crate) fn release_all(&self, session: u64) {
        let keys: Vec<String> = lock(&self.table)
            .iter()
            .filter(|(_, c)| c.holder.session == session)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.release(session, &k);
        }
    }
}

/// After a claim left the table: stops its listeners, gives the lock back,
/// unpublishes an ad hoc service.
fn finish(claim: Claim, lock: &dyn ClaimLock, store: &CatalogStore) {
    tokio::spawn(lock.release(&claim.request));
    if claim.adhoc {
        store.remove_adhoc(&claim.request.key);
    }
    drop(claim);
}

/// Renews `request` every `every` while it is in the table; drops the
/// claim when the lock says it is lost.
async fn renew(
    table: std::sync::Weak<Mutex<HashMap<String, Claim>>>,
    claim_lock: Arc<dyn ClaimLock>,
    store: Arc<CatalogStore>,
    request: ClaimRequest,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Err(why) = claim_lock.renew(&request).await else {
            continue;
        };
        tracing::warn!(service = %request.key, client = %request.client, reason = %why, "reverse claim lost");
        let Some(table) = table.upgrade() else {
            return;
        };
        let removed = {
            let mut t = lock(&table);
            match t.get(&request.key) {
                Some(c) if c.holder.session == request.session => t.remove(&request.key),
                _ => None,
            }
        };
        // Dropping the claim aborts this task too: nothing awaits after.
        if let Some(claim) = removed {
            finish(claim, &*claim_lock, &store);
        }
        return;
    }
}

async fn accept(listener: TcpListener, ask: crate::stream::Ask, metrics: Metrics) {
    let ask = Arc::new(ask);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(service = %ask.key, error = %e, "reverse accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let ask = ask.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move { crate::stream::ask(&ask, tcp, peer, &metrics).await });
    }
}
