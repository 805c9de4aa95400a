//! Access with Kubernetes RBAC, with the real kube client against the fake
//! API server: TokenReview of the daemon's credential, SubjectAccessReview
//! for `get services/proxy` (reach) and `update services` (claim), cached
//! briefly; the catalog a user sees; configured tokens keep working.

mod kube_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube_support::FakeApi;
use netmux_common::proto::catalog::{
    Catalog, Direction, Protocol, Service, ServiceId, ServicePort,
};
use netmux_common::proto::hello::Credential;
use netmux_server::access::kubernetes::Rbac;
use netmux_server::access::{Access, Denied};
use netmux_server::catalog::CatalogStore;
use netmux_server::config::Token;
use netmux_server::metrics::Metrics;

const TTL: Duration = Duration::from_millis(300);

fn svc(name: &str, direction: Direction) -> Service {
    Service {
        id: ServiceId(0),
        name: name.into(),
        namespace: "shop".into(),
        aliases: vec![],
        addresses: if direction == Direction::L2C {
            vec!["10.96.0.1".parse().unwrap()]
        } else {
            vec![]
        },
        ports: vec![ServicePort {
            name: None,
            port: 80,
            target_port: 80,
            protocol: Protocol::Tcp,
        }],
        direction,
    }
}

/// A catalog with `web`, `admin`, bridge `kafka-0` of Service `kafka`, and
/// C2L `hook`; and an Access using the fake API server.
fn setup(fake: &FakeApi) -> (Access, Arc<CatalogStore>, Catalog) {
    let (store, _rx) = CatalogStore::new(Metrics::new());
    store.publish(vec![
        svc("web", Direction::L2C),
        svc("admin", Direction::L2C),
        svc("kafka-0", Direction::L2C),
        svc("hook", Direction::C2L),
    ]);
    store.set_origins(HashMap::from([
        ("shop/web".to_owned(), vec!["web".to_owned()]),
        ("shop/admin".to_owned(), vec!["admin".to_owned()]),
        ("shop/kafka-0".to_owned(), vec!["kafka".to_owned()]),
        ("shop/hook".to_owned(), vec!["hook".to_owned()]),
    ]));
    let access = Access::with_rbac(
        vec![Token {
            name: "ci".into(),
            secret: "configured-token-0123456789".into(),
        }],
        Rbac::with_client(fake.client("netmux", None), TTL),
        store.clone(),
    );
    let catalog = (*store.current()).clone();
    (access, store, catalog)
}

fn keys(c: &Catalog) -> Vec<String> {
    let mut v: Vec<String> = c.values().map(Service::key).collect();
    v.sort();
    v
}

fn find<'a>(c: &'a Catalog, key: &str) -> &'a Service {
    c.values().find(|s| s.key() == key).expect("in catalog")
}

#[tokio::test]
async fn token_review_names_the_user_and_refuses_unknown_tokens() {
    let fake = FakeApi::start().await;
    fake.add_token("alice-token", "alice@example.com", &["devs"]);
    let (access, _, _) = setup(&fake);
    let id = access
        .authenticate(&Credential::Bearer("alice-token".into()))
        .await
        .expect("alice authenticates");
    assert_eq!(id.name, "alice@example.com");
    assert_eq!(
        id.user.as_ref().map(|u| u.groups.clone()),
        Some(vec!["devs".to_owned()])
    );

    let denied = access
        .authenticate(&Credential::Bearer("stolen".into()))
        .await
        .expect_err("unknown token refused");
    assert!(matches!(denied, Denied::Kubernetes(_)), "{denied:?}");
    assert!(
        denied.to_string().contains("ServiceAccount token"),
        "{denied}"
    );
    assert_eq!(
        access.authenticate(&Credential::None).await,
        Err(Denied::Missing)
    );
}

#[tokio::test]
async fn configured_tokens_still_reach_everything() {
    let fake = FakeApi::start().await;
    let (access, _, catalog) = setup(&fake);
    let id = access
        .authenticate(&Credential::Bearer("configured-token-0123456789".into()))
        .await
        .expect("configured token");
    assert!(id.user.is_none());
    assert_eq!(access.visible(&id, &catalog).await.len(), 4);
    assert!(access.may_reach(&id, find(&catalog, "shop/admin")));
    access
        .may_claim(&id, "shop/hook")
        .await
        .expect("claim allowed");
    assert_eq!(
        fake.sar_count(),
        0,
        "no RBAC questions for configured tokens"
    );
}

#[tokio::test]
async fn catalog_and_streams_follow_rbac() {
    let fake = FakeApi::start().await;
    fake.add_token("alice-token", "alice", &[]);
    fake.allow("alice", "get", "/services/proxy", "shop", "web");
    fake.allow("alice", "get", "/services/proxy", "shop", "kafka");
    fake.allow("alice", "update", "/services", "shop", "hook");
    let (access, _, catalog) = setup(&fake);
    let alice = access
        .authenticate(&Credential::Bearer("alice-token".into()))
        .await
        .unwrap();

    let visible = access.visible(&alice, &catalog).await;
    assert_eq!(keys(&visible), ["shop/hook", "shop/kafka-0", "shop/web"]);
    assert!(access.may_reach(&alice, find(&catalog, "shop/web")));
    assert!(
        access.may_reach(&alice, find(&catalog, "shop/kafka-0")),
        "a bridge is judged by the Service that publishes it"
    );
    assert!(!access.may_reach(&alice, find(&catalog, "shop/admin")));

    // Answers are cached: no new reviews within the TTL.
    let asked = fake.sar_count();
    assert_eq!(asked, 4);
    access.visible(&alice, &catalog).await;
    assert!(access.may_reach(&alice, find(&catalog, "shop/web")));
    assert_eq!(fake.sar_count(), asked);

    // Revoked: gone once the cache expires.
    fake.revoke("alice", "get", "/services/proxy", "shop", "web");
    tokio::time::sleep(TTL + Duration::from_millis(50)).await;
    let visible = access.visible(&alice, &catalog).await;
    assert_eq!(keys(&visible), ["shop/hook", "shop/kafka-0"]);
    assert!(!access.may_reach(&alice, find(&catalog, "shop/web")));
}

#[tokio::test]
async fn stale_answers_are_refreshed_behind_may_reach() {
    let fake = FakeApi::start().await;
    fake.add_token("bob-token", "bob", &[]);
    fake.allow("bob", "get", "/services/proxy", "shop", "web");
    let (access, _, catalog) = setup(&fake);
    let bob = access
        .authenticate(&Credential::Bearer("bob-token".into()))
        .await
        .unwrap();
    access.visible(&bob, &catalog).await;
    fake.revoke("bob", "get", "/services/proxy", "shop", "web");
    tokio::time::sleep(TTL + Duration::from_millis(50)).await;
    // Stale: still allowed once, and a review goes out.
    assert!(access.may_reach(&bob, find(&catalog, "shop/web")));
    for _ in 0..100 {
        if !access.may_reach(&bob, find(&catalog, "shop/web")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("revocation never took effect");
}

#[tokio::test]
async fn claims_need_update_on_the_service() {
    let fake = FakeApi::start().await;
    fake.add_token("carol-token", "carol", &["devs"]);
    fake.allow("carol", "update", "/services", "shop", "hook");
    let (access, _, _) = setup(&fake);
    let carol = access
        .authenticate(&Credential::Bearer("carol-token".into()))
        .await
        .unwrap();
    access
        .may_claim(&carol, "shop/hook")
        .await
        .expect("allowed");
    let e = access
        .may_claim(&carol, "shop/web")
        .await
        .expect_err("refused");
    assert!(matches!(e, Denied::NotAllowed(_)));
    let text = e.to_string();
    assert!(
        text.starts_with("not allowed:") && text.contains("update") && text.contains("shop/web"),
        "{text}"
    );
}

#[tokio::test]
async fn api_server_unreachable_denies() {
    let fake = FakeApi::start().await;
    let (access, _, _) = setup(&fake);
    drop(fake);
    let e = tokio::time::timeout(
        Duration::from_secs(30),
        access.authenticate(&Credential::Bearer("dave-token".into())),
    )
    .await
    .expect("answered in time")
    .expect_err("no TokenReview, no entry");
    assert!(matches!(e, Denied::Unavailable(_)), "{e:?}");
}

#[tokio::test]
async fn an_entry_is_visible_only_with_access_to_every_service_it_reaches() {
    let fake = FakeApi::start().await;
    fake.add_token("erin-token", "erin", &[]);
    fake.allow("erin", "get", "/services/proxy", "shop", "tools");
    let (access, store, _) = setup(&fake);
    // `tools-db`: a bridge of Service `tools` whose target is Service `db`.
    store.publish(vec![
        svc("tools", Direction::L2C),
        svc("tools-db", Direction::L2C),
    ]);
    store.set_origins(HashMap::from([
        ("shop/tools".to_owned(), vec!["tools".to_owned()]),
        (
            "shop/tools-db".to_owned(),
            vec!["tools".to_owned(), "db".to_owned()],
        ),
    ]));
    let catalog = (*store.current()).clone();
    let erin = access
        .authenticate(&Credential::Bearer("erin-token".into()))
        .await
        .unwrap();
    let visible = access.visible(&erin, &catalog).await;
    assert_eq!(
        keys(&visible),
        ["shop/tools"],
        "proxy on the annotated Service alone does not reach db"
    );
    assert!(!access.may_reach(&erin, find(&catalog, "shop/tools-db")));

    fake.allow("erin", "get", "/services/proxy", "shop", "db");
    tokio::time::sleep(TTL + Duration::from_millis(50)).await;
    let visible = access.visible(&erin, &catalog).await;
    assert_eq!(keys(&visible), ["shop/tools", "shop/tools-db"]);
    assert!(access.may_reach(&erin, find(&catalog, "shop/tools-db")));
}

#[tokio::test]
async fn a_stale_allow_expires_even_when_reviews_fail() {
    let fake = FakeApi::start().await;
    fake.add_token("frank-token", "frank", &[]);
    fake.allow("frank", "get", "/services/proxy", "shop", "web");
    let (access, _, catalog) = setup(&fake);
    let frank = access
        .authenticate(&Credential::Bearer("frank-token".into()))
        .await
        .unwrap();
    access.visible(&frank, &catalog).await;
    assert!(access.may_reach(&frank, find(&catalog, "shop/web")));
    // The API server stops answering: reviews fail from now on.
    fake.set_down(true);
    tokio::time::sleep(
        TTL * netmux_server::access::kubernetes::MAX_STALE + Duration::from_millis(50),
    )
    .await;
    assert!(
        !access.may_reach(&frank, find(&catalog, "shop/web")),
        "an allow older than MAX_STALE lifetimes is gone though no review replaced it"
    );
}
