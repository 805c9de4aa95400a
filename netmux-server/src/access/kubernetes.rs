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
//!
//! TokenReviews ask for the configured audiences (`["netmux"]` by default:
//! a token made for netmux, `kubectl create token SA --audience netmux`,
//! is useless against the API server, and an API-server token is refused
//! here), are bounded in time and in number at once, and a refused token is
//! remembered briefly so a peer repeating it does not reach the API server
//! each time ([`TokenReviewConfig`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};
use netmux_common::sync::lock;
use tokio::sync::OnceCell;

use super::Denied;

/// A user as the API server's TokenReview named them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `alice@example.com`, `system:serviceaccount:ns:name`...
    pub(crate) username: String,
    /// Stable id, when the authenticator has one.
    pub(crate) uid: Option<String>,
    /// Groups, for RBAC group bindings.
    pub groups: Vec<String>,
    /// Extra attributes, passed back in SubjectAccessReviews.
    pub(crate) extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// What is asked of RBAC about one Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Verb {
    /// `get services/proxy`: reach an L2C service.
    Proxy,
    /// `update services`: claim a C2L service.
    Update,
    /// `intercept services` (a verb only netmux asks about): intercept
    /// an existing Service (docs/intercept.md).
    Intercept,
    /// `patch deployments/scale` (or statefulsets, group `apps`): stop a
    /// workload for a replace intercept, as `kubectl scale` would.
    Scale(netmux_common::proto::replaced::Kind),
}

impl Verb {
    /// (verb, group, resource, subresource) of the review.
    fn attributes(
        self,
    ) -> (
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
    ) {
        match self {
            Verb::Proxy => ("get", "", "services", Some("proxy")),
            Verb::Update => ("update", "", "services", None),
            Verb::Intercept => ("intercept", "", "services", None),
            Verb::Scale(kind) => ("patch", "apps", kind.resource(), Some("scale")),
        }
    }
}

type CacheKey = (String, Verb, String, String);

/// A cached RBAC answer is used while fresh (one `ttl`), then served stale
/// while a review refreshes it, and forgotten after this many `ttl`s even
/// when every review since failed.
pub const MAX_STALE: u32 = 2;

/// How TokenReviews are asked (`[rbac]` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenReviewConfig {
    /// Audiences the token must be valid for (`audiences`); empty: the API
    /// server's own, which also accepts the user's kubeconfig token (and
    /// lets whoever runs this server replay it against the API server).
    pub audiences: Vec<String>,
    /// Longest wait for one review, permit included (`review_timeout_ms`).
    pub timeout: Duration,
    /// Reviews in flight at once (`reviews_in_flight`).
    pub in_flight: usize,
    /// How long a refused token is refused without asking again
    /// (`negative_cache_ms`).
    pub negative_ttl: Duration,
}

impl Default for TokenReviewConfig {
    fn default() -> Self {
        TokenReviewConfig {
            audiences: vec!["netmux".into()],
            timeout: Duration::from_secs(5),
            in_flight: 8,
            negative_ttl: Duration::from_secs(10),
        }
    }
}

/// Refused tokens remembered at most; beyond, the oldest half is dropped.
const NEGATIVE_CACHE_MAX: usize = 4096;

/// TokenReview state: settings, the permits, refused tokens by hash.
struct Reviews {
    config: TokenReviewConfig,
    permits: tokio::sync::Semaphore,
    /// Hash of a refused token (keyed per process, the token itself is not
    /// kept) → when and why it was refused.
    refused: Mutex<HashMap<u64, (Instant, String)>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Reviews {
    fn new(config: TokenReviewConfig) -> Self {
        Reviews {
            permits: tokio::sync::Semaphore::new(config.in_flight),
            config,
            refused: Mutex::new(HashMap::new()),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn key(&self, token: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(token)
    }

    fn refused(&self, token: &str) -> Option<String> {
        let key = self.key(token);
        let ttl = self.config.negative_ttl;
        let mut refused = lock(&self.refused);
        match refused.get(&key) {
            Some((at, why)) if at.elapsed() < ttl => Some(why.clone()),
            Some(_) => {
                refused.remove(&key);
                None
            }
            None => None,
        }
    }

    fn remember_refusal(&self, token: &str, why: &str) {
        let key = self.key(token);
        let ttl = self.config.negative_ttl;
        let mut refused = lock(&self.refused);
        if refused.len() >= NEGATIVE_CACHE_MAX {
            refused.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        if refused.len() >= NEGATIVE_CACHE_MAX {
            // Still full of fresh entries: forget the older half.
            let mut ages: Vec<Instant> = refused.values().map(|(at, _)| *at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            refused.retain(|_, (at, _)| *at > cut);
        }
        refused.insert(key, (Instant::now(), why.to_owned()));
    }
}

/// TokenReview and cached SubjectAccessReviews.
pub struct Rbac {
    client: OnceCell<Client>,
    ttl: Duration,
    cache: Mutex<HashMap<CacheKey, (bool, Instant)>>,
    reviews: Reviews,
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
            reviews: Reviews::new(TokenReviewConfig::default()),
        }
    }

    /// With these TokenReview settings instead of the defaults.
    pub fn token_reviews(mut self, config: TokenReviewConfig) -> Self {
        self.reviews = Reviews::new(config);
        self
    }

    /// Builds its client from the in-cluster account or KUBECONFIG on first
    /// use (construction stays synchronous).
    pub(crate) fn lazy(ttl: Duration) -> Self {
        Rbac {
            client: OnceCell::new(),
            ttl,
            cache: Mutex::new(HashMap::new()),
            reviews: Reviews::new(TokenReviewConfig::default()),
        }
    }

    async fn client(&self) -> Result<&Client, Denied> {
        self.client
            .get_or_try_init(Client::try_default)
            .await
            .map_err(|e| Denied::Unavailable(format!("no Kubernetes client: {e}")))
    }

    /// Who holds `token`, per the API server: within the configured
    /// timeout, at most `in_flight` at once; a token refused within the
    /// last `negative_ttl` is refused again without asking.
    pub(crate) async fn review_token(&self, token: &str) -> Result<User, Denied> {
        if let Some(why) = self.reviews.refused(token) {
            return Err(Denied::Kubernetes(why));
        }
        let timeout = self.reviews.config.timeout;
        let answer = tokio::time::timeout(timeout, async {
            let _permit = self.reviews.permits.acquire().await.map_err(|_| {
                Denied::Unavailable("the server is shutting down".into())
            })?;
            self.ask_token_review(token).await
        })
        .await
        .map_err(|_| {
            Denied::Unavailable(format!(
                "no TokenReview answer within {timeout:?} (the API server is slow, or {} reviews are already in flight: rbac.reviews_in_flight)",
                self.reviews.config.in_flight
            ))
        })?;
        match answer {
            Err(Denied::Kubernetes(why)) => {
                self.reviews.remember_refusal(token, &why);
                Err(Denied::Kubernetes(why))
            }
            other => other,
        }
    }

    async fn ask_token_review(&self, token: &str) -> Result<User, Denied> {
        let audiences = &self.reviews.config.audiences;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: (!audiences.is_empty()).then(|| audiences.clone()),
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
        // An authenticator that ignores audiences answers with none: the
        // token is then valid for the API server, not for netmux.
        let granted = status.audiences.unwrap_or_default();
        if !audiences.is_empty() && !granted.iter().any(|a| audiences.contains(a)) {
            return Err(Denied::Kubernetes(format!(
                "the token is not meant for netmux (its audiences {granted:?} include none of {audiences:?}); get one with `kubectl create token SERVICEACCOUNT --audience {}` and pass it with `netmux connect --token-file`",
                audiences[0]
            )));
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
    /// `(allowed, still fresh)`. An answer older than [`MAX_STALE`] cache
    /// lifetimes is gone, whether or not newer reviews succeed: a stale
    /// "allow" cannot outlive an API server that stopped answering.
    pub(crate) fn cached(
        &self,
        user: &User,
        verb: Verb,
        ns: &str,
        name: &str,
    ) -> Option<(bool, bool)> {
        let key = (user_key(user), verb, ns.to_owned(), name.to_owned());
        let max_age = self.ttl * MAX_STALE;
        let mut cache = lock(&self.cache);
        match cache
            .get(&key)
            .map(|(allowed, at)| (*allowed, at.elapsed()))
        {
            Some((allowed, age)) if age < max_age => Some((allowed, age < self.ttl)),
            Some(_) => {
                // Expired: drop it and every other expired answer.
                cache.retain(|_, (_, at)| at.elapsed() < max_age);
                None
            }
            None => None,
        }
    }

    /// Whether `user` may `verb` Service `ns/name`: from the cache while
    /// fresh, else a SubjectAccessReview. Errors deny (fail closed).
    pub(crate) async fn allowed(&self, user: &User, verb: Verb, ns: &str, name: &str) -> bool {
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
        let max_age = self.ttl * MAX_STALE;
        cache.retain(|_, (_, at)| at.elapsed() < max_age);
        cache.insert(key, (allowed, Instant::now()));
        allowed
    }

    async fn review(&self, user: &User, verb: Verb, ns: &str, name: &str) -> Result<bool, Denied> {
        let (verb_name, group, resource, subresource) = verb.attributes();
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.username.clone()),
                uid: user.uid.clone(),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.into()),
                    resource: Some(resource.into()),
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
