//! TokenReview under hostile input (issue 14): the audience is asked for and
//! checked, a refused token is remembered briefly, a silent API server
//! cannot hold a hello forever, and reviews in flight are bounded.

mod kube_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kube_support::FakeApi;
use netmux_common::proto::hello::Credential;
use netmux_server::access::kubernetes::{Rbac, TokenReviewConfig};
use netmux_server::access::{Access, Denied};
use netmux_server::catalog::CatalogStore;
use netmux_server::metrics::Metrics;
use tokio::io::AsyncReadExt;

fn access(client: kube::Client, reviews: TokenReviewConfig) -> Access {
    let (store, _rx) = CatalogStore::new(Metrics::new());
    Access::with_rbac(
        vec![],
        Rbac::with_client(client, Duration::from_secs(10)).token_reviews(reviews),
        store,
    )
}

fn bearer(t: &str) -> Credential {
    Credential::Bearer(t.into())
}

fn token_reviews(fake: &FakeApi) -> usize {
    fake.requests()
        .iter()
        .filter(|(m, p)| m == "POST" && p.contains("tokenreviews"))
        .count()
}

#[tokio::test]
async fn only_tokens_meant_for_netmux_authenticate_by_default() {
    let fake = FakeApi::start().await;
    fake.add_token_with_audiences("for-netmux", "alice", &[], &["netmux"]);
    fake.add_token_with_audiences(
        "for-the-api",
        "bob",
        &[],
        &["https://kubernetes.default.svc"],
    );
    fake.add_token_with_audiences("static", "carol", &[], &[]);
    let a = access(fake.client("netmux", None), TokenReviewConfig::default());

    let id = a.authenticate(&bearer("for-netmux")).await.expect("alice");
    assert_eq!(id.name, "alice");
    for (token, why) in [
        ("for-the-api", "an API-server token"),
        ("static", "an authenticator that ignores audiences"),
    ] {
        let denied = a.authenticate(&bearer(token)).await.expect_err(why);
        let text = denied.to_string();
        assert!(matches!(denied, Denied::Kubernetes(_)), "{why}: {denied:?}");
        assert!(
            text.contains("--audience netmux") || text.contains("audiences are invalid"),
            "{why}: the refusal says how to get a netmux token: {text}"
        );
    }

    // `audiences = []`: the API server's own audience, the old behaviour.
    let legacy = access(
        fake.client("netmux", None),
        TokenReviewConfig {
            audiences: vec![],
            ..Default::default()
        },
    );
    let id = legacy
        .authenticate(&bearer("for-the-api"))
        .await
        .expect("API token with audiences = []");
    assert_eq!(id.name, "bob");
    legacy
        .authenticate(&bearer("for-netmux"))
        .await
        .expect_err("a netmux token is not an API-server token");
}

#[tokio::test]
async fn a_refused_token_is_not_reviewed_again_within_the_negative_cache() {
    let fake = FakeApi::start().await;
    fake.add_token("good", "alice", &[]);
    let a = access(
        fake.client("netmux", None),
        TokenReviewConfig {
            negative_ttl: Duration::from_millis(400),
            ..Default::default()
        },
    );
    for _ in 0..20 {
        a.authenticate(&bearer("stolen"))
            .await
            .expect_err("unknown token");
    }
    assert_eq!(token_reviews(&fake), 1, "one review for 20 attempts");
    a.authenticate(&bearer("good"))
        .await
        .expect("another token is not affected");
    assert_eq!(token_reviews(&fake), 2);
    tokio::time::sleep(Duration::from_millis(600)).await;
    a.authenticate(&bearer("stolen"))
        .await
        .expect_err("still unknown");
    assert_eq!(
        token_reviews(&fake),
        3,
        "asked again once the entry expired"
    );
}

/// An "API server" that accepts connections and never answers; counts the
/// requests it has read.
async fn silent_api() -> (kube::Client, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let posts = seen.windows(5).filter(|w| w == b"POST ").count();
                    if posts > 0 {
                        counted.fetch_add(posts, Ordering::SeqCst);
                        seen.clear();
                    }
                }
            });
        }
    });
    let config = kube::Config::new(format!("http://{addr}").parse().expect("url"));
    let client = kube::Client::try_from(config).expect("client");
    (client, requests, task)
}

#[tokio::test]
async fn a_silent_api_server_cannot_hold_a_hello() {
    let (client, requests, task) = silent_api().await;
    let a = access(
        client,
        TokenReviewConfig {
            timeout: Duration::from_millis(500),
            ..Default::default()
        },
    );
    let denied = tokio::time::timeout(Duration::from_secs(20), a.authenticate(&bearer("tok")))
        .await
        .expect("authenticate returns although the API server never answers");
    let denied = denied.expect_err("no answer, no identity");
    assert!(matches!(denied, Denied::Unavailable(_)), "{denied:?}");
    assert!(
        denied.to_string().contains("no TokenReview answer"),
        "{denied}"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    // Not a refusal of the token: it is asked about again next time.
    let _ = a.authenticate(&bearer("tok")).await;
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    task.abort();
}

#[tokio::test]
async fn reviews_in_flight_are_bounded() {
    let (client, requests, task) = silent_api().await;
    let a = Arc::new(access(
        client,
        TokenReviewConfig {
            timeout: Duration::from_secs(5),
            in_flight: 2,
            ..Default::default()
        },
    ));
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move { a.authenticate(&bearer(&format!("token-{i}"))).await })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(4), async {
        while requests.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("two reviews reach the API server");
    // The other four had every chance to send theirs meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "at most rbac.reviews_in_flight reviews at once"
    );
    for c in calls {
        let r = c.await.expect("task");
        assert!(matches!(r, Err(Denied::Unavailable(_))), "{r:?}");
    }
    task.abort();
}
