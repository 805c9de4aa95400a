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
use common::{curl, ip, nx_echo, on_failure_dump, restart_server, sandbox, MIB, T};

fn specs() -> Vec<ServiceSpec> {
    vec![
        ServiceSpec::l2c("http-echo", ip("10.96.0.10"), 80, 8080),
        ServiceSpec::l2c("sink", ip("10.96.0.12"), 9001, 9001),
        ServiceSpec::l2c("source", ip("10.96.0.13"), 9002, 9002),
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
    let backends = specs()
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
    let sb = sandbox();
    let w = world(&sb);
    let addr = |name: &str, port: u16| {
        let fqdn = format!("{name}.{ENDPOINT}.svc.cluster.local");
        let ip =
            w.nm.resolve(&fqdn)
                .unwrap_or_else(|| panic!("{fqdn} not in the hosts file"));
        std::net::SocketAddr::new(ip, port)
    };
    let (sink, source) = (addr("sink", 9001), addr("source", 9002));
    on_failure_dump(&sb, || {
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
