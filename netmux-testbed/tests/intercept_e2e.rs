//! End to end: intercepts (issue 18, docs/intercept.md). A client in the
//! cluster namespace calls a Service by its ClusterIP, through the fake
//! cluster's kube-proxy and EndpointSlices
//! ([`netmux_testbed::cluster::FakeCluster`]); the real netmux-server
//! (Kubernetes runtime, RBAC) intercepts it for the real netmuxd, driven
//! by the real `netmux` CLI.
//!
//! Need root; run with `--test-threads=1` (as `cargo xtask test` does).
//! Every address used is loopback or assigned inside the test's namespaces.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use netmux_testbed::backends::{H2c, Http1};
use netmux_testbed::cluster::{App, AppSpec, FakeCluster};
use netmux_testbed::{bin, Output, Process, Sandbox, Side};
use serde_json::Value;

mod common;
use common::{on_failure_dump, sandbox, T};

const SERVER_TOKEN: &str = "server-service-account-token";
const ALICE_TOKEN: &str = "alice-token-for-intercepts";
const BOB_TOKEN: &str = "bob-token-for-intercepts";
/// Sees the Service but may not intercept it.
const CAROL_TOKEN: &str = "carol-token-without-the-verb";
/// The intercept Lease's TTL in these tests (`intercept_ttl_ms`).
const TTL: Duration = Duration::from_secs(6);
/// Where the workstation's targets listen.
const ALICE_TARGET: &str = "127.0.0.1:18080";
const BOB_TARGET: &str = "127.0.0.1:18081";

/// A workstation-side HTTP server (HTTP/1.1 and h2c) answering every
/// request with 200, `x-served-by: NAME` and body `NAME`; stops on drop.
struct Target {
    /// Paths of the requests answered.
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn target(sb: &Sandbox, addr: &str, name: &str) -> Target {
    let addr: SocketAddr = addr.parse().expect("literal address");
    let path = format!("/run/netns/{}", sb.ws().name());
    let name = name.to_owned();
    let (ready, up) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let counter = seen.clone();
    let thread = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open the workstation namespace");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter it");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
            let _ = ready.send(());
            let serve = async {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let name = name.clone();
                    let counter = counter.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                            let name = name.clone();
                            if let Ok(mut seen) = counter.lock() {
                                seen.push(req.uri().path().to_owned());
                            }
                            async move {
                                let mut r =
                                    hyper::Response::new(Full::new(Bytes::from(name.clone())));
                                r.headers_mut().insert(
                                    "x-served-by",
                                    hyper::header::HeaderValue::from_str(&name).expect("name"),
                                );
                                Ok::<_, Infallible>(r)
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                    });
                }
            };
            tokio::select! {
                () = serve => {}
                _ = stopped => {}
            }
        });
    });
    up.recv_timeout(T).expect("workstation target started");
    Target {
        seen,
        stop: Some(stop),
        thread: Some(thread),
    }
}

struct Daemon {
    socket: PathBuf,
    process: Process,
}

struct World<'a> {
    sb: &'a Sandbox,
    cluster: FakeCluster,
    web: App,
    dir: PathBuf,
    servers: Vec<Process>,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// QUIC port of server replica `i`.
fn quic_port(i: usize) -> u16 {
    7443 + 10 * i as u16
}

fn world(sb: &Sandbox) -> World<'_> {
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
    fn start_server(&mut self, i: usize) {
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
        write(
            &config,
            &format!(
                "listen = \"{cl}:{}\"\nhttp = \"{cl}:{}\"\nstate_dir = \"{}\"\n\
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
    fn daemon(&self, name: &str, token: &str, replica: usize, range: &str) -> Daemon {
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

    fn cli(&self, d: &Daemon, args: &[&str]) -> Output {
        self.sb
            .process(Side::Workstation, "netmux", bin("netmux").expect("built"))
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .run(T)
            .expect("run netmux")
    }

    fn service(&self) -> Value {
        self.cluster
            .api()
            .get("/services", "apps", "web")
            .expect("Service apps/web")
    }

    fn spec_text(&self) -> String {
        serde_json::to_string(&self.service()["spec"]).expect("json")
    }

    fn intercepted(&self) -> bool {
        self.service()["metadata"]["annotations"]
            .get("netmux.dev/intercept-original")
            .is_some()
    }

    fn netmux_slice(&self) -> Option<Value> {
        self.cluster
            .api()
            .get("discovery.k8s.io/endpointslices", "apps", "netmux-icpt-web")
    }

    fn leases(&self) -> Vec<Value> {
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
    fn fresh_requests(&self, n: usize, headers: &[(&'static str, &'static str)]) -> Vec<String> {
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

    /// Waits until a fresh request with `headers` is answered by `who`
    /// (`pod`: any pod of web).
    fn wait_for_answer(&self, what: &str, headers: &[(&'static str, &'static str)], who: &str) {
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

fn served_by(status: u16, by: Option<&str>, body: &str) -> String {
    match (status, by) {
        (200, Some(by)) => by.to_owned(),
        _ => format!("status {status}: {}", body.trim()),
    }
}

fn assert_ok(out: &Output, what: &str) {
    assert!(out.success(), "{what}: {}{}", out.stdout, out.stderr);
}

#[test]
fn global_intercept_takes_every_connection_and_leave_restores_the_exact_spec() {
    let sb = sandbox();
    let mut w = world(&sb);
    w.start_server(0);
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let alice = w.daemon("alice", ALICE_TOKEN, 0, "127.77.0.0/16");
            let _target = target(&sb, ALICE_TARGET, "alice-workstation");
            let before = w.spec_text();
            w.wait_for_answer("the pods before", &[], "pod");

            let out = w.cli(&alice, &["intercept", "kube", "web", "--to", ALICE_TARGET]);
            assert_ok(&out, "intercept");
            assert!(w.intercepted(), "the original is recorded on the Service");
            assert!(w.service()["spec"].get("selector").is_none());
            assert!(w.netmux_slice().is_some(), "netmux's EndpointSlice");
            assert_eq!(w.leases().len(), 1, "one Lease");
            w.wait_for_answer("the workstation", &[], "alice-workstation");
            let answers = w.fresh_requests(50, &[]);
            assert!(
                answers.iter().all(|a| a == "alice-workstation"),
                "every connection reaches the workstation: {answers:?}"
            );
            assert!(w.cluster.requests("web-0") + w.cluster.requests("web-1") > 0);
            let pods_before = w.cluster.requests("web-0") + w.cluster.requests("web-1");
            // status: the holder as the server names it, and the count
            // the server reports (about once a second).
            netmux_testbed::wait_until("status with the server's report", T, || {
                let s = w.cli(&alice, &["status", "-o", "json"]).stdout;
                let v: Value = serde_json::from_str(&s).unwrap_or_default();
                let i = &v["intercepts"][0];
                i["service"] == "apps/web"
                    && i["port"] == 80
                    && i["mode"] == "global"
                    && i["state"] == "held"
                    && i["holder"] == "alice through replica netmux-server-0"
                    && i["to_workstation"].as_u64().is_some_and(|n| n >= 50)
            })
            .unwrap_or_else(|e| panic!("{e}: {}", w.cli(&alice, &["status"]).stdout));

            // Metrics per intercept, bounded labels (service, route).
            let metrics = common::curl(
                &sb,
                Side::Cluster,
                &format!("http://{}:{}/metrics", sb.cluster_addr(), quic_port(0) + 1),
            );
            let line = metrics
                .stdout
                .lines()
                .find(|l| {
                    l.starts_with("netmux_server_intercept_requests_total")
                        && l.contains("route=\"workstation\"")
                        && l.contains("service=\"apps/web\"")
                })
                .unwrap_or_else(|| panic!("no intercept metric:\n{}", metrics.stdout));
            let count: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_default();
            assert!(count >= 50.0, "{line}");

            let out = w.cli(&alice, &["leave", "kube", "web"]);
            assert_ok(&out, "leave");
            netmux_testbed::wait_until("the Service restored", T, || {
                !w.intercepted() && w.netmux_slice().is_none() && w.leases().is_empty()
            })
            .expect("restored");
            assert_eq!(w.spec_text(), before, "the spec is byte-identical");
            w.wait_for_answer("the pods again", &[], "pod");
            let answers = w.fresh_requests(50, &[]);
            let pods = w.web.pod_names();
            assert!(
                answers.iter().all(|a| pods.contains(a)),
                "every connection reaches a pod: {answers:?}"
            );
            assert!(w.cluster.requests("web-0") + w.cluster.requests("web-1") >= pods_before + 50);
        }),
    );
}

/// `requests` requests on one keep-alive connection (`h2`: gRPC-shaped
/// calls on one h2c connection, 16 at once), every third with alice's header, every third
/// with bob's, the rest with none; returns (header, answer) of each.
fn mixed(w: &World<'_>, requests: usize, h2: bool) -> Vec<(&'static str, String)> {
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

fn assert_routed(w: &World<'_>, answers: &[(&str, String)], expect: &[(&str, &str)]) {
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

#[test]
fn personal_intercepts_of_two_users_route_only_their_requests_over_http1_and_h2c() {
    let sb = sandbox();
    let mut w = world(&sb);
    w.start_server(0);
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let alice = w.daemon("alice", ALICE_TOKEN, 0, "127.77.0.0/16");
            let bob = w.daemon("bob", BOB_TOKEN, 0, "127.78.0.0/16");
            let _a = target(&sb, ALICE_TARGET, "alice-workstation");
            let _b = target(&sb, BOB_TARGET, "bob-workstation");
            let before = w.spec_text();
            let out = w.cli(
                &alice,
                &[
                    "intercept",
                    "kube",
                    "apps/web",
                    "--port",
                    "80",
                    "--to",
                    ALICE_TARGET,
                    "--header",
                    "x-netmux-user=alice",
                ],
            );
            assert_ok(&out, "alice's personal intercept");
            let out = w.cli(
                &bob,
                &[
                    "intercept",
                    "kube",
                    "web",
                    "--to",
                    BOB_TARGET,
                    "--header",
                    "X-Netmux-User=bob",
                ],
            );
            assert_ok(&out, "bob's personal intercept");
            w.wait_for_answer(
                "alice's requests",
                &[("x-netmux-user", "alice")],
                "alice-workstation",
            );

            // A global intercept conflicts with them: refused, naming a holder.
            let out = w.cli(&bob, &["leave", "kube", "web"]);
            assert_ok(&out, "bob leaves");
            let out = w.cli(&bob, &["intercept", "kube", "web", "--to", BOB_TARGET]);
            assert!(
                !out.success() && out.stderr.contains("held by alice"),
                "global refused naming alice: {}{}",
                out.stdout,
                out.stderr
            );
            let out = w.cli(
                &bob,
                &[
                    "intercept",
                    "kube",
                    "web",
                    "--to",
                    BOB_TARGET,
                    "--header",
                    "x-netmux-user=bob",
                ],
            );
            assert_ok(&out, "bob's personal intercept again");
            w.wait_for_answer(
                "bob's requests",
                &[("x-netmux-user", "bob")],
                "bob-workstation",
            );
            w.wait_for_answer("the others", &[], "pod");

            let expect = [("alice", "alice-workstation"), ("bob", "bob-workstation")];
            let h1 = mixed(&w, 1000, false);
            assert_eq!(h1.len(), 1000);
            assert_routed(&w, &h1, &expect);
            let h2 = mixed(&w, 1000, true);
            assert_eq!(h2.len(), 1000);
            assert_routed(&w, &h2, &expect);

            // ls shows the intercept, its mode and what came here.
            let ls = w.cli(&alice, &["ls"]);
            assert!(
                ls.stdout.contains("ICPT") && ls.stdout.contains("personal x-netmux-user=alice"),
                "{}",
                ls.stdout
            );

            for d in [&alice, &bob] {
                assert_ok(&w.cli(d, &["unintercept", "kube", "web"]), "leave");
            }
            netmux_testbed::wait_until("the Service restored", T, || {
                !w.intercepted() && w.netmux_slice().is_none() && w.leases().is_empty()
            })
            .expect("restored");
            assert_eq!(w.spec_text(), before, "the spec is byte-identical");
        }),
    );
}

#[test]
fn a_user_without_the_intercept_verb_is_refused_with_the_role_to_bind() {
    let sb = sandbox();
    let mut w = world(&sb);
    w.start_server(0);
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let carol = w.daemon("carol", CAROL_TOKEN, 0, "127.77.0.0/16");
            let out = w.cli(&carol, &["intercept", "kube", "web", "--to", ALICE_TARGET]);
            assert!(
                !out.success()
                    && out.stderr.contains("`intercept`")
                    && out.stderr.contains("netmux-user"),
                "{}{}",
                out.stdout,
                out.stderr
            );
            assert!(!w.intercepted() && w.netmux_slice().is_none() && w.leases().is_empty());
        }),
    );
}

/// Whether the Service is as before any intercept: selector back, no
/// annotation, no netmux slice, no Lease.
fn restored(w: &World<'_>) -> bool {
    !w.intercepted() && w.netmux_slice().is_none() && w.leases().is_empty()
}

#[test]
fn a_sigkilled_daemon_s_intercept_is_restored_within_the_lease_ttl() {
    let sb = sandbox();
    let mut w = world(&sb);
    w.start_server(0);
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let mut alice = w.daemon("alice", ALICE_TOKEN, 0, "127.77.0.0/16");
            let _target = target(&sb, ALICE_TARGET, "alice-workstation");
            let before = w.spec_text();
            assert_ok(
                &w.cli(&alice, &["intercept", "kube", "web", "--to", ALICE_TARGET]),
                "intercept",
            );
            w.wait_for_answer("the workstation", &[], "alice-workstation");
            alice.process.kill();
            // The server hears nothing more from it: the intercept ends and
            // the Service is restored before its Lease could expire.
            netmux_testbed::wait_until("the Service restored", TTL, || restored(&w))
                .expect("restored within the lease TTL");
            assert_eq!(w.spec_text(), before, "the spec is byte-identical");
            w.wait_for_answer("the pods again", &[], "pod");
        }),
    );
}

#[test]
fn when_the_replica_holding_an_intercept_dies_the_other_restores_the_service() {
    let sb = sandbox();
    let mut w = world(&sb);
    w.start_server(0);
    w.start_server(1);
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let alice = w.daemon("alice", ALICE_TOKEN, 0, "127.77.0.0/16");
            let _target = target(&sb, ALICE_TARGET, "alice-workstation");
            let before = w.spec_text();
            assert_ok(
                &w.cli(&alice, &["intercept", "kube", "web", "--to", ALICE_TARGET]),
                "intercept",
            );
            let lease = w.leases().remove(0);
            assert_eq!(
                lease["spec"]["holderIdentity"], "netmux-server-0/intercept",
                "{lease}"
            );
            w.wait_for_answer("the workstation", &[], "alice-workstation");
            w.servers[0].kill();
            // Its Lease expires after TTL; replica 1 sweeps every TTL/4.
            netmux_testbed::wait_until("replica 1 restores the Service", TTL * 2, || restored(&w))
                .expect("restored by the other replica");
            assert_eq!(w.spec_text(), before, "the spec is byte-identical");
            w.wait_for_answer("the pods again", &[], "pod");
            assert!(
                w.servers[1]
                    .log()
                    .contains("intercept Lease expired; restoring"),
                "replica 1 restored it"
            );
        }),
    );
}

#[test]
fn a_workstation_target_that_is_down_gives_a_reset_global_and_a_502_personal() {
    let sb = sandbox();
    let mut w = world(&sb);
    w.start_server(0);
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let alice = w.daemon("alice", ALICE_TOKEN, 0, "127.77.0.0/16");
            // Nothing listens on ALICE_TARGET.
            assert_ok(
                &w.cli(&alice, &["intercept", "kube", "web", "--to", ALICE_TARGET]),
                "global intercept",
            );
            netmux_testbed::wait_until("the kube-proxy to follow netmux's slice", T, || {
                w.fresh_requests(1, &[])[0].starts_with("error")
            })
            .expect("connections fail");
            let addr = w.web.addr();
            let outcome = sb
                .cluster()
                .block_on(move || async move {
                    let mut c = Http1::connect(addr).await.expect("connect");
                    tokio::time::timeout(T, c.get("/down", &[])).await
                })
                .expect("cluster namespace");
            match outcome {
                Ok(Err(e)) => eprintln!("global, target down: {e}"),
                Ok(Ok(r)) => panic!("an answer from a down target: {} {}", r.status, r.body),
                Err(_) => panic!("no prompt reset: the request hung"),
            }
            assert_ok(&w.cli(&alice, &["leave", "kube", "web"]), "leave");
            netmux_testbed::wait_until("restored", T, || restored(&w)).expect("restored");

            assert_ok(
                &w.cli(
                    &alice,
                    &[
                        "intercept",
                        "kube",
                        "web",
                        "--to",
                        ALICE_TARGET,
                        "--header",
                        "x-netmux-user=alice",
                    ],
                ),
                "personal intercept",
            );
            w.wait_for_answer("the pods for others", &[], "pod");
            let answer = w.fresh_requests(1, &[("x-netmux-user", "alice")]).remove(0);
            assert!(
                answer.starts_with("status 502")
                    && answer.contains("workstation target is down")
                    && answer.contains("netmux leave"),
                "{answer}"
            );
            let others = w.fresh_requests(20, &[]);
            let pods = w.web.pod_names();
            assert!(others.iter().all(|a| pods.contains(a)), "{others:?}");
        }),
    );
}

#[test]
fn netmux_cleanup_restores_with_the_users_kubeconfig_when_no_server_is_left() {
    let sb = sandbox();
    let mut w = world(&sb);
    w.start_server(0);
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let alice = w.daemon("alice", ALICE_TOKEN, 0, "127.77.0.0/16");
            let _target = target(&sb, ALICE_TARGET, "alice-workstation");
            let before = w.spec_text();
            assert_ok(
                &w.cli(&alice, &["intercept", "kube", "web", "--to", ALICE_TARGET]),
                "intercept",
            );
            w.wait_for_answer("the workstation", &[], "alice-workstation");
            // Every netmux pod is gone.
            w.servers[0].kill();
            let kubeconfig = w.dir.join("alice-kubeconfig");
            write(
                &kubeconfig,
                &w.cluster.kubeconfig("alice", ALICE_TOKEN, "apps"),
            );
            let out = sb
                .process(
                    Side::Workstation,
                    "netmux-cleanup",
                    bin("netmux").expect("built"),
                )
                .args(["cleanup", "--intercepts", "--namespace", "apps"])
                .env("KUBECONFIG", &kubeconfig)
                .run(T)
                .expect("run netmux cleanup");
            assert_ok(&out, "cleanup --intercepts");
            assert!(
                out.stdout.contains("restored Service apps/web"),
                "{}",
                out.stdout
            );
            assert!(!w.intercepted() && w.netmux_slice().is_none());
            assert_eq!(w.spec_text(), before, "the spec is byte-identical");
            w.wait_for_answer("the pods again", &[], "pod");
            let out = sb
                .process(
                    Side::Workstation,
                    "netmux-cleanup",
                    bin("netmux").expect("built"),
                )
                .args(["cleanup", "--intercepts", "--namespace", "apps"])
                .env("KUBECONFIG", &kubeconfig)
                .run(T)
                .expect("run netmux cleanup");
            assert!(
                out.stdout.contains("no intercepted Service"),
                "{}",
                out.stdout
            );
        }),
    );
}

#[test]
fn a_mirror_gets_a_copy_of_every_request_while_the_pods_answer() {
    let sb = sandbox();
    let mut w = world(&sb);
    w.start_server(0);
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let alice = w.daemon("alice", ALICE_TOKEN, 0, "127.77.0.0/16");
            let bob = w.daemon("bob", BOB_TOKEN, 0, "127.78.0.0/16");
            let _a = target(&sb, ALICE_TARGET, "alice-workstation");
            let mirror = target(&sb, BOB_TARGET, "bob-mirror");
            assert_ok(
                &w.cli(
                    &alice,
                    &[
                        "intercept",
                        "kube",
                        "web",
                        "--to",
                        ALICE_TARGET,
                        "--header",
                        "x-netmux-user=alice",
                    ],
                ),
                "alice's personal intercept",
            );
            assert_ok(
                &w.cli(
                    &bob,
                    &["intercept", "kube", "web", "--to", BOB_TARGET, "--mirror"],
                ),
                "bob's mirror",
            );
            w.wait_for_answer("the pods", &[], "pod");
            let addr = w.web.addr();
            let answers = sb
                .cluster()
                .block_on(move || async move {
                    let mut c = Http1::connect(addr).await.expect("connect");
                    let mut out = Vec::new();
                    for i in 0..40 {
                        let headers: &[(&str, &str)] = if i % 4 == 0 {
                            &[("x-netmux-user", "alice")]
                        } else {
                            &[]
                        };
                        let r = c.get(&format!("/m/{i}"), headers).await.expect("get");
                        out.push((
                            i % 4 == 0,
                            served_by(r.status, r.header("x-served-by"), &r.body),
                        ));
                    }
                    out
                })
                .expect("cluster namespace");
            let pods = w.web.pod_names();
            for (to_alice, a) in &answers {
                if *to_alice {
                    assert_eq!(a, "alice-workstation");
                } else {
                    assert!(pods.contains(a), "the pods answer, never the mirror: {a}");
                }
            }
            // 40 requests fit the copy queue: every one is copied, once.
            let copies = || -> Vec<String> {
                let seen = mirror.seen.lock().map(|s| s.clone()).unwrap_or_default();
                seen.into_iter().filter(|p| p.starts_with("/m/")).collect()
            };
            netmux_testbed::wait_until("40 copies at the mirror", T, || copies().len() >= 40)
                .unwrap_or_else(|e| panic!("{e}: {:?}", copies()));
            let mut got = copies();
            got.sort();
            let mut want: Vec<String> = (0..40).map(|i| format!("/m/{i}")).collect();
            want.sort();
            assert_eq!(got, want, "one copy of each request");
            let out = w.cli(&bob, &["status"]);
            assert!(out.stdout.contains("mirror"), "{}", out.stdout);
            // A global intercept still conflicts with the personal one.
            assert_ok(&w.cli(&bob, &["leave", "kube", "web"]), "bob leaves");
            let out = w.cli(&bob, &["intercept", "kube", "web", "--to", BOB_TARGET]);
            assert!(
                !out.success() && out.stderr.contains("held by alice"),
                "{}",
                out.stderr
            );
        }),
    );
}
