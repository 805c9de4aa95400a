//! The replica endpoint over loopback: only replicas of the same CA get
//! in, and a peer that breaks the protocol loses only its own connection.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use super::wire::{self, ToHolder, ToMember, WireMode};
use super::*;
use crate::intercept::Intercepts;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn identity(dir: &std::path::Path) -> ServerIdentity {
    ServerIdentity::load_or_create(dir, &["netmux-server".to_owned()]).expect("identity")
}

fn register(n: u64) -> bytes::Bytes {
    wire::to_bytes(&ToHolder::Register {
        version: wire::VERSION,
        registration: n,
        namespace: "apps".into(),
        service: "web".into(),
        port: 80,
        mode: WireMode::Global,
        client: "bob".into(),
        replica: "netmux-server-1".into(),
    })
    .expect("encodes")
}

/// Registers on a new stream of `conn`; the holder's answer.
async fn ask(conn: &Connection, n: u64) -> Result<ToMember, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&register(n))
        .await
        .map_err(|e| e.to_string())?;
    let mut reader = wire::Reader::new();
    first::<ToMember>(&mut recv, &mut reader)
        .await
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn only_replicas_of_the_ca_get_in_and_a_bad_frame_closes_only_its_peer() {
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tempdir"));
    let holder_id = identity(dirs[0].path());
    // Replicas share the CA (the netmux-ca Secret).
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(dirs[0].path().join(f), dirs[1].path().join(f)).expect("copy the CA");
    }
    let member_id = identity(dirs[1].path());
    let stranger_id = identity(dirs[2].path());

    let holder = Arc::new(Peers::bind(LOOPBACK, 0, &holder_id).expect("holder endpoint"));
    let addr = holder.addr();
    // No Kubernetes here: the holder answers every registration with a
    // refusal, which is enough to see the stream work.
    let _intercepts = Intercepts::new(
        None,
        Some(holder.clone()),
        crate::metrics::Metrics::new(),
        netmux_common::tunnel::stream::Options {
            half_close_timeout: None,
        },
        Duration::from_secs(6),
    );

    let good = Peers::bind(LOOPBACK, 0, &member_id).expect("member endpoint");
    let (conn, new) = good
        .connect(addr)
        .await
        .expect("a replica of the CA gets in");
    assert!(new);
    let answer = ask(&conn, 1).await.expect("an answer");
    assert!(
        matches!(&answer, ToMember::Refused { why } if why.contains("does not route Service apps/web")),
        "{answer:?}"
    );

    // Another CA's replica certificate: refused by the handshake.
    let stranger = Peers::bind(LOOPBACK, 0, &stranger_id).expect("stranger endpoint");
    assert!(stranger.connect(addr).await.is_err(), "another CA");

    // A client trusting the CA but with no client certificate (what a
    // daemon has): refused by the handshake.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(holder_id.ca_der.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls"),
    ));
    let mut anonymous = quinn::Endpoint::client((LOOPBACK, 0).into()).expect("client endpoint");
    anonymous.set_default_client_config(client);
    let refused = match anonymous.connect(addr, REPLICA_NAME) {
        Ok(c) => match tokio::time::timeout(Duration::from_secs(10), c).await {
            Ok(Ok(conn)) => {
                // TLS 1.3: the client may finish before the server checked
                // its (missing) certificate; nothing is served either way.
                ask(&conn, 9).await.is_err()
            }
            Ok(Err(_)) => true,
            Err(_) => false,
        },
        Err(_) => true,
    };
    assert!(refused, "no client certificate, no registration");

    // A peer replica sending a bad frame loses its connection...
    let bad_member = Peers::bind(LOOPBACK, 0, &member_id).expect("second member");
    let (bad, _) = bad_member.connect(addr).await.expect("connects");
    let (mut send, _recv) = bad.open_bi().await.expect("stream");
    send.write_all(&[0, 0, 0, 3, b'x', b'y', b'z'])
        .await
        .expect("written");
    let closed = tokio::time::timeout(Duration::from_secs(10), bad.closed())
        .await
        .expect("the bad peer's connection is closed");
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(error_code::PROTOCOL_VIOLATION)),
        "{closed:?}"
    );
    // ...and only it: the good peer still registers.
    assert!(conn.close_reason().is_none());
    let again = ask(&conn, 2).await.expect("still answered");
    assert!(matches!(again, ToMember::Refused { .. }), "{again:?}");
}

/// A port free a moment ago (the OS picked it for a socket now closed).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind((LOOPBACK, 0))
        .and_then(|s| s.local_addr())
        .expect("an ephemeral UDP port")
        .port()
}

#[tokio::test]
async fn replica_port_fixes_the_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_udp_port();
    let peers = Peers::bind(LOOPBACK, port, &identity(dir.path())).expect("binds the port asked");
    assert_eq!(peers.addr(), SocketAddr::new(LOOPBACK, port));
}

#[tokio::test]
async fn a_taken_replica_port_is_an_error_naming_the_key_and_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::UdpSocket::bind((LOOPBACK, 0)).expect("an ephemeral UDP port");
    let port = taken.local_addr().expect("its address").port();
    let err = match Peers::bind(LOOPBACK, port, &identity(dir.path())) {
        Ok(p) => panic!("bound {}, a port another socket holds", p.addr()),
        Err(e) => e,
    };
    assert!(
        err.contains(&format!("127.0.0.1:{port}"))
            && err.contains("replica_port")
            && err.contains("0 for an ephemeral one"),
        "{err}"
    );
}
