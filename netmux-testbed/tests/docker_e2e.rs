//! End-to-end tests of the Docker runtime against a real, private dockerd
//! (Debian's `docker.io`) started inside the sandbox's cluster namespace by
//! [`netmux_testbed::docker::Dockerd`]: its bridges and container addresses
//! live only in namespaces the test created. `netmux-server` runs beside
//! dockerd in the cluster namespace with `[runtime] kind = "docker"`,
//! `netmuxd` in the workstation namespace.
//!
//! Need root, dockerd, busybox-static and the built binaries (the eBPF
//! tests also a daemon built with the eBPF programs); run with
//! `--test-threads=1` (as `cargo xtask test` does).

use std::path::Path;
use std::time::Duration;

use netmux_testbed::cgroup::ChildCgroup;
use netmux_testbed::docker::{self, Container, Dockerd, ImageSpec, Network, RunSpec};
use netmux_testbed::netmux::{start_server_with_env, Layout, ENDPOINT, LOOPBACK, TOKEN};
use netmux_testbed::{bin, prereq, wait_until, Output, Process, Sandbox, Side};

mod common;
use common::{nx_echo, sandbox, unique, T};

/// Tag of the image every test builds: nx-echo plus busybox.
const IMAGE: &str = "nx-echo:test";
/// The network containers and the server share (the server, beside
/// dockerd, holds the bridge's first address).
const NETWORK: &str = "apps";
const SUBNET: &str = "172.31.5.0/24";
/// Cluster domain of the runtime and the daemon's endpoint.
const DOMAIN: &str = "docker.internal";
/// Longer than the health check's one-second interval a few times over.
const LONG: Duration = Duration::from_secs(40);

fn require(test: &str, ebpf: bool) -> bool {
    prereq::require(
        &format!("docker_e2e::{test}"),
        prereq::first([
            docker::missing(),
            prereq::tools(&["curl", "python3"]),
            prereq::binaries(&["nx-echo", "netmux-server", "netmuxd", "netmux"]),
            if ebpf { prereq::ebpf_daemon() } else { None },
        ]),
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

/// An HTTP echo container on [`NETWORK`], port 8080 exposed.
fn http(name: &str) -> RunSpec {
    RunSpec::new(IMAGE)
        .name(name)
        .network(NETWORK)
        .option("--expose=8080")
}

/// Server (docker runtime) and daemon up and connected, in that order of
/// drop: daemon and server first, then the cgroup, then dockerd.
struct World<'a> {
    sb: &'a Sandbox,
    layout: Layout,
    server: Process,
    daemon: Process,
    _local: Vec<Process>,
    cg: Option<ChildCgroup>,
    docker: Dockerd,
    net: Network,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Starts dockerd, runs `containers`, then the server and the daemon
/// (eBPF redirect in a child cgroup, or loopback), and connects.
fn world<'a>(sb: &'a Sandbox, ebpf: bool, containers: &[RunSpec]) -> World<'a> {
    world_on(sb, dockerd(sb), ebpf, containers, &[])
}

/// [`world`] on an engine already started (dockerd or Podman). With
/// `server_env`, the server finds the API from its environment
/// (`DOCKER_HOST`...) instead of `host` in its config.
fn world_on<'a>(
    sb: &'a Sandbox,
    docker: Dockerd,
    ebpf: bool,
    containers: &[RunSpec],
    server_env: &[(&str, String)],
) -> World<'a> {
    let net = docker.create_network(NETWORK, SUBNET).expect("network");
    for c in containers {
        docker.run(c).expect("running a container");
    }
    let layout = Layout::new(sb);
    // The Docker networks are the cluster's ranges: the daemon's eBPF
    // redirect takes over catalog addresses inside them only.
    let static_part = layout.server_toml();
    let base: String = static_part
        .split("[runtime]")
        .next()
        .expect("server config")
        .lines()
        .filter(|l| !l.starts_with("cluster_cidrs"))
        .map(|l| format!("{l}\n"))
        .collect();
    let base = format!("cluster_cidrs = [\"172.31.0.0/16\"]\n{base}");
    write(
        &layout.server_config,
        &format!(
            "{base}[runtime]\nkind = \"docker\"\n{}networks = [\"{NETWORK}\"]\ncluster_domain = \"{DOMAIN}\"\n",
            if server_env.is_empty() {
                format!("host = \"{}\"\n", docker.host())
            } else {
                String::new()
            }
        ),
    );
    let cg = ebpf.then(|| ChildCgroup::new(&unique("cg")).expect("child cgroup"));
    let extra = match &cg {
        Some(cg) => format!(
            "redirect = \"ebpf\"\ncgroup = \"{}\"\n",
            cg.path().display()
        ),
        None => LOOPBACK.to_owned(),
    };
    write(
        &layout.daemon_config,
        &layout
            .daemon_toml(&sb.ws_hosts_file(), TOKEN, &extra)
            .replace(
                "cluster_domain = \"cluster.local\"",
                // The eBPF redirect takes over the containers' network only.
                &format!("cluster_domain = \"{DOMAIN}\"\ncluster_cidrs = [\"{SUBNET}\"]"),
            ),
    );
    let server = start_server_with_env(sb, &layout, server_env)
        .unwrap_or_else(|e| panic!("netmux-server: {e}"));
    let daemon = sb
        .process(
            Side::Workstation,
            "netmuxd",
            bin("netmuxd").expect("netmuxd built"),
        )
        .arg("--config")
        .arg(&layout.daemon_config)
        .spawn()
        .expect("netmuxd");
    wait_until("netmuxd's socket", T, || layout.socket.exists())
        .unwrap_or_else(|e| panic!("netmuxd: {e}\n{}", daemon.log()));
    let w = World {
        sb,
        layout,
        server,
        daemon,
        _local: vec![],
        cg,
        docker,
        net,
    };
    let out = w.cli(&["connect", ENDPOINT]);
    assert!(out.success(), "connect: {}{}", out.stdout, out.stderr);
    w
}

impl World<'_> {
    fn cli(&self, args: &[&str]) -> Output {
        self.sb
            .process(
                Side::Workstation,
                "netmux-cli",
                bin("netmux").expect("netmux built"),
            )
            .arg("--socket")
            .arg(&self.layout.socket)
            .args(args)
            .run(T)
            .expect("running netmux")
    }

    /// `netmux ls` (services are listed as `docker/NAME`, the runtime's
    /// default namespace).
    fn ls(&self) -> String {
        self.cli(&["ls"]).stdout
    }

    /// Whether `name` is in the catalog the daemon holds (a started
    /// service that left it stays listed as "no longer published").
    fn listed(&self, name: &str) -> bool {
        let row = format!("SVC  docker/{name} ");
        self.ls()
            .lines()
            .any(|l| l.contains(&row) && !l.contains("no longer published"))
    }

    fn wait_listed(&self, name: &str, present: bool) {
        wait_until(
            &format!(
                "{name} {} netmux ls",
                if present { "in" } else { "gone from" }
            ),
            LONG,
            || self.listed(name) == present,
        )
        .unwrap_or_else(|e| panic!("{e}; ls:\n{}", self.ls()));
    }

    fn start(&self, name: &str) {
        let out = self.cli(&["start", ENDPOINT, name]);
        assert!(out.success(), "start {name}: {}{}", out.stdout, out.stderr);
    }

    /// `program args` in the workstation namespace, inside the eBPF cgroup
    /// when there is one.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let p = self.sb.process(Side::Workstation, program, "sh");
        let p = match &self.cg {
            Some(cg) => p.args(cg.wrap(program, args)),
            None => p.args(["-c", "exec \"$@\"", "sh", program]).args(args),
        };
        p.run(T).expect("running in the workstation")
    }

    fn curl(&self, url: &str) -> Output {
        self.run("curl", &["-sS", "--max-time", "5", url])
    }

    fn address(&self, c: &Container) -> String {
        self.docker
            .address(c, NETWORK)
            .expect("address")
            .to_string()
    }

    fn container(&self, name: &str) -> Container {
        Container {
            id: self.docker.inspect(name, "{{.Id}}").expect("inspect"),
            name: name.to_owned(),
        }
    }
}

impl Drop for World<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- netmux-server -----\n{}", self.server.log());
            eprintln!("----- netmuxd -----\n{}", self.daemon.log());
        }
    }
}

#[test]
fn curl_by_container_name_compose_name_and_address_through_ebpf() {
    if !require(
        "curl_by_container_name_compose_name_and_address_through_ebpf",
        true,
    ) {
        return;
    }
    let sb = sandbox();
    let compose = http("shop_web_1")
        .label("com.docker.compose.project", "shop")
        .label("com.docker.compose.service", "web")
        .alias("web");
    let w = world(&sb, true, &[compose]);
    w.wait_listed("shop-web-1", true);
    w.start("+");
    // What the daemon's DNS integration does on a workstation: its
    // resolver with the cluster's search domains, so `web.shop` becomes
    // `web.shop.svc.docker.internal` (hosts files cannot hold SVC.NS).
    write(
        &sb.ws().etc_dir().join("resolv.conf"),
        &format!(
            "nameserver 127.0.77.53\nsearch svc.{DOMAIN} {DOMAIN}\noptions timeout:1 attempts:1\n"
        ),
    );
    let web = w.container("shop_web_1");
    let addr = w.address(&web);
    for (how, url) in [
        (
            "container name",
            "http://shop-web-1:8080/by-name".to_owned(),
        ),
        (
            "qualified name",
            format!("http://shop-web-1.docker.svc.{DOMAIN}:8080/by-fqdn"),
        ),
        (
            "compose service.project",
            "http://web.shop:8080/by-compose".to_owned(),
        ),
        (
            "qualified compose name",
            format!("http://web.shop.svc.{DOMAIN}:8080/by-compose-fqdn"),
        ),
        (
            "network alias",
            format!("http://web.{DOMAIN}:8080/by-alias"),
        ),
        ("address", format!("http://{addr}:8080/by-address")),
    ] {
        let path = url.rsplit('/').next().unwrap_or_default().to_owned();
        let out = w.curl(&url);
        assert!(
            out.success() && out.stdout.contains(&format!("path=/{path}")),
            "curl by {how} ({url}): {}{}\nhosts:\n{}\nls:\n{}",
            out.stdout,
            out.stderr,
            std::fs::read_to_string(sb.ws_hosts_file()).unwrap_or_default(),
            w.ls()
        );
    }
    // The address is the container's own, reached only through netmux:
    // outside the cgroup the workstation has no route to it.
    let out =
        w.sb.process(Side::Workstation, "curl-outside", "curl")
            .args(["-sS", "--max-time", "3", &format!("http://{addr}:8080/")])
            .run(T)
            .expect("curl");
    assert!(!out.success(), "reachable without netmux: {}", out.stdout);
}

#[test]
fn udp_to_a_container() {
    if !require("udp_to_a_container", true) {
        return;
    }
    let sb = sandbox();
    let udp = RunSpec::new(IMAGE)
        .name("stats")
        .network(NETWORK)
        .label("netmux.ports", "7000/udp")
        .args(["/nx-echo", "udp", "--listen", "0.0.0.0:7000"]);
    let w = world(&sb, true, &[udp]);
    w.wait_listed("stats", true);
    w.start("stats");
    let addr = w.address(&w.container("stats"));
    let py = format!(
        r#"
import socket
for target in ('{addr}', 'stats'):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(b'hello-' + target.encode(), (target, 7000))
    data, src = s.recvfrom(100)
    print(data.decode(), src[1])
"#
    );
    let out = w.run("python3", &["-c", &py]);
    assert!(
        out.success(),
        "python: {}{}\nls:\n{}\nstatus:\n{}",
        out.stdout,
        out.stderr,
        w.ls(),
        w.cli(&["status"]).stdout
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [format!("hello-{addr} 7000").as_str(), "hello-stats 7000"],
        "{}",
        out.stdout
    );
}

#[test]
fn c2l_from_a_container_to_the_workstation() {
    if !require("c2l_from_a_container_to_the_workstation", false) {
        return;
    }
    let sb = sandbox();
    let nx = "- name: ws-api\n  direction: C2L\n  localPort: 18080\n  containerPort: 9090\n";
    let client = http("client").label("netmux.nx", nx);
    let mut w = world(&sb, false, &[client]);
    w._local.push(nx_echo(
        &sb,
        Side::Workstation,
        "ws-http",
        "http",
        "127.0.0.1:18080".parse().expect("addr"),
    ));
    w.wait_listed("ws-api", true);
    w.start("ws-api");
    let client = w.container("client");
    // The server, beside dockerd, is the bridge's gateway for containers.
    let url = format!("http://{}:9090/from-container", w.net.gateway);
    let mut last = None;
    wait_until("the C2L listener to answer the container", T, || {
        let out = w
            .docker
            .exec(&client, ["wget", "-qO-", &url], T)
            .expect("docker exec");
        let ok = out.success() && out.stdout.contains("path=/from-container");
        last = Some(out);
        ok
    })
    .unwrap_or_else(|e| panic!("{e}: {last:?}"));
    let out = last.expect("an answer");
    assert!(
        out.stdout.contains("127.0.0.1:18080"),
        "answered by the workstation's server: {}",
        out.stdout
    );
}

#[test]
fn containers_started_after_connect_appear_and_stopped_ones_disappear() {
    if !require(
        "containers_started_after_connect_appear_and_stopped_ones_disappear",
        false,
    ) {
        return;
    }
    let sb = sandbox();
    let w = world(&sb, false, &[http("first")]);
    w.wait_listed("first", true);
    assert!(!w.listed("late"), "{}", w.ls());
    let late = w.docker.run(&http("late")).expect("run late");
    w.wait_listed("late", true);
    w.start("late");
    let out = w.curl("http://late:8080/late");
    assert!(
        out.stdout.contains("path=/late"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    // Published by label, though on another network the server shares.
    let other = w
        .docker
        .create_network("other", "172.31.6.0/24")
        .expect("network");
    w.docker
        .run(
            &RunSpec::new(IMAGE)
                .name("labelled")
                .network(&other.name)
                .option("--expose=8080")
                .label("netmux.publish", "true"),
        )
        .expect("run labelled");
    w.docker
        .run(
            &RunSpec::new(IMAGE)
                .name("unlabelled")
                .network(&other.name)
                .option("--expose=8080"),
        )
        .expect("run unlabelled");
    w.wait_listed("labelled", true);
    assert!(!w.listed("unlabelled"), "{}", w.ls());
    w.docker.stop(&late, 1).expect("stop");
    w.wait_listed("late", false);
    assert!(w.listed("first"), "{}", w.ls());
    // Renamed: published under the new name only.
    w.docker
        .docker(["rename", "first", "renamed"])
        .expect("rename");
    w.wait_listed("renamed", true);
    w.wait_listed("first", false);
}

#[test]
fn unhealthy_containers_are_not_published() {
    if !require("unhealthy_containers_are_not_published", false) {
        return;
    }
    let sb = sandbox();
    let checked = http("checked").health_cmd("test -f /tmp/ok");
    let w = world(&sb, false, &[checked, http("plain")]);
    w.wait_listed("plain", true);
    let checked = w.container("checked");
    wait_until("checked to be unhealthy", LONG, || {
        w.docker
            .inspect(&checked.id, "{{.State.Health.Status}}")
            .is_ok_and(|s| s == "unhealthy")
    })
    .expect("unhealthy");
    assert!(!w.listed("checked"), "unhealthy published: {}", w.ls());
    w.docker
        .exec(&checked, ["touch", "/tmp/ok"], T)
        .expect("exec")
        .ok()
        .expect("touch");
    w.wait_listed("checked", true);
    w.docker
        .exec(&checked, ["rm", "/tmp/ok"], T)
        .expect("exec")
        .ok()
        .expect("rm");
    w.wait_listed("checked", false);
}

#[test]
fn a_bad_label_is_refused_with_its_reason() {
    if !require("a_bad_label_is_refused_with_its_reason", false) {
        return;
    }
    let sb = sandbox();
    let bad = http("bad").label("netmux.nx", "- name: api\n  localport: 80\n");
    let worse = http("worse").label("netmux.ports", "http");
    let w = world(&sb, false, &[bad, worse, http("good")]);
    w.wait_listed("good", true);
    wait_until("the refusals in the server log", T, || {
        let log = w.server.log();
        log.contains("container bad") && log.contains("container worse")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", w.server.log()));
    let log = w.server.log();
    let line = |who: &str| {
        log.lines()
            .find(|l| l.contains(&format!("container {who}")))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line("bad").contains("unknown field `localport`") && line("bad").contains("localPort"),
        "{}",
        line("bad")
    );
    assert!(
        line("worse").contains("netmux.ports") && line("worse").contains("fix:"),
        "{}",
        line("worse")
    );
    let ls = w.ls();
    assert!(
        !ls.contains("/bad ") && !ls.contains("/api ") && !ls.contains("/worse "),
        "{ls}"
    );
    assert!(
        w.server.log().matches("container bad").count() == 1,
        "told once"
    );
}

#[test]
fn a_dockerd_restart_is_survived() {
    if !require("a_dockerd_restart_is_survived", false) {
        return;
    }
    let sb = sandbox();
    let mut w = world(&sb, false, &[http("steady").restart("always")]);
    w.wait_listed("steady", true);
    w.start("steady");
    let out = w.curl("http://steady:8080/before");
    assert!(
        out.stdout.contains("path=/before"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    w.docker.restart().expect("restarting dockerd");
    // Listed again and followed again: a container started after the
    // restart appears, and the restarted one answers.
    w.docker.run(&http("fresh")).expect("run fresh");
    w.wait_listed("fresh", true);
    wait_until("steady to answer again", LONG, || {
        w.curl("http://steady:8080/after")
            .stdout
            .contains("path=/after")
    })
    .unwrap_or_else(|e| panic!("{e}; ls:\n{}", w.ls()));
    assert!(
        w.server.log().contains("docker API unavailable"),
        "the server saw the API go away"
    );
    let fresh = w.container("fresh");
    w.docker.stop(&fresh, 1).expect("stop");
    w.wait_listed("fresh", false);
}

#[test]
fn fixture_runs_containers_in_the_sandbox_and_cleans_up() {
    if !require(
        "fixture_runs_containers_in_the_sandbox_and_cleans_up",
        false,
    ) {
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
    assert!(
        !out.success(),
        "container reachable from the workstation: {out:?}"
    );
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

#[test]
fn podmans_docker_api_serves_the_runtime_too() {
    if !prereq::require(
        "docker_e2e::podmans_docker_api_serves_the_runtime_too",
        prereq::first([
            docker::podman_missing(),
            prereq::tools(&["curl"]),
            prereq::binaries(&["nx-echo", "netmux-server", "netmuxd", "netmux"]),
        ]),
    ) {
        return;
    }
    let sb = sandbox();
    let podman =
        Dockerd::start_podman(sb.cluster(), sb.dir()).expect("starting podman's API service");
    podman
        .build_image(&image())
        .expect("building the test image");
    let version = podman
        .docker(["version", "--format", "{{.Server.Version}}"])
        .expect("version");
    let w = world_on(&sb, podman, false, &[http("first")], &[]);
    let server = w.docker.docker(["version"]).expect("version").stdout;
    assert!(server.contains("Podman Engine"), "{server}\n{version:?}");
    // Listed with its address, reachable by name...
    w.wait_listed("first", true);
    w.start("first");
    let out = w.curl("http://first:8080/podman");
    assert!(
        out.stdout.contains("path=/podman"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    // ...and followed through Podman's events.
    let late = w.docker.run(&http("late")).expect("run late");
    w.wait_listed("late", true);
    w.docker.stop(&late, 1).expect("stop");
    w.wait_listed("late", false);
    let bad = w
        .docker
        .run(&http("bad").label("netmux.publish", "yes"))
        .expect("run bad");
    wait_until("the refusal in the server log", T, || {
        w.server.log().contains("container bad")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", w.server.log()));
    assert!(!w.listed(&bad.name), "{}", w.ls());
}

/// `openssl ARGS` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, dockerd's certificate for `ip` and a client certificate, as
/// `dockerd --tlsverify` and DOCKER_CERT_PATH expect them.
fn tls_files(dir: &Path, ip: &str) {
    std::fs::create_dir_all(dir).expect("cert dir");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=nx-test-ca"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca-key.pem", "-out", "ca.pem"]);
    openssl(dir, &ca);
    for (name, cn, ext) in [
        (
            "server",
            "dockerd",
            format!("subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth"),
        ),
        (
            "client",
            "netmux-server",
            "extendedKeyUsage=clientAuth".to_owned(),
        ),
    ] {
        let mut req = vec!["req", "-subj"];
        let subj = format!("/CN={cn}");
        req.push(&subj);
        req.extend(ec);
        let key = format!("{name}-key.pem");
        let csr = format!("{name}.csr");
        req.extend(["-keyout", &key, "-out", &csr]);
        openssl(dir, &req);
        let extfile = format!("{name}.ext");
        write(&dir.join(&extfile), &format!("{ext}\n"));
        let cert = format!("{name}-cert.pem");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-extfile",
                &extfile,
                "-out",
                &cert,
            ],
        );
    }
    // DOCKER_CERT_PATH's names for the client side.
    std::fs::copy(dir.join("client-cert.pem"), dir.join("cert.pem")).expect("cert.pem");
    std::fs::copy(dir.join("client-key.pem"), dir.join("key.pem")).expect("key.pem");
}

#[test]
fn tcp_with_tls_from_docker_host_and_docker_cert_path() {
    if !prereq::require(
        "docker_e2e::tcp_with_tls_from_docker_host_and_docker_cert_path",
        prereq::first([
            docker::missing(),
            prereq::tools(&["curl", "openssl"]),
            prereq::binaries(&["nx-echo", "netmux-server", "netmuxd", "netmux"]),
        ]),
    ) {
        return;
    }
    let sb = sandbox();
    let ip = sb.cluster_addr().to_string();
    let certs = sb.dir().join("docker-certs");
    tls_files(&certs, &ip);
    let c = |f: &str| certs.join(f).display().to_string();
    let d = Dockerd::start_with(
        sb.cluster(),
        sb.dir(),
        &[
            format!("--host=tcp://{ip}:2376"),
            "--tlsverify".into(),
            format!("--tlscacert={}", c("ca.pem")),
            format!("--tlscert={}", c("server-cert.pem")),
            format!("--tlskey={}", c("server-key.pem")),
        ],
    )
    .expect("starting dockerd with TLS");
    d.build_image(&image()).expect("building the test image");
    let env = [
        ("DOCKER_HOST", format!("tcp://{ip}:2376")),
        ("DOCKER_CERT_PATH", certs.display().to_string()),
        ("DOCKER_TLS_VERIFY", "1".to_owned()),
    ];
    let w = world_on(&sb, d, false, &[http("tls-web")], &env);
    w.wait_listed("tls-web", true);
    let log = w.server.log();
    assert!(
        log.contains(&format!("tcp://{ip}:2376 (TLS)")),
        "the server used TCP with TLS:\n{log}"
    );
    // Followed over the same connection kind.
    w.docker.run(&http("tls-late")).expect("run");
    w.wait_listed("tls-late", true);
}
