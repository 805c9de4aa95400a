//! Two endpoints publishing the same cluster address (two clusters with
//! the default Service range): the eBPF redirect entry belongs to the
//! endpoint that started it first, the other says who holds it and keeps
//! its endpoint-qualified names, and stopping either never removes the
//! other's entry.
//!
//! Both endpoints point at one server here, which publishes the same
//! catalog to each: the same situation for the daemon.
//!
//! Needs root and a daemon built with the eBPF programs; run with
//! `--test-threads=1`.

use netmux_testbed::cgroup::ChildCgroup;
use netmux_testbed::netmux::{Netmux, ServiceSpec, ENDPOINT, TOKEN};
use netmux_testbed::{prereq, wait_until, Sandbox, Side};

mod common;
use common::{ip, nx_echo, on_failure_dump, sandbox, T};

const OTHER: &str = "other";

fn unique(tag: &str) -> String {
    format!("nx-{tag}-{}", std::process::id())
}

/// Adds endpoint [`OTHER`], a copy of [`ENDPOINT`], and reloads.
fn add_other(nm: &Netmux<'_>) {
    let config = std::fs::read_to_string(&nm.layout.daemon_config).unwrap();
    let table = config
        .split_once("[[endpoint]]")
        .map(|(_, t)| t)
        .expect("an endpoint table");
    let copy = table.replace(
        &format!("name = \"{ENDPOINT}\""),
        &format!("name = \"{OTHER}\""),
    );
    std::fs::write(
        &nm.layout.daemon_config,
        format!("{config}\n[[endpoint]]{copy}"),
    )
    .unwrap();
    nm.cli(["reload"]).unwrap().ok().expect("reload");
}

fn run(sb: &Sandbox, nm: &Netmux<'_>, cg: &ChildCgroup) {
    let curl = |url: &str| {
        sb.process(Side::Workstation, "curl", "sh")
            .args(cg.wrap("curl", &["-sS", "--max-time", "5", url]))
            .run(T)
            .expect("curl in the cgroup")
    };
    let works = |url: &str, tag: &str| {
        let out = curl(&format!("{url}/{tag}"));
        assert!(
            out.success() && out.stdout.contains(&format!("path=/{tag}")),
            "{url}: {}{}",
            out.stdout,
            out.stderr
        );
    };
    let status = || nm.cli(["status"]).unwrap().ok().unwrap().stdout;
    let note = "demo/web: 10.96.0.10:80 is redirected to endpoint";

    for ep in [ENDPOINT, OTHER] {
        let out = nm.cli(["connect", ep]).unwrap();
        assert!(out.success(), "{}{}", out.stdout, out.stderr);
    }
    nm.wait_for_status("EP", OTHER, "connected", T).unwrap();
    nm.wait_for_ls("both catalogs", T, |j| j.matches("demo/web").count() >= 2)
        .unwrap();
    // demo starts first and holds the redirect.
    nm.cli(["start", ENDPOINT, "web"]).unwrap().ok().unwrap();
    nm.cli(["start", OTHER, "web"]).unwrap().ok().unwrap();
    works("http://10.96.0.10", "first");
    let s = status();
    assert!(
        s.contains(&format!("{note} demo, which started it first")),
        "{s}"
    );
    // So does the daemon's log.
    let log = nm.daemon.log();
    assert!(
        log.contains("redirect held by another endpoint, which started it first")
            && log.contains("holder=demo"),
        "{log}"
    );
    // ls names the holder on other's row.
    let rows = nm.ls().unwrap();
    let row = rows
        .iter()
        .find(|r| r["parent"] == OTHER && r["name"] == "demo/web")
        .expect("other's web row");
    assert!(
        row["description"]
            .as_str()
            .unwrap_or_default()
            .contains("redirected to endpoint demo"),
        "{row}"
    );
    assert_eq!(row["status"], "on");
    // other's service stays reachable by its qualified names, on its own
    // 127.x listener.
    let qualified = "web.demo.svc.other.cluster.local";
    let addr = nm.resolve(qualified).expect("qualified name in hosts");
    assert!(addr.is_loopback(), "{qualified} -> {addr}");
    works(&format!("http://{qualified}"), "qualified-other");
    works("http://web.demo.svc.demo.cluster.local", "qualified-demo");

    // Stopping the second leaves the first's entry alone.
    nm.cli(["stop", OTHER, "web"]).unwrap().ok().unwrap();
    works("http://10.96.0.10", "after-other-stopped");

    // Started again it waits behind demo; stopping demo hands it over.
    nm.cli(["start", OTHER, "web"]).unwrap().ok().unwrap();
    assert!(status().contains(note), "{}", status());
    nm.cli(["stop", ENDPOINT, "web"]).unwrap().ok().unwrap();
    wait_until("other to take the redirect over", T, || {
        !status().contains(note)
    })
    .unwrap();
    works("http://10.96.0.10", "after-demo-stopped");
    assert_eq!(
        nm.resolve("web.demo.svc.cluster.local"),
        Some(ip("10.96.0.10"))
    );
}

#[test]
fn the_first_endpoint_to_start_holds_a_shared_address() {
    let test = "two_endpoints_e2e::the_first_endpoint_to_start_holds_a_shared_address";
    if !prereq::require(test, prereq::ebpf_daemon()) {
        return;
    }
    let sb = sandbox();
    let cg = ChildCgroup::new(&unique("cg2")).expect("child cgroup");
    let extra = format!(
        "redirect = \"ebpf\"\ncgroup = \"{}\"\n",
        cg.path().display()
    );
    let web = ServiceSpec::l2c("web", ip("10.96.0.10"), 80, 8080);
    let nm = Netmux::start_with(&sb, &[web], TOKEN, &extra).unwrap_or_else(|e| {
        sb.dump_logs(50);
        panic!("netmux start: {e}")
    });
    let _backend = nx_echo(
        &sb,
        Side::Cluster,
        "web",
        "http",
        "10.96.0.10:8080".parse().unwrap(),
    );
    on_failure_dump(&sb, || {
        add_other(&nm);
        run(&sb, &nm, &cg);
    });
}
