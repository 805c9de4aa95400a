//! Reload without dropping tunnels (issue 8): a live TCP connection through
//! an unchanged endpoint survives `netmux reload` and SIGHUP after an
//! unrelated configuration change, byte-exact; a changed endpoint is
//! reconnected and its started services come back.
//!
//! Needs root; run with `--test-threads=1` (as `cargo xtask test` does).
//! Every address used is loopback or assigned inside the test's namespaces.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use netmux_testbed::netmux::{Netmux, ServiceSpec, ENDPOINT};
use netmux_testbed::{Sandbox, Side};

mod common;
use common::{ip, nx_echo, on_failure_dump, sandbox, T};

fn local(sb: &Sandbox, fqdn: &str, port: u16) -> SocketAddr {
    common::hosts_addr(sb, fqdn, port)
}

/// Sends `len` patterned bytes (seeded by `seed`) and checks the echo.
fn round_trip(s: &mut TcpStream, len: usize, seed: u8) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    s.write_all(&data).expect("write through the tunnel");
    let mut back = vec![0u8; len];
    s.read_exact(&mut back).expect("read the echo");
    assert!(back == data, "echo differs after {} bytes", len);
}

fn append_endpoint(nm: &Netmux<'_>, name: &str, server: &str) {
    let mut text = std::fs::read_to_string(&nm.layout.daemon_config).expect("daemon config");
    text.push_str(&format!(
        "\n[[endpoint]]\nname = \"{name}\"\nserver = \"{server}\"\nca_file = \"{}\"\nautostart = false\n",
        nm.layout.ca_file().display()
    ));
    std::fs::write(&nm.layout.daemon_config, text).expect("write daemon config");
}

fn wait_for_endpoint_row(nm: &Netmux<'_>, name: &str) {
    let deadline = Instant::now() + T;
    loop {
        let ls = nm.ls().expect("netmux ls");
        if ls.iter().any(|r| r["kind"] == "EP" && r["name"] == name) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "endpoint {name} never listed: {ls:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_live_connection_survives_reload_and_sighup() {
    let sb = sandbox();
    let spec = ServiceSpec::l2c("tcp-echo", ip("10.96.0.11"), 9000, 9000);
    let nm = Netmux::start(&sb, std::slice::from_ref(&spec)).expect("netmux start");
    let _backend = nx_echo(&sb, Side::Cluster, "backend", "tcp", spec.target());
    on_failure_dump(&sb, || {
        assert!(nm.cli(["connect", ENDPOINT]).expect("connect").success());
        assert!(nm.cli(["start", ENDPOINT, "+"]).expect("start").success());
        let echo = local(&sb, &spec.fqdn(), 9000);
        let mut conn = sb
            .ws()
            .run(|| TcpStream::connect_timeout(&echo, T))
            .expect("entering the workstation namespace")
            .expect("connecting through the tunnel");
        conn.set_read_timeout(Some(T)).expect("timeout");
        round_trip(&mut conn, 256 * 1024, 1);

        // An unrelated change: a second endpoint (never connected).
        append_endpoint(&nm, "other", "127.0.0.1:9");
        let out = nm.cli(["reload"]).expect("netmux reload");
        assert!(out.success(), "reload: {}{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains(&format!("kept {ENDPOINT}")),
            "{}",
            out.stdout
        );
        wait_for_endpoint_row(&nm, "other");
        round_trip(&mut conn, 256 * 1024, 2);

        // The same through SIGHUP (systemctl reload / kill -HUP).
        append_endpoint(&nm, "third", "127.0.0.1:9");
        nm.daemon
            .signal(nix::sys::signal::Signal::SIGHUP)
            .expect("SIGHUP to netmuxd");
        wait_for_endpoint_row(&nm, "third");
        round_trip(&mut conn, 256 * 1024, 3);
        assert_eq!(
            nm.status_of("EP", ENDPOINT).expect("ls").as_deref(),
            Some("connected")
        );

        // A broken file leaves the running configuration alone.
        let good = std::fs::read_to_string(&nm.layout.daemon_config).expect("config");
        std::fs::write(&nm.layout.daemon_config, format!("{good}\nbogus = 1\n")).expect("write");
        let out = nm.cli(["reload"]).expect("netmux reload");
        assert!(!out.success());
        assert!(
            out.stderr.contains("bogus") && out.stderr.contains("unchanged"),
            "{}",
            out.stderr
        );
        round_trip(&mut conn, 64 * 1024, 4);
    });
}

#[test]
fn a_changed_endpoint_is_reconnected_and_its_services_return() {
    let sb = sandbox();
    let spec = ServiceSpec::l2c("tcp-echo", ip("10.96.0.11"), 9000, 9000);
    let nm = Netmux::start(&sb, std::slice::from_ref(&spec)).expect("netmux start");
    let _backend = nx_echo(&sb, Side::Cluster, "backend", "tcp", spec.target());
    on_failure_dump(&sb, || {
        assert!(nm.cli(["connect", ENDPOINT]).expect("connect").success());
        assert!(nm.cli(["start", ENDPOINT, "+"]).expect("start").success());
        // Change the endpoint itself (its cluster domain).
        let text = std::fs::read_to_string(&nm.layout.daemon_config).expect("config");
        let changed = text.replace(
            "cluster_domain = \"cluster.local\"",
            "cluster_domain = \"cluster.test\"",
        );
        assert_ne!(
            text, changed,
            "the testbed config has no cluster_domain line"
        );
        std::fs::write(&nm.layout.daemon_config, changed).expect("write");
        let out = nm.cli(["reload"]).expect("netmux reload");
        assert!(
            out.success() && out.stdout.contains(&format!("reconnected {ENDPOINT}")),
            "{}{}",
            out.stdout,
            out.stderr
        );
        nm.wait_for_status("SVC", &format!("{}/{}", spec.namespace, spec.name), "on", T)
            .expect("service back on after the reconnect");
        let fqdn = spec.fqdn().replace("cluster.local", "cluster.test");
        let deadline = Instant::now() + T;
        while !std::fs::read_to_string(sb.ws_hosts_file())
            .unwrap_or_default()
            .contains(&fqdn)
        {
            assert!(Instant::now() < deadline, "{fqdn} never written");
            std::thread::sleep(Duration::from_millis(100));
        }
        let echo = local(&sb, &fqdn, 9000);
        let mut conn = sb
            .ws()
            .run(|| TcpStream::connect_timeout(&echo, T))
            .expect("namespace")
            .expect("connecting through the new connection");
        conn.set_read_timeout(Some(T)).expect("timeout");
        round_trip(&mut conn, 64 * 1024, 5);
    });
}
