//! The EndpointSlice controller (kube-controller-manager's
//! `endpointslice-controller.k8s.io`): for every Service with a selector,
//! EndpointSlices listing the pods it selects, so that a Service in the
//! fake cluster behaves like one in a real cluster.
//!
//! Sans IO: [`reconcile`] takes one namespace's Services, Pods and
//! EndpointSlices and returns the writes that bring the controller's
//! slices in line. [`crate::FakeApi`] runs it under its lock after every
//! change that may matter ([`concerns`]), so an `apply` or an HTTP write
//! returns with the slices already right and their watch events emitted.
//!
//! What it does as the real controller does:
//! - one endpoint per selected pod that has `status.podIP` and is not
//!   `Succeeded`/`Failed`; `ready` is the pod's `Ready` condition (a pod
//!   that is not ready is listed with `ready: false`), a pod with a
//!   `deletionTimestamp` is `terminating` and not ready; `targetRef`
//!   names the pod;
//! - ports: one per Service port, `name` the Service port's name (or ""),
//!   `port` its `targetPort` resolved for each pod (a number, or the name
//!   of a container port; absent: the Service port). A pod lacking a
//!   named port is listed without that port; pods are grouped into one
//!   slice per address family and resolved port set;
//! - a Service whose selector matches nothing keeps one slice with no
//!   endpoints and no ports;
//! - labels: the Service's own, plus `kubernetes.io/service-name` and
//!   `endpointslice.kubernetes.io/managed-by`; an owner reference to the
//!   Service;
//! - a Service without a selector (or deleted, or `ExternalName`) has its
//!   controller-managed slices deleted; slices another manager wrote
//!   (`managed-by: netmux`, a user's) are never touched.
//!
//! What it does not: the 100-endpoint limit per slice (tests have a few
//! pods), `publishNotReadyAddresses`, topology hints, hostnames.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

/// The `managed-by` label value of the Kubernetes EndpointSlice
/// controller (this module).
pub const MANAGED_BY_CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// Label naming a slice's manager.
pub(crate) const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Label linking a slice to its Service.
pub(crate) const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The fake API's collection key of EndpointSlices.
pub(crate) const SLICES: &str = "discovery.k8s.io/endpointslices";
/// The fake API's collection key of Services.
pub(crate) const SERVICES: &str = "/services";
/// The fake API's collection key of Pods.
pub(crate) const PODS: &str = "/pods";

/// One write the controller wants.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Write {
    /// Create or replace this slice (a whole object, no resourceVersion).
    Put(Value),
    /// Delete the slice of this name.
    Delete(String),
}

/// Whether a change to `obj` in `collection` may change the controller's
/// slices: any Service or Pod, and slices it manages (someone edited or
/// deleted one behind its back).
pub(crate) fn concerns(collection: &str, obj: &Value) -> bool {
    collection == SERVICES || collection == PODS || (collection == SLICES && managed(obj))
}

/// Whether `slice` is one of this controller's.
pub(crate) fn managed(slice: &Value) -> bool {
    slice["metadata"]["labels"][MANAGED_BY].as_str() == Some(MANAGED_BY_CONTROLLER)
}

/// The writes that make namespace `ns`'s controller-managed slices match
/// its `services` and `pods`; `slices` are all of the namespace's slices
/// (other managers' too, so new names never collide). `seed` varies the
/// names of new slices (the API's resource version).
pub(crate) fn reconcile(
    ns: &str,
    services: &[&Value],
    pods: &[&Value],
    slices: &[&Value],
    seed: u64,
) -> Vec<Write> {
    let mut taken: BTreeSet<String> = slices.iter().map(|s| name_of(s).to_owned()).collect();
    let mut names = NameSource {
        seed,
        taken: &mut taken,
    };
    let mut owned: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for s in slices.iter().copied().filter(|s| managed(s)) {
        let svc = s["metadata"]["labels"][SERVICE_NAME].as_str().unwrap_or("");
        owned.entry(svc).or_default().push(s);
    }
    let by_name: BTreeMap<&str, &Value> = services.iter().map(|s| (name_of(s), *s)).collect();
    let all: BTreeSet<&str> = by_name.keys().chain(owned.keys()).copied().collect();
    let mut writes = Vec::new();
    for svc_name in all {
        let existing = owned.remove(svc_name).unwrap_or_default();
        let desired = match by_name.get(svc_name) {
            Some(svc) if selector(svc).is_some() => desired_slices(ns, svc, pods),
            _ => Vec::new(),
        };
        writes.extend(pair_up(svc_name, desired, existing, &mut names));
    }
    writes
}

/// Gives new slices names `<service>-xxxxx` nobody holds.
struct NameSource<'a> {
    seed: u64,
    taken: &'a mut BTreeSet<String>,
}

impl NameSource<'_> {
    fn fresh(&mut self, svc: &str) -> String {
        // The alphabet of Kubernetes' `generateName` suffixes (no vowels,
        // no look-alikes).
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        loop {
            self.seed = self
                .seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let mut x = self.seed >> 16;
            let mut suffix = String::with_capacity(5);
            for _ in 0..5 {
                suffix.push(char::from(ALPHABET[(x % 27) as usize]));
                x /= 27;
            }
            let name = format!("{svc}-{suffix}");
            if self.taken.insert(name.clone()) {
                return name;
            }
        }
    }
}

/// Matches wanted slices with existing ones (same address type and ports
/// first, so a pod change rewrites one slice, not all), and returns the
/// puts for those that differ and the deletes for those left over.
fn pair_up(
    svc: &str,
    desired: Vec<Value>,
    mut existing: Vec<&Value>,
    names: &mut NameSource<'_>,
) -> Vec<Write> {
    existing.sort_by_key(|s| name_of(s).to_owned());
    let mut writes = Vec::new();
    let mut unmatched = Vec::new();
    for want in desired {
        let same_shape = existing
            .iter()
            .position(|e| e["addressType"] == want["addressType"] && e["ports"] == want["ports"]);
        match same_shape {
            Some(i) => writes.extend(update(existing.remove(i), want)),
            None => unmatched.push(want),
        }
    }
    for mut want in unmatched {
        if existing.is_empty() {
            want["metadata"]["name"] = json!(names.fresh(svc));
            writes.push(Write::Put(want));
        } else {
            writes.extend(update(existing.remove(0), want));
        }
    }
    writes.extend(
        existing
            .into_iter()
            .map(|e| Write::Delete(name_of(e).to_owned())),
    );
    writes
}

/// A put of `want` under `current`'s name, if anything differs.
fn update(current: &Value, mut want: Value) -> Option<Write> {
    want["metadata"]["name"] = current["metadata"]["name"].clone();
    let fields = |v: &Value| {
        (
            v["metadata"]["labels"].clone(),
            v["metadata"]["ownerReferences"].clone(),
            v["addressType"].clone(),
            v["endpoints"].clone(),
            v["ports"].clone(),
        )
    };
    (fields(current) != fields(&want)).then_some(Write::Put(want))
}

fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

/// A Service's selector when it has a non-empty one and is not
/// `ExternalName` (those have no endpoints).
fn selector(svc: &Value) -> Option<&serde_json::Map<String, Value>> {
    if svc["spec"]["type"].as_str() == Some("ExternalName") {
        return None;
    }
    svc["spec"]["selector"]
        .as_object()
        .filter(|s| !s.is_empty())
}

fn selects(selector: &serde_json::Map<String, Value>, pod: &Value) -> bool {
    let labels = &pod["metadata"]["labels"];
    selector.iter().all(|(k, v)| labels[k] == *v)
}

/// Pods sharing an address type and resolved ports share a slice:
/// (address type, ports as JSON text).
type GroupKey = (String, String);
/// A slice's ports and its (pod name, endpoint)s.
type Group = (Value, Vec<(String, Value)>);

/// The slices Service `svc` should have (without names).
fn desired_slices(ns: &str, svc: &Value, pods: &[&Value]) -> Vec<Value> {
    let Some(sel) = selector(svc) else {
        return Vec::new();
    };
    let mut groups: BTreeMap<GroupKey, Group> = BTreeMap::new();
    for pod in pods.iter().filter(|p| selects(sel, p)) {
        let Some((family, endpoint)) = endpoint(ns, pod) else {
            continue;
        };
        let ports = Value::Array(endpoint_ports(svc, pod));
        let key = (family.to_owned(), ports.to_string());
        groups
            .entry(key)
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push((name_of(pod).to_owned(), endpoint));
    }
    if groups.is_empty() {
        let family = if svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.contains(':'))
        {
            "IPv6"
        } else {
            "IPv4"
        };
        return vec![slice(ns, svc, family, json!([]), Vec::new())];
    }
    groups
        .into_iter()
        .map(|((family, _), (ports, mut eps))| {
            eps.sort_by(|a, b| a.0.cmp(&b.0));
            slice(
                ns,
                svc,
                &family,
                ports,
                eps.into_iter().map(|(_, e)| e).collect(),
            )
        })
        .collect()
}

fn slice(ns: &str, svc: &Value, family: &str, ports: Value, endpoints: Vec<Value>) -> Value {
    let name = name_of(svc);
    let mut labels = svc["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert(SERVICE_NAME.to_owned(), json!(name));
    labels.insert(MANAGED_BY.to_owned(), json!(MANAGED_BY_CONTROLLER));
    if svc["spec"]["clusterIP"].as_str() == Some("None") {
        labels.insert("service.kubernetes.io/headless".to_owned(), json!(""));
    }
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "namespace": ns,
            "labels": labels,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name,
                                 "uid": svc["metadata"]["uid"], "controller": true,
                                 "blockOwnerDeletion": true}],
        },
        "addressType": family,
        "endpoints": endpoints,
        "ports": ports,
    })
}

/// A pod's endpoint and address type; `None` for a pod without an
/// address or that has ended.
fn endpoint(ns: &str, pod: &Value) -> Option<(&'static str, Value)> {
    let ip: std::net::IpAddr = pod["status"]["podIP"].as_str()?.parse().ok()?;
    if matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    ) {
        return None;
    }
    let ready_condition = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    let terminating = !pod["metadata"]["deletionTimestamp"].is_null();
    let mut e = json!({
        "addresses": [ip.to_string()],
        "conditions": {"ready": ready_condition && !terminating, "serving": ready_condition,
                       "terminating": terminating},
        "targetRef": {"kind": "Pod", "namespace": ns, "name": name_of(pod),
                      "uid": pod["metadata"]["uid"]},
    });
    if let Some(node) = pod["spec"]["nodeName"].as_str() {
        e["nodeName"] = json!(node);
    }
    let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
    Some((family, e))
}

/// The Service's ports as `pod` serves them; a named `targetPort` the pod
/// lacks leaves that port out for this pod.
fn endpoint_ports(svc: &Value, pod: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for sp in svc["spec"]["ports"].as_array().into_iter().flatten() {
        let protocol = sp["protocol"].as_str().unwrap_or("TCP");
        let port = match &sp["targetPort"] {
            Value::Number(n) => n.as_u64(),
            Value::String(name) => container_port(pod, name, protocol),
            _ => sp["port"].as_u64(),
        };
        let Some(port) = port.filter(|p| (1..=65535).contains(p)) else {
            continue;
        };
        let mut p = json!({"name": sp["name"].as_str().unwrap_or(""), "port": port,
                           "protocol": protocol});
        if let Some(ap) = sp["appProtocol"].as_str() {
            p["appProtocol"] = json!(ap);
        }
        out.push(p);
    }
    out
}

fn container_port(pod: &Value, name: &str, protocol: &str) -> Option<u64> {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .find(|p| p["name"] == name && p["protocol"].as_str().unwrap_or("TCP") == protocol)
        .and_then(|p| p["containerPort"].as_u64())
}

#[cfg(test)]
mod tests;
