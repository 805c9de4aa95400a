//! Framing, sockets and the server's stream-peer deadlines.

use super::*;
use proptest::prelude::*;

fn encode_all(datagrams: &[Vec<u8>]) -> BytesMut {
    let mut enc = Encoder::default();
    let mut out = BytesMut::new();
    enc.preamble(&mut out);
    for d in datagrams {
        enc.encode(d, &mut out).expect("encodable");
    }
    out
}

fn decode_all(bytes: &[u8], chunk: usize) -> Result<Vec<Bytes>, FrameError> {
    let mut dec = Decoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for c in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(c);
        while let Some(d) = dec.decode(&mut buf)? {
            out.push(d);
        }
    }
    Ok(out)
}

#[test]
fn frame_layout() {
    let out = encode_all(&[b"ab".to_vec()]);
    assert_eq!(&out[..], b"NMXDGRM\x01\x00\x02ab");
}

#[test]
fn limits() {
    let mut enc = Encoder::default();
    let mut out = BytesMut::new();
    assert_eq!(enc.encode(&[], &mut out), Err(FrameError::Empty));
    assert_eq!(
        enc.encode(&vec![0; MAX_DATAGRAM + 1], &mut out),
        Err(FrameError::TooLong(MAX_DATAGRAM + 1))
    );
    assert!(out.is_empty(), "nothing written on error");
    let max = vec![7; MAX_DATAGRAM];
    enc.encode(&max, &mut out).expect("max fits");
    let got = decode_all(&out, 1000).expect("decodes");
    assert_eq!(got, vec![Bytes::from(max)]);
}

#[test]
fn garbage_is_an_error() {
    assert_eq!(
        decode_all(b"GET / HTTP/1.1\r\n", 3),
        Err(FrameError::NotNetmux)
    );
    // Recognised at the first wrong byte, not after 8.
    assert_eq!(decode_all(b"NMX!", 4), Err(FrameError::NotNetmux));
    assert_eq!(decode_all(b"NMXDGRM\x02", 8), Err(FrameError::Version(2)));
    assert_eq!(
        decode_all(b"NMXDGRM\x01\x00\x00", 8),
        Err(FrameError::Empty)
    );
    // Incomplete is not invalid.
    assert_eq!(decode_all(b"NMXDG", 1), Ok(vec![]));
    assert_eq!(decode_all(b"NMXDGRM\x01\x00\x05abc", 2), Ok(vec![]));
}

proptest! {
    #[test]
    fn roundtrip_any_split(
        datagrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..2000), 0..20),
        chunk in 1usize..5000,
    ) {
        let bytes = encode_all(&datagrams);
        let got = decode_all(&bytes, chunk).expect("valid stream");
        let want: Vec<Bytes> = datagrams.into_iter().map(Bytes::from).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..4000), chunk in 1usize..100) {
        let _ = decode_all(&bytes, chunk);
        let mut with_preamble = PREAMBLE.to_vec();
        with_preamble.extend_from_slice(&bytes);
        let _ = decode_all(&with_preamble, chunk);
    }
}

#[test]
fn gso_batches_split_into_frames() {
    let outbox = Outbox::default();
    let contents = [1u8; 25];
    let t = Transmit {
        destination: "127.0.0.1:1".parse().expect("addr"),
        ecn: None,
        contents: &contents,
        segment_size: Some(10),
        src_ip: None,
    };
    assert_eq!(outbox.push(&t), Push::Queued);
    let frames = lock(&outbox.state).frames.split();
    let got = decode_all(&frames, 7).expect("valid");
    let lens: Vec<usize> = got.iter().map(Bytes::len).collect();
    assert_eq!(lens, vec![10, 10, 5]);
}

#[test]
fn full_queue_pushes_back_then_closed_drops() {
    let outbox = Outbox::default();
    let contents = vec![0u8; 60_000];
    let t = Transmit {
        destination: "127.0.0.1:1".parse().expect("addr"),
        ecn: None,
        contents: &contents,
        segment_size: None,
        src_ip: None,
    };
    let mut queued = 0;
    while outbox.push(&t) == Push::Queued {
        queued += 1;
        assert!(queued < 100, "queue never fills");
    }
    assert!(lock(&outbox.state).frames.len() < SEND_QUEUE_BYTES + 60_010);
    outbox.close();
    assert_eq!(outbox.push(&t), Push::Closed);
}

/// Echoes one bidirectional stream back, then waits for the close.
async fn echo_once(conn: quinn::Connection) {
    let (mut send, mut recv) = conn.accept_bi().await.expect("stream");
    let data = recv.read_to_end(4 << 20).await.expect("read");
    send.write_all(&data).await.expect("echo");
    send.finish().expect("finish");
    conn.closed().await;
}

/// Sends 2 MB on a new stream and checks the echo.
async fn roundtrip(conn: &quinn::Connection) {
    let (mut send, mut recv) = conn.open_bi().await.expect("open");
    let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let writer = async {
        send.write_all(&payload).await.expect("write");
        send.finish().expect("finish");
    };
    let (_, echoed) = tokio::join!(writer, recv.read_to_end(4 << 20));
    assert!(echoed.expect("echo") == payload, "echo differs");
}

/// One server endpoint on a `CompositeSocket` serving a client over an
/// in-memory stream (the daemon's `StreamSocket`) and a client over
/// real UDP at the same time; the stream peer goes away with its stream.
#[tokio::test]
async fn quic_over_a_stream_and_udp_in_one_endpoint() {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let udp = super::super::quic::bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let composite = CompositeSocket::new(udp).expect("composite");
    let udp_addr = composite.local_addr().expect("local addr");
    let (peer, _task) = composite.add_stream(server_io);

    let cert = test_cert();
    let mut server_config =
        quinn::ServerConfig::with_single_cert(vec![cert.0.clone()], cert.1).expect("server config");
    server_config.transport_config(Arc::new(super::super::quic::transport_config()));
    let server = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        Some(server_config),
        composite.clone(),
        Arc::new(quinn::TokioRuntime),
    )
    .expect("server endpoint");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.0).expect("root");
    let client_config =
        quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config");

    let local: SocketAddr = "[::]:0".parse().expect("addr");
    let (socket, closed) = StreamSocket::new(client_io, local, peer);
    let mut stream_client = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .expect("stream client endpoint");
    stream_client.set_default_client_config(client_config.clone());
    let mut udp_client =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("udp client");
    udp_client.set_default_client_config(client_config);

    let acceptor = tokio::spawn(async move {
        let mut remotes = Vec::new();
        for _ in 0..2 {
            let conn = server
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("handshake");
            remotes.push(conn.remote_address());
            tokio::spawn(echo_once(conn));
        }
        (server, remotes)
    });
    let over_stream = stream_client
        .connect(peer, "localhost")
        .expect("connect")
        .await
        .expect("stream handshake");
    let over_udp = udp_client
        .connect(udp_addr, "localhost")
        .expect("connect")
        .await
        .expect("udp handshake");
    tokio::join!(roundtrip(&over_stream), roundtrip(&over_udp));
    let (_server, remotes) = acceptor.await.expect("acceptor");
    assert!(
        remotes.contains(&peer),
        "{remotes:?} lacks the stream peer {peer}"
    );
    assert_eq!(composite.stream_peers(), 1);

    // The client endpoint goes away: its socket closes the stream, the
    // server side forgets the peer.
    over_stream.close(0u32.into(), b"done");
    over_udp.close(0u32.into(), b"done");
    drop(over_stream);
    stream_client.wait_idle().await;
    drop(stream_client);
    // Err: the socket dropped with its stream, which also counts.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), closed)
        .await
        .expect("stream closed in time");
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while composite.stream_peers() != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("stream peer removed");
}

/// A server's stream peer that never sends the preamble, and one that
/// goes silent after it, are closed by their deadlines; each counts
/// under its source address until then.
#[tokio::test]
async fn silent_stream_peers_are_closed_by_their_deadlines() {
    let udp = super::super::quic::bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let composite = CompositeSocket::new(udp).expect("composite");
    let deadlines = StreamDeadlines {
        preamble: Duration::from_millis(300),
        idle: Duration::from_millis(500),
    };
    let source: IpAddr = "192.0.2.7".parse().expect("ip");
    let (mut mute, server_io) = tokio::io::duplex(4096);
    let (_, no_preamble) = composite.add_stream_from(server_io, source, Some(deadlines));
    let (mut quiet, server_io) = tokio::io::duplex(4096);
    quiet.write_all(&PREAMBLE).await.expect("preamble");
    let (_, went_silent) = composite.add_stream_from(server_io, source, Some(deadlines));
    assert_eq!(composite.stream_peers_from(source), 2);
    assert_eq!(
        composite.stream_peers_from("192.0.2.8".parse().expect("ip")),
        0
    );
    for (task, what) in [(no_preamble, "no preamble"), (went_silent, "silent")] {
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .unwrap_or_else(|_| panic!("{what} stream peer still open"))
            .expect("stream task");
    }
    assert_eq!(composite.stream_peers_from(source), 0);
    // Both ends see the server close: its preamble, then EOF.
    for peer in [&mut mute, &mut quiet] {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), peer.read_to_end(&mut got))
            .await
            .expect("closed")
            .expect("read");
        assert_eq!(got, PREAMBLE);
    }
}

/// A held stream peer (an authenticated session within survive_blackout)
/// stays open however long it is silent; once the hold is dropped, its
/// idle deadline closes it again. A UDP peer cannot be held.
#[tokio::test]
async fn a_held_stream_peer_outlives_its_idle_deadline_until_released() {
    let udp = super::super::quic::bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let composite = CompositeSocket::new(udp).expect("composite");
    let idle = Duration::from_millis(200);
    let deadlines = StreamDeadlines {
        preamble: Duration::from_millis(200),
        idle,
    };
    let source: IpAddr = "192.0.2.9".parse().expect("ip");
    let (mut daemon, server_io) = tokio::io::duplex(4096);
    let mut encoder = Encoder::default();
    let mut bytes = BytesMut::new();
    encoder.preamble(&mut bytes);
    daemon.write_all(&bytes).await.expect("preamble");
    let (peer, mut task) = composite.add_stream_from(server_io, source, Some(deadlines));
    let hold = composite.hold(&peer).expect("a stream peer can be held");
    assert!(
        composite
            .hold(&"127.0.0.1:9".parse().expect("addr"))
            .is_none(),
        "only stream peers are held"
    );
    // Ten idle deadlines of silence: still open.
    let silent = tokio::time::timeout(idle * 10, &mut task).await;
    assert!(silent.is_err(), "a held stream peer was closed for silence");
    assert_eq!(composite.stream_peers_from(source), 1);
    // A datagram after the silence is still read.
    bytes.clear();
    encoder.encode(b"still here", &mut bytes).expect("frame");
    daemon.write_all(&bytes).await.expect("datagram");
    drop(hold);
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("a released stream peer is closed by its idle deadline")
        .expect("stream task");
    assert_eq!(composite.stream_peers_from(source), 0);
}

/// The TCP connection under QUIC gives up only after survive_blackout
/// (plus the grace), not after the kernel's default retransmissions.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_stream_socket_keeps_retransmitting_for_the_bound() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let tcp = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let bound = Duration::from_secs(3600);
    keep_through_blackout(&tcp, bound);
    assert_eq!(
        socket2::SockRef::from(&tcp)
            .tcp_user_timeout()
            .expect("TCP_USER_TIMEOUT"),
        Some(bound + super::super::blackout::IDLE_GRACE)
    );
}

/// A self-signed certificate for `localhost`.
fn test_cert() -> (
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    (
        cert.cert.der().clone(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
    )
}

/// The pump ends with either direction: the far end closing the stream
/// resolves `closed` with `Ok` while the socket lives, and a socket whose
/// stream was closed by the far end drops what it is given.
#[tokio::test]
async fn the_pump_ends_when_the_far_end_closes() {
    let local: SocketAddr = "[::]:0".parse().expect("addr");
    let peer: SocketAddr = "[100::1]:1".parse().expect("addr");
    let (near, far) = tokio::io::duplex(4096);
    let (socket, closed) = StreamSocket::new(near, local, peer);
    drop(far);
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the pump noticed the end of the stream in time")
        .expect("closed by the stream's end, not by dropping the socket");
    let transmit = Transmit {
        destination: peer,
        ecn: None,
        contents: b"after the end",
        segment_size: None,
        src_ip: None,
    };
    assert!(
        socket.try_send(&transmit).is_ok(),
        "a closed stream drops datagrams like an unplugged cable"
    );
}
