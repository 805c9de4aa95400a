//! UDP flows under a hostile peer (issue 14): originated flows are bounded
//! like answered ones, and an answered flow costs no 64 KiB buffer of its
//! own. A real QUIC connection over loopback; allocations counted by a
//! global allocator of this test binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use netmux_common::proto::catalog::ServiceId;
use netmux_common::proto::datagram::Datagram;
use netmux_common::tunnel::quic;
use netmux_common::tunnel::udp::{Drop, Flows, UdpMeter, Way};
use tokio::net::UdpSocket;

/// Bytes allocated and not yet freed, all threads.
static LIVE: AtomicI64 = AtomicI64::new(0);

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static A: Counting = Counting;

#[derive(Default)]
struct Meter {
    flow_limit: AtomicU64,
}

impl UdpMeter for Meter {
    fn datagram(&self, _: ServiceId, _: Way, _: usize) {}
    fn dropped(&self, _: Option<ServiceId>, why: Drop) {
        if why == Drop::FlowLimit {
            self.flow_limit.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn flows(&self, _: ServiceId, _: i64) {}
}

/// A connected (server side, client side) QUIC pair on loopback.
async fn pair() -> (quinn::Connection, quinn::Connection, Vec<quinn::Endpoint>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut server_config =
        quinn::ServerConfig::with_single_cert(vec![der.clone()], key).expect("server config");
    server_config.transport_config(Arc::new(quic::transport_config()));
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().expect("addr"))
        .expect("server");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");
    let mut client_config =
        quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config");
    client_config.transport_config(Arc::new(quic::transport_config()));
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    client.set_default_client_config(client_config);
    let addr = server.local_addr().expect("addr");
    let (s, c) = tokio::join!(
        async {
            server
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("accept")
        },
        async {
            client
                .connect(addr, "localhost")
                .expect("connect")
                .await
                .expect("connect")
        },
    );
    (s, c, vec![server, client])
}

fn open(flow: u32, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    Datagram::Open {
        flow,
        service: ServiceId(1),
        port: 53,
        payload,
    }
    .encode(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_flows_do_not_each_hold_a_64_kib_buffer() {
    const FLOWS: u32 = 200;
    let (server, client, _endpoints) = pair().await;
    // The target echoes every datagram back to its sender.
    let target = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("target"));
    let target_addr: SocketAddr = target.local_addr().expect("addr");
    let echo = tokio::spawn({
        let target = target.clone();
        async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = target.recv_from(&mut buf).await {
                let _ = target.send_to(&buf[..n], from).await;
            }
        }
    });
    let meter = Arc::new(Meter::default());
    let flows = Flows::new(1024, Duration::from_secs(600), meter.clone());
    // Warm up (first flow, first reply, runtime and quinn buffers).
    flows
        .receive(&server, &open(0, b"warm"), |_, _| Some(target_addr), |_| {})
        .await;
    tokio::time::timeout(Duration::from_secs(20), client.read_datagram())
        .await
        .expect("warm-up reply")
        .expect("datagram");
    let before = LIVE.load(Ordering::SeqCst);
    for flow in 1..=FLOWS {
        flows
            .receive(&server, &open(flow, b"x"), |_, _| Some(target_addr), |_| {})
            .await;
    }
    // Every flow's reader has run: each reply came back through it.
    let mut replies = Vec::new();
    for _ in 0..FLOWS {
        let d = tokio::time::timeout(Duration::from_secs(20), client.read_datagram())
            .await
            .expect("a reply per flow")
            .expect("datagram");
        replies.push(d);
    }
    let grown = LIVE.load(Ordering::SeqCst) - before;
    assert_eq!(flows.answered_len(), FLOWS as usize + 1);
    // The replies themselves are still held here; a 64 KiB buffer per flow
    // would be 12.5 MiB on its own.
    let per_flow = grown / i64::from(FLOWS);
    assert!(
        per_flow < 16 * 1024,
        "{grown} bytes for {FLOWS} answered flows ({per_flow} per flow)"
    );
    drop(replies);
    echo.abort();
}

#[tokio::test]
async fn originated_flows_are_bounded_and_the_refusal_counted() {
    let (_server, client, _endpoints) = pair().await;
    let meter = Arc::new(Meter::default());
    let flows = Flows::new(2, Duration::from_secs(600), meter.clone());
    let listener = Arc::new(
        netmux_common::tunnel::udp_socket::FlowSocket::bind("127.0.0.1:0".parse().unwrap())
            .expect("listener"),
    );
    let addr = listener.local_addr().expect("addr");
    let originate = tokio::spawn(flows.clone().originate(listener, 53, {
        let client = client.clone();
        move || Some((client.clone(), ServiceId(1)))
    }));
    let mut peers = Vec::new();
    for _ in 0..3 {
        let p = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
        p.send_to(b"hi", addr).await.expect("send");
        peers.push(p);
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        while meter.flow_limit.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the third peer's flow is refused");
    assert_eq!(flows.originated_len(), 2);
    // Known peers keep their flows.
    peers[0].send_to(b"again", addr).await.expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(meter.flow_limit.load(Ordering::SeqCst), 1);
    originate.abort();
}
