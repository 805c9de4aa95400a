//! Who may hold a reverse service beyond this process.
//!
//! [`Claims`](super::Claims) keeps the local listeners; a [`ClaimLock`]
//! decides whether this replica may hold a service at all. With the static
//! runtime there is one server, so [`MemoryLock`] suffices; with the
//! Kubernetes runtime [`super::lease::LeaseLock`] takes a Lease per service
//! and routes the cluster's traffic to the holding replica.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::{self, BoxFuture};
use futures::FutureExt;
use netmux_common::proto::catalog::ServicePort;
use netmux_common::sync::lock;

/// One claim as a lock sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// Catalog key, `namespace/name`.
    pub key: String,
    /// Namespace of the catalog entry.
    pub namespace: String,
    /// Name of the catalog entry.
    pub name: String,
    /// The Kubernetes Service behind the entry (for an `nx` bridge, the
    /// annotated Service; else the entry's name).
    pub service: String,
    /// The claiming daemon session (unique within this replica).
    pub session: u64,
    /// The claiming daemon as others are told about it.
    pub client: String,
    /// Where this replica listens for it.
    pub ports: Vec<ServicePort>,
    /// Published ad hoc (`netmux expose`), not by the runtime.
    pub adhoc: bool,
}

/// Exclusive ownership of reverse services, across whatever shares it.
///
/// Order of calls for one claim: `acquire`, then (listeners bound)
/// `publish`, then `renew` every [`ClaimLock::renew_every`] while held,
/// and `release` once at the end, also after a failed `publish` or a
/// `renew` that reported the claim lost.
pub trait ClaimLock: Send + Sync + 'static {
    /// Takes `claim.key` for `claim.session`, or says who holds it.
    fn acquire<'a>(&'a self, claim: &'a ClaimRequest) -> BoxFuture<'a, Result<(), String>>;
    /// Routes traffic for the claimed service to this replica.
    fn publish<'a>(&'a self, claim: &'a ClaimRequest) -> BoxFuture<'a, Result<(), String>>;
    /// Extends the claim; `Err` says it is lost and why.
    fn renew<'a>(&'a self, claim: &'a ClaimRequest) -> BoxFuture<'a, Result<(), String>>;
    /// Gives the claim up. Local bookkeeping happens before this returns,
    /// so a claim right after sees the service free here; the returned
    /// future finishes the job (it is spawned, as releases are synchronous
    /// for callers).
    fn release(&self, claim: &ClaimRequest) -> BoxFuture<'static, ()>;
    /// How often to call `renew`; `None`: never.
    fn renew_every(&self) -> Option<Duration>;
}

/// Claims within this process only (the static runtime: one server).
#[derive(Default)]
pub struct MemoryLock {
    held: Mutex<HashMap<String, (u64, String)>>,
}

impl ClaimLock for MemoryLock {
    fn acquire<'a>(&'a self, claim: &'a ClaimRequest) -> BoxFuture<'a, Result<(), String>> {
        let mut held = lock(&self.held);
        let r = match held.get(&claim.key) {
            Some((session, client)) if *session != claim.session => Err(format!(
                "{} is held by {client}; it is released when that daemon stops it or disconnects",
                claim.key
            )),
            _ => {
                held.insert(claim.key.clone(), (claim.session, claim.client.clone()));
                Ok(())
            }
        };
        future::ready(r).boxed()
    }

    fn publish<'a>(&'a self, _claim: &'a ClaimRequest) -> BoxFuture<'a, Result<(), String>> {
        future::ready(Ok(())).boxed()
    }

    fn renew<'a>(&'a self, _claim: &'a ClaimRequest) -> BoxFuture<'a, Result<(), String>> {
        future::ready(Ok(())).boxed()
    }

    fn release(&self, claim: &ClaimRequest) -> BoxFuture<'static, ()> {
        let mut held = lock(&self.held);
        if held
            .get(&claim.key)
            .is_some_and(|(s, _)| *s == claim.session)
        {
            held.remove(&claim.key);
        }
        future::ready(()).boxed()
    }

    fn renew_every(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(session: u64) -> ClaimRequest {
        ClaimRequest {
            key: "ns/rev".into(),
            namespace: "ns".into(),
            name: "rev".into(),
            service: "rev".into(),
            session,
            client: format!("daemon-{session}"),
            ports: vec![],
            adhoc: false,
        }
    }

    #[tokio::test]
    async fn one_session_holds_a_key_until_it_releases() {
        let l = MemoryLock::default();
        assert_eq!(l.acquire(&req(1)).await, Ok(()));
        assert_eq!(l.acquire(&req(1)).await, Ok(()), "again by the holder");
        let refused = l.acquire(&req(2)).await.err().unwrap_or_default();
        assert!(refused.contains("held by daemon-1"), "{refused}");
        l.release(&req(2)).await;
        assert!(
            l.acquire(&req(2)).await.is_err(),
            "only the holder releases"
        );
        l.release(&req(1)).await;
        assert_eq!(l.acquire(&req(2)).await, Ok(()));
    }
}
