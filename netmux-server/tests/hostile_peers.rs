//! Unauthenticated and hostile peers are bounded (issue 14, section 2):
//! windows nearly closed until the hello succeeds, caps on connections
//! (total, per source, pending hello), a credential check that cannot hang
//! a hello, `stream_listen` deadlines and per-source cap, streams per
//! session. A real server endpoint on loopback, raw quinn clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use netmux_common::proto::hello::{Credential, Hello};
use netmux_common::proto::session::{ClientEvent, ClientSession};
use netmux_common::tunnel::quic;
use netmux_server::access::kubernetes::{Rbac, TokenReviewConfig};
use netmux_server::access::Access;
use netmux_server::admission::Admission;
use netmux_server::ca::ServerIdentity;
use netmux_server::catalog::CatalogStore;
use netmux_server::config::Config;
use netmux_server::metrics::Metrics;
use netmux_server::{reverse, transport, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "hostile-peers-token-0123456789";
const WAIT: Duration = Duration::from_secs(20);

struct Harness {
    udp: SocketAddr,
    tcp: SocketAddr,
    server: Arc<Server>,
    ca: rustls::pki_types::CertificateDer<'static>,
    _dir: tempfile::TempDir,
    _stream: Option<transport::StreamAcceptor>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server with `limits` (TOML lines of `[limits]`) and `hello_timeout_ms`;
/// with `kube`, RBAC through that API server besides the token.
async fn start(limits: &str, hello_timeout_ms: u64, kube: Option<kube::Client>) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("services.toml"), "").expect("services file");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nstream_listen = \"127.0.0.1:0\"\nstate_dir = \"state\"\n\
         hello_timeout_ms = {hello_timeout_ms}\nreverse_bind = \"127.0.0.1\"\nadhoc_namespace = \"adhoc\"\n\
         [[token]]\nname = \"ci\"\ntoken = \"{TOKEN}\"\n\
         [runtime]\nkind = \"static\"\nservices = \"services.toml\"\n[limits]\n{limits}\n"
    );
    let config = Config::parse(&dir.path().join("server.toml"), &text).expect("config");
    let identity =
        ServerIdentity::load_or_create(&config.state_dir, &config.server_names).expect("CA");
    let metrics = Metrics::new();
    let (store, catalog) = CatalogStore::new(metrics.clone());
    let (endpoint, stream) = transport::server_endpoint(
        config.listen,
        config.stream_listen,
        &identity,
        &config.limits,
        &metrics,
    )
    .expect("endpoint");
    let access = match kube {
        None => Access::from_config(&config, &store),
        Some(client) => Access::with_rbac(
            config.tokens.clone(),
            Rbac::with_client(client, Duration::from_secs(10)).token_reviews(TokenReviewConfig {
                // The connection's own bound (hello_timeout) must act.
                timeout: Duration::from_secs(3600),
                ..Default::default()
            }),
            store.clone(),
        ),
    };
    let server = Arc::new(Server {
        access,
        reverse: reverse::Claims::new(
            store,
            metrics.clone(),
            config.reverse_bind,
            config.adhoc_namespace.clone(),
        ),
        intercepts: netmux_server::intercept::Intercepts::new(
            None,
            None,
            metrics.clone(),
            netmux_common::tunnel::stream::Options {
                half_close_timeout: None,
            },
            config.intercept_ttl,
        ),
        sessions: std::sync::atomic::AtomicU64::new(1),
        stream_peers: stream
            .as_ref()
            .map(transport::StreamAcceptor::peers)
            .unwrap_or_default(),
        catalog,
        metrics,
        config,
    });
    let udp = endpoint.local_addr().expect("addr");
    let tcp = stream.as_ref().expect("stream listener").local_addr();
    let caps = server.config.limits.caps();
    let task = tokio::spawn(transport::accept_loop(
        endpoint,
        server.clone(),
        Admission::new(caps),
    ));
    let ca = pem_cert(&identity.ca_pem);
    Harness {
        udp,
        tcp,
        server,
        ca,
        _dir: dir,
        _stream: stream,
        task,
    }
}

fn pem_cert(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM")
}

impl Harness {
    /// A QUIC connection from `source` (any 127.x address), no hello yet.
    async fn connect(&self, source: &str) -> Result<quinn::Connection, quinn::ConnectionError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("root");
        let config = quic::client_config(roots, quic::transport_config()).expect("client config");
        let mut endpoint = quinn::Endpoint::client(format!("{source}:0").parse().expect("source"))
            .expect("client");
        endpoint.set_default_client_config(config);
        endpoint
            .connect(self.udp, "netmux-server")
            .expect("connect")
            .await
    }

    fn refused(&self, reason: &str) -> u64 {
        self.server
            .metrics
            .peers_refused
            .with_label_values(&[reason])
            .get()
    }

    fn session_refusals(&self, limit: &str) -> u64 {
        self.server
            .metrics
            .session_limit_refusals
            .with_label_values(&[limit])
            .get()
    }
}

/// The control stream after a hello with `token`, and what the server said.
async fn hello(
    conn: &quinn::Connection,
    token: &str,
) -> (quinn::SendStream, quinn::RecvStream, Result<(), String>) {
    let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
    let mut session = ClientSession::new(&Hello::new(
        "hostile-test",
        Credential::Bearer(token.into()),
    ));
    while let Some(b) = session.poll_transmit() {
        send.write_all(&b).await.expect("hello");
    }
    let outcome = read_reply(&mut session, &mut recv).await;
    (send, recv, outcome)
}

async fn read_reply(
    session: &mut ClientSession,
    recv: &mut quinn::RecvStream,
) -> Result<(), String> {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(ClientEvent::Accepted { .. }) = session.poll_event() {
                return Ok(());
            }
            match recv.read_chunk(64 * 1024, true).await {
                Ok(Some(c)) => session.handle_input(&c.bytes).map_err(|e| e.to_string())?,
                Ok(None) => return Err("control stream ended".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .expect("the server answers the hello in time")
}

fn is_refused(r: &Result<quinn::Connection, quinn::ConnectionError>) -> bool {
    matches!(r, Err(quinn::ConnectionError::ConnectionClosed(c))
        if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

#[tokio::test]
async fn one_stream_until_the_hello_succeeds_then_the_session_limit() {
    let h = start("max_streams_per_session = 2", 30_000, None).await;
    let conn = h.connect("127.0.0.1").await.expect("handshake");
    let (mut ctl_send, mut ctl_recv) = conn.open_bi().await.expect("control stream");
    let mut second = Box::pin(conn.open_bi());
    assert!(
        (&mut second).now_or_never().is_none(),
        "a second stream before the hello must wait for credit"
    );
    let mut session = ClientSession::new(&Hello::new(
        "hostile-test",
        Credential::Bearer(TOKEN.into()),
    ));
    while let Some(b) = session.poll_transmit() {
        ctl_send.write_all(&b).await.expect("hello");
    }
    read_reply(&mut session, &mut ctl_recv)
        .await
        .expect("hello accepted");
    let mut streams = vec![tokio::time::timeout(WAIT, second)
        .await
        .expect("credit after the hello")
        .expect("stream")];
    for _ in 0..2 {
        streams.push(conn.open_bi().await.expect("stream"));
    }
    // The peer learns of a stream with its first byte: half a header.
    for (send, _) in &mut streams {
        send.write_all(&[0]).await.expect("byte");
    }
    let (_, third_recv) = &mut streams[2];
    let got = tokio::time::timeout(WAIT, third_recv.read(&mut [0u8; 16]))
        .await
        .expect("the third stream is answered at once");
    assert!(
        matches!(got, Err(quinn::ReadError::Reset(code)) if code.into_inner() == 2),
        "third stream: {got:?}"
    );
    assert_eq!(h.session_refusals("streams"), 1);
}

#[tokio::test]
async fn connections_are_capped_in_total_per_source_and_pending_hello() {
    let h = start(
        "max_connections = 4\nmax_connections_per_source = 3\nmax_pending_hello = 2",
        30_000,
        None,
    )
    .await;
    let c1 = h.connect("127.0.0.1").await.expect("c1");
    let _c2 = h.connect("127.0.0.1").await.expect("c2");
    assert!(
        is_refused(&h.connect("127.0.0.2").await),
        "two hellos pending: a third connection is refused"
    );
    assert_eq!(h.refused("max_pending_hello"), 1);
    let (_s1, _r1, ok) = hello(&c1, TOKEN).await;
    ok.expect("c1 hello");
    let c3 = h
        .connect("127.0.0.1")
        .await
        .expect("c3: c1 is no longer pending");
    let (_s3, _r3, ok) = hello(&c3, TOKEN).await;
    ok.expect("c3 hello");
    assert!(
        is_refused(&h.connect("127.0.0.1").await),
        "a fourth connection from 127.0.0.1"
    );
    assert_eq!(h.refused("max_connections_per_source"), 1);
    let _c4 = h.connect("127.0.0.2").await.expect("another source");
    assert!(
        is_refused(&h.connect("127.0.0.3").await),
        "a fifth connection"
    );
    assert_eq!(h.refused("max_connections"), 1);
}

#[tokio::test]
async fn a_hanging_credential_check_ends_at_the_hello_deadline_with_a_small_window() {
    // An API server that never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let api = listener.local_addr().expect("addr");
    let reviews = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = reviews.clone();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut c, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            if c.read(&mut buf).await.unwrap_or(0) > 0 {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            held.push(c);
        }
    });
    let client = kube::Client::try_from(kube::Config::new(
        format!("http://{api}").parse().expect("url"),
    ))
    .expect("kube client");
    let h = start("", 1_500, Some(client)).await;
    let conn = h.connect("127.0.0.1").await.expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
    let mut session = ClientSession::new(&Hello::new(
        "hostile-test",
        Credential::Bearer("a-kubernetes-token".into()),
    ));
    while let Some(b) = session.poll_transmit() {
        send.write_all(&b).await.expect("hello");
    }
    tokio::time::timeout(WAIT, async {
        while reviews.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the server asks the API server");
    // The server is not reading the control stream now: whatever the
    // client can write is what the window lets it buffer there.
    let chunk = vec![0u8; 16 * 1024];
    let mut accepted = 0usize;
    while let Some(n) = send.write(&chunk).now_or_never() {
        accepted += n.expect("write");
        assert!(accepted < 16 << 20, "no flow control at all");
    }
    assert!(
        accepted <= quic::PRE_HELLO_RECEIVE_WINDOW as usize,
        "{accepted} bytes accepted before the hello succeeded"
    );
    let outcome = read_reply(&mut session, &mut recv).await;
    let why = outcome.expect_err("refused");
    assert!(why.contains("took longer"), "{why}");
    silent.abort();
}

#[tokio::test]
async fn stream_listen_peers_have_deadlines_and_a_per_source_cap() {
    let h = start(
        "max_connections_per_source = 2\nstream_preamble_timeout_ms = 300",
        30_000,
        None,
    )
    .await;
    let mut mute1 = tokio::net::TcpStream::connect(h.tcp).await.expect("tcp");
    let mut mute2 = tokio::net::TcpStream::connect(h.tcp).await.expect("tcp");
    // The first two are accepted: the server sends its preamble.
    for s in [&mut mute1, &mut mute2] {
        let mut pre = [0u8; 8];
        tokio::time::timeout(WAIT, s.read_exact(&mut pre))
            .await
            .expect("preamble in time")
            .expect("preamble");
        assert_eq!(pre, netmux_common::tunnel::stream_socket::PREAMBLE);
    }
    let mut third = tokio::net::TcpStream::connect(h.tcp).await.expect("tcp");
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, third.read_to_end(&mut got))
        .await
        .expect("the third is closed at once")
        .expect("read");
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(h.refused("stream_per_source"), 1);
    // The mute ones are closed by the preamble deadline.
    for s in [&mut mute1, &mut mute2] {
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
            .await
            .expect("closed after the preamble deadline")
            .expect("read");
    }
    // And the places are free again.
    let mut again = tokio::net::TcpStream::connect(h.tcp).await.expect("tcp");
    again
        .write_all(&netmux_common::tunnel::stream_socket::PREAMBLE)
        .await
        .expect("write");
    let mut pre = [0u8; 8];
    tokio::time::timeout(WAIT, again.read_exact(&mut pre))
        .await
        .expect("accepted again")
        .expect("preamble");
}

/// A byte stream between a client's QUIC socket and the server's
/// `stream_listen` that can go dark both ways (a blackout: nothing is
/// read or written while it is off; nothing is lost either).
struct Relay {
    dark: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Connects to `tcp`; returns the relay and the client's end.
    async fn start(tcp: SocketAddr) -> (Relay, tokio::io::DuplexStream) {
        let server = tokio::net::TcpStream::connect(tcp).await.expect("tcp");
        let (client, far) = tokio::io::duplex(64 * 1024);
        let dark = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = dark.clone();
        let task = tokio::spawn(async move {
            let (mut sr, mut sw) = server.into_split();
            let (mut cr, mut cw) = tokio::io::split(far);
            let lit = || async {
                while flag.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            let up = async {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    lit().await;
                    let n = cr.read(&mut buf).await.unwrap_or(0);
                    lit().await;
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            };
            let down = async {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    lit().await;
                    let n = sr.read(&mut buf).await.unwrap_or(0);
                    lit().await;
                    if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                () = up => {}
                () = down => {}
            }
        });
        (Relay { dark, task }, client)
    }

    fn set_dark(&self, dark: bool) {
        self.dark.store(dark, std::sync::atomic::Ordering::Relaxed);
    }

    /// Either side closed the stream.
    fn ended(&self) -> bool {
        self.task.is_finished()
    }
}

impl Harness {
    /// A QUIC connection over `stream` to the stream listener, with the
    /// daemon's survive_blackout idle timeout.
    async fn connect_stream(&self, stream: tokio::io::DuplexStream) -> quinn::Connection {
        use netmux_common::tunnel::stream_socket::StreamSocket;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("root");
        let mut t = quic::transport_config();
        netmux_common::tunnel::blackout::set_idle_timeout(&mut t, Duration::from_secs(600));
        let config = quic::client_config(roots, t).expect("quic client config");
        let local: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let peer: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let (socket, _closed) = StreamSocket::new(stream, local, peer);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .expect("endpoint");
        tokio::time::timeout(
            WAIT,
            endpoint
                .connect_with(config, peer, "netmux-server")
                .expect("connect"),
        )
        .await
        .expect("handshake in time")
        .expect("handshake")
    }
}

/// Issue 20 over `stream_listen` (`transport = "tcp"`, the port-forward):
/// a daemon's session holds its stream, so a blackout longer than
/// `stream_idle_timeout_ms` keeps the session (it ends at
/// survive_blackout, as over UDP); a peer that never completed a hello
/// still loses its stream to the idle deadline.
#[tokio::test]
async fn an_authenticated_stream_peer_survives_a_blackout_past_the_idle_timeout() {
    let h = start("stream_idle_timeout_ms = 3000", 30_000, None).await;
    let (relay, stream) = Relay::start(h.tcp).await;
    let (conn, mut session, mut send, mut recv) = session_over(&h, stream, TOKEN).await;
    let (idle_relay, idle_stream) = Relay::start(h.tcp).await;
    let no_hello = h.connect_stream(idle_stream).await;

    // Both go dark for three idle timeouts.
    relay.set_dark(true);
    idle_relay.set_dark(true);
    tokio::time::sleep(Duration::from_secs(9)).await;
    relay.set_dark(false);
    idle_relay.set_dark(false);

    // The session answers a ping on its control stream.
    session.ping(7);
    while let Some(b) = session.poll_transmit() {
        send.write_all(&b).await.expect("ping");
    }
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(ClientEvent::Pong(n)) = session.poll_event() {
                return n;
            }
            match recv.read_chunk(64 * 1024, true).await {
                Ok(Some(c)) => session.handle_input(&c.bytes).expect("control input"),
                other => panic!("the session ended in the blackout: {other:?}"),
            }
        }
    })
    .await
    .expect("the session answers after the blackout");
    assert_eq!(pong, 7);
    assert!(conn.close_reason().is_none());
    assert!(!relay.ended(), "the session's stream is open");
    // The peer without a session lost its stream to the idle deadline.
    tokio::time::timeout(WAIT, async {
        while !idle_relay.ended() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the stream without a session is closed");
    drop(no_hello);
}

/// A daemon session over `relay`: hello with `token`, control stream.
async fn session_over(
    h: &Harness,
    stream: tokio::io::DuplexStream,
    token: &str,
) -> (
    quinn::Connection,
    ClientSession,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let conn = h.connect_stream(stream).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
    let mut session = ClientSession::new(&Hello::new(
        "blackout-test",
        Credential::Bearer(token.into()),
    ));
    while let Some(b) = session.poll_transmit() {
        send.write_all(&b).await.expect("hello");
    }
    read_reply(&mut session, &mut recv)
        .await
        .expect("hello accepted");
    (conn, session, send, recv)
}

/// Issue 20: a server keeps at most `limits.max_blackout_sessions` silent
/// sessions per identity; beyond it the longest-silent one is closed and
/// counted (`netmux_server_blackouts_total{outcome="evicted"}`), the other
/// is kept through the blackout.
#[tokio::test]
async fn silent_sessions_per_identity_are_capped() {
    // Its own identity: the silent-session table is per process.
    const LAPTOPS: &str = "laptops-token-0123456789abcdef";
    let h = start(
        &format!(
            "max_blackout_sessions = 1
[[token]]
name = \"laptops\"
token = \"{LAPTOPS}\""
        ),
        30_000,
        None,
    )
    .await;
    let (relay1, stream1) = Relay::start(h.tcp).await;
    let (conn1, _s1, _send1, _recv1) = session_over(&h, stream1, LAPTOPS).await;
    let (relay2, stream2) = Relay::start(h.tcp).await;
    let (conn2, mut s2, mut send2, mut recv2) = session_over(&h, stream2, LAPTOPS).await;
    assert_eq!(h.server.metrics.sessions_active.get(), 2);
    // The first goes silent, and only once the server counts it silent
    // does the second: keep-alives (every second) decide when each was
    // last heard, so a fixed gap between the two blackouts could let the
    // second one's silence start first.
    relay1.set_dark(true);
    tokio::time::timeout(WAIT, async {
        while h.server.metrics.sessions_degraded.get() != 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the first session is counted silent");
    relay2.set_dark(true);
    let evicted = || {
        h.server
            .metrics
            .blackouts
            .with_label_values(&["evicted"])
            .get()
    };
    tokio::time::timeout(WAIT, async {
        while evicted() == 0 || h.server.metrics.sessions_active.get() != 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "one silent session closed: evicted {}, active {}",
            evicted(),
            h.server.metrics.sessions_active.get()
        )
    });
    relay1.set_dark(false);
    relay2.set_dark(false);
    // The first to go silent was closed, with the reason.
    let why = tokio::time::timeout(WAIT, conn1.closed())
        .await
        .expect("the evicted session is closed")
        .to_string();
    assert!(why.contains("max_blackout_sessions"), "{why}");
    // The other one carries on.
    s2.ping(9);
    while let Some(b) = s2.poll_transmit() {
        send2.write_all(&b).await.expect("ping");
    }
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(ClientEvent::Pong(n)) = s2.poll_event() {
                return n;
            }
            match recv2.read_chunk(64 * 1024, true).await {
                Ok(Some(c)) => s2.handle_input(&c.bytes).expect("control input"),
                other => panic!("the kept session ended: {other:?}"),
            }
        }
    })
    .await
    .expect("the kept session answers");
    assert_eq!(pong, 9);
    assert!(conn2.close_reason().is_none());
    assert_eq!(evicted(), 1);
}

/// A TCP port free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[tokio::test]
async fn claims_and_exposes_per_session_are_capped() {
    let h = start("max_claims_per_session = 2", 30_000, None).await;
    let conn = h.connect("127.0.0.1").await.expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
    let mut session = ClientSession::new(&Hello::new(
        "hostile-test",
        Credential::Bearer(TOKEN.into()),
    ));
    while let Some(b) = session.poll_transmit() {
        send.write_all(&b).await.expect("hello");
    }
    read_reply(&mut session, &mut recv)
        .await
        .expect("hello accepted");
    let mut results = Vec::new();
    for name in ["one", "two", "three"] {
        let request = session.expose(name, free_port(), 8080);
        while let Some(b) = session.poll_transmit() {
            send.write_all(&b).await.expect("expose");
        }
        let error = tokio::time::timeout(WAIT, async {
            loop {
                while let Some(e) = session.poll_event() {
                    if let ClientEvent::ClaimResult { request: r, error } = e {
                        if r == request {
                            return error;
                        }
                    }
                }
                let c = recv
                    .read_chunk(64 * 1024, true)
                    .await
                    .expect("read")
                    .expect("control stream open");
                session.handle_input(&c.bytes).expect("valid");
            }
        })
        .await
        .expect("an answer to each expose");
        results.push(error);
    }
    assert_eq!(results[0], None, "{results:?}");
    assert_eq!(results[1], None, "{results:?}");
    let third = results[2].as_deref().expect("the third is refused");
    assert!(third.contains("max_claims_per_session"), "{third}");
    assert_eq!(h.session_refusals("claims"), 1);
}

#[tokio::test]
async fn datagrams_before_the_hello_are_dropped_unread() {
    let h = start("", 30_000, None).await;
    let conn = h.connect("127.0.0.1").await.expect("handshake");
    let open = |flow: u32| {
        let mut out = bytes::BytesMut::new();
        netmux_common::proto::datagram::Datagram::Open {
            flow,
            service: netmux_common::proto::catalog::ServiceId(999),
            port: 53,
            payload: b"nobody's",
        }
        .encode(&mut out);
        out.freeze()
    };
    for flow in 0..10 {
        conn.send_datagram(open(flow)).expect("datagram");
    }
    let (_send, _recv, ok) = hello(&conn, TOKEN).await;
    ok.expect("hello");
    // After the hello, datagrams are handled: this one is counted as for
    // an unknown service, and only it.
    conn.send_datagram(open(100)).expect("datagram");
    let unknown = || {
        h.server
            .metrics
            .udp_drops
            .with_label_values(&["unknown", "l2c", "unknown_service"])
            .get()
    };
    tokio::time::timeout(WAIT, async {
        while unknown() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the datagram after the hello is handled");
    assert_eq!(unknown(), 1, "datagrams from before the hello were kept");
}

#[tokio::test]
async fn under_load_a_place_needs_a_proven_address() {
    let h = start("max_pending_hello = 4", 30_000, None).await;
    let _c1 = h.connect("127.0.0.1").await.expect("c1");
    assert_eq!(h.server.metrics.address_validations.get(), 0);
    let _c2 = h.connect("127.0.0.1").await.expect("c2");
    // Half the pending places are taken: the next peer gets a Retry, which
    // a real client answers (a spoofed source cannot) and is admitted.
    let _c3 = h.connect("127.0.0.2").await.expect("c3 after a Retry");
    assert_eq!(h.server.metrics.address_validations.get(), 1);
    let _c4 = h.connect("127.0.0.3").await.expect("c4 after a Retry");
    assert_eq!(h.server.metrics.address_validations.get(), 2);
    assert!(
        is_refused(&h.connect("127.0.0.4").await),
        "all four pending places taken"
    );
    assert_eq!(h.refused("max_pending_hello"), 1);
}
