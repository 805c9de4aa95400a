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
use std::time::Duration;

use netmux_fakekube::{pod, service};
use netmux_testbed::cgroup::ChildCgroup;
use netmux_testbed::Side;
use serde_json::json;

mod common;
mod kube_world;
use common::{ip, nx_echo, on_failure_dump, sandbox, T};
use kube_world::*;

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

/// `netmux doctor`, as the developer, asks the API server by a
/// SelfSubjectAccessReview whether their kubeconfig's user may intercept
/// in its context's namespace: the missing verb and the Role to bind are
/// named while RBAC lacks it, and the check passes once it is granted.
#[test]
fn doctor_names_the_missing_intercept_permission_and_passes_once_granted() {
    let sb = sandbox();
    let w = world(&sb);
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let check = |w: &World<'_>| {
                let out = w.cli_as_user(&["doctor", "--json"]);
                let checks: serde_json::Value = serde_json::from_str(&out.stdout)
                    .unwrap_or_else(|e| panic!("doctor json: {e}: {}{}", out.stdout, out.stderr));
                checks
                    .as_array()
                    .and_then(|a| a.iter().find(|c| c["name"] == "intercept rights kube"))
                    .cloned()
                    .unwrap_or_else(|| panic!("no intercept rights check: {checks}"))
            };
            let reviews = |w: &World<'_>| {
                w.fake
                    .api()
                    .requests()
                    .iter()
                    .filter(|(m, p)| m == "POST" && p.contains("selfsubjectaccessreviews"))
                    .count()
            };
            // alice (the context `dev`, namespace apps) may reach web but
            // not intercept.
            let denied = check(&w);
            let text = denied.to_string();
            assert_eq!(denied["status"], "warn", "{denied}");
            assert!(
                text.contains("namespace apps")
                    && text.contains("`intercept`")
                    && text.contains("netmux-user"),
                "names the verb, the namespace and the Role: {denied}"
            );
            assert!(reviews(&w) >= 1, "asked the API server");

            w.fake
                .api()
                .allow("alice", "intercept", "/services", "apps", "*");
            let granted = check(&w);
            assert_eq!(granted["status"], "pass", "{granted}");
            assert!(granted.to_string().contains("namespace apps"), "{granted}");
            // --replace, optional, is said of too: refused until alice may
            // patch Deployments' scale there.
            assert!(
                granted.to_string().contains("--replace would be refused")
                    && granted.to_string().contains("netmux-replace"),
                "{granted}"
            );
            w.fake
                .api()
                .allow("alice", "patch", "apps/deployments/scale", "apps", "*");
            let replace = check(&w);
            assert!(
                replace
                    .to_string()
                    .contains("stop their Deployments with --replace"),
                "{replace}"
            );

            // A Role limited to one Service does not grant the namespace.
            w.fake
                .api()
                .revoke("alice", "intercept", "/services", "apps", "*");
            w.fake
                .api()
                .allow("alice", "intercept", "/services", "apps", "web");
            assert_eq!(check(&w)["status"], "warn");
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
