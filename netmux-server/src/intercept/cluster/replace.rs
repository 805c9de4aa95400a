//! The workloads a replace intercept stops (docs/intercept.md, "Replace"):
//! the Deployments and StatefulSets of the Service's namespace whose pod
//! template carries its selector, scaled to zero through their `scale`
//! subresource once their replica counts are recorded on the Service
//! ([`netmux_common::proto::replaced`]), and scaled back from that record
//! before the selector is restored.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::Api;
use netmux_common::proto::replaced::{self, Kind, Replaced};
use serde_json::{json, Value};

use super::{api_error, code, record, Cluster};

impl Cluster {
    fn workloads_api(&self, ns: &str, kind: Kind) -> Api<DynamicObject> {
        let resource = match kind {
            Kind::Deployment => ApiResource::erase::<Deployment>(&()),
            Kind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        };
        Api::namespaced_with(self.client.clone(), ns, &resource)
    }

    /// The Deployments and StatefulSets of `ns` that run the pods of
    /// Service `ns/svc` (whose selector is `selector`), with their replica
    /// counts now; refused, with the fix, when there is none.
    pub async fn workloads(
        &self,
        ns: &str,
        svc: &str,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<Replaced>, String> {
        let mut found = Vec::new();
        for kind in Kind::ALL {
            let list = self
                .workloads_api(ns, kind)
                .list(&ListParams::default())
                .await
                .map_err(|e| {
                    api_error(
                        &format!("cannot list the {} of {ns}", kind.resource()),
                        &format!("list on {} (apps) there", kind.resource()),
                        &e,
                    )
                })?;
            for w in list.items {
                let v = serde_json::to_value(&w).unwrap_or_default();
                let labels: BTreeMap<String, String> =
                    serde_json::from_value(v["spec"]["template"]["metadata"]["labels"].clone())
                        .unwrap_or_default();
                if !replaced::runs_pods_of(selector, &labels) {
                    continue;
                }
                found.push(Replaced {
                    kind,
                    name: w.metadata.name.unwrap_or_default(),
                    // The API server defaults an unset count to 1.
                    replicas: v["spec"]["replicas"]
                        .as_i64()
                        .and_then(|n| i32::try_from(n).ok())
                        .unwrap_or(1),
                });
            }
        }
        if found.is_empty() {
            let selector: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return Err(format!(
                "no Deployment or StatefulSet in namespace {ns} runs the pods of Service {ns}/{svc} (selector {}): --replace stops the workload by scaling it to zero, which a DaemonSet, a Job or a bare Pod cannot be; fix: intercept without --replace",
                selector.join(",")
            ));
        }
        Ok(found)
    }

    async fn scale(&self, ns: &str, w: &Replaced, replicas: i32) -> Result<(), String> {
        self.workloads_api(ns, w.kind)
            .patch_scale(
                &w.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": replicas}})),
            )
            .await
            .map(drop)
            .map_err(|e| {
                api_error(
                    &format!("cannot scale {} {ns}/{} to {replicas}", w.kind, w.name),
                    &format!("get and patch on {}/scale (apps) there", w.kind.resource()),
                    &e,
                )
            })
    }

    /// Scales each of `stopped` (recorded on the Service first) to zero.
    pub async fn stop(&self, ns: &str, stopped: &[Replaced]) -> Result<(), String> {
        for w in stopped {
            self.scale(ns, w, 0).await?;
            tracing::info!(workload = %format!("{} {ns}/{}", w.kind, w.name), replicas = w.replicas, "replace intercept: workload scaled to zero");
        }
        Ok(())
    }

    /// Starts again what a replace intercept whose replica died left
    /// stopped on Service `ns/svc`, and drops its record, before an
    /// intercept that does not replace takes the Service over (so the
    /// pods its other requests or ports need run).
    pub async fn start_left_stopped(&self, ns: &str, svc: &str) -> Result<(), String> {
        let key = format!("{ns}/{svc}");
        let service = self.service(ns, svc).await?;
        if record::without_replaced(&service).is_none() {
            return Ok(());
        }
        tracing::warn!(service = %key, "a replace intercept of a replica gone left its workloads stopped; starting them again");
        self.start_again(ns, &key, &service).await?;
        self.rewrite(ns, svc, service, |s| Ok(record::without_replaced(s)))
            .await
    }

    /// Scales back the workloads `service` (`key`) records as stopped, those
    /// still at zero (someone else's count since stands); a workload
    /// deleted meanwhile is skipped, and an unreadable record is logged
    /// with the fix and does not hold back the Service's restore.
    pub(super) async fn start_again(
        &self,
        ns: &str,
        key: &str,
        service: &Value,
    ) -> Result<(), String> {
        let stopped = match record::replaced(key, service) {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(service = %key, error = %e, "cannot read the workloads a replace intercept stopped");
                return Ok(());
            }
        };
        for w in &stopped {
            let what = format!("{} {ns}/{}", w.kind, w.name);
            let now = match self.workloads_api(ns, w.kind).get_scale(&w.name).await {
                Ok(scale) => scale.spec.and_then(|s| s.replicas).unwrap_or(0),
                Err(e) if code(&e) == Some(404) => {
                    tracing::info!(workload = %what, "a workload a replace intercept stopped is gone; nothing to scale back");
                    continue;
                }
                Err(e) => {
                    return Err(api_error(
                        &format!("cannot read the scale of {what}"),
                        &format!("get and patch on {}/scale (apps) there", w.kind.resource()),
                        &e,
                    ))
                }
            };
            match replaced::scale_back(w, now) {
                Some(n) => {
                    self.scale(ns, w, n).await?;
                    tracing::info!(workload = %what, replicas = n, "replace intercept ended: workload scaled back");
                }
                None => {
                    tracing::info!(workload = %what, replicas = now, recorded = w.replicas, "replace intercept ended: workload left at its count (scaled since, or stopped before)")
                }
            }
        }
        Ok(())
    }
}
