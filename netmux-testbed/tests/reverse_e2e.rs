//! End-to-end tests of reverse (C2L) tunnels: cluster workloads reach
//! services on the workstation through the daemon's QUIC connection.
//!
//! Need root; run with `--test-threads=1` (as `cargo xtask test` does).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use netmux_testbed::netmux::{Netmux, ServiceSpec, ENDPOINT};
use netmux_testbed::{bin, check, Process, Sandbox, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{curl, ip, nx_echo, on_failure_dump, restart_server, sandbox, MIB, T};

/// C2L service from the static services file: the server listens on
/// 10.96.0.20:8088 in the cluster; the daemon dials 127.0.0.1:18080.
fn rev_http() -> ServiceSpec {
    ServiceSpec {
        direction: "C2L",
        ..ServiceSpec::l2c("rev-http", ip("10.96.0.20"), 8088, 18080)
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal socket address")
}

struct World<'a> {
    nm: Netmux<'a>,
    _local: Vec<Process>,
}

/// Server and daemon up, connected, `rev-http` claimed, with an HTTP server
/// on the workstation's loopback.
fn world(sb: &Sandbox) -> World<'_> {
    let nm = Netmux::start(sb, &[rev_http()]).unwrap_or_else(|e| {
        sb.dump_logs(50);
        panic!("netmux start: {e}")
    });
    let local = vec![nx_echo(
        sb,
        Side::Workstation,
        "ws-http",
        "http",
        addr("127.0.0.1:18080"),
    )];
    let out = nm.cli(["connect", ENDPOINT]).expect("connect");
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    let out = nm.cli(["start", ENDPOINT, "rev-http"]).expect("start");
    assert!(out.success(), "claim failed: {}{}", out.stdout, out.stderr);
    assert!(!out.stdout.contains("nothing answers"), "{}", out.stdout);
    World { nm, _local: local }
}

/// `netmux expose`; its output.
fn expose(nm: &Netmux<'_>, name: &str, local: &str, port: u16) -> String {
    let out = nm
        .cli([
            "expose",
            ENDPOINT,
            name,
            "--local",
            local,
            "--remote-port",
            &port.to_string(),
        ])
        .expect("expose");
    assert!(out.success(), "expose {name}: {}{}", out.stdout, out.stderr);
    out.stdout
}

#[test]
fn cluster_curl_reaches_a_workstation_http_server() {
    let sb = sandbox();
    let w = world(&sb);
    on_failure_dump(&sb, || {
        let out = curl(&sb, Side::Cluster, "http://10.96.0.20:8088/from-cluster");
        assert!(out.success(), "{}", out.stderr);
        assert!(
            out.stdout.contains("path=/from-cluster") && out.stdout.contains("127.0.0.1:18080"),
            "{}",
            out.stdout
        );
        let ls = w.nm.cli(["ls"]).unwrap().ok().unwrap().stdout;
        let row = ls
            .lines()
            .find(|l| l.contains("demo/rev-http"))
            .unwrap_or_else(|| panic!("{ls}"));
        assert!(
            row.contains("C2L: 10.96.0.20:8088 => 127.0.0.1:18080") && row.ends_with("on"),
            "{row}"
        );
    });
}

#[test]
fn hundred_mib_each_way_and_hundred_concurrent_through_expose() {
    let sb = sandbox();
    let w = world(&sb);
    let _sink = nx_echo(
        &sb,
        Side::Workstation,
        "ws-sink",
        "sink",
        addr("127.0.0.1:19001"),
    );
    let _source = nx_echo(
        &sb,
        Side::Workstation,
        "ws-source",
        "source",
        addr("127.0.0.1:19002"),
    );
    let _echo = nx_echo(
        &sb,
        Side::Workstation,
        "ws-echo",
        "tcp",
        addr("127.0.0.1:19003"),
    );
    let said = expose(&w.nm, "rsink", "127.0.0.1:19001", 9101);
    assert!(!said.contains("nothing answers"), "{said}");
    expose(&w.nm, "rsource", "127.0.0.1:19002", 9102);
    expose(&w.nm, "recho", "127.0.0.1:19003", 9103);
    on_failure_dump(&sb, || {
        sb.cluster()
            .block_on(|| async {
                check::upload_to_sink(addr("127.0.0.1:9101"), 100 * MIB).await?;
                check::download_from_source(addr("127.0.0.1:9102"), 100 * MIB).await
            })
            .unwrap()
            .expect("100 MiB each way through the reverse tunnel, byte-exact");
        let failures = sb
            .cluster()
            .block_on(|| check::concurrent_echoes(addr("127.0.0.1:9103"), 100, 32 * 1024, 131))
            .unwrap();
        assert!(
            failures.is_empty(),
            "{} of 100 failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
        let metrics = sb
            .ws()
            .block_on(|| check::http_get(addr("127.0.0.1:9477"), "m", "/metrics"))
            .unwrap()
            .expect("daemon metrics");
        let text = String::from_utf8_lossy(&metrics.1).into_owned();
        assert!(
            text.lines()
                .any(|l| l.starts_with("netmux_daemon_connections_total")
                    && l.contains("direction=\"c2l\"")),
            "{text}"
        );
    });
}

#[test]
fn local_target_down_gives_the_cluster_client_a_prompt_reset() {
    let sb = sandbox();
    let w = world(&sb);
    // The expose stands, and the user is told at once.
    let said = expose(&w.nm, "nobody", "127.0.0.1:19999", 9104);
    assert!(
        said.contains("note: nothing answers at 127.0.0.1:19999 yet (Connection refused"),
        "{said}"
    );
    on_failure_dump(&sb, || {
        let result = sb
            .cluster()
            .block_on(|| async {
                tokio::time::timeout(Duration::from_secs(1), async {
                    let mut s = tokio::net::TcpStream::connect(addr("127.0.0.1:9104")).await?;
                    s.write_all(b"anyone?").await?;
                    let mut buf = [0u8; 8];
                    s.read(&mut buf).await
                })
                .await
            })
            .unwrap();
        match result {
            Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            Ok(Ok(n)) => panic!("expected a reset, read {n} bytes"),
            Err(_) => panic!("no reset within 1s"),
        }
        // Others are unaffected.
        let out = curl(&sb, Side::Cluster, "http://10.96.0.20:8088/still");
        assert!(out.success(), "{}", out.stderr);
    });
}

#[test]
fn disconnect_closes_the_cluster_port_and_frees_the_claim() {
    let sb = sandbox();
    let w = world(&sb);
    on_failure_dump(&sb, || {
        assert!(curl(&sb, Side::Cluster, "http://10.96.0.20:8088/").success());
        let out = w.nm.cli(["disconnect", ENDPOINT]).unwrap();
        assert!(out.success(), "{}", out.stderr);
        let target = addr("10.96.0.20:8088");
        netmux_testbed::wait_until("cluster-side port closed", T, || {
            sb.cluster()
                .run(|| std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)))
                .map(|r| r.is_err())
                .unwrap_or(false)
        })
        .expect("port closes after disconnect");
    });
}

#[test]
fn a_second_daemon_cannot_claim_a_held_service() {
    let sb = sandbox();
    let w = world(&sb);
    // A second daemon in the same workstation: own socket, metrics port and hosts file.
    let cfg2 = sb.dir().join("daemon2.toml");
    let sock2 = sb.dir().join("netmuxd2.sock");
    let text = std::fs::read_to_string(&w.nm.layout.daemon_config)
        .expect("daemon.toml")
        .replace(
            &w.nm.layout.socket.display().to_string(),
            &sock2.display().to_string(),
        )
        .replace("127.0.0.1:9477", "127.0.0.1:9478")
        .replace(
            &sb.ws_hosts_file().display().to_string(),
            &sb.dir().join("hosts2").display().to_string(),
        );
    std::fs::write(&cfg2, text).expect("write daemon2.toml");
    let _d2 = sb
        .process(
            Side::Workstation,
            "netmuxd-2",
            bin("netmuxd").expect("built"),
        )
        .arg("--config")
        .arg(&cfg2)
        .spawn()
        .expect("second daemon");
    netmux_testbed::wait_until("second socket", T, || sock2.exists()).expect("second daemon up");
    let cli2 = |args: &[&str]| {
        sb.process(
            Side::Workstation,
            "netmux-cli-2",
            bin("netmux").expect("built"),
        )
        .arg("--socket")
        .arg(&sock2)
        .args(args)
        .run(T)
        .expect("cli")
    };
    on_failure_dump(&sb, || {
        assert!(cli2(&["connect", ENDPOINT]).success());
        let out = cli2(&["start", ENDPOINT, "rev-http"]);
        assert!(
            !out.success(),
            "second claim must be refused: {}",
            out.stdout
        );
        assert!(
            out.stderr.contains("held by alice"),
            "error names the holder: {}",
            out.stderr
        );
        // When the holder lets go, the second daemon's refused claim is
        // asked again with backoff and held, with no second `start`.
        assert!(w.nm.cli(["stop", ENDPOINT, "rev-http"]).unwrap().success());
        netmux_testbed::wait_until(
            "daemon 2 retries its refused claim and holds it",
            Duration::from_secs(40),
            || {
                let ls = cli2(&["ls"]).stdout;
                ls.lines()
                    .any(|l| l.contains("demo/rev-http") && l.trim_end().ends_with("on"))
            },
        )
        .unwrap_or_else(|e| panic!("{e}: {}", cli2(&["ls"]).stdout));
        let out = cli2(&["start", ENDPOINT, "rev-http"]);
        assert!(
            out.success(),
            "claim after release: {}{}",
            out.stdout,
            out.stderr
        );
    });
}

#[test]
fn reverse_service_survives_a_server_restart() {
    let sb = sandbox();
    let mut w = world(&sb);
    w.nm.server.kill();
    // The daemon notices: `down` once a path probe meets the closed port
    // (ICMP port unreachable), or `degraded` first when that ICMP is rate
    // limited away; from either it finds the restarted server (refused, or
    // "answers but no longer knows this session") and claims again.
    on_failure_dump(&sb, || {
        w.nm.wait_for_ls("endpoint down or degraded", T, |ls| {
            ls.contains("down") || ls.contains("degraded")
        })
        .expect("down or degraded");
    });
    restart_server(&sb, &mut w.nm);
    on_failure_dump(&sb, || {
        let started = Instant::now();
        netmux_testbed::wait_until("re-claimed after restart", 3 * T, || {
            curl(&sb, Side::Cluster, "http://10.96.0.20:8088/again").success()
        })
        .unwrap_or_else(|e| panic!("{e} after {:?}", started.elapsed()));
    });
}

/// A C2L service with three ports: each cluster port reaches its own local
/// target (issue 15: port 18092 once reached the first port's target).
#[test]
fn c2l_with_three_ports_routes_each_port_to_its_own_target() {
    let sb = sandbox();
    let nm = Netmux::start(&sb, &[rev_http()]).unwrap_or_else(|e| {
        sb.dump_logs(50);
        panic!("netmux start: {e}")
    });
    let ports = [(18091u16, 19000u16), (18092, 19001), (18093, 19002)];
    // The third target's program starts only after `netmux start`.
    let mut local: Vec<Process> = ports[..2]
        .iter()
        .map(|(_, local)| {
            nx_echo(
                &sb,
                Side::Workstation,
                &format!("ws-http-{local}"),
                "http",
                addr(&format!("127.0.0.1:{local}")),
            )
        })
        .collect();
    sb.add_service_address(ip("10.96.0.21"))
        .expect("cluster address");
    let multi = format!(
        "[[service]]\nname = \"multi\"\nnamespace = \"demo\"\naddresses = [\"10.96.0.21\"]\n\
         aliases = []\ndirection = \"C2L\"\nports = [{}]\n",
        ports
            .iter()
            .map(|(p, t)| format!(
                "{{ port = {p}, target_port = {t}, name = \"p{p}\", protocol = \"tcp\" }}"
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let services = format!(
        "{}{multi}",
        netmux_testbed::netmux::services_toml(&[rev_http()])
    );
    std::fs::write(&nm.layout.services_file, services).expect("services file");
    let out = nm.cli(["connect", ENDPOINT]).expect("connect");
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    nm.wait_for_ls("demo/multi in the catalog", T, |ls| {
        ls.contains("demo/multi")
    })
    .expect("catalog");
    let out = nm.cli(["start", ENDPOINT, "multi"]).expect("start");
    assert!(out.success(), "claim failed: {}{}", out.stdout, out.stderr);
    // The user is told which target does not answer yet, and only that one.
    assert_eq!(
        out.stdout.matches("nothing answers").count(),
        1,
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("nothing answers at 127.0.0.1:19002 yet"),
        "{}",
        out.stdout
    );
    local.push(nx_echo(
        &sb,
        Side::Workstation,
        "ws-http-19002",
        "http",
        addr("127.0.0.1:19002"),
    ));
    on_failure_dump(&sb, || {
        for (port, local) in ports {
            let out = curl(
                &sb,
                Side::Cluster,
                &format!("http://10.96.0.21:{port}/port-{port}"),
            );
            assert!(out.success(), "cluster port {port}: {}", out.stderr);
            assert!(
                out.stdout.contains(&format!("path=/port-{port}"))
                    && out.stdout.contains(&format!("127.0.0.1:{local}")),
                "cluster port {port} must reach 127.0.0.1:{local}: {}",
                out.stdout
            );
        }
        let ls = nm.cli(["ls"]).unwrap().ok().unwrap().stdout;
        let row = ls
            .lines()
            .find(|l| l.contains("demo/multi"))
            .unwrap_or_else(|| panic!("{ls}"));
        for (port, local) in ports {
            assert!(
                row.contains(&format!("10.96.0.21:{port} => 127.0.0.1:{local}")),
                "{row}"
            );
        }
    });
}
