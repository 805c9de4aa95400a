//! Unit tests of the daemon configuration (kept beside `config.rs` so that
//! file stays under ~800 lines).

use super::*;

const PEM: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

fn good() -> String {
    format!(
            "socket = \"/tmp/x.sock\"\nhosts_file = \"/tmp/hosts\"\n[[endpoint]]\nname = \"demo\"\nserver = \"10.0.0.2:7443\"\nca_pem = \"\"\"{PEM}\"\"\"\ntoken = \"0123456789abcdef\"\n"
        )
}

#[test]
fn good_config_and_defaults() {
    let c = Config::parse(Path::new("/etc/netmux/config.toml"), &good()).unwrap();
    assert_eq!(c.address_range.prefix, 16);
    assert_eq!(c.endpoints[0].cluster_domain, "cluster.local");
    assert!(!format!("{c:?}").contains("0123456789abcdef"));
}

#[test]
fn worker_threads_default_to_one_and_are_bounded() {
    let parse = |extra: &str| Config::parse(Path::new("c.toml"), &format!("{extra}{}", good()));
    assert_eq!(parse("").unwrap().worker_threads, 1);
    assert_eq!(parse("worker_threads = 2\n").unwrap().worker_threads, 2);
    assert!(parse("worker_threads = 0\n").unwrap().worker_threads >= 1);
    let e = parse("worker_threads = 5000\n").unwrap_err().to_string();
    assert!(
        e.contains("worker_threads") && e.contains("one per CPU"),
        "{e}"
    );
    let e = parse("worker_threads = -1\n").unwrap_err().to_string();
    assert!(e.starts_with("c.toml:1:"), "points at the line: {e}");
}

#[test]
fn errors_name_line_and_field() {
    let text = good().replace("server =", "sever =");
    let e = Config::parse(Path::new("c.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("c.toml:5:"), "{e}");
    assert!(e.contains("sever"), "{e}");

    let text = good().replace("10.0.0.2:7443", "10.0.0.2");
    let e = Config::parse(Path::new("c.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("endpoint[0].server") && e.contains("needs a port"),
        "{e}"
    );

    let text = format!("address_range = \"10.0.0.0/16\"\n{}", good());
    let e = Config::parse(Path::new("c.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(e.contains("address_range"), "{e}");
}

#[test]
fn survive_blackout_default_top_level_and_per_endpoint() {
    use std::time::Duration;
    let c = Config::parse(Path::new("c.toml"), &good()).unwrap();
    assert_eq!(c.endpoints[0].survive_blackout, Duration::from_secs(600));
    let text = format!("survive_blackout = \"90s\"\n{}", good());
    let c = Config::parse(Path::new("c.toml"), &text).unwrap();
    assert_eq!(c.endpoints[0].survive_blackout, Duration::from_secs(90));
    let text = format!(
        "survive_blackout = 1200\n{}survive_blackout = \"1h\"\n",
        good()
    );
    let c = Config::parse(Path::new("c.toml"), &text).unwrap();
    assert_eq!(c.endpoints[0].survive_blackout, Duration::from_secs(3600));
    let text = format!("survive_blackout = \"soon\"\n{}", good());
    let e = Config::parse(Path::new("c.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(e.contains("survive_blackout") && e.contains("10m"), "{e}");
    let text = format!("{}survive_blackout = 2\n", good());
    let e = Config::parse(Path::new("c.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("endpoint[0].survive_blackout") && e.contains("out of range"),
        "{e}"
    );
}

#[test]
fn dns_section_defaults_and_checks() {
    let c = Config::parse(Path::new("c.toml"), &good()).unwrap();
    assert!(c.dns.enabled);
    assert_eq!(c.dns.listen, DEFAULT_DNS_LISTEN);
    assert_eq!(c.dns.method, DnsMethod::Auto);
    assert_eq!(c.dns.default_namespace("demo"), "default");
    let text = format!(
            "{}default_namespace = \"apps\"\n[dns]\nmethod = \"resolver-dir\"\nlisten = \"127.0.0.153:5353\"\n",
            good()
        );
    let c = Config::parse(Path::new("c.toml"), &text).unwrap();
    assert_eq!(c.dns.method, DnsMethod::ResolverDir);
    assert_eq!(c.dns.default_namespace("demo"), "apps");
    for (bad, key) in [
        ("listen = \"10.0.0.1:53\"", "dns.listen"),
        ("listen = \"127.77.0.9:53\"", "dns.listen"),
        ("method = \"magic\"", "magic"),
        ("link = \"a/b\"", "dns.link"),
        ("colour = 1", "colour"),
    ] {
        let text = format!("{}[dns]\n{bad}\n", good());
        let e = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{bad}: {e}");
    }
}

#[test]
fn kubernetes_endpoints() {
    let text = "[[endpoint]]\nname = \"kind\"\n[endpoint.kubernetes]\ncontext = \"kind-netmux\"\n";
    let c = Config::parse(Path::new("c.toml"), text).unwrap();
    let e = &c.endpoints[0];
    assert_eq!(e.transport, Transport::PortForward);
    assert_eq!(e.server, None);
    assert_eq!(e.ca_pem, None);
    let k = e.kubernetes.as_ref().unwrap();
    assert_eq!(
        (k.namespace.as_str(), k.service.as_str(), k.port.as_str()),
        ("netmux", "netmux-server", "quic-stream")
    );
    assert_eq!(
        e.describe(),
        "port-forward netmux/netmux-server:quic-stream"
    );
    for (bad, key) in [
        ("autostart = true\n", "endpoint[0].autostart"),
        ("transport = \"quic\"\n", "endpoint[0].server"),
        (
            "[endpoint.kubernetes]\nport = \"Bad_Port\"\n",
            "endpoint[0].kubernetes.port",
        ),
        ("[endpoint.kubernetes]\nnamspace = \"x\"\n", "namspace"),
    ] {
        let text = if bad.starts_with('[') {
            format!("[[endpoint]]\nname = \"kind\"\n{bad}")
        } else {
            format!("[[endpoint]]\nname = \"kind\"\n{bad}[endpoint.kubernetes]\n")
        };
        let e = Config::parse(Path::new("c.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{bad}: {e}");
    }
    // port-forward without a cluster to forward into.
    let text = format!("{}transport = \"port-forward\"\n", good());
    let e = Config::parse(Path::new("c.toml"), &text)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[endpoint.kubernetes]"), "{e}");
}

#[test]
fn cluster_domain_is_a_dns_domain() {
    let with = |d: &str| format!("{}cluster_domain = {}\n", good(), d);
    let c = Config::parse(Path::new("c.toml"), &with("\"corp.example.\"")).unwrap();
    assert_eq!(c.endpoints[0].cluster_domain, "corp.example");
    for bad in [
        r#""evil\n6.6.6.6 github.com""#,
        r#""Cluster.Local""#,
        r#""""#,
        r#""a..b""#,
        r#""cluster.local localhost""#,
    ] {
        let e = Config::parse(Path::new("c.toml"), &with(bad))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("endpoint[0].cluster_domain") && e.contains("cluster.local"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn cluster_cidrs_and_expose_allow() {
    let c = Config::parse(Path::new("c.toml"), &good()).unwrap();
    assert_eq!(c.endpoints[0].cluster_cidrs, None);
    assert!(c
        .expose_target_allowed("127.0.0.1".parse().unwrap())
        .is_ok());
    assert!(c.expose_target_allowed("::1".parse().unwrap()).is_ok());
    let e = c
        .expose_target_allowed("169.254.169.254".parse().unwrap())
        .unwrap_err();
    assert!(e.contains("expose_allow"), "{e}");
    let text = format!(
            "expose_allow = [\"192.168.1.0/24\"]\n{}cluster_cidrs = [\"10.96.0.0/12\", \"fd00::/108\"]\n",
            good()
        );
    let c = Config::parse(Path::new("c.toml"), &text).unwrap();
    assert_eq!(c.endpoints[0].cluster_cidrs.as_ref().map(Vec::len), Some(2));
    assert!(c
        .expose_target_allowed("192.168.1.7".parse().unwrap())
        .is_ok());
    assert!(c
        .expose_target_allowed("192.168.2.7".parse().unwrap())
        .is_err());
    for (bad, key) in [
        (
            "cluster_cidrs = [\"10.96.0.1/12\"]\n",
            "endpoint[0].cluster_cidrs",
        ),
        (
            "cluster_cidrs = [\"0.0.0.0/0\"]\n",
            "endpoint[0].cluster_cidrs",
        ),
    ] {
        let e = Config::parse(Path::new("c.toml"), &format!("{}{bad}", good()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{bad}: {e}");
    }
    let e = Config::parse(
        Path::new("c.toml"),
        &format!("expose_allow = [\"x\"]\n{}", good()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("expose_allow"), "{e}");
}

#[test]
fn ranges() {
    assert!("127.77.0.0/16".parse::<Ipv4Range>().is_ok());
    assert!("127.77.0.1/16".parse::<Ipv4Range>().is_err());
    assert!("127.77.0.0".parse::<Ipv4Range>().is_err());
    assert!("127.77.0.0/31".parse::<Ipv4Range>().is_err());
}
