//! Reverse claims across replicas (Kubernetes runtime).
//!
//! A claim is a `coordination.k8s.io/v1` Lease in the server's namespace,
//! named after the reverse service ([`lease_name`]), held by
//! `<pod>/session-<n>`: this replica and the daemon session. The holding
//! replica renews it every third of its duration; a replica that dies stops
//! renewing and the claim is free once the Lease expires. Every write
//! carries the `resourceVersion` it read, so two replicas racing for one
//! service cannot both win: the loser gets `409 Conflict`, reads again and
//! is refused with the winner's name.
//!
//! While held, the service's cluster traffic goes to the holding replica:
//! an EndpointSlice of the (selectorless) Service with this pod's IP and
//! the service's ports, deleted on release. A Service missing (ad hoc,
//! `netmux expose`) is created, selectorless and hidden from netmux's own
//! catalog (`nx: "[]"`).
//!
//! Split by concern: which Lease wins is decided by the sans-IO [`decide`]
//! (`decision`); the objects' names come from `names`; the Service and
//! EndpointSlice that route a held claim from `route`; the API calls' error
//! handling and guarded deletes from `api`. This file takes, renews and
//! releases.

mod api;
mod decision;
mod names;
mod route;

pub(crate) use decision::{decide, describe, Decision};
pub use names::{lease_name, object_name, slice_name};
pub(crate) use route::replica_endpoint;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use netmux_common::sync::lock;

use api::{api_error, code, delete_if};

use super::lock::{ClaimLock, ClaimRequest};

/// Label on every object netmux writes.
pub(crate) const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub(crate) const MANAGED_BY_VALUE: &str = "netmux";
/// The EndpointSlice controller label (keeps the built-in controller off).
pub(crate) const SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Its value.
pub(crate) const SLICE_MANAGED_BY_VALUE: &str = "netmux-server";
/// Annotation: holder identity on an EndpointSlice.
pub(crate) const HOLDER: &str = "netmux.io/holder";
/// Annotation: the claiming daemon on a Lease (for refusals).
pub(crate) const CLIENT: &str = "netmux.io/client";
/// Annotation: the catalog key a Lease stands for.
pub(crate) const SERVICE: &str = "netmux.io/service";

/// How many times a write that lost a race is retried after reading again.
const ATTEMPTS: usize = 3;

/// Where and as whom this replica claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseOptions {
    /// Namespace of the Leases: the server's own.
    pub namespace: String,
    /// This replica: its pod name.
    pub replica: String,
    /// This pod's IP, written into EndpointSlices; `None`: not routed.
    pub pod_ip: Option<IpAddr>,
    /// How long a Lease outlives its last renewal (whole seconds, >= 1).
    pub duration: Duration,
}

/// Default Lease duration: a dead replica's claims are free within this.
pub(crate) const DEFAULT_DURATION: Duration = Duration::from_secs(15);

impl LeaseOptions {
    /// From the pod's environment (`POD_NAME`, `POD_IP` from the downward
    /// API; `HOSTNAME` as fallback) and the client's default namespace.
    pub(crate) fn from_env(client: &Client) -> Self {
        let replica = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "netmux-server".to_owned());
        let pod_ip = std::env::var("POD_IP").ok().and_then(|ip| ip.parse().ok());
        LeaseOptions {
            namespace: client.default_namespace().to_owned(),
            replica,
            pod_ip,
            duration: DEFAULT_DURATION,
        }
    }
}

struct Held {
    identity: String,
    /// Last confirmed renewal.
    renewed: Instant,
}

/// Claims through Leases, traffic through EndpointSlices.
pub struct LeaseLock {
    client: Client,
    leases: Api<Lease>,
    options: LeaseOptions,
    /// Lease name → the session of this replica holding (or taking) it.
    held: Arc<Mutex<HashMap<String, Held>>>,
}

impl LeaseLock {
    /// Leases in `options.namespace` through `client`.
    pub fn new(client: Client, options: LeaseOptions) -> Self {
        LeaseLock {
            leases: Api::namespaced(client.clone(), &options.namespace),
            client,
            options,
            held: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// `<replica>/session-<n>`.
    pub(crate) fn identity(&self, session: u64) -> String {
        format!("{}/session-{session}", self.options.replica)
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.options.duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1)
    }

    fn lease(
        &self,
        name: &str,
        claim: &ClaimRequest,
        me: &str,
        now: Timestamp,
        taken: &Decision,
    ) -> Lease {
        let (rv, transitions) = taken.write_version();
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(self.options.namespace.clone()),
                resource_version: rv,
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.to_owned(),
                    MANAGED_BY_VALUE.to_owned(),
                )])),
                annotations: Some(BTreeMap::from([
                    (CLIENT.to_owned(), claim.client.clone()),
                    (SERVICE.to_owned(), claim.key.clone()),
                ])),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(me.to_owned()),
                lease_duration_seconds: Some(self.duration_secs()),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        }
    }

    async fn take(&self, name: &str, claim: &ClaimRequest, me: &str) -> Result<(), String> {
        let pp = PostParams::default();
        let whose = format!("Lease {}/{name}", self.options.namespace);
        let needs = "get/create/update on leases (coordination.k8s.io) in its namespace";
        for _ in 0..ATTEMPTS {
            let current = self
                .leases
                .get_opt(name)
                .await
                .map_err(|e| api_error(&format!("cannot read {whose}"), needs, &e))?;
            let now = Timestamp::now();
            let decision = decide(current.as_ref(), me, &self.options.replica, now);
            let lease = self.lease(name, claim, me, now, &decision);
            let written = match &decision {
                Decision::Held { by } => {
                    return Err(format!(
                        "{} is held by {by}; it is released when that daemon stops it or disconnects, or when its replica stops renewing {whose}",
                        claim.key
                    ))
                }
                Decision::Create => self.leases.create(&pp, &lease).await,
                Decision::Take { .. } => self.leases.replace(name, &pp, &lease).await,
            };
            match written {
                Ok(_) => return Ok(()),
                // Someone wrote (or deleted) it since we read: read again.
                Err(e) if matches!(code(&e), Some(404 | 409)) => continue,
                Err(e) => return Err(api_error(&format!("cannot write {whose}"), needs, &e)),
            }
        }
        Err(format!(
            "{}: {whose} kept changing while we tried to take it; try again",
            claim.key
        ))
    }
}

impl ClaimLock for LeaseLock {
    fn acquire<'a>(&'a self, claim: &'a ClaimRequest) -> BoxFuture<'a, Result<(), String>> {
        async move {
            if claim.adhoc {
                self.refuse_foreign_service(claim).await?;
            }
            let name = lease_name(&claim.namespace, &claim.name);
            let me = self.identity(claim.session);
            {
                let mut held = lock(&self.held);
                match held.get(&name) {
                    Some(h) if h.identity != me => {
                        return Err(format!(
                            "{} is being claimed by another daemon on this replica",
                            claim.key
                        ))
                    }
                    _ => {
                        held.insert(
                            name.clone(),
                            Held {
                                identity: me.clone(),
                                renewed: Instant::now(),
                            },
                        );
                    }
                }
            }
            let r = self.take(&name, claim, &me).await;
            match &r {
                Ok(()) => {
                    tracing::info!(service = %claim.key, lease = %format!("{}/{name}", self.options.namespace), holder = %me, "reverse claim leased")
                }
                Err(_) => {
                    let mut held = lock(&self.held);
                    if held.get(&name).is_some_and(|h| h.identity == me) {
                        held.remove(&name);
                    }
                }
            }
            r
        }
        .boxed()
    }

    fn publish<'a>(&'a self, claim: &'a ClaimRequest) -> BoxFuture<'a, Result<(), String>> {
        async move {
            match self.options.pod_ip {
                Some(ip) => self.route(claim, ip).await,
                None => {
                    tracing::warn!(service = %claim.key, "POD_IP is not set: cluster traffic for it is not routed to this replica");
                    Ok(())
                }
            }
        }
        .boxed()
    }

    fn renew<'a>(&'a self, claim: &'a ClaimRequest) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let name = lease_name(&claim.namespace, &claim.name);
            let me = self.identity(claim.session);
            let pp = PostParams::default();
            let outcome = match self.leases.get_opt(&name).await {
                Ok(None) => return Err(format!("its Lease {name} was deleted")),
                Ok(Some(lease)) => {
                    let holder = lease
                        .spec
                        .as_ref()
                        .and_then(|s| s.holder_identity.as_deref());
                    if holder != Some(me.as_str()) {
                        return Err(format!("it is now held by {}", describe(&lease)));
                    }
                    let mut renewed = lease;
                    if let Some(spec) = renewed.spec.as_mut() {
                        spec.renew_time = Some(MicroTime(Timestamp::now()));
                        spec.lease_duration_seconds = Some(self.duration_secs());
                    }
                    self.leases
                        .replace(&name, &pp, &renewed)
                        .await
                        .map(|_| ())
                }
                Err(e) => Err(e),
            };
            let mut held = lock(&self.held);
            let Some(h) = held.get_mut(&name).filter(|h| h.identity == me) else {
                return Err("released on this replica".to_owned());
            };
            match outcome {
                Ok(()) => {
                    h.renewed = Instant::now();
                    Ok(())
                }
                Err(e) if h.renewed.elapsed() >= self.options.duration => Err(format!(
                    "its Lease {name} could not be renewed for {:?} ({e}); another replica may hold it now",
                    self.options.duration
                )),
                Err(e) => {
                    tracing::warn!(service = %claim.key, error = %e, "cannot renew the Lease; retrying");
                    Ok(())
                }
            }
        }
        .boxed()
    }

    fn release(&self, claim: &ClaimRequest) -> BoxFuture<'static, ()> {
        let name = lease_name(&claim.namespace, &claim.name);
        let me = self.identity(claim.session);
        {
            let mut held = lock(&self.held);
            if held.get(&name).is_some_and(|h| h.identity == me) {
                held.remove(&name);
            }
        }
        let leases = self.leases.clone();
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &claim.namespace);
        let slice = slice_name(&claim.name);
        let held = self.held.clone();
        let key = claim.key.clone();
        async move {
            // Taken again by the same session meanwhile: keep everything.
            let retaken = || lock(&held).get(&name).is_some_and(|h| h.identity == me);
            delete_if(&slices, &slice, |s: &EndpointSlice| {
                !retaken()
                    && s.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(HOLDER))
                        .is_some_and(|h| *h == me)
            })
            .await;
            delete_if(&leases, &name, |l: &Lease| {
                !retaken()
                    && l.spec
                        .as_ref()
                        .and_then(|s| s.holder_identity.as_deref())
                        .is_some_and(|h| h == me)
            })
            .await;
            tracing::info!(service = %key, "reverse claim's Lease released");
        }
        .boxed()
    }

    fn renew_every(&self) -> Option<Duration> {
        Some(self.options.duration / 3)
    }
}
