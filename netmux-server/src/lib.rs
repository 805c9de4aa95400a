//! netmux-server: the cluster side of netmux.
//!
//! A [`runtime`] discovers services and feeds the [`catalog`]; the
//! [`transport`] accepts QUIC connections from daemons; each becomes a
//! [`connection`] that authenticates the daemon ([`access`]), pushes the
//! catalog, and proxies its streams to catalog addresses only ([`dial`]).
//! [`http`] serves health and Prometheus [`metrics`].

pub mod access;
pub mod admission;
pub mod ca;
pub mod catalog;
pub mod config;
pub(crate) mod connection;
pub(crate) mod dial;
pub(crate) mod http;
pub mod intercept;
pub mod metrics;
pub(crate) mod policy;
pub(crate) mod retention;
pub mod reverse;
pub mod runtime;
pub(crate) mod stream;
pub mod transport;
pub(crate) mod udp;

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

/// Everything a connection handler needs, shared by all connections.
pub struct Server {
    /// Validated configuration.
    pub config: config::Config,
    /// Catalog updates from the runtime.
    pub catalog: watch::Receiver<Arc<netmux_common::proto::catalog::Catalog>>,
    /// Who may connect.
    pub access: access::Access,
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// Reverse service claims.
    pub reverse: reverse::Claims,
    /// Intercepted Services (docs/intercept.md).
    pub intercepts: intercept::Intercepts,
    /// Source of daemon session ids.
    pub sessions: std::sync::atomic::AtomicU64,
    /// The endpoint's stream peers (`stream_listen`): a session holds its
    /// own open through a blackout.
    pub stream_peers: transport::StreamPeers,
}

/// Runs the server until `shutdown` resolves.
pub async fn run(
    config: config::Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let identity = ca::ServerIdentity::load_or_create(&config.state_dir, &config.server_names)
        .context("setting up the server's CA and certificate")?;
    let metrics = metrics::Metrics::new();
    let (store, catalog_rx) = catalog::CatalogStore::new(metrics.clone());
    let own = policy::TargetPolicy::own_addresses(
        [Some(config.listen), config.stream_listen, config.http]
            .into_iter()
            .flatten()
            .map(|a| a.ip()),
    );
    let runtime = runtime::start(&config.runtime, own, store.clone())
        .await
        .context("starting the service runtime")?;
    let (endpoint, streams) = transport::server_endpoint(
        config.listen,
        config.stream_listen,
        &identity,
        &config.limits,
        &metrics,
    )
    .with_context(|| format!("binding QUIC endpoint on {}", config.listen))?;
    tracing::info!(listen = %config.listen, "QUIC endpoint ready");
    let (claim_lock, own_namespace, intercept_cluster) =
        claim_lock(&config.runtime, config.intercept_ttl).await?;
    // Replicas reach each other here for intercepts of one Service by
    // users of several replicas (docs/intercept.md).
    let peers = match intercept_cluster.as_ref().and_then(|c| c.pod_ip().ok()) {
        Some(ip) => match intercept::peer::Peers::bind(ip, config.replica_port, &identity) {
            Ok(p) => {
                tracing::info!(addr = %p.addr(), "replica endpoint ready (mutual TLS from the server CA)");
                Some(Arc::new(p))
            }
            // A port the operator fixed (and a NetworkPolicy admits) that
            // cannot be bound is a misconfiguration: say so and stop.
            Err(e) if config.replica_port != 0 => anyhow::bail!(e),
            Err(e) => {
                tracing::warn!(error = %e, "no replica endpoint: intercepts of a Service another replica routes are refused");
                None
            }
        },
        None => None,
    };
    let adhoc_namespace = config.adhoc_namespace.clone().or(own_namespace);
    match &adhoc_namespace {
        Some(ns) => {
            tracing::info!(namespace = %ns, "netmux expose publishes in this namespace (adhoc_namespace, default: the server's own)")
        }
        None => tracing::info!("netmux expose is off: set adhoc_namespace"),
    }
    let stream_options = netmux_common::tunnel::stream::Options {
        half_close_timeout: config.half_close_timeout,
    };
    let server = Arc::new(Server {
        intercepts: intercept::Intercepts::new(
            intercept_cluster,
            peers,
            metrics.clone(),
            stream_options,
            config.intercept_ttl,
        ),
        access: access::Access::from_config(&config, &store),
        reverse: reverse::Claims::with_lock(
            store,
            metrics.clone(),
            config.reverse_bind,
            adhoc_namespace,
            claim_lock,
        )
        .with_stream_options(stream_options)
        .with_expose_ports(config.expose_ports.clone(), config.own_ports()),
        sessions: std::sync::atomic::AtomicU64::new(1),
        stream_peers: streams
            .as_ref()
            .map(transport::StreamAcceptor::peers)
            .unwrap_or_default(),
        config,
        catalog: catalog_rx,
        metrics,
    });
    let http = match server.config.http {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding HTTP on {addr}"))?;
            tracing::info!(%addr, "health and metrics on http://{addr}/");
            Some(tokio::spawn(http::serve(listener, server.clone())))
        }
        None => None,
    };
    tokio::select! {
        () = transport::accept_loop(
            endpoint.clone(),
            server.clone(),
            admission::Admission::new(server.config.limits.caps()),
        ) => {}
        () = shutdown => tracing::info!("shutting down"),
    }
    drain(&server, &endpoint).await;
    if let Some(h) = http {
        h.abort();
    }
    drop(runtime);
    endpoint.wait_idle().await;
    Ok(())
}

/// How long a stopping server waits for its claims' Leases and
/// EndpointSlices to be deleted.
pub(crate) const DRAIN_RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Stops serving: gives up every reverse claim (its Leases and
/// EndpointSlices are deleted, so another replica can take them at once),
/// then closes every daemon's connection with a reason that tells it to
/// reconnect (to another replica behind the same Service).
pub async fn drain(server: &Server, endpoint: &quinn::Endpoint) {
    tokio::join!(
        server.reverse.release_everything(DRAIN_RELEASE_TIMEOUT),
        server.intercepts.release_everything(DRAIN_RELEASE_TIMEOUT),
    );
    endpoint.close(
        quinn::VarInt::from_u32(netmux_common::proto::error_code::NO_ERROR),
        SHUTDOWN_REASON.as_bytes(),
    );
}

/// The close reason daemons see when a server stops.
pub const SHUTDOWN_REASON: &str = "server shutting down; reconnect";

/// The reverse claims' coordination, the server's own namespace and the
/// intercepts' cluster side, from the runtime.
type Coordination = (
    Arc<dyn reverse::ClaimLock>,
    Option<String>,
    Option<Arc<intercept::cluster::Cluster>>,
);

/// Where reverse claims are coordinated: Leases with the Kubernetes
/// runtime (replicas share nothing else), this process otherwise; with
/// the server's own namespace when it has one. Intercepts exist only with
/// the Kubernetes runtime.
async fn claim_lock(
    runtime: &config::RuntimeConfig,
    intercept_ttl: std::time::Duration,
) -> anyhow::Result<Coordination> {
    Ok(match runtime {
        config::RuntimeConfig::Kubernetes { .. } => {
            let client = kube::Client::try_default()
                .await
                .context("building a Kubernetes client for reverse-claim Leases")?;
            let options = reverse::lease::LeaseOptions::from_env(&client);
            tracing::info!(replica = %options.replica, namespace = %options.namespace, pod_ip = ?options.pod_ip, "reverse claims coordinated by Leases");
            let namespace = options.namespace.clone();
            let intercepts = Arc::new(intercept::cluster::Cluster::new(
                client.clone(),
                &options,
                intercept_ttl,
            ));
            (
                Arc::new(reverse::lease::LeaseLock::new(client, options)),
                Some(namespace),
                Some(intercepts),
            )
        }
        _ => (Arc::new(reverse::MemoryLock::default()), None, None),
    })
}
