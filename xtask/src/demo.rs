//! `cargo xtask demo`: netmux end to end in a two-namespace sandbox.
//!
//! It installs what it needs through the same prerequisite step as
//! `cargo xtask test`, then shows, each step with its command and answer:
//! the eBPF redirect in a cgroup the demo creates (a process reaches a
//! Service by its cluster IP and `getpeername` shows the cluster address),
//! a name through the embedded DNS, a static binary, UDP (`dig` against a
//! DNS server in the cluster namespace) and C2L (a cluster client reaches a
//! service on the workstation). Only where eBPF cannot load does it fall
//! back to loopback, and it prints why.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use netmux_testbed::cgroup::ChildCgroup;
use netmux_testbed::netmux::{Netmux, ServiceSpec, ENDPOINT, TOKEN};
use netmux_testbed::{bin, Process, Sandbox, Side};

use crate::prereq::{self, EbpfBuild};
use crate::util::cargo;

pub(crate) const T: Duration = Duration::from_secs(20);
/// The embedded DNS server's address in the workstation namespace.
const DNS: &str = "127.0.77.53";

pub(crate) fn step(msg: &str) {
    println!("\n==> {msg}");
}

pub(crate) fn show(out: &netmux_testbed::Output) {
    print!("{}", out.stdout);
    if !out.stderr.trim().is_empty() {
        eprint!("{}", out.stderr);
    }
}

/// The demo's services: two TCP and one UDP L2C, one C2L.
struct Services {
    http: ServiceSpec,
    tcp: ServiceSpec,
    dns: ServiceSpec,
    laptop: ServiceSpec,
}

impl Services {
    fn new() -> anyhow::Result<Services> {
        let ip = |s: &str| -> anyhow::Result<IpAddr> { Ok(s.parse()?) };
        Ok(Services {
            http: ServiceSpec::l2c("http-echo", ip("10.96.0.10")?, 80, 8080),
            tcp: ServiceSpec::l2c("tcp-echo", ip("10.96.0.11")?, 9000, 9000),
            dns: ServiceSpec {
                protocol: "udp",
                ..ServiceSpec::l2c("dns", ip("10.96.0.53")?, 53, 53)
            },
            // The server listens on 10.96.0.20:8088 in the cluster; the
            // daemon dials 127.0.0.1:18080 on the workstation.
            laptop: ServiceSpec {
                direction: "C2L",
                ..ServiceSpec::l2c("laptop-web", ip("10.96.0.20")?, 8088, 18080)
            },
        })
    }

    fn all(&self) -> [ServiceSpec; 4] {
        [
            self.http.clone(),
            self.tcp.clone(),
            self.dns.clone(),
            self.laptop.clone(),
        ]
    }
}

/// What a demo's Ctrl-C handler and its main thread share.
pub(crate) struct Interrupt {
    /// How many times Ctrl-C was pressed.
    presses: AtomicU32,
    /// The main thread is in [`Interrupt::wait`] and cleans up itself.
    waiting: AtomicBool,
}

/// What one Ctrl-C does.
#[derive(Debug, PartialEq, Eq)]
enum Press {
    /// The main thread ends its wait and its drops remove everything.
    LeaveToMain,
    /// The main thread is removing the sandbox: say so, once.
    Removing,
    /// Remove everything from the handler and exit.
    TearDown,
}

/// The `n`th Ctrl-C (from 1), while the main thread waits or not.
fn press(n: u32, waiting: bool) -> Press {
    match (waiting, n) {
        (true, 1) => Press::LeaveToMain,
        (true, 2) => Press::Removing,
        _ => Press::TearDown,
    }
}

impl Interrupt {
    /// Installs the Ctrl-C handler. During [`Interrupt::wait`] Ctrl-C ends
    /// the wait and the main thread's drops remove everything (a second
    /// Ctrl-C says so, a third removes it from the handler); during a step
    /// (which may hang) the handler runs `teardown` (what those drops would
    /// remove: drops do not run on `exit`) and exits.
    pub(crate) fn install(teardown: impl Fn() + Send + 'static) -> anyhow::Result<Arc<Interrupt>> {
        let it = Arc::new(Interrupt {
            presses: AtomicU32::new(0),
            waiting: AtomicBool::new(false),
        });
        let seen = it.clone();
        ctrlc::set_handler(move || {
            let n = seen.presses.fetch_add(1, Ordering::SeqCst) + 1;
            match press(n, seen.waiting.load(Ordering::SeqCst)) {
                Press::LeaveToMain => {}
                Press::Removing => {
                    eprintln!("\nthe sandbox is being removed (Ctrl-C again: remove it from here and exit)");
                }
                Press::TearDown => {
                    eprintln!("\ninterrupted: removing the sandbox");
                    teardown();
                    std::process::exit(130);
                }
            }
        })
        .context("installing the Ctrl-C handler")?;
        Ok(it)
    }

    /// Keeps the sandbox up until Ctrl-C.
    pub(crate) fn wait(&self) {
        self.waiting.store(true, Ordering::SeqCst);
        while self.presses.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("\ninterrupted");
    }
}

/// Runs the demo; `wait` keeps it up until Ctrl-C.
pub fn demo(wait: bool) -> anyhow::Result<()> {
    step("installing what the demo needs (the same step as `cargo xtask test`)");
    prereq::install()?;

    step("building the workspace binaries: cargo build --bins");
    cargo(&["build", "--bins"])?;
    for b in ["netmux-server", "netmuxd", "netmux", "nx-echo"] {
        bin(b).with_context(|| format!("{b} was not built"))?;
    }
    let ebpf_built = match prereq::check_daemon_ebpf("debug")? {
        EbpfBuild::Real => {
            println!("netmuxd --build-info: ebpf=real");
            true
        }
        EbpfBuild::Stub(why) => {
            println!("netmuxd has no eBPF programs ({why}); the demo falls back to loopback");
            false
        }
    };

    step("creating the sandbox: a workstation and a cluster network namespace joined by a veth");
    let sb = Sandbox::new().context("creating the sandbox (run as root)")?;
    let cgroup = ChildCgroup::new(&format!("nx-demo-{}", std::process::id()))
        .context("creating the demo's cgroup")?;
    let interrupt = {
        let (sandbox, cg) = (sb.teardown_handle(), cgroup.teardown_handle());
        Interrupt::install(move || {
            cg.run();
            sandbox.run();
        })?
    };
    println!(
        "workstation: {} ({}), cluster: {} ({}), no route out",
        sb.ws().name(),
        sb.ws_addr(),
        sb.cluster().name(),
        sb.cluster_addr()
    );
    println!("cgroup for the eBPF hooks: {}", cgroup.path().display());
    // The workstation's resolver is the daemon's embedded DNS server.
    std::fs::write(
        sb.ws().etc_dir().join("resolv.conf"),
        format!("nameserver {DNS}\nsearch demo.svc.cluster.local svc.cluster.local\noptions timeout:1 attempts:2\n"),
    )
    .context("writing the workstation's resolv.conf")?;

    let services = Services::new()?;
    for s in [
        &services.http,
        &services.tcp,
        &services.dns,
        &services.laptop,
    ] {
        sb.add_service_address(s.address)?;
    }
    let _backends = start_backends(&sb, &services)?;

    step("starting netmux-server (cluster) and netmuxd (workstation)");
    let redirect = if ebpf_built { "auto" } else { "loopback" };
    let extra = format!(
        "redirect = \"{redirect}\"\ncgroup = \"{}\"\ndns = {{ listen = \"{DNS}:53\", method = \"none\" }}\n",
        cgroup.path().display()
    );
    let nm = match Netmux::start_with(&sb, &services.all(), TOKEN, &extra) {
        Ok(nm) => nm,
        Err(e) => {
            sb.dump_logs(40);
            bail!("starting netmux: {e}");
        }
    };
    println!("server config: {}", nm.layout.server_config.display());
    println!("daemon config: {}", nm.layout.daemon_config.display());

    let result = run_cli_steps(&sb, &nm, &services, &cgroup);
    if let Err(e) = &result {
        eprintln!("demo failed: {e:#}");
        sb.dump_logs(40);
    }
    if wait && result.is_ok() {
        println!(
            "\nThe sandbox stays up until Ctrl-C. Try:\n  ip netns exec {ws} sh -c 'echo $$ > {cg}/cgroup.procs; exec curl http://10.96.0.10/'\n  \
             ip netns exec {ws} curl http://{}/\n  ip netns exec {ws} {} --socket {} ls",
            services.http.fqdn(),
            bin("netmux")?.display(),
            nm.layout.socket.display(),
            ws = sb.ws().name(),
            cg = cgroup.path().display(),
        );
        interrupt.wait();
    }
    step("cleaning up");
    drop(nm);
    drop(cgroup);
    drop(sb);
    println!("done: namespaces, cgroup, processes and files removed");
    result
}

/// The sample services: HTTP and TCP echoes and dnsmasq in the cluster, an
/// HTTP server on the workstation's loopback for C2L.
fn start_backends(sb: &Sandbox, s: &Services) -> anyhow::Result<Vec<Process>> {
    step("starting the sample services (cluster addresses exist only in the cluster namespace)");
    let nx_echo = bin("nx-echo")?;
    let mut procs = Vec::new();
    let mut echo = |side: Side, label: &str, mode: &str, addr: SocketAddr| -> anyhow::Result<()> {
        let mut b = sb
            .process(side, label, &nx_echo)
            .args([mode, "--listen", &addr.to_string()]);
        if mode == "http" {
            b = b.args(["--name", label]);
        }
        let p = b.spawn()?;
        procs.push(p);
        sb.wait_for_tcp(side, addr, T)?;
        println!("{label}: nx-echo {mode} on {addr} ({side:?})");
        Ok(())
    };
    echo(Side::Cluster, "http-echo", "http", s.http.target())?;
    echo(Side::Cluster, "tcp-echo", "tcp", s.tcp.target())?;
    echo(
        Side::Workstation,
        "laptop-web",
        "http",
        s.laptop.target_on_workstation(),
    )?;
    let dnsmasq = sb
        .process(Side::Cluster, "dnsmasq", "dnsmasq")
        .args([
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={}", s.dns.address),
            "--port=53",
            "--address=/db.internal.example/10.1.2.3",
        ])
        .spawn()
        .context("starting dnsmasq")?;
    println!(
        "dns: dnsmasq on {}:53/udp (cluster), answers db.internal.example",
        s.dns.address
    );
    procs.push(dnsmasq);
    Ok(procs)
}

trait WorkstationTarget {
    fn target_on_workstation(&self) -> SocketAddr;
}

impl WorkstationTarget for ServiceSpec {
    /// A C2L service's local target: 127.0.0.1:target_port.
    fn target_on_workstation(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.target_port))
    }
}

/// Runs `program args` in the workstation namespace inside `cg`, printing
/// the command and its answer.
pub(crate) fn run_in_cgroup(
    sb: &Sandbox,
    cg: &ChildCgroup,
    program: &str,
    args: &[&str],
) -> anyhow::Result<netmux_testbed::Output> {
    println!("$ {program} {}", args.join(" "));
    let out = sb
        .process(Side::Workstation, program, "sh")
        .args(cg.wrap(program, args))
        .run(T)?;
    show(&out);
    Ok(out)
}

/// [`run_in_cgroup`] in the demo's cgroup; a failure ends the demo.
fn in_cgroup(
    sb: &Sandbox,
    cg: &ChildCgroup,
    program: &str,
    args: &[&str],
) -> anyhow::Result<netmux_testbed::Output> {
    let out = run_in_cgroup(sb, cg, program, args)?;
    if !out.success() {
        bail!("{program} failed in the workstation's cgroup");
    }
    Ok(out)
}

fn run_cli_steps(
    sb: &Sandbox,
    nm: &Netmux<'_>,
    s: &Services,
    cg: &ChildCgroup,
) -> anyhow::Result<()> {
    step(&format!("netmux connect {ENDPOINT}"));
    show(&nm.cli(["connect", ENDPOINT])?.ok()?);
    nm.wait_for_ls("the endpoint to list its services", T, |json| {
        s.all().iter().all(|svc| json.contains(&svc.name))
    })?;

    step(&format!(
        "netmux start {ENDPOINT} +   and   netmux start {ENDPOINT} {}",
        s.laptop.name
    ));
    show(&nm.cli(["start", ENDPOINT, "+"])?.ok()?);
    show(&nm.cli(["start", ENDPOINT, &s.laptop.name])?.ok()?);

    step("netmux ls");
    show(&nm.cli(["ls"])?.ok()?);
    step("netmux status");
    let status = nm.cli(["status"])?.ok()?;
    show(&status);
    let redirect = status
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("redirect:"))
        .map(|l| l.trim().to_owned())
        .unwrap_or_default();
    let ebpf = redirect.starts_with("redirect:") && redirect.contains("ebpf");
    if ebpf {
        println!("redirect=ebpf: connections from the cgroup to cluster addresses are redirected");
    } else {
        println!("redirect=loopback: eBPF is not in use here ({redirect}); names point at 127.x listeners");
    }

    let http = &s.http;
    if ebpf {
        step(&format!(
            "eBPF: a process in the cgroup connects to {}:{} (the cluster IP) and asks getpeername",
            http.address, http.port
        ));
        let py = format!(
            "import socket\ns = socket.create_connection(('{}', {}), timeout=5)\n\
             print('getpeername:', s.getpeername())\n\
             s.sendall(b'GET /by-cluster-ip HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n\
             print(s.recv(4096).decode().splitlines()[0])\n",
            http.address, http.port
        );
        let out = in_cgroup(sb, cg, "python3", &["-c", &py])?;
        let want = format!("getpeername: ('{}', {})", http.address, http.port);
        if !out.stdout.contains(&want) {
            bail!("expected `{want}` (the cluster address) from getpeername");
        }
    }

    step("the name, through the embedded DNS server (the workstation's resolv.conf points at it)");
    let dig = sb.exec(
        Side::Workstation,
        "dig",
        [&format!("@{DNS}"), "+short", &http.fqdn()],
        T,
    )?;
    println!("$ dig @{DNS} +short {}", http.fqdn());
    show(&dig);
    let url = format!("http://{}/by-name", http.fqdn());
    in_cgroup(sb, cg, "curl", &["-sS", "--max-time", "10", &url])?;

    step("a static binary (busybox wget: no libc, nothing to hook but the kernel)");
    let target = if ebpf {
        format!("http://{}/static", http.address)
    } else {
        format!("http://{}/static", http.fqdn())
    };
    in_cgroup(sb, cg, "/bin/busybox", &["wget", "-q", "-O", "-", &target])?;

    step("TCP: a line to the tcp-echo service and back");
    let tcp_host = if ebpf {
        s.tcp.address.to_string()
    } else {
        s.tcp.fqdn()
    };
    in_cgroup(
        sb,
        cg,
        "sh",
        &[
            "-c",
            &format!(
                "echo 'hello through the tunnel' | socat -t 5 - TCP:{tcp_host}:{}",
                s.tcp.port
            ),
        ],
    )?;

    step("UDP: dig against the DNS server in the cluster namespace");
    let dns_host = if ebpf {
        s.dns.address.to_string()
    } else {
        nm.resolve(&s.dns.fqdn())
            .map(|a| a.to_string())
            .context("the dns service has no local address")?
    };
    let out = in_cgroup(
        sb,
        cg,
        "dig",
        &[
            &format!("@{dns_host}"),
            "+short",
            "+tries=2",
            "+time=3",
            "db.internal.example",
        ],
    )?;
    if out.stdout.trim() != "10.1.2.3" {
        bail!("dig through the tunnel answered {:?}", out.stdout.trim());
    }

    let c2l = format!(
        "http://{}:{}/from-the-cluster",
        s.laptop.address, s.laptop.port
    );
    step(&format!(
        "C2L: a client in the cluster namespace reaches laptop-web on the workstation: curl {c2l}"
    ));
    let out = sb.exec(Side::Cluster, "curl", ["-sS", "--max-time", "10", &c2l], T)?;
    show(&out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_c_tears_down_once() {
        // Waiting: the main thread cleans up; a second press only says
        // so (it used to run the teardown beside the main thread's, which
        // printed every removal twice); a third removes from the handler.
        assert_eq!(press(1, true), Press::LeaveToMain);
        assert_eq!(press(2, true), Press::Removing);
        assert_eq!(press(3, true), Press::TearDown);
        // During a step the handler removes everything at once.
        assert_eq!(press(1, false), Press::TearDown);
    }
}
