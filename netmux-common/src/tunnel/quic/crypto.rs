//! The TLS provider of every netmux QUIC endpoint: *ring*, TLS 1.3 suites
//! with AES-128-GCM first.
//!
//! rustls lists AES-256-GCM first, and its server follows the client's
//! order, so netmux negotiated AES-256-GCM. Both are AEADs of TLS 1.3
//! (AES-128-GCM is the suite every TLS 1.3 implementation must offer, and
//! what `ssh -L aes128-gcm` in the bench runs); AES-256 costs 14 rounds per
//! block against 10. On lan bulk the AEAD is the largest user-space cost at
//! both ends (BENCHMARKS.md, History 2026-12-03 21:00). A peer that prefers
//! AES-256-GCM still gets it: the server keeps following the client.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::CipherSuite;

/// Preference order of the TLS 1.3 suites netmux offers.
const PREFERRED: [CipherSuite; 3] = [
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// *ring*'s provider with the TLS 1.3 suites in netmux's order.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| PREFERRED.contains(&s.suite()));
    provider
        .cipher_suites
        .sort_by_key(|s| PREFERRED.iter().position(|p| *p == s.suite()));
    Arc::new(provider)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a TLS 1.3 handshake in memory and returns the suite both ends
    /// agreed on.
    fn negotiate(client: Arc<CryptoProvider>, server: Arc<CryptoProvider>) -> CipherSuite {
        let ck = rcgen::generate_simple_self_signed(vec!["netmux".into()]).expect("cert");
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der())
            .expect("key");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.clone()).expect("root");
        let server_config = rustls::ServerConfig::builder_with_provider(server)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server config");
        let client_config = rustls::ClientConfig::builder_with_provider(client)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut c = rustls::ClientConnection::new(
            Arc::new(client_config),
            "netmux".try_into().expect("name"),
        )
        .expect("client");
        let mut s = rustls::ServerConnection::new(Arc::new(server_config)).expect("server");
        for _ in 0..10 {
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
            let mut buf = Vec::new();
            c.write_tls(&mut buf).expect("client writes");
            s.read_tls(&mut buf.as_slice()).expect("server reads");
            s.process_new_packets().expect("server processes");
            let mut buf = Vec::new();
            s.write_tls(&mut buf).expect("server writes");
            c.read_tls(&mut buf.as_slice()).expect("client reads");
            c.process_new_packets().expect("client processes");
        }
        let suite = c.negotiated_cipher_suite().expect("handshake done").suite();
        assert_eq!(Some(suite), s.negotiated_cipher_suite().map(|s| s.suite()));
        suite
    }

    #[test]
    fn netmux_ends_agree_on_aes_128_gcm() {
        assert_eq!(
            negotiate(crypto_provider(), crypto_provider()),
            CipherSuite::TLS13_AES_128_GCM_SHA256
        );
    }

    #[test]
    fn a_peer_preferring_aes_256_still_gets_it() {
        let upstream = Arc::new(rustls::crypto::ring::default_provider());
        assert_eq!(
            negotiate(upstream, crypto_provider()),
            CipherSuite::TLS13_AES_256_GCM_SHA384
        );
    }

    #[test]
    fn only_tls13_suites_are_offered() {
        let suites: Vec<CipherSuite> = crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(suites, PREFERRED);
    }
}
