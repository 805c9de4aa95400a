//! RBAC stays true over a live session (issue 14, section 3): the
//! credential is reviewed again every `rbac.recheck_interval_ms`, a
//! revoked token ends the session, and revoked access leaves the daemon's
//! catalog within the interval without any action of the daemon. A real
//! server endpoint on loopback, the fake API server, a raw quinn client.

mod kube_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube_support::FakeApi;
use netmux_common::proto::catalog::{Direction, Protocol, Service, ServiceId, ServicePort};
use netmux_common::proto::hello::{Credential, Hello};
use netmux_common::proto::session::{ClientEvent, ClientSession};
use netmux_common::tunnel::quic;
use netmux_server::access::kubernetes::Rbac;
use netmux_server::access::Access;
use netmux_server::admission::Admission;
use netmux_server::ca::ServerIdentity;
use netmux_server::catalog::CatalogStore;
use netmux_server::config::Config;
use netmux_server::metrics::Metrics;
use netmux_server::{reverse, transport, Server};

const WAIT: Duration = Duration::from_secs(20);
const RECHECK: Duration = Duration::from_millis(300);
const TTL: Duration = Duration::from_millis(200);

struct Harness {
    udp: SocketAddr,
    server: Arc<Server>,
    endpoint: quinn::Endpoint,
    ca: rustls::pki_types::CertificateDer<'static>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn svc(name: &str) -> Service {
    Service {
        id: ServiceId(0),
        name: name.into(),
        namespace: "shop".into(),
        aliases: vec![],
        // Loopback, a port nothing listens on: a dial never leaves.
        addresses: vec!["127.0.0.1".parse().expect("ip")],
        ports: vec![ServicePort {
            name: None,
            port: 80,
            target_port: free_port(),
            protocol: Protocol::Tcp,
        }],
        direction: Direction::L2C,
    }
}

/// A server whose catalog holds `shop/web` and `shop/admin`, with RBAC
/// through `fake`, answers cached for [`TTL`], sessions re-checked every
/// [`RECHECK`].
async fn start(fake: &FakeApi) -> Harness {
    start_with(fake, "").await
}

/// [`start`] with more top-level config lines.
async fn start_with(fake: &FakeApi, extra: &str) -> Harness {
    start_full(fake, extra, Arc::new(reverse::MemoryLock::default())).await
}

/// [`start_with`], claims coordinated by `lock`.
async fn start_full(fake: &FakeApi, extra: &str, lock: Arc<dyn reverse::ClaimLock>) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("services.toml"), "").expect("services file");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nstate_dir = \"state\"\nreverse_bind = \"127.0.0.1\"\n{extra}\n\
         [rbac]\nrecheck_interval_ms = 300\n\
         [runtime]\nkind = \"static\"\nservices = \"services.toml\"\n"
    );
    let config = Config::parse(&dir.path().join("server.toml"), &text).expect("config");
    assert_eq!(config.rbac_recheck, RECHECK, "the config key is read");
    let identity =
        ServerIdentity::load_or_create(&config.state_dir, &config.server_names).expect("CA");
    let metrics = Metrics::new();
    let (store, catalog) = CatalogStore::new(metrics.clone());
    // C2L `shop/hook` on a port free now.
    let hook_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut hook = svc("hook");
    hook.direction = Direction::C2L;
    hook.addresses = vec![];
    hook.ports[0].port = hook_port;
    store.publish(vec![svc("web"), svc("admin"), hook]);
    store.set_origins(HashMap::from([
        ("shop/web".to_owned(), vec!["web".to_owned()]),
        ("shop/admin".to_owned(), vec!["admin".to_owned()]),
        ("shop/hook".to_owned(), vec!["hook".to_owned()]),
    ]));
    let (endpoint, _) =
        transport::server_endpoint(config.listen, None, &identity, &config.limits, &metrics)
            .expect("endpoint");
    let access = Access::with_rbac(
        vec![],
        Rbac::with_client(fake.client("netmux", None), TTL),
        store.clone(),
    )
    .with_recheck_interval(config.rbac_recheck);
    let server = Arc::new(Server {
        access,
        reverse: reverse::Claims::with_lock(
            store,
            metrics.clone(),
            config.reverse_bind,
            config.adhoc_namespace.clone(),
            lock,
        )
        .with_expose_ports(config.expose_ports.clone(), config.own_ports()),
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
        stream_peers: transport::StreamPeers::default(),
        catalog,
        metrics,
        config,
    });
    let udp = endpoint.local_addr().expect("addr");
    let caps = server.config.limits.caps();
    let task = tokio::spawn(transport::accept_loop(
        endpoint.clone(),
        server.clone(),
        Admission::new(caps),
    ));
    let ca = rustls_pemfile::certs(&mut identity.ca_pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM");
    Harness {
        udp,
        server,
        endpoint,
        ca,
        _dir: dir,
        task,
    }
}

/// A daemon's session: its connection, control stream and protocol state.
struct Daemon {
    conn: quinn::Connection,
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
    session: ClientSession,
}

impl Daemon {
    async fn connect(h: &Harness, token: &str) -> Daemon {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(h.ca.clone()).expect("root");
        let config = quic::client_config(roots, quic::transport_config()).expect("client config");
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
        endpoint.set_default_client_config(config);
        let conn = endpoint
            .connect(h.udp, "netmux-server")
            .expect("connect")
            .await
            .expect("handshake");
        let (mut send, recv) = conn.open_bi().await.expect("control stream");
        let mut session =
            ClientSession::new(&Hello::new("rbac-test", Credential::Bearer(token.into())));
        while let Some(b) = session.poll_transmit() {
            send.write_all(&b).await.expect("hello");
        }
        let mut d = Daemon {
            conn,
            _send: send,
            recv,
            session,
        };
        d.until("the hello is accepted", |e, _| {
            matches!(e, ClientEvent::Accepted { .. })
        })
        .await;
        d
    }

    fn keys(&self) -> Vec<String> {
        let mut v: Vec<String> = self.session.catalog().values().map(Service::key).collect();
        v.sort();
        v
    }

    /// Reads the control stream until an event satisfies `pred`.
    async fn until(&mut self, what: &str, pred: impl Fn(&ClientEvent, &ClientSession) -> bool) {
        let wait = async {
            loop {
                while let Some(e) = self.session.poll_event() {
                    if pred(&e, &self.session) {
                        return;
                    }
                }
                match self.recv.read_chunk(64 * 1024, true).await {
                    Ok(Some(c)) => self.session.handle_input(&c.bytes).expect("valid frames"),
                    other => panic!("control stream ended waiting for {what}: {other:?}"),
                }
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }
}

#[tokio::test]
async fn revoked_access_leaves_the_live_sessions_catalog_within_the_interval() {
    let fake = FakeApi::start().await;
    fake.add_token_with_audiences("alice-token", "alice", &[], &["netmux"]);
    fake.allow("alice", "get", "/services/proxy", "shop", "web");
    fake.allow("alice", "get", "/services/proxy", "shop", "admin");
    let h = start(&fake).await;
    let mut d = Daemon::connect(&h, "alice-token").await;
    if d.keys().len() < 2 {
        d.until("the first catalog", |_, s| s.catalog().len() == 2)
            .await;
    }
    assert_eq!(d.keys(), ["shop/admin", "shop/web"]);
    let admin = d
        .session
        .catalog()
        .values()
        .find(|s| s.key() == "shop/admin")
        .map(|s| s.id)
        .expect("admin id");

    // Nothing changes in the catalog itself; only RBAC does.
    fake.revoke("alice", "get", "/services/proxy", "shop", "admin");
    d.until("admin leaves the catalog", |_, s| s.catalog().len() == 1)
        .await;
    assert_eq!(d.keys(), ["shop/web"]);
    // A new stream to it is refused, not dialled.
    let (mut send, mut recv) = d.conn.open_bi().await.expect("stream");
    let mut header = bytes::BytesMut::new();
    netmux_common::proto::open::write_header(
        &netmux_common::proto::stream::StreamHeader::Connect {
            service: admin,
            port: 80,
        },
        &mut header,
    );
    send.write_all(&header).await.expect("header");
    let mut reader = netmux_common::proto::open::ResultReader::new();
    let answer = tokio::time::timeout(WAIT, async {
        loop {
            match recv.read_chunk(1024, true).await {
                Ok(Some(c)) => match reader.feed(&c.bytes) {
                    Ok(None) => continue,
                    other => return other.map(|_| ()),
                },
                _ => return Err(reader.end()),
            }
        }
    })
    .await
    .expect("answered");
    assert_eq!(
        answer,
        Err(netmux_common::proto::open::Refusal::Answered(
            netmux_common::proto::stream::OpenResult::NotAllowed
        ))
    );
    assert!(
        d.conn.close_reason().is_none(),
        "the session itself goes on"
    );
}

#[tokio::test]
async fn a_revoked_token_ends_the_session() {
    let fake = FakeApi::start().await;
    fake.add_token_with_audiences("bob-token", "bob", &[], &["netmux"]);
    fake.allow("bob", "get", "/services/proxy", "shop", "web");
    let h = start(&fake).await;
    let d = Daemon::connect(&h, "bob-token").await;
    fake.remove_token("bob-token");
    let reason = tokio::time::timeout(WAIT, d.conn.closed())
        .await
        .expect("the server ends the session once the token is revoked");
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            let text = String::from_utf8_lossy(&c.reason).into_owned();
            assert_eq!(
                c.error_code.into_inner(),
                u64::from(netmux_common::proto::error_code::REFUSED),
                "{text}"
            );
            assert!(text.contains("cluster refused the credential"), "{text}");
        }
        other => panic!("closed by something else: {other:?}"),
    }
}

#[tokio::test]
async fn a_claim_refusal_names_the_holder_not_their_address() {
    let fake = FakeApi::start().await;
    for (token, user) in [("carol-token", "carol"), ("dave-token", "dave")] {
        fake.add_token_with_audiences(token, user, &[], &["netmux"]);
        fake.allow(user, "update", "/services", "shop", "hook");
    }
    let h = start(&fake).await;
    let mut carol = Daemon::connect(&h, "carol-token").await;
    let mut dave = Daemon::connect(&h, "dave-token").await;
    let claim = |d: &mut Daemon| d.session.claim("shop/hook");
    let send = |d: &mut Daemon| {
        let bytes: Vec<_> = std::iter::from_fn(|| d.session.poll_transmit()).collect();
        bytes
    };
    let answer = |request: u32| move |e: &ClientEvent, _: &ClientSession| matches!(e, ClientEvent::ClaimResult { request: r, .. } if *r == request);
    let first = claim(&mut carol);
    for b in send(&mut carol) {
        carol._send.write_all(&b).await.expect("claim");
    }
    carol.until("carol's claim answered", answer(first)).await;
    let second = claim(&mut dave);
    for b in send(&mut dave) {
        dave._send.write_all(&b).await.expect("claim");
    }
    let refusal = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = refusal.clone();
    dave.until("dave's claim answered", move |e, _| match e {
        ClientEvent::ClaimResult { request, error } if *request == second => {
            *seen.lock().expect("lock") = Some(error.clone());
            true
        }
        _ => false,
    })
    .await;
    let error = refusal
        .lock()
        .expect("lock")
        .clone()
        .flatten()
        .expect("dave is refused: carol holds it");
    assert!(error.contains("held by carol"), "{error}");
    assert!(!error.contains("127.0.0.1"), "names no address: {error}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Sends `d`'s pending control frames, then waits for the answer to
/// `request`: `None` accepted, `Some(why)` refused.
async fn answer(d: &mut Daemon, request: u32) -> Option<String> {
    let bytes: Vec<_> = std::iter::from_fn(|| d.session.poll_transmit()).collect();
    for b in bytes {
        d._send.write_all(&b).await.expect("request");
    }
    let got = Arc::new(std::sync::Mutex::new(None));
    let seen = got.clone();
    d.until("the answer", move |e, _| match e {
        ClientEvent::ClaimResult { request: r, error } if *r == request => {
            *seen.lock().expect("lock") = Some(error.clone());
            true
        }
        _ => false,
    })
    .await;
    let answer = got.lock().expect("lock").clone();
    answer.expect("answered")
}

#[tokio::test]
async fn expose_binds_only_ports_the_server_allows() {
    let fake = FakeApi::start().await;
    fake.add_token_with_audiences("erin-token", "erin", &[], &["netmux"]);
    fake.allow("erin", "update", "/services", "default", "*");
    let (open, own) = (free_port(), free_port());
    let (low, high) = (open.min(own), open.max(own));
    let h = start_with(
        &fake,
        &format!(
            "http = \"127.0.0.1:{own}\"\nexpose_ports = [\"{low}-{high}\"]\nadhoc_namespace = \"default\""
        ),
    )
    .await;
    let mut d = Daemon::connect(&h, "erin-token").await;

    let r = d.session.expose("low", 80, 8080);
    let why = answer(&mut d, r)
        .await
        .expect("port 80 is outside expose_ports");
    assert!(
        why.contains("does not expose port 80") && why.contains(&format!("{low}-{high}")),
        "{why}"
    );
    let r = d.session.expose("own", own, 8080);
    let why = answer(&mut d, r)
        .await
        .expect("the server's own port is never exposed");
    assert!(why.contains("never its own listening ports"), "{why}");
    let r = d.session.expose("fine", open, 8080);
    assert_eq!(answer(&mut d, r).await, None, "a port inside the range");
}

#[test]
fn expose_ports_parse_with_the_fix() {
    let parse = |v: &str| {
        Config::parse(
            std::path::Path::new("s.toml"),
            &format!(
                "listen = \"127.0.0.1:1\"\nstate_dir = \"s\"\nexpose_ports = {v}\n\
                 [[token]]\nname = \"a\"\ntoken = \"0123456789abcdef0\"\n\
                 [runtime]\nkind = \"static\"\nservices = \"x\"\n"
            ),
        )
    };
    let c = parse("[8080, \"9000-9100\"]").expect("valid");
    assert_eq!(
        c.expose_ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["8080", "9000-9100"]
    );
    for bad in ["[\"9100-9000\"]", "[0]", "[\"http\"]"] {
        let e = parse(bad).expect_err(bad).to_string();
        assert!(
            e.starts_with("s.toml:3:") && e.contains("fix:"),
            "{bad}: {e}"
        );
    }
}

#[tokio::test]
async fn expose_without_adhoc_namespace_is_refused_with_the_fix() {
    let fake = FakeApi::start().await;
    fake.add_token_with_audiences("gus-token", "gus", &[], &["netmux"]);
    fake.allow("gus", "update", "/services", "default", "*");
    let h = start(&fake).await;
    let mut d = Daemon::connect(&h, "gus-token").await;
    let r = d.session.expose("tool", free_port(), 8080);
    let why = answer(&mut d, r)
        .await
        .expect("no silent `default` namespace");
    assert!(
        why.contains("adhoc_namespace is not set") && why.contains("fix:"),
        "{why}"
    );
}

#[tokio::test]
async fn a_draining_server_frees_its_leases_and_tells_daemons_to_reconnect() {
    use netmux_server::reverse::lease::{LeaseLock, LeaseOptions};
    let fake = FakeApi::start().await;
    fake.add_token_with_audiences("hal-token", "hal", &[], &["netmux"]);
    fake.allow("hal", "update", "/services", "shop", "hook");
    let lock = LeaseLock::new(
        fake.client("netmux", None),
        LeaseOptions {
            namespace: "netmux".into(),
            replica: "server-a".into(),
            pod_ip: "10.0.0.1".parse().ok(),
            // Long: the test sees a release, not an expiry.
            duration: Duration::from_secs(600),
        },
    );
    let h = start_full(&fake, "", Arc::new(lock)).await;
    let mut d = Daemon::connect(&h, "hal-token").await;
    let r = d.session.claim("shop/hook");
    assert_eq!(answer(&mut d, r).await, None, "hal holds shop/hook");
    let leases = || fake.objects("coordination.k8s.io/leases");
    let slices = || fake.objects("discovery.k8s.io/endpointslices");
    assert_eq!(leases().len(), 1);
    assert_eq!(slices().len(), 1, "traffic routed to this replica");

    netmux_server::drain(&h.server, &h.endpoint).await;
    assert!(
        leases().is_empty(),
        "Lease deleted, not left to expire: {:?}",
        leases()
    );
    assert!(slices().is_empty(), "EndpointSlice deleted: {:?}", slices());
    let closed = tokio::time::timeout(WAIT, d.conn.closed())
        .await
        .expect("the daemon is told");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(&c.reason[..], netmux_server::SHUTDOWN_REASON.as_bytes());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_rolling_update_of_two_replicas_keeps_the_c2l_claim() {
    use netmux_server::reverse::lease::{LeaseLock, LeaseOptions};
    let fake = FakeApi::start().await;
    fake.add_token_with_audiences("ivy-token", "ivy", &[], &["netmux"]);
    fake.allow("ivy", "update", "/services", "shop", "hook");
    let replica = |name: &str, ip: &str| {
        Arc::new(LeaseLock::new(
            fake.client("netmux", None),
            LeaseOptions {
                namespace: "netmux".into(),
                replica: name.into(),
                pod_ip: ip.parse().ok(),
                duration: Duration::from_secs(600),
            },
        ))
    };
    let a = start_full(&fake, "", replica("server-a", "10.0.0.1")).await;
    let b = start_full(&fake, "", replica("server-b", "10.0.0.2")).await;
    let holder = |fake: &FakeApi| {
        fake.objects("coordination.k8s.io/leases")
            .first()
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
    };

    let mut on_a = Daemon::connect(&a, "ivy-token").await;
    let r = on_a.session.claim("shop/hook");
    assert_eq!(answer(&mut on_a, r).await, None);
    assert!(holder(&fake).is_some_and(|h| h.starts_with("server-a/")));

    // Replica a is terminated: it drains, the daemon reconnects (to b,
    // behind the same Service) and claims again at once.
    netmux_server::drain(&a.server, &a.endpoint).await;
    tokio::time::timeout(WAIT, on_a.conn.closed())
        .await
        .expect("told to reconnect");
    let mut on_b = Daemon::connect(&b, "ivy-token").await;
    let r = on_b.session.claim("shop/hook");
    assert_eq!(
        answer(&mut on_b, r).await,
        None,
        "no wait for a's Lease to expire"
    );
    assert!(holder(&fake).is_some_and(|h| h.starts_with("server-b/")));
    let slices = fake.objects("discovery.k8s.io/endpointslices");
    assert_eq!(slices.len(), 1, "{slices:?}");
    assert_eq!(
        slices[0]["endpoints"][0]["addresses"][0], "10.0.0.2",
        "traffic goes to b"
    );
}
