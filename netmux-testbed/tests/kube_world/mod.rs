//! The world of `kube_e2e.rs`: the fake API server in the cluster
//! namespace, netmux-server as in the Deployment (Kubernetes runtime,
//! RBAC), netmuxd with Kubernetes endpoints, and the developer whose
//! kubeconfig has an `exec` credential plugin.
#![allow(dead_code, reason = "each test uses a subset")]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use netmux_fakekube::{pod, service};
use netmux_testbed::cgroup::ChildCgroup;
pub use netmux_testbed::cluster::{FakeCluster, API_PORT};
use netmux_testbed::{bin, Output, Sandbox, Side};
use serde_json::json;

use crate::common::{curl, ip, nx_echo, T};

pub const QUIC_PORT: u16 = 7443;
pub const STREAM_PORT: u16 = 7444;
pub const HTTP_PORT: u16 = 7080;
/// `nobody`/`nogroup` on Debian: the developer running the CLI.
pub const USER_ID: u32 = 65534;
pub const SERVER_TOKEN: &str = "server-service-account-token";
pub const ALICE_TOKEN: &str = "alice-token-from-the-exec-plugin";
/// A user the API server knows who may reach nothing.
pub const BOB_TOKEN: &str = "bob-token-without-permissions";
/// A user the API server knows who may not even port-forward.
pub const EVE_TOKEN: &str = "eve-token-without-port-forward";

pub fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

pub fn dir(path: PathBuf, mode: u32) -> PathBuf {
    std::fs::create_dir_all(&path).expect("mkdir");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

/// Everything the developer owns: a kubeconfig whose user gets its token
/// from an exec plugin that records who ran it.
pub struct Developer {
    pub home: PathBuf,
    pub kubeconfig: PathBuf,
    pub plugin_calls: PathBuf,
}

pub fn developer(base: &Path, api: SocketAddr) -> Developer {
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

pub struct World<'a> {
    pub sb: &'a Sandbox,
    pub fake: FakeCluster,
    pub dev: Developer,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub _procs: Vec<netmux_testbed::Process>,
}

impl World<'_> {
    /// `netmux ARGS` as the developer (uid/gid 65534), in the workstation.
    pub fn cli_as_user(&self, args: &[&str]) -> Output {
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
    pub fn cli_sudo(&self, args: &[&str]) -> Output {
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
    pub fn cli(&self, args: &[&str]) -> Output {
        self.sb
            .process(Side::Workstation, "netmux", bin("netmux").expect("built"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .run(T)
            .expect("run netmux")
    }

    pub fn ls(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["ls", "-o", "json"]);
        assert!(out.success(), "ls: {}{}", out.stdout, out.stderr);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("ls json");
        v["rows"].as_array().cloned().unwrap_or_default()
    }

    pub fn wait_for(&self, what: &str, mut ok: impl FnMut(&World<'_>) -> bool) {
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

    pub fn curl_web(&self) -> Output {
        curl(
            self.sb,
            Side::Workstation,
            "http://web.apps.svc.cluster.local:8080/hello",
        )
    }
}

pub fn world(sb: &Sandbox) -> World<'_> {
    world_with(sb, None)
}

/// [`world`]; with `cgroup`, the daemon uses the eBPF backend on it and
/// runs inside it, and the API server's own address is a published
/// Service (the in-cluster `kubernetes` Service reached over a VPN).
pub fn world_with<'a>(sb: &'a Sandbox, cgroup: Option<&ChildCgroup>) -> World<'a> {
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
        // The downward API's, as in manifests/base/deployment.yaml.
        .env("POD_IP", cl.to_string())
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

pub fn plugin_uids(w: &World<'_>) -> Vec<String> {
    std::fs::read_to_string(&w.dev.plugin_calls)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}
