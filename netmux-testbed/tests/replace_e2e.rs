//! End to end: replace intercepts (`netmux intercept --replace`,
//! docs/intercept.md "Replace"). The workstation stands in for a workload:
//! every connection to its Service comes here and the Deployments and
//! StatefulSets running its pods are scaled to zero meanwhile (recorded on
//! the Service), then scaled back by each way an intercept ends: `leave`,
//! a daemon that dies, and `netmux cleanup --intercepts` with no server
//! left. The real netmux-server (Kubernetes runtime, RBAC), netmuxd and
//! `netmux` CLI, against the fake API server with the real kube client.
//!
//! Need root; run with `--test-threads=1` (as `cargo xtask test` does).
//! Every address used is loopback or assigned inside the test's namespaces.

use serde_json::{json, Value};

mod common;
mod intercept_world;
use common::{on_failure_dump, sandbox, T};
use intercept_world::*;

const REPLACED: &str = "netmux.dev/intercept-replaced";

/// A workload of `kind` named `name` in `apps` whose pod template carries
/// `labels`, at `replicas`.
fn workload(kind: &str, name: &str, labels: Value, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": kind,
        "metadata": {"name": name, "namespace": "apps"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "web:1"}]},
            },
        },
    })
}

fn replicas(w: &World<'_>, collection: &str, name: &str) -> i64 {
    w.cluster
        .api()
        .get(collection, "apps", name)
        .and_then(|o| o["spec"]["replicas"].as_i64())
        .unwrap_or_else(|| panic!("{collection} apps/{name} has no replica count"))
}

const DEPLOYMENTS: &str = "apps/deployments";
const STATEFULSETS: &str = "apps/statefulsets";

/// The counts of web (Deployment), web-legacy (StatefulSet) and the
/// unrelated worker (Deployment).
fn counts(w: &World<'_>) -> (i64, i64, i64) {
    (
        replicas(w, DEPLOYMENTS, "web"),
        replicas(w, STATEFULSETS, "web-legacy"),
        replicas(w, DEPLOYMENTS, "worker"),
    )
}

fn replace(w: &World<'_>, d: &Daemon) -> netmux_testbed::Output {
    w.cli(
        d,
        &[
            "intercept",
            "kube",
            "web",
            "--to",
            ALICE_TARGET,
            "--replace",
        ],
    )
}

#[test]
fn a_replace_intercept_stops_the_workload_and_every_way_out_starts_it_again() {
    let sb = sandbox();
    let mut w = world(&sb);
    w.start_server(0);
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let api = w.cluster.api();
            let mut alice = w.daemon("alice", ALICE_TOKEN, 0, "127.77.0.0/16");
            let bob = w.daemon("bob", BOB_TOKEN, 0, "127.78.0.0/16");
            let _target = target(&sb, ALICE_TARGET, "alice-workstation");
            let before = w.spec_text();

            // Nothing runs web's pods that netmux could scale: refused,
            // nothing touched.
            let out = replace(&w, &alice);
            assert!(
                !out.success()
                    && out.stderr.contains(
                        "no Deployment or StatefulSet in namespace apps runs the pods of Service apps/web (selector app=web)"
                    )
                    && out.stderr.contains("fix: intercept without --replace"),
                "{}{}",
                out.stdout,
                out.stderr
            );
            assert!(!w.intercepted());

            api.apply(workload("Deployment", "web", json!({"app": "web"}), 2));
            api.apply(workload(
                "StatefulSet",
                "web-legacy",
                json!({"app": "web", "tier": "legacy"}),
                1,
            ));
            api.apply(workload(
                "Deployment",
                "worker",
                json!({"app": "worker"}),
                3,
            ));
            for user in ["alice", "bob"] {
                api.allow(user, "patch", "apps/deployments/scale", "apps", "web");
            }
            api.allow("alice", "patch", "apps/statefulsets/scale", "apps", "*");

            // bob may intercept and scale the Deployment, not the
            // StatefulSet: refused with the ClusterRole to bind.
            let out = replace(&w, &bob);
            assert!(
                !out.success()
                    && out
                        .stderr
                        .contains("bob may not stop StatefulSet apps/web-legacy")
                    && out.stderr.contains("ClusterRole netmux-replace"),
                "{}{}",
                out.stdout,
                out.stderr
            );
            assert!(!w.intercepted());
            assert_eq!(counts(&w), (2, 1, 3), "nothing scaled for a refusal");

            // alice replaces the workload.
            let out = replace(&w, &alice);
            assert_ok(&out, "intercept --replace");
            assert!(
                out.stdout.contains("(replace)")
                    && out.stdout.contains("scaled to zero until then"),
                "{}",
                out.stdout
            );
            let record = w.service()["metadata"]["annotations"][REPLACED].clone();
            let record: Value = serde_json::from_str(record.as_str().unwrap_or_default())
                .unwrap_or_else(|e| panic!("the record on the Service: {e}: {record}"));
            assert_eq!(
                record,
                json!([
                    {"kind": "Deployment", "name": "web", "replicas": 2},
                    {"kind": "StatefulSet", "name": "web-legacy", "replicas": 1},
                ])
            );
            assert_eq!(counts(&w), (0, 0, 3), "web's workloads stopped, worker not");
            w.wait_for_answer("the workstation", &[], "alice-workstation");
            let answers = w.fresh_requests(20, &[]);
            assert!(
                answers.iter().all(|a| a == "alice-workstation"),
                "every connection reaches the workstation: {answers:?}"
            );
            let status = w.cli(&alice, &["status", "-o", "json"]).stdout;
            let v: Value = serde_json::from_str(&status).unwrap_or_default();
            assert_eq!(v["intercepts"][0]["mode"], "replace", "{status}");
            // Nobody else may intercept a replaced Service, on any port.
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
            assert!(
                !out.success() && out.stderr.contains("held by alice (replace intercept"),
                "{}{}",
                out.stdout,
                out.stderr
            );

            // leave: the counts back, the spec byte-identical.
            assert_ok(&w.cli(&alice, &["leave", "kube", "web"]), "leave");
            netmux_testbed::wait_until("the Service restored", T, || restored(&w))
                .expect("restored");
            assert_eq!(counts(&w), (2, 1, 3), "scaled back on leave");
            assert_eq!(w.spec_text(), before, "the spec is byte-identical");
            assert!(w.service()["metadata"]["annotations"]
                .get(REPLACED)
                .is_none());
            w.wait_for_answer("the pods again", &[], "pod");

            // Again; someone scales the StatefulSet meanwhile, and the
            // daemon dies: the Deployment comes back to its count, the
            // StatefulSet keeps the one set since.
            assert_ok(&replace(&w, &alice), "intercept --replace again");
            assert_eq!(counts(&w), (0, 0, 3));
            let mut legacy = api
                .get(STATEFULSETS, "apps", "web-legacy")
                .expect("web-legacy");
            legacy["spec"]["replicas"] = json!(4);
            api.apply(legacy);
            alice.process.kill();
            netmux_testbed::wait_until("the Service restored", TTL, || restored(&w))
                .expect("restored within the lease TTL");
            assert_eq!(counts(&w), (2, 4, 3), "a count set since stands");
            assert_eq!(w.spec_text(), before);
            let log = w.servers[0].log();
            assert!(
                log.contains("workload scaled back") && log.contains("left at its count"),
                "the server says what it did"
            );
        }),
    );
}

/// web (2 replicas, behind the Service) replaced and worker (3, no
/// Service) stopped by alice, who may scale every Deployment of apps; her
/// daemon and workstation target.
fn both_stopped(w: &World<'_>) -> (Daemon, netmux_testbed::backends::Standalone) {
    let api = w.cluster.api();
    api.apply(workload("Deployment", "web", json!({"app": "web"}), 2));
    api.apply(workload(
        "Deployment",
        "worker",
        json!({"app": "worker"}),
        3,
    ));
    api.allow("alice", "patch", "apps/deployments/scale", "apps", "*");
    let alice = w.daemon("alice", ALICE_TOKEN, 0, "127.77.0.0/16");
    let target = target(w.sb, ALICE_TARGET, "alice-workstation");
    assert_ok(&replace(w, &alice), "replace web");
    assert_ok(&stop(w, &alice), "stop worker");
    assert_eq!(
        (replicas(w, DEPLOYMENTS, "web"), worker(w)),
        (0, 0),
        "both stopped"
    );
    (alice, target)
}

#[test]
fn netmux_cleanup_starts_a_replaced_workload_again_when_no_server_is_left() {
    let sb = sandbox();
    let mut w = world(&sb);
    w.start_server(0);
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let before = w.spec_text();
            let (_alice, _target) = both_stopped(&w);
            w.wait_for_answer("the workstation", &[], "alice-workstation");
            // Every netmux pod is gone.
            w.servers[0].kill();
            let out = w.cleanup_as("alice", ALICE_TOKEN);
            assert_ok(&out, "cleanup --intercepts");
            assert!(
                out.stdout.contains("restored Service apps/web")
                    && out.stdout.contains("Deployment apps/web scaled back to 2")
                    && out.stdout.contains(
                        "stopped workload apps/Deployment/worker: Deployment apps/worker scaled back to 3"
                    ),
                "{}",
                out.stdout
            );
            assert_eq!(replicas(&w, DEPLOYMENTS, "web"), 2);
            assert_eq!(worker(&w), 3);
            assert!(restored_but_the_lease(&w));
            assert_eq!(w.spec_text(), before, "the spec is byte-identical");
        }),
    );
}

/// The Service as before (the Lease of a killed server expires by itself).
fn restored_but_the_lease(w: &World<'_>) -> bool {
    !w.intercepted()
        && w.netmux_slice().is_none()
        && w.service()["metadata"]["annotations"]
            .get(REPLACED)
            .is_none()
}

fn stop_lease(w: &World<'_>) -> Option<Value> {
    w.cluster
        .api()
        .objects("coordination.k8s.io/leases")
        .into_iter()
        .find(|l| {
            l["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("netmux-stop"))
        })
}

fn worker(w: &World<'_>) -> i64 {
    replicas(w, DEPLOYMENTS, "worker")
}

fn stop(w: &World<'_>, d: &Daemon) -> netmux_testbed::Output {
    w.cli(d, &["intercept", "kube", "apps/deploy/worker", "--replace"])
}

/// A queue worker has no Service: `intercept EP NS/deploy/NAME --replace`
/// stops it under a Lease of its own, keeps it stopped while held (a
/// scale-up meanwhile is undone), and starts it again on leave, when its
/// command exits, when the daemon dies, and by the other replica's sweep
/// when the holding replica dies.
#[test]
fn a_workload_no_service_fronts_is_stopped_while_held_and_started_again_every_way() {
    let sb = sandbox();
    let mut w = world(&sb);
    w.start_server(0);
    w.start_server(1);
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let api = w.cluster.api();
            api.apply(workload(
                "Deployment",
                "worker",
                json!({"app": "worker"}),
                3,
            ));
            for user in ["alice", "bob"] {
                api.allow(user, "patch", "apps/deployments/scale", "apps", "worker");
            }
            let mut alice = w.daemon("alice", ALICE_TOKEN, 0, "127.77.0.0/16");
            let bob = w.daemon("bob", BOB_TOKEN, 0, "127.78.0.0/16");

            // Only in a namespace the server serves.
            let out = w.cli(
                &alice,
                &[
                    "intercept",
                    "kube",
                    "kube-system/deploy/coredns",
                    "--replace",
                ],
            );
            assert!(
                !out.success()
                    && out
                        .stderr
                        .contains("namespace kube-system has no Service this server serves"),
                "{}",
                out.stderr
            );
            // A workload takes no --to (no Service, no traffic).
            let out = w.cli(
                &alice,
                &[
                    "intercept",
                    "kube",
                    "apps/deploy/worker",
                    "--to",
                    ALICE_TARGET,
                    "--replace",
                ],
            );
            assert!(
                !out.success() && out.stderr.contains("no connection would come to --to"),
                "{}",
                out.stderr
            );

            let out = stop(&w, &alice);
            assert_ok(&out, "stop worker");
            assert!(
                out.stdout.contains("stopped apps/Deployment/worker"),
                "{}",
                out.stdout
            );
            assert_eq!(worker(&w), 0);
            let lease = stop_lease(&w).expect("a stop Lease");
            assert_eq!(
                lease["metadata"]["annotations"]["netmux.dev/replicas"], "3",
                "{lease}"
            );
            let status = w.cli(&alice, &["status", "-o", "json"]).stdout;
            let v: Value = serde_json::from_str(&status).unwrap_or_default();
            let i = &v["intercepts"][0];
            assert!(
                i["service"] == "apps/Deployment/worker"
                    && i["mode"] == "replace"
                    && i["state"] == "held",
                "{status}"
            );
            // The holder as the server reports it (about once a second).
            netmux_testbed::wait_until("ls with the server's report", T, || {
                let ls = w.cli(&alice, &["ls"]).stdout;
                ls.contains("apps/Deployment/worker")
                    && ls.contains("replace: stopped (scaled to zero); holder alice through replica netmux-server-0")
            })
            .unwrap_or_else(|e| panic!("{e}: {}", w.cli(&alice, &["ls"]).stdout));
            let status = w.cli(&alice, &["status"]).stdout;
            assert!(
                status.contains(
                    "stopped apps/Deployment/worker on kube (replace: scaled to zero), held"
                ),
                "{status}"
            );
            // Someone else may not take it meanwhile.
            let out = stop(&w, &bob);
            assert!(
                !out.success() && out.stderr.contains("is stopped by alice"),
                "{}",
                out.stderr
            );
            // Scaled up under netmux: stopped again at the next renewal.
            let mut d = api.get(DEPLOYMENTS, "apps", "worker").expect("worker");
            d["spec"]["replicas"] = json!(2);
            api.apply(d);
            netmux_testbed::wait_until("stopped again", TTL, || worker(&w) == 0)
                .expect("the renewal stops it again");

            // leave: started again, the Lease gone.
            let out = w.cli(&alice, &["leave", "kube", "apps/deploy/worker"]);
            assert_ok(&out, "leave");
            netmux_testbed::wait_until("started again", T, || {
                worker(&w) == 3 && stop_lease(&w).is_none()
            })
            .expect("started again on leave");

            // Around a command: stopped while it runs, started after.
            let script = "true";
            let out = w.cli(
                &alice,
                &[
                    "intercept",
                    "kube",
                    "deploy/worker",
                    "--replace",
                    "--",
                    "sh",
                    "-c",
                    script,
                ],
            );
            // The token endpoint has no kubeconfig context: the namespace
            // must be named.
            assert!(
                !out.success() && out.stderr.contains("name its namespace"),
                "{}{}",
                out.stdout,
                out.stderr
            );
            let script = "echo ran";
            let out = w.cli(
                &alice,
                &[
                    "intercept",
                    "kube",
                    "apps/deploy/worker",
                    "--replace",
                    "--",
                    "sh",
                    "-c",
                    script,
                ],
            );
            assert!(out.stdout.contains("ran"), "{}{}", out.stdout, out.stderr);
            netmux_testbed::wait_until("started after the command", T, || worker(&w) == 3)
                .expect("started again after the command");

            // The daemon dies: started again within the TTL.
            assert_ok(&stop(&w, &alice), "stop again");
            assert_eq!(worker(&w), 0);
            alice.process.kill();
            netmux_testbed::wait_until("started after the daemon died", TTL, || {
                worker(&w) == 3 && stop_lease(&w).is_none()
            })
            .expect("started again within the TTL");

            // The holding replica dies: the other one's sweep starts it.
            let carol = w.daemon("alice2", ALICE_TOKEN, 0, "127.79.0.0/16");
            assert_ok(&stop(&w, &carol), "stop through replica 0");
            assert_eq!(worker(&w), 0);
            w.servers[0].kill();
            netmux_testbed::wait_until("started by replica 1", TTL * 3, || {
                worker(&w) == 3 && stop_lease(&w).is_none()
            })
            .expect("started again by the other replica's sweep");
            assert!(
                w.servers[1]
                    .log()
                    .contains("stop Lease expired; starting the workload again"),
                "replica 1 did it"
            );
        }),
    );
}

/// A replica stopped by SIGTERM (a rolling update) starts what it stopped
/// before it exits: a Service's replaced workload and a workload stopped on
/// its own.
#[test]
fn a_draining_server_starts_what_it_stopped_before_it_exits() {
    let sb = sandbox();
    let mut w = world(&sb);
    w.start_server(0);
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let (_alice, _target) = both_stopped(&w);
            let status = w.servers[0].terminate(T);
            assert!(status.is_some(), "the server exits on SIGTERM");
            assert_eq!(
                (replicas(&w, DEPLOYMENTS, "web"), worker(&w)),
                (2, 3),
                "both started before it exited"
            );
            assert!(stop_lease(&w).is_none() && restored(&w));
        }),
    );
}
