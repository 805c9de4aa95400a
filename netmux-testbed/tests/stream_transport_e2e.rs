//! End-to-end tests of QUIC over a TCP stream (issue 5: the transport
//! `kubectl port-forward` needs): the daemon's endpoint uses
//! `transport = "tcp"`, the server's `stream_listen` feeds the stream into
//! its QUIC endpoint. Real binaries in two network namespaces, real curl.
//!
//! Need root; run with `--test-threads=1` (as `cargo xtask test` does).
//! Every address used is loopback or assigned inside the test's namespaces.

use netmux_testbed::netmux::{Layout, Netmux, ServiceSpec, ENDPOINT, LOOPBACK, TOKEN};
use netmux_testbed::{check, Process, Sandbox, Side};

mod common;
use common::{curl, ip, nx_echo, on_failure_dump, restart_server, sandbox, set_mtu, MIB, T};

fn specs() -> Vec<ServiceSpec> {
    vec![
        ServiceSpec::l2c("http-echo", ip("10.96.0.10"), 80, 8080),
        ServiceSpec::l2c("sink", ip("10.96.0.12"), 9001, 9001),
        ServiceSpec::l2c("source", ip("10.96.0.13"), 9002, 9002),
        ServiceSpec {
            protocol: "udp",
            ..ServiceSpec::l2c("udp-echo", ip("10.96.0.14"), 7000, 7000)
        },
    ]
}

struct World<'a> {
    nm: Netmux<'a>,
    _backends: Vec<Process>,
}

/// Server (UDP and TCP), daemon over TCP, backends; connected, started.
fn world(sb: &Sandbox) -> World<'_> {
    let layout = Layout::over_tcp(sb);
    let nm = Netmux::start_layout(sb, layout, &specs(), TOKEN, LOOPBACK).unwrap_or_else(|e| {
        sb.dump_logs(50);
        panic!("netmux start: {e}")
    });
    let mut backends: Vec<Process> = specs()
        .iter()
        .zip(["http", "sink", "source"])
        .map(|(s, mode)| {
            nx_echo(
                sb,
                Side::Cluster,
                &format!("backend-{}", s.name),
                mode,
                s.target(),
            )
        })
        .collect();
    backends.push(common::nx_echo_udp(
        sb,
        Side::Cluster,
        "backend-udp-echo",
        "10.96.0.14:7000".parse().expect("addr"),
    ));
    let out = nm.cli(["connect", ENDPOINT]).expect("netmux connect");
    if !out.success() {
        sb.dump_logs(50);
        panic!("connect failed: {}{}", out.stdout, out.stderr);
    }
    let out = nm.cli(["start", ENDPOINT, "+"]).expect("netmux start");
    assert!(out.success(), "start failed: {}{}", out.stdout, out.stderr);
    World {
        nm,
        _backends: backends,
    }
}

fn curl_ok(sb: &Sandbox, path: &str) {
    let out = curl(
        sb,
        Side::Workstation,
        &format!("http://http-echo.{ENDPOINT}.svc.cluster.local{path}"),
    );
    assert!(
        out.success() && out.stdout.contains(&format!("path={path}")),
        "curl {path}: {}{}",
        out.stdout,
        out.stderr
    );
}

/// The daemon's QUIC connection rides the TCP stream: curl by name works
/// and the server saw a datagram stream (its log says so).
#[test]
fn curl_by_name_over_tcp() {
    let sb = sandbox();
    let w = world(&sb);
    on_failure_dump(&sb, || {
        curl_ok(&sb, "/over-tcp");
        let log = w.nm.server.log();
        assert!(
            log.contains("datagram stream accepted"),
            "the server did not see a TCP stream:\n{log}"
        );
    });
}

#[test]
fn ten_mib_each_way_byte_exact_over_tcp() {
    ten_mib_each_way(&sandbox());
}

/// What `netmux connect` tells a user whose route is too small for QUIC
/// (`tunnel_e2e::a_route_too_small_for_quic_is_named_with_the_fix`) works:
/// at MTU 1200, where QUIC over UDP cannot start, QUIC over TCP carries
/// both directions byte-exact.
#[test]
fn over_tcp_works_where_the_route_is_too_small_for_quic() {
    let sb = sandbox();
    set_mtu(&sb, 1200);
    ten_mib_each_way(&sb);
}

fn ten_mib_each_way(sb: &Sandbox) {
    let w = world(sb);
    let addr = |name: &str, port: u16| {
        let fqdn = format!("{name}.{ENDPOINT}.svc.cluster.local");
        let ip =
            w.nm.resolve(&fqdn)
                .unwrap_or_else(|| panic!("{fqdn} not in the hosts file"));
        std::net::SocketAddr::new(ip, port)
    };
    let (sink, source) = (addr("sink", 9001), addr("source", 9002));
    on_failure_dump(sb, || {
        sb.ws()
            .block_on(|| async move {
                check::upload_to_sink(sink, 10 * MIB).await?;
                check::download_from_source(source, 10 * MIB).await
            })
            .unwrap()
            .expect("10 MiB up and 10 MiB down, byte-exact");
    });
}

/// The server goes away: the stream ends, the endpoint goes down, and it
/// comes back by itself over a new stream once the server is back.
#[test]
fn server_restart_reconnects_over_a_new_stream() {
    let sb = sandbox();
    let mut w = world(&sb);
    on_failure_dump(&sb, || curl_ok(&sb, "/before"));
    w.nm.server.kill();
    on_failure_dump(&sb, || {
        w.nm.wait_for_ls("endpoint down", T, |ls| {
            ls.contains("\"status\": \"down\"") || ls.contains("\"status\":\"down\"")
        })
        .expect("ls shows the endpoint down");
    });
    restart_server(&sb, &mut w.nm);
    on_failure_dump(&sb, || {
        w.nm.wait_for_ls("endpoint connected again", T, |ls| ls.contains("connected"))
            .expect("daemon reconnects by itself");
        curl_ok(&sb, "/after");
        let log = w.nm.server.log();
        assert!(
            log.contains("datagram stream accepted"),
            "the restarted server did not see a new TCP stream:\n{log}"
        );
    });
}

/// UDP datagrams ride the same QUIC-over-stream framing (issue 9: what the
/// port-forward transport carries).
#[test]
fn udp_datagrams_over_tcp() {
    let sb = sandbox();
    let _w = world(&sb);
    let hosts = std::fs::read_to_string(sb.ws_hosts_file()).expect("hosts");
    let local: std::net::IpAddr = hosts
        .lines()
        .find(|l| l.contains("udp-echo.demo.svc.cluster.local"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("udp-echo not in\n{hosts}"));
    let to = std::net::SocketAddr::new(local, 7000);
    on_failure_dump(&sb, || {
        let got = sb
            .ws()
            .block_on(|| async move {
                let s = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
                let mut buf = [0u8; 2048];
                let mut got = 0;
                for i in 0u32..200 {
                    s.send_to(&i.to_be_bytes(), to).await?;
                    let r = tokio::time::timeout(
                        std::time::Duration::from_secs(3),
                        s.recv_from(&mut buf),
                    )
                    .await;
                    if let Ok(Ok((n, from))) = r {
                        if n == 4 && buf[..4] == i.to_be_bytes() && from == to {
                            got += 1;
                        }
                    }
                }
                Ok::<_, std::io::Error>(got)
            })
            .unwrap()
            .expect("udp");
        assert_eq!(got, 200, "every datagram echoed through QUIC over TCP");
    });
}
