//! netmux (issue 17): transmits on a path whose MTU is above Ethernet's.
//!
//! Loopback's MTU is 65,536, so MTU discovery with a jumbo upper bound
//! finds it; each GSO batch must then stay within the kernel's 64 KiB.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::PrivateKeyDer;

use crate::connection::gso_batch;
use crate::{
    ClientConfig, Endpoint, EndpointConfig, MtuDiscoveryConfig, TokioRuntime, TransportConfig,
};

/// A UDP payload that fits a 9,000-byte MTU with an IPv6 header.
const JUMBO: u16 = 8952;

#[test]
fn a_batch_stays_within_the_gso_limit() {
    assert_eq!(gso_batch(32, 1452), 32, "Ethernet: all segments");
    assert_eq!(gso_batch(32, JUMBO), 7, "7 x 8952 = 62,664 bytes");
    assert_eq!(
        gso_batch(32, 65_527),
        1,
        "one datagram as large as UDP allows"
    );
    assert_eq!(gso_batch(1, JUMBO), 1, "a socket without GSO");
    assert_eq!(gso_batch(0, 1452), 1, "never zero");
    for mtu in [1200u16, 1452, 1500, 2048, 4096, JUMBO, 16_000, 65_507] {
        let n = gso_batch(32, mtu);
        assert!(n * usize::from(mtu) <= 65_535 - 28, "{n} x {mtu}");
    }
}

#[tokio::test]
async fn bulk_data_crosses_a_jumbo_path_in_jumbo_packets() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let mut transport = TransportConfig::default();
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(JUMBO);
    transport.mtu_discovery_config(Some(mtu));
    let transport = Arc::new(transport);
    let key = PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut server_config =
        crate::ServerConfig::with_single_cert(vec![cert.cert.der().clone()], key).unwrap();
    server_config.transport_config(transport.clone());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let mut client_config = ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
    client_config.transport_config(transport);
    // The endpoint accepts datagrams that large (the default is 1,472).
    let mut endpoint_config = EndpointConfig::default();
    endpoint_config.max_udp_payload_size(JUMBO).unwrap();
    let mut endpoint = Endpoint::new(
        endpoint_config,
        Some(server_config),
        std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).unwrap(),
        Arc::new(TokioRuntime),
    )
    .unwrap();
    endpoint.set_default_client_config(client_config);

    let (client, server) = tokio::join!(
        endpoint
            .connect(endpoint.local_addr().unwrap(), "localhost")
            .unwrap(),
        async { endpoint.accept().await.unwrap().await }
    );
    let (client, server) = (client.unwrap(), server.unwrap());

    // Let MTU discovery finish before the bulk data, with a little traffic.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.stats().path.current_mtu != JUMBO {
        assert!(
            tokio::time::Instant::now() < deadline,
            "MTU discovery stopped at {}",
            client.stats().path.current_mtu
        );
        let _ = client.send_datagram(bytes::Bytes::from_static(b"probe"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    const LEN: usize = 8 << 20;
    let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    let expected = data.clone();
    let send = async {
        let mut s = client.open_uni().await.unwrap();
        s.write_all(&data).await.unwrap();
        s.finish().unwrap();
        s.stopped().await.unwrap();
    };
    let recv = async {
        let mut r = server.accept_uni().await.unwrap();
        r.read_to_end(LEN).await.unwrap()
    };
    let (_, got) =
        tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(send, recv) })
            .await
            .expect("8 MiB did not cross loopback in 30 s");
    assert!(got == expected, "the data arrived changed");

    let stats = client.stats();
    assert_eq!(stats.path.current_mtu, JUMBO, "the path stayed jumbo");
    assert_eq!(stats.path.black_holes_detected, 0);
    assert!(
        stats.udp_tx.datagrams < (LEN / 4096) as u64,
        "{} datagrams for 8 MiB: not jumbo packets",
        stats.udp_tx.datagrams
    );
    assert!(
        stats.udp_tx.ios < stats.udp_tx.datagrams,
        "{} sends for {} datagrams: no GSO batches",
        stats.udp_tx.ios,
        stats.udp_tx.datagrams
    );
}
