//! End-to-end tests of the Docker runtime against a real, private dockerd
//! (Debian's `docker.io`) started inside the sandbox's cluster namespace by
//! [`netmux_testbed::docker::Dockerd`]: its bridges and container addresses
//! live only in namespaces the test created.
//!
//! Need root, dockerd, busybox-static and the built binaries; run with
//! `--test-threads=1` (as `cargo xtask test` does).

use netmux_testbed::docker::{self, Dockerd, ImageSpec, RunSpec};
use netmux_testbed::{bin, prereq, Sandbox, Side};

mod common;
use common::{sandbox, T};

/// Tag of the image every test builds: nx-echo plus busybox.
const IMAGE: &str = "nx-echo:test";

fn require(test: &str) -> bool {
    prereq::require(
        &format!("docker_e2e::{test}"),
        prereq::first([docker::missing(), prereq::binaries(&["nx-echo"])]),
    )
}

fn image() -> ImageSpec {
    ImageSpec::new(IMAGE)
        .binary(bin("nx-echo").expect("nx-echo built"), "/nx-echo")
        .busybox()
        .cmd(["/nx-echo", "http", "--listen", "0.0.0.0:8080"])
}

fn dockerd(sb: &Sandbox) -> Dockerd {
    let d = Dockerd::start(sb.cluster(), sb.dir()).expect("starting dockerd");
    d.build_image(&image()).expect("building the test image");
    d
}

#[test]
fn fixture_runs_containers_in_the_sandbox_and_cleans_up() {
    if !require("fixture_runs_containers_in_the_sandbox_and_cleans_up") {
        return;
    }
    let sb = sandbox();
    let d = dockerd(&sb);
    let dir = d.dir().to_owned();
    let net = d.create_network("apps", "172.31.5.0/24").expect("network");
    let web = d
        .run(&RunSpec::new(IMAGE).name("web").network(&net.name))
        .expect("run");
    let addr = d.address(&web, &net.name).expect("address");
    assert!(
        addr.to_string().starts_with("172.31.5."),
        "container address {addr} is on the network created"
    );
    // The container answers from the cluster namespace, where the bridge
    // lives...
    let url = format!("http://{addr}:8080/hello");
    sb.wait_for_tcp(Side::Cluster, (addr, 8080).into(), T)
        .expect("container listening");
    let out = common::curl(&sb, Side::Cluster, &url);
    assert!(out.success() && out.stdout.contains("/hello"), "{out:?}");
    // ...and is unreachable from the workstation namespace.
    let out = sb
        .process(Side::Workstation, "curl", "curl")
        .args(["-sS", "--max-time", "2", &url])
        .run(T)
        .expect("running curl");
    assert!(!out.success(), "container reachable from the workstation: {out:?}");
    // A client inside a container reaches the gateway (the cluster side).
    let echo = d
        .exec(&web, ["wget", "-qO-", "http://127.0.0.1:8080/inside"], T)
        .expect("exec");
    assert!(echo.stdout.contains("/inside"), "{echo:?}");
    drop(d);
    assert!(!dir.exists(), "{} removed on drop", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(
        !mounts.contains(&dir.display().to_string()),
        "no mount left under {}",
        dir.display()
    );
    let procs = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    let procs = String::from_utf8_lossy(&procs.stdout);
    assert!(
        !procs.contains(&dir.display().to_string()),
        "no process of the daemon left:\n{procs}"
    );
}
