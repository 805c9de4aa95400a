//! The client side of netmux's TLS: TLS 1.3 only, netmux's ALPN, the
//! server's CA as the only root. What the daemon dials with, and what
//! tests and probes that speak to a server directly use too.

use std::sync::Arc;

use crate::proto::ALPN;

/// A QUIC client configuration trusting only `roots`, with `transport`.
pub fn client_config(
    roots: rustls::RootCertStore,
    transport: quinn::TransportConfig,
) -> Result<quinn::ClientConfig, String> {
    let mut tls = rustls::ClientConfig::builder_with_provider(super::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport));
    Ok(client)
}
