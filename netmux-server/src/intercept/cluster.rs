//! An intercept's objects in the cluster: a Lease per intercepted Service
//! (which replica routes it, renewed while it does), the Service itself
//! (selector removed and recorded, [`super::record`]), and an EndpointSlice
//! sending its traffic to this replica. Restore undoes them in the reverse
//! order: the Service first (so the EndpointSlice controller publishes the
//! pods again), this replica's slice once the pods' slices are back, the
//! Lease last. Any replica restores a Service whose Lease expired
//! ([`Cluster::sweep`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Pod, Service as KService};
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::Value;

use netmux_common::proto::replaced::Replaced;

use super::record;

mod replace;
use crate::reverse::lease::{
    decide, describe, object_name, replica_endpoint, Decision, CLIENT, HOLDER, MANAGED_BY,
    MANAGED_BY_VALUE, SERVICE, SLICE_MANAGED_BY, SLICE_MANAGED_BY_VALUE,
};

/// Label on intercept Leases (what [`Cluster::sweep`] lists).
pub use netmux_common::proto::replaced::LEASE_LABEL;
/// Annotation on intercept Leases: the holder's replica endpoint
/// (`ip:port`), where other replicas register their users' intercepts.
pub const REPLICA_ADDRESS: &str = "netmux.dev/replica-address";

/// Why [`Cluster::take`] did not take a Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeError {
    /// Another replica holds it.
    Held {
        /// Who, for the refusal.
        by: String,
        /// Its replica endpoint, if it advertises one.
        address: Option<std::net::SocketAddr>,
    },
    /// The API server refused or failed (the message says which).
    Failed(String),
}

impl std::fmt::Display for TakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TakeError::Held { by, .. } => f.write_str(by),
            TakeError::Failed(e) => f.write_str(e),
        }
    }
}

impl From<String> for TakeError {
    fn from(e: String) -> Self {
        TakeError::Failed(e)
    }
}
/// The EndpointSlice label naming its Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// How many times a write that lost a race is retried after reading again.
const ATTEMPTS: usize = 3;
/// How long a restore waits for the pods' EndpointSlices to come back
/// before deleting this replica's (so the Service is never without
/// endpoints when the controller is quick).
const SLICES_BACK: Duration = Duration::from_secs(3);

/// One Service port as this replica's EndpointSlice publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    /// The Service port's name (kube-proxy matches slice ports by name).
    pub name: Option<String>,
    /// Where this replica listens for it.
    pub port: u16,
}

/// The Lease of intercepted Service `ns/name`.
pub fn lease_name(ns: &str, name: &str) -> String {
    object_name("netmux-icpt", &[ns, name])
}

/// This replica's EndpointSlice for intercepted Service `name`.
pub fn slice_name(name: &str) -> String {
    object_name("netmux-icpt", &[name])
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

fn api_error(what: &str, needs: &str, e: &kube::Error) -> String {
    if code(e) == Some(403) {
        format!("{what}: {e}; the server's account needs {needs} (manifests/overlays/*: its Role, and manifests/base/rbac-leases.yaml)")
    } else {
        format!("{what}: {e}")
    }
}

/// The Kubernetes side of intercepts, for one replica.
pub struct Cluster {
    client: Client,
    leases: Api<Lease>,
    /// The server's namespace (Leases).
    namespace: String,
    /// This replica (pod name).
    replica: String,
    /// This pod's IP: where intercepted Services' traffic is sent.
    pod_ip: Option<IpAddr>,
    /// Lease duration.
    ttl: Duration,
    /// This replica's endpoint for other replicas, written on its Leases.
    address: std::sync::OnceLock<std::net::SocketAddr>,
}

impl Cluster {
    /// Intercepts through `client`, Leases in `options.namespace`.
    pub fn new(
        client: Client,
        options: &crate::reverse::lease::LeaseOptions,
        ttl: Duration,
    ) -> Self {
        Cluster {
            leases: Api::namespaced(client.clone(), &options.namespace),
            client,
            namespace: options.namespace.clone(),
            replica: options.replica.clone(),
            pod_ip: options.pod_ip,
            ttl,
            address: std::sync::OnceLock::new(),
        }
    }

    /// Advertises this replica's endpoint on the Leases it writes.
    pub fn advertise(&self, address: std::net::SocketAddr) {
        let _ = self.address.set(address);
    }

    /// This replica's holder identity on intercept Leases.
    pub fn me(&self) -> String {
        format!("{}/intercept", self.replica)
    }

    /// This replica's pod name.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Where this replica listens for intercepted traffic.
    pub fn pod_ip(&self) -> Result<IpAddr, String> {
        self.pod_ip.ok_or_else(|| {
            "this server does not know its pod IP (POD_IP from the downward API, as in manifests/base/deployment.yaml): intercepted traffic could not reach it".to_owned()
        })
    }

    fn ttl_secs(&self) -> i32 {
        i32::try_from(self.ttl.as_secs()).unwrap_or(i32::MAX).max(1)
    }

    fn lease(&self, ns: &str, svc: &str, who: &str, decision: &Decision) -> Lease {
        let annotations = [
            (CLIENT.to_owned(), who.to_owned()),
            (SERVICE.to_owned(), format!("{ns}/{svc}")),
        ]
        .into_iter()
        .chain(
            self.address
                .get()
                .map(|a| (REPLICA_ADDRESS.to_owned(), a.to_string())),
        )
        .collect();
        self.lease_named(lease_name(ns, svc), annotations, decision)
    }

    /// An intercept Lease (labelled for [`Self::sweep`]) named `name`,
    /// held by this replica, carrying `annotations`.
    fn lease_named(
        &self,
        name: String,
        annotations: BTreeMap<String, String>,
        decision: &Decision,
    ) -> Lease {
        let now = MicroTime(Timestamp::now());
        let (rv, transitions) = decision.write_version();
        Lease {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.namespace.clone()),
                resource_version: rv,
                labels: Some(BTreeMap::from([
                    (MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned()),
                    (LEASE_LABEL.to_owned(), "true".to_owned()),
                ])),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.me()),
                lease_duration_seconds: Some(self.ttl_secs()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        }
    }

    /// Lease `name` (`whose`, for errors) as it is now, and what this
    /// replica may do with it.
    async fn lease_decision(
        &self,
        name: &str,
        whose: &str,
        needs: &str,
    ) -> Result<(Option<Lease>, Decision), String> {
        let current = self
            .leases
            .get_opt(name)
            .await
            .map_err(|e| api_error(&format!("cannot read {whose}"), needs, &e))?;
        let decision = decide(
            current.as_ref(),
            &self.me(),
            &self.replica,
            Timestamp::now(),
        );
        Ok((current, decision))
    }

    /// Takes (or renews) the Lease of Service `ns/svc` for this replica;
    /// `who` describes its intercepts for others' refusals. Refused with
    /// the holder's description while another replica holds it.
    pub async fn take(&self, ns: &str, svc: &str, who: &str) -> Result<(), TakeError> {
        let name = lease_name(ns, svc);
        let whose = format!("Lease {}/{name}", self.namespace);
        let needs = "get/create/update on leases (coordination.k8s.io) in its namespace";
        let pp = PostParams::default();
        for _ in 0..ATTEMPTS {
            let (current, decision) = self.lease_decision(&name, &whose, needs).await?;
            let lease = self.lease(ns, svc, who, &decision);
            let written = match &decision {
                Decision::Held { by } => {
                    let address = current
                        .as_ref()
                        .and_then(|l| l.metadata.annotations.as_ref())
                        .and_then(|a| a.get(REPLICA_ADDRESS))
                        .and_then(|a| a.parse().ok());
                    return Err(TakeError::Held {
                        by: format!("Service {ns}/{svc} is intercepted by {by}"),
                        address,
                    });
                }
                Decision::Create => self.leases.create(&pp, &lease).await.map(|_| ()),
                Decision::Take { .. } => self.leases.replace(&name, &pp, &lease).await.map(|_| ()),
            };
            match written {
                Ok(()) => return Ok(()),
                Err(e) if matches!(code(&e), Some(404 | 409)) => continue,
                Err(e) => return Err(api_error(&format!("cannot write {whose}"), needs, &e).into()),
            }
        }
        Err(format!("{whose} kept changing while this replica took it; try again").into())
    }

    fn services(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            ns,
            &ApiResource::erase::<KService>(&()),
        )
    }

    /// Service `ns/svc` as JSON.
    pub async fn service(&self, ns: &str, svc: &str) -> Result<Value, String> {
        let obj = self
            .services(ns)
            .get_opt(svc)
            .await
            .map_err(|e| {
                api_error(
                    &format!("cannot read Service {ns}/{svc}"),
                    "get on services there",
                    &e,
                )
            })?
            .ok_or_else(|| format!("there is no Service {ns}/{svc}"))?;
        serde_json::to_value(&obj).map_err(|e| format!("Service {ns}/{svc}: {e}"))
    }

    /// Rewrites `service` (read just before) with `change`, at the version
    /// read; reads again on a conflict.
    async fn rewrite(
        &self,
        ns: &str,
        svc: &str,
        mut service: Value,
        change: impl Fn(&Value) -> Result<Option<Value>, String>,
    ) -> Result<(), String> {
        let api = self.services(ns);
        let pp = PostParams::default();
        for _ in 0..ATTEMPTS {
            let Some(new) = change(&service)? else {
                return Ok(());
            };
            let obj: DynamicObject =
                serde_json::from_value(new).map_err(|e| format!("Service {ns}/{svc}: {e}"))?;
            match api.replace(svc, &pp, &obj).await {
                Ok(_) => return Ok(()),
                Err(e) if code(&e) == Some(409) => service = self.service(ns, svc).await?,
                Err(e) => {
                    return Err(api_error(
                        &format!("cannot update Service {ns}/{svc}"),
                        "update on services there",
                        &e,
                    ))
                }
            }
        }
        Err(format!("Service {ns}/{svc} kept changing; try again"))
    }

    /// Sends Service `ns/svc`'s traffic to this replica: its slice first,
    /// then the selector recorded and removed (with the workloads a replace
    /// intercept stops, `stopped`). Returns the Service as read before (its
    /// ports, its records).
    pub async fn divert(
        &self,
        ns: &str,
        svc: &str,
        ports: &[SlicePort],
        holder: &str,
        stopped: &[Replaced],
    ) -> Result<Value, String> {
        let service = self.service(ns, svc).await?;
        let key = format!("{ns}/{svc}");
        record::pod_selector(&key, &service).map_err(|e| e.to_string())?;
        self.write_slice(ns, svc, ports).await?;
        self.rewrite(ns, svc, service.clone(), |s| {
            record::divert(&key, s, holder, stopped)
                .map(Some)
                .map_err(|e| e.to_string())
        })
        .await?;
        tracing::info!(service = %key, "Service diverted to this replica (selector recorded in {})", record::ORIGINAL);
        Ok(service)
    }

    /// Diverts Service `ns/svc` again if something undid it while this
    /// replica still routes it (a `kubectl apply` putting the selector
    /// back, another replica that restored it while this one could not
    /// renew, a deleted slice); `Ok(true)` when it had to.
    pub async fn ensure_diverted(
        &self,
        ns: &str,
        svc: &str,
        ports: &[SlicePort],
        holder: &str,
        stopped: &[Replaced],
    ) -> Result<bool, String> {
        let service = self.service(ns, svc).await?;
        let diverted = record::is_diverted(&format!("{ns}/{svc}"), &service, stopped);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let slice = slices
            .get_opt(&slice_name(svc))
            .await
            .map_err(|e| format!("cannot read EndpointSlice {ns}/{}: {e}", slice_name(svc)))?;
        if diverted && slice.is_some() {
            return Ok(false);
        }
        tracing::warn!(service = %format!("{ns}/{svc}"), diverted, slice = slice.is_some(), "an intercepted Service was changed under netmux; diverting it again");
        self.divert(ns, svc, ports, holder, stopped).await?;
        Ok(true)
    }

    async fn write_slice(&self, ns: &str, svc: &str, ports: &[SlicePort]) -> Result<(), String> {
        let ip = self.pod_ip()?;
        let name = slice_name(svc);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let mut slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.to_owned()),
                labels: Some(BTreeMap::from([
                    (SERVICE_NAME.to_owned(), svc.to_owned()),
                    (
                        SLICE_MANAGED_BY.to_owned(),
                        SLICE_MANAGED_BY_VALUE.to_owned(),
                    ),
                    (MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned()),
                ])),
                annotations: Some(BTreeMap::from([(HOLDER.to_owned(), self.me())])),
                ..Default::default()
            },
            address_type: if ip.is_ipv4() { "IPv4" } else { "IPv6" }.to_owned(),
            endpoints: Some(vec![replica_endpoint(ip, &self.replica, &self.namespace)]),
            ports: Some(
                ports
                    .iter()
                    .map(|p| EndpointPort {
                        name: p.name.clone(),
                        port: Some(i32::from(p.port)),
                        protocol: Some("TCP".to_owned()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        };
        let pp = PostParams::default();
        let whose = format!("EndpointSlice {ns}/{name}");
        let needs = "get/create/update on endpointslices (discovery.k8s.io) there";
        for _ in 0..ATTEMPTS {
            let written = match slices.get_opt(&name).await {
                Ok(None) => slices.create(&pp, &slice).await,
                Ok(Some(current)) => {
                    slice.metadata.resource_version = current.metadata.resource_version;
                    slices.replace(&name, &pp, &slice).await
                }
                Err(e) => return Err(api_error(&format!("cannot read {whose}"), needs, &e)),
            };
            match written {
                Ok(_) => return Ok(()),
                Err(e) if matches!(code(&e), Some(404 | 409)) => continue,
                Err(e) => return Err(api_error(&format!("cannot write {whose}"), needs, &e)),
            }
        }
        Err(format!("{whose} kept changing; try again"))
    }

    /// Undoes [`Self::divert`] and frees the Lease: the workloads a
    /// replace intercept stopped scaled back, the selector back (spec as
    /// before), this replica's slice deleted once the pods' are back, the
    /// Lease deleted. Each step is idempotent.
    pub async fn restore(&self, ns: &str, svc: &str) -> Result<(), String> {
        let key = format!("{ns}/{svc}");
        match self.service(ns, svc).await {
            Ok(service) => {
                self.start_again(ns, &key, &service).await?;
                self.rewrite(ns, svc, service, |s| {
                    record::restore(&key, s).map_err(|e| e.to_string())
                })
                .await?;
                self.wait_for_pod_slices(ns, svc).await;
            }
            // Deleted meanwhile: nothing to put back.
            Err(e) if e.starts_with("there is no Service") => {}
            Err(e) => return Err(e),
        }
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        match slices
            .delete(&slice_name(svc), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if code(&e) == Some(404) => {}
            Err(e) => {
                return Err(api_error(
                    &format!("cannot delete EndpointSlice {ns}/{}", slice_name(svc)),
                    "delete on endpointslices there",
                    &e,
                ))
            }
        }
        match self
            .leases
            .delete(&lease_name(ns, svc), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if code(&e) == Some(404) => {}
            Err(e) => {
                tracing::warn!(service = %key, error = %e, "cannot delete the intercept Lease; it expires")
            }
        }
        tracing::info!(service = %key, "Service restored");
        Ok(())
    }

    /// Waits (at most [`SLICES_BACK`]) until an EndpointSlice of `svc`
    /// other than this replica's exists again.
    async fn wait_for_pod_slices(&self, ns: &str, svc: &str) {
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let lp = ListParams::default().labels(&format!("{SERVICE_NAME}={svc}"));
        let deadline = tokio::time::Instant::now() + SLICES_BACK;
        while tokio::time::Instant::now() < deadline {
            if let Ok(list) = slices.list(&lp).await {
                let back = list.items.iter().any(|s| {
                    s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SLICE_MANAGED_BY))
                        .is_none_or(|m| m != SLICE_MANAGED_BY_VALUE)
                });
                if back {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!(service = %format!("{ns}/{svc}"), "the pods' EndpointSlices are not back yet; deleting netmux's anyway");
    }

    /// Restores every intercepted Service whose Lease expired (its replica
    /// died or lost the API server) or that this replica holds without
    /// routing it (`is_local` says which it routes): takes the Lease
    /// first, so two replicas never restore one Service at once.
    pub async fn sweep(&self, is_local: impl Fn(&str) -> bool) {
        let lp = ListParams::default().labels(&format!("{LEASE_LABEL}=true"));
        let list = match self.leases.list(&lp).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list intercept Leases");
                return;
            }
        };
        for lease in list.items {
            let annotations = lease.metadata.annotations.clone().unwrap_or_default();
            if let Some(workload) = annotations.get(replace::WORKLOAD) {
                self.sweep_stopped(&lease, workload, &is_local).await;
                continue;
            }
            let Some(key) = annotations.get(SERVICE).cloned() else {
                continue;
            };
            if is_local(&key) {
                continue;
            }
            let Some((ns, svc)) = key.split_once('/') else {
                continue;
            };
            let decision = decide(Some(&lease), &self.me(), &self.replica, Timestamp::now());
            if matches!(decision, Decision::Held { .. }) {
                continue;
            }
            tracing::warn!(service = %key, holder = %describe(&lease), "intercept Lease expired; restoring the Service");
            if let Err(e) = self.take(ns, svc, "restoring (previous holder gone)").await {
                tracing::info!(service = %key, error = %e, "not restoring: taken meanwhile");
                continue;
            }
            if let Err(e) = self.restore(ns, svc).await {
                tracing::warn!(service = %key, error = %e, "cannot restore yet; retrying on the next sweep");
            }
        }
    }

    /// Ready pods of `ns` matching `selector` (`k=v,...`): their IP and
    /// named container ports.
    pub async fn pods(&self, ns: &str, selector: &str) -> Result<Vec<PodAddr>, String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| {
                api_error(
                    &format!("cannot list pods {selector} in {ns}"),
                    "list on pods there",
                    &e,
                )
            })?;
        Ok(list.items.iter().filter_map(pod_addr).collect())
    }
}

/// A ready pod as intercepts route to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAddr {
    /// Pod name (logs).
    pub name: String,
    /// Its IP.
    pub ip: IpAddr,
    /// Its named container ports.
    pub ports: Vec<(String, u16)>,
}

fn pod_addr(p: &Pod) -> Option<PodAddr> {
    let status = p.status.as_ref()?;
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    if p.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let ready = match &status.conditions {
        Some(c) if c.iter().any(|c| c.type_ == "Ready") => {
            c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
        }
        _ => status.phase.as_deref() == Some("Running"),
    };
    if !ready {
        return None;
    }
    let ports = p
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|cp| Some((cp.name.clone()?, u16::try_from(cp.container_port).ok()?)))
        .collect();
    Some(PodAddr {
        name: p.metadata.name.clone().unwrap_or_default(),
        ip,
        ports,
    })
}
