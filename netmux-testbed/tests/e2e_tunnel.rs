//! End-to-end tests of the tunnel: real `netmux-server`, `netmuxd`,
//! `netmux` and `nx-echo` processes in a two-namespace sandbox. Need root
//! and the workspace binaries built (`cargo xtask test` does both); run
//! with `--test-threads=1`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use netmux_testbed::netmux::{Netmux, ServiceSpec, ENDPOINT};
use netmux_testbed::{bin, check, Error, Process, Sandbox, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(20);
const MIB: u64 = 1 << 20;

/// Services every test gets: name, address, port, target port, nx-echo mode
/// (`None`: nothing listens, the target refuses).
const SERVICES: &[(&str, &str, u16, u16, Option<&str>)] = &[
    ("http-echo", "10.96.0.10", 80, 8080, Some("http")),
    ("sink", "10.96.0.11", 9001, 9001, Some("sink")),
    ("source", "10.96.0.11", 9002, 9002, Some("source")),
    ("echo", "10.96.0.11", 9003, 9003, Some("tcp")),
    ("refused", "10.96.0.12", 9999, 9999, None),
];

struct World<'a> {
    sb: &'a Sandbox,
    nm: Netmux<'a>,
    _backends: Vec<Process>,
}

fn specs() -> Vec<ServiceSpec> {
    SERVICES
        .iter()
        .map(|(name, ip, port, target, _)| {
            ServiceSpec::l2c(name, ip.parse().unwrap(), *port, *target)
        })
        .collect()
}

fn sandbox() -> Sandbox {
    Sandbox::new().expect("creating a sandbox (needs root and iproute2)")
}

/// Backends up, netmux up, connected, every service started.
fn world(sb: &Sandbox) -> World<'_> {
    let specs = specs();
    let mut backends = Vec::new();
    for (spec, (_, _, _, _, mode)) in specs.iter().zip(SERVICES) {
        sb.add_service_address(spec.address).unwrap();
        if let Some(mode) = mode {
            let p = sb
                .process(
                    Side::Cluster,
                    &spec.name,
                    bin("nx-echo").expect("nx-echo built"),
                )
                .args([*mode, "--listen", &spec.target().to_string()])
                .spawn()
                .unwrap();
            sb.wait_for_tcp(Side::Cluster, spec.target(), T).unwrap();
            backends.push(p);
        }
    }
    let nm = Netmux::start(sb, &specs).expect("netmux starts");
    nm.cli(["connect", ENDPOINT])
        .unwrap()
        .ok()
        .expect("netmux connect");
    nm.wait_for_status("EP", ENDPOINT, "connected", T).unwrap();
    nm.wait_for_ls("the catalog", T, |json| {
        specs.iter().all(|s| json.contains(&s.name))
    })
    .unwrap();
    nm.cli(["start", ENDPOINT, "+"])
        .unwrap()
        .ok()
        .expect("netmux start demo +");
    World {
        sb,
        nm,
        _backends: backends,
    }
}

impl World<'_> {
    /// The local address netmux published for service `name`.
    fn local(&self, name: &str) -> SocketAddr {
        let port = SERVICES.iter().find(|s| s.0 == name).unwrap().2;
        let fqdn = format!("{name}.{ENDPOINT}.svc.cluster.local");
        let mut ip = None;
        netmux_testbed::wait_until(&format!("{fqdn} in the hosts file"), T, || {
            ip = self.nm.resolve(&fqdn);
            ip.is_some()
        })
        .unwrap();
        let addr = SocketAddr::new(ip.unwrap(), port);
        self.sb.wait_for_tcp(Side::Workstation, addr, T).unwrap();
        addr
    }

    /// Runs `fut` in the workstation namespace within `limit`.
    fn ws<F, Fut, R>(&self, limit: Duration, make: F) -> R
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = R>,
        R: Send,
    {
        self.sb
            .ws()
            .block_on(|| async move {
                tokio::time::timeout(limit, make())
                    .await
                    .unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
            })
            .unwrap()
    }
}

#[test]
fn http_by_name_with_curl() {
    let sb = sandbox();
    let w = world(&sb);
    let _ = w.local("http-echo");
    let out = sb
        .exec(
            Side::Workstation,
            "curl",
            [
                "-sS",
                "--max-time",
                "10",
                "http://http-echo.demo.svc.cluster.local/by-name",
            ],
            T,
        )
        .expect("curl through netmux");
    assert_eq!(
        out.stdout,
        "hello from nx-echo 10.96.0.10:8080 path=/by-name\n"
    );
}

#[test]
fn hosts_file_keeps_its_other_lines() {
    let sb = sandbox();
    let before = std::fs::read_to_string(sb.ws_hosts_file()).unwrap();
    let w = world(&sb);
    let _ = w.local("http-echo");
    let during = std::fs::read_to_string(sb.ws_hosts_file()).unwrap();
    for line in before.lines() {
        assert!(
            during.lines().any(|l| l == line),
            "netmuxd dropped {line:?} from the hosts file:\n{during}"
        );
    }
}

#[test]
fn hundred_mib_each_way_byte_exact() {
    let sb = sandbox();
    let w = world(&sb);
    let (sink, source) = (w.local("sink"), w.local("source"));
    let limit = Duration::from_secs(300);
    w.ws(limit, || async move {
        let started = Instant::now();
        check::upload_to_sink(sink, 100 * MIB).await?;
        eprintln!("100 MiB up in {:?}", started.elapsed());
        let started = Instant::now();
        check::download_from_source(source, 100 * MIB).await?;
        eprintln!("100 MiB down in {:?}", started.elapsed());
        Ok::<_, Error>(())
    })
    .unwrap();
}

#[test]
fn two_hundred_concurrent_connections_byte_exact() {
    let sb = sandbox();
    let w = world(&sb);
    let echo = w.local("echo");
    w.ws(Duration::from_secs(120), || async move {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200u64 {
            set.spawn(check::echo_round_trip(echo, 64 * 1024 + i * 101));
        }
        let mut failures = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Err(e) = r.expect("task panicked") {
                failures.push(e.to_string());
            }
        }
        assert!(
            failures.is_empty(),
            "{} of 200 failed: {failures:?}",
            failures.len()
        );
    });
}

#[test]
fn half_close_still_receives_the_reply() {
    let sb = sandbox();
    let w = world(&sb);
    let sink = w.local("sink");
    w.ws(Duration::from_secs(30), || async move {
        let mut s = tokio::net::TcpStream::connect(sink).await.unwrap();
        s.write_all(b"half-closed").await.unwrap();
        s.shutdown().await.unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        assert_eq!(
            sample_apps::Summary::parse(&reply),
            Some(sample_apps::Summary::of(b"half-closed")),
            "reply after half-close: {reply:?}"
        );
    });
}

#[test]
fn refusing_target_resets_the_client_within_a_second() {
    let sb = sandbox();
    let w = world(&sb);
    let refused = w.local("refused");
    w.ws(Duration::from_secs(10), || async move {
        let started = Instant::now();
        let mut s = tokio::net::TcpStream::connect(refused)
            .await
            .expect("the local listener accepts");
        let _ = s.write_all(b"hello?").await;
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await;
        let elapsed = started.elapsed();
        match r {
            Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            Ok(Ok(n)) => panic!("expected a reset, got {n} bytes / EOF after {elapsed:?}"),
            Err(_) => panic!("no reset within 1 s"),
        }
    });
}

#[test]
fn daemon_reconnects_when_the_server_comes_back() {
    let sb = sandbox();
    let mut w = world(&sb);
    let http = w.local("http-echo");
    w.nm.server.kill();
    let r =
        w.nm.wait_for_status("EP", ENDPOINT, "down", Duration::from_secs(15));
    let shown_down =
        r.is_ok() || w.nm.status_of("EP", ENDPOINT).unwrap().as_deref() == Some("connecting");
    assert!(
        shown_down,
        "endpoint not shown down after the server died: {r:?}"
    );
    w.nm.server.start_again().unwrap();
    w.nm.wait_for_status("EP", ENDPOINT, "connected", Duration::from_secs(30))
        .unwrap();
    let (status, body) = w
        .ws(Duration::from_secs(10), || {
            check::http_get(http, "http-echo", "/again")
        })
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn wrong_token_is_refused_and_nothing_is_proxied() {
    let sb = sandbox();
    let specs = specs();
    let nm = Netmux::start_with_token(&sb, &specs, "wrong-token-but-long-enough")
        .expect("netmux starts");
    let out = nm.cli(["connect", ENDPOINT]).unwrap();
    let mut last = None;
    let refused = netmux_testbed::wait_until("a refusal", Duration::from_secs(15), || {
        last = nm.ls().ok();
        last.as_ref().is_some_and(|rows| {
            rows.iter().any(|r| {
                r["kind"] == "EP" && r["status"] != "connected" && r["status"] != "connecting"
            })
        })
    });
    assert!(
        refused.is_ok() || !out.success(),
        "not refused: {out:?} / {last:?}"
    );
    assert_ne!(
        nm.status_of("EP", ENDPOINT).unwrap().as_deref(),
        Some("connected")
    );
    assert!(nm.resolve("http-echo.demo.svc.cluster.local").is_none());
}

#[test]
fn transfer_survives_a_workstation_address_change() {
    let sb = sandbox();
    let w = world(&sb);
    let source = w.local("source");
    let len = 40 * MIB;
    std::thread::scope(|s| {
        let transfer = s.spawn(|| {
            w.ws(Duration::from_secs(180), || async move {
                check::download_from_source(source, len).await
            })
        });
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            !transfer.is_finished(),
            "the transfer ended before the address moved: make it longer"
        );
        sb.set_ws_address(sb.subnet_addr(7)).unwrap();
        transfer.join().expect("transfer thread").unwrap();
    });
    assert_eq!(sb.ws_addr(), sb.subnet_addr(7));
}
