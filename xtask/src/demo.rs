//! `cargo xtask demo`: netmux end to end in a two-namespace sandbox.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use netmux_testbed::netmux::{Netmux, ServiceSpec, ENDPOINT};
use netmux_testbed::{bin, Sandbox, Side};

use crate::util::cargo;

const T: Duration = Duration::from_secs(20);

fn step(msg: &str) {
    println!("\n==> {msg}");
}

fn show(out: &netmux_testbed::Output) {
    print!("{}", out.stdout);
    if !out.stderr.trim().is_empty() {
        eprint!("{}", out.stderr);
    }
}

/// Runs the demo; `wait` keeps it up until Ctrl-C.
pub fn demo(wait: bool) -> anyhow::Result<()> {
    step("building the workspace binaries");
    cargo(&[
        "build",
        "-p",
        "netmux-server",
        "-p",
        "netmux-daemon",
        "-p",
        "sample-apps",
        "--bins",
    ])?;
    for b in ["netmux-server", "netmuxd", "netmux", "nx-echo"] {
        bin(b).with_context(|| format!("{b} was not built"))?;
    }

    step("creating the sandbox: a workstation and a cluster network namespace joined by a veth");
    let sb = Sandbox::new().context("creating the sandbox (run as root)")?;
    let teardown = sb.teardown_handle();
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        ctrlc::set_handler(move || {
            if interrupted.swap(true, Ordering::SeqCst) {
                return;
            }
            eprintln!("\ninterrupted: cleaning up the sandbox");
            teardown.run();
            std::process::exit(130);
        })
        .context("installing the Ctrl-C handler")?;
    }
    println!(
        "workstation: {} ({}), cluster: {} ({}), no route out",
        sb.ws().name(),
        sb.ws_addr(),
        sb.cluster().name(),
        sb.cluster_addr()
    );

    let http_ip: IpAddr = "10.96.0.10".parse()?;
    let tcp_ip: IpAddr = "10.96.0.11".parse()?;
    let services = [
        ServiceSpec::l2c("http-echo", http_ip, 80, 8080),
        ServiceSpec::l2c("tcp-echo", tcp_ip, 9000, 9000),
    ];
    for s in &services {
        sb.add_service_address(s.address)?;
    }

    step("starting the sample services in the cluster namespace");
    let nx_echo = bin("nx-echo")?;
    let _http = sb
        .process(Side::Cluster, "http-echo", &nx_echo)
        .args([
            "http",
            "--listen",
            &services[0].target().to_string(),
            "--name",
            "http-echo",
        ])
        .spawn()?;
    let _tcp = sb
        .process(Side::Cluster, "tcp-echo", &nx_echo)
        .args(["tcp", "--listen", &services[1].target().to_string()])
        .spawn()?;
    for s in &services {
        sb.wait_for_tcp(Side::Cluster, s.target(), T)?;
        println!("{} listening on {} (cluster only)", s.name, s.target());
    }

    step("starting netmux-server (cluster) and netmuxd (workstation)");
    let nm = match Netmux::start(&sb, &services) {
        Ok(nm) => nm,
        Err(e) => {
            sb.dump_logs(40);
            bail!("starting netmux: {e}");
        }
    };
    println!("server config: {}", nm.layout.server_config.display());
    println!("daemon config: {}", nm.layout.daemon_config.display());

    let result = run_cli_steps(&sb, &nm, &services);
    if let Err(e) = &result {
        eprintln!("demo failed: {e:#}");
        sb.dump_logs(40);
    }
    if wait && result.is_ok() {
        println!(
            "\nThe sandbox stays up until Ctrl-C. Try:\n  ip netns exec {} curl http://{}/\n  \
             ip netns exec {} {} --socket {} ls",
            sb.ws().name(),
            services[0].fqdn(),
            sb.ws().name(),
            bin("netmux")?.display(),
            nm.layout.socket.display()
        );
        while !interrupted.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    step("cleaning up");
    drop(nm);
    drop(sb);
    println!("done: namespaces, processes and files removed");
    result
}

fn run_cli_steps(sb: &Sandbox, nm: &Netmux<'_>, services: &[ServiceSpec]) -> anyhow::Result<()> {
    step(&format!("netmux connect {ENDPOINT}"));
    show(&nm.cli(["connect", ENDPOINT])?.ok()?);
    nm.wait_for_ls("the endpoint to list its services", T, |json| {
        services.iter().all(|s| json.contains(&s.name))
    })?;

    step(&format!("netmux start {ENDPOINT} +"));
    show(&nm.cli(["start", ENDPOINT, "+"])?.ok()?);

    step("netmux ls");
    show(&nm.cli(["ls"])?.ok()?);

    step(&format!(
        "workstation hosts file ({})",
        sb.ws_hosts_file().display()
    ));
    print!("{}", std::fs::read_to_string(sb.ws_hosts_file())?);

    let url = format!("http://{}/", services[0].fqdn());
    step(&format!(
        "curl -sS {url}   (in the workstation namespace, by name)"
    ));
    let curl = sb.exec(
        Side::Workstation,
        "curl",
        ["-sS", "--max-time", "10", &url],
        T,
    )?;
    show(&curl);

    step(&format!(
        "echo 'hello through the tunnel' | socat - TCP:{}:{}",
        services[1].fqdn(),
        services[1].port
    ));
    let socat = sb.exec(
        Side::Workstation,
        "sh",
        [
            "-c",
            &format!(
                "echo 'hello through the tunnel' | socat -t 5 - TCP:{}:{}",
                services[1].fqdn(),
                services[1].port
            ),
        ],
        T,
    )?;
    show(&socat);
    Ok(())
}
