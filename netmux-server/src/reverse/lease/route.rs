//! Routing a held claim: the (selectorless) Service and the EndpointSlice
//! that send the service's cluster traffic to this replica.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    ObjectReference, Service as KService, ServicePort as KServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::PostParams;
use kube::Api;
use netmux_common::proto::catalog::Protocol;

use super::api::{api_error, code};
use super::names::slice_name;
use super::{
    LeaseLock, ATTEMPTS, HOLDER, MANAGED_BY, MANAGED_BY_VALUE, SERVICE, SLICE_MANAGED_BY,
    SLICE_MANAGED_BY_VALUE,
};
use crate::reverse::lock::ClaimRequest;

impl LeaseLock {
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
            endpoints: Some(vec![replica_endpoint(
                ip,
                &self.options.replica,
                &self.options.namespace,
            )]),
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
    pub(super) async fn refuse_foreign_service(&self, claim: &ClaimRequest) -> Result<(), String> {
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

    pub(super) async fn route(&self, claim: &ClaimRequest, ip: IpAddr) -> Result<(), String> {
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

/// The one endpoint of a slice that sends a Service to this replica: its
/// pod address, ready, pointing at its Pod.
pub(crate) fn replica_endpoint(ip: IpAddr, replica: &str, namespace: &str) -> Endpoint {
    Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".to_owned()),
            name: Some(replica.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    }
}
