//! The embedded DNS server: answers for each endpoint's cluster domain from
//! the names of running services ([`NameSource::names`], which the daemon
//! implements).
//!
//! [`zone`] is the sans-IO core (names → [`zone::Zone`], question →
//! [`zone::Answer`]); [`server`] is the hickory-server shell around it. How
//! the system's resolver is pointed at it lives in
//! [`crate::system::resolver`]. See `docs/dns.md`.

pub(crate) mod server;
pub(crate) mod zone;

pub use server::{DnsServer, EndpointSource, Handler};
pub use zone::{answer, Answer, DnsEndpoint, Zone, ZoneFollower};

use netmux_common::sync::lock;

use crate::config::Config;

/// The DNS view of every configured endpoint.
pub(crate) fn endpoints(config: &Config) -> Vec<DnsEndpoint> {
    config
        .endpoints
        .iter()
        .map(|e| DnsEndpoint {
            name: e.name.clone(),
            domain: e.cluster_domain.clone(),
            default_namespace: config.dns.default_namespace(&e.name).to_owned(),
        })
        .collect()
}

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::config::DnsMethod;
use crate::system::resolver::{self, Integration, Plan};

/// A name the workstation should resolve: the daemon publishes the list on
/// every reconcile ([`NameSource::names`]); the DNS server and the hosts
/// file follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRecord {
    /// Endpoint the service belongs to.
    pub endpoint: String,
    /// The endpoint's cluster domain.
    pub domain: String,
    /// When the endpoint connected, as a sequence number: smaller is
    /// earlier; it stays the same while the endpoint is connected. Of two
    /// endpoints publishing the same name, the earlier one owns it in DNS.
    pub connected: u64,
    /// The catalog entry (names, ports for SRV).
    pub service: netmux_common::proto::catalog::Service,
    /// Addresses to answer with: where the redirect backend catches
    /// connections (the allocated 127.x alias with loopback, the real
    /// cluster addresses with eBPF).
    pub addrs: Vec<std::net::IpAddr>,
}

impl NameRecord {
    /// `records` in the order that decides who gets a name several of them
    /// publish: the endpoint connected first, then (ties: records built by
    /// hand) by endpoint, namespace and service name. The DNS zone and the
    /// hosts block both follow it, so they agree on every owner.
    pub(crate) fn by_precedence(records: &[NameRecord]) -> Vec<&NameRecord> {
        let mut sorted: Vec<&NameRecord> = records.iter().collect();
        sorted.sort_by(|a, b| a.precedence().cmp(&b.precedence()));
        sorted
    }

    fn precedence(&self) -> (u64, &str, &str, &str) {
        (
            self.connected,
            &self.endpoint,
            &self.service.namespace,
            &self.service.name,
        )
    }
}

/// What the DNS side reads from the daemon. The daemon implements it, so
/// this module does not depend on [`crate::daemon`].
pub trait NameSource: Send + Sync + 'static {
    /// The configuration in force (`netmux reload` replaces it).
    fn config(&self) -> &Config;
    /// The names of running services, updated whenever they change.
    fn names(&self) -> tokio::sync::watch::Receiver<Arc<Vec<NameRecord>>>;
    /// The `netmux status` line and the hosts-block switch.
    fn name_service(&self) -> &NameService;
    /// Applies the names again (after falling back to the hosts file).
    fn reconcile(self: &Arc<Self>) -> impl std::future::Future<Output = ()> + Send;
}

/// What the daemon needs from the DNS side: the `netmux status` line and
/// whether names still go into the hosts file.
#[derive(Debug)]
pub struct NameService {
    status: Mutex<String>,
    hosts_block: AtomicBool,
}

impl Default for NameService {
    fn default() -> Self {
        NameService {
            status: Mutex::new("hosts file (DNS server not started)".into()),
            hosts_block: AtomicBool::new(true),
        }
    }
}

impl NameService {
    /// The `dns` line of `netmux status`.
    pub(crate) fn status(&self) -> String {
        lock(&self.status).clone()
    }

    /// Replaces the status line.
    pub(crate) fn set_status(&self, s: String) {
        *lock(&self.status) = s;
    }

    /// Whether the daemon writes its hosts-file block.
    pub(crate) fn hosts_block(&self) -> bool {
        self.hosts_block.load(Ordering::Relaxed)
    }

    /// Turns the hosts-file block on or off (takes effect on the next
    /// reconcile).
    pub(crate) fn set_hosts_block(&self, on: bool) {
        self.hosts_block.store(on, Ordering::Relaxed);
    }
}

/// The DNS server and the system integration following the daemon's names.
pub struct DnsRuntime {
    server: DnsServer,
    follow: tokio::task::JoinHandle<()>,
    integration: Arc<Mutex<Integration>>,
}

/// Starts the DNS server and the integration chosen by `[dns]`, after
/// removing what a crashed daemon left. `None` when DNS is off or the
/// server cannot listen: names then stay in the hosts file.
pub async fn start<D: NameSource>(daemon: &Arc<D>) -> Option<DnsRuntime> {
    let cfg = daemon.config().dns.clone();
    let ns = daemon.name_service();
    if !cfg.enabled {
        ns.set_status("off (dns.enabled = false): names in the hosts file".into());
        return None;
    }
    match tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || resolver::cleanup_leftovers(&cfg)
    })
    .await
    {
        Ok(Ok(done)) => {
            for d in done {
                tracing::info!(what = %d, "removed DNS integration left by an earlier run");
            }
        }
        Ok(Err(e)) => tracing::error!(error = %e, "cannot remove earlier DNS integration"),
        Err(e) => tracing::error!(error = %e, "DNS cleanup task failed"),
    }
    // The configured endpoints as of each query: `netmux reload` may add
    // endpoints or change their domains.
    let source: EndpointSource = {
        let daemon = Arc::downgrade(daemon);
        Arc::new(move || {
            daemon
                .upgrade()
                .map(|d| endpoints(d.config()))
                .unwrap_or_default()
        })
    };
    let handler = Handler::following(daemon.names(), source);
    let server = match DnsServer::bind(cfg.listen, handler).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(listen = %cfg.listen, error = %e, "DNS server cannot listen; names stay in the hosts file");
            ns.set_status(format!(
                "hosts file (DNS server cannot listen on {}: {e})",
                cfg.listen
            ));
            return None;
        }
    };
    let (method, why) = resolver::choose(cfg.method, &resolver::Probe::system());
    tracing::info!(listen = %server.local_addr(), ?method, reason = %why, "DNS server started");
    let integration = Arc::new(Mutex::new(Integration::new(method, &cfg)));
    ns.set_hosts_block(lock(&integration).uses_hosts_file());
    let follow = tokio::spawn(follow(
        Arc::downgrade(daemon),
        daemon.names(),
        integration.clone(),
        server.local_addr(),
        (method, why),
    ));
    Some(DnsRuntime {
        server,
        follow,
        integration,
    })
}

/// Keeps the integration in line with the names until they stop.
async fn follow<D: NameSource>(
    daemon: Weak<D>,
    mut names: tokio::sync::watch::Receiver<Arc<Vec<NameRecord>>>,
    integration: Arc<Mutex<Integration>>,
    server: std::net::SocketAddr,
    (mut method, mut why): (DnsMethod, String),
) {
    let mut follower = ZoneFollower::new(Vec::new());
    let mut applied: Option<Plan> = None;
    loop {
        let Some(d) = daemon.upgrade() else { return };
        let records = names.borrow_and_update().clone();
        // The endpoints of the configuration in force (reloads change it).
        follower.set_endpoints(endpoints(d.config()));
        follower.update(&records);
        let plan = Plan {
            server,
            domains: follower.active_domains(),
            search: follower.search(),
        };
        if applied.as_ref() != Some(&plan) {
            let job = {
                let integration = integration.clone();
                let plan = plan.clone();
                move || lock(&integration).apply(&plan)
            };
            let result = tokio::task::spawn_blocking(job)
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            match result {
                Ok(()) => applied = Some(plan.clone()),
                Err(e) => {
                    tracing::error!(?method, error = %e, "DNS integration failed; falling back to the hosts file");
                    let job = {
                        let integration = integration.clone();
                        move || {
                            let mut i = lock(&integration);
                            let r = i.restore(server);
                            *i = Integration::Hosts;
                            r
                        }
                    };
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(job).await {
                        tracing::error!(error = %e, "cannot undo the failed DNS integration");
                    }
                    why = format!("fallback: {method:?} failed: {e}");
                    method = DnsMethod::Hosts;
                    d.name_service().set_hosts_block(true);
                    d.reconcile().await;
                    applied = Some(plan.clone());
                }
            }
        }
        let line = lock(&integration).describe(&d.config().dns, &plan);
        d.name_service().set_status(format!("{line} [{why}]"));
        drop(d);
        if names.changed().await.is_err() {
            return;
        }
    }
}

impl DnsRuntime {
    /// Stops following, puts the system back as it was, stops the server.
    pub async fn stop(self) {
        self.follow.abort();
        let server = self.server.local_addr();
        let integration = self.integration.clone();
        match tokio::task::spawn_blocking(move || lock(&integration).restore(server)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot restore the resolver configuration"),
            Err(e) => tracing::error!(error = %e, "restore task failed"),
        }
        self.server.shutdown().await;
    }
}
