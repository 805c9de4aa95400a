//! Kubernetes RBAC as netmux's authorization.
//!
//! The daemon presents its user's Kubernetes bearer credential; a
//! TokenReview says who that is. Reaching an L2C service needs what
//! Kubernetes itself needs to proxy to it, `get` on `services/proxy` for
//! that Service; claiming a C2L service needs `update` on the Service. Each
//! answer comes from a SubjectAccessReview and is cached for a short time
//! (`ttl`), so a revoked permission stops working within about that time.
//!
//! Users whose kubeconfig holds no bearer token (client certificates) get a
//! ServiceAccount token from their admin: see docs/kubernetes.md.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::OnceCell;

use super::Denied;

/// A user as the API server's TokenReview named them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `alice@example.com`, `system:serviceaccount:ns:name`...
    pub username: String,
    /// Stable id, when the authenticator has one.
    pub uid: Option<String>,
    /// Groups, for RBAC group bindings.
    pub groups: Vec<String>,
    /// Extra attributes, passed back in SubjectAccessReviews.
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// What is asked of RBAC about one Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `get services/proxy`: reach an L2C service.
    Proxy,
    /// `update services`: claim a C2L service.
    Update,
}

impl Verb {
    fn attributes(self) -> (&'static str, Option<&'static str>) {
        match self {
            Verb::Proxy => ("get", Some("proxy")),
            Verb::Update => ("update", None),
        }
    }
}

type CacheKey = (String, Verb, String, String);

/// TokenReview and cached SubjectAccessReviews.
pub struct Rbac {
    client: OnceCell<Client>,
    ttl: Duration,
    cache: Mutex<HashMap<CacheKey, (bool, Instant)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn user_key(u: &User) -> String {
    format!(
        "{}\0{}\0{}",
        u.username,
        u.uid.as_deref().unwrap_or(""),
        u.groups.join(",")
    )
}

impl Rbac {
    /// Uses `client` (tests, or a client shared with the runtime).
    pub fn with_client(client: Client, ttl: Duration) -> Self {
        Rbac {
            client: OnceCell::new_with(Some(client)),
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Builds its client from the in-cluster account or KUBECONFIG on first
    /// use (construction stays synchronous).
    pub fn lazy(ttl: Duration) -> Self {
        Rbac {
            client: OnceCell::new(),
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn client(&self) -> Result<&Client, Denied> {
        self.client
            .get_or_try_init(Client::try_default)
            .await
            .map_err(|e| Denied::Unavailable(format!("no Kubernetes client: {e}")))
    }

    /// Who holds `token`, per the API server.
    pub async fn review_token(&self, token: &str) -> Result<User, Denied> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: None,
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client().await?.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Denied::Unavailable(format!("TokenReview failed: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(Denied::Kubernetes(
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "the token is not valid for this cluster".into()),
            ));
        }
        let info = status.user.unwrap_or_default();
        let username = info.username.filter(|u| !u.is_empty()).ok_or_else(|| {
            Denied::Kubernetes("TokenReview authenticated the token but named no user".into())
        })?;
        Ok(User {
            username,
            uid: info.uid,
            groups: info.groups.unwrap_or_default(),
            extra: info.extra.unwrap_or_default(),
        })
    }

    /// The cached answer for `user` doing `verb` on Service `ns/name`:
    /// `(allowed, still fresh)`.
    pub fn cached(&self, user: &User, verb: Verb, ns: &str, name: &str) -> Option<(bool, bool)> {
        let key = (user_key(user), verb, ns.to_owned(), name.to_owned());
        lock(&self.cache)
            .get(&key)
            .map(|(allowed, at)| (*allowed, at.elapsed() < self.ttl))
    }

    /// Whether `user` may `verb` Service `ns/name`: from the cache while
    /// fresh, else a SubjectAccessReview. Errors deny (fail closed).
    pub async fn allowed(&self, user: &User, verb: Verb, ns: &str, name: &str) -> bool {
        if let Some((allowed, true)) = self.cached(user, verb, ns, name) {
            return allowed;
        }
        let allowed = match self.review(user, verb, ns, name).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(user = %user.username, service = %format!("{ns}/{name}"), error = %e, "SubjectAccessReview failed; denying");
                return false;
            }
        };
        let key = (user_key(user), verb, ns.to_owned(), name.to_owned());
        let mut cache = lock(&self.cache);
        let ttl = self.ttl;
        cache.retain(|_, (_, at)| at.elapsed() < ttl * 4);
        cache.insert(key, (allowed, Instant::now()));
        allowed
    }

    async fn review(&self, user: &User, verb: Verb, ns: &str, name: &str) -> Result<bool, Denied> {
        let (verb_name, subresource) = verb.attributes();
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.username.clone()),
                uid: user.uid.clone(),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(String::new()),
                    resource: Some("services".into()),
                    subresource: subresource.map(str::to_owned),
                    verb: Some(verb_name.into()),
                    namespace: Some(ns.to_owned()),
                    name: Some(name.to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client().await?.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Denied::Unavailable(format!("SubjectAccessReview failed: {e}")))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}
