//! The workloads a replace intercept stops (docs/intercept.md, "Replace"):
//! the Deployments and StatefulSets of the Service's namespace whose pod
//! template carries its selector, scaled to zero through their `scale`
//! subresource once their replica counts are recorded on the Service
//! ([`netmux_common::proto::replaced`]), and scaled back from that record
//! before the selector is restored.
//!
//! A workload no Service fronts (`netmux intercept EP deploy/worker
//! --replace`) is stopped under a Lease of its own in the server's
//! namespace (`netmux-stop-…`, labelled like the intercept Leases so the
//! same sweep restores it), which carries its count before
//! ([`REPLICAS`]): the server holds the record, and needs no right to
//! change the workload beyond its scale.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::Api;
use netmux_common::proto::replaced::{self, Kind, Replaced, Workload};
use serde_json::{json, Value};

use super::{
    api_error, code, decide, object_name, record, Cluster, Decision, TakeError, ATTEMPTS, CLIENT,
};

pub use netmux_common::proto::replaced::{STOP_REPLICAS as REPLICAS, STOP_WORKLOAD as WORKLOAD};

/// The Lease under which `w` is stopped.
pub fn stop_lease_name(w: &Workload) -> String {
    let kind = w.kind.resource();
    object_name("netmux-stop", &[&w.namespace, kind, &w.name])
}

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

    /// The workloads a replace intercept of Service `ns/svc` (as read,
    /// `service`) stops: those its record names (this replica restarted,
    /// or took over: the record holds the counts before), else those that
    /// run its pods now.
    pub async fn would_stop(
        &self,
        ns: &str,
        svc: &str,
        service: &Value,
    ) -> Result<Vec<Replaced>, String> {
        let key = format!("{ns}/{svc}");
        let recorded = record::replaced(&key, service).map_err(|e| e.to_string())?;
        if !recorded.is_empty() {
            return Ok(recorded);
        }
        let labels = record::selector(&key, service).map_err(|e| e.to_string())?;
        self.workloads(ns, svc, &labels).await
    }

    /// The replica count of `kind` `name` in `ns` now; `None` when it is
    /// gone.
    async fn scale_now(&self, ns: &str, kind: Kind, name: &str) -> Result<Option<i32>, String> {
        match self.workloads_api(ns, kind).get_scale(name).await {
            Ok(scale) => Ok(Some(scale.spec.and_then(|s| s.replicas).unwrap_or(0))),
            Err(e) if code(&e) == Some(404) => Ok(None),
            Err(e) => Err(api_error(
                &format!("cannot read the scale of {kind} {ns}/{name}"),
                &format!("get and patch on {}/scale (apps) there", kind.resource()),
                &e,
            )),
        }
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

    /// `w`'s replica count now; a missing workload is refused with the fix.
    async fn replicas_now(&self, w: &Workload) -> Result<i32, String> {
        self.scale_now(&w.namespace, w.kind, &w.name)
            .await?
            .ok_or_else(|| {
                format!(
                    "there is no {} {}/{}; fix: name one as `netmux env` or kubectl shows it",
                    w.kind, w.namespace, w.name
                )
            })
    }

    /// Takes (or renews) the Lease under which `w` is stopped for `who`,
    /// keeping the count before (read once, never the zero), then, with
    /// `stop`, scales `w` to zero if it is not (level-triggered: called
    /// again while held, it stops what something started meanwhile).
    /// Refused with the holder while another replica holds it.
    pub async fn hold_stopped(&self, w: &Workload, who: &str, stop: bool) -> Result<(), TakeError> {
        let name = stop_lease_name(w);
        let whose = format!("Lease {}/{name}", self.namespace);
        let needs = "get/create/update on leases (coordination.k8s.io) in its namespace";
        let pp = PostParams::default();
        for _ in 0..ATTEMPTS {
            let (current, decision) = self.lease_decision(&name, &whose, needs).await?;
            if let Decision::Held { by } = &decision {
                return Err(TakeError::Held {
                    by: format!("{w} is stopped by {by}"),
                    address: None,
                });
            }
            let kept = current
                .as_ref()
                .and_then(|l| l.metadata.annotations.as_ref())
                .and_then(|a| a.get(REPLICAS))
                .and_then(|n| n.parse::<i32>().ok());
            // Read once when there is no record yet; that read also says
            // whether it runs.
            let read = match kept {
                Some(_) => None,
                None => Some(self.replicas_now(w).await?),
            };
            let replicas = kept.or(read).unwrap_or_default();
            let annotations = BTreeMap::from([
                (CLIENT.to_owned(), who.to_owned()),
                (WORKLOAD.to_owned(), w.to_string()),
                (REPLICAS.to_owned(), replicas.to_string()),
            ]);
            let lease = self.lease_named(name.clone(), annotations, &decision);
            let written = match decision {
                Decision::Create => self.leases.create(&pp, &lease).await.map(drop),
                _ => self.leases.replace(&name, &pp, &lease).await.map(drop),
            };
            match written {
                Ok(()) => {}
                Err(e) if matches!(code(&e), Some(404 | 409)) => continue,
                Err(e) => return Err(api_error(&format!("cannot write {whose}"), needs, &e).into()),
            }
            let running = match (stop, read) {
                (false, _) => false,
                (true, Some(now)) => now != 0,
                (true, None) => self.replicas_now(w).await? != 0,
            };
            if running {
                let one = Replaced {
                    kind: w.kind,
                    name: w.name.clone(),
                    replicas,
                };
                self.stop(&w.namespace, std::slice::from_ref(&one)).await?;
            }
            return Ok(());
        }
        Err(format!("{whose} kept changing; try again").into())
    }

    /// Scales `w` back to the count its Lease keeps (if it is still at
    /// zero) and deletes the Lease. Idempotent.
    pub async fn release_stopped(&self, w: &Workload) -> Result<(), String> {
        let name = stop_lease_name(w);
        let lease = self
            .leases
            .get_opt(&name)
            .await
            .map_err(|e| format!("cannot read Lease {}/{name}: {e}", self.namespace))?;
        let kept = lease
            .as_ref()
            .and_then(|l| l.metadata.annotations.as_ref())
            .and_then(|a| a.get(REPLICAS))
            .and_then(|n| n.parse::<i32>().ok());
        if let Some(replicas) = kept {
            let one = Replaced {
                kind: w.kind,
                name: w.name.clone(),
                replicas,
            };
            self.start_one(&w.namespace, &one).await?;
        }
        match self.leases.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some(404) => Ok(()),
            Err(e) => Err(format!(
                "cannot delete Lease {}/{name}: {e}",
                self.namespace
            )),
        }
    }

    /// The sweep's part for stop Leases: one whose holder stopped renewing
    /// it (and that this replica does not hold, `is_local`) is taken and
    /// its workload started again.
    pub(super) async fn sweep_stopped(
        &self,
        lease: &Lease,
        key: &str,
        is_local: &impl Fn(&str) -> bool,
    ) {
        if is_local(key) {
            return;
        }
        let Ok(w) = key.parse::<Workload>() else {
            tracing::warn!(lease = ?lease.metadata.name, workload = %key, "a stop Lease names no workload; leaving it to expire");
            return;
        };
        if matches!(
            decide(Some(lease), &self.me(), &self.replica, Timestamp::now()),
            Decision::Held { .. }
        ) {
            return;
        }
        tracing::warn!(workload = %key, "stop Lease expired; starting the workload again");
        if let Err(e) = self
            .hold_stopped(&w, "restoring (previous holder gone)", false)
            .await
        {
            tracing::info!(workload = %key, error = %e, "not restoring: taken meanwhile");
            return;
        }
        if let Err(e) = self.release_stopped(&w).await {
            tracing::warn!(workload = %key, error = %e, "cannot start the workload again yet; retrying on the next sweep");
        }
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
    pub async fn start_left_stopped(
        &self,
        ns: &str,
        svc: &str,
        service: &Value,
    ) -> Result<(), String> {
        let key = format!("{ns}/{svc}");
        if record::without_replaced(service).is_none() {
            return Ok(());
        }
        tracing::warn!(service = %key, "a replace intercept of a replica gone left its workloads stopped; starting them again");
        self.start_again(ns, &key, service).await?;
        self.rewrite(ns, svc, service.clone(), |s| {
            Ok(record::without_replaced(s))
        })
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
            self.start_one(ns, w).await?;
        }
        Ok(())
    }

    /// Scales `w` of `ns` back to its recorded count if it is still at
    /// zero; gone, or scaled by someone since, it is left as it is.
    async fn start_one(&self, ns: &str, w: &Replaced) -> Result<(), String> {
        let what = format!("{} {ns}/{}", w.kind, w.name);
        let Some(now) = self.scale_now(ns, w.kind, &w.name).await? else {
            tracing::info!(workload = %what, "a workload a replace intercept stopped is gone; nothing to scale back");
            return Ok(());
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
        Ok(())
    }
}
