//! End-to-end tests of UDP services over QUIC datagrams, both directions.
//!
//! Need root; run with `--test-threads=1` (as `cargo xtask test` does).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use netmux_testbed::netmux::{Netmux, ServiceSpec, ENDPOINT};
use netmux_testbed::{check, Process, Sandbox, Side};
use tokio::net::UdpSocket;

mod common;
use common::{ip, nx_echo_udp, on_failure_dump, restart_server, sandbox, T};

fn udp(name: &str, addr: &str, port: u16, target: u16, direction: &'static str) -> ServiceSpec {
    ServiceSpec {
        direction,
        protocol: "udp",
        ..ServiceSpec::l2c(name, ip(addr), port, target)
    }
}

fn dns() -> ServiceSpec {
    udp("dns", "10.96.0.53", 53, 53, "L2C")
}
fn echo() -> ServiceSpec {
    udp("udp-echo", "10.96.0.54", 7000, 7000, "L2C")
}
fn rev_echo() -> ServiceSpec {
    udp("rev-udp", "10.96.0.55", 7100, 17100, "C2L")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal socket address")
}

struct World<'a> {
    nm: Netmux<'a>,
    _procs: Vec<Process>,
}

/// Server (optionally with extra top-level settings), daemon, dnsmasq and
/// UDP echoes; everything started.
fn world<'a>(sb: &'a Sandbox, server_extra: &str) -> World<'a> {
    let mut nm = Netmux::start(sb, &[dns(), echo(), rev_echo()]).unwrap_or_else(|e| {
        sb.dump_logs(50);
        panic!("netmux start: {e}")
    });
    if !server_extra.is_empty() {
        let cfg = std::fs::read_to_string(&nm.layout.server_config).expect("server.toml");
        std::fs::write(&nm.layout.server_config, format!("{server_extra}{cfg}")).expect("write");
        nm.server.kill();
        restart_server(sb, &mut nm);
        sb.wait_for_tcp(Side::Cluster, nm.layout.http, T)
            .expect("server back");
    }
    let dnsmasq = sb
        .process(Side::Cluster, "dnsmasq", "dnsmasq")
        .args([
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=10.96.0.53",
            "--port=53",
            "--address=/svc.example/10.1.2.3",
        ])
        .spawn()
        .expect("dnsmasq (apt-get install dnsmasq-base)");
    let procs = vec![
        dnsmasq,
        nx_echo_udp(sb, Side::Cluster, "udp-echo", addr("10.96.0.54:7000")),
        nx_echo_udp(
            sb,
            Side::Workstation,
            "ws-udp-echo",
            addr("127.0.0.1:17100"),
        ),
    ];
    netmux_testbed::wait_until("connected", T, || {
        nm.cli(["connect", ENDPOINT])
            .map(|o| o.success())
            .unwrap_or(false)
    })
    .expect("connect");
    // --c2l: `+` alone starts L2C services only; rev-udp is C2L.
    netmux_testbed::wait_until("started", T, || {
        nm.cli(["start", "--c2l", ENDPOINT, "+"])
            .map(|o| o.success())
            .unwrap_or(false)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}",
            nm.cli(["start", "--c2l", ENDPOINT, "+"]).map(|o| o.stderr)
        )
    });
    World { nm, _procs: procs }
}

/// The local address the daemon gave `name` (hosts file).
fn local(sb: &Sandbox, name: &str, port: u16) -> SocketAddr {
    let hosts = std::fs::read_to_string(sb.ws_hosts_file()).expect("hosts");
    let fqdn = format!("{name}.{ENDPOINT}.svc.cluster.local");
    let a = hosts
        .lines()
        .find(|l| l.split_whitespace().any(|n| n == fqdn))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{fqdn} not in\n{hosts}"));
    SocketAddr::new(a, port)
}

#[test]
fn dig_through_netmux_with_unconnected_and_connected_sockets() {
    let sb = sandbox();
    let _w = world(&sb, "");
    let server = local(&sb, "dns", 53);
    on_failure_dump(&sb, || {
        let out = sb
            .process(Side::Workstation, "dig", "dig")
            .args([
                &format!("@{}", server.ip()),
                "-p",
                "53",
                "+short",
                "+tries=1",
                "+time=3",
                "web.svc.example",
                "A",
            ])
            .run(T)
            .expect("dig");
        assert!(out.success(), "{}", out.stderr);
        assert_eq!(out.stdout.trim(), "10.1.2.3");
        // The same query from a connected and an unconnected socket; the
        // reply must come from the address the client sent to.
        let (from_unconnected, connected_ok) = sb
            .ws()
            .block_on(|| async move {
                let query = dns_query("api.svc.example");
                let s = UdpSocket::bind("0.0.0.0:0").await?;
                s.send_to(&query, server).await?;
                let mut buf = [0u8; 512];
                let (n, from) =
                    tokio::time::timeout(Duration::from_secs(3), s.recv_from(&mut buf)).await??;
                let answered = buf[..n].windows(4).any(|w| w == [10, 1, 2, 3]);
                let c = UdpSocket::bind("0.0.0.0:0").await?;
                c.connect(server).await?;
                c.send(&query).await?;
                let n2 = tokio::time::timeout(Duration::from_secs(3), c.recv(&mut buf)).await??;
                let answered2 = buf[..n2].windows(4).any(|w| w == [10, 1, 2, 3]);
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((from, answered && answered2))
            })
            .unwrap()
            .expect("queries");
        assert_eq!(
            from_unconnected, server,
            "reply seen from the service address"
        );
        assert!(connected_ok, "both sockets got the answer");
    });
}

/// A minimal DNS query for an A record.
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Sends `count` numbered datagrams with a window, returns the numbers
/// echoed back and whether every reply came from `to`.
async fn echo_many(to: SocketAddr, count: u32) -> std::io::Result<(HashSet<u32>, bool)> {
    let s = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).await?;
    let mut got = HashSet::new();
    let mut all_from_service = true;
    let mut buf = [0u8; 2048];
    let window = 16u32;
    let mut next = 0u32;
    while (got.len() as u32) < count {
        while next < count && next < got.len() as u32 + window {
            let mut d = next.to_be_bytes().to_vec();
            d.resize(200, 0xab);
            s.send_to(&d, to).await?;
            next += 1;
        }
        match tokio::time::timeout(Duration::from_secs(3), s.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => {
                all_from_service &= from == to;
                if n >= 4 {
                    got.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                }
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => break, // lost: reported by the caller's count check
        }
    }
    Ok((got, all_from_service))
}

#[test]
fn ten_thousand_datagrams_echoed_none_lost_both_directions() {
    let sb = sandbox();
    let _w = world(&sb, "");
    let to = local(&sb, "udp-echo", 7000);
    on_failure_dump(&sb, || {
        let (got, from_service) = sb
            .ws()
            .block_on(|| echo_many(to, 10_000))
            .unwrap()
            .expect("L2C echo");
        assert_eq!(got.len(), 10_000, "L2C: datagrams lost");
        assert!(
            from_service,
            "every reply must come from the service address"
        );
        // C2L: a cluster client reaches the workstation's UDP echo.
        let (got, from_service) = sb
            .cluster()
            .block_on(|| echo_many(addr("10.96.0.55:7100"), 2_000))
            .unwrap()
            .expect("C2L echo");
        assert_eq!(got.len(), 2_000, "C2L: datagrams lost");
        assert!(from_service);
    });
}

fn server_metric(sb: &Sandbox, nm: &Netmux<'_>, name: &str, labels: &[&str]) -> f64 {
    let http = nm.layout.http;
    let (_, body) = sb
        .cluster()
        .block_on(|| check::http_get(http, "m", "/metrics"))
        .unwrap()
        .expect("server metrics");
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn flows_expire_when_idle_and_are_bounded_per_daemon() {
    let sb = sandbox();
    let w = world(&sb, "udp_idle_timeout_ms = 600\nmax_udp_flows = 3\n");
    let to = local(&sb, "udp-echo", 7000);
    on_failure_dump(&sb, || {
        // Five clients, five flows: three are served, two refused.
        let answered = sb
            .ws()
            .block_on(|| async move {
                let mut socks = Vec::new();
                for _ in 0..5 {
                    let s = UdpSocket::bind("0.0.0.0:0").await?;
                    s.send_to(b"hi", to).await?;
                    socks.push(s);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let mut answered = 0;
                for s in &socks {
                    let mut buf = [0u8; 16];
                    if tokio::time::timeout(Duration::from_millis(700), s.recv_from(&mut buf))
                        .await
                        .is_ok()
                    {
                        answered += 1;
                    }
                }
                Ok::<_, std::io::Error>(answered)
            })
            .unwrap()
            .expect("clients");
        assert_eq!(answered, 3, "max_udp_flows = 3");
        assert!(
            server_metric(
                &sb,
                &w.nm,
                "netmux_server_udp_drops_total",
                &["reason=\"flow_limit\""]
            ) >= 2.0
        );
        // Idle flows are closed: the gauge returns to zero.
        netmux_testbed::wait_until("flows expire", T, || {
            server_metric(
                &sb,
                &w.nm,
                "netmux_server_udp_flows_active",
                &["service=\"demo/udp-echo\""],
            ) == 0.0
        })
        .expect("idle flows expire");
        // And new flows are accepted again.
        let (got, _) = sb
            .ws()
            .block_on(|| echo_many(to, 10))
            .unwrap()
            .expect("after expiry");
        assert_eq!(got.len(), 10);
    });
}

#[test]
fn an_unpublished_udp_port_gets_nothing() {
    let sb = sandbox();
    let _w = world(&sb, "");
    let unpublished = local(&sb, "udp-echo", 7001);
    on_failure_dump(&sb, || {
        let r = sb
            .ws()
            .block_on(|| async move {
                let s = UdpSocket::bind("0.0.0.0:0").await?;
                s.connect(unpublished).await?;
                s.send(b"x").await?;
                let mut buf = [0u8; 8];
                match tokio::time::timeout(Duration::from_secs(1), s.recv(&mut buf)).await {
                    Ok(r) => r.map(Some),
                    Err(_) => Ok(None),
                }
            })
            .unwrap();
        assert!(
            !matches!(r, Ok(Some(_))),
            "no answer from an unpublished port: {r:?}"
        );
    });
}

#[test]
fn a_datagram_too_large_for_the_path_is_dropped_and_counted() {
    let sb = sandbox();
    let _w = world(&sb, "");
    let to = local(&sb, "udp-echo", 7000);
    on_failure_dump(&sb, || {
        let (big, small) = sb
            .ws()
            .block_on(|| async move {
                let s = UdpSocket::bind("0.0.0.0:0").await?;
                s.send_to(&[7u8; 4000], to).await?;
                let mut buf = [0u8; 8192];
                let big = tokio::time::timeout(Duration::from_millis(700), s.recv_from(&mut buf))
                    .await
                    .is_ok();
                s.send_to(&[7u8; 500], to).await?;
                let small = tokio::time::timeout(Duration::from_secs(3), s.recv_from(&mut buf))
                    .await
                    .is_ok();
                Ok::<_, std::io::Error>((big, small))
            })
            .unwrap()
            .expect("datagrams");
        assert!(
            !big,
            "a 4000-byte datagram cannot cross a 1500-byte path as one QUIC datagram"
        );
        assert!(small, "the flow still works for datagrams that fit");
        let (_, body) = sb
            .ws()
            .block_on(|| check::http_get(addr("127.0.0.1:9477"), "m", "/metrics"))
            .unwrap()
            .expect("daemon metrics");
        let text = String::from_utf8_lossy(&body).into_owned();
        assert!(
            text.lines()
                .any(|l| l.starts_with("netmux_daemon_udp_drops_total")
                    && l.contains("reason=\"too_large\"")
                    && l.contains("service=\"demo/udp-echo\"")),
            "{text}"
        );
    });
}
