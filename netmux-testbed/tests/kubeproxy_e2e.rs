//! The fake cluster's Service path (issue 18, "How it is shown"): a client
//! in the cluster namespace that runs `curl http://CLUSTER-IP` goes through
//! the Service as in a cluster. The EndpointSlice controller lists the
//! ready pods the selector picks, the kube-proxy sends each connection to
//! the next of them, and when the Service's endpoints are rewritten (its
//! selector removed, a slice `managed-by: netmux` written, as an intercept
//! does) the next connection follows, and follows back on restore.
//!
//! Needs root and curl (with HTTP/2); run with `--test-threads=1`.

use std::collections::BTreeSet;

use netmux_fakekube::MANAGED_BY_CONTROLLER;
use netmux_testbed::backends::{H2c, Http1};
use netmux_testbed::cluster::{AppSpec, FakeCluster};
use netmux_testbed::{prereq, Output, Sandbox, Side};
use serde_json::{json, Value};

mod common;
use common::{ip, on_failure_dump, sandbox, T};

fn require(test: &str) -> bool {
    prereq::require(
        test,
        prereq::first([prereq::root(), prereq::tools(&["curl", "ip"])]),
    )
}

/// `curl ARGS URL` in the cluster namespace.
fn curl(sb: &Sandbox, args: &[&str], url: &str) -> Output {
    sb.process(Side::Cluster, "curl", "curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .arg(url)
        .run(T)
        .expect("running curl")
}

/// The pod that answered `curl URL` (its body), failing on an error.
fn served_by(sb: &Sandbox, args: &[&str], url: &str) -> String {
    let out = curl(sb, args, url);
    assert!(
        out.success(),
        "curl {args:?} {url}: {}{}",
        out.stderr,
        out.stdout
    );
    out.stdout
}

/// Who answered `n` curls in a row.
fn series(sb: &Sandbox, url: &str, n: usize) -> Vec<String> {
    (0..n).map(|_| served_by(sb, &[], url)).collect()
}

fn web_slices(cluster: &FakeCluster) -> Vec<Value> {
    cluster
        .api()
        .objects("discovery.k8s.io/endpointslices")
        .into_iter()
        .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "web")
        .collect()
}

fn managers(slices: &[Value]) -> BTreeSet<String> {
    slices
        .iter()
        .filter_map(|s| {
            s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[test]
fn a_cluster_ip_reaches_ready_pods_round_robin_and_follows_rewritten_endpoints() {
    if !require("kubeproxy_e2e::round_robin_and_rewrites") {
        return;
    }
    let sb = sandbox();
    let cluster = FakeCluster::start(&sb).expect("starting the fake cluster");
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let web = cluster
                .deploy(&AppSpec::new("apps", "web", ip("10.96.0.20"), 80, 8080, 2))
                .expect("deploying web");
            let url = web.url("/hello");

            // Round-robin over both ready pods, one connection each.
            let seen = series(&sb, &url, 4);
            assert_ne!(seen[0], seen[1], "two pods take turns: {seen:?}");
            assert_eq!((&seen[0], &seen[1]), (&seen[2], &seen[3]), "{seen:?}");
            let pods: BTreeSet<String> = seen.iter().cloned().collect();
            assert_eq!(pods, web.pod_names().into_iter().collect());
            for pod in web.pod_names() {
                assert_eq!(cluster.requests(&pod), 2, "{:?}", cluster.counts());
            }

            // h2c with prior knowledge goes the same path.
            let h2 = served_by(&sb, &["--http2-prior-knowledge"], &url);
            assert!(pods.contains(&h2), "{h2}");
            assert_eq!(cluster.counts()[&h2].h2, 1);

            // The decision is per connection: keep-alive stays on one pod,
            // HTTP/2 streams too, gRPC included.
            let addr = web.addr();
            let (h1_pods, h2_pods) = sb
                .cluster()
                .block_on(|| async move {
                    let mut h1 = Http1::connect(addr).await.expect("HTTP/1.1 connection");
                    let mut h1_pods = BTreeSet::new();
                    for _ in 0..5 {
                        h1_pods.insert(h1.get("/", &[]).await.expect("GET").body);
                    }
                    let h2 = H2c::connect(addr).await.expect("h2c connection");
                    let mut h2_pods = BTreeSet::new();
                    for _ in 0..5 {
                        let r = h2.grpc("/echo.Echo/Say", &[], b"hi").await.expect("gRPC");
                        assert_eq!(r.grpc_status.as_deref(), Some("0"));
                        h2_pods.insert(String::from_utf8_lossy(&r.message).into_owned());
                    }
                    (h1_pods, h2_pods)
                })
                .expect("clients in the cluster namespace");
            assert_eq!(h1_pods.len(), 1, "{h1_pods:?}");
            assert_eq!(h2_pods.len(), 1, "{h2_pods:?}");

            // A pod that is not ready gets no new connection.
            cluster
                .set_pod_ready("apps", "web-0", false)
                .expect("web-0 not ready");
            assert_eq!(series(&sb, &url, 3), vec!["web-1"; 3]);
            cluster
                .set_pod_ready("apps", "web-0", true)
                .expect("web-0 ready");

            // What an intercept does at the Service: the selector goes (the
            // controller deletes its slices), a slice managed by netmux
            // points elsewhere. The next connections go there.
            let stand_in = cluster
                .add_pod(
                    "apps",
                    "stand-in",
                    &[("role", "stand-in")],
                    &[("http", 9000)],
                )
                .expect("stand-in backend");
            let original = cluster.api().get("/services", "apps", "web").expect("web");
            let mut selectorless = original.clone();
            if let Some(spec) = selectorless["spec"].as_object_mut() {
                spec.remove("selector");
            }
            cluster.api().apply(selectorless);
            assert!(
                web_slices(&cluster).is_empty(),
                "the controller's slices go with the selector: {:?}",
                web_slices(&cluster)
            );
            let refused = curl(&sb, &[], &url);
            assert!(!refused.success(), "no endpoint: {}", refused.stdout);
            cluster.api().apply(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "web-netmux", "namespace": "apps",
                             "labels": {"kubernetes.io/service-name": "web",
                                        "endpointslice.kubernetes.io/managed-by": "netmux"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [stand_in.ip.to_string()],
                               "conditions": {"ready": true}}],
                "ports": [{"name": "http", "port": 9000, "protocol": "TCP"}],
            }));
            assert_eq!(series(&sb, &url, 3), vec!["stand-in"; 3]);
            // Pods changing meanwhile do not pull traffic back.
            cluster
                .add_pod("apps", "web-9", &[("app", "web")], &[("http", 8080)])
                .expect("another web pod");
            assert_eq!(
                managers(&web_slices(&cluster)),
                ["netmux".to_owned()].into()
            );
            assert_eq!(served_by(&sb, &[], &url), "stand-in");

            // Restore: the selector is back, netmux's slice goes; the next
            // connections reach the pods again, web-9 included.
            let mut restored = original.clone();
            if let Some(meta) = restored["metadata"].as_object_mut() {
                meta.remove("resourceVersion");
            }
            cluster.api().apply(restored);
            cluster
                .api()
                .delete("discovery.k8s.io/v1", "EndpointSlice", "apps", "web-netmux");
            assert_eq!(
                managers(&web_slices(&cluster)),
                [MANAGED_BY_CONTROLLER.to_owned()].into()
            );
            let back: BTreeSet<String> = series(&sb, &url, 6).into_iter().collect();
            let want: BTreeSet<String> = ["web-0", "web-1", "web-9"].map(String::from).into();
            assert_eq!(back, want);
            assert_eq!(cluster.requests("stand-in"), 4);
        }),
    );
}

#[test]
fn a_crashed_endpoint_resets_and_a_deleted_pod_leaves_the_rotation() {
    if !require("kubeproxy_e2e::crash_and_delete") {
        return;
    }
    let sb = sandbox();
    let cluster = FakeCluster::start(&sb).expect("starting the fake cluster");
    on_failure_dump(
        &sb,
        std::panic::AssertUnwindSafe(|| {
            let api = cluster
                .deploy(&AppSpec::new("apps", "api", ip("10.96.0.30"), 8080, 80, 2))
                .expect("deploying api");
            let url = api.url("/");
            // Crashed but still listed: the connections sent to it fail,
            // the others still work.
            cluster.crash_pod("apps", "api-0").expect("crash api-0");
            let outcomes: Vec<Result<String, String>> = (0..4)
                .map(|_| {
                    let out = curl(&sb, &[], &url);
                    if out.success() {
                        Ok(out.stdout)
                    } else {
                        Err(out.stderr)
                    }
                })
                .collect();
            let ok: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
            assert_eq!(ok, vec!["api-1", "api-1"], "{outcomes:?}");
            assert_eq!(cluster.requests("api-0"), 0);
            // Deleted: out of the slices, every connection works again.
            cluster.delete_pod("apps", "api-0").expect("delete api-0");
            assert_eq!(series(&sb, &url, 3), vec!["api-1"; 3]);
        }),
    );
}

#[test]
fn a_standalone_backend_serves_inside_its_namespace_until_stopped() {
    if !require("kubeproxy_e2e::standalone") {
        return;
    }
    let sb = sandbox();
    let mut target = netmux_testbed::backends::Standalone::start(
        sb.ws(),
        "127.0.0.1:0".parse().expect("addr"),
        "workstation",
    )
    .expect("a backend in the workstation namespace");
    let url = format!("http://{}/x", target.addr());
    let ws_curl = |args: &[&str]| {
        sb.process(Side::Workstation, "curl", "curl")
            .args(["-sS", "--max-time", "10"])
            .args(args)
            .arg(&url)
            .run(T)
            .expect("running curl")
    };
    let out = ws_curl(&[]);
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "workstation");
    let out = ws_curl(&["--http2-prior-knowledge"]);
    assert_eq!(out.stdout, "workstation", "{}", out.stderr);
    assert_eq!(target.counts().http1, 1);
    assert_eq!(target.counts().h2, 1);
    // Only in its namespace: the cluster side's loopback has nothing there.
    assert!(!curl(&sb, &[], &url).success());
    target.stop();
    assert!(!ws_curl(&[]).success(), "stopped: refused");
    assert_eq!(target.requests(), 2);
}
