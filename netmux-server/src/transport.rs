//! The QUIC endpoint daemons connect to.

use std::net::SocketAddr;
use std::sync::Arc;

use netmux_common::proto::ALPN;
use netmux_common::tunnel::quic;

use crate::ca::ServerIdentity;
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

/// Binds the QUIC endpoint with the server's certificate.
pub fn server_endpoint(
    listen: SocketAddr,
    identity: &ServerIdentity,
) -> Result<quinn::Endpoint, TransportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
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
    config.transport_config(Arc::new(quic::transport_config()));
    config.migration(true);
    let socket = quic::bind_udp(listen)?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok(endpoint)
}

/// Accepts daemons until the endpoint closes; each runs independently, so a
/// misbehaving one affects only itself.
pub async fn accept_loop(endpoint: quinn::Endpoint, server: Arc<Server>) {
    while let Some(incoming) = endpoint.accept().await {
        let server = server.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => crate::connection::serve(conn, server).await,
                Err(e) => tracing::debug!(%remote, error = %e, "handshake failed"),
            }
        });
    }
}
