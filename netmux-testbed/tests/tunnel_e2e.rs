//! End-to-end tests of the tunnel (issue: server, daemon, CLI, QUIC, static
//! runtime): real binaries in two network namespaces, real curl.
//!
//! Need root; run with `--test-threads=1` (as `cargo xtask test` does).
//! Every address used is loopback or assigned inside the test's namespaces.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use netmux_testbed::netmux::{Netmux, ServiceSpec, ENDPOINT, TOKEN};
use netmux_testbed::{bin, check, Process, Sandbox, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{curl, ip, on_failure_dump, restart_server, sandbox, set_mtu, MIB, T};

/// The services every test publishes, with their backends' nx-echo modes.
fn services() -> Vec<(ServiceSpec, Option<&'static str>)> {
    vec![
        (
            ServiceSpec::l2c("http-echo", ip("10.96.0.10"), 80, 8080),
            Some("http"),
        ),
        (
            ServiceSpec::l2c("tcp-echo", ip("10.96.0.11"), 9000, 9000),
            Some("tcp"),
        ),
        (
            ServiceSpec::l2c("sink", ip("10.96.0.12"), 9001, 9001),
            Some("sink"),
        ),
        (
            ServiceSpec::l2c("source", ip("10.96.0.13"), 9002, 9002),
            Some("source"),
        ),
        // Published, but nothing listens: the target refuses.
        (
            ServiceSpec::l2c("refuser", ip("10.96.0.14"), 9003, 9003),
            None,
        ),
    ]
}

struct World<'a> {
    sb: &'a Sandbox,
    nm: Netmux<'a>,
    _backends: Vec<Process>,
}

fn backends(sb: &Sandbox) -> Vec<Process> {
    services()
        .into_iter()
        .filter_map(|(spec, mode)| mode.map(|m| (spec, m)))
        .map(|(spec, mode)| {
            let p = sb
                .process(
                    Side::Cluster,
                    &format!("backend-{}", spec.name),
                    bin("nx-echo").expect("nx-echo built"),
                )
                .args([mode, "--listen", &spec.target().to_string()])
                .spawn()
                .expect("start backend");
            sb.wait_for_tcp(Side::Cluster, spec.target(), T)
                .unwrap_or_else(|e| panic!("backend {}: {e}\n{}", spec.name, p.log()));
            p
        })
        .collect()
}

fn specs() -> Vec<ServiceSpec> {
    services().into_iter().map(|(s, _)| s).collect()
}

/// Server, daemon and backends up; endpoint connected; every service started.
fn world(sb: &Sandbox) -> World<'_> {
    let nm = Netmux::start(sb, &specs()).unwrap_or_else(|e| {
        sb.dump_logs(50);
        panic!("netmux start: {e}")
    });
    let backends = backends(sb);
    let out = nm.cli(["connect", ENDPOINT]).expect("netmux connect");
    assert!(
        out.success(),
        "connect failed: {}{}",
        out.stdout,
        out.stderr
    );
    let out = nm.cli(["start", ENDPOINT, "+"]).expect("netmux start");
    assert!(out.success(), "start failed: {}{}", out.stdout, out.stderr);
    World {
        sb,
        nm,
        _backends: backends,
    }
}

/// The local address the daemon gave `name` in the workstation hosts file.
fn local(sb: &Sandbox, name: &str, port: u16) -> SocketAddr {
    common::hosts_addr(sb, &format!("{name}.{ENDPOINT}.svc.cluster.local"), port)
}

#[test]
fn http_by_name_with_curl_and_ls_table() {
    let sb = sandbox();
    let w = world(&sb);
    on_failure_dump(&sb, || {
        let out = curl(
            w.sb,
            Side::Workstation,
            "http://http-echo.demo.svc.cluster.local/hello",
        );
        assert!(out.success(), "curl: {}", out.stderr);
        assert!(
            out.stdout.starts_with("hello from nx-echo") && out.stdout.contains("path=/hello"),
            "{}",
            out.stdout
        );
        // Short names too (the hosts block has SVC and SVC.NS.svc; SVC.NS
        // could be any two-label name, so only DNS search domains give it).
        let out = curl(w.sb, Side::Workstation, "http://http-echo.demo.svc/short");
        assert!(
            out.success() && out.stdout.contains("path=/short"),
            "{}",
            out.stderr
        );

        let ls = w.nm.cli(["ls"]).unwrap().ok().unwrap().stdout;
        let header = ls.lines().next().unwrap_or_default();
        let cols: Vec<&str> = header.split_whitespace().collect();
        assert_eq!(
            cols,
            ["#", "NAME", "PARENT", "DESCRIPTION", "STATUS"],
            "{ls}"
        );
        assert!(
            ls.lines()
                .any(|l| l.starts_with("EP") && l.contains(ENDPOINT) && l.ends_with("connected")),
            "{ls}"
        );
        let http_row = ls
            .lines()
            .find(|l| l.starts_with("SVC") && l.contains("demo/http-echo"))
            .unwrap_or_else(|| panic!("{ls}"));
        assert!(
            http_row.contains("L2C: 127.77.") && http_row.contains(":80 => 10.96.0.10:8080"),
            "{http_row}"
        );
        assert!(http_row.ends_with("on"), "{http_row}");

        // The original's verb aliases, and clear errors for unknown names.
        let out = w.nm.cli(["-", ENDPOINT, "tcp-echo"]).unwrap();
        assert!(out.success(), "`-` stops: {}", out.stderr);
        let ls = w.nm.cli(["l"]).unwrap().ok().unwrap().stdout;
        assert!(
            ls.lines()
                .any(|l| l.contains("demo/tcp-echo") && l.ends_with("off")),
            "{ls}"
        );
        assert!(w.nm.cli(["+", ENDPOINT, "tcp-echo"]).unwrap().success());
        let out = w.nm.cli(["connect", "nope"]).unwrap();
        assert!(
            !out.success() && out.stderr.contains("unknown endpoint \"nope\""),
            "{}",
            out.stderr
        );
        let out = w.nm.cli(["start", ENDPOINT, "no-such-service"]).unwrap();
        assert!(
            !out.success() && out.stderr.contains("no service on demo matches"),
            "{}",
            out.stderr
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&w.nm.layout.socket)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o660, "control socket mode");

        // Directly, the cluster address is unroutable: nothing bypasses netmux.
        let out = curl(w.sb, Side::Workstation, "http://10.96.0.10:8080/");
        assert!(!out.success());
    });
}

#[test]
fn hundred_mib_each_way_byte_exact() {
    let sb = sandbox();
    let w = world(&sb);
    let sink = local(&sb, "sink", 9001);
    let source = local(&sb, "source", 9002);
    on_failure_dump(&sb, || {
        w.sb.ws()
            .block_on(|| async move {
                check::upload_to_sink(sink, 100 * MIB).await?;
                check::download_from_source(source, 100 * MIB).await
            })
            .unwrap()
            .expect("100 MiB up and 100 MiB down, byte-exact");
    });
}

/// On a path that carries jumbo frames (the veth at MTU 9000 before the
/// daemon connects) the tunnel's MTU discovery finds them: data crosses
/// byte-exact and `netmux status` names the packet size.
#[test]
fn a_jumbo_path_is_found_and_named_in_status() {
    let sb = sandbox();
    set_mtu(&sb, 9000);
    let w = world(&sb);
    let sink = local(&sb, "sink", 9001);
    on_failure_dump(&sb, || {
        w.sb.ws()
            .block_on(|| async move { check::upload_to_sink(sink, 32 * MIB).await })
            .unwrap()
            .expect("32 MiB up, byte-exact");
        let mut status = String::new();
        let found = netmux_testbed::wait_until("jumbo packets in status", T, || {
            status = w.nm.cli(["status"]).map(|o| o.stdout).unwrap_or_default();
            status.contains("path: RTT ") && status.contains("packets of 8952 bytes (jumbo frames)")
        });
        assert!(found.is_ok(), "{status}");
    });
}

/// A workstation that moves from a jumbo-frame network onto one of 1,500
/// bytes while the session is healthy (a new address, no silence): the
/// daemon sees the new address, migrates the session and restarts MTU
/// discovery, so data crosses byte-exact and the path settles at the new
/// network's packet size. (Without the restart the daemon kept sending
/// 8,952-byte packets until quinn's black hole detection fell back to
/// 1,200 bytes, for a minute.)
#[test]
fn a_move_to_a_network_with_smaller_packets_restarts_mtu_discovery() {
    smaller_packets_while_healthy(true, "the local address changed; migrated the session");
}

/// The same drop from 9,000 to 1,500 bytes on the same address (a jumbo
/// network reconfigured, a tunnel interface in the way): the route's MTU
/// no longer carries the session's packets, and the daemon restarts the
/// path the same way.
#[test]
fn a_route_whose_mtu_shrinks_restarts_mtu_discovery() {
    smaller_packets_while_healthy(
        false,
        "the route's MTU no longer carries the session's packets; migrated the session",
    );
}

fn smaller_packets_while_healthy(new_address: bool, logged: &str) {
    let sb = sandbox();
    set_mtu(&sb, 9000);
    let w = world(&sb);
    let sink = local(&sb, "sink", 9001);
    let source = local(&sb, "source", 9002);
    on_failure_dump(&sb, || {
        let upload = |mib: u64| {
            w.sb.ws()
                .block_on(|| async move { check::upload_to_sink(sink, mib * MIB).await })
                .unwrap()
                .unwrap_or_else(|e| panic!("{mib} MiB up, byte-exact: {e}"))
        };
        let packet = || {
            let status = w.nm.cli(["status"]).map(|o| o.stdout).unwrap_or_default();
            let size = status
                .split("packets of ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse::<u16>().ok());
            (size, status)
        };
        upload(8);
        let found =
            netmux_testbed::wait_until("jumbo packets in status", T, || packet().0 == Some(8952));
        assert!(found.is_ok(), "{}", packet().1);

        set_mtu(&sb, 1500);
        if new_address {
            sb.set_ws_address(sb.subnet_addr(77))
                .expect("move the workstation address");
        }
        let moved = netmux_testbed::wait_until("the daemon migrates", T, || {
            w.nm.daemon.log().contains(logged)
        });
        assert!(moved.is_ok(), "{}", w.nm.daemon.log());
        upload(32);
        // And the other way: the server's end of the path restarted too
        // (a new address gives it a new path; on the same address the
        // vendored quinn-proto's change 9 restarts its MTU discovery).
        w.sb.ws()
            .block_on(|| async move { check::download_from_source(source, 32 * MIB).await })
            .unwrap()
            .expect("32 MiB down, byte-exact");
        let (size, status) = packet();
        assert!(
            size.is_some_and(|n| (1400..=1472).contains(&n)),
            "the path settles at the 1,500-byte network's packets (IPv4: UDP payloads up to 1,472 bytes): {status}"
        );
    });
}

#[test]
fn two_hundred_concurrent_connections_byte_exact() {
    let sb = sandbox();
    let w = world(&sb);
    let echo = local(&sb, "tcp-echo", 9000);
    on_failure_dump(&sb, || {
        let failures =
            w.sb.ws()
                .block_on(|| check::concurrent_echoes(echo, 200, 64 * 1024, 97))
                .unwrap();
        assert!(
            failures.is_empty(),
            "{} of 200 failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    });
}

#[test]
fn half_close_client_still_receives_the_reply() {
    let sb = sandbox();
    let w = world(&sb);
    let echo = local(&sb, "tcp-echo", 9000);
    on_failure_dump(&sb, || {
        let got =
            w.sb.ws()
                .block_on(|| async move {
                    let mut s = tokio::net::TcpStream::connect(echo).await?;
                    s.write_all(b"ping after which I stop writing").await?;
                    s.shutdown().await?; // FIN: our write side is done
                    let mut reply = Vec::new();
                    s.read_to_end(&mut reply).await?;
                    Ok::<_, std::io::Error>(reply)
                })
                .unwrap()
                .expect("half-closed exchange");
        assert_eq!(got, b"ping after which I stop writing");
    });
}

#[test]
fn refusing_target_gives_a_prompt_reset() {
    let sb = sandbox();
    let w = world(&sb);
    let refuser = local(&sb, "refuser", 9003);
    on_failure_dump(&sb, || {
        let (result, elapsed) =
            w.sb.ws()
                .block_on(|| async move {
                    let started = Instant::now();
                    let r = tokio::time::timeout(Duration::from_secs(1), async {
                        let mut s = tokio::net::TcpStream::connect(refuser).await?;
                        s.write_all(b"hello?").await?;
                        let mut buf = [0u8; 16];
                        s.read(&mut buf).await
                    })
                    .await;
                    (r, started.elapsed())
                })
                .unwrap();
        match result {
            Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            Ok(Ok(n)) => panic!("expected a reset, read {n} bytes"),
            Err(_) => panic!("no reset within 1s (hang) after {elapsed:?}"),
        }
        let metrics = w
            .sb
            .ws()
            .block_on(|| check::http_get("127.0.0.1:9477".parse().expect("addr"), "m", "/metrics"))
            .unwrap()
            .expect("daemon metrics");
        let text = String::from_utf8_lossy(&metrics.1).into_owned();
        assert!(
            text.lines()
                .any(|l| l.starts_with("netmux_daemon_connection_errors_total")
                    && l.contains("reason=\"refused\"")
                    && l.contains("service=\"demo/refuser\"")),
            "{text}"
        );
        // Structured log fields name the endpoint, service and connection.
        let log = w.nm.daemon.log();
        assert!(
            log.lines().any(|l| l.contains("server did not connect")
                && l.contains("endpoint=demo")
                && l.contains("service=demo/refuser")
                && l.contains("conn=")),
            "{log}"
        );
    });
}

#[test]
fn server_killed_shows_down_then_reconnects_by_itself() {
    let sb = sandbox();
    let mut w = world(&sb);
    w.nm.server.kill();
    // `down` once a path probe meets the closed port (ICMP port
    // unreachable); `degraded` when that ICMP is rate limited away (the
    // kernel's per-peer ICMP budget is shared with the session's own
    // packets). From either, the daemon finds the restarted server by
    // itself: refused, or "answers but no longer knows this session".
    on_failure_dump(&sb, || {
        w.nm.wait_for_ls("endpoint down or degraded", T, |ls| {
            ls.contains("\"status\": \"down\"")
                || ls.contains("\"status\":\"down\"")
                || ls.contains("degraded")
        })
        .expect("ls shows the endpoint down or degraded");
    });
    let out = curl(
        &sb,
        Side::Workstation,
        "http://http-echo.demo.svc.cluster.local/while-down",
    );
    assert!(
        !out.success(),
        "a connection while the server is down must fail, got {}",
        out.stdout
    );
    restart_server(&sb, &mut w.nm);
    on_failure_dump(&sb, || {
        let mut last = String::new();
        netmux_testbed::wait_until("the daemon reconnects by itself", 3 * T, || {
            let out = curl(
                &sb,
                Side::Workstation,
                "http://http-echo.demo.svc.cluster.local/after",
            );
            last = out.stderr.clone();
            out.success() && out.stdout.contains("path=/after")
        })
        .unwrap_or_else(|e| panic!("{e}: {last}"));
        w.nm.wait_for_ls("endpoint connected again", T, |ls| {
            ls.contains("connected") && !ls.contains("degraded")
        })
        .expect("ls shows the endpoint connected");
    });
}

/// A QUIC client that trusts the server's CA, for misbehaving-peer tests.
async fn raw_client(ca_pem: String, server: SocketAddr) -> quinn::Connection {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.expect("CA pem")).expect("CA cert");
    }
    // quinn's default transport, as a plain client's.
    let config =
        netmux_common::tunnel::quic::client_config(roots, quinn::TransportConfig::default())
            .expect("client config");
    let mut ep =
        quinn::Endpoint::client("0.0.0.0:0".parse().expect("addr")).expect("client endpoint");
    ep.set_default_client_config(config);
    ep.connect(server, "netmux-server")
        .expect("connect")
        .await
        .expect("handshake")
}

#[test]
fn garbage_on_a_control_stream_drops_only_that_client() {
    let sb = sandbox();
    let w = world(&sb);
    let ca = std::fs::read_to_string(w.nm.layout.ca_file()).expect("ca.pem");
    let quic = w.nm.layout.quic;
    on_failure_dump(&sb, || {
        let closed = w
            .sb
            .ws()
            .block_on(|| async move {
                let mut results = Vec::new();
                // 1: not even a hello.
                let conn = raw_client(ca.clone(), quic).await;
                let (mut send, _recv) = conn.open_bi().await.expect("stream");
                send.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .expect("write");
                results.push(tokio::time::timeout(Duration::from_secs(10), conn.closed()).await);
                // 2: a valid hello, then a corrupt frame.
                let conn = raw_client(ca, quic).await;
                let (mut send, mut recv) = conn.open_bi().await.expect("stream");
                let mut hello = bytes::BytesMut::new();
                netmux_common::proto::hello::Hello::new(
                    "fuzzer",
                    netmux_common::proto::hello::Credential::Bearer(TOKEN.into()),
                )
                .encode(&mut hello);
                send.write_all(&hello).await.expect("hello");
                let mut buf = [0u8; 256];
                let _ = recv.read(&mut buf).await; // the reply and catalog begin
                send.write_all(&[0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef])
                    .await
                    .expect("garbage");
                results.push(tokio::time::timeout(Duration::from_secs(10), conn.closed()).await);
                results
            })
            .unwrap();
        for (i, r) in closed.iter().enumerate() {
            match r {
                Ok(quinn::ConnectionError::ApplicationClosed(c)) => assert_eq!(
                    c.error_code,
                    quinn::VarInt::from_u32(netmux_common::proto::error_code::PROTOCOL_VIOLATION),
                    "client {i}: {c:?}"
                ),
                other => panic!("client {i} was not dropped for a protocol violation: {other:?}"),
            }
        }
        // The well-behaved daemon is unaffected.
        let out = curl(
            w.sb,
            Side::Workstation,
            "http://http-echo.demo.svc.cluster.local/still-fine",
        );
        assert!(
            out.success() && out.stdout.contains("path=/still-fine"),
            "{}",
            out.stderr
        );
    });
}

#[test]
fn wrong_token_is_refused_and_nothing_is_proxied() {
    let sb = sandbox();
    let nm = Netmux::start_with_token(&sb, &specs(), "wrong-token-but-long-enough").expect("start");
    let _b = backends(&sb);
    on_failure_dump(&sb, || {
        let out = nm.cli(["connect", ENDPOINT]).unwrap();
        let said = format!("{}{}", out.stdout, out.stderr);
        assert!(said.contains("invalid token"), "{said}");
        let status = nm.cli(["status"]).unwrap().stdout;
        assert!(
            status.contains("down") && status.contains("invalid token"),
            "{status}"
        );
        let out = nm.cli(["start", ENDPOINT, "+"]).unwrap();
        assert!(
            !out.success(),
            "nothing may be started without a session: {}",
            out.stdout
        );
        let hosts = std::fs::read_to_string(sb.ws_hosts_file()).unwrap_or_default();
        assert!(!hosts.contains("netmux"), "{hosts}");
    });
}

/// A route whose MTU cannot carry QUIC's 1,200-byte packets (a tunnel
/// interface with a small MTU): `netmux connect` says at once why the
/// endpoint is not up and what to do (the daemon keeps retrying, as for
/// any failure), instead of waiting for a handshake that cannot finish.
#[test]
fn a_route_too_small_for_quic_is_named_with_the_fix() {
    let sb = sandbox();
    set_mtu(&sb, 1200);
    let nm = Netmux::start(&sb, &specs()).expect("start");
    on_failure_dump(&sb, || {
        let out = nm.cli(["connect", ENDPOINT]).unwrap();
        let said = format!("{}{}", out.stdout, out.stderr);
        assert!(
            said.contains("is not up yet")
                && said.contains("carries UDP payloads of at most 1172 bytes (MTU 1200)")
                && said.contains("below the 1200 QUIC needs")
                && said.contains("transport = \"tcp\""),
            "{said}"
        );
        let status = nm.cli(["status"]).unwrap().stdout;
        assert!(status.contains("below the 1200 QUIC needs"), "{status}");
        // `netmux doctor` names it too, instead of "no answer over UDP".
        let check = common::doctor_check(&nm, &format!("endpoint {ENDPOINT}"));
        assert_eq!(check["status"], "fail", "{check}");
        assert!(
            check["detail"]
                .as_str()
                .is_some_and(|d| d.contains("at most 1172 bytes (MTU 1200)")),
            "{check}"
        );
        assert!(
            check["fix"]
                .as_str()
                .is_some_and(|f| f.contains("transport = \"tcp\"")),
            "{check}"
        );
    });
}

#[test]
fn migration_carries_a_live_transfer_across_an_address_change() {
    let sb = sandbox();
    let w = world(&sb);
    let sink = local(&sb, "sink", 9001);
    let new_addr = sb.subnet_addr(77);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    on_failure_dump(&sb, || {
        std::thread::scope(|s| {
            let transfer = s.spawn(|| {
                w.sb.ws().block_on(|| async move {
                    let mut sock = tokio::net::TcpStream::connect(sink).await?;
                    let mut pattern = sample_apps::Pattern::new();
                    let mut sum = sample_apps::StreamSum::new();
                    let mut buf = vec![0u8; 256 * 1024];
                    let total = 200 * MIB;
                    let mut sent = 0u64;
                    let mut signalled = false;
                    while sent < total {
                        let n = buf.len().min((total - sent) as usize);
                        pattern.fill(&mut buf[..n]);
                        sum.update(&buf[..n]);
                        sock.write_all(&buf[..n]).await?;
                        sent += n as u64;
                        if !signalled && sent >= 20 * MIB {
                            let _ = tx.send(());
                            signalled = true;
                            // Keep sending slowly for a moment so packets
                            // cross the address change.
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                    }
                    sock.shutdown().await?;
                    let mut reply = String::new();
                    sock.read_to_string(&mut reply).await?;
                    Ok::<_, std::io::Error>((sum.finish(), reply))
                })
            });
            rx.recv_timeout(T).expect("transfer started");
            w.sb.set_ws_address(new_addr)
                .expect("move the workstation address");
            let (sent, reply) = transfer
                .join()
                .expect("transfer thread")
                .expect("namespace")
                .expect("transfer survives the address change");
            let got = sample_apps::Summary::parse(&reply)
                .unwrap_or_else(|| panic!("sink said {reply:?}"));
            assert_eq!(got, sent, "byte-exact across migration");
        });
        let out = curl(
            w.sb,
            Side::Workstation,
            "http://http-echo.demo.svc.cluster.local/after-move",
        );
        assert!(out.success(), "{}", out.stderr);
    });
}
