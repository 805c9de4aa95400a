//! `netmux cleanup --intercepts`: restores intercepted Services with the
//! user's own kubeconfig, for when no netmux-server is left to do it
//! (docs/intercept.md). It does what the documented `kubectl` command
//! does: the selector recorded in the annotation goes back into the spec
//! (a JSON merge patch), the annotations go, and netmux's EndpointSlice of
//! the Service is deleted. The intercept Lease in netmux's namespace is
//! left to expire.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::{json, Value};

pub use netmux_common::proto::control::{
    INTERCEPT_HOLDER as HOLDER, INTERCEPT_ORIGINAL as ORIGINAL,
};

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
        "metadata": {"annotations": {ORIGINAL: null, HOLDER: null}},
        "spec": {"selector": selector},
    })))
}

/// A client from the inline kubeconfig `credentials` resolved.
async fn client(access: &netmux_api::kube::KubeAccess) -> Result<Client, String> {
    let kc = Kubeconfig::from_yaml(&access.kubeconfig).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Client::try_from(config).map_err(|e| format!("cannot build a Kubernetes client: {e}"))
}

/// Restores every intercepted Service of `namespace` (default: the
/// context's); returns what was done, one line each.
pub async fn restore_all(
    access: &netmux_api::kube::KubeAccess,
    namespace: Option<&str>,
) -> Result<Vec<String>, String> {
    let client = client(access).await?;
    let ns = namespace.unwrap_or(client.default_namespace()).to_owned();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client, &ns);
    let list = services.list(&ListParams::default()).await.map_err(|e| {
        format!(
            "cannot list Services in {ns}: {e}; your user needs list and patch on services there"
        )
    })?;
    let mut done = Vec::new();
    for svc in list.items {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let Some(patch) = restore_patch(
            &format!("{ns}/{name}"),
            &svc.metadata.annotations.clone().unwrap_or_default(),
        )?
        else {
            continue;
        };
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
        done.push(format!(
            "restored Service {ns}/{name} (selector {})",
            patch["spec"]["selector"]
        ));
    }
    if done.is_empty() {
        done.push(format!("no intercepted Service in namespace {ns}"));
    }
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
