//! End-to-end tests of the embedded DNS server (`src/dns/`).
//!
//! * `dig_*`: the server runs in this process on 127.0.0.1 (port 0), fed a
//!   names channel like the daemon's; `dig` asks it for every record kind,
//!   over UDP and TCP, and for names outside the cluster domain; garbage
//!   packets get FORMERR or nothing and never stop it.
//! * `namespace_*`: netmuxd in the testbed's workstation namespace with
//!   `dns.method = "none"` (no hosts block); the namespace's
//!   `/etc/netns/NAME/resolv.conf` points at the daemon's DNS address with a
//!   pod's search list; curl and getent reach the service by short and full
//!   names; a catalog change is visible to the next query; disconnect and
//!   `netmux cleanup` leave hosts file, resolv.conf and links as found.
//!   Needs root and the built binaries (`cargo build --workspace`); skipped
//!   with a loud line otherwise.
//!
//! Run: `cargo test -p netmux-daemon --test dns_e2e -- --test-threads=1`

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use netmux_common::proto::catalog::{Direction, Protocol, Service, ServiceId, ServicePort};
use netmux_daemon::dns::NameRecord;
use netmux_daemon::dns::{DnsEndpoint, DnsServer, Handler};

const T: Duration = Duration::from_secs(20);

fn service(name: &str, aliases: &[&str]) -> Service {
    Service {
        id: ServiceId(1),
        name: name.into(),
        namespace: "demo".into(),
        aliases: aliases.iter().map(|s| s.to_string()).collect(),
        addresses: vec![],
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: 8080,
            protocol: Protocol::Tcp,
        }],
        direction: Direction::L2C,
    }
}

fn record(svc: Service, addrs: &[&str]) -> NameRecord {
    NameRecord {
        endpoint: "demo".into(),
        domain: "cluster.local".into(),
        connected: 1,
        service: svc,
        addrs: addrs.iter().map(|a| a.parse().expect("literal")).collect(),
    }
}

/// `dig @server ARGS +noall +answer +comments`: (status, answer lines).
fn dig(server: SocketAddr, args: &[&str]) -> (String, Vec<String>) {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args(["+noall", "+answer", "+comments", "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("running dig (dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("NO-REPLY")
        .to_owned();
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    (status, answers)
}

/// The rdata (last fields) of each answer line of type `t`.
fn rdata(answers: &[String], t: &str) -> Vec<String> {
    answers
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(3) == Some(&t)).then(|| f[4..].join(" "))
        })
        .collect()
}

fn in_process_server() -> (
    tokio::runtime::Runtime,
    DnsServer,
    tokio::sync::watch::Sender<Arc<Vec<NameRecord>>>,
) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(vec![record(
        service("web", &["web-0.web.demo.svc.cluster.local"]),
        &["127.77.0.1", "fd00::1"],
    )]));
    let endpoints = vec![DnsEndpoint {
        name: "demo".into(),
        domain: "cluster.local".into(),
        default_namespace: "demo".into(),
    }];
    let server = rt
        .block_on(DnsServer::bind(
            "127.0.0.1:0".parse().expect("literal"),
            Handler::new(rx, endpoints),
        ))
        .expect("bind DNS server");
    (rt, server, tx)
}

#[test]
fn dig_every_record_kind_and_outside_names() {
    let (_rt, server, _tx) = in_process_server();
    let s = server.local_addr();

    let (st, a) = dig(s, &["web.demo.svc.cluster.local", "A"]);
    assert_eq!(st, "NOERROR");
    assert_eq!(rdata(&a, "A"), ["127.77.0.1"], "{a:?}");
    let (_, a) = dig(s, &["web.demo.svc.cluster.local", "AAAA"]);
    assert_eq!(rdata(&a, "AAAA"), ["fd00::1"], "{a:?}");
    let (_, a) = dig(s, &["+tcp", "web.demo.svc.cluster.local", "A"]);
    assert_eq!(rdata(&a, "A"), ["127.77.0.1"], "over TCP: {a:?}");
    let (_, a) = dig(s, &["web-0.web.demo.svc.cluster.local", "A"]);
    assert_eq!(rdata(&a, "A"), ["127.77.0.1"], "per-pod name: {a:?}");
    let (_, a) = dig(s, &["web.demo.svc.demo.cluster.local", "A"]);
    assert_eq!(rdata(&a, "A"), ["127.77.0.1"], "endpoint-qualified: {a:?}");
    let (st, a) = dig(s, &["_http._tcp.web.demo.svc.cluster.local", "SRV"]);
    assert_eq!(st, "NOERROR");
    assert_eq!(
        rdata(&a, "SRV"),
        ["0 100 80 web.demo.svc.cluster.local."],
        "{a:?}"
    );

    let (st, a) = dig(s, &["nope.demo.svc.cluster.local", "A"]);
    assert_eq!(st, "NXDOMAIN");
    assert!(a.is_empty());
    let (st, a) = dig(s, &["web.demo.svc.cluster.local", "TXT"]);
    assert_eq!((st.as_str(), a.len()), ("NOERROR", 0), "NODATA");
    for outside in ["example.com", "web", "web.demo", "localhost", "."] {
        let (st, a) = dig(s, &[outside, "A"]);
        assert_eq!(st, "REFUSED", "{outside}");
        assert!(a.is_empty(), "{outside}: {a:?}");
    }
    let (st, _) = dig(s, &["-x", "127.77.0.1"]);
    assert_eq!(st, "REFUSED", "reverse lookups are not ours");
}

#[test]
fn dig_sees_catalog_changes_on_the_next_query() {
    let (_rt, server, tx) = in_process_server();
    let s = server.local_addr();
    let (_, a) = dig(s, &["web.demo.svc.cluster.local", "A"]);
    assert_eq!(rdata(&a, "A"), ["127.77.0.1"]);
    tx.send_replace(Arc::new(vec![
        record(service("web", &[]), &["127.77.0.9"]),
        record(service("api", &[]), &["127.77.0.2"]),
    ]));
    let (_, a) = dig(s, &["web.demo.svc.cluster.local", "A"]);
    assert_eq!(rdata(&a, "A"), ["127.77.0.9"]);
    let (_, a) = dig(s, &["api.demo.svc.cluster.local", "A"]);
    assert_eq!(rdata(&a, "A"), ["127.77.0.2"]);
    tx.send_replace(Arc::new(vec![]));
    let (st, _) = dig(s, &["web.demo.svc.cluster.local", "A"]);
    assert_eq!(st, "NXDOMAIN");
}

#[test]
fn garbage_gets_formerr_or_nothing_and_the_server_keeps_answering() {
    let (_rt, server, _tx) = in_process_server();
    let s = server.local_addr();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    // A header claiming one question, then junk.
    let mut formerr = 0;
    let mut packets: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 5],
        vec![
            0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c,
        ],
        vec![
            0x12, 0x34, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 63, b'a',
        ],
    ];
    // Deterministic pseudo-random packets.
    let mut x: u32 = 0x9e37_79b9;
    for len in 0..200usize {
        packets.push(
            (0..len % 90)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x.to_le_bytes()[0]
                })
                .collect(),
        );
    }
    for p in &packets {
        sock.send_to(p, s).expect("send");
        let mut buf = [0u8; 1500];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            // RCODE is the low 4 bits of byte 3.
            if n >= 4 && buf[3] & 0x0f == 1 {
                formerr += 1;
            }
        }
    }
    assert!(formerr > 0, "some malformed queries get FORMERR");
    let (st, a) = dig(s, &["web.demo.svc.cluster.local", "A"]);
    assert_eq!(st, "NOERROR");
    assert_eq!(rdata(&a, "A"), ["127.77.0.1"]);
}

mod namespace {
    use super::*;
    use netmux_testbed::netmux::{Netmux, ServiceSpec, ENDPOINT, TOKEN};
    use netmux_testbed::{bin, wait_until, Sandbox, Side};

    /// The daemon's DNS address in the workstation namespace.
    const DNS: &str = "127.0.77.53";
    const DAEMON_EXTRA: &str =
        "redirect = \"loopback\"\ndns = { listen = \"127.0.77.53:53\", method = \"none\" }\n";

    /// What the daemon may touch in the workstation namespace.
    fn snapshot(sb: &Sandbox) -> String {
        let etc = sb.ws().etc_dir();
        let links = sb.ws().ip(["-o", "link", "show"]).unwrap_or_default();
        let links: Vec<&str> = links
            .lines()
            .map(|l| l.split_whitespace().nth(1).unwrap_or_default())
            .collect();
        format!(
            "--- hosts\n{}--- resolv.conf\n{}--- links {links:?}\n",
            std::fs::read_to_string(etc.join("hosts")).unwrap_or_default(),
            std::fs::read_to_string(etc.join("resolv.conf")).unwrap_or_default(),
        )
    }

    fn run(sb: &Sandbox, label: &str, program: &str, args: &[&str]) -> netmux_testbed::Output {
        sb.process(Side::Workstation, label, program)
            .args(args)
            .run(T)
            .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
    }

    fn ns_dig(sb: &Sandbox, args: &[&str]) -> (String, Vec<String>) {
        let mut all = vec![
            format!("@{DNS}"),
            "+noall".into(),
            "+answer".into(),
            "+comments".into(),
            "+time=2".into(),
            "+tries=1".into(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let out = run(
            sb,
            "dig",
            "dig",
            &all.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let status = out
            .stdout
            .split("status: ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or("NO-REPLY")
            .to_owned();
        let answers = out
            .stdout
            .lines()
            .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        (status, answers)
    }

    fn getent(sb: &Sandbox, name: &str) -> Option<IpAddr> {
        let out = run(sb, "getent", "getent", &["ahostsv4", name]);
        out.stdout
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().next())
            .and_then(|a| a.parse().ok())
    }

    #[test]
    fn namespace_resolv_conf_at_the_daemon_short_and_full_names_cleanup_restores() {
        if !netmux_testbed::prereq::require(
            "dns_e2e::namespace_resolv_conf_at_the_daemon_short_and_full_names_cleanup_restores",
            netmux_testbed::prereq::root(),
        ) {
            return;
        }
        let sb = Sandbox::new().expect("sandbox");
        let web = ServiceSpec::l2c("web", "10.96.0.20".parse().expect("ip"), 80, 8080);
        let api = ServiceSpec::l2c("api", "10.96.0.21".parse().expect("ip"), 80, 8080);
        // The namespace's resolver: the daemon's server with a pod's search
        // list (what the resolved integration configures on the host).
        std::fs::write(
            sb.ws().etc_dir().join("resolv.conf"),
            format!(
                "nameserver {DNS}\nsearch demo.svc.cluster.local svc.cluster.local cluster.local\n\
                 options ndots:5 timeout:1 attempts:2\n"
            ),
        )
        .expect("resolv.conf");
        let before = snapshot(&sb);
        let nm = Netmux::start_with(&sb, &[web.clone(), api.clone()], TOKEN, DAEMON_EXTRA)
            .expect("netmux starts");
        let _backends: Vec<_> = [&web, &api]
            .iter()
            .map(|s| {
                let p = sb
                    .process(
                        Side::Cluster,
                        &format!("echo-{}", s.name),
                        bin("nx-echo").expect("nx-echo"),
                    )
                    .args(["http", "--listen", &s.target().to_string()])
                    .spawn()
                    .expect("backend");
                sb.wait_for_tcp(Side::Cluster, s.target(), T)
                    .expect("backend up");
                p
            })
            .collect();
        nm.cli(["connect", ENDPOINT])
            .expect("cli")
            .ok()
            .expect("connect");
        nm.wait_for_ls("the catalog", T, |j| j.contains("demo/web"))
            .expect("catalog");
        nm.cli(["start", ENDPOINT, "web"])
            .expect("cli")
            .ok()
            .expect("start web");

        let mut last = None;
        wait_until("web to resolve through the daemon", T, || {
            last = Some(ns_dig(&sb, &["web.demo.svc.cluster.local", "A"]));
            last.as_ref()
                .is_some_and(|(_, a)| !rdata(a, "A").is_empty())
        })
        .unwrap_or_else(|e| panic!("{e}: last dig {last:?}"));

        let status = nm.cli(["status"]).expect("cli").ok().expect("status");
        assert!(
            status.stdout.contains("dns:")
                && status.stdout.contains("none: DNS server on 127.0.77.53:53"),
            "{}",
            status.stdout
        );
        assert_eq!(
            snapshot(&sb),
            before,
            "method none: no hosts block, nothing touched"
        );

        // Every record kind, as the namespace's programs see it.
        let (_, a) = ns_dig(&sb, &["web.demo.svc.cluster.local", "A"]);
        let addr = rdata(&a, "A")[0].clone();
        assert!(
            addr.starts_with("127.77."),
            "loopback alias expected: {addr}"
        );
        let (_, a) = ns_dig(&sb, &["_p80._tcp.web.demo.svc.cluster.local", "SRV"]);
        assert_eq!(rdata(&a, "SRV"), ["0 100 80 web.demo.svc.cluster.local."]);
        let (st, a) = ns_dig(&sb, &["web.demo.svc.cluster.local", "AAAA"]);
        assert_eq!((st.as_str(), a.len()), ("NOERROR", 0));
        assert_eq!(ns_dig(&sb, &["nope.demo.svc.cluster.local"]).0, "NXDOMAIN");
        assert_eq!(ns_dig(&sb, &["example.com"]).0, "REFUSED");

        // getent and curl by short and full names.
        for name in [
            "web",
            "web.demo",
            "web.demo.svc",
            "web.demo.svc.cluster.local",
        ] {
            let got = getent(&sb, name);
            assert_eq!(
                got.map(|a| a.to_string()),
                Some(addr.clone()),
                "getent {name}"
            );
            let url = format!("http://{name}/by-{name}");
            let out = run(&sb, "curl", "curl", &["-sS", "--max-time", "10", &url]);
            assert!(
                out.success() && out.stdout.contains(&format!("path=/by-{name}")),
                "curl {url}: {}{}",
                out.stdout,
                out.stderr
            );
        }
        assert_eq!(getent(&sb, "nope"), None);

        // Catalog changes: the next query sees them.
        nm.cli(["start", ENDPOINT, "api"])
            .expect("cli")
            .ok()
            .expect("start api");
        let (_, a) = ns_dig(&sb, &["api.demo.svc.cluster.local", "A"]);
        assert_eq!(rdata(&a, "A").len(), 1, "api right after start: {a:?}");
        nm.cli(["stop", ENDPOINT, "web"])
            .expect("cli")
            .ok()
            .expect("stop web");
        assert_eq!(ns_dig(&sb, &["web.demo.svc.cluster.local"]).0, "NXDOMAIN");
        nm.set_services(std::slice::from_ref(&web))
            .expect("services");
        let mut last = String::new();
        wait_until("api to leave the catalog and DNS", T, || {
            last = ns_dig(&sb, &["api.demo.svc.cluster.local"]).0;
            last == "NXDOMAIN"
        })
        .unwrap_or_else(|e| panic!("{e}: last status {last}"));

        nm.cli(["disconnect", ENDPOINT])
            .expect("cli")
            .ok()
            .expect("disconnect");
        assert_eq!(snapshot(&sb), before, "after disconnect");
        nm.cli(["cleanup"]).expect("cli").ok().expect("cleanup");
        assert_eq!(snapshot(&sb), before, "after cleanup");
    }

    /// Two endpoints with the same cluster domain (both to the sandbox's
    /// server, the second added by `netmux reload`): the one connected
    /// first owns `web.demo.svc.cluster.local` whichever started `web`
    /// first; each keeps its qualified name; when the first disconnects the
    /// other takes over, and keeps the name when the first connects again.
    #[test]
    fn namespace_first_connected_endpoint_owns_the_plain_name() {
        if !netmux_testbed::prereq::require(
            "dns_e2e::namespace_first_connected_endpoint_owns_the_plain_name",
            netmux_testbed::prereq::root(),
        ) {
            return;
        }
        let sb = Sandbox::new().expect("sandbox");
        let web = ServiceSpec::l2c("web", "10.96.0.20".parse().expect("ip"), 80, 8080);
        let nm = Netmux::start_with(&sb, std::slice::from_ref(&web), TOKEN, DAEMON_EXTRA)
            .expect("netmux starts");
        // A second endpoint, `staging`: the same table under another name.
        let config = std::fs::read_to_string(&nm.layout.daemon_config).expect("daemon.toml");
        let table = config
            .find("[[endpoint]]")
            .map(|i| config[i..].to_owned())
            .expect("an endpoint table");
        let staging = table.replace(&format!("name = \"{ENDPOINT}\""), "name = \"staging\"");
        assert_ne!(staging, table);
        std::fs::write(&nm.layout.daemon_config, format!("{config}\n{staging}"))
            .expect("daemon.toml");
        // Added by a reload: the DNS server follows the configuration in
        // force (staging's names are served, not REFUSED as unknown).
        nm.cli(["reload"]).expect("cli").ok().expect("reload");
        wait_until("netmuxd with two endpoints", T, || {
            nm.cli(["ls"])
                .is_ok_and(|o| o.success() && o.stdout.contains("staging"))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", nm.daemon.log()));

        let plain = |sb: &Sandbox| rdata(&ns_dig(sb, &["web.demo.svc.cluster.local", "A"]).1, "A");
        let own = |sb: &Sandbox, ep: &str| {
            let name = format!("web.demo.svc.{ep}.cluster.local");
            rdata(&ns_dig(sb, &[name.as_str(), "A"]).1, "A")
        };
        let start = |ep: &str| {
            let mut last = String::new();
            wait_until(&format!("{ep}'s catalog"), T, || {
                let out = nm.cli(["start", ep, "web"]).expect("cli");
                last = format!("{}{}", out.stdout, out.stderr);
                out.success()
            })
            .unwrap_or_else(|e| panic!("start {ep} web: {e}: {last}"));
        };
        let connect = |ep: &str| {
            nm.cli(["connect", ep])
                .expect("cli")
                .ok()
                .unwrap_or_else(|e| panic!("connect {ep}: {e}"));
        };

        // demo connects first, staging second; staging starts web first.
        connect(ENDPOINT);
        connect("staging");
        start("staging");
        let mut last = Vec::new();
        wait_until("staging's web in DNS", T, || {
            last = own(&sb, "staging");
            !last.is_empty()
        })
        .unwrap_or_else(|e| panic!("{e}: {last:?}"));
        let staging_addr = last.clone();
        assert_eq!(plain(&sb), staging_addr, "the only publisher has it");
        // demo, connected earlier, starts web later and takes the name.
        start(ENDPOINT);
        let demo_addr = own(&sb, ENDPOINT);
        assert_eq!(demo_addr.len(), 1, "{demo_addr:?}");
        assert_ne!(demo_addr, staging_addr, "one alias per endpoint");
        assert_eq!(plain(&sb), demo_addr, "first connected wins");
        assert_eq!(own(&sb, "staging"), staging_addr, "staging keeps its form");
        // demo leaves: staging takes over; demo back: staging keeps it.
        nm.cli(["disconnect", ENDPOINT])
            .expect("cli")
            .ok()
            .expect("disconnect");
        assert_eq!(plain(&sb), staging_addr, "the next one takes over");
        assert!(own(&sb, ENDPOINT).is_empty());
        connect(ENDPOINT);
        start(ENDPOINT);
        assert_eq!(own(&sb, ENDPOINT).len(), 1);
        assert_eq!(plain(&sb), staging_addr, "now staging connected first");
    }
}
