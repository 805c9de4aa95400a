//! Pass and fail of every check, from plain inputs.

use std::net::{Ipv4Addr, SocketAddr};

use netmux_daemon::config::{EndpointConfig, Ipv4Range, RedirectMode};
use netmux_daemon::system::hosts;

use super::*;

fn range() -> Ipv4Range {
    "127.77.0.0/16".parse().expect("literal range")
}

#[test]
fn kernel() {
    assert_eq!(
        kernel_bpf("6.1.0-18-amd64", true, None).status,
        Status::Pass
    );
    let full = "CONFIG_BPF_SYSCALL=y\nCONFIG_CGROUP_BPF=y\n";
    assert_eq!(kernel_bpf("6.1.0", true, Some(full)).status, Status::Pass);
    assert_eq!(
        kernel_bpf("5.4.0-150-generic", true, None).status,
        Status::Fail
    );
    assert_eq!(kernel_bpf("6.1.0", false, None).status, Status::Fail);
    let no_cg = "CONFIG_BPF_SYSCALL=y\n# CONFIG_CGROUP_BPF is not set\n";
    let c = kernel_bpf("6.1.0", true, Some(no_cg));
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("CONFIG_CGROUP_BPF") && c.fix.is_some());
}

#[test]
fn caps() {
    let bits = |l: &[u32]| l.iter().fold(0u64, |a, c| a | 1 << c);
    let all = bits(&[
        cap::BPF,
        cap::PERFMON,
        cap::NET_ADMIN,
        cap::NET_BIND_SERVICE,
        cap::DAC_OVERRIDE,
    ]);
    assert_eq!(
        capabilities(RedirectMode::Ebpf, Some((7, all)), None).status,
        Status::Pass
    );
    let c = capabilities(RedirectMode::Ebpf, Some((7, bits(&[cap::NET_ADMIN]))), None);
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("CAP_BPF"), "{}", c.detail);
    let c = capabilities(RedirectMode::Auto, Some((7, 0)), None);
    assert_eq!(c.status, Status::Warn);
    // From the installed unit when the daemon is not running.
    let unit = install::Layout::new("/", "/usr/local", install::Init::Systemd).unit(
        Path::new("/etc/hosts"),
        Path::new("/run/netmux/netmuxd.sock"),
    );
    assert_eq!(
        capabilities(RedirectMode::Ebpf, None, Some(&unit)).status,
        Status::Pass
    );
    let c = capabilities(RedirectMode::Ebpf, None, Some("[Service]\nUser=x\n"));
    assert_eq!(c.status, Status::Fail);
    assert_eq!(
        capabilities(RedirectMode::Ebpf, None, None).status,
        Status::Warn
    );
    assert_eq!(
        cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"),
        Some(0x1ff_ffff_ffff)
    );
}

use crate::install;

const MOUNTINFO_V2: &str = "25 1 0:22 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n";
const MOUNTINFO_V1: &str = "25 1 0:22 / /sys/fs/cgroup/cpu rw shared:9 - cgroup cgroup rw,cpu\n";

#[test]
fn cgroup() {
    let c = cgroup_v2(MOUNTINFO_V2, Path::new("/sys/fs/cgroup/netmux"));
    assert_eq!(c.status, Status::Pass);
    assert_eq!(
        cgroup_v2(MOUNTINFO_V1, Path::new("/sys/fs/cgroup")).status,
        Status::Fail
    );
    let c = cgroup_v2(MOUNTINFO_V2, Path::new("/tmp/cg"));
    assert_eq!(c.status, Status::Fail);
    assert!(c.fix.as_deref().is_some_and(|f| f.contains("`cgroup`")));
}

#[test]
fn backends() {
    let ok = Check::pass("x", "");
    let bad = Check::fail("x", "", "");
    let r = redirect_backend(RedirectMode::Auto, &ok, &ok, &ok, None);
    assert_eq!((r.status, r.detail.as_str()), (Status::Pass, "eBPF (auto)"));
    assert_eq!(
        redirect_backend(RedirectMode::Auto, &ok, &bad, &ok, None).status,
        Status::Warn
    );
    assert_eq!(
        redirect_backend(RedirectMode::Ebpf, &bad, &ok, &ok, None).status,
        Status::Fail
    );
    assert_eq!(
        redirect_backend(RedirectMode::Loopback, &bad, &bad, &bad, None).status,
        Status::Pass
    );
    let r = redirect_backend(RedirectMode::Ebpf, &bad, &ok, &ok, Some("ebpf: attached"));
    assert!(r.detail.contains("ebpf: attached"));

    let hosts = Path::new("/etc/hosts");
    assert_eq!(
        dns_backend(hosts, Some("hosts: files mdns4_minimal dns\n")).status,
        Status::Pass
    );
    let c = dns_backend(hosts, Some("# hosts: files\nhosts: dns myhostname\n"));
    assert_eq!(c.status, Status::Fail);
    assert_eq!(dns_backend(Path::new("/tmp/h"), None).status, Status::Warn);
}

#[test]
fn dns_method_pass_and_fallback() {
    use netmux_daemon::system::resolver::Probe;
    let path = std::path::Path::new("/etc/netmux/config.toml");
    let cfg = netmux_daemon::config::Config::parse(path, "").expect("empty config is valid");
    let resolved = Probe {
        resolvectl: true,
        resolved_running: true,
        system_uses_resolved: true,
        same_netns_as_init: true,
        ..Probe::default()
    };
    let c = dns_method(&cfg.dns, &resolved);
    assert_eq!(c.status, Status::Pass, "{c:?}");
    assert!(c.detail.contains("Resolved"), "{c:?}");
    let c = dns_method(&cfg.dns, &Probe::default());
    assert_eq!(c.status, Status::Warn, "{c:?}");
    assert!(c.detail.contains("resolvectl not installed"), "{c:?}");
}

fn facts() -> SocketFacts {
    SocketFacts {
        path: "/run/netmux/netmuxd.sock".into(),
        meta: Some((true, 0o140660, 990)),
        group_gid: Some(990),
        group: Some("netmux".into()),
        uid: 1000,
        gids: vec![1000, 990],
        connectable: true,
    }
}

#[test]
fn socket() {
    assert_eq!(control_socket(&facts()).status, Status::Pass);
    let cases: Vec<(SocketFacts, &str)> = vec![
        (
            SocketFacts {
                meta: None,
                ..facts()
            },
            "systemctl start",
        ),
        (
            SocketFacts {
                meta: Some((true, 0o140666, 990)),
                ..facts()
            },
            "0660",
        ),
        (
            SocketFacts {
                meta: Some((true, 0o140660, 0)),
                ..facts()
            },
            "restart",
        ),
        (
            SocketFacts {
                gids: vec![1000],
                ..facts()
            },
            "usermod -aG netmux",
        ),
        (
            SocketFacts {
                group_gid: None,
                ..facts()
            },
            "groupadd",
        ),
        (
            SocketFacts {
                meta: Some((false, 0o100660, 990)),
                ..facts()
            },
            "rm ",
        ),
        (
            SocketFacts {
                connectable: false,
                ..facts()
            },
            "restart",
        ),
    ];
    for (f, fix) in cases {
        let c = control_socket(&f);
        assert_eq!(c.status, Status::Fail, "{f:?}");
        assert!(c.fix.as_deref().is_some_and(|x| x.contains(fix)), "{c:?}");
    }
    // root needs no group membership.
    assert_eq!(
        control_socket(&SocketFacts {
            uid: 0,
            gids: vec![0],
            ..facts()
        })
        .status,
        Status::Pass
    );
}

fn cert(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
    let mut p = rcgen::CertificateParams::new(vec!["netmux-server".into()]).expect("params");
    p.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = rcgen::KeyPair::generate().expect("key");
    p.self_signed(&key).expect("sign").der().to_vec()
}

#[test]
fn certificate_validity() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000); // 2025-06
    let good = cert((2024, 1, 1), (2030, 1, 1));
    assert_eq!(certificates("c", "CA", &[good], now).status, Status::Pass);
    let c = certificates("c", "CA", &[cert((2020, 1, 1), (2024, 1, 1))], now);
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("expired"), "{}", c.detail);
    let c = certificates("c", "CA", &[cert((2026, 1, 1), (2030, 1, 1))], now);
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("clock"), "{}", c.detail);
    let c = certificates("c", "CA", &[cert((2024, 1, 1), (2025, 6, 20))], now);
    assert_eq!(c.status, Status::Warn);
    assert_eq!(certificates("c", "CA", &[], now).status, Status::Fail);
    assert_eq!(
        certificates("c", "CA", &[vec![1, 2, 3]], now).status,
        Status::Fail
    );
    assert!(pem_certs("no pem").is_empty());
}

#[test]
fn clock_state() {
    assert_eq!(clock(Some((true, 20_000))).status, Status::Pass);
    assert_eq!(clock(Some((false, 16_000_000))).status, Status::Fail);
    assert_eq!(clock(Some((true, 5_000_000))).status, Status::Warn);
    assert_eq!(clock(None).status, Status::Warn);
}

#[test]
fn hosts_file() {
    let domains = vec!["cluster.local".to_owned()];
    let clean = format!(
        "127.0.0.1 localhost\n{}\n127.77.0.1 web web.default.svc.cluster.local\n{}\n",
        hosts::BEGIN,
        hosts::END
    );
    assert_eq!(
        hosts_conflicts(&clean, &range(), &domains).status,
        Status::Pass
    );
    let c = hosts_conflicts("127.77.0.9 other\n", &range(), &domains);
    assert_eq!(c.status, Status::Fail);
    let c = hosts_conflicts(
        "10.0.0.5 db.prod.svc.cluster.local # old\n",
        &range(),
        &domains,
    );
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("db.prod"));
}

#[test]
fn routes() {
    let head =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
    // default via eth0, 10.0.0.0/24 on eth0.
    let ok = format!(
        "{head}eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\neth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    );
    assert_eq!(route_conflicts(&ok, &range()).status, Status::Pass);
    // 127.77.0.0/16 routed to a tunnel device.
    let bad = format!("{ok}tun0\t00004D7F\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n");
    let c = route_conflicts(&bad, &range());
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("127.77.0.0/16 dev tun0"), "{}", c.detail);
}

fn opts() -> Options {
    Options {
        timeout: Duration::from_secs(1),
        unit: "/nonexistent/netmuxd.service".into(),
    }
}

#[tokio::test]
async fn config_check_fails_alone_with_the_error_and_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "socket = \"/run/x.sock\"\nbogus_key = 1\n").expect("write");
    let err = Config::load(&path).expect_err("unknown key").to_string();
    assert!(err.contains("bogus_key"), "{err}");
    let checks = run(Err(err.clone()), &path, None, &opts()).await;
    // Nothing else is checked against a config that does not load.
    assert_eq!(checks.len(), 1, "{checks:?}");
    let c = &checks[0];
    assert_eq!((c.name.as_str(), c.status), ("config", Status::Fail));
    assert_eq!(c.detail, err);
    let fix = c.fix.as_deref().unwrap_or_default();
    assert!(fix.contains(&format!("fix {}", path.display())), "{fix}");
    assert_eq!(exit_status(&checks), 1);

    // A missing file: the fix says how to get one.
    let missing = dir.path().join("missing.toml");
    let err = Config::load(&missing).expect_err("missing").to_string();
    let checks = run(Err(err), &missing, None, &opts()).await;
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].status, Status::Fail);
    assert!(
        checks[0]
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("netmux install") && f.contains("--config")),
        "{checks:?}"
    );
}

#[tokio::test]
async fn config_check_passes_first_and_the_other_checks_follow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    let socket = dir.path().join("netmuxd.sock");
    let text = format!(
        "socket = {:?}\nredirect = \"loopback\"\n",
        socket.display().to_string()
    );
    std::fs::write(&path, &text).expect("write");
    let config = Config::load(&path).expect("valid config");
    let checks = run(Ok(&config), &path, None, &opts()).await;
    let c = &checks[0];
    assert_eq!(
        (c.name.as_str(), c.status),
        ("config", Status::Pass),
        "{c:?}"
    );
    assert_eq!(c.detail, format!("{} is valid", path.display()));
    assert!(c.fix.is_none());
    for name in [
        "kernel-bpf",
        "capabilities",
        "redirect",
        "control-socket",
        "routes",
    ] {
        assert!(
            checks.iter().any(|c| c.name == name),
            "{name} missing: {checks:?}"
        );
    }
    // No daemon serves the socket: that check fails, and so does doctor.
    let sock = checks
        .iter()
        .find(|c| c.name == "control-socket")
        .expect("checked");
    assert_eq!(sock.status, Status::Fail, "{sock:?}");
    assert_eq!(exit_status(&checks), 1);
}

#[test]
fn exit_status_is_1_only_when_a_check_fails() {
    assert_eq!(exit_status(&[]), 0);
    let pass = Check::pass("a", "");
    let warn = Check::warn("b", "", "");
    let fail = Check::fail("c", "", "");
    assert_eq!(exit_status(&[pass.clone(), warn.clone()]), 0);
    assert_eq!(exit_status(&[pass.clone(), warn.clone(), fail.clone()]), 1);
    assert_eq!(exit_status(&[fail]), 1);
    assert_eq!(exit_status(&[warn]), 0);
    assert_eq!(exit_status(&[pass]), 0);
}

#[test]
fn the_running_daemon_is_the_one_serving_the_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    // This test process listens: doctor reads its CapEff.
    assert_eq!(socket_peer(&path), Some(std::process::id()));
    let own = cap_eff(&std::fs::read_to_string("/proc/self/status").expect("status"));
    let found = running_daemon(&path).expect("found");
    assert_eq!(found.0, std::process::id());
    assert_eq!(Some(found.1), own);
    assert_eq!(socket_peer(&dir.path().join("none.sock")), None);
}

/// Through the config parser, so new endpoint fields get their defaults.
fn endpoint_config(server: SocketAddr, ca_pem: String) -> EndpointConfig {
    let text = format!(
        "[[endpoint]]\nname = \"dev\"\nserver = \"{server}\"\nca_pem = \"\"\"{ca_pem}\"\"\"\n"
    );
    let c = Config::parse(Path::new("/t/config.toml"), &text).expect("test config");
    c.endpoints[0].clone()
}

#[tokio::test]
async fn endpoint_reachable_and_not() {
    let ck = rcgen::generate_simple_self_signed(vec!["netmux-server".into()]).expect("cert");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(
            vec![ck.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
        )
        .expect("server cert");
    tls.alpn_protocols = vec![netmux_common::proto::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic tls");
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto)),
        (Ipv4Addr::LOCALHOST, 0).into(),
    )
    .expect("server endpoint");
    let addr = server.local_addr().expect("addr");
    let accept = tokio::spawn(async move {
        while let Some(inc) = server.accept().await {
            if let Ok(c) = inc.await {
                let _ = c.closed().await;
            }
        }
    });
    let cfg = endpoint_config(addr, ck.cert.pem());
    let (p, _) = probe(&cfg, Duration::from_secs(5)).await;
    let c = endpoint_reachability("dev", &cfg.describe(), &p);
    assert_eq!(c.status, Status::Pass, "{c:?}");
    let Probe::Ok(_, chain) = &p else {
        unreachable!()
    };
    let cc = certificates(
        "certificate dev",
        "server certificate",
        chain,
        SystemTime::now(),
    );
    assert_eq!(cc.status, Status::Pass, "{cc:?}");

    // Wrong CA: the server answers, TLS fails.
    let other = rcgen::generate_simple_self_signed(vec!["netmux-server".into()]).expect("cert");
    let (p, _) = probe(
        &endpoint_config(addr, other.cert.pem()),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(endpoint_reachability("dev", "x", &p).status, Status::Fail);
    assert!(matches!(p, Probe::Tls(_)), "{p:?}");
    accept.abort();

    // A UDP port that never answers.
    let silent = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp");
    let cfg = endpoint_config(silent.local_addr().expect("addr"), ck.cert.pem());
    let (p, _) = probe(&cfg, Duration::from_millis(500)).await;
    let c = endpoint_reachability("dev", &cfg.describe(), &p);
    assert_eq!(c.status, Status::Fail);
    assert!(c.fix.as_deref().is_some_and(|f| f.contains("UDP")), "{c:?}");

    // A Kubernetes endpoint whose kubeconfig does not exist: the
    // port-forward check fails and says where to look.
    let text = "[[endpoint]]\nname = \"kube\"\n[endpoint.kubernetes]\nkubeconfig = \"/nonexistent/kubeconfig\"\n";
    let cfg = Config::parse(Path::new("/t/config.toml"), text).expect("config");
    let ep = &cfg.endpoints[0];
    let (p, _) = probe(ep, Duration::from_secs(5)).await;
    assert!(matches!(p, Probe::PortForward(_)), "{p:?}");
    let c = endpoint_reachability("kube", &ep.describe(), &p);
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("/nonexistent/kubeconfig"), "{c:?}");
    assert!(
        c.fix
            .as_deref()
            .is_some_and(|f| f.contains("pods/portforward")),
        "{c:?}"
    );
}

#[test]
fn intercept_rights_name_the_role_to_bind() {
    let rights = |intercept, replace| Ok(Rights { intercept, replace });
    let ok = intercept_rights("kube", "apps", rights(true, true));
    assert_eq!(ok.status, Status::Pass);
    assert!(ok.detail.contains("--replace (patch"), "{}", ok.detail);
    let no_replace = intercept_rights("kube", "apps", rights(true, false));
    assert_eq!(no_replace.status, Status::Pass, "--replace is optional");
    assert!(
        no_replace.detail.contains("--replace would be refused")
            && no_replace.detail.contains("netmux-replace"),
        "{}",
        no_replace.detail
    );
    let no = intercept_rights("kube", "apps", rights(false, false));
    assert_eq!(no.status, Status::Warn);
    assert!(no.detail.contains("`intercept`"), "{}", no.detail);
    assert!(
        no.fix
            .as_deref()
            .is_some_and(|f| f.contains("netmux-user") && f.contains("apps")),
        "{:?}",
        no.fix
    );
    let err = intercept_rights("kube", "-", Err("refused".into()));
    assert_eq!(err.status, Status::Warn);
}
