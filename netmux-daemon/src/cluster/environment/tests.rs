//! Unit tests of the environment resolution (kept beside `environment.rs`
//! so that file stays under ~700 lines).

use super::resources::parse_quantity;
use super::*;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{json, Value};

/// The note every result has when no `kubernetes` Service was handed over.
const KUBE_NOTE: &str = "KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT, KUBERNETES_PORT…: left out: the `kubernetes` Service of namespace default could not be read (absent, or your RBAC does not allow `get services` there); set them yourself if your program needs them";

pub(super) fn pod(spec: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": "web-7f9c", "namespace": "apps", "uid": "0b1c-22",
            "labels": {"app": "web"}, "annotations": {"team": "core"},
        },
        "spec": spec,
        "status": {
            "hostIP": "192.168.1.5", "hostIPs": [{"ip": "192.168.1.5"}, {"ip": "fd00::5"}],
            "podIP": "10.1.2.3", "podIPs": [{"ip": "10.1.2.3"}, {"ip": "fd00::1:3"}],
        },
    }))
    .expect("pod")
}

/// A pod with one container `app` (links disabled, so only what the test
/// declares shows).
pub(super) fn app(container: Value) -> Pod {
    let mut c = container;
    c["name"] = json!("app");
    pod(
        json!({"enableServiceLinks": false, "nodeName": "node-1", "serviceAccountName": "web-sa", "containers": [c]}),
    )
}

pub(super) fn sources() -> Sources {
    Sources {
        config_maps: BTreeMap::new(),
        secrets: BTreeMap::new(),
        services: Ok(Vec::new()),
        kubernetes_service: None,
    }
}

pub(super) fn config_map(data: Value) -> Result<ConfigMap, String> {
    Ok(serde_json::from_value(data).expect("configmap"))
}

pub(super) fn secret(data: Value) -> Result<Secret, String> {
    Ok(serde_json::from_value(data).expect("secret"))
}

fn service(name: &str, ip: &str, ports: Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": if name == "kubernetes" { "default" } else { "apps" }},
        "spec": {"clusterIP": ip, "ports": ports},
    }))
    .expect("service")
}

/// Resolves container `app`: its vars and its notes but [`KUBE_NOTE`].
fn run(pod: &Pod, sources: &Sources) -> (Vec<(String, String)>, Vec<String>) {
    let env = resolve(pod, "app", sources);
    let notes = env.notes.into_iter().filter(|n| n != KUBE_NOTE).collect();
    (env.vars, notes)
}

fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn env_of(entries: Value) -> Pod {
    app(json!({"env": entries}))
}

#[test]
fn container_for_picks_the_port_owner_or_the_first() {
    let p = pod(json!({
        "containers": [
            {"name": "app", "ports": [{"containerPort": 8080, "name": "http"}]},
            {"name": "admin", "ports": [{"containerPort": 9090, "name": "admin-http"}]},
        ],
        "initContainers": [
            {"name": "mesh", "restartPolicy": "Always", "ports": [{"containerPort": 15001, "name": "mesh"}]},
            {"name": "migrate", "ports": [{"containerPort": 7000}]},
        ],
    }));
    let pick = |t: Option<IntOrString>| container_for(&p, t.as_ref()).unwrap();
    assert_eq!(pick(Some(IntOrString::Int(9090))), "admin");
    assert_eq!(
        pick(Some(IntOrString::String("admin-http".into()))),
        "admin"
    );
    assert_eq!(pick(Some(IntOrString::Int(8080))), "app");
    assert_eq!(pick(Some(IntOrString::Int(15001))), "mesh");
    // Not a sidecar: a Service cannot reach it, so the first container.
    assert_eq!(pick(Some(IntOrString::Int(7000))), "app");
    assert_eq!(pick(Some(IntOrString::Int(1234))), "app");
    assert_eq!(pick(Some(IntOrString::String("9090".into()))), "app");
    assert_eq!(pick(None), "app");

    let empty = pod(json!({"containers": []}));
    assert_eq!(
        container_for(&empty, None).unwrap_err(),
        "pod apps/web-7f9c: has no containers; fix: pick another pod of the workload"
    );
    let no_spec = Pod::default();
    assert!(container_for(&no_spec, Some(&IntOrString::Int(80))).is_err());

    // Named (`--container`): any of them, sidecars and init containers too.
    assert_eq!(container_named(&p, "mesh").unwrap(), "mesh");
    assert_eq!(container_named(&p, "migrate").unwrap(), "migrate");
    assert_eq!(
        container_named(&p, "nope").unwrap_err(),
        "pod apps/web-7f9c has no container nope; it has app, admin, mesh, migrate"
    );
}

#[test]
fn references_are_deduplicated_and_sorted() {
    let p = app(json!({
        "envFrom": [
            {"secretRef": {"name": "zeta"}},
            {"configMapRef": {"name": "settings"}},
            {"prefix": "X_", "configMapRef": {"name": "settings"}},
        ],
        "env": [
            {"name": "A", "valueFrom": {"secretKeyRef": {"name": "alpha", "key": "k"}}},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "zeta", "key": "k"}}},
            {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "flags", "key": "k"}}},
            {"name": "D", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            // A literal value wins over valueFrom, so this one is not read.
            {"name": "E", "value": "x", "valueFrom": {"secretKeyRef": {"name": "unused", "key": "k"}}},
        ],
    }));
    let refs = references(&p, "app");
    assert_eq!(refs.config_maps, ["flags", "settings"]);
    assert_eq!(refs.secrets, ["alpha", "zeta"]);
    assert_eq!(references(&p, "nope"), References::default());
}

#[test]
fn env_from_prefixes_skips_invalid_keys_and_env_overrides_in_place() {
    let p = app(json!({
        "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "settings"}}],
        "env": [
            {"name": "FIRST", "value": "1"},
            {"name": "CFG_MODE", "value": "debug"},
        ],
    }));
    let mut s = sources();
    s.config_maps.insert(
        "settings".into(),
        config_map(json!({
            "data": {"MODE": "prod", "LEVEL": "3", "bad key": "x", "has=eq": "y", "dotted.name": "ok"},
            "binaryData": {"blob": "AAE="},
        })),
    );
    let (got, notes) = run(&p, &s);
    assert_eq!(
        got,
        vars(&[
            ("CFG_LEVEL", "3"),
            ("CFG_MODE", "debug"),
            ("CFG_dotted.name", "ok"),
            ("FIRST", "1"),
        ])
    );
    assert_eq!(
        notes,
        [
            "envFrom configmap settings (prefix CFG_): left out `CFG_bad key`, `CFG_has=eq`: not valid variable names (the kubelet skips them too)",
            "envFrom configmap settings (prefix CFG_): left out binaryData `blob`: the kubelet puts only `data` in the environment",
        ]
    );

    // A key starting with a digit is invalid without a prefix, valid with one.
    let p = app(
        json!({"envFrom": [{"configMapRef": {"name": "n"}}, {"prefix": "P", "configMapRef": {"name": "n"}}]}),
    );
    let mut s = sources();
    s.config_maps
        .insert("n".into(), config_map(json!({"data": {"1X": "v"}})));
    let (got, notes) = run(&p, &s);
    assert_eq!(got, vars(&[("P1X", "v")]));
    assert_eq!(
        notes,
        ["envFrom configmap n: left out `1X`: not valid variable names (the kubelet skips them too)"]
    );
}

#[test]
fn expansion_follows_the_kubelet() {
    let p = env_of(json!([
        {"name": "HOST", "value": "db"},
        {"name": "URL", "value": "pg://$(HOST):$(PORT)/x"},
        {"name": "PORT", "value": "5432"},
        {"name": "ESCAPED", "value": "$$(HOST) costs $$5"},
        {"name": "UNCLOSED", "value": "a$(HOST"},
        {"name": "NESTED", "value": "$($(HOST)"},
        {"name": "OTHER", "value": "$HOST ${HOST} 100% $"},
        {"name": "EMPTY_REF", "value": "$()"},
        {"name": "UNICODE", "value": "€$€$(HOST)€"},
        {"name": "EMPTY", "value": ""},
        {"name": "NONE"},
    ]));
    let (got, notes) = run(&p, &sources());
    assert_eq!(
        got,
        vars(&[
            ("HOST", "db"),
            ("URL", "pg://db:$(PORT)/x"),
            ("PORT", "5432"),
            ("ESCAPED", "$(HOST) costs $5"),
            ("UNCLOSED", "a$(HOST"),
            // The name runs to the first `)`: `$(HOST`, undefined.
            ("NESTED", "$($(HOST)"),
            ("OTHER", "$HOST ${HOST} 100% $"),
            ("EMPTY_REF", "$()"),
            ("UNICODE", "€$€db€"),
            ("EMPTY", ""),
            ("NONE", ""),
        ])
    );
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn field_refs_read_the_pod() {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let p = env_of(json!([
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("POD_UID", "metadata.uid"),
        field("NODE", "spec.nodeName"),
        field("SA", "spec.serviceAccountName"),
        field("APP", "metadata.labels['app']"),
        field("MISSING_LABEL", "metadata.labels['nope']"),
        field("TEAM", "metadata.annotations['team']"),
        field("HOST_IP", "status.hostIP"),
        field("HOST_IPS", "status.hostIPs"),
        field("POD_IP", "status.podIP"),
        field("POD_IPS", "status.podIPs"),
        field("ALL_LABELS", "metadata.labels"),
        field("PHASE", "status.phase"),
        {"name": "V2", "valueFrom": {"fieldRef": {"apiVersion": "v2", "fieldPath": "metadata.name"}}},
    ]));
    let (got, notes) = run(&p, &sources());
    assert_eq!(
        got,
        vars(&[
            ("POD_NAME", "web-7f9c"),
            ("POD_NAMESPACE", "apps"),
            ("POD_UID", "0b1c-22"),
            ("NODE", "node-1"),
            ("SA", "web-sa"),
            ("APP", "web"),
            ("MISSING_LABEL", ""),
            ("TEAM", "core"),
            ("HOST_IP", "192.168.1.5"),
            ("HOST_IPS", "192.168.1.5,fd00::5"),
            ("POD_IP", "10.1.2.3"),
            ("POD_IPS", "10.1.2.3,fd00::1:3"),
        ])
    );
    assert_eq!(
        notes,
        [
            "ALL_LABELS: left out: fieldRef `metadata.labels` is not a field the kubelet gives to env; fix: set it yourself",
            "PHASE: left out: fieldRef `status.phase` is not a field the kubelet gives to env; fix: set it yourself",
            "V2: left out: fieldRef `metadata.name` has apiVersion v2, which the kubelet refuses",
        ]
    );

    // A pod that is not running yet has no IPs: left out, not empty.
    let mut pending = env_of(json!([
        field("POD_IP", "status.podIP"),
        field("POD_IPS", "status.podIPs")
    ]));
    pending.status = None;
    let (got, notes) = run(&pending, &sources());
    assert!(got.is_empty());
    assert_eq!(
        notes,
        [
            "POD_IP: left out: fieldRef `status.podIP`: the pod has no IP yet; fix: pick a running pod, or set it yourself",
            "POD_IPS: left out: fieldRef `status.podIPs`: the pod has no IP yet; fix: pick a running pod, or set it yourself",
        ]
    );
}

#[test]
fn resource_field_refs_round_up_by_divisor() {
    let res = |name: &str, resource: &str, divisor: Option<&str>| {
        let mut r = json!({"resource": resource});
        if let Some(d) = divisor {
            r["divisor"] = json!(d);
        }
        json!({"name": name, "valueFrom": {"resourceFieldRef": r}})
    };
    let p = app(json!({
        "resources": {
            "limits": {"cpu": "1500m", "memory": "256Mi", "hugepages-2Mi": "4Mi"},
            "requests": {"cpu": "250m", "ephemeral-storage": "1G"},
        },
        "env": [
            res("CPU_LIMIT", "limits.cpu", None),
            res("CPU_LIMIT_M", "limits.cpu", Some("1m")),
            res("CPU_REQUEST_M", "requests.cpu", Some("1m")),
            res("CPU_REQUEST", "requests.cpu", None),
            res("MEM_LIMIT_MI", "limits.memory", Some("1Mi")),
            res("MEM_LIMIT", "limits.memory", None),
            res("MEM_LIMIT_K", "limits.memory", Some("1k")),
            // Unset request: the limit, as API defaulting copies it.
            res("MEM_REQUEST", "requests.memory", Some("1Mi")),
            res("STORAGE_REQUEST_M", "requests.ephemeral-storage", Some("1M")),
            res("HUGE", "limits.hugepages-2Mi", Some("1Mi")),
            res("ZERO_DIVISOR", "limits.cpu", Some("0")),
            res("STORAGE_LIMIT", "limits.ephemeral-storage", None),
            res("BAD_DIVISOR", "limits.cpu", Some("1x")),
            res("GPU", "limits.nvidia.com/gpu", None),
        ],
    }));
    let (got, notes) = run(&p, &sources());
    assert_eq!(
        got,
        vars(&[
            ("CPU_LIMIT", "2"),
            ("CPU_LIMIT_M", "1500"),
            ("CPU_REQUEST_M", "250"),
            ("CPU_REQUEST", "1"),
            ("MEM_LIMIT_MI", "256"),
            ("MEM_LIMIT", "268435456"),
            ("MEM_LIMIT_K", "268436"),
            ("MEM_REQUEST", "256"),
            ("STORAGE_REQUEST_M", "1000"),
            ("HUGE", "4"),
            ("ZERO_DIVISOR", "2"),
        ])
    );
    assert_eq!(
        notes,
        [
            "STORAGE_LIMIT: left out: container app sets no limits.ephemeral-storage, so the kubelet gives the node's allocatable, which netmux does not know; fix: set it yourself",
            "BAD_DIVISOR: left out: resourceFieldRef `limits.cpu`: quantity `1x` has a suffix netmux does not read",
            "GPU: left out: resourceFieldRef `limits.nvidia.com/gpu` is not a resource the kubelet exposes (limits or requests of cpu, memory, ephemeral-storage, hugepages-*); fix: set it yourself",
        ]
    );
}

#[test]
fn unset_limits_are_noted_or_taken_from_the_pod_or_another_container() {
    let res = |name: &str, resource: &str, container: &str| json!({"name": name, "valueFrom": {"resourceFieldRef": {"resource": resource, "containerName": container, "divisor": "1m"}}});
    let env = json!([
        res("CPU_LIMIT", "limits.cpu", ""),
        res("CPU_REQUEST", "requests.cpu", ""),
        res("SIDE_CPU", "limits.cpu", "side"),
        res("GHOST", "limits.cpu", "ghost"),
    ]);
    let spec = |pod_resources: Value| {
        json!({
            "enableServiceLinks": false,
            "resources": pod_resources,
            "containers": [
                {"name": "app", "env": env.clone(), "resources": {"limits": {"cpu": "0"}}},
                {"name": "side", "resources": {"limits": {"cpu": "0.5"}}},
            ],
        })
    };
    let (got, notes) = run(&pod(spec(json!({}))), &sources());
    assert_eq!(got, vars(&[("CPU_REQUEST", "0"), ("SIDE_CPU", "500")]));
    assert_eq!(
        notes,
        [
            "CPU_LIMIT: left out: container app sets no limits.cpu, so the kubelet gives the node's allocatable, which netmux does not know; fix: set it yourself",
            "GHOST: left out: resourceFieldRef `limits.cpu`: no container ghost in the pod; fix: set it yourself",
        ]
    );
    // Pod-level resources stand in for the node's allocatable.
    let (got, _) = run(&pod(spec(json!({"limits": {"cpu": "2"}}))), &sources());
    assert_eq!(got[0], ("CPU_LIMIT".to_string(), "2000".to_string()));
}

#[test]
fn quantities_parse_exactly_and_never_panic() {
    let value = |q: &str| {
        let p = env_of(
            json!([{"name": "V", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}}]),
        );
        let mut p = p;
        let c = &mut p.spec.as_mut().unwrap().containers[0];
        c.resources = Some(serde_json::from_value(json!({"limits": {"memory": q}})).unwrap());
        let (got, notes) = run(&p, &sources());
        got.first().map(|(_, v)| v.clone()).ok_or(notes.join("\n"))
    };
    assert_eq!(value("1.5Gi").unwrap(), "1610612736");
    assert_eq!(value("0.5").unwrap(), "1");
    assert_eq!(value(".5k").unwrap(), "500");
    assert_eq!(value("1e3").unwrap(), "1000");
    assert_eq!(value("15E-1").unwrap(), "2");
    assert_eq!(value("2E").unwrap(), "2000000000000000000");
    assert_eq!(value("+3M").unwrap(), "3000000");
    assert_eq!(value("100u").unwrap(), "1");
    for bad in [
        "",
        "-1",
        ".",
        "1..2",
        "Ki",
        "1 Mi",
        "1e",
        "1e99999999999",
        "1Zi",
        "9".repeat(60).as_str(),
        "1.0000000000000000000000000000000000000001",
    ] {
        assert!(parse_quantity(&Quantity(bad.to_string())).is_err(), "{bad}");
        assert!(value(bad).is_err(), "{bad}");
    }
    assert_eq!(
        value("-1").unwrap_err(),
        "V: left out: resourceFieldRef `limits.memory`: quantity `-1` is negative"
    );
}

#[test]
fn secrets_are_decoded_and_must_be_text() {
    let p = app(json!({
        "envFrom": [{"secretRef": {"name": "creds"}}],
        "env": [
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "RAW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "raw"}}},
        ],
    }));
    let mut s = sources();
    // base64 of "s3cret", of "alice", of bytes ff fe, and of "a\0b".
    s.secrets.insert(
        "creds".into(),
        secret(json!({
            "data": {"password": "czNjcmV0", "USER": "YWxpY2U=", "raw": "//4=", "NUL": "YQBi"},
            "stringData": {"USER": "bob"},
        })),
    );
    let (got, notes) = run(&p, &s);
    assert_eq!(
        got,
        vars(&[
            ("USER", "bob"),
            ("password", "s3cret"),
            ("PASSWORD", "s3cret")
        ])
    );
    assert_eq!(
        notes,
        [
            "envFrom secret creds: left out `NUL`, `raw`: the value is not UTF-8 text or holds a NUL byte; fix: set it yourself",
            "RAW: left out: secret creds: key `raw` is not UTF-8 text or holds a NUL byte; fix: set it yourself",
        ]
    );
}

#[test]
fn a_forbidden_secret_names_the_variable_the_secret_and_the_fix() {
    let forbidden = "secrets \"db-creds\" is forbidden: User \"alice\" cannot get resource \"secrets\" in API group \"\" in the namespace \"apps\"";
    let p = app(json!({
        "envFrom": [{"prefix": "DB_", "secretRef": {"name": "db-creds"}}],
        "env": [
            {"name": "DB_PASSWORD", "value": "placeholder"},
            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db-creds", "key": "password"}}},
            {"name": "DSN", "value": "pg://u:$(DB_PASSWORD)@db/$(DB_NAME)"},
            {"name": "FLAG", "valueFrom": {"configMapKeyRef": {"name": "flags", "key": "on"}}},
        ],
    }));
    let mut s = sources();
    s.secrets.insert("db-creds".into(), Err(forbidden.into()));
    s.config_maps
        .insert("flags".into(), Err("connection reset by peer".into()));
    let (got, notes) = run(&p, &s);
    assert_eq!(got, vars(&[("DSN", "pg://u:$(DB_PASSWORD)@db/$(DB_NAME)")]));
    assert_eq!(
        notes,
        [
            format!("envFrom secret db-creds (prefix DB_): left out: {forbidden}; fix: ask for `get secrets` in namespace apps, or set them yourself"),
            format!("DB_PASSWORD: left out: secret db-creds: {forbidden}; fix: ask for `get secrets` in namespace apps, or set it yourself"),
            "DSN: approximated: $(DB_PASSWORD) is left out above, so it stays as written".into(),
            "DSN: approximated: $(DB_NAME) is not defined here and may come from envFrom secret db-creds (prefix DB_), left out above; it stays as written".into(),
            "FLAG: left out: configmap flags: connection reset by peer; fix: try again, or set it yourself".into(),
        ]
    );
}

#[test]
fn optional_and_missing_sources_follow_the_kubelet() {
    let key = |name: &str, kind: &str, obj: &str, key: &str, optional: bool| json!({"name": name, "valueFrom": {kind: {"name": obj, "key": key, "optional": optional}}});
    let p = app(json!({
        "envFrom": [
            {"secretRef": {"name": "gone", "optional": true}},
            {"configMapRef": {"name": "gone-cm"}},
            {"configMapRef": {"name": "unfetched", "optional": true}},
        ],
        "env": [
            {"name": "KEEP", "value": "earlier"},
            key("KEEP", "secretKeyRef", "gone", "k", true),
            key("OPT_KEY", "configMapKeyRef", "cm", "absent", true),
            key("REQ_KEY", "configMapKeyRef", "cm", "absent", false),
            key("BIN_KEY", "configMapKeyRef", "cm", "blob", false),
            key("GOOD", "configMapKeyRef", "cm", "present", false),
            key("NO_CM", "configMapKeyRef", "gone-cm", "k", false),
        ],
    }));
    let mut s = sources();
    s.secrets
        .insert("gone".into(), Err("secrets \"gone\" not found".into()));
    s.config_maps.insert(
        "gone-cm".into(),
        Err("configmaps \"gone-cm\" not found".into()),
    );
    s.config_maps.insert(
        "cm".into(),
        config_map(json!({"data": {"present": "yes"}, "binaryData": {"blob": "AA=="}})),
    );
    let (got, notes) = run(&p, &s);
    assert_eq!(got, vars(&[("KEEP", "earlier"), ("GOOD", "yes")]));
    assert_eq!(
        notes,
        [
            "envFrom configmap gone-cm: left out: configmaps \"gone-cm\" not found; fix: create configmap gone-cm in namespace apps, or set them yourself",
            // Not handed over at all: not known to be missing, so noted.
            "envFrom configmap unfetched: left out: it was not fetched; fix: try again, or set them yourself",
            "REQ_KEY: left out: configmap cm has no key `absent`; fix: set it yourself",
            "BIN_KEY: left out: configmap cm has no key `blob` (it is in binaryData, which the kubelet does not use for env); fix: set it yourself",
            "NO_CM: left out: configmap gone-cm: configmaps \"gone-cm\" not found; fix: create configmap gone-cm in namespace apps, or set it yourself",
        ]
    );
}

#[test]
fn service_links_come_first_by_service_name() {
    let p = pod(json!({"containers": [{"name": "app", "env": [
        {"name": "REDIS_PRIMARY_SERVICE_PORT", "value": "1"},
        {"name": "ADDR", "value": "$(REDIS_PRIMARY_SERVICE_HOST):$(REDIS_PRIMARY_SERVICE_PORT)"},
    ]}]}));
    let mut s = sources();
    s.kubernetes_service = Some(service(
        "kubernetes",
        "10.96.0.1",
        json!([{"name": "https", "port": 443}]),
    ));
    s.services = Ok(vec![
        service(
            "redis-primary",
            "10.0.0.11",
            json!([{"name": "redis", "port": 6379}, {"name": "metrics-http", "port": 9121, "protocol": "TCP"}]),
        ),
        service("dns", "fd00::10", json!([{"port": 53, "protocol": "UDP"}])),
        service("headless", "None", json!([{"port": 80}])),
        service("pending", "", json!([{"port": 80}])),
        service("other-ns", "10.0.0.12", json!([{"port": 80}])),
    ]);
    if let Ok(list) = &mut s.services {
        list[4].metadata.namespace = Some("elsewhere".into());
    }
    let env = resolve(&p, "app", &s);
    assert_eq!(
        env.vars,
        vars(&[
            ("DNS_SERVICE_HOST", "fd00::10"),
            ("DNS_SERVICE_PORT", "53"),
            ("DNS_PORT", "udp://[fd00::10]:53"),
            ("DNS_PORT_53_UDP", "udp://[fd00::10]:53"),
            ("DNS_PORT_53_UDP_PROTO", "udp"),
            ("DNS_PORT_53_UDP_PORT", "53"),
            ("DNS_PORT_53_UDP_ADDR", "fd00::10"),
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            ("KUBERNETES_PORT_443_TCP_PORT", "443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
            ("REDIS_PRIMARY_SERVICE_HOST", "10.0.0.11"),
            ("REDIS_PRIMARY_SERVICE_PORT", "1"),
            ("REDIS_PRIMARY_SERVICE_PORT_REDIS", "6379"),
            ("REDIS_PRIMARY_SERVICE_PORT_METRICS_HTTP", "9121"),
            ("REDIS_PRIMARY_PORT", "tcp://10.0.0.11:6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP", "tcp://10.0.0.11:6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP_PROTO", "tcp"),
            ("REDIS_PRIMARY_PORT_6379_TCP_PORT", "6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP_ADDR", "10.0.0.11"),
            ("REDIS_PRIMARY_PORT_9121_TCP", "tcp://10.0.0.11:9121"),
            ("REDIS_PRIMARY_PORT_9121_TCP_PROTO", "tcp"),
            ("REDIS_PRIMARY_PORT_9121_TCP_PORT", "9121"),
            ("REDIS_PRIMARY_PORT_9121_TCP_ADDR", "10.0.0.11"),
            ("ADDR", "10.0.0.11:1"),
        ])
    );
    assert!(env.notes.is_empty(), "{:?}", env.notes);
}

#[test]
fn disabled_links_keep_the_kubernetes_service() {
    let mut p = app(json!({}));
    let mut s = sources();
    s.services = Ok(vec![service("redis", "10.0.0.11", json!([{"port": 6379}]))]);
    s.kubernetes_service = Some(service(
        "kubernetes",
        "10.96.0.1",
        json!([{"name": "https", "port": 443}]),
    ));
    let env = resolve(&p, "app", &s);
    let names: Vec<&str> = env.vars.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 8);
    assert!(
        names.iter().all(|n| n.starts_with("KUBERNETES_")),
        "{names:?}"
    );
    assert!(env.notes.is_empty());

    // A listing error does not matter with links disabled; with them on it is one note.
    s.services =
        Err("services is forbidden: User \"alice\" cannot list resource \"services\"".into());
    assert_eq!(resolve(&p, "app", &s).vars.len(), 8);
    p.spec.as_mut().unwrap().enable_service_links = None;
    let env = resolve(&p, "app", &s);
    assert_eq!(env.vars.len(), 8);
    assert_eq!(
        env.notes,
        ["service links (NAME_SERVICE_HOST, NAME_SERVICE_PORT, NAME_PORT…): left out for the Services of namespace apps: listing them: services is forbidden: User \"alice\" cannot list resource \"services\"; fix: ask for `list services` in namespace apps, or set them yourself"]
    );

    // Nothing handed over for `kubernetes`: noted once.
    s.kubernetes_service = None;
    s.services = Ok(vec![service("bare", "10.0.0.9", json!([]))]);
    let env = resolve(&p, "app", &s);
    assert_eq!(env.vars, vars(&[("BARE_SERVICE_HOST", "10.0.0.9")]));
    assert_eq!(
        env.notes,
        [
            KUBE_NOTE,
            "BARE_SERVICE_PORT, BARE_PORT…: left out: service bare has no ports",
        ]
    );
}

#[test]
fn an_unknown_container_or_empty_pod_is_a_note() {
    let p = app(json!({}));
    let env = resolve(&p, "db", &sources());
    assert!(env.vars.is_empty());
    assert_eq!(
        env.notes,
        ["container db: not in pod apps/web-7f9c (it has: app); fix: name one of those"]
    );
    let env = resolve(&Pod::default(), "app", &sources());
    assert_eq!(
        env.notes,
        ["container app: not in pod default/? (it has: ); fix: name one of those"]
    );
    // Debug never shows values.
    let p = env_of(json!([{"name": "TOKEN", "value": "hunter2"}]));
    let shown = format!("{:?}", resolve(&p, "app", &sources()));
    assert!(
        shown.contains("TOKEN") && !shown.contains("hunter2"),
        "{shown}"
    );
}
