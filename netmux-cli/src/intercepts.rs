//! `netmux cleanup --intercepts`: restores intercepted Services with the
//! user's own kubeconfig, for when no netmux-server is left to do it
//! (docs/intercept.md). It does what the documented `kubectl` command
//! does: the selector recorded in the annotation goes back into the spec
//! (a JSON merge patch), the annotations go, and netmux's EndpointSlice of
//! the Service is deleted. The intercept Lease in netmux's namespace is
//! left to expire. Before that, the workloads a replace intercept stopped
//! are scaled back from their record on the Service, as `kubectl scale`
//! would (those still at zero; a count someone set since stands), and so
//! are the workloads of the namespace stopped with no Service in front,
//! whose counts the server keeps on its stop Leases (in its own namespace;
//! the Lease is left to expire).

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::{json, Value};

use k8s_openapi::api::coordination::v1::Lease;
pub use netmux_common::proto::control::{
    INTERCEPT_HOLDER as HOLDER, INTERCEPT_ORIGINAL as ORIGINAL,
};
use netmux_common::proto::replaced::{
    self, Kind, Replaced, Workload, INTERCEPT_REPLACED as REPLACED, LEASE_LABEL, STOP_REPLICAS,
    STOP_WORKLOAD,
};

/// Where `cleanup --intercepts` restores.
#[derive(Debug, Clone, Copy)]
pub struct Where<'a> {
    /// The namespace of the Services and workloads (default: the
    /// context's).
    pub namespace: Option<&'a str>,
    /// netmux-server's namespace (its stop Leases).
    pub server_namespace: &'a str,
}

/// Starts again the workloads of `ns` stopped with no Service in front,
/// from the counts on the stop Leases in `server_ns`; what was done. A
/// user who may not list those Leases is told how to do it by hand.
async fn start_stopped(client: &Client, ns: &str, server_ns: &str) -> Result<Vec<String>, String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), server_ns);
    let lp = ListParams::default().labels(&format!("{LEASE_LABEL}=true"));
    let list = match leases.list(&lp).await {
        Ok(l) => l,
        Err(e) => {
            return Ok(vec![format!(
                "note: cannot list netmux's Leases in namespace {server_ns} ({e}), so workloads stopped with no Service in front were not looked for; your user needs list on leases there (the Role netmux-user grants it), or see docs/intercept.md \"Replace\" for the kubectl commands"
            )])
        }
    };
    let mut done = Vec::new();
    for lease in list.items {
        let a = lease.metadata.annotations.unwrap_or_default();
        let (Some(w), Some(n)) = (
            a.get(STOP_WORKLOAD)
                .and_then(|w| w.parse::<Workload>().ok()),
            a.get(STOP_REPLICAS).and_then(|n| n.parse::<i32>().ok()),
        ) else {
            continue;
        };
        if w.namespace != ns {
            continue;
        }
        let one = Replaced {
            kind: w.kind,
            name: w.name.clone(),
            replicas: n,
        };
        done.push(format!(
            "stopped workload {w}: {} (its Lease expires)",
            start_again(client, ns, &one).await?
        ));
    }
    Ok(done)
}

/// The merge patch restoring a Service whose annotations are
/// `annotations`; `None` if it is not intercepted. Refuses a record that
/// is not a JSON object of strings.
pub fn restore_patch(
    name: &str,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Option<Value>, String> {
    let Some(text) = annotations.get(ORIGINAL) else {
        return Ok(None);
    };
    let selector: Value = serde_json::from_str(text)
        .map_err(|e| format!("Service {name}: annotation {ORIGINAL} is not JSON: {e}"))?;
    match &selector {
        Value::Object(m) if !m.is_empty() && m.values().all(Value::is_string) => {}
        _ => {
            return Err(format!(
                "Service {name}: annotation {ORIGINAL} is not a JSON object of strings; restore the selector by hand"
            ))
        }
    }
    Ok(Some(json!({
        "metadata": {"annotations": {ORIGINAL: null, HOLDER: null, REPLACED: null}},
        "spec": {"selector": selector},
    })))
}

/// Scales back `w` of `ns` if it is still at zero; what was done.
async fn start_again(client: &Client, ns: &str, w: &Replaced) -> Result<String, String> {
    let what = format!("{} {ns}/{}", w.kind, w.name);
    let resource = match w.kind {
        Kind::Deployment => ApiResource::erase::<Deployment>(&()),
        Kind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let needs = format!(
        "your user needs get and patch on {}/scale (apps) there",
        w.kind.resource()
    );
    let now = match api.get_scale(&w.name).await {
        Ok(s) => s.spec.and_then(|s| s.replicas).unwrap_or(0),
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(format!("{what} is gone")),
        Err(e) => return Err(format!("cannot read the scale of {what}: {e}; {needs}")),
    };
    let Some(n) = replaced::scale_back(w, now) else {
        return Ok(format!("{what} left at {now} replicas"));
    };
    let patch = Patch::Merge(json!({"spec": {"replicas": n}}));
    api.patch_scale(&w.name, &PatchParams::default(), &patch)
        .await
        .map_err(|e| format!("cannot scale {what} back to {n}: {e}; {needs}"))?;
    Ok(format!("{what} scaled back to {n}"))
}

/// A client from the inline kubeconfig `credentials` resolved.
async fn client(access: &netmux_api::kube::KubeAccess) -> Result<Client, String> {
    let kc = Kubeconfig::from_yaml(&access.kubeconfig).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Client::try_from(config).map_err(|e| format!("cannot build a Kubernetes client: {e}"))
}

/// Restores every intercepted Service of `at.namespace` (default: the
/// context's) and starts its stopped workloads again; returns what was
/// done, one line each.
pub async fn restore_all(
    access: &netmux_api::kube::KubeAccess,
    at: Where<'_>,
) -> Result<Vec<String>, String> {
    let client = client(access).await?;
    let ns = at
        .namespace
        .unwrap_or(client.default_namespace())
        .to_owned();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let list = services.list(&ListParams::default()).await.map_err(|e| {
        format!(
            "cannot list Services in {ns}: {e}; your user needs list and patch on services there"
        )
    })?;
    let mut done = Vec::new();
    for svc in list.items {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let key = format!("{ns}/{name}");
        let annotations = svc.metadata.annotations.clone().unwrap_or_default();
        let Some(patch) = restore_patch(&key, &annotations)? else {
            continue;
        };
        // The workloads first: their record goes with the annotations.
        let mut started = Vec::new();
        for w in replaced::recorded(&key, &annotations).map_err(|e| e.to_string())? {
            started.push(start_again(&client, &ns, &w).await?);
        }
        services
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| format!("cannot restore Service {ns}/{name}: {e}"))?;
        let lp = ListParams::default().labels(&format!(
            "endpointslice.kubernetes.io/managed-by=netmux-server,kubernetes.io/service-name={name}"
        ));
        let ours = slices
            .list(&lp)
            .await
            .map_err(|e| format!("cannot list EndpointSlices of {ns}/{name}: {e}"))?;
        for s in ours.items {
            let sname = s.metadata.name.unwrap_or_default();
            match slices.delete(&sname, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(format!("cannot delete EndpointSlice {ns}/{sname}: {e}")),
            }
        }
        let started = if started.is_empty() {
            String::new()
        } else {
            format!("; {}", started.join(", "))
        };
        done.push(format!(
            "restored Service {ns}/{name} (selector {}){started}",
            patch["spec"]["selector"]
        ));
    }
    if done.is_empty() {
        done.push(format!("no intercepted Service in namespace {ns}"));
    }
    done.extend(start_stopped(&client, &ns, at.server_namespace).await?);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_patch_puts_the_recorded_selector_back_and_drops_the_annotations() {
        let a = BTreeMap::from([
            (ORIGINAL.to_owned(), r#"{"app":"web"}"#.to_owned()),
            (HOLDER.to_owned(), "alice".to_owned()),
        ]);
        let p = restore_patch("apps/web", &a).unwrap().unwrap();
        assert_eq!(p["spec"]["selector"], json!({"app": "web"}));
        assert_eq!(p["metadata"]["annotations"][ORIGINAL], Value::Null);
        assert_eq!(restore_patch("apps/web", &BTreeMap::new()), Ok(None));
        let bad = BTreeMap::from([(ORIGINAL.to_owned(), "[1]".to_owned())]);
        assert!(restore_patch("apps/web", &bad).is_err());
    }
}
