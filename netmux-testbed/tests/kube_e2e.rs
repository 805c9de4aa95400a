//! End to end against a (fake) Kubernetes cluster (issue 5): a developer
//! runs `netmux connect` with their own kubeconfig and reaches the
//! cluster's Services through a port-forward to the server pod.
//!
//! The pieces are real: netmux-server with the Kubernetes runtime and RBAC
//! access, netmuxd, the netmux CLI run as an unprivileged user whose
//! kubeconfig has an `exec` credential plugin, curl. Only the API server
//! is the in-process fake of `netmux-fakekube`, serving Kubernetes JSON and
//! pod port-forwards (WebSocket, `v4.channel.k8s.io`) from the cluster
//! namespace, on the cluster side's own address.
//!
//! Need root; run with `--test-threads=1` (as `cargo xtask test` does).
//! Every address used is loopback or assigned inside the test's namespaces.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use netmux_fakekube::{pod, service};
use netmux_testbed::cgroup::ChildCgroup;
use netmux_testbed::cluster::{FakeCluster, API_PORT};
use netmux_testbed::{bin, Output, Sandbox, Side};
use serde_json::json;

mod common;
use common::{curl, ip, nx_echo, on_failure_dump, sandbox, T};

const QUIC_PORT: u16 = 7443;
const STREAM_PORT: u16 = 7444;
const HTTP_PORT: u16 = 7080;
/// `nobody`/`nogroup` on Debian: the developer running the CLI.
const USER_ID: u32 = 65534;
const SERVER_TOKEN: &str = "server-service-account-token";
const ALICE_TOKEN: &str = "alice-token-from-the-exec-plugin";
/// A user the API server knows who may reach nothing.
const BOB_TOKEN: &str = "bob-token-without-permissions";
/// A user the API server knows who may not even port-forward.
const EVE_TOKEN: &str = "eve-token-without-port-forward";

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn dir(path: PathBuf, mode: u32) -> PathBuf {
    std::fs::create_dir_all(&path).expect("mkdir");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

/// Everything the developer owns: a kubeconfig whose user gets its token
/// from an exec plugin that records who ran it.
struct Developer {
    home: PathBuf,
    kubeconfig: PathBuf,
    plugin_calls: PathBuf,
}

fn developer(base: &Path, api: SocketAddr) -> Developer {
    let home = dir(base.join("home"), 0o755);
    let calls_dir = dir(home.join("calls"), 0o777);
    let plugin_calls = calls_dir.join("uids");
    let plugin = home.join("token-plugin.sh");
    write(
        &plugin,
        &format!(
            "#!/bin/sh\nid -u >> {}\n\
             case \"$KUBERNETES_EXEC_INFO\" in *ExecCredential*) ;; *) echo 'no exec info' >&2; exit 2;; esac\n\
             echo '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"{ALICE_TOKEN}\"}}}}'\n",
            plugin_calls.display()
        ),
        0o755,
    );
    let kubeconfig = home.join("kubeconfig");
    write(
        &kubeconfig,
        &format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: dev\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{api}\n\
             users:\n- name: alice\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      interactiveMode: Never\n\
             - name: mallory\n  user:\n    token: not-a-token-the-cluster-knows\n\
             - name: bob\n  user:\n    token: {BOB_TOKEN}\n\
             - name: eve\n  user:\n    token: {EVE_TOKEN}\n\
             contexts:\n- name: dev\n  context: {{cluster: fake, user: alice, namespace: apps}}\n\
             - name: stranger\n  context: {{cluster: fake, user: mallory}}\n\
             - name: bob\n  context: {{cluster: fake, user: bob}}\n\
             - name: eve\n  context: {{cluster: fake, user: eve}}\n",
            plugin.display()
        ),
        0o644,
    );
    Developer {
        home,
        kubeconfig,
        plugin_calls,
    }
}

struct World<'a> {
    sb: &'a Sandbox,
    fake: FakeCluster,
    dev: Developer,
    socket: PathBuf,
    config: PathBuf,
    _procs: Vec<netmux_testbed::Process>,
}

impl World<'_> {
    /// `netmux ARGS` as the developer (uid/gid 65534), in the workstation.
    fn cli_as_user(&self, args: &[&str]) -> Output {
        self.sb
            .process(Side::Workstation, "netmux-as-user", "setpriv")
            .args([
                format!("--reuid={USER_ID}"),
                format!("--regid={USER_ID}"),
                "--clear-groups".into(),
                "--".into(),
            ])
            .arg(bin("netmux").expect("netmux built"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("HOME", &self.dev.home)
            .env("KUBECONFIG", &self.dev.kubeconfig)
            .run(T)
            .expect("run netmux as the user")
    }

    /// `netmux ARGS` as root through sudo (SUDO_UID/SUDO_GID/SUDO_USER of
    /// the developer, as sudo sets them).
    fn cli_sudo(&self, args: &[&str]) -> Output {
        self.sb
            .process(
                Side::Workstation,
                "netmux-sudo",
                bin("netmux").expect("built"),
            )
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env("SUDO_UID", USER_ID.to_string())
            .env("SUDO_GID", USER_ID.to_string())
            .env("SUDO_USER", "nobody")
            .run(T)
            .expect("run netmux under sudo")
    }

    /// `netmux ARGS` as root.
    fn cli(&self, args: &[&str]) -> Output {
        self.sb
            .process(Side::Workstation, "netmux", bin("netmux").expect("built"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .run(T)
            .expect("run netmux")
    }

    fn ls(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["ls", "-o", "json"]);
        assert!(out.success(), "ls: {}{}", out.stdout, out.stderr);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("ls json");
        v["rows"].as_array().cloned().unwrap_or_default()
    }

    fn wait_for(&self, what: &str, mut ok: impl FnMut(&World<'_>) -> bool) {
        let deadline = std::time::Instant::now() + T;
        while std::time::Instant::now() < deadline {
            if ok(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.sb.dump_logs(60);
        panic!("timed out waiting for {what}; ls: {:?}", self.ls());
    }

    fn curl_web(&self) -> Output {
        curl(
            self.sb,
            Side::Workstation,
            "http://web.apps.svc.cluster.local:8080/hello",
        )
    }
}

fn world(sb: &Sandbox) -> World<'_> {
    world_with(sb, None)
}

/// [`world`]; with `cgroup`, the daemon uses the eBPF backend on it and
/// runs inside it, and the API server's own address is a published
/// Service (the in-cluster `kubernetes` Service reached over a VPN).
fn world_with<'a>(sb: &'a Sandbox, cgroup: Option<&ChildCgroup>) -> World<'a> {
    let cl = sb.cluster_addr();
    // The API server alone: the test runs web and the server itself.
    let fake = FakeCluster::start_api_only(sb).expect("fake API server");
    let api_addr = fake.api_addr();
    let api = fake.api();
    api.add_token(
        SERVER_TOKEN,
        "system:serviceaccount:netmux:netmux-server",
        &[],
    );
    api.add_token(ALICE_TOKEN, "alice", &[]);
    api.add_token(BOB_TOKEN, "bob", &[]);
    api.add_token(EVE_TOKEN, "eve", &[]);
    for user in ["alice", "bob"] {
        api.allow(user, "get", "/pods/portforward", "netmux", "*");
    }
    api.allow("alice", "get", "/services/proxy", "apps", "web");
    api.require_auth(true);
    let port = |n: u16| json!([{"name": "http", "port": n, "targetPort": n, "protocol": "TCP"}]);
    api.apply(service("apps", "web", "10.96.0.10", port(8080), None));
    api.apply(service("apps", "admin", "10.96.0.11", port(8080), None));
    let mut server_svc = service(
        "netmux",
        "netmux-server",
        "10.96.0.2",
        json!([{"name": "quic-stream", "port": QUIC_PORT, "targetPort": "quic-stream", "protocol": "TCP"}]),
        Some("[]"),
    );
    server_svc["spec"]["selector"] = json!({"app.kubernetes.io/name": "netmux-server"});
    api.apply(server_svc);
    api.apply(pod(
        "netmux",
        "netmux-server-0",
        "netmux-server",
        &cl.to_string(),
        "quic-stream",
        STREAM_PORT,
    ));
    if cgroup.is_some() {
        api.apply(service(
            "apps",
            "kubernetes",
            &cl.to_string(),
            json!([{"name": "https", "port": API_PORT, "targetPort": API_PORT, "protocol": "TCP"}]),
            None,
        ));
        api.allow("alice", "get", "/services/proxy", "apps", "kubernetes");
    }
    sb.add_service_address(ip("10.96.0.10")).expect("address");
    sb.add_service_address(ip("10.96.0.11")).expect("address");
    let web = nx_echo(
        sb,
        Side::Cluster,
        "web",
        "http",
        "10.96.0.10:8080".parse().expect("addr"),
    );

    // The server, as in the Deployment: Kubernetes runtime, RBAC.
    let base = sb.dir();
    let state = base.join("server-state");
    write(
        &base.join("server-kubeconfig"),
        &fake.kubeconfig("sa", SERVER_TOKEN, "netmux"),
        0o600,
    );
    write(
        &base.join("server.toml"),
        &format!(
            "listen = \"{cl}:{QUIC_PORT}\"\nstream_listen = \"{cl}:{STREAM_PORT}\"\nhttp = \"{cl}:{HTTP_PORT}\"\n\
             state_dir = \"{}\"\nserver_names = [\"netmux-server\"]\ncluster_cidrs = [\"10.96.0.0/12\"]\n\n[rbac]\ncache_ttl_ms = 1000\n\n\
             [runtime]\nkind = \"kubernetes\"\nnamespaces = [\"apps\"]\n{}",
            state.display(),
            // The `kubernetes` Service is at the server's own address here;
            // the target policy refuses that unless named.
            if cgroup.is_some() {
                format!("allow_unsafe_targets = [\"{cl}\"]\n")
            } else {
                String::new()
            }
        ),
        0o600,
    );
    let server = sb
        .process(
            Side::Cluster,
            "netmux-server",
            bin("netmux-server").expect("built"),
        )
        .arg("--config")
        .arg(base.join("server.toml"))
        .env("KUBECONFIG", base.join("server-kubeconfig"))
        .env("RUST_LOG", "info,netmux_server=debug")
        .spawn()
        .expect("start netmux-server");
    sb.wait_for_tcp(Side::Cluster, SocketAddr::new(cl.into(), STREAM_PORT), T)
        .unwrap_or_else(|e| panic!("netmux-server: {e}\n{}", server.log()));
    // The admin publishes the CA for daemons (docs/kubernetes.md).
    let ca = std::fs::read_to_string(state.join("ca.pem")).expect("the server's CA");
    api.apply(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "netmux-ca", "namespace": "netmux"},
        "data": {"ca.pem": ca},
    }));

    // The daemon: one Kubernetes endpoint, no server address, no CA, no
    // token in its config. Its socket is open to the developer's group.
    let redirect = match cgroup {
        Some(cg) => format!(
            "redirect = \"ebpf\"\ncgroup = \"{}\"\n",
            cg.path().display()
        ),
        None => "redirect = \"loopback\"\n".to_owned(),
    };
    let run = dir(base.join("run"), 0o755);
    let socket = run.join("netmuxd.sock");
    let config = run.join("config.toml");
    write(
        &config,
        &format!(
            "socket = \"{}\"\nsocket_group = \"nogroup\"\nhosts_file = \"{}\"\n{redirect}\
             address_range = \"127.77.0.0/16\"\n\n\
             [[endpoint]]\nname = \"kube\"\nserver_name = \"netmux-server\"\n\
             [endpoint.kubernetes]\nnamespace = \"netmux\"\nservice = \"netmux-server\"\n\n\
             [[endpoint]]\nname = \"kube-auto\"\nserver = \"{cl}:7999\"\ntransport = \"auto\"\n\
             [endpoint.kubernetes]\nnamespace = \"netmux\"\n\n\
             [[endpoint]]\nname = \"kube-direct\"\nserver = \"{cl}:{QUIC_PORT}\"\ntransport = \"direct\"\n\
             [endpoint.kubernetes]\nnamespace = \"netmux\"\n",
            socket.display(),
            sb.ws_hosts_file().display()
        ),
        0o644,
    );
    let netmuxd = bin("netmuxd").expect("built").display().to_string();
    let config_arg = config.display().to_string();
    let daemon_args = ["--config", config_arg.as_str()];
    let daemon = match cgroup {
        Some(cg) => sb
            .process(Side::Workstation, "netmuxd", "sh")
            .args(cg.wrap(&netmuxd, &daemon_args)),
        None => sb
            .process(Side::Workstation, "netmuxd", &netmuxd)
            .args(daemon_args),
    }
    .env("RUST_LOG", "info,netmux_daemon=debug")
    .spawn()
    .expect("start netmuxd");
    netmux_testbed::wait_until("netmuxd's socket", T, || socket.exists())
        .unwrap_or_else(|e| panic!("netmuxd: {e}\n{}", daemon.log()));
    let dev = developer(base, api_addr);
    World {
        sb,
        fake,
        dev,
        socket,
        config,
        _procs: vec![web, server, daemon],
    }
}

fn plugin_uids(w: &World<'_>) -> Vec<String> {
    std::fs::read_to_string(&w.dev.plugin_calls)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn connect_with_the_users_kubeconfig_through_a_port_forward() {
    let sb = sandbox();
    let w = world(&sb);
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            // Without the user's credentials the daemon cannot connect.
            let out = w.cli(&["connect", "kube"]);
            assert!(
                !out.success() && out.stderr.contains("kubeconfig"),
                "{}{}",
                out.stdout,
                out.stderr
            );

            let out = w.cli_as_user(&["connect", "kube"]);
            assert!(
                out.success() && out.stdout.contains("kube connected"),
                "connect: {}{}",
                out.stdout,
                out.stderr
            );
            // The plugin ran once, as the developer; the daemon (root) never ran it.
            assert_eq!(plugin_uids(&w), [USER_ID.to_string()]);
            assert!(w.fake.api().forwards() >= 1);
            let requests = w.fake.api().requests();
            assert!(
                requests
                    .iter()
                    .any(|(_, p)| p.contains("/pods/netmux-server-0/portforward")),
                "{requests:?}"
            );
            assert!(w.fake.api().bearers().iter().any(|b| b == ALICE_TOKEN));

            // The catalog holds what alice may reach (RBAC), nothing else.
            let services: Vec<String> = w
                .ls()
                .iter()
                .filter(|r| r["kind"] == "SVC")
                .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
                .collect();
            assert_eq!(services, ["apps/web"], "catalog filtered by services/proxy");

            let out = w.cli_as_user(&["start", "kube", "+"]);
            assert!(out.success(), "start: {}{}", out.stdout, out.stderr);
            let out = w.curl_web();
            assert!(
                out.success() && out.stdout.contains("path=/hello"),
                "curl: {}{}",
                out.stdout,
                out.stderr
            );

            // The server pod is replaced and the forward drops: the daemon
            // finds the new pod and reconnects by itself.
            w.fake
                .api()
                .delete("v1", "Pod", "netmux", "netmux-server-0");
            w.fake.api().apply(pod(
                "netmux",
                "netmux-server-1",
                "netmux-server",
                &sb.cluster_addr().to_string(),
                "quic-stream",
                STREAM_PORT,
            ));
            w.fake.api().drop_connections();
            w.wait_for("a port-forward to the new pod", |w| {
                w.fake
                    .api()
                    .requests()
                    .iter()
                    .any(|(_, p)| p.contains("/pods/netmux-server-1/portforward"))
            });
            w.wait_for("curl through the new forward", |w| {
                let out = w.curl_web();
                out.success() && out.stdout.contains("path=/hello")
            });
            assert_eq!(
                plugin_uids(&w).len(),
                1,
                "reconnecting reuses the credentials: the plugin is not run again"
            );

            // The doctor, as the user, checks the port-forward end to end.
            let out = w.cli_as_user(&["doctor", "--json"]);
            let checks: serde_json::Value = serde_json::from_str(&out.stdout)
                .unwrap_or_else(|e| panic!("doctor json: {e}: {}", out.stdout));
            let ep = checks
                .as_array()
                .and_then(|a| a.iter().find(|c| c["name"] == "endpoint kube"))
                .cloned()
                .unwrap_or_else(|| panic!("no endpoint check: {checks}"));
            assert_eq!(ep["status"], "pass", "{ep}");

            // Credentials the cluster does not know: a clear answer.
            let out = w.cli(&["disconnect", "kube"]);
            assert!(out.success(), "{}{}", out.stdout, out.stderr);
            let out = w.cli_as_user(&["connect", "kube", "--context", "stranger"]);
            let text = format!("{}{}", out.stdout, out.stderr);
            assert!(
                text.contains("401") && text.contains("netmux connect kube"),
                "{text}"
            );
            // It waits for new credentials instead of retrying: `netmux
            // connect` again renews them in place and the endpoint comes up.
            let refused = w.fake.api().requests().len();
            std::thread::sleep(Duration::from_secs(2));
            assert!(
                w.fake.api().requests().len() <= refused + 1,
                "no retry loop against the API server with refused credentials"
            );
            let out = w.cli_as_user(&["connect", "kube"]);
            assert!(
                out.success() && out.stdout.contains("renewed"),
                "{}{}",
                out.stdout,
                out.stderr
            );
            w.wait_for("the endpoint back up with renewed credentials", |w| {
                w.ls()
                    .iter()
                    .any(|r| r["name"] == "kube" && r["status"] == "connected")
            });
            let out = w.cli(&["disconnect", "kube"]);
            assert!(out.success(), "{}{}", out.stdout, out.stderr);

            // Known to the cluster, but not allowed to port-forward: 403,
            // and the message names the Role to bind.
            let out = w.cli_as_user(&["connect", "kube", "--context", "eve"]);
            let text = format!("{}{}", out.stdout, out.stderr);
            assert!(
                text.contains("forbidden") && text.contains("netmux-user"),
                "{text}"
            );
            let out = w.cli(&["disconnect", "kube"]);
            assert!(out.success(), "{}{}", out.stdout, out.stderr);

            // bob may reach nothing; with alice's netmux token handed over
            // by --token-file (the fallback for client-certificate users)
            // the hello presents that token and the catalog is alice's.
            let token = w.dev.home.join("netmux-token");
            write(&token, ALICE_TOKEN, 0o644);
            let out = w.cli_as_user(&["connect", "kube", "--context", "bob"]);
            assert!(out.success(), "{}{}", out.stdout, out.stderr);
            assert!(
                !w.ls().iter().any(|r| r["kind"] == "SVC"),
                "bob sees nothing: {:?}",
                w.ls()
            );
            let out = w.cli(&["disconnect", "kube"]);
            assert!(out.success(), "{}{}", out.stdout, out.stderr);
            let token_arg = token.display().to_string();
            let out = w.cli_as_user(&[
                "connect",
                "kube",
                "--context",
                "bob",
                "--token-file",
                &token_arg,
            ]);
            assert!(out.success(), "{}{}", out.stdout, out.stderr);
            assert!(
                w.ls().iter().any(|r| r["name"] == "apps/web"),
                "with alice's token: {:?}",
                w.ls()
            );
            let out = w.cli(&["disconnect", "kube"]);
            assert!(out.success(), "{}{}", out.stdout, out.stderr);

            // auto: nothing answers over UDP at its server, so it falls
            // back to the port-forward; direct: QUIC over UDP with the
            // user's token and the CA from the cluster, no forward.
            let before = w.fake.api().forwards();
            let out = w.cli_as_user(&["connect", "kube-auto"]);
            assert!(
                out.success() && out.stdout.contains("kube-auto connected"),
                "{}{}",
                out.stdout,
                out.stderr
            );
            assert!(
                w.fake.api().forwards() > before,
                "auto fell back to a forward"
            );
            let before = w.fake.api().forwards();
            let out = w.cli_as_user(&["connect", "kube-direct"]);
            let want = format!("kube-direct connected to {}:{QUIC_PORT}", sb.cluster_addr());
            assert!(
                out.success() && out.stdout.contains(&want),
                "{}{}",
                out.stdout,
                out.stderr
            );
            assert_eq!(w.fake.api().forwards(), before, "direct opens no forward");
            for ep in ["kube-auto", "kube-direct"] {
                let out = w.cli(&["disconnect", ep]);
                assert!(out.success(), "{}{}", out.stdout, out.stderr);
            }

            // Under sudo (root with SUDO_UID): everything is resolved by a
            // child that became the invoking user, so a kubeconfig only root
            // can read is refused, and the plugin runs as that user.
            let secret_dir = dir(w.dev.home.join("root-only"), 0o700);
            let secret = secret_dir.join("kubeconfig");
            std::fs::copy(&w.dev.kubeconfig, &secret).expect("copy");
            let out = w.cli_sudo(&[
                "connect",
                "kube",
                "--kubeconfig",
                &secret.display().to_string(),
            ]);
            assert!(
                !out.success() && out.stderr.contains("Permission denied"),
                "{}{}",
                out.stdout,
                out.stderr
            );
            let calls = plugin_uids(&w).len();
            let kubeconfig = w.dev.kubeconfig.display().to_string();
            let out = w.cli_sudo(&["connect", "kube", "--kubeconfig", &kubeconfig]);
            assert!(
                out.success() && out.stdout.contains("kube connected"),
                "{}{}",
                out.stdout,
                out.stderr
            );
            let uids = plugin_uids(&w);
            assert_eq!(uids.len(), calls + 1);
            assert!(
                uids.iter().all(|u| *u == USER_ID.to_string()),
                "the plugin never ran as root: {uids:?}"
            );
        }),
    );
}

/// The daemon's own connections are never redirected, even those it cannot
/// mark: here the API server's address is itself a published, started
/// Service, and the daemon's kube client must still reach the real API
/// server when it re-opens the port-forward.
#[test]
fn the_daemons_api_connections_are_not_redirected_into_itself() {
    let sb = sandbox();
    let cg = ChildCgroup::new(&format!("nx-kube-{}", std::process::id())).expect("child cgroup");
    let w = world_with(&sb, Some(&cg));
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let out = w.cli_as_user(&["connect", "kube"]);
            assert!(out.success(), "connect: {}{}", out.stdout, out.stderr);
            let out = w.cli_as_user(&["start", "kube", "+"]);
            assert!(out.success(), "start: {}{}", out.stdout, out.stderr);
            assert!(
                w.ls()
                    .iter()
                    .any(|r| r["name"] == "apps/kubernetes" && r["status"] == "on"),
                "{:?}",
                w.ls()
            );
            // In the cgroup, by cluster IP: redirected into the tunnel.
            let in_cgroup = |url: &str| {
                sb.process(Side::Workstation, "curl-in-cgroup", "sh")
                    .args(cg.wrap("curl", &["-sS", "--max-time", "10", url]))
                    .run(T)
                    .expect("curl")
            };
            let out = in_cgroup("http://10.96.0.10:8080/one");
            assert!(
                out.stdout.contains("path=/one"),
                "{}{}",
                out.stdout,
                out.stderr
            );

            // The forward drops: the daemon's kube client dials the API
            // server's address, which is now redirected for everyone else.
            let before = w.fake.api().forwards();
            w.fake.api().drop_connections();
            w.wait_for("the daemon to re-open the port-forward", |w| {
                w.fake.api().forwards() > before
            });
            w.wait_for("curl through the new forward", |_| {
                in_cgroup("http://10.96.0.10:8080/two")
                    .stdout
                    .contains("path=/two")
            });
        }),
    );
}

/// Issue 20 over the Kubernetes port-forward (the default transport of a
/// kubeconfig endpoint): an open connection survives 45 s of total loss
/// between the workstation and the cluster (the API server's address
/// included), longer than the server's 30 s stream idle timeout, because
/// the daemon's session holds the server side of the forwarded stream.
#[test]
fn an_open_connection_survives_a_blackout_over_the_port_forward() {
    use std::io::{Read, Write};
    let test = "kube_e2e::an_open_connection_survives_a_blackout_over_the_port_forward";
    if !netmux_testbed::prereq::require(test, netmux_testbed::prereq::tools(&["iptables"])) {
        return;
    }
    let sb = sandbox();
    let w = world(&sb);
    // A TCP echo alice may reach.
    let echo_port = json!([{"name": "echo", "port": 9100, "targetPort": 9100, "protocol": "TCP"}]);
    w.fake
        .api()
        .apply(service("apps", "echo", "10.96.0.12", echo_port, None));
    w.fake
        .api()
        .allow("alice", "get", "/services/proxy", "apps", "echo");
    sb.add_service_address(ip("10.96.0.12")).expect("address");
    let _echo = nx_echo(
        &sb,
        Side::Cluster,
        "echo",
        "tcp",
        "10.96.0.12:9100".parse().expect("addr"),
    );
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let out = w.cli_as_user(&["connect", "kube"]);
            assert!(out.success(), "connect: {}{}", out.stdout, out.stderr);
            w.wait_for("apps/echo in the catalog", |w| {
                w.ls().iter().any(|r| r["name"] == "apps/echo")
            });
            let out = w.cli_as_user(&["start", "kube", "+"]);
            assert!(out.success(), "start: {}{}", out.stdout, out.stderr);
            let name = "echo.apps.svc.cluster.local";
            let mut local = None;
            w.wait_for("echo in the hosts file", |_| {
                local = std::fs::read_to_string(sb.ws_hosts_file())
                    .unwrap_or_default()
                    .lines()
                    .find(|l| l.split_whitespace().skip(1).any(|n| n == name))
                    .and_then(|l| {
                        l.split_whitespace()
                            .next()?
                            .parse::<std::net::IpAddr>()
                            .ok()
                    });
                local.is_some()
            });
            let addr = SocketAddr::new(local.expect("address"), 9100);
            // The connection is made in the workstation namespace; the
            // socket stays there when used from this thread.
            let ns = format!("/run/netns/{}", sb.ws().name());
            let mut tcp = std::thread::spawn(move || {
                let f = std::fs::File::open(&ns).expect("open the workstation namespace");
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter it");
                std::net::TcpStream::connect(addr)
            })
            .join()
            .expect("thread")
            .expect("connect to the echo service");
            tcp.set_read_timeout(Some(T * 3)).expect("timeout");
            let mut echo = |line: &[u8]| {
                tcp.write_all(line)?;
                let mut back = vec![0u8; line.len()];
                tcp.read_exact(&mut back)?;
                Ok::<_, std::io::Error>(back)
            };
            assert_eq!(echo(b"before\n").expect("echo before"), b"before\n");

            // Total loss both ways between the workstation and the
            // cluster's address (API server, port-forward), for 45 s.
            let peer = sb.cluster_addr().to_string();
            let rules = [["OUTPUT", "-d"], ["INPUT", "-s"]];
            let iptables = |op: &str| {
                for [chain, dir] in rules {
                    let args = ["-w", op, chain, dir, peer.as_str(), "-j", "DROP"];
                    let out = sb.exec(Side::Workstation, "iptables", args, T);
                    assert!(out.is_ok(), "iptables {args:?}: {out:?}");
                }
            };
            iptables("-I");
            let lift = Lift(Some(|| {
                for [chain, dir] in rules {
                    let args = ["-w", "-D", chain, dir, peer.as_str(), "-j", "DROP"];
                    let _ = sb.exec(Side::Workstation, "iptables", args, T);
                }
            }));
            w.wait_for("kube degraded", |w| {
                serde_json::to_string(&w.ls())
                    .unwrap_or_default()
                    .contains("degraded")
            });
            std::thread::sleep(Duration::from_secs(45));
            drop(lift);
            assert_eq!(
                echo(b"after\n").expect("the open connection carries on after the blackout"),
                b"after\n"
            );
            let log = w._procs[2].log();
            assert!(
                !log.contains("connection lost; reconnecting"),
                "the session was never lost:\n{log}"
            );
        }),
    );
}

/// Runs its function when dropped (also on a panic).
struct Lift<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for Lift<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}
