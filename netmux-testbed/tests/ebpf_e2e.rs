//! End-to-end tests of the eBPF redirect backend: the daemon attaches its
//! cgroup connect hooks to a child cgroup the test creates, and processes
//! in that cgroup reach cluster services at their real cluster addresses
//! with no change to the process (curl, python, static busybox).
//!
//! Need root and a daemon built with the eBPF programs; run with
//! `--test-threads=1` (as `cargo xtask test` does).

use std::path::Path;
use std::time::{Duration, Instant};

use netmux_testbed::cgroup::ChildCgroup;
use netmux_testbed::netmux::{Netmux, ServiceSpec, ENDPOINT, TOKEN};
use netmux_testbed::{bin, prereq, Process, Sandbox, Side};

mod common;
use common::{ip, nx_echo, on_failure_dump, sandbox, unique, T};

fn http_echo() -> ServiceSpec {
    ServiceSpec::l2c("http-echo", ip("10.96.0.10"), 80, 8080)
}

fn udp_echo() -> ServiceSpec {
    ServiceSpec {
        protocol: "udp",
        ..ServiceSpec::l2c("udp-echo", ip("10.96.0.54"), 7000, 7000)
    }
}

fn http_echo6() -> ServiceSpec {
    ServiceSpec::l2c("http-echo6", ip("fd00:96::10"), 80, 8080)
}

struct World<'a> {
    sb: &'a Sandbox,
    nm: Netmux<'a>,
    cg: ChildCgroup,
    _backends: Vec<Process>,
}

fn world<'a>(sb: &'a Sandbox, test: &str) -> Option<World<'a>> {
    if !prereq::require(test, prereq::ebpf_daemon()) {
        return None;
    }
    let cg = ChildCgroup::new(&unique("cg")).expect("child cgroup");
    let extra = format!(
        "redirect = \"ebpf\"\ncgroup = \"{}\"\n",
        cg.path().display()
    );
    let nm = Netmux::start_with(sb, &[http_echo(), http_echo6(), udp_echo()], TOKEN, &extra)
        .unwrap_or_else(|e| {
            sb.dump_logs(50);
            panic!("netmux start: {e}")
        });
    let backends = vec![
        nx_echo(
            sb,
            Side::Cluster,
            "http-v4",
            "http",
            "10.96.0.10:8080".parse().expect("addr"),
        ),
        nx_echo(
            sb,
            Side::Cluster,
            "http-v6",
            "http",
            "[fd00:96::10]:8080".parse().expect("addr"),
        ),
        common::nx_echo_udp(
            sb,
            Side::Cluster,
            "udp-echo",
            "10.96.0.54:7000".parse().expect("addr"),
        ),
    ];
    assert!(nm.cli(["connect", ENDPOINT]).expect("connect").success());
    let out = nm.cli(["start", ENDPOINT, "+"]).expect("start");
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    Some(World {
        sb,
        nm,
        cg,
        _backends: backends,
    })
}

impl World<'_> {
    /// Runs `program args` in the workstation namespace, inside the cgroup.
    fn inside(&self, program: &str, args: &[&str]) -> netmux_testbed::Output {
        self.sb
            .process(
                Side::Workstation,
                program.rsplit('/').next().unwrap_or(program),
                "sh",
            )
            .args(self.cg.wrap(program, args))
            .run(T)
            .expect("run in cgroup")
    }

    /// Runs `program args` in the workstation namespace, outside the cgroup.
    fn outside(&self, program: &str, args: &[&str]) -> netmux_testbed::Output {
        self.sb
            .process(Side::Workstation, program, program)
            .args(args)
            .run(T)
            .expect("run outside cgroup")
    }
}

const CURL: [&str; 3] = ["-sS", "--max-time", "5"];

fn curl_args(url: &str) -> Vec<&str> {
    let mut v = CURL.to_vec();
    v.push(url);
    v
}

#[test]
fn cluster_ip_is_redirected_inside_the_cgroup_only() {
    let sb = sandbox();
    let Some(w) = world(
        &sb,
        "ebpf_e2e::cluster_ip_is_redirected_inside_the_cgroup_only",
    ) else {
        return;
    };
    on_failure_dump(&sb, || {
        let out = w.inside("curl", &curl_args("http://10.96.0.10/by-ip"));
        assert!(out.success(), "curl in cgroup: {}", out.stderr);
        assert!(out.stdout.contains("path=/by-ip"), "{}", out.stdout);
        // Names point at the real cluster address.
        let out = w.inside(
            "curl",
            &curl_args("http://http-echo.demo.svc.cluster.local/by-name"),
        );
        assert!(
            out.success() && out.stdout.contains("path=/by-name"),
            "{}",
            out.stderr
        );
        let hosts = std::fs::read_to_string(sb.ws_hosts_file()).expect("hosts");
        assert!(hosts.contains("10.96.0.10 http-echo "), "{hosts}");
        // Outside the cgroup nothing is redirected: unroutable, fails fast.
        let started = Instant::now();
        let out = w.outside("curl", &curl_args("http://10.96.0.10/"));
        assert!(!out.success(), "{}", out.stdout);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "must fail fast, not time out"
        );
        // An unpublished port on the cluster IP is not redirected.
        let out = w.inside("curl", &curl_args("http://10.96.0.10:81/"));
        assert!(!out.success(), "{}", out.stdout);
        let status = w.nm.cli(["status"]).expect("status").stdout;
        assert!(status.contains("redirect:   ebpf"), "{status}");
    });
}

#[test]
fn ipv6_v4_mapped_getpeername_and_a_static_binary() {
    let sb = sandbox();
    let Some(w) = world(
        &sb,
        "ebpf_e2e::ipv6_v4_mapped_getpeername_and_a_static_binary",
    ) else {
        return;
    };
    on_failure_dump(&sb, || {
        let out = w.inside("curl", &curl_args("http://[fd00:96::10]/v6"));
        assert!(
            out.success() && out.stdout.contains("path=/v6"),
            "v6: {}",
            out.stderr
        );
        // A dual-stack socket dialling the v4-mapped form (what JVMs do), and
        // what it sees as its peer.
        let py = r#"
import socket
for fam, addr in ((socket.AF_INET6, ('::ffff:10.96.0.10', 80)), (socket.AF_INET, ('10.96.0.10', 80))):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(addr)
    print('peer', s.getpeername()[0], s.getpeername()[1])
    s.sendall(b'GET /py HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
    data = b''
    while True:
        c = s.recv(4096)
        if not c:
            break
        data += c
    print('ok' if b'path=/py' in data else 'bad')
"#;
        let out = w.inside("python3", &["-c", py]);
        assert!(out.success(), "python: {}", out.stderr);
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(
            lines,
            [
                "peer ::ffff:10.96.0.10 80",
                "ok",
                "peer 10.96.0.10 80",
                "ok"
            ],
            "{}",
            out.stdout
        );
        // Statically linked busybox: no libc hooking involved.
        let out = w.inside(
            "env",
            &[
                "-i",
                "PATH=/usr/bin:/bin",
                "/bin/busybox",
                "wget",
                "-q",
                "-O",
                "-",
                "http://10.96.0.10/static",
            ],
        );
        assert!(
            out.success() && out.stdout.contains("path=/static"),
            "busybox: {} {}",
            out.stdout,
            out.stderr
        );
    });
}

#[test]
fn catalog_changes_update_the_redirects_live() {
    let sb = sandbox();
    let Some(w) = world(&sb, "ebpf_e2e::catalog_changes_update_the_redirects_live") else {
        return;
    };
    on_failure_dump(&sb, || {
        assert!(w.inside("curl", &curl_args("http://10.96.0.10/")).success());
        // Removed from the catalog: no longer redirected.
        w.nm.set_services(&[http_echo6()]).expect("services");
        netmux_testbed::wait_until("redirect removed", T, || {
            !w.inside("curl", &curl_args("http://10.96.0.10/")).success()
        })
        .expect("removed service stops being redirected");
        // Added back (another address) and started: redirected.
        let moved = ServiceSpec::l2c("http-echo", ip("10.96.0.10"), 8000, 8080);
        w.nm.set_services(&[http_echo6(), moved]).expect("services");
        netmux_testbed::wait_until("service listed", T, || {
            w.nm.cli(["start", ENDPOINT, "http-echo"])
                .map(|o| o.success())
                .unwrap_or(false)
        })
        .expect("start the added service");
        netmux_testbed::wait_until("redirect added", T, || {
            w.inside("curl", &curl_args("http://10.96.0.10:8000/added"))
                .success()
        })
        .expect("added service is redirected");
    });
}

fn attached(cgroup: &Path) -> String {
    let bpftool = ["/usr/sbin/bpftool", "/sbin/bpftool"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("bpftool");
    let out = std::process::Command::new(bpftool)
        .args(["cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sigkill_of_the_daemon_leaves_no_program_attached() {
    let sb = sandbox();
    let Some(mut w) = world(
        &sb,
        "ebpf_e2e::sigkill_of_the_daemon_leaves_no_program_attached",
    ) else {
        return;
    };
    let before = attached(w.cg.path());
    assert!(
        before.contains("connect4"),
        "programs attached while running: {before}"
    );
    w.nm.daemon.kill();
    netmux_testbed::wait_until("programs detached", T, || {
        !attached(w.cg.path()).contains("connect4")
    })
    .unwrap_or_else(|e| panic!("{e}: {}", attached(w.cg.path())));
}

#[test]
fn forced_ebpf_that_cannot_load_is_a_clear_error() {
    let sb = sandbox();
    let dir = sb.dir().join("bad");
    std::fs::create_dir_all(&dir).expect("dir");
    let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let cfg = dir.join("daemon.toml");
    std::fs::write(
        &cfg,
        format!(
            "redirect = \"ebpf\"\ncgroup = \"/nonexistent/cgroup\"\nsocket = \"{}/s.sock\"\nhosts_file = \"{}/hosts\"\n[[endpoint]]\nname = \"x\"\nserver = \"127.0.0.1:1\"\nca_pem = \"\"\"{pem}\"\"\"\n",
            dir.display(),
            dir.display()
        ),
    )
    .expect("config");
    let out = sb
        .process(
            Side::Workstation,
            "netmuxd-bad",
            bin("netmuxd").expect("built"),
        )
        .arg("--config")
        .arg(&cfg)
        .run(T)
        .expect("run");
    assert!(!out.success());
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("redirect = \"ebpf\"") && said.contains("/nonexistent/cgroup"),
        "{said}"
    );
}

#[test]
fn udp_to_a_cluster_address_is_redirected_and_answers_from_it() {
    let sb = sandbox();
    let Some(w) = world(
        &sb,
        "ebpf_e2e::udp_to_a_cluster_address_is_redirected_and_answers_from_it",
    ) else {
        return;
    };
    let py = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(b'unconnected', ('10.96.0.54', 7000))
data, src = s.recvfrom(100)
print(data.decode(), src[0], src[1])
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(3)
c.connect(('10.96.0.54', 7000))
c.send(b'connected')
print(c.recv(100).decode(), c.getpeername()[0])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(1)
try:
    u.sendto(b'x', ('10.96.0.54', 7001))
    u.recvfrom(100)
    print('unpublished answered')
except OSError as e:
    print('unpublished', type(e).__name__)
"#;
    on_failure_dump(&sb, || {
        let out = w.inside("python3", &["-c", py]);
        assert!(out.success(), "python: {}", out.stderr);
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(
            lines.first(),
            Some(&"unconnected 10.96.0.54 7000"),
            "{}",
            out.stdout
        );
        assert_eq!(
            lines.get(1),
            Some(&"connected 10.96.0.54"),
            "{}",
            out.stdout
        );
        assert!(
            lines
                .get(2)
                .is_some_and(|l| l.starts_with("unpublished ") && *l != "unpublished answered"),
            "{}",
            out.stdout
        );
    });
}
