//! What an intercept changes on a Service, and how it is undone, sans IO.
//!
//! An intercept removes the Service's `spec.selector` (so the EndpointSlice
//! controller stops publishing its pods) and records it, byte for byte, in
//! the annotation [`ORIGINAL`] on the Service itself. Restoring puts that
//! selector back and removes the annotations; nothing else in the object
//! is touched, so the restored `spec` is the original one. Because the
//! record lives in the cluster, any replica, `netmux cleanup`, or the
//! `kubectl` command in docs/intercept.md can restore it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

pub use netmux_common::proto::control::{
    INTERCEPT_HOLDER as HOLDER, INTERCEPT_ORIGINAL as ORIGINAL,
};
use netmux_common::proto::replaced::{self, Replaced, INTERCEPT_REPLACED as REPLACED};

/// Why a Service cannot be intercepted or restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// It has no selector: its endpoints are not its pods'.
    #[error("Service {0} has no selector: its endpoints are not chosen from pods, so netmux cannot route around them; intercept a Service that selects pods")]
    NoSelector(String),
    /// The recorded selector is not a JSON object of strings.
    #[error("annotation {ORIGINAL} of Service {0} is not a JSON object of strings: {1}; restore the selector by hand (docs/intercept.md)")]
    BadRecord(String, String),
    /// The object is not shaped like a Service.
    #[error("Service {0} has no spec")]
    NoSpec(String),
}

/// The original selector recorded on `service`, if it is intercepted.
pub fn recorded(name: &str, service: &Value) -> Result<Option<Map<String, Value>>, RecordError> {
    let Some(text) = service["metadata"]["annotations"][ORIGINAL].as_str() else {
        return Ok(None);
    };
    let parsed: Value = serde_json::from_str(text)
        .map_err(|e| RecordError::BadRecord(name.to_owned(), e.to_string()))?;
    match parsed {
        Value::Object(m) if m.values().all(Value::is_string) && !m.is_empty() => Ok(Some(m)),
        _ => Err(RecordError::BadRecord(
            name.to_owned(),
            "expected a non-empty object of strings".into(),
        )),
    }
}

/// The selector of `service`, from the record if intercepted, else from
/// its spec.
pub fn selector(name: &str, service: &Value) -> Result<BTreeMap<String, String>, RecordError> {
    let selector = match recorded(name, service)? {
        Some(m) => m,
        None => match &service["spec"]["selector"] {
            Value::Object(m) if !m.is_empty() => m.clone(),
            _ => return Err(RecordError::NoSelector(name.to_owned())),
        },
    };
    Ok(selector
        .into_iter()
        .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned()))
        .collect())
}

/// The selector of `service` as a `k=v,k2=v2` label selector (see
/// [`selector`]).
pub fn pod_selector(name: &str, service: &Value) -> Result<String, RecordError> {
    Ok(selector(name, service)?
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(","))
}

/// The workloads a replace intercept recorded on `service` (empty: none).
pub fn replaced(name: &str, service: &Value) -> Result<Vec<Replaced>, replaced::RecordError> {
    let annotations: BTreeMap<String, String> =
        serde_json::from_value(service["metadata"]["annotations"].clone()).unwrap_or_default();
    replaced::recorded(name, &annotations)
}

/// Whether `service` is diverted as an intercept of this replica leaves
/// it: selector recorded and removed, and the stopped workloads recorded
/// when there are any.
pub fn is_diverted(name: &str, service: &Value, stopped: &[Replaced]) -> bool {
    recorded(name, service).ok().flatten().is_some()
        && service["spec"].get("selector").is_none_or(Value::is_null)
        && (stopped.is_empty() || service["metadata"]["annotations"].get(REPLACED).is_some())
}

/// `service` with its selector removed and recorded, `holder` named, and
/// the workloads a replace intercept stops (`stopped`, if any) recorded.
/// An already intercepted Service (a replica died mid-way, or restarts)
/// keeps its first records: the original is never overwritten by the
/// intercepted state (a stopped workload's count read now would be zero).
pub fn divert(
    name: &str,
    service: &Value,
    holder: &str,
    stopped: &[Replaced],
) -> Result<Value, RecordError> {
    let mut out = service.clone();
    let already = recorded(name, service)?;
    let spec = out
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| RecordError::NoSpec(name.to_owned()))?;
    let original = match (already, spec.remove("selector")) {
        (Some(m), _) => Value::Object(m),
        (None, Some(Value::Object(m))) if !m.is_empty() => Value::Object(m),
        _ => return Err(RecordError::NoSelector(name.to_owned())),
    };
    let annotations = annotations_mut(&mut out);
    annotations.insert(ORIGINAL.into(), Value::String(original.to_string()));
    annotations.insert(HOLDER.into(), Value::String(holder.to_owned()));
    if !stopped.is_empty() && !annotations.contains_key(REPLACED) {
        annotations.insert(REPLACED.into(), Value::String(replaced::record(stopped)));
    }
    Ok(out)
}

/// `service` without the record of stopped workloads; `None` if it has
/// none.
pub fn without_replaced(service: &Value) -> Option<Value> {
    service["metadata"]["annotations"].get(REPLACED)?;
    let mut out = service.clone();
    annotations_mut(&mut out).remove(REPLACED);
    Some(out)
}

/// `service` as it was before [`divert`]: the recorded selector back, the
/// annotations gone. `None` if it is not intercepted.
pub fn restore(name: &str, service: &Value) -> Result<Option<Value>, RecordError> {
    let Some(selector) = recorded(name, service)? else {
        return Ok(None);
    };
    let mut out = service.clone();
    out.get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| RecordError::NoSpec(name.to_owned()))?
        .insert("selector".into(), Value::Object(selector));
    let annotations = annotations_mut(&mut out);
    annotations.remove(ORIGINAL);
    annotations.remove(HOLDER);
    annotations.remove(REPLACED);
    if annotations.is_empty() {
        if let Some(meta) = out["metadata"].as_object_mut() {
            meta.remove("annotations");
        }
    }
    Ok(Some(out))
}

fn annotations_mut(obj: &mut Value) -> &mut Map<String, Value> {
    let meta = &mut obj["metadata"];
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    let annotations = &mut meta["annotations"];
    if !annotations.is_object() {
        *annotations = Value::Object(Map::new());
    }
    match annotations {
        Value::Object(m) => m,
        _ => unreachable!("set to an object above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn web() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "apps", "resourceVersion": "7"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 8080, "targetPort": "http"}],
                     "selector": {"app": "web", "tier": "front"}, "sessionAffinity": "None"},
        })
    }

    #[test]
    fn divert_then_restore_gives_the_spec_back_byte_for_byte() {
        let before = web();
        let diverted = divert("apps/web", &before, "alice via pod-a", &[]).unwrap();
        assert!(diverted["spec"].get("selector").is_none());
        assert_eq!(
            pod_selector("apps/web", &diverted).unwrap(),
            "app=web,tier=front"
        );
        // A second divert (a replica taking over) keeps the first record.
        let again = divert("apps/web", &diverted, "bob via pod-b", &[]).unwrap();
        let restored = restore("apps/web", &again).unwrap().unwrap();
        assert_eq!(
            serde_json::to_string(&restored["spec"]).unwrap(),
            serde_json::to_string(&before["spec"]).unwrap()
        );
        assert_eq!(restored["metadata"], before["metadata"]);
        assert_eq!(restore("apps/web", &before).unwrap(), None);
    }

    #[test]
    fn other_annotations_stay_and_bad_records_are_named() {
        let mut svc = web();
        svc["metadata"]["annotations"] = json!({"team": "a"});
        let restored = restore(
            "apps/web",
            &divert("apps/web", &svc, "x", &[]).expect("divert"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(restored["metadata"]["annotations"], json!({"team": "a"}));
        let mut bad = svc.clone();
        bad["metadata"]["annotations"][ORIGINAL] = json!("[1]");
        assert!(matches!(
            restore("apps/web", &bad),
            Err(RecordError::BadRecord(..))
        ));
        let mut selectorless = web();
        selectorless["spec"]
            .as_object_mut()
            .map(|s| s.remove("selector"));
        assert_eq!(
            divert("apps/web", &selectorless, "x", &[]),
            Err(RecordError::NoSelector("apps/web".into()))
        );
    }

    #[test]
    fn a_replace_record_is_written_once_and_restore_removes_it() {
        use netmux_common::proto::replaced::Kind;
        let before = web();
        let stopped = vec![Replaced {
            kind: Kind::Deployment,
            name: "web".into(),
            replicas: 3,
        }];
        let diverted = divert("apps/web", &before, "rita", &stopped).unwrap();
        assert_eq!(replaced("apps/web", &diverted).unwrap(), stopped);
        assert!(is_diverted("apps/web", &diverted, &stopped));
        // Taken over after a restart, the counts read now are zero: the
        // first record stays.
        let now = vec![Replaced {
            replicas: 0,
            ..stopped[0].clone()
        }];
        let again = divert("apps/web", &diverted, "rita", &now).unwrap();
        assert_eq!(replaced("apps/web", &again).unwrap(), stopped);
        // An intercept that does not replace, taking the Service over,
        // drops the record (once the workloads run again).
        let dropped = without_replaced(&again).unwrap();
        assert!(replaced("apps/web", &dropped).unwrap().is_empty());
        assert_eq!(without_replaced(&dropped), None);
        // A record removed under netmux is a divert to redo.
        let mut lost = again.clone();
        lost["metadata"]["annotations"]
            .as_object_mut()
            .map(|a| a.remove(REPLACED));
        assert!(!is_diverted("apps/web", &lost, &stopped));
        assert!(is_diverted("apps/web", &lost, &[]));
        let restored = restore("apps/web", &again).unwrap().unwrap();
        assert_eq!(restored["metadata"], before["metadata"]);
        assert_eq!(
            serde_json::to_string(&restored["spec"]).unwrap(),
            serde_json::to_string(&before["spec"]).unwrap()
        );
    }
}
