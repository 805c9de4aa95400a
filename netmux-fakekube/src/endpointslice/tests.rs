//! The EndpointSlice controller: the pure reconcile, then through the
//! fake API (writes, watch events).

use serde_json::{json, Value};

use super::{reconcile, Write, MANAGED_BY, MANAGED_BY_CONTROLLER, SERVICE_NAME, SLICES};
use crate::{app_pod, FakeApi};

fn web_service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "apps", "uid": "svc-uid", "labels": {"team": "a"}},
        "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                           {"name": "metrics", "port": 9090, "targetPort": 9100}]},
    })
}

fn web_pod(name: &str, ip: &str, http_port: u16) -> Value {
    let mut p = app_pod(
        "apps",
        name,
        json!({"app": "web"}),
        ip,
        &[("http", http_port)],
    );
    p["metadata"]["uid"] = json!(format!("uid-{name}"));
    p
}

fn puts(writes: &[Write]) -> Vec<Value> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Put(v) => Some(v.clone()),
            Write::Delete(_) => None,
        })
        .collect()
}

fn deletes(writes: &[Write]) -> Vec<String> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Delete(n) => Some(n.clone()),
            Write::Put(_) => None,
        })
        .collect()
}

fn addresses(slice: &Value) -> Vec<(String, bool)> {
    slice["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["addresses"][0].as_str().unwrap_or_default().to_owned(),
                e["conditions"]["ready"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[test]
fn selected_pods_become_one_slice_with_resolved_ports_and_readiness() {
    let svc = web_service();
    let ready = web_pod("web-0", "10.244.0.10", 8080);
    let mut unready = web_pod("web-1", "10.244.0.11", 8080);
    unready["status"]["conditions"][0]["status"] = json!("False");
    let other = app_pod(
        "apps",
        "db-0",
        json!({"app": "db"}),
        "10.244.0.12",
        &[("http", 8080)],
    );
    let mut pending = web_pod("web-2", "10.244.0.13", 8080);
    pending["status"]
        .as_object_mut()
        .expect("status")
        .remove("podIP");
    let mut done = web_pod("web-3", "10.244.0.14", 8080);
    done["status"]["phase"] = json!("Succeeded");
    let pods = [&unready, &ready, &other, &pending, &done];
    let writes = reconcile("apps", &[&svc], &pods, &[], 7);
    let slices = puts(&writes);
    assert_eq!(slices.len(), 1, "{writes:?}");
    let s = &slices[0];
    assert_eq!(
        addresses(s),
        vec![("10.244.0.10".into(), true), ("10.244.0.11".into(), false)]
    );
    assert_eq!(
        s["ports"],
        json!([{"name": "http", "port": 8080, "protocol": "TCP"},
               {"name": "metrics", "port": 9100, "protocol": "TCP"}])
    );
    assert_eq!(s["addressType"], "IPv4");
    let labels = &s["metadata"]["labels"];
    assert_eq!(labels[SERVICE_NAME], "web");
    assert_eq!(labels[MANAGED_BY], MANAGED_BY_CONTROLLER);
    assert_eq!(labels["team"], "a", "the Service's labels are copied");
    assert_eq!(s["metadata"]["ownerReferences"][0]["uid"], "svc-uid");
    assert_eq!(s["endpoints"][0]["targetRef"]["name"], "web-0");
    let name = s["metadata"]["name"].as_str().expect("a name");
    assert!(
        name.starts_with("web-") && name.len() == "web-".len() + 5,
        "{name}"
    );
}

#[test]
fn pods_serving_a_named_port_on_different_numbers_get_one_slice_each() {
    let svc = web_service();
    let a = web_pod("web-0", "10.244.0.10", 8080);
    let b = web_pod("web-1", "10.244.0.11", 8081);
    let slices = puts(&reconcile("apps", &[&svc], &[&a, &b], &[], 1));
    assert_eq!(slices.len(), 2);
    let mut seen: Vec<(u64, Vec<(String, bool)>)> = slices
        .iter()
        .map(|s| (s["ports"][0]["port"].as_u64().unwrap_or(0), addresses(s)))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (8080, vec![("10.244.0.10".into(), true)]),
            (8081, vec![("10.244.0.11".into(), true)])
        ]
    );
    assert_ne!(slices[0]["metadata"]["name"], slices[1]["metadata"]["name"]);
}

#[test]
fn a_pod_without_the_named_port_is_listed_without_it() {
    let svc = web_service();
    let p = app_pod(
        "apps",
        "web-0",
        json!({"app": "web"}),
        "10.244.0.10",
        &[("other", 1)],
    );
    let slices = puts(&reconcile("apps", &[&svc], &[&p], &[], 1));
    assert_eq!(
        slices[0]["ports"],
        json!([{"name": "metrics", "port": 9100, "protocol": "TCP"}])
    );
}

#[test]
fn a_service_selecting_nothing_keeps_an_empty_slice() {
    let svc = web_service();
    let slices = puts(&reconcile("apps", &[&svc], &[], &[], 1));
    assert_eq!(slices.len(), 1);
    assert_eq!(slices[0]["endpoints"], json!([]));
    assert_eq!(slices[0]["ports"], json!([]));
}

#[test]
fn an_unchanged_world_needs_no_write_and_a_change_rewrites_in_place() {
    let svc = web_service();
    let a = web_pod("web-0", "10.244.0.10", 8080);
    let first = puts(&reconcile("apps", &[&svc], &[&a], &[], 1));
    let refs: Vec<&Value> = first.iter().collect();
    assert_eq!(reconcile("apps", &[&svc], &[&a], &refs, 2), vec![]);
    let b = web_pod("web-1", "10.244.0.11", 8080);
    let again = reconcile("apps", &[&svc], &[&a, &b], &refs, 3);
    let p = puts(&again);
    assert_eq!(p.len(), 1, "{again:?}");
    assert_eq!(p[0]["metadata"]["name"], first[0]["metadata"]["name"]);
    assert_eq!(addresses(&p[0]).len(), 2);
    assert!(deletes(&again).is_empty());
}

#[test]
fn removing_the_selector_deletes_only_the_controllers_slices() {
    let mut svc = web_service();
    let a = web_pod("web-0", "10.244.0.10", 8080);
    let ours = puts(&reconcile("apps", &[&svc], &[&a], &[], 1));
    let mut netmux = ours[0].clone();
    netmux["metadata"]["name"] = json!("web-netmux");
    netmux["metadata"]["labels"][MANAGED_BY] = json!("netmux");
    svc["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("selector");
    let writes = reconcile("apps", &[&svc], &[&a], &[&ours[0], &netmux], 2);
    assert_eq!(
        deletes(&writes),
        vec![ours[0]["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()]
    );
    assert!(puts(&writes).is_empty(), "{writes:?}");
    // A deleted Service loses its slices the same way.
    let writes = reconcile("apps", &[], &[&a], &[&ours[0], &netmux], 2);
    assert_eq!(deletes(&writes).len(), 1);
}

#[test]
fn new_names_never_collide_with_other_managers_slices() {
    let svc = web_service();
    // Every name the first seed would give is taken by someone else.
    let first = puts(&reconcile("apps", &[&svc], &[], &[], 5));
    let mut squatter = first[0].clone();
    squatter["metadata"]["labels"][MANAGED_BY] = json!("someone-else");
    let again = puts(&reconcile("apps", &[&svc], &[], &[&squatter], 5));
    assert_ne!(again[0]["metadata"]["name"], squatter["metadata"]["name"]);
}

async fn slices_of(fake: &FakeApi, svc: &str) -> Vec<Value> {
    fake.objects(SLICES)
        .into_iter()
        .filter(|s| s["metadata"]["labels"][SERVICE_NAME] == svc)
        .collect()
}

fn ready_ips(slices: &[Value]) -> Vec<String> {
    let mut ips: Vec<String> = slices
        .iter()
        .flat_map(addresses)
        .filter(|(_, ready)| *ready)
        .map(|(ip, _)| ip)
        .collect();
    ips.sort();
    ips
}

#[tokio::test]
async fn the_fake_api_keeps_slices_in_line_with_services_and_pods() {
    let fake = FakeApi::start().await;
    // Before the controller runs, hand-written slices are left alone.
    fake.apply(web_service());
    assert!(slices_of(&fake, "web").await.is_empty());
    fake.apply(web_pod("web-0", "10.244.0.10", 8080));
    fake.run_endpoint_controller();
    assert_eq!(ready_ips(&slices_of(&fake, "web").await), ["10.244.0.10"]);

    fake.apply(web_pod("web-1", "10.244.0.11", 8080));
    assert_eq!(
        ready_ips(&slices_of(&fake, "web").await),
        ["10.244.0.10", "10.244.0.11"]
    );
    // Not ready: listed, not ready.
    let mut down = web_pod("web-0", "10.244.0.10", 8080);
    down["status"]["conditions"][0]["status"] = json!("False");
    fake.apply(down);
    let s = slices_of(&fake, "web").await;
    assert_eq!(ready_ips(&s), ["10.244.0.11"]);
    assert_eq!(s.iter().flat_map(addresses).count(), 2);
    fake.delete("v1", "Pod", "apps", "web-1");
    assert!(ready_ips(&slices_of(&fake, "web").await).is_empty());

    // Someone deletes the controller's slice: it comes back.
    let name = slices_of(&fake, "web").await[0]["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    fake.delete("discovery.k8s.io/v1", "EndpointSlice", "apps", &name);
    assert_eq!(slices_of(&fake, "web").await.len(), 1);

    // Selector removed: the controller's slices go, netmux's stays.
    fake.apply(web_pod("web-1", "10.244.0.11", 8080));
    fake.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-netmux", "namespace": "apps",
                     "labels": {SERVICE_NAME: "web", MANAGED_BY: "netmux"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.250.1.2"], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 7000, "protocol": "TCP"}],
    }));
    let mut selectorless = web_service();
    selectorless["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("selector");
    fake.apply(selectorless);
    let s = slices_of(&fake, "web").await;
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0]["metadata"]["name"], "web-netmux");
    // Pods changing meanwhile do not bring them back.
    fake.apply(web_pod("web-2", "10.244.0.12", 8080));
    assert_eq!(slices_of(&fake, "web").await.len(), 1);

    // Selector restored: the pods are back, netmux's slice untouched.
    fake.apply(web_service());
    let s = slices_of(&fake, "web").await;
    assert_eq!(ready_ips(&s), ["10.244.0.11", "10.244.0.12", "10.250.1.2"]);
    // Service deleted: only netmux's slice is left.
    fake.delete("v1", "Service", "apps", "web");
    let s = slices_of(&fake, "web").await;
    assert_eq!(s.len(), 1);
    assert_eq!(s[0]["metadata"]["name"], "web-netmux");
}

#[tokio::test]
async fn slice_changes_reach_watchers_like_any_object() {
    use futures::StreamExt as _;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, WatchEvent, WatchParams};

    let fake = FakeApi::start().await;
    fake.run_endpoint_controller();
    fake.apply(web_service());
    let client = fake.client("apps", None);
    let api: Api<EndpointSlice> = Api::namespaced(client, "apps");
    let rv = (*fake.changes().borrow()).to_string();
    let mut events = api
        .watch(
            &WatchParams::default().labels("kubernetes.io/service-name=web"),
            &rv,
        )
        .await
        .expect("watch")
        .boxed();
    // Over HTTP, as netmux-server would write it: a pod is created.
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(fake.client("apps", None), "apps");
    let pod = serde_json::from_value(web_pod("web-0", "10.244.0.10", 8080)).expect("pod");
    pods.create(&Default::default(), &pod)
        .await
        .expect("create pod");
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
        .await
        .expect("a watch event")
        .expect("stream open")
        .expect("event");
    let WatchEvent::Modified(slice) = event else {
        panic!("expected MODIFIED, got {event:?}");
    };
    let endpoints = slice.endpoints.unwrap_or_default();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].addresses, ["10.244.0.10"]);
    assert_eq!(
        endpoints[0].conditions.as_ref().and_then(|c| c.ready),
        Some(true)
    );
}
