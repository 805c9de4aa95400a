//! The transport as netmux runs it: one tokio worker per process (issue
//! 17) and the vendored quinn's deferred transmit (vendor/quinn).

use std::sync::Arc;

use quinn::{Connection, Endpoint};

/// A QUIC connection over loopback, both ends on netmux's endpoint socket
/// ([`super::endpoint`]); the endpoints must outlive it.
pub(crate) async fn test_pair() -> (Endpoint, Endpoint, Connection, Connection) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let server_config =
        quinn::ServerConfig::with_single_cert(vec![cert.clone()], key).expect("server config");
    let loopback = || std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let server = super::endpoint(Some(server_config), loopback()).expect("server endpoint");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let mut client = super::endpoint(None, loopback()).expect("client endpoint");
    client.set_default_client_config(
        quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config"),
    );
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
