//! Objects as a cluster would hold them, for tests to `apply`.

use serde_json::{json, Value};

/// A Service object selecting pods `app: <name>` (its EndpointSlices are
/// the controller's, see [`endpoint_slice`]); remove `spec.selector` for a
/// selectorless one.
pub fn service(ns: &str, name: &str, cluster_ip: &str, ports: Value, nx: Option<&str>) -> Value {
    let mut v = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": cluster_ip, "ports": ports, "selector": {"app": name}},
    });
    if cluster_ip != "None" {
        v["spec"]["clusterIPs"] = json!([cluster_ip]);
    }
    if let Some(nx) = nx {
        v["metadata"]["annotations"] = json!({ "nx": nx });
    }
    v
}

/// An EndpointSlice of Service `svc` as the EndpointSlice controller writes
/// it (`endpointslice.kubernetes.io/managed-by`); endpoints are (ip,
/// hostname, ready).
pub fn endpoint_slice(
    ns: &str,
    svc: &str,
    endpoints: &[(&str, Option<&str>, bool)],
    ports: Value,
) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, host, ready)| {
            let mut e = json!({"addresses": [ip], "conditions": {"ready": ready}});
            if let Some(h) = host {
                e["hostname"] = json!(h);
            }
            e
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-abcde"), "namespace": ns,
                     "labels": {"kubernetes.io/service-name": svc,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": ports,
    })
}

/// A Pod of `app` (label `app.kubernetes.io/name`), Running and Ready at
/// `ip` with a container port `port` named `port_name`.
pub fn pod(ns: &str, name: &str, app: &str, ip: &str, port_name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"app.kubernetes.io/name": app}},
        "spec": {"containers": [{"name": "server", "image": "netmux-server",
                 "ports": [{"name": port_name, "containerPort": port, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

/// A Pod labelled `labels`, Running and Ready at `ip`, with one container
/// whose TCP ports are `ports` (name, number).
pub fn app_pod(ns: &str, name: &str, labels: Value, ip: &str, ports: &[(&str, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "containerPort": p, "protocol": "TCP"}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "netmux-testbed-backend", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })
}
