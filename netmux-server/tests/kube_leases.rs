//! Reverse claims across replicas: two server replicas (two `LeaseLock`s)
//! sharing one fake API server, with the real kube client.

mod kube_support;

use std::net::IpAddr;
use std::time::Duration;

use kube_support::{service, FakeApi};
use netmux_common::proto::catalog::{Protocol, ServicePort};
use netmux_server::reverse::lease::{lease_name, slice_name, LeaseLock, LeaseOptions};
use netmux_server::reverse::{ClaimLock, ClaimRequest};
use serde_json::{json, Value};

const LEASES: &str = "coordination.k8s.io/leases";
const SLICES: &str = "discovery.k8s.io/endpointslices";
/// Short, so expiry is seen within the test.
const DURATION: Duration = Duration::from_secs(1);

fn replica(fake: &FakeApi, name: &str, ip: &str) -> LeaseLock {
    LeaseLock::new(
        fake.client("netmux", None),
        LeaseOptions {
            namespace: "netmux".into(),
            replica: name.into(),
            pod_ip: ip.parse::<IpAddr>().ok(),
            duration: DURATION,
        },
    )
}

fn request(name: &str, session: u64, client: &str, adhoc: bool) -> ClaimRequest {
    ClaimRequest {
        key: format!("apps/{name}"),
        namespace: "apps".into(),
        name: name.into(),
        service: name.into(),
        session,
        client: client.into(),
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 8082,
            target_port: 8082,
            protocol: Protocol::Tcp,
        }],
        adhoc,
    }
}

fn rev_service(fake: &FakeApi) {
    fake.apply(service(
        "apps",
        "rev",
        "10.96.0.5",
        json!([{"name": "http", "port": 8082, "targetPort": 8082, "protocol": "TCP"}]),
        Some("- name: rev\n  direction: C2L\n"),
    ));
}

fn lease(fake: &FakeApi) -> Option<Value> {
    fake.get(LEASES, "netmux", &lease_name("apps", "rev"))
}

fn slice(fake: &FakeApi, name: &str) -> Option<Value> {
    fake.get(SLICES, "apps", &slice_name(name))
}

/// Waits (bounded) until `f` holds.
async fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_claim_holds_across_replicas_routes_to_the_holder_and_is_released() {
    let fake = FakeApi::start().await;
    rev_service(&fake);
    let (a, b) = (
        replica(&fake, "server-a", "10.0.0.1"),
        replica(&fake, "server-b", "10.0.0.2"),
    );
    let alice = request("rev", 1, "alice (192.0.2.1:4000)", false);
    let bob = request("rev", 1, "bob (192.0.2.2:4000)", false);

    assert_eq!(a.acquire(&alice).await, Ok(()));
    assert_eq!(a.publish(&alice).await, Ok(()));
    let l = lease(&fake).expect("the Lease of apps/rev");
    assert_eq!(l["spec"]["holderIdentity"], "server-a/session-1", "{l}");
    assert_eq!(l["spec"]["leaseDurationSeconds"], 1, "{l}");
    let s = slice(&fake, "rev").expect("the EndpointSlice of apps/rev");
    assert_eq!(s["metadata"]["labels"]["kubernetes.io/service-name"], "rev");
    assert_eq!(s["endpoints"][0]["addresses"], json!(["10.0.0.1"]), "{s}");
    assert_eq!(
        s["ports"],
        json!([{"name": "http", "port": 8082, "protocol": "TCP"}])
    );
    assert_eq!(s["metadata"]["ownerReferences"][0]["name"], "rev", "{s}");

    // Through the other replica (same session number there): refused,
    // naming the holder.
    let refused = b.acquire(&bob).await.expect_err("apps/rev is held");
    assert!(
        refused.contains("alice (192.0.2.1:4000)") && refused.contains("server-a"),
        "{refused}"
    );
    assert_eq!(
        lease(&fake).map(|l| l["spec"]["holderIdentity"].clone()),
        Some(json!("server-a/session-1"))
    );

    a.release(&alice).await;
    assert!(
        slice(&fake, "rev").is_none(),
        "EndpointSlice removed on release"
    );
    assert!(lease(&fake).is_none(), "Lease removed on release");
    assert_eq!(b.acquire(&bob).await, Ok(()));
    assert_eq!(b.publish(&bob).await, Ok(()));
    let s = slice(&fake, "rev").expect("the EndpointSlice again");
    assert_eq!(s["endpoints"][0]["addresses"], json!(["10.0.0.2"]), "{s}");
    b.release(&bob).await;
}

#[tokio::test]
async fn a_dead_replicas_claim_is_free_once_its_lease_expires() {
    let fake = FakeApi::start().await;
    rev_service(&fake);
    let a = replica(&fake, "server-a", "10.0.0.1");
    let b = replica(&fake, "server-b", "10.0.0.2");
    let alice = request("rev", 7, "alice", false);
    let bob = request("rev", 3, "bob", false);
    assert_eq!(a.acquire(&alice).await, Ok(()));
    assert_eq!(a.publish(&alice).await, Ok(()));
    // Replica A dies: no renewal, no release.
    drop(a);
    assert!(b.acquire(&bob).await.is_err(), "still valid right after");
    let deadline = tokio::time::Instant::now() + DURATION * 4;
    loop {
        match b.acquire(&bob).await {
            Ok(()) => break,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "not free {:?} after the holder died: {e}",
                DURATION * 4
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let l = lease(&fake).expect("the Lease");
    assert_eq!(l["spec"]["holderIdentity"], "server-b/session-3", "{l}");
    assert_eq!(l["spec"]["leaseTransitions"], 1, "{l}");
    // The new holder takes over the dead replica's EndpointSlice.
    assert_eq!(b.publish(&bob).await, Ok(()));
    let s = slice(&fake, "rev").expect("the EndpointSlice");
    assert_eq!(s["endpoints"][0]["addresses"], json!(["10.0.0.2"]), "{s}");
}

#[tokio::test]
async fn renewal_keeps_a_claim_past_its_duration() {
    let fake = FakeApi::start().await;
    rev_service(&fake);
    let a = replica(&fake, "server-a", "10.0.0.1");
    let b = replica(&fake, "server-b", "10.0.0.2");
    let alice = request("rev", 1, "alice", false);
    assert_eq!(a.acquire(&alice).await, Ok(()));
    let every = a.renew_every().expect("Leases are renewed");
    assert!(every <= DURATION / 2, "{every:?}");
    let until = tokio::time::Instant::now() + DURATION * 3;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(every).await;
        assert_eq!(a.renew(&alice).await, Ok(()));
        assert!(b.acquire(&request("rev", 2, "bob", false)).await.is_err());
    }
    // Someone else's Lease now: renewal says the claim is lost.
    a.release(&alice).await;
    assert_eq!(b.acquire(&request("rev", 2, "bob", false)).await, Ok(()));
    let lost = a.renew(&alice).await.expect_err("lost");
    assert!(!lost.is_empty());
}

#[tokio::test]
async fn racing_replicas_get_one_winner() {
    let fake = FakeApi::start().await;
    rev_service(&fake);
    let a = replica(&fake, "server-a", "10.0.0.1");
    let b = replica(&fake, "server-b", "10.0.0.2");
    let (alice, bob) = (
        request("rev", 1, "alice", false),
        request("rev", 1, "bob", false),
    );
    let (ra, rb) = tokio::join!(a.acquire(&alice), b.acquire(&bob));
    assert!(ra.is_ok() != rb.is_ok(), "exactly one wins: {ra:?} {rb:?}");
}

#[tokio::test]
async fn an_adhoc_claim_creates_a_selectorless_service() {
    let fake = FakeApi::start().await;
    let a = replica(&fake, "server-a", "10.0.0.1");
    let web = request("web", 1, "alice", true);
    assert_eq!(a.acquire(&web).await, Ok(()));
    assert_eq!(a.publish(&web).await, Ok(()));
    let svc = fake
        .get("/services", "apps", "web")
        .expect("Service created");
    assert!(svc["spec"]["selector"].is_null(), "{svc}");
    assert_eq!(
        svc["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "netmux"
    );
    assert_eq!(svc["metadata"]["annotations"]["nx"], "[]");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8082);
    eventually("the EndpointSlice", Duration::from_secs(2), || {
        slice(&fake, "web").is_some()
    })
    .await;
    a.release(&web).await;
    assert!(slice(&fake, "web").is_none());
    assert!(
        fake.get("/services", "apps", "web").is_some(),
        "the Service stays (no delete on services)"
    );
}

#[tokio::test]
async fn expose_refuses_a_service_netmux_does_not_manage() {
    let fake = FakeApi::start().await;
    fake.apply(service(
        "apps",
        "payments",
        "10.96.0.9",
        json!([{"name": "http", "port": 8082, "targetPort": 8082, "protocol": "TCP"}]),
        None,
    ));
    let a = replica(&fake, "server-a", "10.0.0.1");
    let exposed = request("payments", 1, "mallory", true);
    let e = a
        .acquire(&exposed)
        .await
        .expect_err("someone else's Service");
    assert!(
        e.contains("Service apps/payments") && e.contains("does not manage") && e.contains("fix:"),
        "{e}"
    );
    assert!(fake.objects(LEASES).is_empty(), "no Lease taken");
    assert!(slice(&fake, "payments").is_none(), "no EndpointSlice");

    // A Service netmux made for an earlier expose is fine again.
    let web = request("web", 2, "alice", true);
    assert_eq!(a.acquire(&web).await, Ok(()));
    assert_eq!(a.publish(&web).await, Ok(()));
    a.release(&web).await;
    let again = request("web", 3, "alice", true);
    assert_eq!(a.acquire(&again).await, Ok(()));
}
