//! The Kubernetes runtime with the real kube client against the fake API
//! server: catalog from Services and EndpointSlices, the `nx` annotation
//! with Events for invalid ones, and watch restarts (410 Gone, API-server
//! restart) without lost or duplicated entries.

mod kube_support;

use std::sync::Arc;
use std::time::Duration;

use kube_support::{endpoint_slice, service, FakeApi};
use netmux_common::proto::catalog::{Catalog, Direction, Service};
use netmux_server::catalog::CatalogStore;
use netmux_server::metrics::Metrics;
use netmux_server::runtime::kubernetes::{self, Namespaces, Options};
use serde_json::json;
use tokio::sync::watch;

const DECK_KAFKA_NX: &str = "- name: kafka
- name: kafka-0
  localAddr: kafka-0.kafka.netmux.svc.cluster.local
  containerAddr: kafka-0.kafka.netmux.svc.cluster.local
- name: kafka-1
  localAddr: kafka-1.kafka.netmux.svc.cluster.local
  containerAddr: kafka-1.kafka.netmux.svc.cluster.local
- name: kafka-2
  localAddr: kafka-2.kafka.netmux.svc.cluster.local
  containerAddr: kafka-2.kafka.netmux.svc.cluster.local";

fn seed(fake: &FakeApi) {
    fake.apply(service(
        "netmux",
        "kafka",
        "10.96.0.50",
        json!([{"name": "9092", "port": 9092, "protocol": "TCP", "targetPort": 9092}]),
        Some(DECK_KAFKA_NX),
    ));
    fake.apply(endpoint_slice(
        "netmux",
        "kafka",
        &[
            ("10.244.0.10", Some("kafka-0"), true),
            ("10.244.0.11", Some("kafka-1"), true),
            ("10.244.0.12", Some("kafka-2"), true),
        ],
        json!([{"name": "9092", "port": 9092, "protocol": "TCP"}]),
    ));
    fake.apply(service(
        "netmux",
        "web",
        "10.96.0.10",
        json!([{"name": "http", "port": 80, "targetPort": 8080}, {"name": "grpc", "port": 9000}]),
        None,
    ));
    fake.apply(service(
        "netmux",
        "db",
        "None",
        json!([{"name": "pg", "port": 5432}]),
        None,
    ));
    fake.apply(endpoint_slice(
        "netmux",
        "db",
        &[
            ("10.244.1.5", Some("db-0"), true),
            ("10.244.1.6", Some("db-1"), true),
        ],
        json!([{"name": "pg", "port": 5432}]),
    ));
    // Not watched: another namespace.
    fake.apply(service(
        "elsewhere",
        "hidden",
        "10.96.9.9",
        json!([{"port": 80}]),
        None,
    ));
}

struct Running {
    store: Arc<CatalogStore>,
    rx: watch::Receiver<Arc<Catalog>>,
    _runtime: netmux_server::runtime::RuntimeHandle,
}

async fn start(fake: &FakeApi, namespaces: Namespaces) -> Running {
    let (store, rx) = CatalogStore::new(Metrics::new());
    let options = Options {
        namespaces,
        initial_sync_timeout: Duration::from_secs(10),
        ..Options::default()
    };
    let runtime = kubernetes::start(fake.client("netmux", None), &options, store.clone())
        .await
        .expect("runtime starts against the fake API server");
    Running {
        store,
        rx,
        _runtime: runtime,
    }
}

fn names(c: &Catalog) -> Vec<String> {
    let mut v: Vec<String> = c.values().map(Service::key).collect();
    v.sort();
    v
}

fn by_name<'a>(c: &'a Catalog, key: &str) -> &'a Service {
    c.values()
        .find(|s| s.key() == key)
        .unwrap_or_else(|| panic!("{key} not in {:?}", names(c)))
}

/// Waits until the catalog satisfies `pred`, failing with what it saw.
async fn until(r: &mut Running, what: &str, pred: impl Fn(&Catalog) -> bool) -> Arc<Catalog> {
    let wait = async {
        loop {
            let c = r.rx.borrow_and_update().clone();
            if pred(&c) {
                return c;
            }
            if r.rx.changed().await.is_err() {
                panic!("catalog sender dropped while waiting for {what}");
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(20), wait).await {
        Ok(c) => c,
        Err(_) => panic!(
            "timed out waiting for {what}; catalog: {:?}",
            names(&r.store.current())
        ),
    }
}

#[tokio::test]
async fn catalog_from_services_and_endpointslices() {
    let fake = FakeApi::start().await;
    seed(&fake);
    let mut r = start(&fake, Namespaces::Own).await;
    let c = r.store.current();
    assert_eq!(
        names(&c),
        [
            "netmux/db",
            "netmux/db-0",
            "netmux/db-1",
            "netmux/kafka",
            "netmux/kafka-0",
            "netmux/kafka-1",
            "netmux/kafka-2",
            "netmux/web"
        ],
        "published before start returns, own namespace only"
    );
    let k1 = by_name(&c, "netmux/kafka-1");
    assert_eq!(k1.aliases, ["kafka-1.kafka.netmux.svc.cluster.local"]);
    assert_eq!(
        k1.addresses,
        ["10.244.0.11".parse::<std::net::IpAddr>().unwrap()]
    );
    let web = by_name(&c, "netmux/web");
    assert_eq!(
        web.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
        [80, 9000]
    );
    assert_eq!(by_name(&c, "netmux/db").addresses.len(), 2);

    // A broker goes unready, a Service appears, another goes away.
    fake.apply(endpoint_slice(
        "netmux",
        "kafka",
        &[
            ("10.244.0.10", Some("kafka-0"), true),
            ("10.244.0.11", Some("kafka-1"), false),
            ("10.244.0.12", Some("kafka-2"), true),
        ],
        json!([{"name": "9092", "port": 9092, "protocol": "TCP"}]),
    ));
    fake.apply(service(
        "netmux",
        "cache",
        "10.96.0.77",
        json!([{"port": 6379}]),
        None,
    ));
    fake.delete("v1", "Service", "netmux", "web");
    let c = until(&mut r, "kafka-1 gone, cache in, web out", |c| {
        let n = names(c);
        !n.contains(&"netmux/kafka-1".into())
            && n.contains(&"netmux/cache".into())
            && !n.contains(&"netmux/web".into())
    })
    .await;
    assert_eq!(c.len(), 7, "{:?}", names(&c));
}

#[tokio::test]
async fn listed_and_all_namespaces() {
    let fake = FakeApi::start().await;
    seed(&fake);
    let r = start(&fake, Namespaces::List(vec!["elsewhere".into()])).await;
    assert_eq!(names(&r.store.current()), ["elsewhere/hidden"]);
    let r = start(&fake, Namespaces::All).await;
    assert_eq!(r.store.current().len(), 9);
}

#[tokio::test]
async fn invalid_annotation_gets_an_event_and_leaves_the_rest() {
    let fake = FakeApi::start().await;
    seed(&fake);
    fake.apply(service(
        "netmux",
        "broken",
        "10.96.0.66",
        json!([{"port": 80}]),
        Some("- name: broken\n  direction: sideways\n"),
    ));
    fake.apply(service(
        "netmux",
        "typo",
        "10.96.0.67",
        json!([{"port": 80}]),
        Some("- name: typo\n  localport: 80\n"),
    ));
    let mut r = start(&fake, Namespaces::Own).await;
    let c = r.store.current();
    assert_eq!(c.len(), 8, "the others are unaffected: {:?}", names(&c));
    assert!(!names(&c)
        .iter()
        .any(|n| n.contains("broken") || n.contains("typo")));

    let events = wait_events(&fake, 2).await;
    let about = |name: &str| {
        events
            .iter()
            .find(|e| e["regarding"]["name"] == name)
            .unwrap_or_else(|| panic!("no Event about {name}: {events:#?}"))
            .clone()
    };
    let e = about("broken");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], "InvalidNxAnnotation");
    assert_eq!(e["regarding"]["kind"], "Service");
    assert_eq!(e["metadata"]["namespace"], "netmux");
    assert!(e["regarding"]["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty()));
    let note = e["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("entry 0 (broken)") && note.contains("`direction`") && note.contains("fix:"),
        "{note}"
    );
    let note = about("typo")["note"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(note.contains("unknown field `localport`"), "{note}");

    // Fixing the annotation publishes the Service; no new Event.
    fake.apply(service(
        "netmux",
        "broken",
        "10.96.0.66",
        json!([{"port": 80}]),
        Some("- name: broken\n  direction: L2C\n"),
    ));
    let c = until(&mut r, "broken published once fixed", |c| {
        names(c).contains(&"netmux/broken".into())
    })
    .await;
    assert_eq!(by_name(&c, "netmux/broken").direction, Direction::L2C);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fake.objects("events.k8s.io/events").len(),
        2,
        "one Event per problem"
    );
}

async fn wait_events(fake: &FakeApi, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..200 {
        let e = fake.objects("events.k8s.io/events");
        if e.len() >= n {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "expected {n} Events, got {:#?}",
        fake.objects("events.k8s.io/events")
    );
}

#[tokio::test]
async fn relists_after_410_gone_without_losing_or_duplicating() {
    let fake = FakeApi::start().await;
    seed(&fake);
    let mut r = start(&fake, Namespaces::Own).await;
    let before = r.store.current();
    let kafka_id = by_name(&before, "netmux/kafka").id;
    let lists_before = fake
        .requests()
        .iter()
        .filter(|(m, p)| m == "GET" && p.contains("/services") && !p.contains("watch=true"))
        .count();

    // Changes the watch never sees: only a relist shows them.
    fake.compact_silently(
        vec![service(
            "netmux",
            "late",
            "10.96.0.88",
            json!([{"port": 8080}]),
            None,
        )],
        vec![("v1", "Service", "netmux", "web")],
    );
    let c = until(&mut r, "relist after 410", |c| {
        let n = names(c);
        n.contains(&"netmux/late".into()) && !n.contains(&"netmux/web".into())
    })
    .await;
    assert_eq!(c.len(), 8, "nothing lost or duplicated: {:?}", names(&c));
    assert_eq!(
        by_name(&c, "netmux/kafka").id,
        kafka_id,
        "ids survive a relist"
    );
    let lists_after = fake
        .requests()
        .iter()
        .filter(|(m, p)| m == "GET" && p.contains("/services") && !p.contains("watch=true"))
        .count();
    assert!(lists_after > lists_before, "a relist happened");

    // The watch goes on from the relist.
    fake.apply(service(
        "netmux",
        "later",
        "10.96.0.89",
        json!([{"port": 8081}]),
        None,
    ));
    until(&mut r, "watch resumed after relist", |c| {
        names(c).contains(&"netmux/later".into())
    })
    .await;
}

#[tokio::test]
async fn survives_an_api_server_restart() {
    let fake = FakeApi::start().await;
    seed(&fake);
    let mut r = start(&fake, Namespaces::Own).await;
    fake.set_down(true);
    fake.apply(service(
        "netmux",
        "during",
        "10.96.0.90",
        json!([{"port": 81}]),
        None,
    ));
    fake.delete("v1", "Service", "netmux", "db");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        names(&r.store.current()).contains(&"netmux/db".into()),
        "while the API server is down the last catalog stays"
    );
    fake.set_down(false);
    let c = until(&mut r, "changes made during the restart", |c| {
        let n = names(c);
        n.contains(&"netmux/during".into()) && !n.contains(&"netmux/db".into())
    })
    .await;
    // db's EndpointSlice still exists, but without its Service the per-pod
    // entries go too.
    assert!(
        !names(&c).iter().any(|n| n.starts_with("netmux/db")),
        "{:?}",
        names(&c)
    );
    assert_eq!(c.len(), 6, "{:?}", names(&c));
}

#[tokio::test]
async fn steered_entries_are_refused_visibly_and_the_rest_keeps_working() {
    let fake = FakeApi::start().await;
    seed(&fake);
    fake.apply(service(
        "netmux",
        "sneaky",
        "10.96.0.70",
        json!([{"port": 80}]),
        Some(
            "- name: sneaky\n\
             - name: metadata\n  containerAddr: 169.254.169.254\n\
             - name: next-door\n  containerAddr: hidden.elsewhere\n\
             - name: by-ip\n  containerAddr: 10.96.9.9\n",
        ),
    ));
    // A selectorless Service whose (user-written) slice points at loopback.
    let mut ext = service("netmux", "ext", "None", json!([{"port": 80}]), None);
    ext["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("selector");
    fake.apply(ext);
    let mut ext_slice = endpoint_slice(
        "netmux",
        "ext",
        &[("127.0.0.1", None, true)],
        json!([{"port": 80}]),
    );
    ext_slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] = json!("someone");
    fake.apply(ext_slice);

    let r = start(&fake, Namespaces::Own).await;
    let c = r.store.current();
    let n = names(&c);
    assert!(n.contains(&"netmux/sneaky".into()), "{n:?}");
    assert!(
        n.contains(&"netmux/web".into()) && n.contains(&"netmux/kafka-0".into()),
        "other Services are unaffected: {n:?}"
    );
    for refused in ["metadata", "next-door", "by-ip", "ext"] {
        assert!(
            !n.contains(&format!("netmux/{refused}")),
            "{refused}: {n:?}"
        );
    }
    assert!(
        c.values()
            .flat_map(|s| &s.addresses)
            .all(|ip| !ip.is_loopback() && ip.to_string() != "169.254.169.254"),
        "{c:?}"
    );

    let events = wait_events(&fake, 4).await;
    let about = |service: &str, needle: &str| {
        events
            .iter()
            .find(|e| {
                e["regarding"]["name"] == service
                    && e["note"].as_str().is_some_and(|n| n.contains(needle))
            })
            .unwrap_or_else(|| panic!("no Event on {service} about {needle}: {events:#?}"))
            .clone()
    };
    let e = about("sneaky", "169.254.169.254");
    assert_eq!(e["reason"], "NetmuxTargetRefused");
    assert_eq!(e["type"], "Warning");
    assert!(e["note"].as_str().unwrap_or_default().contains("fix:"));
    about("sneaky", "hidden.elsewhere");
    // Another namespace's cluster IP, unknown to a server watching its
    // own: outside the cluster addresses it knows.
    about("sneaky", "10.96.9.9");
    about("ext", "127.0.0.1");

    let refused = &r.store.metrics().catalog_refused;
    assert_eq!(refused.with_label_values(&["link_local"]).get(), 1);
    assert_eq!(refused.with_label_values(&["other_namespace"]).get(), 1);
    assert_eq!(refused.with_label_values(&["not_allowed"]).get(), 1);
    assert_eq!(refused.with_label_values(&["loopback"]).get(), 1);
    let text = r.store.metrics().render();
    assert!(
        text.contains("netmux_server_catalog_refused_total{reason=\"link_local\"} 1"),
        "{text}"
    );
}

/// Issue 15: a Service whose entry is over the 64 KiB a catalog entry may
/// take (here 1,200 ports with long names) gets a Warning Event saying so
/// and how to fix it; the rest is published as before (each daemon
/// session then leaves the entry out and names it in its hello reply).
#[tokio::test]
async fn an_entry_over_the_frame_limit_gets_an_event() {
    let fake = FakeApi::start().await;
    seed(&fake);
    let ports: Vec<serde_json::Value> = (0..1200)
        .map(|i| {
            json!({
                "name": format!("p{i:04}-{}", "x".repeat(50)),
                "port": 10000 + i,
                "protocol": "TCP"
            })
        })
        .collect();
    fake.apply(service(
        "netmux",
        "huge",
        "10.96.0.71",
        serde_json::Value::Array(ports),
        None,
    ));
    let r = start(&fake, Namespaces::Own).await;
    let c = r.store.current();
    assert!(
        names(&c).contains(&"netmux/web".into()),
        "the rest is published: {:?}",
        names(&c)
    );
    let events = wait_events(&fake, 1).await;
    let e = events
        .iter()
        .find(|e| e["regarding"]["name"] == "huge")
        .unwrap_or_else(|| panic!("no Event about huge: {events:#?}"));
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reason"], "NetmuxEntryTooLarge");
    assert_eq!(e["regarding"]["kind"], "Service");
    let note = e["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("netmux/huge")
            && note.contains("64 KiB")
            && note.contains("1200 ports")
            && note.contains("Fix:"),
        "{note}"
    );
    assert_eq!(events.len(), 1, "only huge has a problem: {events:#?}");
}
