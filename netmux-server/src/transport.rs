//! The QUIC endpoint daemons connect to: UDP, and optionally a TCP port
//! whose connections carry the same QUIC as length-prefixed datagrams
//! (`kubectl port-forward` from a daemon), fed into the same endpoint by a
//! [`CompositeSocket`].
//!
//! Hostile peers are bounded here (`[limits]`, SECURITY.md): QUIC
//! connections by [`crate::admission`] (total, per source, pending hello),
//! with the windows nearly closed until the hello succeeded
//! ([`quic::server_transport_config`]); TCP stream peers by
//! [`MAX_STREAM_PEERS`], a per-source cap, a preamble deadline and an idle
//! timeout. An authenticated daemon's session holds its stream open
//! ([`StreamPeers::hold`]): through a blackout the stream is as silent as
//! the session, which ends at `survive_blackout` as over UDP.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use netmux_common::proto::ALPN;
use netmux_common::tunnel::quic;
use netmux_common::tunnel::stream_socket::{CompositeSocket, StreamDeadlines, StreamHold};

use crate::admission::Admission;
use crate::ca::ServerIdentity;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::Server;

/// Why the endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// TLS configuration rejected.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Socket problem.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Stream peers served at once; further TCP connections are closed.
pub(crate) const MAX_STREAM_PEERS: usize = 4096;

/// Accepts datagram streams on the TCP listener while alive; dropping it
/// stops accepting (established streams end with the endpoint).
#[derive(Debug)]
pub struct StreamAcceptor {
    task: tokio::task::AbortHandle,
    addr: SocketAddr,
    peers: StreamPeers,
}

impl StreamAcceptor {
    /// Where the TCP listener is bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint's stream peers, for sessions to hold theirs.
    pub fn peers(&self) -> StreamPeers {
        self.peers.clone()
    }
}

/// The stream peers of a server endpoint (none without `stream_listen`).
/// Does not keep the endpoint's socket alive.
#[derive(Debug, Clone, Default)]
pub struct StreamPeers(Option<Weak<CompositeSocket>>);

impl StreamPeers {
    /// Keeps the stream under QUIC peer `remote` open however long it is
    /// silent, while the hold lives; `None` for a daemon over UDP.
    pub fn hold(&self, remote: SocketAddr) -> Option<StreamHold> {
        self.0.as_ref()?.upgrade()?.hold(&remote)
    }
}

impl Drop for StreamAcceptor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds the QUIC endpoint with the server's certificate, on UDP `listen`
/// and, if given, TCP `stream_listen` (its peers bounded by `limits`,
/// refusals counted in `metrics`).
pub fn server_endpoint(
    listen: SocketAddr,
    stream_listen: Option<SocketAddr>,
    identity: &ServerIdentity,
    limits: &Limits,
    metrics: &Metrics,
) -> Result<(quinn::Endpoint, Option<StreamAcceptor>), TransportError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(quic::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quic::server_transport_config();
    // A silent daemon's session is kept for `survive_blackout`: the idle
    // timeout both ends negotiate is the smaller of theirs.
    netmux_common::tunnel::blackout::set_idle_timeout(&mut transport, limits.survive_blackout);
    config.transport_config(Arc::new(transport));
    config.migration(true);
    // Handshakes the endpoint keeps before `accept` sees them.
    config.max_incoming(limits.max_pending_hello);
    let socket = quic::bind_udp(listen)?;
    let Some(stream_listen) = stream_listen else {
        let endpoint = quic::endpoint(Some(config), socket)?;
        return Ok((endpoint, None));
    };
    let composite = CompositeSocket::new(socket)?;
    let listener = std::net::TcpListener::bind(stream_listen)?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(config),
        composite.clone(),
        Arc::new(quinn::TokioRuntime),
    )?;
    tracing::info!(%stream_listen, "QUIC over TCP streams accepted");
    let peers = StreamPeerLimits {
        survive_blackout: limits.survive_blackout,
        per_source: limits.max_connections_per_source,
        deadlines: StreamDeadlines {
            preamble: limits.stream_preamble_timeout,
            idle: limits.stream_idle_timeout,
        },
    };
    let addr = listener.local_addr()?;
    let held = StreamPeers(Some(Arc::downgrade(&composite)));
    let task = tokio::spawn(accept_streams(listener, composite, peers, metrics.clone()));
    Ok((
        endpoint,
        Some(StreamAcceptor {
            task: task.abort_handle(),
            addr,
            peers: held,
        }),
    ))
}

/// How TCP stream peers are bounded.
#[derive(Debug, Clone, Copy)]
struct StreamPeerLimits {
    /// The TCP connection retransmits this long in a blackout.
    survive_blackout: std::time::Duration,
    per_source: usize,
    deadlines: StreamDeadlines,
}

/// Feeds each accepted TCP connection into the endpoint as a peer.
async fn accept_streams(
    listener: tokio::net::TcpListener,
    composite: Arc<CompositeSocket>,
    limits: StreamPeerLimits,
    metrics: Metrics,
) {
    loop {
        let (stream, tcp_peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accepting a datagram stream");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if composite.stream_peers() >= MAX_STREAM_PEERS {
            tracing::warn!(%tcp_peer, max = MAX_STREAM_PEERS, "too many datagram streams; closed");
            metrics
                .peers_refused
                .with_label_values(&["stream_max_peers"])
                .inc();
            continue;
        }
        if composite.stream_peers_from(tcp_peer.ip()) >= limits.per_source {
            tracing::warn!(%tcp_peer, max = limits.per_source, "too many datagram streams from this address (limits.max_connections_per_source); closed");
            metrics
                .peers_refused
                .with_label_values(&["stream_per_source"])
                .inc();
            continue;
        }
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%tcp_peer, error = %e, "TCP_NODELAY");
        }
        netmux_common::tunnel::stream_socket::keep_through_blackout(
            &stream,
            limits.survive_blackout,
        );
        let (peer, _task) =
            composite.add_stream_from(stream, tcp_peer.ip(), Some(limits.deadlines));
        tracing::info!(%tcp_peer, quic_peer = %peer, "datagram stream accepted");
    }
}

/// Accepts daemons until the endpoint closes, within the caps of
/// `admission`; each runs independently, so a misbehaving one affects only
/// itself.
pub async fn accept_loop(
    endpoint: quinn::Endpoint,
    server: Arc<Server>,
    admission: Arc<Admission>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        if !incoming.remote_address_validated() && admission.under_pressure() {
            // A spoofed source cannot answer a Retry: under load, places
            // go only to peers that prove their address.
            server.metrics.address_validations.inc();
            if let Err(e) = incoming.retry() {
                tracing::debug!(%remote, error = %e, "retry not sent");
            }
            continue;
        }
        let ticket = match admission.admit(remote.ip()) {
            Ok(t) => t,
            Err(refusal) => {
                tracing::debug!(%remote, reason = refusal.label(), "connection refused");
                server
                    .metrics
                    .peers_refused
                    .with_label_values(&[refusal.label()])
                    .inc();
                incoming.refuse();
                continue;
            }
        };
        let server = server.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => crate::connection::serve(conn, server, ticket).await,
                Err(e) => tracing::debug!(%remote, error = %e, "handshake failed"),
            }
        });
    }
}
