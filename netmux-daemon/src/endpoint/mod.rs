//! One netmux server the daemon is connected to.
//!
//! An [`Endpoint`] owns one QUIC connection to its server (one per daemon and
//! endpoint), reconnects by itself with backoff when it is lost, and
//! publishes its status, current connection and catalog on watch channels.
//! The protocol itself is [`ClientSession`]'s; this is the thin driver:
//! - `connect`: reaching the server over the configured transport;
//! - `session`: the control session on that connection (the hello, then
//!   claims and catalog updates until it ends);
//! - here: the handle the daemon holds and the reconnect loop.
//!
//! [`ClientSession`]: netmux_common::proto::session::ClientSession

mod connect;
mod session;

use std::sync::Arc;
use std::time::Duration;

use netmux_common::proto::catalog::Indexed;
use netmux_common::proto::error_code;
use netmux_common::proto::left_out::LeftOut;
use netmux_common::sync::lock;
use quinn::{Connection, VarInt};
use tokio::sync::watch;

use crate::cluster::forward::KubeLink;
use crate::config::EndpointConfig;
use crate::metrics::Metrics;
pub(crate) use crate::status::EndpointStatus;

use connect::{connect, ConnectError};
use session::follow;

pub(crate) use crate::claims::{Claim, ClaimKind, ClaimState, Claims, Targets};

enum Command {
    /// Send claims that are pending.
    Sync,
    /// Release a claim the user dropped (already removed from the table).
    Release(ClaimKind),
}

/// A connected-or-reconnecting endpoint; dropping it disconnects.
pub(crate) struct Endpoint {
    /// Its configuration.
    pub(crate) config: EndpointConfig,
    /// The user's Kubernetes credentials (Kubernetes endpoints); replaced
    /// by [`Self::renew_kube`], read on every (re)connect.
    kube: watch::Sender<Option<Arc<KubeLink>>>,
    status: watch::Receiver<EndpointStatus>,
    conn: watch::Receiver<Option<Connection>>,
    catalog: watch::Receiver<Arc<Indexed>>,
    task: tokio::task::JoinHandle<()>,
    claims: Claims,
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    udp: Arc<netmux_common::tunnel::udp::Flows>,
    sweeper: tokio::task::JoinHandle<()>,
    health: crate::health::SharedState,
    /// The cluster ranges the server announced in its last hello.
    ranges: Arc<std::sync::Mutex<Vec<netmux_common::proto::cidr::Cidr>>>,
    /// Catalog entries the server left out of its last snapshot.
    left_out: Arc<std::sync::Mutex<LeftOut>>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
        self.sweeper.abort();
        if let Some(c) = self.conn.borrow().as_ref() {
            c.close(
                VarInt::from_u32(error_code::NO_ERROR),
                b"daemon disconnected",
            );
        }
    }
}

impl Endpoint {
    /// Starts connecting in the background; `kube` carries the user's
    /// credentials for a Kubernetes endpoint (`[endpoint.kubernetes]`).
    pub(crate) fn start(
        config: EndpointConfig,
        metrics: Metrics,
        kube: Option<Arc<KubeLink>>,
    ) -> Self {
        let (kube, kube_rx) = watch::channel(kube);
        let (status_tx, status) = watch::channel(EndpointStatus::Connecting);
        let (conn_tx, conn) = watch::channel(None);
        let (catalog_tx, catalog) = watch::channel(Arc::new(Indexed::default()));
        let claims = Claims::default();
        let udp = netmux_common::tunnel::udp::Flows::new(
            crate::udp::MAX_ANSWERED,
            crate::udp::IDLE_TIMEOUT,
            crate::udp::Meter::new(metrics.clone(), config.name.clone(), catalog.clone()),
        );
        let sweeper = tokio::spawn(udp.clone().sweep());
        let (commands, rx) = tokio::sync::mpsc::unbounded_channel();
        let health = crate::health::SharedState::default();
        let ranges: Arc<std::sync::Mutex<Vec<netmux_common::proto::cidr::Cidr>>> = Arc::default();
        let left_out: Arc<std::sync::Mutex<LeftOut>> = Arc::default();
        let task = tokio::spawn(run(
            config.clone(),
            kube_rx,
            Outputs {
                status: status_tx,
                conn_tx,
                catalog_tx,
                health: health.clone(),
                ranges: ranges.clone(),
                left_out: left_out.clone(),
            },
            metrics,
            claims.clone(),
            rx,
            udp.clone(),
        ));
        Endpoint {
            config,
            kube,
            status,
            conn,
            catalog,
            task,
            claims,
            commands,
            udp,
            sweeper,
            health,
            ranges,
            left_out,
        }
    }

    /// Catalog entries the server left out of its last snapshot because
    /// each is too large for a frame (from its hello reply).
    pub(crate) fn left_out(&self) -> LeftOut {
        lock(&self.left_out).clone()
    }

    /// The cluster's address ranges as the server announced them in its
    /// last hello (empty: none announced).
    pub(crate) fn cluster_ranges(&self) -> Vec<netmux_common::proto::cidr::Cidr> {
        lock(&self.ranges).clone()
    }

    /// The current blackout: how long the server has been silent and how
    /// long the session is kept; `None` when it answers.
    pub(crate) fn blackout(&self) -> Option<crate::health::Blackout> {
        lock(&self.health).blackout
    }

    /// The Kubernetes credentials in use, if any.
    pub(crate) fn kube(&self) -> Option<Arc<KubeLink>> {
        self.kube.borrow().clone()
    }

    /// Replaces the Kubernetes credentials (`netmux connect` again, e.g.
    /// after they expired). The live connection is kept; the next
    /// connection attempt uses them, at once if the endpoint is waiting.
    pub(crate) fn renew_kube(&self, link: Arc<KubeLink>) {
        self.kube.send_replace(Some(link));
    }

    /// Current status.
    pub(crate) fn status(&self) -> EndpointStatus {
        self.status.borrow().clone()
    }

    /// Status changes.
    pub(crate) fn watch_status(&self) -> watch::Receiver<EndpointStatus> {
        self.status.clone()
    }

    /// A receiver of the live connection.
    pub(crate) fn watch_connection(&self) -> watch::Receiver<Option<Connection>> {
        self.conn.clone()
    }

    /// The catalog as last received (kept while reconnecting).
    pub(crate) fn catalog(&self) -> Arc<Indexed> {
        self.catalog.borrow().clone()
    }

    /// Catalog changes.
    pub(crate) fn watch_catalog(&self) -> watch::Receiver<Arc<Indexed>> {
        self.catalog.clone()
    }

    /// The endpoint's UDP flows.
    pub(crate) fn udp(&self) -> Arc<netmux_common::tunnel::udp::Flows> {
        self.udp.clone()
    }

    /// The reverse claims (shared with the reverse stream handler).
    pub(crate) fn claims(&self) -> Claims {
        self.claims.clone()
    }

    /// Asks the server for a reverse service under `name`; the outcome shows
    /// in [`Self::claims`]. Kept across reconnects.
    pub(crate) fn claim(&self, name: &str, kind: ClaimKind, targets: Targets) {
        self.claims.lock().insert(
            name.to_owned(),
            Claim {
                kind,
                targets,
                state: ClaimState::Pending,
                holder: None,
                served: 0,
            },
        );
        let _ = self.commands.send(Command::Sync);
    }

    /// Drops the claim `name`; returns whether there was one.
    pub(crate) fn release(&self, name: &str) -> bool {
        let removed = self.claims.lock().remove(name);
        match removed {
            Some(c) => {
                let _ = self.commands.send(Command::Release(c.kind));
                true
            }
            None => false,
        }
    }

    /// The state of claim `name`, if any.
    pub(crate) fn claim_state(&self, name: &str) -> Option<ClaimState> {
        self.claims.lock().get(name).map(|c| c.state.clone())
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

/// What the endpoint task publishes.
struct Outputs {
    status: watch::Sender<EndpointStatus>,
    conn_tx: watch::Sender<Option<Connection>>,
    catalog_tx: watch::Sender<Arc<Indexed>>,
    health: crate::health::SharedState,
    ranges: Arc<std::sync::Mutex<Vec<netmux_common::proto::cidr::Cidr>>>,
    left_out: Arc<std::sync::Mutex<LeftOut>>,
}

async fn run(
    config: EndpointConfig,
    mut kube: watch::Receiver<Option<Arc<KubeLink>>>,
    outputs: Outputs,
    metrics: Metrics,
    claims: Claims,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
    udp: Arc<netmux_common::tunnel::udp::Flows>,
) {
    let Outputs {
        status,
        conn_tx,
        catalog_tx,
        health,
        ranges,
        left_out,
    } = outputs;
    let up = metrics.endpoint_up.with_label_values(&[&config.name]);
    let mut backoff = BACKOFF_MIN;
    let mut quic_endpoint: Option<(quinn::Endpoint, bool)> = None;
    loop {
        status.send_replace(EndpointStatus::Connecting);
        let link = kube.borrow_and_update().clone();
        let gate = netmux_common::tunnel::blackout::ProbeGate::default();
        match connect(&config, link.as_deref(), &mut quic_endpoint, &gate).await {
            Ok(((conn, session, send, recv, server, greeting), via_udp)) => {
                backoff = BACKOFF_MIN;
                // Before the catalog: the redirect bounds read them.
                *lock(&ranges) = session.cluster_ranges().to_vec();
                let left = session.left_out().clone();
                if !left.is_empty() {
                    tracing::warn!(endpoint = %config.name, total = left.total, entries = %left.listed.join(", "), "the server left catalog entries out, each over the 64 KiB frame limit; netmux status lists them");
                }
                *lock(&left_out) = left;
                catalog_tx.send_replace(Arc::new(Indexed::from(session.catalog().clone())));
                conn_tx.send_replace(Some(conn.clone()));
                status.send_replace(EndpointStatus::Connected {
                    server: server.to_string(),
                    greeting,
                    degraded: false,
                });
                up.set(1);
                tracing::info!(endpoint = %config.name, %server, services = session.catalog().len(), "connected");
                let reverse = tokio::spawn(crate::reverse::serve(
                    conn.clone(),
                    crate::reverse::Reverse {
                        claims: claims.clone(),
                        catalog: catalog_tx.subscribe(),
                        metrics: metrics.clone(),
                        endpoint: config.name.clone(),
                        options: config.stream_options(),
                    },
                ));
                let datagrams = tokio::spawn(crate::udp::serve(
                    conn.clone(),
                    udp.clone(),
                    claims.clone(),
                    catalog_tx.subscribe(),
                ));
                for c in claims.lock().values_mut() {
                    c.state = ClaimState::Pending;
                }
                let watch = crate::health::watch(crate::health::Watch {
                    conn: conn.clone(),
                    udp: match (&quic_endpoint, via_udp) {
                        (Some((e, _)), true) => Some((e.clone(), server)),
                        _ => None,
                    },
                    bound: config.survive_blackout,
                    gate,
                    name: config.name.clone(),
                    metrics: metrics.clone(),
                    status: status.clone(),
                    shared: health.clone(),
                });
                let error = tokio::select! {
                    e = follow(
                        &conn,
                        session,
                        send,
                        recv,
                        &catalog_tx,
                        &claims,
                        &mut commands,
                    ) => format!("{e}{}", crate::health::lost_list(&health)),
                    // Says itself what was lost.
                    e = watch => e,
                };
                reverse.abort();
                datagrams.abort();
                up.set(0);
                conn_tx.send_replace(None);
                tracing::warn!(endpoint = %config.name, %error, "connection lost; reconnecting");
                status.send_replace(EndpointStatus::Down { error });
            }
            Err(ConnectError::Credentials(e)) => {
                // Retrying cannot help: wait for `netmux connect` to hand
                // over fresh credentials.
                let error = format!("{e}; run `netmux connect {}` to renew them", config.name);
                tracing::warn!(endpoint = %config.name, %error, "credentials refused; waiting for new ones");
                status.send_replace(EndpointStatus::Down { error });
                if kube.changed().await.is_err() {
                    return;
                }
                backoff = BACKOFF_MIN;
            }
            Err(e) => {
                tracing::warn!(endpoint = %config.name, error = %e, retry_in = ?backoff, "cannot connect");
                status.send_replace(EndpointStatus::Down {
                    error: e.to_string(),
                });
                // New credentials end the wait.
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = kube.changed() => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}
