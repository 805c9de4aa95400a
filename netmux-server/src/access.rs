//! Who may connect, and what they may reach.
//!
//! Daemons authenticate by bearer tokens listed in the server configuration
//! (compared in constant time); a daemon holding one may reach and claim
//! every published service. With `[rbac]` the server also accepts the
//! user's Kubernetes credential ([`kubernetes`]): TokenReview says who it
//! is, RBAC what they may reach (`get services/proxy`) and claim (`update
//! services`), and the catalog each daemon sees holds only that.
//!
//! Call sites: `authenticate(..).await` once per hello; `visible(..).await`
//! for every catalog sent (it also refreshes the answers); `may_reach` stays
//! synchronous for the per-stream check, reading those answers;
//! `may_claim(..).await` before a reverse claim.

pub mod kubernetes;
mod recheck;

/// Default `rbac.recheck_interval_ms`.
pub(crate) fn recheck_interval_default() -> std::time::Duration {
    recheck::DEFAULT_INTERVAL
}

use std::sync::Arc;

use futures::StreamExt;
use netmux_common::proto::catalog::{Catalog, Direction, Service};
use netmux_common::proto::hello::Credential;
use subtle::ConstantTimeEq;

use crate::catalog::CatalogStore;
use crate::config::{Config, Token};

/// An authenticated daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's name, or the Kubernetes user name.
    pub name: String,
    /// The Kubernetes user behind a reviewed credential; `None` for a
    /// configured token (which may reach everything).
    pub user: Option<Arc<kubernetes::User>>,
    /// The reviewed credential, reviewed again while the session lives.
    credential: Option<recheck::Secret>,
    /// When the credential says it expires (a JWT's `exp`, read only to
    /// know when to review it again, never to accept it).
    pub(crate) expires: Option<std::time::SystemTime>,
}

/// Why a daemon was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No credential was presented.
    #[error("no credential presented: configure `token` for this endpoint")]
    Missing,
    /// The credential matches no configured token.
    #[error("invalid token: check the endpoint's `token` against the server's [[token]] list")]
    BadToken,
    /// The Kubernetes API server did not accept the credential.
    #[error("the cluster refused the credential: {0}; check the kubeconfig user, or ask the admin for a netmux ServiceAccount token (docs/kubernetes.md)")]
    Kubernetes(String),
    /// The Kubernetes API server could not be asked.
    #[error("cannot check the credential with the cluster right now: {0}")]
    Unavailable(String),
    /// RBAC does not allow it.
    #[error("not allowed: {0}")]
    NotAllowed(String),
}

/// The server's access policy.
pub struct Access {
    tokens: Vec<Token>,
    rbac: Option<Rbac>,
    /// How often a Kubernetes user's session is re-checked.
    recheck_every: std::time::Duration,
}

/// RBAC and where catalog entries come from.
struct Rbac {
    review: Arc<kubernetes::Rbac>,
    /// Origins of catalog entries (a bridge `kafka-0` asks about Service
    /// `kafka`).
    store: Arc<CatalogStore>,
}

/// SubjectAccessReviews in flight at once for one catalog.
const REVIEWS_IN_FLIGHT: usize = 16;

impl Access {
    /// Builds the policy from the configuration; with `[rbac]`, entry
    /// origins come from `store` and the Kubernetes client is built on
    /// first use.
    pub fn from_config(config: &Config, store: &Arc<CatalogStore>) -> Self {
        Access {
            tokens: config.tokens.clone(),
            rbac: config.rbac.map(|ttl| Rbac {
                review: Arc::new(
                    kubernetes::Rbac::lazy(ttl).token_reviews(config.token_review.clone()),
                ),
                store: store.clone(),
            }),
            recheck_every: config.rbac_recheck,
        }
    }

    /// Configured tokens plus RBAC through `review` (tests, shared clients).
    pub fn with_rbac(
        tokens: Vec<Token>,
        review: kubernetes::Rbac,
        store: Arc<CatalogStore>,
    ) -> Self {
        Access {
            tokens,
            rbac: Some(Rbac {
                review: Arc::new(review),
                store,
            }),
            recheck_every: recheck::DEFAULT_INTERVAL,
        }
    }

    /// Checks a hello's credential: a configured token, else (with RBAC) a
    /// Kubernetes credential through TokenReview.
    pub async fn authenticate(&self, credential: &Credential) -> Result<Identity, Denied> {
        let Credential::Bearer(presented) = credential else {
            return Err(Denied::Missing);
        };
        // Compare against every token so timing does not reveal which matched.
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.secret.as_bytes().ct_eq(presented.as_bytes())) {
                found = Some(t.name.clone());
            }
        }
        if let Some(name) = found {
            return Ok(Identity {
                name,
                user: None,
                credential: None,
                expires: None,
            });
        }
        let Some(rbac) = &self.rbac else {
            return Err(Denied::BadToken);
        };
        let user = rbac.review.review_token(presented).await?;
        Ok(Identity {
            name: user.username.clone(),
            user: Some(Arc::new(user)),
            credential: Some(recheck::Secret::new(presented)),
            expires: recheck::jwt_expiry(presented),
        })
    }

    /// The Kubernetes Services RBAC is asked about for `service`: every
    /// Service it reaches (a bridge to Service `db` needs `db` too), or
    /// its own name when the runtime knows no origin.
    fn subjects(rbac: &Rbac, service: &Service) -> Vec<String> {
        rbac.store
            .reaches(&service.key())
            .unwrap_or_else(|| vec![service.name.clone()])
    }

    fn verb(service: &Service) -> kubernetes::Verb {
        match service.direction {
            Direction::L2C => kubernetes::Verb::Proxy,
            Direction::C2L => kubernetes::Verb::Update,
        }
    }

    /// The part of `catalog` that `who` may use: L2C entries they may proxy
    /// to, C2L entries they may claim. Asks RBAC where its answers are
    /// stale, so call it for every catalog sent.
    pub async fn visible(&self, who: &Identity, catalog: &Catalog) -> Catalog {
        let (Some(rbac), Some(user)) = (&self.rbac, &who.user) else {
            return catalog.clone();
        };
        // Owned futures: borrowing closures here make the connection's
        // future lose `Send` (higher-ranked lifetimes).
        let checks: Vec<_> = catalog
            .iter()
            .map(|(id, svc)| {
                let (review, user) = (rbac.review.clone(), user.clone());
                let (id, svc) = (*id, svc.clone());
                let names = Self::subjects(rbac, &svc);
                async move {
                    for name in &names {
                        if !review
                            .allowed(&user, Self::verb(&svc), &svc.namespace, name)
                            .await
                        {
                            return None;
                        }
                    }
                    Some((id, svc))
                }
            })
            .collect();
        let answers: Vec<Option<_>> = futures::stream::iter(checks)
            .buffer_unordered(REVIEWS_IN_FLIGHT)
            .collect()
            .await;
        answers.into_iter().flatten().collect()
    }

    /// Whether `who` may reach `service`, from the answers [`Self::visible`]
    /// gathered. A stale answer is still used (and refreshed in the
    /// background) for up to [`kubernetes::MAX_STALE`] cache lifetimes; a
    /// missing or expired one denies.
    pub fn may_reach(&self, who: &Identity, service: &Service) -> bool {
        let (Some(rbac), Some(user)) = (&self.rbac, &who.user) else {
            return true;
        };
        let verb = Self::verb(service);
        Self::subjects(rbac, service).into_iter().all(|name| {
            match rbac.review.cached(user, verb, &service.namespace, &name) {
                Some((allowed, true)) => allowed,
                cached => {
                    let review = rbac.review.clone();
                    let (user, ns) = (user.clone(), service.namespace.clone());
                    if let Ok(handle) = tokio::runtime::Handle::try_current() {
                        handle.spawn(async move { review.allowed(&user, verb, &ns, &name).await });
                    }
                    cached.is_some_and(|(allowed, _)| allowed)
                }
            }
        })
    }

    /// Whether `who` may claim the C2L service `key` (`namespace/name`):
    /// `update` on that Service.
    pub async fn may_claim(&self, who: &Identity, key: &str) -> Result<(), Denied> {
        let (Some(rbac), Some(user)) = (&self.rbac, &who.user) else {
            return Ok(());
        };
        let (ns, entry) = key.split_once('/').unwrap_or(("", key));
        let names = rbac
            .store
            .reaches(key)
            .unwrap_or_else(|| vec![entry.to_owned()]);
        for name in names {
            if !rbac
                .review
                .allowed(user, kubernetes::Verb::Update, ns, &name)
                .await
            {
                return Err(Denied::NotAllowed(format!(
                    "{} may not claim {key}: RBAC does not allow `update` on Service {ns}/{name}",
                    user.username
                )));
            }
        }
        Ok(())
    }

    /// Whether `who` may intercept Service `ns/name`: the verb
    /// `intercept` on it (the `netmux-user` Role grants it).
    pub async fn may_intercept(&self, who: &Identity, ns: &str, name: &str) -> Result<(), Denied> {
        let (Some(rbac), Some(user)) = (&self.rbac, &who.user) else {
            return Ok(());
        };
        if rbac
            .review
            .allowed(user, kubernetes::Verb::Intercept, ns, name)
            .await
        {
            return Ok(());
        }
        Err(Denied::NotAllowed(format!(
            "{} may not intercept Service {ns}/{name}: RBAC does not allow the verb `intercept` on services there; fix: an admin binds the Role netmux-user (manifests/base/rbac-users.yaml, it grants `intercept` on services) to them in namespace {ns}",
            user.username
        )))
    }

    /// Whether `who` may stop `workloads` of `ns` for a replace intercept:
    /// `patch` on their `scale` subresource, as `kubectl scale` needs (the
    /// ClusterRole netmux-replace grants it).
    pub async fn may_stop(
        &self,
        who: &Identity,
        ns: &str,
        workloads: &[netmux_common::proto::replaced::Replaced],
    ) -> Result<(), Denied> {
        let (Some(rbac), Some(user)) = (&self.rbac, &who.user) else {
            return Ok(());
        };
        for w in workloads {
            if !rbac
                .review
                .allowed(user, kubernetes::Verb::Scale(w.kind), ns, &w.name)
                .await
            {
                return Err(Denied::NotAllowed(format!(
                    "{} may not stop {} {ns}/{}: --replace scales it to zero, and RBAC does not allow `patch` on {}/scale (apps) there; fix: an admin binds the ClusterRole netmux-replace (manifests/base/rbac-users.yaml) to them with a RoleBinding in namespace {ns}, or intercept without --replace",
                    user.username,
                    w.kind,
                    w.name,
                    w.kind.resource()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access {
            tokens: vec![Token {
                name: "alice".into(),
                secret: "0123456789abcdef".into(),
            }],
            rbac: None,
            recheck_every: recheck::DEFAULT_INTERVAL,
        }
    }

    #[tokio::test]
    async fn right_token_authenticates() {
        let id = access()
            .authenticate(&Credential::Bearer("0123456789abcdef".into()))
            .await
            .unwrap();
        assert_eq!(id.name, "alice");
        assert!(id.user.is_none());
    }

    #[tokio::test]
    async fn wrong_or_missing_token_is_denied() {
        assert_eq!(
            access()
                .authenticate(&Credential::Bearer("0123456789abcdeX".into()))
                .await,
            Err(Denied::BadToken)
        );
        assert_eq!(
            access().authenticate(&Credential::None).await,
            Err(Denied::Missing)
        );
    }
}
