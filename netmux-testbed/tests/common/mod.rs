//! Helpers shared by the end-to-end test files.
#![allow(dead_code, reason = "each test file uses a subset")]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netmux_testbed::netmux::Netmux;
use netmux_testbed::{bin, Process, Sandbox, Side};

/// Generous bound for anything to come up.
pub const T: Duration = Duration::from_secs(20);
/// One mebibyte.
pub const MIB: u64 = 1024 * 1024;

/// Parses a literal address.
pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal address")
}

/// `nx-TAG-PID-N`: a name no other test (or run) uses at the same time.
pub fn unique(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "nx-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A fresh sandbox.
pub fn sandbox() -> Sandbox {
    Sandbox::new().expect("creating a sandbox (needs root and iproute2)")
}

/// Runs `f`, printing the sandbox's logs if it panics.
pub fn on_failure_dump<R>(sb: &Sandbox, f: impl FnOnce() -> R + std::panic::UnwindSafe) -> R {
    match std::panic::catch_unwind(f) {
        Ok(r) => r,
        Err(p) => {
            sb.dump_logs(40);
            std::panic::resume_unwind(p)
        }
    }
}

/// Starts `nx-echo MODE --listen ADDR` on `side` and waits until it accepts.
pub fn nx_echo(sb: &Sandbox, side: Side, label: &str, mode: &str, addr: SocketAddr) -> Process {
    sb.nx_echo(side, label, mode, addr, T)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `curl -sS URL` on `side`.
pub fn curl(sb: &Sandbox, side: Side, url: &str) -> netmux_testbed::Output {
    sb.process(side, "curl", "curl")
        .args(["-sS", "--max-time", "10", url])
        .run(T)
        .expect("running curl")
}

/// Starts a new `netmux-server` with the deployment's config (after the
/// previous one was killed).
pub fn restart_server(sb: &Sandbox, nm: &mut Netmux<'_>) {
    let p = sb
        .process(
            Side::Cluster,
            "netmux-server-restarted",
            bin("netmux-server").expect("built"),
        )
        .arg("--config")
        .arg(&nm.layout.server_config)
        .spawn()
        .expect("restart server");
    nm.server = p;
}

/// Starts `nx-echo udp --listen ADDR` on `side`.
pub fn nx_echo_udp(sb: &Sandbox, side: Side, label: &str, addr: SocketAddr) -> Process {
    let p = sb
        .process(side, label, bin("nx-echo").expect("nx-echo built"))
        .args(["udp", "--listen", &addr.to_string()])
        .spawn()
        .expect("start nx-echo udp");
    // A UDP server has no accept to wait for; give it a moment to bind.
    std::thread::sleep(Duration::from_millis(200));
    p
}

/// `fqdn`'s address in the workstation's hosts file (the loopback address
/// the daemon gave a started service), with `port`.
pub fn hosts_addr(sb: &Sandbox, fqdn: &str, port: u16) -> SocketAddr {
    let hosts = std::fs::read_to_string(sb.ws_hosts_file()).expect("hosts file");
    let addr: IpAddr = hosts
        .lines()
        .find(|l| l.split_whitespace().skip(1).any(|n| n == fqdn))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{fqdn} not in hosts file:\n{hosts}"));
    SocketAddr::new(addr, port)
}

/// Sets the MTU of the veth pair between workstation and cluster.
pub fn set_mtu(sb: &Sandbox, mtu: u16) {
    let mtu = mtu.to_string();
    for (side, ifname) in [
        (Side::Workstation, netmux_testbed::WS_IF),
        (Side::Cluster, netmux_testbed::CLUSTER_IF),
    ] {
        sb.netns(side)
            .ip(["link", "set", ifname, "mtu", mtu.as_str()])
            .unwrap_or_else(|e| panic!("veth at MTU {mtu}: {e}"));
    }
}

/// `netmux doctor --json` with the daemon's config: the check named `name`.
pub fn doctor_check(nm: &Netmux<'_>, name: &str) -> serde_json::Value {
    let config = nm.layout.daemon_config.display().to_string();
    let out = nm
        .cli(["--config", config.as_str(), "doctor", "--json"])
        .expect("doctor");
    let checks: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor json: {e}: {}{}", out.stdout, out.stderr));
    checks
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("doctor has no check {name}: {checks}"))
}
