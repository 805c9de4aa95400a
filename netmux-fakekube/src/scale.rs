//! The `scale` subresource of Deployments and StatefulSets
//! (`…/deployments/NAME/scale`), as `kubectl scale` and kube's
//! `get_scale`/`patch_scale` use it: an `autoscaling/v1` Scale whose
//! `spec.replicas` is the workload's. Writing it changes the workload's
//! `spec.replicas` (and, with no controller here, `status.replicas`).

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use crate::rest::{ok_json, status};
use crate::{lock, FakeApi};

/// Collections that have a scale subresource.
const SCALABLE: [&str; 3] = ["apps/deployments", "apps/statefulsets", "apps/replicasets"];

fn scale_of(obj: &Value) -> Value {
    let replicas = obj["spec"]["replicas"].as_i64().unwrap_or(1);
    let selector: Vec<String> = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"]["namespace"],
            "resourceVersion": obj["metadata"]["resourceVersion"],
        },
        "spec": {"replicas": replicas},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(replicas), "selector": selector.join(",")},
    })
}

/// GET, PATCH (merge) or PUT of `collection`'s `ns/name` scale.
pub(crate) fn handle(
    fake: &FakeApi,
    method: &Method,
    collection: &str,
    ns: &str,
    name: &str,
    body: &[u8],
) -> Response {
    if !SCALABLE.contains(&collection) {
        return status(StatusCode::NOT_FOUND, "NotFound", "no scale subresource");
    }
    let mut st = lock(&fake.state);
    let key = (collection.to_owned(), ns.to_owned(), name.to_owned());
    let Some(mut obj) = st.objects.get(&key).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "{} \"{name}\" not found",
                collection.trim_start_matches("apps/")
            ),
        );
    };
    if *method == Method::GET {
        return ok_json(StatusCode::OK, &scale_of(&obj));
    }
    if *method != Method::PATCH && *method != Method::PUT {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "get, patch or put a scale",
        );
    }
    let asked =
        serde_json::from_slice::<Value>(body).unwrap_or_default()["spec"]["replicas"].as_i64();
    let Some(replicas) = asked.filter(|n| *n >= 0) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "spec.replicas: a scale needs a count of 0 or more",
        );
    };
    obj["spec"]["replicas"] = json!(replicas);
    obj["status"]["replicas"] = json!(replicas);
    let stored = fake.put(&mut st, obj, true);
    ok_json(StatusCode::OK, &scale_of(&stored))
}
