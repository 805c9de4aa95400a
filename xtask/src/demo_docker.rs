//! `cargo xtask demo --runtime docker`: netmux-server's Docker runtime end
//! to end, with a private dockerd inside the sandbox's cluster namespace.
//!
//! A compose-like project `shop` (containers labelled as `docker compose`
//! labels them, images built here from `nx-echo` and busybox: no registry)
//! runs on the bridge network `shop_default`; netmux-server runs beside
//! dockerd with `[runtime] kind = "docker"`, netmuxd in the workstation
//! namespace. The demo shows the containers listed by `netmux ls`, curl by
//! container name, by compose `service.project` and by address (through the
//! eBPF redirect when the daemon has it), UDP to a container, and C2L: a
//! container reaching a server on the workstation. Without dockerd it says
//! what to install and stops.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context};
use netmux_testbed::cgroup::ChildCgroup;
use netmux_testbed::docker::{self, Dockerd, ImageSpec, RunSpec};
use netmux_testbed::netmux::{start_server, Layout, ENDPOINT, TOKEN};
use netmux_testbed::{bin, prereq, wait_until, Output, Sandbox, Side};

use crate::demo::{run_in_cgroup, show, step, Interrupt, T};

const IMAGE: &str = "nx-echo:demo";
const NETWORK: &str = "shop_default";
const SUBNET: &str = "172.31.5.0/24";
const DOMAIN: &str = "docker.internal";
/// The embedded DNS server's address in the workstation namespace.
const DNS: &str = "127.0.77.53";

/// Runs the Docker demo; `wait` keeps it up until Ctrl-C.
pub fn demo_docker(wait: bool) -> anyhow::Result<()> {
    if let Some(why) = docker::missing() {
        bail!(
            "`cargo xtask demo --runtime docker` needs a Docker daemon to start privately: {why}.\n\
             Install it with `apt-get install -y docker.io busybox-static` (Debian) and run as root, \
             or run `cargo xtask demo` for the static runtime."
        );
    }
    step("building the workspace binaries: cargo build --bins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--bins"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --bins failed");
    }
    for b in ["netmux-server", "netmuxd", "netmux", "nx-echo"] {
        bin(b).with_context(|| format!("{b} was not built"))?;
    }
    let ebpf = match prereq::ebpf_daemon() {
        None => true,
        Some(why) => {
            println!("{why}; the demo uses the loopback redirect");
            false
        }
    };

    step("creating the sandbox: a workstation and a cluster network namespace joined by a veth");
    let sb = Sandbox::new().context("creating the sandbox (run as root)")?;
    let dockerd: Arc<Mutex<Option<Dockerd>>> = Arc::new(Mutex::new(None));
    let cg = ChildCgroup::new(&format!("nx-demo-docker-{}", std::process::id()))
        .context("creating the demo's cgroup")?;
    let interrupt = {
        let (sandbox, cgroup, dockerd) =
            (sb.teardown_handle(), cg.teardown_handle(), dockerd.clone());
        Interrupt::install(move || {
            // Dropping the daemon removes its containers, mounts and files.
            drop(dockerd.lock().map(|mut d| d.take()));
            cgroup.run();
            sandbox.run();
        })?
    };
    let result = run(&sb, &cg, &dockerd, ebpf, wait, &interrupt);
    if let Err(e) = &result {
        eprintln!("demo failed: {e:#}");
        sb.dump_logs(40);
    }
    step("cleaning up");
    drop(dockerd.lock().map(|mut d| d.take()));
    drop(cg);
    drop(sb);
    println!("done: containers, dockerd, namespaces, cgroup, processes and files removed");
    result
}

fn run(
    sb: &Sandbox,
    cg: &ChildCgroup,
    dockerd: &Mutex<Option<Dockerd>>,
    ebpf: bool,
    wait: bool,
    interrupt: &Interrupt,
) -> anyhow::Result<()> {
    step(&format!(
        "starting a private dockerd in the cluster namespace {} (nsenter --net)",
        sb.cluster().name()
    ));
    let d = Dockerd::start(sb.cluster(), sb.dir()).map_err(|e| anyhow!("{e}"))?;
    println!("DOCKER_HOST={}", d.host());
    let echo = bin("nx-echo")?;
    d.build_image(
        &ImageSpec::new(IMAGE)
            .binary(&echo, "/nx-echo")
            .busybox()
            .cmd(["/nx-echo", "http", "--listen", "0.0.0.0:8080"]),
    )
    .map_err(|e| anyhow!("building the image: {e}"))?;
    let net = d
        .create_network(NETWORK, SUBNET)
        .map_err(|e| anyhow!("{e}"))?;
    let compose = |svc: &str| {
        RunSpec::new(IMAGE)
            .name(&format!("shop_{svc}_1"))
            .network(NETWORK)
            .alias(svc)
            .label("com.docker.compose.project", "shop")
            .label("com.docker.compose.service", svc)
    };
    let c2l = "- name: laptop\n  direction: C2L\n  localPort: 18080\n  containerPort: 9090\n";
    for spec in [
        compose("web").option("--expose=8080"),
        compose("stats").label("netmux.ports", "7000/udp").args([
            "/nx-echo",
            "udp",
            "--listen",
            "0.0.0.0:7000",
        ]),
        compose("client").label("netmux.nx", c2l),
    ] {
        d.run(&spec).map_err(|e| anyhow!("{e}"))?;
    }
    show(&d.docker([
        "ps",
        "--format",
        "table {{.Names}}\t{{.Status}}\t{{.Image}}",
    ])?);
    let web = d
        .inspect("shop_web_1", "{{.Id}}")
        .map(|id| docker::Container {
            id,
            name: "shop_web_1".into(),
        })
        .map_err(|e| anyhow!("{e}"))?;
    let web_ip = d.address(&web, NETWORK).map_err(|e| anyhow!("{e}"))?;
    let client = docker::Container {
        id: d.inspect("shop_client_1", "{{.Id}}")?,
        name: "shop_client_1".into(),
    };
    *dockerd.lock().map_err(|_| anyhow!("lock"))? = Some(d);

    step("starting netmux-server ([runtime] kind = \"docker\") and netmuxd");
    let layout = Layout::new(sb);
    let host = dockerd
        .lock()
        .map_err(|_| anyhow!("lock"))?
        .as_ref()
        .map(Dockerd::host)
        .unwrap_or_default();
    let base: String = layout
        .server_toml()
        .split("[runtime]")
        .next()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with("cluster_cidrs"))
        .map(|l| format!("{l}\n"))
        .collect();
    write(
        &layout.server_config,
        &format!(
            "cluster_cidrs = [\"{SUBNET}\"]\n{base}[runtime]\nkind = \"docker\"\nhost = \"{host}\"\n\
             networks = [\"{NETWORK}\"]\ncluster_domain = \"{DOMAIN}\"\n"
        ),
    )?;
    let extra = format!(
        "redirect = \"{}\"\ncgroup = \"{}\"\ndns = {{ listen = \"{DNS}:53\", method = \"none\" }}\n",
        if ebpf { "auto" } else { "loopback" },
        cg.path().display()
    );
    write(
        &layout.daemon_config,
        &layout
            .daemon_toml(&sb.ws_hosts_file(), TOKEN, &extra)
            .replace(
                "cluster_domain = \"cluster.local\"",
                &format!("cluster_domain = \"{DOMAIN}\""),
            ),
    )?;
    // The workstation's resolver: the daemon's DNS with the search domains
    // that make `shop-web-1` mean shop-web-1.docker.svc.docker.internal (the
    // runtime's namespace) and `web.shop` web.shop.svc.docker.internal.
    write(
        &sb.ws().etc_dir().join("resolv.conf"),
        &format!("nameserver {DNS}\nsearch docker.svc.{DOMAIN} svc.{DOMAIN} {DOMAIN}\noptions timeout:1 attempts:2\n"),
    )?;
    let _server = start_server(sb, &layout).map_err(|e| anyhow!("{e}"))?;
    let _daemon = sb
        .process(Side::Workstation, "netmuxd", bin("netmuxd")?)
        .arg("--config")
        .arg(&layout.daemon_config)
        .spawn()?;
    wait_until("netmuxd's socket", T, || layout.socket.exists())?;
    let _laptop = sb
        .process(Side::Workstation, "laptop-http", &echo)
        .args(["http", "--listen", "127.0.0.1:18080"])
        .spawn()?;
    println!("server config: {}", layout.server_config.display());
    println!("daemon config: {}", layout.daemon_config.display());

    let cli = |args: &[&str]| -> anyhow::Result<Output> {
        println!("$ netmux {}", args.join(" "));
        let out = sb
            .process(Side::Workstation, "netmux-cli", bin("netmux")?)
            .arg("--socket")
            .arg(&layout.socket)
            .args(args)
            .run(T)?;
        show(&out);
        Ok(out)
    };
    let inside = |program: &str, args: &[&str]| run_in_cgroup(sb, cg, program, args);
    cli(&["connect", ENDPOINT])?.ok()?;
    wait_until("the containers in the catalog", T, || {
        sb.process(
            Side::Workstation,
            "netmux-cli",
            bin("netmux").unwrap_or_default(),
        )
        .arg("--socket")
        .arg(&layout.socket)
        .arg("ls")
        .run(T)
        .is_ok_and(|o| o.stdout.contains("shop/web"))
    })?;
    cli(&["start", ENDPOINT, "+"])?.ok()?;
    cli(&["ls"])?.ok()?;

    step("L2C: curl by container name, compose service.project and address");
    for url in [
        "http://shop-web-1:8080/by-container-name".to_owned(),
        "http://web.shop:8080/by-compose-name".to_owned(),
        format!("http://{web_ip}:8080/by-address"),
    ] {
        let out = inside("curl", &["-sS", "--max-time", "5", &url])?;
        if !out.success() {
            bail!("curl {url} failed: {}", out.stderr);
        }
    }

    step("UDP: a datagram to the stats container and its echo");
    let py = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(3)\n\
              s.sendto(b'hello stats',('stats.shop.svc.docker.internal',7000))\nprint(s.recvfrom(100)[0].decode())";
    inside("python3", &["-c", py])?.ok()?;

    step("C2L: a container reaches a server on the workstation");
    cli(&["start", ENDPOINT, "laptop"])?.ok()?;
    let url = format!("http://{}:9090/from-a-container", net.gateway);
    println!("$ docker exec shop_client_1 wget -qO- {url}");
    let mut last = None;
    // The claim's listener comes up moments after `start` returns.
    let answered = wait_until("the C2L listener", T, || {
        let out = dockerd.lock().ok().and_then(|g| {
            g.as_ref()
                .map(|d| d.exec(&client, ["wget", "-qO-", &url], T))
        });
        let ok = matches!(&out, Some(Ok(o)) if o.success());
        last = out;
        ok
    });
    match last {
        Some(Ok(out)) => show(&out),
        Some(Err(e)) => eprintln!("{e}"),
        None => {}
    }
    if answered.is_err() {
        bail!("the container could not reach the workstation");
    }

    if wait {
        println!(
            "\nThe sandbox stays up until Ctrl-C. Try:\n  docker --host {host} ps\n  \
             ip netns exec {ws} sh -c 'echo $$ > {cg}/cgroup.procs; exec curl http://web.shop:8080/'\n  \
             ip netns exec {ws} {} --socket {} ls",
            bin("netmux")?.display(),
            layout.socket.display(),
            ws = sb.ws().name(),
            cg = cg.path().display(),
        );
        interrupt.wait();
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
