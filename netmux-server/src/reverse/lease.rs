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
//! Which Lease wins is decided by the sans-IO [`decide`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ObjectReference, Service as KService, ServicePort as KServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::{Api, Client};
use netmux_common::proto::catalog::Protocol;
use netmux_common::sync::lock;

use super::lock::{ClaimLock, ClaimRequest};

/// Label on every object netmux writes.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY_VALUE: &str = "netmux";
/// The EndpointSlice controller label (keeps the built-in controller off).
pub const SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Its value.
pub const SLICE_MANAGED_BY_VALUE: &str = "netmux-server";
/// Annotation: holder identity on an EndpointSlice.
pub const HOLDER: &str = "netmux.io/holder";
/// Annotation: the claiming daemon on a Lease (for refusals).
pub const CLIENT: &str = "netmux.io/client";
/// Annotation: the catalog key a Lease stands for.
pub const SERVICE: &str = "netmux.io/service";

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
pub const DEFAULT_DURATION: Duration = Duration::from_secs(15);

impl LeaseOptions {
    /// From the pod's environment (`POD_NAME`, `POD_IP` from the downward
    /// API; `HOSTNAME` as fallback) and the client's default namespace.
    pub fn from_env(client: &Client) -> Self {
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

/// A valid DNS-1123 label `prefix-part-part...`: lower-cased, other
/// characters replaced by `-`; when that changed anything or the result
/// is longer than 63, shortened and suffixed with a hash of the parts, so
/// distinct inputs keep distinct names.
pub fn object_name(prefix: &str, parts: &[&str]) -> String {
    const MAX: usize = 63;
    let raw = std::iter::once(prefix)
        .chain(parts.iter().copied())
        .collect::<Vec<_>>()
        .join("-");
    let clean: String = raw
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let clean = clean.trim_matches('-').to_owned();
    if clean == raw && clean.len() <= MAX {
        return clean;
    }
    // FNV-1a: stable across builds and replicas, unlike std's hasher.
    let hash = raw.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let suffix = format!("-{:08x}", hash as u32);
    let keep = MAX - suffix.len();
    let head: String = clean.chars().take(keep).collect();
    format!("{}{suffix}", head.trim_end_matches('-'))
}

/// The Lease standing for catalog entry `namespace/name`.
pub fn lease_name(namespace: &str, name: &str) -> String {
    object_name("netmux-c2l", &[namespace, name])
}

/// The EndpointSlice (in the entry's namespace) routing entry `name`.
pub fn slice_name(name: &str) -> String {
    object_name("netmux-c2l", &[name])
}

/// What to do with a Lease, as [`decide`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// There is none: create it.
    Create,
    /// It is free (expired, cleared, already ours, or left by an earlier
    /// session of this replica): replace it at this version.
    Take {
        /// The version read; the write fails if it changed since.
        resource_version: String,
        /// Holder changes so far, to count this one.
        transitions: i32,
        /// Whether the holder changes.
        new_holder: bool,
    },
    /// Someone else holds it.
    Held {
        /// Who, for the refusal.
        by: String,
    },
}

/// When `lease` stops being valid: renewal (or acquisition) time plus its
/// duration; `None` if it says neither.
pub fn expiry(lease: &Lease) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    let since = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
    let secs = spec.lease_duration_seconds?;
    since
        .0
        .checked_add(SignedDuration::from_secs(i64::from(secs)))
        .ok()
}

/// The holder of `lease` as people read it: the daemon and the replica.
pub fn describe(lease: &Lease) -> String {
    let holder = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or("nobody");
    let replica = holder.split('/').next().unwrap_or(holder);
    match lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CLIENT))
    {
        Some(client) => format!("{client} through replica {replica}"),
        None => holder.to_owned(),
    }
}

/// Decides whether `me` (`<replica>/session-<n>`) may take `lease` at
/// `now`. A holder of the same replica other than `me` is stale: the
/// caller reserved the service locally first, so no live session of this
/// replica holds it.
pub fn decide(lease: Option<&Lease>, me: &str, replica: &str, now: Timestamp) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or("");
    let free = holder.is_empty()
        || holder == me
        || holder.split_once('/').is_some_and(|(r, _)| r == replica)
        || expiry(lease).is_none_or(|until| until <= now);
    match (&lease.metadata.resource_version, free) {
        (Some(rv), true) => Decision::Take {
            resource_version: rv.clone(),
            transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
            new_holder: holder != me,
        },
        (None, true) => Decision::Held {
            by: "an unknown holder (the Lease has no resourceVersion)".to_owned(),
        },
        (_, false) => Decision::Held {
            by: describe(lease),
        },
    }
}

/// HTTP status of an API error, if the API server answered.
fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// What the API said, with what the server's account may lack on 403.
fn api_error(what: &str, needs: &str, e: &kube::Error) -> String {
    if code(e) == Some(403) {
        format!("{what}: {e}; the server's account needs {needs}")
    } else {
        format!("{what}: {e}")
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
    pub fn identity(&self, session: u64) -> String {
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
        let (rv, transitions) = match taken {
            Decision::Take {
                resource_version,
                transitions,
                new_holder,
            } => (
                Some(resource_version.clone()),
                transitions.saturating_add(i32::from(*new_holder)),
            ),
            _ => (None, 0),
        };
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

    fn service_for(&self, claim: &ClaimRequest) -> KService {
        KService {
            metadata: ObjectMeta {
                name: Some(claim.service.clone()),
                namespace: Some(claim.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.to_owned(),
                    MANAGED_BY_VALUE.to_owned(),
                )])),
                // netmux serves it itself; its runtimes must not publish it
                // again as an L2C service.
                annotations: Some(BTreeMap::from([("nx".to_owned(), "[]".to_owned())])),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(
                    claim
                        .ports
                        .iter()
                        .map(|p| KServicePort {
                            name: p.name.clone(),
                            port: i32::from(p.port),
                            target_port: Some(IntOrString::Int(i32::from(p.port))),
                            protocol: Some(protocol(p.protocol).to_owned()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn slice_for(
        &self,
        claim: &ClaimRequest,
        ip: IpAddr,
        me: &str,
        owner: Option<&KService>,
    ) -> EndpointSlice {
        let owner = owner.and_then(|s| {
            Some(OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Service".to_owned(),
                name: s.metadata.name.clone()?,
                uid: s.metadata.uid.clone()?,
                ..Default::default()
            })
        });
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(slice_name(&claim.name)),
                namespace: Some(claim.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (
                        "kubernetes.io/service-name".to_owned(),
                        claim.service.clone(),
                    ),
                    (
                        SLICE_MANAGED_BY.to_owned(),
                        SLICE_MANAGED_BY_VALUE.to_owned(),
                    ),
                    (MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned()),
                ])),
                annotations: Some(BTreeMap::from([
                    (HOLDER.to_owned(), me.to_owned()),
                    (SERVICE.to_owned(), claim.key.clone()),
                ])),
                owner_references: owner.map(|o| vec![o]),
                ..Default::default()
            },
            address_type: if ip.is_ipv4() { "IPv4" } else { "IPv6" }.to_owned(),
            endpoints: Some(vec![Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".to_owned()),
                    name: Some(self.options.replica.clone()),
                    namespace: Some(self.options.namespace.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ports: Some(
                claim
                    .ports
                    .iter()
                    .map(|p| EndpointPort {
                        name: p.name.clone(),
                        port: Some(i32::from(p.port)),
                        protocol: Some(protocol(p.protocol).to_owned()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    /// `netmux expose NAME` may use a Service NAME only if netmux made it:
    /// anyone else's Service would get this replica in its EndpointSlices.
    async fn refuse_foreign_service(&self, claim: &ClaimRequest) -> Result<(), String> {
        let services: Api<KService> = Api::namespaced(self.client.clone(), &claim.namespace);
        let svc_name = format!("Service {}/{}", claim.namespace, claim.service);
        match services.get_opt(&claim.service).await {
            Ok(None) => Ok(()),
            Ok(Some(s)) if is_managed(&s.metadata) => Ok(()),
            Ok(Some(_)) => Err(format!(
                "{svc_name} exists and netmux does not manage it (no label {MANAGED_BY}={MANAGED_BY_VALUE}); exposing under its name would send its traffic here; fix: choose another name"
            )),
            Err(e) => Err(api_error(
                &format!("cannot read {svc_name}"),
                "get on services there",
                &e,
            )),
        }
    }

    async fn route(&self, claim: &ClaimRequest, ip: IpAddr) -> Result<(), String> {
        let pp = PostParams::default();
        let services: Api<KService> = Api::namespaced(self.client.clone(), &claim.namespace);
        let svc_name = format!("Service {}/{}", claim.namespace, claim.service);
        let svc = match services.get_opt(&claim.service).await {
            Ok(Some(s)) => Some(s),
            Ok(None) => match services.create(&pp, &self.service_for(claim)).await {
                Ok(s) => {
                    tracing::info!(service = %claim.key, "created selectorless {svc_name}");
                    Some(s)
                }
                // Created by another replica meanwhile: fine.
                Err(e) if code(&e) == Some(409) => None,
                Err(e) => {
                    return Err(api_error(
                        &format!("cannot create {svc_name}"),
                        "create on services there",
                        &e,
                    ))
                }
            },
            Err(e) => {
                return Err(api_error(
                    &format!("cannot read {svc_name}"),
                    "get on services there",
                    &e,
                ))
            }
        };
        if let Some(sel) = svc
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.selector.as_ref())
            .filter(|s| !s.is_empty())
        {
            tracing::warn!(service = %claim.key, selector = ?sel, "{svc_name} has a selector: its traffic also goes to pods that do not hold the claim; remove the selector");
        }
        let me = self.identity(claim.session);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &claim.namespace);
        let mut slice = self.slice_for(claim, ip, &me, svc.as_ref());
        let name = slice_name(&claim.name);
        let whose = format!("EndpointSlice {}/{name}", claim.namespace);
        let needs = "create/update on endpointslices (discovery.k8s.io) there";
        for _ in 0..ATTEMPTS {
            let written = match slices.get_opt(&name).await {
                Ok(None) => slices.create(&pp, &slice).await,
                Ok(Some(current)) => {
                    // We hold the Lease: whatever is there is stale.
                    slice.metadata.resource_version = current.metadata.resource_version;
                    slices.replace(&name, &pp, &slice).await
                }
                Err(e) => return Err(api_error(&format!("cannot read {whose}"), needs, &e)),
            };
            match written {
                Ok(_) => {
                    tracing::info!(service = %claim.key, %ip, "{whose} routes the service to this replica");
                    return Ok(());
                }
                Err(e) if matches!(code(&e), Some(404 | 409)) => continue,
                Err(e) => return Err(api_error(&format!("cannot write {whose}"), needs, &e)),
            }
        }
        Err(format!("{whose} kept changing; try again"))
    }
}

/// Whether netmux wrote the object (`app.kubernetes.io/managed-by`).
fn is_managed(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY))
        .is_some_and(|v| v == MANAGED_BY_VALUE)
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

/// Deletes `name` while `ours` says it is still this claim's, at the version
/// read (a newer claim's object is left alone).
async fn delete_if<K>(api: &Api<K>, name: &str, ours: impl Fn(&K) -> bool)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for _ in 0..ATTEMPTS {
        let current = match api.get_opt(name).await {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%name, error = %e, "cannot read an object to release it; it expires or is replaced by the next holder");
                return;
            }
        };
        if !ours(&current) {
            return;
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: current.meta().resource_version.clone(),
                uid: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => return,
            Err(e) if code(&e) == Some(404) => return,
            Err(e) if code(&e) == Some(409) => continue,
            Err(e) => {
                tracing::warn!(%name, error = %e, "cannot delete on release; it expires or is replaced by the next holder");
                return;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: &str, secs: i32, rv: &str) -> Lease {
        let t: Timestamp = renewed.parse().unwrap_or_default();
        Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                resource_version: Some(rv.into()),
                annotations: Some(BTreeMap::from([(
                    CLIENT.into(),
                    "alice (1.2.3.4:5)".into(),
                )])),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(secs),
                renew_time: Some(MicroTime(t)),
                lease_transitions: Some(2),
                ..Default::default()
            }),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap_or_default()
    }

    #[test]
    fn names_are_dns_labels_and_distinct() {
        assert_eq!(lease_name("ns", "rev"), "netmux-c2l-ns-rev");
        let long = lease_name("a-namespace-with-a-long-name", &"x".repeat(60));
        assert!(long.len() <= 63, "{long}");
        assert_ne!(
            long,
            lease_name("a-namespace-with-a-long-name", &"x".repeat(61))
        );
        let dotted = slice_name("kafka.0");
        assert!(dotted.starts_with("netmux-c2l-kafka-0-"), "{dotted}");
        assert_ne!(dotted, slice_name("kafka-0"));
        for n in [long, dotted] {
            assert!(n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            assert!(!n.starts_with('-') && !n.ends_with('-'));
        }
    }

    #[test]
    fn a_valid_lease_of_another_replica_is_held() {
        let l = lease("pod-a/session-1", "2024-01-01T00:00:00Z", 15, "7");
        let d = decide(
            Some(&l),
            "pod-b/session-3",
            "pod-b",
            at("2024-01-01T00:00:10Z"),
        );
        assert_eq!(
            d,
            Decision::Held {
                by: "alice (1.2.3.4:5) through replica pod-a".into()
            }
        );
    }

    #[test]
    fn an_expired_lease_is_taken_and_counted() {
        let l = lease("pod-a/session-1", "2024-01-01T00:00:00Z", 15, "7");
        let d = decide(
            Some(&l),
            "pod-b/session-3",
            "pod-b",
            at("2024-01-01T00:00:15Z"),
        );
        assert_eq!(
            d,
            Decision::Take {
                resource_version: "7".into(),
                transitions: 2,
                new_holder: true
            }
        );
    }

    #[test]
    fn own_and_stale_same_replica_leases_are_taken() {
        let l = lease("pod-b/session-1", "2024-01-01T00:00:00Z", 15, "7");
        let now = at("2024-01-01T00:00:01Z");
        assert!(matches!(
            decide(Some(&l), "pod-b/session-1", "pod-b", now),
            Decision::Take {
                new_holder: false,
                ..
            }
        ));
        assert!(matches!(
            decide(Some(&l), "pod-b/session-2", "pod-b", now),
            Decision::Take {
                new_holder: true,
                ..
            }
        ));
        assert_eq!(
            decide(None, "pod-b/session-2", "pod-b", now),
            Decision::Create
        );
    }

    #[test]
    fn a_lease_without_times_or_version_is_handled() {
        let mut l = lease("pod-a/session-1", "2024-01-01T00:00:00Z", 15, "7");
        if let Some(s) = l.spec.as_mut() {
            s.renew_time = None;
        }
        assert!(matches!(
            decide(
                Some(&l),
                "pod-b/session-1",
                "pod-b",
                at("2024-01-01T00:00:01Z")
            ),
            Decision::Take { .. }
        ));
        l.metadata.resource_version = None;
        assert!(matches!(
            decide(
                Some(&l),
                "pod-b/session-1",
                "pod-b",
                at("2024-01-01T00:00:01Z")
            ),
            Decision::Held { .. }
        ));
    }
}
