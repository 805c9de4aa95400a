//! Tests of the testbed itself, with the sample apps only (no netmux).
//! Need root; run with `--test-threads=1` (as `cargo xtask test` does).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use netmux_testbed::{check, cleanup_stale, Error, Process, Sandbox, Side};

const T: Duration = Duration::from_secs(10);

fn sandbox() -> Sandbox {
    Sandbox::new().expect("creating a sandbox (needs root and iproute2)")
}

fn echo(sb: &Sandbox, side: Side, label: &str, mode: &str, addr: SocketAddr) -> Process {
    sb.nx_echo(side, label, mode, addr, T)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[test]
fn workstation_reaches_cluster_over_veth_but_not_service_addresses() {
    let sb = sandbox();
    let svc: IpAddr = "10.96.0.10".parse().unwrap();
    sb.add_service_address(svc).unwrap();
    let on_veth = SocketAddr::new(sb.cluster_addr().into(), 8080);
    let on_svc = SocketAddr::new(svc, 8080);
    let _a = echo(&sb, Side::Cluster, "http-veth", "http", on_veth);
    let _b = echo(&sb, Side::Cluster, "http-svc", "http", on_svc);

    let (status, body) = sb
        .ws()
        .block_on(|| check::http_get(on_veth, "x", "/hi"))
        .unwrap()
        .expect("GET across the veth");
    assert_eq!(status, 200);
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.starts_with("hello from nx-echo") && body.contains("path=/hi"),
        "{body}"
    );

    // No default route, and the service address is unroutable.
    let routes = sb.ws().ip(["route", "show"]).unwrap();
    assert!(!routes.contains("default"), "workstation routes: {routes}");
    let started = Instant::now();
    let err = sb
        .ws()
        .run(|| std::net::TcpStream::connect_timeout(&on_svc, Duration::from_secs(2)))
        .unwrap()
        .expect_err("service address must not be reachable from the workstation");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "should fail at once: {err}"
    );
}

#[test]
fn byte_exact_transfers_across_the_veth() {
    let sb = sandbox();
    let ip: IpAddr = sb.cluster_addr().into();
    let sink = SocketAddr::new(ip, 9001);
    let source = SocketAddr::new(ip, 9002);
    let tcp = SocketAddr::new(ip, 9003);
    let _p = [
        echo(&sb, Side::Cluster, "sink", "sink", sink),
        echo(&sb, Side::Cluster, "source", "source", source),
        echo(&sb, Side::Cluster, "tcp", "tcp", tcp),
    ];
    let len = 8 << 20;
    sb.ws()
        .block_on(|| async move {
            tokio::time::timeout(Duration::from_secs(60), async {
                check::upload_to_sink(sink, len).await?;
                check::download_from_source(source, len).await?;
                check::echo_round_trip(tcp, len).await?;
                // Many small connections at once.
                let mut set = tokio::task::JoinSet::new();
                for i in 0..50u64 {
                    set.spawn(check::echo_round_trip(tcp, 1000 + i * 37));
                }
                while let Some(r) = set.join_next().await {
                    r.expect("task")?;
                }
                Ok::<_, Error>(())
            })
            .await
        })
        .unwrap()
        .expect("transfers within 60 s")
        .unwrap();
}

#[test]
fn names_resolve_through_the_workstation_hosts_file() {
    let sb = sandbox();
    let addr = SocketAddr::new(sb.cluster_addr().into(), 8080);
    let _http = echo(&sb, Side::Cluster, "http", "http", addr);
    // Replace the file atomically, as netmuxd does.
    let hosts = sb.ws_hosts_file();
    let tmp = hosts.with_extension("tmp");
    let mut content = std::fs::read_to_string(&hosts).unwrap();
    assert!(
        content.contains("127.0.0.1 localhost\n") && content.contains("::1 localhost"),
        "fresh hosts file: {content:?}"
    );
    content.push_str(&format!("{} echo.test\n", sb.cluster_addr()));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, &hosts).unwrap();
    let out = sb
        .exec(
            Side::Workstation,
            "curl",
            ["-sS", "--max-time", "5", "http://echo.test:8080/by-name"],
            T,
        )
        .expect("curl by name");
    assert!(out.stdout.contains("path=/by-name"), "{}", out.stdout);
    // The machine's own /etc/hosts knows nothing of it.
    assert!(!std::fs::read_to_string("/etc/hosts")
        .unwrap_or_default()
        .contains("echo.test"));
}

#[test]
fn workstation_address_moves_within_the_subnet() {
    let sb = sandbox();
    let old = sb.ws_addr();
    let new = sb.subnet_addr(3);
    let listen: SocketAddr = "0.0.0.0:7000".parse().unwrap();
    let _http = echo(&sb, Side::Workstation, "ws-http", "http", listen);
    sb.set_ws_address(new).unwrap();
    assert_eq!(sb.ws_addr(), new);
    let (status, _) = sb
        .cluster()
        .block_on(|| check::http_get(SocketAddr::new(new.into(), 7000), "x", "/"))
        .unwrap()
        .expect("cluster reaches the new workstation address");
    assert_eq!(status, 200);
    let gone = sb
        .cluster()
        .run(|| {
            std::net::TcpStream::connect_timeout(
                &SocketAddr::new(old.into(), 7000),
                Duration::from_millis(500),
            )
        })
        .unwrap();
    assert!(gone.is_err(), "old address still answers");
    assert!(sb.set_ws_address("10.1.2.3".parse().unwrap()).is_err());
}

#[test]
fn exec_reports_failures_and_timeouts() {
    let sb = sandbox();
    let out = sb
        .exec(Side::Workstation, "sh", ["-c", "echo out; echo err >&2"], T)
        .unwrap();
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("out\n", "err\n")
    );
    let err = sb
        .exec(Side::Workstation, "sh", ["-c", "echo why >&2; exit 3"], T)
        .unwrap_err();
    assert!(err.to_string().contains("why"), "{err}");
    let started = Instant::now();
    let err = sb
        .exec(Side::Cluster, "sleep", ["30"], Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn processes_restart_and_die_with_their_guard() {
    let sb = sandbox();
    let addr = SocketAddr::new(sb.cluster_addr().into(), 8080);
    let mut p = echo(&sb, Side::Cluster, "http", "http", addr);
    let first = p.pid().unwrap();
    p.restart().unwrap();
    assert_ne!(p.pid().unwrap(), first);
    sb.wait_for_tcp(Side::Cluster, addr, T).unwrap();
    let pid = p.pid().unwrap();
    drop(p);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process survived its guard"
    );
    assert!(sb.cluster().pids().is_empty());
}

#[test]
fn drop_removes_everything_even_when_the_test_panics() {
    let mut names = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let sb = sandbox();
        let p = sb
            .process(Side::Cluster, "sleeper", "sleep")
            .arg("600")
            .spawn()
            .unwrap();
        names = Some((
            sb.ws().name().to_owned(),
            sb.cluster().name().to_owned(),
            sb.dir().to_owned(),
            p.pid().unwrap(),
        ));
        // Leak the guard: the sandbox must still kill what runs inside.
        std::mem::forget(p);
        panic!("deliberate failure");
    }));
    assert!(result.is_err());
    let (ws, cl, dir, pid) = names.unwrap();
    assert!(!netns_exists(&ws) && !netns_exists(&cl));
    assert!(!Path::new("/etc/netns").join(&ws).exists());
    assert!(!dir.exists());
    // The leaked child may linger as a zombie until reaped; it must not run.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "sleeper still running: {stat}"
    );
}

#[test]
fn stale_sandboxes_of_dead_processes_are_removed() {
    // A pid that surely exited.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let name = format!("nxstale-ws-{dead}-0");
    let live = format!("nxstale-ws-{}-0", std::process::id());
    for n in [&name, &live] {
        std::process::Command::new("ip")
            .args(["netns", "add", n])
            .status()
            .unwrap();
        std::fs::create_dir_all(Path::new("/etc/netns").join(n)).unwrap();
    }
    let removed = cleanup_stale("nxstale").unwrap();
    let live_survived = netns_exists(&live);
    // Clean up the live one before asserting.
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &live])
        .status();
    let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&live));
    assert!(removed.contains(&name), "{removed:?}");
    assert!(!netns_exists(&name));
    assert!(!Path::new("/etc/netns").join(&name).exists());
    assert!(live_survived, "a live process's namespace was removed");
}
