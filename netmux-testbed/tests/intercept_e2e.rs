//! End to end: intercepts (issue 18, docs/intercept.md). A client in the
//! cluster namespace calls a Service by its ClusterIP, through the fake
//! cluster's kube-proxy and EndpointSlices
//! ([`netmux_testbed::cluster::FakeCluster`]); the real netmux-server
//! (Kubernetes runtime, RBAC) intercepts it for the real netmuxd, driven
//! by the real `netmux` CLI.
//!
//! Need root; run with `--test-threads=1` (as `cargo xtask test` does).
//! Every address used is loopback or assigned inside the test's namespaces.

use netmux_testbed::backends::Http1;
use netmux_testbed::Side;
use serde_json::Value;

mod common;
mod intercept_world;
use common::{on_failure_dump, sandbox, T};
use intercept_world::*;

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
            assert!(!out.stdout.contains("nothing answers"), "{}", out.stdout);
            // An endpoint with a token, not Kubernetes credentials: the
            // pod's environment cannot be read, and `netmux env` says why.
            let env = w.cli(&alice, &["env", "kube", "web"]);
            assert!(
                !env.success()
                    && env.stderr.contains(
                        "has no Kubernetes credentials of yours (it connects with a token)"
                    ),
                "{}",
                env.stderr
            );
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
            // Upgrades (WebSocket handshakes) are routed by the header
            // too, and the switched connection carries bytes both ways.
            for (user, by) in expect {
                let s = w.upgrade(&[("x-netmux-user", user)]);
                assert_eq!((s.status, s.by.as_str()), (101, by), "{s:?}");
                assert_eq!(s.echoed, UPGRADE_LINE, "{s:?}");
            }
            let s = w.upgrade(&[]);
            assert!(
                s.status == 101 && w.web.pod_names().contains(&s.by) && s.echoed == UPGRADE_LINE,
                "to a pod: {s:?}"
            );

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
            // Nothing listens on ALICE_TARGET: the intercept stands, and
            // the user is told.
            let out = w.cli(&alice, &["intercept", "kube", "web", "--to", ALICE_TARGET]);
            assert_ok(&out, "global intercept");
            assert!(
                out.stdout
                    .contains(&format!("note: nothing answers at {ALICE_TARGET} yet")),
                "{}",
                out.stdout
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
            let out = w.cleanup_as("alice", ALICE_TOKEN);
            assert_ok(&out, "cleanup --intercepts");
            assert!(
                out.stdout.contains("restored Service apps/web"),
                "{}",
                out.stdout
            );
            assert!(!w.intercepted() && w.netmux_slice().is_none());
            assert_eq!(w.spec_text(), before, "the spec is byte-identical");
            w.wait_for_answer("the pods again", &[], "pod");
            let out = w.cleanup_as("alice", ALICE_TOKEN);
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
                mirror
                    .paths()
                    .into_iter()
                    .filter(|p| p.starts_with("/m/"))
                    .collect()
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

#[test]
fn an_intercept_undone_under_netmux_is_diverted_again_while_it_lives() {
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
            // A `kubectl apply` of the original manifest (GitOps), and
            // netmux's slice deleted by hand.
            w.cluster.api().apply(w.web.service.clone());
            w.cluster.api().delete(
                "discovery.k8s.io/v1",
                "EndpointSlice",
                "apps",
                "netmux-icpt-web",
            );
            assert!(!w.intercepted());
            netmux_testbed::wait_until("diverted again", T, || {
                w.intercepted()
                    && w.service()["spec"].get("selector").is_none()
                    && w.netmux_slice().is_some()
            })
            .expect("diverted again");
            w.wait_for_answer("the workstation again", &[], "alice-workstation");
            assert_ok(&w.cli(&alice, &["leave", "kube", "web"]), "leave");
            netmux_testbed::wait_until("restored", T, || restored(&w)).expect("restored");
            assert_eq!(w.spec_text(), before, "the spec is byte-identical");
        }),
    );
}

#[test]
fn a_stopping_server_restores_its_intercepts_at_once() {
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
            // SIGTERM (a rolling update): the replica drains.
            let status = w.servers[0].terminate(T);
            assert!(status.is_some(), "the server exits on SIGTERM");
            assert!(restored(&w), "restored before it exited, Lease included");
            assert_eq!(w.spec_text(), before, "the spec is byte-identical");
            w.wait_for_answer("the pods again", &[], "pod");
        }),
    );
}

/// Personal intercepts of users whose daemons are connected to different
/// replicas: the replica holding the Lease routes both, forwarding bob's
/// requests to replica 1 over the replica endpoint (mutual TLS), which
/// opens the stream to bob's daemon. When the holder dies, replica 1 takes
/// the Service over for bob; `leave` restores the exact spec.
#[test]
fn personal_intercepts_of_users_on_two_replicas_each_get_only_their_requests() {
    let sb = sandbox();
    let mut w = world(&sb);
    w.start_server(0);
    w.start_server(1);
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let alice = w.daemon("alice", ALICE_TOKEN, 0, "127.77.0.0/16");
            let bob = w.daemon("bob", BOB_TOKEN, 1, "127.78.0.0/16");
            let _a = target(&sb, ALICE_TARGET, "alice-workstation");
            let _b = target(&sb, BOB_TARGET, "bob-workstation");
            let before = w.spec_text();
            let personal = |d: &Daemon, to: &str, user: &str| {
                let header = format!("x-netmux-user={user}");
                w.cli(
                    d,
                    &["intercept", "kube", "web", "--to", to, "--header", &header],
                )
            };
            assert_ok(
                &personal(&alice, ALICE_TARGET, "alice"),
                "alice on replica 0",
            );
            assert_eq!(
                w.leases()[0]["spec"]["holderIdentity"],
                "netmux-server-0/intercept"
            );
            // A global intercept through replica 1 conflicts with alice's,
            // refused naming her (the holder answers for replica 1).
            let out = w.cli(
                &bob,
                &[
                    "intercept",
                    "kube",
                    "web",
                    "--port",
                    "80",
                    "--to",
                    BOB_TARGET,
                ],
            );
            assert!(
                !out.success() && out.stderr.contains("held by alice"),
                "global refused naming alice: {}{}",
                out.stdout,
                out.stderr
            );
            assert_ok(&personal(&bob, BOB_TARGET, "bob"), "bob on replica 1");
            assert_eq!(w.leases().len(), 1, "one Lease, still replica 0's");
            assert_eq!(
                w.leases()[0]["spec"]["holderIdentity"],
                "netmux-server-0/intercept"
            );

            w.wait_for_answer(
                "bob's requests",
                &[("x-netmux-user", "bob")],
                "bob-workstation",
            );
            w.wait_for_answer(
                "alice's requests",
                &[("x-netmux-user", "alice")],
                "alice-workstation",
            );
            w.wait_for_answer("the others", &[], "pod");
            let expect = [("alice", "alice-workstation"), ("bob", "bob-workstation")];
            let h1 = mixed(&w, 600, false);
            assert_eq!(h1.len(), 600);
            assert_routed(&w, &h1, &expect);
            let h2 = mixed(&w, 600, true);
            assert_eq!(h2.len(), 600);
            assert_routed(&w, &h2, &expect);
            assert!(
                w.servers[0]
                    .log()
                    .contains("intercept added for another replica's daemon"),
                "replica 0 routes bob's intercept"
            );
            // bob's status: the holder is replica 0, with its counts.
            netmux_testbed::wait_until("bob's status with the holder's report", T, || {
                let s = w.cli(&bob, &["status", "-o", "json"]).stdout;
                let v: Value = serde_json::from_str(&s).unwrap_or_default();
                let i = &v["intercepts"][0];
                i["state"] == "held"
                    && i["holder"] == "bob through replica netmux-server-0"
                    && i["to_workstation"].as_u64().is_some_and(|n| n >= 200)
            })
            .unwrap_or_else(|e| panic!("{e}: {}", w.cli(&bob, &["status"]).stdout));

            // The holder dies: once its Lease expired, replica 1 routes
            // bob's intercept itself; alice's requests go to the pods.
            w.servers[0].kill();
            netmux_testbed::wait_until("replica 1 holds the Lease", TTL * 4, || {
                w.leases()
                    .first()
                    .is_some_and(|l| l["spec"]["holderIdentity"] == "netmux-server-1/intercept")
                    && w.intercepted()
            })
            .unwrap_or_else(|e| panic!("{e}: {}", w.servers[1].log()));
            // Replica 1 runs with `replica_port` fixed: its Lease
            // advertises that port (replica 0's was ephemeral).
            let advertised = w.leases()[0]["metadata"]["annotations"]["netmux.dev/replica-address"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(
                advertised.ends_with(&format!(":{}", intercept_world::quic_port(1) + 2)),
                "replica 1's Lease advertises its replica_port: {advertised:?}"
            );
            w.wait_for_answer(
                "bob's requests through replica 1",
                &[("x-netmux-user", "bob")],
                "bob-workstation",
            );
            w.wait_for_answer(
                "alice's requests to the pods",
                &[("x-netmux-user", "alice")],
                "pod",
            );
            let after = mixed(&w, 300, false);
            assert_routed(&w, &after, &[("bob", "bob-workstation")]);

            assert_ok(&w.cli(&bob, &["leave", "kube", "web"]), "bob leaves");
            netmux_testbed::wait_until("the Service restored", T, || restored(&w))
                .expect("restored");
            assert_eq!(w.spec_text(), before, "the spec is byte-identical");
            w.wait_for_answer("the pods again", &[("x-netmux-user", "bob")], "pod");
        }),
    );
}
