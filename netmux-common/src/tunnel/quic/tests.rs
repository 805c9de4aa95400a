//! The transport as netmux runs it: one tokio worker per process (issue
//! 17) and the vendored quinn's deferred transmit (vendor/quinn).

use std::sync::Arc;

use quinn::{Connection, Endpoint};

/// A QUIC connection over loopback, both ends on netmux's endpoint socket
/// ([`super::endpoint`]); the endpoints must outlive it.
pub(crate) async fn test_pair() -> (Endpoint, Endpoint, Connection, Connection) {
    test_pair_with(None).await
}

/// [`test_pair`] with `transport` at both ends (quinn's defaults if `None`).
async fn test_pair_with(
    transport: Option<Arc<quinn::TransportConfig>>,
) -> (Endpoint, Endpoint, Connection, Connection) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let mut server_config =
        quinn::ServerConfig::with_single_cert(vec![cert.clone()], key).expect("server config");
    let loopback = || std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let mut client_config =
        quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config");
    if let Some(t) = transport {
        server_config.transport_config(t.clone());
        client_config.transport_config(t);
    }
    let server = super::endpoint(Some(server_config), loopback()).expect("server endpoint");
    let mut client = super::endpoint(None, loopback()).expect("client endpoint");
    client.set_default_client_config(client_config);
    let addr = server.local_addr().expect("addr");
    let (conn, peer) = tokio::join!(
        async {
            client
                .connect(addr, "localhost")
                .expect("connect")
                .await
                .expect("handshake")
        },
        async {
            let incoming = server.accept().await.expect("incoming");
            incoming.await.expect("server handshake")
        }
    );
    (client, server, conn, peer)
}

/// Sixteen streams that become ready together (a burst of requests from
/// sixteen clients, here released by a barrier) on one worker: the
/// connection driver, woken by the first write, yields once, so the other
/// fifteen write before it transmits and all of them leave in a packet or
/// two. Without the yield, tokio's LIFO slot runs the driver right after
/// each write: one packet per stream (23 datagrams in all, measured).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn writes_made_ready_together_leave_in_few_packets() {
    const N: usize = 16;
    let (_client, _server, conn, peer) = test_pair().await;
    let mut sends = Vec::new();
    for _ in 0..N {
        let (mut s, _) = conn.open_bi().await.expect("open");
        s.write_all(b"o").await.expect("write");
        sends.push(s);
    }
    let mut recvs = Vec::new();
    for _ in 0..N {
        let (_, mut r) = peer.accept_bi().await.expect("accept");
        let mut b = [0u8; 1];
        r.read_exact(&mut b).await.expect("first byte");
        recvs.push(r);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let before = conn.stats().udp_tx.datagrams;
    let tasks: Vec<_> = sends
        .into_iter()
        .map(|mut s| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                s.write_all(&[7u8; 100]).await.expect("burst write");
                s
            })
        })
        .collect();
    let mut kept = Vec::new();
    for t in tasks {
        kept.push(t.await.expect("writer"));
    }
    for r in &mut recvs {
        let mut b = [0u8; 100];
        r.read_exact(&mut b).await.expect("burst read");
        assert_eq!(b, [7u8; 100]);
    }
    let sent = conn.stats().udp_tx.datagrams - before;
    // Batched: one packet for the burst, plus ACK-only packets for what the
    // peer sent meanwhile (flow-control updates), which depend on timing;
    // unbatched: one packet per write (16) and more.
    assert!(
        sent < N as u64 / 2,
        "{sent} datagrams carried {N} writes made ready together (expected them batched)"
    );
}

/// On a path that carries jumbo frames (loopback here: MTU 65,536) MTU
/// discovery climbs to [`super::MAX_UDP_PAYLOAD`] with netmux's settings,
/// and bulk data crosses in packets that large, in GSO batches within the
/// kernel's limit (vendored quinn, `gso_batch`). With quinn's default
/// endpoint configuration discovery stops at 1,472.
#[tokio::test]
async fn a_jumbo_path_carries_jumbo_packets() {
    use std::time::Duration;
    let (_client, _server, conn, peer) =
        test_pair_with(Some(Arc::new(super::transport_config()))).await;

    const LEN: usize = 16 << 20;
    let data: Vec<u8> = (0..LEN).map(|i| (i % 253) as u8).collect();
    let send = async {
        let (mut s, _r) = conn.open_bi().await.expect("open");
        // A first write opens the stream at the peer; discovery runs
        // alongside the transfer.
        s.write_all(&data).await.expect("write");
        s.finish().expect("finish");
        s.stopped().await.expect("stopped");
    };
    let recv = async {
        let (_s, mut r) = peer.accept_bi().await.expect("accept");
        r.read_to_end(LEN).await.expect("read")
    };
    let (_, got) =
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(send, recv) })
            .await
            .expect("16 MiB did not cross loopback in 60 s");
    assert!(got == data, "the data arrived changed");

    let stats = conn.stats();
    assert_eq!(
        stats.path.current_mtu,
        super::MAX_UDP_PAYLOAD,
        "MTU discovery stopped below the jumbo payload"
    );
    assert_eq!(stats.path.black_holes_detected, 0);
    // 16 MiB in 1,452-byte packets would be 11,500 datagrams; in 8,952-byte
    // ones 1,900 (the first ones before discovery ends are smaller).
    assert!(
        stats.udp_tx.datagrams < 4_000,
        "{} datagrams for 16 MiB: not jumbo packets",
        stats.udp_tx.datagrams
    );
    assert_eq!(peer.stats().path.current_mtu, super::MAX_UDP_PAYLOAD);
}

#[test]
fn a_path_is_described_by_its_rtt_and_packet_size() {
    use std::time::Duration;
    assert_eq!(
        super::describe_path(Duration::from_micros(180), 1452),
        "RTT 0.2 ms, packets of 1452 bytes"
    );
    assert_eq!(
        super::describe_path(Duration::from_millis(21), super::MAX_UDP_PAYLOAD),
        "RTT 21.0 ms, packets of 8952 bytes (jumbo frames)"
    );
}
