//! One netmux server the daemon is connected to.
//!
//! An [`Endpoint`] owns one QUIC connection to its server (one per daemon and
//! endpoint), reconnects by itself with backoff when it is lost, and
//! publishes its status, current connection and catalog on watch channels.
//! The protocol itself is [`ClientSession`]'s; this is the thin driver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use netmux_common::proto::catalog::Indexed;
use netmux_common::proto::error_code;
use netmux_common::proto::hello::{Credential, Hello};
use netmux_common::proto::left_out::LeftOut;
use netmux_common::proto::session::{ClientEvent, ClientSession, SessionError, SYNC_TIMEOUT};
use netmux_common::sync::lock;
use netmux_common::tunnel::quic;
use quinn::{Connection, VarInt};
use tokio::sync::watch;

use crate::cluster::forward::KubeLink;
use crate::config::EndpointConfig;
use crate::config::Transport;
use crate::metrics::Metrics;
pub(crate) use crate::status::EndpointStatus;
use crate::transport::dial_udp;

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// Name resolution.
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    /// TLS or QUIC setup problem (bad CA, socket).
    #[error("{0}")]
    Setup(String),
    /// QUIC handshake or connection failure.
    #[error("QUIC: {0}")]
    Quic(String),
    /// The session failed (refused, version mismatch, protocol error).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The Kubernetes API refused the user's credentials (401).
    #[error("{0}")]
    Credentials(String),
}

impl From<crate::transport::DialError> for ConnectError {
    fn from(e: crate::transport::DialError) -> ConnectError {
        match e {
            crate::transport::DialError::Setup(m) => ConnectError::Setup(m),
            crate::transport::DialError::Quic(m) => ConnectError::Quic(m),
        }
    }
}

/// How long one Kubernetes API step of a connection attempt (reading the
/// CA, finding a pod, opening the forward) may take.
const KUBE_STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs a Kubernetes API step with [`KUBE_STEP_TIMEOUT`].
async fn kube_step<T>(
    what: &str,
    step: impl std::future::Future<Output = Result<T, crate::cluster::KubeError>>,
) -> Result<T, ConnectError> {
    use crate::cluster::KubeError;
    match tokio::time::timeout(KUBE_STEP_TIMEOUT, step).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(KubeError::Unauthorized(m))) => Err(ConnectError::Credentials(m)),
        Ok(Err(e)) => Err(ConnectError::Setup(e.to_string())),
        Err(_) => Err(ConnectError::Setup(format!(
            "{what}: no answer from the Kubernetes API within {}s",
            KUBE_STEP_TIMEOUT.as_secs()
        ))),
    }
}

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

type Established = (
    Connection,
    ClientSession,
    quinn::SendStream,
    quinn::RecvStream,
    SocketAddr,
    String,
);

/// [`crate::transport::client_config`] for a session: QUIC idle timeout `survive_blackout`
/// and the congestion controller behind `gate`
/// ([`netmux_common::tunnel::blackout`]).
fn session_client_config(
    ca_pem: &str,
    survive_blackout: Duration,
    gate: &netmux_common::tunnel::blackout::ProbeGate,
) -> Result<quinn::ClientConfig, ConnectError> {
    let mut t =
        quic::transport_config_with(gate.wrap(Arc::new(quic::congestion::BbrConfig::default())));
    netmux_common::tunnel::blackout::set_idle_timeout(&mut t, survive_blackout);
    Ok(crate::transport::client_config_with(ca_pem, t)?)
}

/// How long a QUIC handshake with the server may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `auto` waits for the server over UDP before it tries the
/// port-forward.
const AUTO_DIRECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Dials the server and completes the hello; returns once the catalog
/// snapshot is in, and whether the connection runs over the endpoint's UDP
/// socket.
async fn connect(
    config: &EndpointConfig,
    kube: Option<&KubeLink>,
    quic_endpoint: &mut Option<(quinn::Endpoint, bool)>,
    gate: &netmux_common::tunnel::blackout::ProbeGate,
) -> Result<(Established, bool), ConnectError> {
    let ca_pem = match (&config.ca_pem, kube) {
        (Some(pem), _) => pem.clone(),
        (None, Some(k)) => kube_step("reading the server's CA", k.ca_pem()).await?,
        (None, None) => return Err(ConnectError::Setup("no CA for the server".into())),
    };
    let client = session_client_config(&ca_pem, config.survive_blackout, gate)?;
    let mut via_udp = false;
    let (conn, server) = match config.transport {
        Transport::Quic => {
            let server = resolve(config).await?;
            via_udp = true;
            let dial = dial_udp(client, server, &config.server_name, quic_endpoint);
            // The idle timeout (survive_blackout) also bounds a handshake:
            // an unanswered one must fail long before that.
            let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, dial)
                .await
                .map_err(|_| {
                    ConnectError::Quic(format!(
                        "no answer from {server} within {}s",
                        HANDSHAKE_TIMEOUT.as_secs()
                    ))
                })??;
            (conn, server)
        }
        Transport::Tcp => {
            let server = resolve(config).await?;
            let conn = crate::transport::dial_tcp(
                server,
                client,
                &config.server_name,
                config.survive_blackout,
            )
            .await?;
            (conn, server)
        }
        Transport::PortForward => port_forward(config, kube, client).await?,
        Transport::Auto => {
            let direct = async {
                let server = resolve(config).await?;
                let conn =
                    dial_udp(client.clone(), server, &config.server_name, quic_endpoint).await?;
                Ok::<_, ConnectError>((conn, server))
            };
            match tokio::time::timeout(AUTO_DIRECT_TIMEOUT, direct).await {
                Ok(Ok(c)) => {
                    via_udp = true;
                    c
                }
                Ok(Err(e)) => {
                    tracing::info!(endpoint = %config.name, error = %e, "direct QUIC failed; trying the port-forward");
                    port_forward(config, kube, client).await?
                }
                Err(_) => {
                    tracing::info!(endpoint = %config.name, "no answer over UDP within {AUTO_DIRECT_TIMEOUT:?}; trying the port-forward");
                    port_forward(config, kube, client).await?
                }
            }
        }
    };
    // The configured token wins (a bot's endpoint); a Kubernetes
    // endpoint presents the user's (`--token-file`, else the kubeconfig's).
    let token = config
        .token
        .as_ref()
        .map(|t| t.0.clone())
        .or_else(|| kube.and_then(|k| k.bearer().map(str::to_owned)));
    Ok((hello(conn, server, token).await?, via_udp))
}

/// The first address of `server`.
async fn resolve(config: &EndpointConfig) -> Result<SocketAddr, ConnectError> {
    let Some(name) = &config.server else {
        return Err(ConnectError::Setup(
            "no server address configured (needed for quic and tcp)".into(),
        ));
    };
    tokio::net::lookup_host(name)
        .await
        .map_err(|e| ConnectError::Resolve(name.clone(), e.to_string()))?
        .next()
        .ok_or_else(|| ConnectError::Resolve(name.clone(), "no address".into()))
}

/// QUIC over a port-forward to a ready server pod.
async fn port_forward(
    config: &EndpointConfig,
    kube: Option<&KubeLink>,
    client: quinn::ClientConfig,
) -> Result<(Connection, SocketAddr), ConnectError> {
    let Some(kube) = kube else {
        return Err(ConnectError::Setup(
            "port-forward needs the user's kubeconfig: run `netmux connect` as that user".into(),
        ));
    };
    let forward = kube_step("opening the port-forward", kube.open()).await?;
    tracing::info!(endpoint = %config.name, pod = %forward.pod, "port-forward open");
    let peer = forward.peer;
    let conn = crate::transport::dial_forward(forward, client, &config.server_name).await?;
    Ok((conn, peer))
}

/// Completes the hello on a fresh connection; returns once the catalog
/// snapshot is in.
async fn hello(
    conn: Connection,
    server: SocketAddr,
    token: Option<String>,
) -> Result<Established, ConnectError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| ConnectError::Quic(e.to_string()))?;
    let credential = match token {
        Some(t) => Credential::Bearer(t),
        None => Credential::None,
    };
    let mut session = ClientSession::new(&Hello::new(client_name(), credential));
    session.expect_sync_within(std::time::Instant::now(), SYNC_TIMEOUT);
    flush(&mut session, &mut send).await?;
    let mut greeting = String::new();
    let handshake = async {
        loop {
            while let Some(ev) = session.poll_event() {
                if let ClientEvent::Accepted { message } = ev {
                    greeting = message;
                }
            }
            if session.is_synced() {
                return Ok(());
            }
            // The session's own deadline bounds the wait (the sans-IO
            // core keeps the clock; this loop only sleeps until it).
            let read = recv.read_chunk(64 * 1024, true);
            let chunk = match session.poll_timeout() {
                Some(deadline) => tokio::select! {
                    r = read => r,
                    () = tokio::time::sleep_until(deadline.into()) => {
                        session.handle_timeout(std::time::Instant::now())?;
                        continue;
                    }
                },
                None => read.await,
            };
            match chunk {
                Ok(Some(c)) => session.handle_input(&c.bytes)?,
                Ok(None) => {
                    return Err(ConnectError::Quic(
                        "server closed the control stream".into(),
                    ))
                }
                Err(e) => {
                    // A refusal arrives as a close with a reason: surface it.
                    return Err(ConnectError::Quic(close_reason(&conn, e)));
                }
            }
        }
    };
    match handshake.await {
        Ok(()) => Ok((conn, session, send, recv, server, greeting)),
        Err(ConnectError::Session(e @ SessionError::SyncTimeout(_))) => {
            conn.close(VarInt::from_u32(e.close_code()), b"hello timeout");
            Err(ConnectError::Session(e))
        }
        Err(e) => {
            conn.close(VarInt::from_u32(error_code::NO_ERROR), b"");
            Err(e)
        }
    }
}

fn close_reason(conn: &Connection, e: quinn::ReadError) -> String {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => {
            String::from_utf8_lossy(&c.reason).into_owned()
        }
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

fn client_name() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "netmuxd".into());
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

async fn flush(
    session: &mut ClientSession,
    send: &mut quinn::SendStream,
) -> Result<(), ConnectError> {
    while let Some(bytes) = session.poll_transmit() {
        send.write_all(&bytes)
            .await
            .map_err(|e| ConnectError::Quic(e.to_string()))?;
    }
    Ok(())
}

/// Sends every pending claim not already awaiting an answer.
fn send_pending(
    session: &mut ClientSession,
    claims: &Claims,
    in_flight: &mut std::collections::HashMap<u32, String>,
) {
    for (name, claim) in claims.lock().iter() {
        if claim.state != ClaimState::Pending || in_flight.values().any(|n| n == name) {
            continue;
        }
        let request = match &claim.kind {
            ClaimKind::Catalog(key) => session.claim(key),
            ClaimKind::Adhoc { name, port } => match claim
                .targets
                .get(*port, netmux_common::proto::catalog::Protocol::Tcp)
            {
                Some(local) => session.expose(name, *port, local.port()),
                None => continue,
            },
            ClaimKind::Intercept {
                service,
                port,
                header,
                mirror,
            } => session.intercept(service, *port, header.clone(), *mirror),
        };
        in_flight.insert(request, name.clone());
    }
}

/// First wait before a refused claim is asked again; doubles up to
/// [`CLAIM_RETRY_MAX`].
pub(crate) const CLAIM_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait between two tries of a refused claim.
pub(crate) const CLAIM_RETRY_MAX: Duration = Duration::from_secs(30);

/// When refused claims are tried again on this connection.
struct ClaimRetry {
    at: Option<tokio::time::Instant>,
    next_wait: Duration,
}

impl Default for ClaimRetry {
    fn default() -> Self {
        ClaimRetry {
            at: None,
            next_wait: CLAIM_RETRY_MIN,
        }
    }
}

impl ClaimRetry {
    /// A refusal arrived: try again after the current backoff (once).
    fn schedule(&mut self) {
        if self.at.is_none() {
            self.at = Some(tokio::time::Instant::now() + self.next_wait);
            self.next_wait = (self.next_wait * 2).min(CLAIM_RETRY_MAX);
        }
    }

    /// Resolves when a retry is due (never while none is scheduled).
    async fn due(&mut self) {
        match self.at {
            Some(at) => {
                tokio::time::sleep_until(at).await;
                self.at = None;
            }
            None => std::future::pending().await,
        }
    }
}

/// Applies catalog updates until the connection ends; returns why.
async fn follow(
    conn: &Connection,
    mut session: ClientSession,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    catalog_tx: &watch::Sender<Arc<Indexed>>,
    claims: &Claims,
    commands: &mut tokio::sync::mpsc::UnboundedReceiver<Command>,
) -> String {
    let mut in_flight: std::collections::HashMap<u32, String> = std::collections::HashMap::new();
    send_pending(&mut session, claims, &mut in_flight);
    if flush(&mut session, &mut send).await.is_err() {
        return "control stream closed".into();
    }
    // Refused claims are asked again with backoff: the holder may leave,
    // or its replica may stop (a rolling update frees its Leases).
    let mut retry = ClaimRetry::default();
    loop {
        let chunk: Result<Option<Bytes>, String> = tokio::select! {
            () = retry.due() => {
                for c in claims.lock().values_mut() {
                    if matches!(c.state, ClaimState::Refused(_)) {
                        c.state = ClaimState::Pending;
                    }
                }
                send_pending(&mut session, claims, &mut in_flight);
                if flush(&mut session, &mut send).await.is_err() {
                    return "control stream closed".into();
                }
                continue;
            }
            Some(cmd) = commands.recv() => {
                match cmd {
                    Command::Sync => send_pending(&mut session, claims, &mut in_flight),
                    Command::Release(ClaimKind::Catalog(key)) => session.release(&key),
                    Command::Release(ClaimKind::Adhoc { name, .. }) => session.release(&name),
                    Command::Release(ClaimKind::Intercept { service, port, .. }) => {
                        session.leave(&service, port)
                    }
                }
                if flush(&mut session, &mut send).await.is_err() {
                    return "control stream closed".into();
                }
                continue;
            }
            c = recv.read_chunk(64 * 1024, true) => match c {
                Ok(Some(c)) => Ok(Some(c.bytes)),
                Ok(None) => Ok(None),
                Err(e) => Err(close_reason(conn, e)),
            },
            e = conn.closed() => Err(e.to_string()),
        };
        let bytes = match chunk {
            Ok(Some(b)) => b,
            Ok(None) => return "server closed the control stream".into(),
            Err(e) => return e,
        };
        if let Err(e) = session.handle_input(&bytes) {
            conn.close(VarInt::from_u32(e.close_code()), e.to_string().as_bytes());
            return e.to_string();
        }
        let mut changed = false;
        while let Some(ev) = session.poll_event() {
            changed |= matches!(ev, ClientEvent::CatalogReplaced | ClientEvent::Changed(_));
            if let ClientEvent::Intercepts(reports) = &ev {
                claims.report(reports);
            }
            if let ClientEvent::ClaimResult { request, error } = ev {
                if let Some(name) = in_flight.remove(&request) {
                    if let Some(c) = claims.lock().get_mut(&name) {
                        c.state = match error {
                            None => ClaimState::Held,
                            Some(e) => {
                                retry.schedule();
                                ClaimState::Refused(e)
                            }
                        };
                    }
                }
                changed = true;
            }
        }
        if changed {
            catalog_tx.send_replace(Arc::new(Indexed::from(session.catalog().clone())));
        }
        if flush(&mut session, &mut send).await.is_err() {
            return "control stream closed".into();
        }
    }
}
