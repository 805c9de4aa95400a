//! The world of `intercept_e2e.rs`: the fake cluster with `web` (two
//! pods), netmux-server replicas as in the Deployment, daemons of users
//! with their own tokens, workstation targets, and the clients and checks
//! the tests share.
#![allow(dead_code, reason = "each test uses a subset")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use netmux_testbed::backends::{H2c, Http1, Standalone};
use netmux_testbed::cluster::{App, AppSpec, FakeCluster};
use netmux_testbed::{bin, Output, Process, Sandbox, Side};
use serde_json::Value;

use crate::common::T;

pub const SERVER_TOKEN: &str = "server-service-account-token";
pub const ALICE_TOKEN: &str = "alice-token-for-intercepts";
pub const BOB_TOKEN: &str = "bob-token-for-intercepts";
/// Sees the Service but may not intercept it.
pub const CAROL_TOKEN: &str = "carol-token-without-the-verb";
/// What [`World::upgrade`] sends on the switched connection.
pub const UPGRADE_LINE: &str = "ping over the switched protocol\n";
/// The intercept Lease's TTL in these tests (`intercept_ttl_ms`).
pub const TTL: Duration = Duration::from_secs(6);
/// Where the workstation's targets listen.
pub const ALICE_TARGET: &str = "127.0.0.1:18080";
pub const BOB_TARGET: &str = "127.0.0.1:18081";

/// A workstation-side target (HTTP/1.1, h2c, gRPC-shaped) at `addr`
/// answering as `name` (`x-served-by: NAME`, body `NAME`) and keeping the
/// paths it was asked for; stops on drop.
pub fn target(sb: &Sandbox, addr: &str, name: &str) -> Standalone {
    Standalone::start(sb.ws(), addr.parse().expect("literal address"), name)
        .unwrap_or_else(|e| panic!("workstation target {name}: {e}"))
}

pub struct Daemon {
    pub socket: PathBuf,
    pub process: Process,
}

pub struct World<'a> {
    pub sb: &'a Sandbox,
    pub cluster: FakeCluster,
    pub web: App,
    pub dir: PathBuf,
    pub servers: Vec<Process>,
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// QUIC port of server replica `i`.
pub fn quic_port(i: usize) -> u16 {
    7443 + 10 * i as u16
}

pub fn world(sb: &Sandbox) -> World<'_> {
    let cluster = FakeCluster::start(sb).expect("fake cluster");
    let api = cluster.api();
    api.add_token(
        SERVER_TOKEN,
        "system:serviceaccount:netmux:netmux-server",
        &[],
    );
    for (token, user) in [
        (ALICE_TOKEN, "alice"),
        (BOB_TOKEN, "bob"),
        (CAROL_TOKEN, "carol"),
    ] {
        api.add_token(token, user, &[]);
        api.allow(user, "get", "/services/proxy", "apps", "web");
    }
    for user in ["alice", "bob"] {
        api.allow(user, "intercept", "/services", "apps", "web");
    }
    let web = cluster
        .deploy(&AppSpec::new(
            "apps",
            "web",
            "10.96.0.20".parse().expect("ip"),
            80,
            8080,
            2,
        ))
        .expect("deploy web");
    let dir = sb.dir().to_path_buf();
    write(
        &dir.join("server-kubeconfig"),
        &cluster.kubeconfig("sa", SERVER_TOKEN, "netmux"),
    );
    World {
        sb,
        cluster,
        web,
        dir,
        servers: vec![],
    }
}

impl World<'_> {
    /// Starts server replica `i` (`netmux-server-<i>`), as in the
    /// Deployment: Kubernetes runtime, RBAC, POD_NAME and POD_IP.
    pub fn start_server(&mut self, i: usize) {
        let cl = self.sb.cluster_addr();
        let state = self.dir.join(format!("server-state-{i}"));
        // Replicas share the CA, as they share the Secret in a cluster.
        if i > 0 {
            std::fs::create_dir_all(&state).expect("state dir");
            for f in ["ca.pem", "ca.key"] {
                let _ = std::fs::copy(self.dir.join("server-state-0").join(f), state.join(f));
            }
        }
        let config = self.dir.join(format!("server-{i}.toml"));
        // Replica 0's replica endpoint takes an ephemeral port, the others
        // the one `replica_port` fixes (both ways are in use in clusters).
        let replica_port = if i == 0 { 0 } else { quic_port(i) + 2 };
        write(
            &config,
            &format!(
                "replica_port = {replica_port}\n\
                 listen = \"{cl}:{}\"\nhttp = \"{cl}:{}\"\nstate_dir = \"{}\"\n\
                 server_names = [\"netmux-server\"]\ncluster_cidrs = [\"10.96.0.0/12\"]\n\
                 intercept_ttl_ms = {}\n\n[rbac]\ncache_ttl_ms = 1000\n\n\
                 [runtime]\nkind = \"kubernetes\"\nnamespaces = [\"apps\"]\n",
                quic_port(i),
                quic_port(i) + 1,
                state.display(),
                TTL.as_millis()
            ),
        );
        let p = self
            .sb
            .process(
                Side::Cluster,
                &format!("netmux-server-{i}"),
                bin("netmux-server").expect("built"),
            )
            .arg("--config")
            .arg(&config)
            .env("KUBECONFIG", self.dir.join("server-kubeconfig"))
            .env("POD_NAME", format!("netmux-server-{i}"))
            .env("POD_IP", cl.to_string())
            .env("RUST_LOG", "info,netmux_server=debug")
            .spawn()
            .expect("start netmux-server");
        self.sb
            .wait_for_tcp(
                Side::Cluster,
                SocketAddr::new(cl.into(), quic_port(i) + 1),
                T,
            )
            .unwrap_or_else(|e| panic!("netmux-server-{i}: {e}\n{}", p.log()));
        self.servers.push(p);
    }

    /// Starts a daemon `name` presenting `token` to replica `replica`, and
    /// connects its endpoint `kube`.
    pub fn daemon(&self, name: &str, token: &str, replica: usize, range: &str) -> Daemon {
        let cl = self.sb.cluster_addr();
        let run = self.dir.join(format!("daemon-{name}"));
        std::fs::create_dir_all(&run).expect("daemon dir");
        let socket = run.join("netmuxd.sock");
        let config = run.join("config.toml");
        write(
            &config,
            &format!(
                "socket = \"{}\"\nhosts_file = \"{}\"\nredirect = \"loopback\"\naddress_range = \"{range}\"\n\n\
                 [dns]\nenabled = false\n\n\
                 [[endpoint]]\nname = \"kube\"\nserver = \"{cl}:{}\"\nserver_name = \"netmux-server\"\n\
                 ca_file = \"{}\"\ntoken = \"{token}\"\nautostart = false\n",
                socket.display(),
                run.join("hosts").display(),
                quic_port(replica),
                self.dir.join("server-state-0").join("ca.pem").display(),
            ),
        );
        let p = self
            .sb
            .process(
                Side::Workstation,
                &format!("netmuxd-{name}"),
                bin("netmuxd").expect("built"),
            )
            .args(["--config", &config.display().to_string()])
            .env("RUST_LOG", "info,netmux_daemon=debug")
            .spawn()
            .expect("start netmuxd");
        netmux_testbed::wait_until("netmuxd's socket", T, || socket.exists())
            .unwrap_or_else(|e| panic!("netmuxd {name}: {e}\n{}", p.log()));
        let d = Daemon { socket, process: p };
        let out = self.cli(&d, &["connect", "kube"]);
        assert!(
            out.success(),
            "connect {name}: {}{}",
            out.stdout,
            out.stderr
        );
        // The catalog arrives right after the hello.
        netmux_testbed::wait_until("web in the daemon's catalog", T, || {
            self.cli(&d, &["ls"]).stdout.contains("apps/web")
        })
        .unwrap_or_else(|e| panic!("{e}: {}", self.cli(&d, &["ls"]).stdout));
        d
    }

    /// `netmux cleanup --intercepts --namespace apps` with `user`'s own
    /// kubeconfig (`token`), as with no netmux pod left.
    pub fn cleanup_as(&self, user: &str, token: &str) -> Output {
        let kubeconfig = self.dir.join(format!("{user}-kubeconfig"));
        write(&kubeconfig, &self.cluster.kubeconfig(user, token, "apps"));
        self.sb
            .process(
                Side::Workstation,
                "netmux-cleanup",
                bin("netmux").expect("built"),
            )
            .args(["cleanup", "--intercepts", "--namespace", "apps"])
            .env("KUBECONFIG", &kubeconfig)
            .run(T)
            .expect("run netmux cleanup")
    }

    pub fn cli(&self, d: &Daemon, args: &[&str]) -> Output {
        self.sb
            .process(Side::Workstation, "netmux", bin("netmux").expect("built"))
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .run(T)
            .expect("run netmux")
    }

    pub fn service(&self) -> Value {
        self.cluster
            .api()
            .get("/services", "apps", "web")
            .expect("Service apps/web")
    }

    pub fn spec_text(&self) -> String {
        serde_json::to_string(&self.service()["spec"]).expect("json")
    }

    pub fn intercepted(&self) -> bool {
        self.service()["metadata"]["annotations"]
            .get("netmux.dev/intercept-original")
            .is_some()
    }

    pub fn netmux_slice(&self) -> Option<Value> {
        self.cluster
            .api()
            .get("discovery.k8s.io/endpointslices", "apps", "netmux-icpt-web")
    }

    pub fn leases(&self) -> Vec<Value> {
        self.cluster
            .api()
            .objects("coordination.k8s.io/leases")
            .into_iter()
            .filter(|l| {
                l["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("netmux-icpt"))
            })
            .collect()
    }

    /// `n` requests, each on a new HTTP/1.1 connection to the Service, with
    /// `headers`; who answered each (`x-served-by`, or the status).
    pub fn fresh_requests(
        &self,
        n: usize,
        headers: &[(&'static str, &'static str)],
    ) -> Vec<String> {
        let addr = self.web.addr();
        let headers = headers.to_vec();
        self.sb
            .cluster()
            .block_on(move || async move {
                let mut out = Vec::new();
                for i in 0..n {
                    let answer = match Http1::connect(addr).await {
                        Ok(mut c) => match c.get(&format!("/fresh/{i}"), &headers).await {
                            Ok(r) => served_by(r.status, r.header("x-served-by"), &r.body),
                            Err(e) => format!("error: {e}"),
                        },
                        Err(e) => format!("error: {e}"),
                    };
                    out.push(answer);
                }
                out
            })
            .expect("cluster namespace")
    }

    /// An HTTP/1.1 `Upgrade` to the Service (a WebSocket handshake's
    /// shape) with `headers`, then [`UPGRADE_LINE`] echoed on it.
    pub fn upgrade(
        &self,
        headers: &[(&'static str, &'static str)],
    ) -> netmux_testbed::backends::Switched {
        let addr = self.web.addr();
        let asked = headers.to_vec();
        self.sb
            .cluster()
            .block_on(move || async move {
                netmux_testbed::backends::upgrade_echo(addr, "/ws", &asked, UPGRADE_LINE).await
            })
            .expect("cluster namespace")
            .unwrap_or_else(|e| panic!("upgrade with {headers:?}: {e}"))
    }

    /// Waits until a fresh request with `headers` is answered by `who`
    /// (`pod`: any pod of web).
    pub fn wait_for_answer(&self, what: &str, headers: &[(&'static str, &'static str)], who: &str) {
        let pods = self.web.pod_names();
        let deadline = Instant::now() + T;
        let mut last = String::new();
        while Instant::now() < deadline {
            last = self.fresh_requests(1, headers).remove(0);
            if last == who || (who == "pod" && pods.contains(&last)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.sb.dump_logs(60);
        panic!("timed out waiting for {what}: last answer {last:?}");
    }
}

pub fn served_by(status: u16, by: Option<&str>, body: &str) -> String {
    match (status, by) {
        (200, Some(by)) => by.to_owned(),
        _ => format!("status {status}: {}", body.trim()),
    }
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(out.success(), "{what}: {}{}", out.stdout, out.stderr);
}

/// `requests` requests on one keep-alive connection (`h2`: gRPC-shaped
/// calls on one h2c connection, 16 at once), every third with alice's header, every third
/// with bob's, the rest with none; returns (header, answer) of each.
pub fn mixed(w: &World<'_>, requests: usize, h2: bool) -> Vec<(&'static str, String)> {
    let addr = w.web.addr();
    w.sb.cluster()
        .block_on(move || async move {
            let which = |i: usize| match i % 3 {
                0 => "alice",
                1 => "bob",
                _ => "",
            };
            let mut out = Vec::new();
            if h2 {
                let c = H2c::connect(addr).await.expect("h2c connect");
                for chunk in (0..requests).collect::<Vec<_>>().chunks(16) {
                    let calls = chunk.iter().map(|&i| {
                        let c = c.clone();
                        async move {
                            let user = which(i);
                            let headers: Vec<(&str, &str)> = if user.is_empty() {
                                vec![]
                            } else {
                                vec![("x-netmux-user", user)]
                            };
                            // gRPC-shaped (POST, application/grpc, trailers).
                            let a = match c
                                .grpc(&format!("/mixed.Echo/Call{i}"), &headers, b"ping")
                                .await
                            {
                                Ok(r) => served_by(r.status, r.header("x-served-by"), ""),
                                Err(e) => format!("error: {e}"),
                            };
                            (user, a)
                        }
                    });
                    out.extend(futures::future::join_all(calls).await);
                }
            } else {
                let mut c = Http1::connect(addr).await.expect("http1 connect");
                for i in 0..requests {
                    let user = which(i);
                    let headers: Vec<(&str, &str)> = if user.is_empty() {
                        vec![]
                    } else {
                        vec![("x-netmux-user", user)]
                    };
                    let a = match c.get(&format!("/mixed/{i}"), &headers).await {
                        Ok(r) => served_by(r.status, r.header("x-served-by"), &r.body),
                        Err(e) => format!("error: {e}"),
                    };
                    out.push((user, a));
                }
            }
            out
        })
        .expect("cluster namespace")
}

pub fn assert_routed(w: &World<'_>, answers: &[(&str, String)], expect: &[(&str, &str)]) {
    let pods = w.web.pod_names();
    let wrong: Vec<_> = answers
        .iter()
        .enumerate()
        .filter(
            |(_, (user, a))| match expect.iter().find(|(u, _)| u == user) {
                Some((_, to)) => a != to,
                None => !pods.contains(a),
            },
        )
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} requests misrouted or lost, first: {:?}",
        wrong.len(),
        answers.len(),
        &wrong[..wrong.len().min(10)]
    );
}

/// Whether the Service is as before any intercept: selector back, no
/// annotation, no netmux slice, no Lease.
pub fn restored(w: &World<'_>) -> bool {
    !w.intercepted() && w.netmux_slice().is_none() && w.leases().is_empty()
}
