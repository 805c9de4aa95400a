//! The workstation trusts the catalog only within bounds (issue 15): what a
//! catalog entry, or a member of the socket group, can make netmuxd do.
//!
//! * catalog aliases outside the cluster domain never reach the hosts file;
//! * `netmux start EP +` starts L2C services only; a C2L entry is claimed
//!   when named or with `--c2l`;
//! * `netmux expose --local` targets loopback only unless the config allows
//!   more;
//! * a catalog entry over the 64 KiB frame limit is left out by the server
//!   and named in `netmux status`.
//!
//! Need root and the built binaries; run with `--test-threads=1`.

use std::net::IpAddr;

use netmux_testbed::netmux::{Netmux, ServiceSpec, ENDPOINT};
use netmux_testbed::{wait_until, Sandbox, Side};

mod common;
use common::{curl, ip, nx_echo, on_failure_dump, restart_server, sandbox, unique, T};

/// `web` (L2C) and `rev` (C2L: cluster 10.96.0.20:8088 to the
/// workstation's 127.0.0.1:18080).
fn services() -> Vec<ServiceSpec> {
    vec![
        ServiceSpec::l2c("web", ip("10.96.0.10"), 80, 8080),
        ServiceSpec {
            direction: "C2L",
            ..ServiceSpec::l2c("rev", ip("10.96.0.20"), 8088, 18080)
        },
    ]
}

fn connected(sb: &Sandbox) -> Netmux<'_> {
    let nm = Netmux::start(sb, &services()).unwrap_or_else(|e| {
        sb.dump_logs(50);
        panic!("netmux start: {e}")
    });
    let out = nm.cli(["connect", ENDPOINT]).expect("connect");
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    nm.wait_for_ls("the catalog", T, |json| {
        json.contains("demo/web") && json.contains("demo/rev")
    })
    .unwrap();
    nm
}

/// The lines of the netmux block of the workstation's hosts file.
fn block(sb: &Sandbox) -> Vec<String> {
    let text = std::fs::read_to_string(sb.ws_hosts_file()).unwrap_or_default();
    text.lines()
        .skip_while(|l| !l.starts_with("# BEGIN netmux"))
        .take_while(|l| !l.starts_with("# END netmux"))
        .skip(1)
        .map(str::to_owned)
        .collect()
}

#[test]
fn catalog_aliases_outside_the_cluster_domain_never_reach_the_hosts_file() {
    let sb = sandbox();
    let nm = connected(&sb);
    on_failure_dump(&sb, || {
        // The server's catalog now gives `web` aliases: one per-pod name
        // inside the domain, and names outside it.
        let text = netmux_testbed::netmux::services_toml(&services()).replacen(
            "aliases = []",
            "aliases = [\"web-0.web.demo.svc.cluster.local\", \"github.com\", \"localhost\", \
             \"cluster.local.evil.example\"]",
            1,
        );
        let tmp = nm.layout.services_file.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &nm.layout.services_file).unwrap();
        let out = nm.cli(["start", ENDPOINT, "web"]).unwrap();
        assert!(out.success(), "{}{}", out.stdout, out.stderr);
        // The in-domain alias shows the new entry arrived.
        wait_until("the per-pod alias in the hosts file", T, || {
            nm.resolve("web-0.web.demo.svc.cluster.local").is_some()
        })
        .unwrap();
        let lines = block(&sb);
        let names: Vec<&str> = lines
            .iter()
            .flat_map(|l| l.split_whitespace().skip(1))
            .collect();
        for outside in [
            "github.com",
            "localhost",
            "cluster.local.evil.example",
            "web.demo",
        ] {
            assert!(!names.contains(&outside), "{outside} in {lines:?}");
        }
        for inside in [
            "web",
            "web.demo.svc",
            "web.demo.svc.cluster.local",
            "web.demo.svc.demo.cluster.local",
            "web-0.web.demo.svc.demo.cluster.local",
        ] {
            assert!(names.contains(&inside), "{inside} not in {lines:?}");
        }
        // localhost still resolves to the user's line only.
        let local: Vec<IpAddr> = std::fs::read_to_string(sb.ws_hosts_file())
            .unwrap()
            .lines()
            .filter(|l| l.split_whitespace().skip(1).any(|n| n == "localhost"))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        assert!(
            local
                .iter()
                .all(|a| a.is_loopback() && !a.to_string().starts_with("127.77.")),
            "{local:?}"
        );
    });
}

#[test]
fn plus_starts_l2c_only_and_c2l_is_claimed_when_named_or_with_c2l() {
    let sb = sandbox();
    let nm = connected(&sb);
    let _local = nx_echo(
        &sb,
        Side::Workstation,
        "ws-http",
        "http",
        "127.0.0.1:18080".parse().unwrap(),
    );
    on_failure_dump(&sb, || {
        let out = nm.cli(["start", ENDPOINT, "+"]).unwrap();
        assert!(out.success(), "{}{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains("demo/web")
                && out.stdout.contains("not claimed")
                && out.stdout.contains("demo/rev"),
            "{}",
            out.stdout
        );
        assert_eq!(
            nm.status_of("SVC", "demo/web").unwrap().as_deref(),
            Some("on")
        );
        assert_eq!(
            nm.status_of("SVC", "demo/rev").unwrap().as_deref(),
            Some("off")
        );
        // Nothing in the cluster reaches this machine.
        let out = curl(&sb, Side::Cluster, "http://10.96.0.20:8088/unclaimed");
        assert!(
            !out.success(),
            "the cluster reached the workstation: {}",
            out.stdout
        );

        // --c2l claims it.
        let out = nm.cli(["start", "--c2l", ENDPOINT, "+"]).unwrap();
        assert!(out.success(), "{}{}", out.stdout, out.stderr);
        nm.wait_for_status("SVC", "demo/rev", "on", T).unwrap();
        let out = curl(&sb, Side::Cluster, "http://10.96.0.20:8088/claimed");
        assert!(
            out.success() && out.stdout.contains("path=/claimed"),
            "{}{}",
            out.stdout,
            out.stderr
        );

        // So does naming it.
        nm.cli(["stop", ENDPOINT, "rev"]).unwrap().ok().unwrap();
        nm.wait_for_status("SVC", "demo/rev", "off", T).unwrap();
        let out = nm.cli(["start", ENDPOINT, "rev"]).unwrap();
        assert!(out.success(), "{}{}", out.stdout, out.stderr);
        nm.wait_for_status("SVC", "demo/rev", "on", T).unwrap();
    });
}

#[test]
fn expose_local_targets_loopback_only_unless_the_config_allows_more() {
    let sb = sandbox();
    let nm = connected(&sb);
    on_failure_dump(&sb, || {
        for target in ["169.254.169.254:80", "10.250.0.1:22", "[fe80::1]:80"] {
            let out = nm
                .cli([
                    "expose",
                    ENDPOINT,
                    "dbg",
                    "--local",
                    target,
                    "--remote-port",
                    "9100",
                ])
                .unwrap();
            assert!(!out.success(), "{target} exposed: {}", out.stdout);
            assert!(
                out.stderr.contains("expose_allow"),
                "{target}: {}",
                out.stderr
            );
        }
        let out = nm
            .cli([
                "expose",
                ENDPOINT,
                "dbg",
                "--local",
                "127.0.0.1:9",
                "--remote-port",
                "9100",
            ])
            .unwrap();
        assert!(out.success(), "{}{}", out.stdout, out.stderr);

        // The operator allows a range: then it is accepted.
        let config = std::fs::read_to_string(&nm.layout.daemon_config).unwrap();
        std::fs::write(
            &nm.layout.daemon_config,
            format!("expose_allow = [\"169.254.0.0/16\"]\n{config}"),
        )
        .unwrap();
        nm.cli(["reload"]).unwrap().ok().unwrap();
        let out = nm
            .cli([
                "expose",
                ENDPOINT,
                "meta",
                "--local",
                "169.254.169.254:80",
                "--remote-port",
                "9101",
            ])
            .unwrap();
        assert!(out.success(), "{}{}", out.stdout, out.stderr);
    });
}

#[test]
fn ebpf_redirects_only_cluster_addresses_and_status_lists_the_rest() {
    use netmux_testbed::cgroup::ChildCgroup;
    use netmux_testbed::prereq;
    let test =
        "workstation_bounds_e2e::ebpf_redirects_only_cluster_addresses_and_status_lists_the_rest";
    if !prereq::require(test, prereq::ebpf_daemon()) {
        return;
    }
    let sb = sandbox();
    let cg = ChildCgroup::new(&unique("cg")).expect("child cgroup");
    let server: IpAddr = sb.cluster_addr().into();
    let specs = vec![
        ServiceSpec::l2c("web", ip("10.96.0.10"), 80, 8080),
        // A public address: the catalog must not capture it.
        ServiceSpec::l2c("public", ip("192.0.2.10"), 80, 8080),
        ServiceSpec::l2c("lo", ip("127.0.0.1"), 9, 9),
        ServiceSpec::l2c("server", server, 7080, 7080),
    ];
    let extra = format!(
        "redirect = \"ebpf\"\ncgroup = \"{}\"\n",
        cg.path().display()
    );
    // The server's target policy would leave `lo` and `server` out of the
    // catalog; its admin allows them here so that the daemon's own bounds
    // are what is tested.
    let mut layout = netmux_testbed::netmux::Layout::new(&sb);
    layout.runtime_extra = format!("allow_unsafe_targets = [\"127.0.0.1\", \"{server}\"]\n");
    let nm = Netmux::start_layout(&sb, layout, &specs, netmux_testbed::netmux::TOKEN, &extra)
        .unwrap_or_else(|e| {
            sb.dump_logs(50);
            panic!("netmux start: {e}")
        });
    let _web = nx_echo(
        &sb,
        Side::Cluster,
        "web",
        "http",
        "10.96.0.10:8080".parse().unwrap(),
    );
    let _public = nx_echo(
        &sb,
        Side::Cluster,
        "public",
        "http",
        "192.0.2.10:8080".parse().unwrap(),
    );
    on_failure_dump(&sb, || {
        assert!(nm.cli(["connect", ENDPOINT]).unwrap().success());
        let out = nm.cli(["start", ENDPOINT, "+"]).unwrap();
        assert!(out.success(), "{}{}", out.stdout, out.stderr);
        let inside = |url: &str| {
            sb.process(Side::Workstation, "curl", "sh")
                .args(cg.wrap("curl", &["-sS", "--max-time", "5", url]))
                .run(T)
                .expect("curl in the cgroup")
        };
        // Inside the cluster ranges: redirected.
        let out = inside("http://10.96.0.10/in-range");
        assert!(
            out.success() && out.stdout.contains("path=/in-range"),
            "{}{}",
            out.stdout,
            out.stderr
        );
        // Outside: left alone (no route from the workstation), though the
        // cluster has a server there that the tunnel would reach.
        let out = inside("http://192.0.2.10/public");
        assert!(
            !out.success(),
            "192.0.2.10 was redirected into the tunnel: {}",
            out.stdout
        );
        // Its names point at its own 127.x listener instead, which works.
        let local = nm
            .resolve("public.demo.svc.cluster.local")
            .expect("public in hosts");
        assert!(local.is_loopback(), "{local}");
        assert_eq!(
            nm.resolve("web.demo.svc.cluster.local"),
            Some(ip("10.96.0.10"))
        );
        // status names each address left alone, with the reason.
        let status = nm.cli(["status"]).unwrap().ok().unwrap().stdout;
        for expected in [
            "demo/public: not redirected: 192.0.2.10 is outside the cluster ranges [10.96.0.0/12, fd00:96::/64] (announced by the server of endpoint demo)",
            "demo/lo: not redirected: 127.0.0.1 is a loopback address",
            &format!("demo/server: not redirected: {server} is the netmux server's address"),
        ] {
            assert!(status.contains(expected), "{expected:?} not in\n{status}");
        }
        assert!(!status.contains("demo/web: not redirected"), "{status}");
    });
}

/// A catalog entry too large for one frame (1,200 per-pod names: over
/// 64 KiB) is not sent, never truncated: the daemon's `netmux status`
/// names it, the server logs it with the fix, and the other entries arrive.
#[test]
fn an_entry_over_the_frame_limit_is_named_in_status() {
    let sb = sandbox();
    let mut nm = Netmux::start(&sb, &services()).unwrap_or_else(|e| {
        sb.dump_logs(50);
        panic!("netmux start: {e}")
    });
    let aliases: Vec<String> = (0..1200)
        .map(|i| {
            format!(
                "\"web-{i:04}-{}.web.demo.svc.cluster.local\"",
                "x".repeat(30)
            )
        })
        .collect();
    let text = netmux_testbed::netmux::services_toml(&services()).replacen(
        "aliases = []",
        &format!("aliases = [{}]", aliases.join(", ")),
        1,
    );
    std::fs::write(&nm.layout.services_file, text).expect("services file");
    nm.server.kill();
    restart_server(&sb, &mut nm);
    sb.wait_for_tcp(Side::Cluster, nm.layout.http, T)
        .unwrap_or_else(|e| panic!("server back: {e}\n{}", nm.server.log()));
    on_failure_dump(&sb, || {
        let out = nm.cli(["connect", ENDPOINT]).expect("connect");
        assert!(out.success(), "{}{}", out.stdout, out.stderr);
        nm.wait_for_ls("the catalog", T, |json| json.contains("demo/rev"))
            .unwrap();
        let out = nm.cli(["ls"]).expect("ls");
        assert!(!out.stdout.contains("demo/web"), "{}", out.stdout);
        let status = nm.cli(["status"]).expect("status");
        assert!(
            status.stdout.contains("left out by the server")
                && status.stdout.contains("demo/web")
                && status.stdout.contains("64 KiB"),
            "status names the entry left out: {}",
            status.stdout
        );
        assert!(
            nm.server
                .log()
                .contains("catalog entry over the 64 KiB frame limit not sent"),
            "{}",
            nm.server.log()
        );
    });
}
