//! `manifests/`: every overlay and example builds with `kubectl kustomize`,
//! every object deserializes into its k8s-openapi type, the ports agree
//! with the server configuration they ship, the security settings and RBAC
//! are what docs/kubernetes.md promises, and every query of the Grafana
//! dashboard names a metric the code exports.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// Objects of one kustomization. Without kubectl the test fails, or with
/// `NETMUX_ALLOW_SKIP=1` it is skipped (`None`).
fn build(dir: &str) -> Option<Vec<Value>> {
    let out = match Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join("manifests").join(dir))
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            netmux_testbed::prereq::require(
                &format!("manifests: kubectl kustomize manifests/{dir}"),
                Some(format!(
                    "kubectl not runnable ({e}); apt-get install kubernetes-client \
                     (cargo xtask test installs it)"
                )),
            );
            return None;
        }
    };
    assert!(
        out.status.success(),
        "kubectl kustomize manifests/{dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("kustomize output is UTF-8");
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("manifests/{dir}: YAML: {e}"))
        })
        .collect();
    for d in &docs {
        typed(dir, d);
    }
    Some(docs)
}

fn as_<T: serde::de::DeserializeOwned>(dir: &str, v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| {
        panic!(
            "manifests/{dir}: {} {} does not deserialize: {e}",
            v["kind"], v["metadata"]["name"]
        )
    })
}

/// Deserializes into the k8s-openapi type of its kind.
fn typed(dir: &str, v: &Value) {
    match v["kind"].as_str().unwrap_or_default() {
        "Namespace" => drop(as_::<Namespace>(dir, v)),
        "ServiceAccount" => drop(as_::<ServiceAccount>(dir, v)),
        "ConfigMap" => drop(as_::<ConfigMap>(dir, v)),
        "Secret" => drop(as_::<Secret>(dir, v)),
        "Service" => drop(as_::<Service>(dir, v)),
        "Deployment" => drop(as_::<Deployment>(dir, v)),
        "StatefulSet" => drop(as_::<StatefulSet>(dir, v)),
        "Pod" => drop(as_::<Pod>(dir, v)),
        "Role" => drop(as_::<Role>(dir, v)),
        "RoleBinding" => drop(as_::<RoleBinding>(dir, v)),
        "ClusterRole" => drop(as_::<ClusterRole>(dir, v)),
        "ClusterRoleBinding" => drop(as_::<ClusterRoleBinding>(dir, v)),
        other => panic!("manifests/{dir}: unexpected kind {other:?}: add it to this test"),
    }
}

fn one<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// (verb, apiGroup/resource) pairs granted by rules.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for r in rules {
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    out.insert((v.clone(), format!("{g}/{res}")));
                }
            }
        }
    }
    out
}

fn set(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    pairs
        .iter()
        .map(|(v, r)| ((*v).to_owned(), (*r).to_owned()))
        .collect()
}

const WATCH_AND_EVENTS: &[(&str, &str)] = &[
    ("get", "/services"),
    ("list", "/services"),
    ("watch", "/services"),
    ("get", "discovery.k8s.io/endpointslices"),
    ("list", "discovery.k8s.io/endpointslices"),
    ("watch", "discovery.k8s.io/endpointslices"),
    ("create", "events.k8s.io/events"),
    ("patch", "events.k8s.io/events"),
    // C2L: the holder's EndpointSlice; an ad hoc service's Service.
    ("create", "discovery.k8s.io/endpointslices"),
    ("update", "discovery.k8s.io/endpointslices"),
    ("delete", "discovery.k8s.io/endpointslices"),
    ("create", "/services"),
    // Intercepts: the selector recorded and removed, then put back; the
    // original pods listed.
    ("update", "/services"),
    ("list", "/pods"),
    // Replace intercepts: the workloads found, stopped, started again.
    ("list", "apps/deployments"),
    ("list", "apps/statefulsets"),
    ("get", "apps/deployments/scale"),
    ("patch", "apps/deployments/scale"),
    ("get", "apps/statefulsets/scale"),
    ("patch", "apps/statefulsets/scale"),
];

fn check_server(dir: &str, docs: &[Value], expect_namespaces: &str) {
    // The shipped configuration parses, and everything agrees with it.
    let cm: ConfigMap = as_(dir, one(docs, "ConfigMap", config_map_name(docs)));
    let toml = cm
        .data
        .as_ref()
        .and_then(|d| d.get("server.toml"))
        .expect("server.toml in the ConfigMap");
    let config = netmux_server::config::Config::parse(Path::new("/etc/netmux/server.toml"), toml)
        .unwrap_or_else(|e| panic!("manifests/{dir}: server.toml: {e}"));
    let (quic, http) = (
        config.listen.port(),
        config.http.expect("http listener").port(),
    );
    assert_eq!((quic, http), (7443, 7080), "the documented ports");
    assert_eq!(
        config.stream_listen.map(|a| a.port()),
        Some(quic),
        "the port-forward transport needs stream_listen on the quic-stream port"
    );
    assert!(config.rbac.is_some(), "manifests use RBAC access");
    match &config.runtime {
        netmux_server::config::RuntimeConfig::Kubernetes { namespaces, .. } => {
            assert_eq!(format!("{namespaces:?}"), expect_namespaces)
        }
        other => panic!("manifests/{dir}: runtime {other:?}"),
    }

    let svc: Service = as_(dir, one(docs, "Service", "netmux-server"));
    let ports: HashSet<(String, i32, String)> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            (
                p.name.unwrap_or_default(),
                p.port,
                p.protocol.unwrap_or_default(),
            )
        })
        .collect();
    for want in [
        ("quic".to_owned(), i32::from(quic), "UDP".to_owned()),
        ("quic-stream".to_owned(), i32::from(quic), "TCP".to_owned()),
        ("http".to_owned(), i32::from(http), "TCP".to_owned()),
    ] {
        assert!(
            ports.contains(&want),
            "manifests/{dir}: Service lacks {want:?}: {ports:?}"
        );
    }

    let dep: Deployment = as_(dir, one(docs, "Deployment", "netmux-server"));
    let spec = dep.spec;
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("netmux-server"));
    assert_eq!(
        pod.security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root),
        Some(true)
    );
    let c = &pod.containers[0];
    let cports: HashSet<(String, i32, String)> = c
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.container_port,
                p.protocol.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        cports.contains(&("quic".into(), i32::from(quic), "UDP".into())),
        "{cports:?}"
    );
    assert!(
        cports.contains(&("http".into(), i32::from(http), "TCP".into())),
        "{cports:?}"
    );
    assert!(
        cports.contains(&("quic-stream".into(), i32::from(quic), "TCP".into())),
        "{cports:?}"
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/live"));
    assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/ready"));
    let sc = c
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_owned()])
    );
    let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    assert!(requests.is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")));
    let mounts: Vec<&str> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert!(
        mounts.contains(&config.state_dir.to_str().unwrap_or_default()),
        "state_dir is writable: {mounts:?}"
    );

    // RBAC: exactly the verbs the code uses.
    let auth: ClusterRole = as_(dir, one(docs, "ClusterRole", "netmux-server-auth"));
    assert_eq!(
        grants(auth.rules.as_deref().unwrap_or_default()),
        set(&[
            ("create", "authentication.k8s.io/tokenreviews"),
            ("create", "authorization.k8s.io/subjectaccessreviews"),
        ])
    );
    // Reverse-claim Leases, in the server's namespace only.
    // What `netmux connect` does with the developer's credentials
    // (netmux-daemon/src/cluster/forward.rs), and nothing more.
    let user: Role = as_(dir, one(docs, "Role", "netmux-user"));
    let mut granted: Vec<(String, String)> = user
        .rules
        .iter()
        .flatten()
        .flat_map(|r| {
            let resources = r.resources.clone().unwrap_or_default();
            resources
                .into_iter()
                .flat_map(|res| r.verbs.iter().map(move |v| (res.clone(), v.clone())))
                .collect::<Vec<_>>()
        })
        .collect();
    granted.sort();
    assert_eq!(
        granted,
        [
            ("configmaps".to_owned(), "get".to_owned()),
            ("leases".to_owned(), "list".to_owned()),
            ("pods".to_owned(), "list".to_owned()),
            ("pods/portforward".to_owned(), "create".to_owned()),
            ("pods/portforward".to_owned(), "get".to_owned()),
            ("services".to_owned(), "get".to_owned()),
            ("services".to_owned(), "intercept".to_owned()),
        ]
    );
    // What `netmux intercept --replace` asks of the user (a
    // SubjectAccessReview per workload), as `kubectl scale` needs.
    let replace: ClusterRole = as_(dir, one(docs, "ClusterRole", "netmux-replace"));
    assert_eq!(
        grants(replace.rules.as_deref().unwrap_or_default()),
        set(&[
            ("patch", "apps/deployments/scale"),
            ("patch", "apps/statefulsets/scale"),
        ])
    );
    let leases: Role = as_(dir, one(docs, "Role", "netmux-server-leases"));
    assert_eq!(leases.metadata.namespace.as_deref(), Some("netmux"));
    assert_eq!(
        grants(leases.rules.as_deref().unwrap_or_default()),
        set(&[
            ("get", "coordination.k8s.io/leases"),
            ("list", "coordination.k8s.io/leases"),
            ("create", "coordination.k8s.io/leases"),
            ("update", "coordination.k8s.io/leases"),
            ("delete", "coordination.k8s.io/leases"),
        ])
    );
    let binding = one(docs, "RoleBinding", "netmux-server-leases");
    assert_eq!(binding["roleRef"]["name"], "netmux-server-leases");
    assert_eq!(binding["subjects"][0]["name"], "netmux-server");
}

fn config_map_name(docs: &[Value]) -> &str {
    docs.iter()
        .find(|d| d["kind"] == "ConfigMap")
        .and_then(|d| d["metadata"]["name"].as_str())
        .expect("a ConfigMap")
}

#[test]
fn namespaced_overlay() {
    let Some(docs) = build("overlays/namespaced") else {
        return;
    };
    check_server("overlays/namespaced", &docs, "Own");
    let role: Role = as_("overlays/namespaced", one(&docs, "Role", "netmux-server"));
    assert_eq!(role.metadata.namespace.as_deref(), Some("netmux"));
    assert_eq!(
        grants(role.rules.as_deref().unwrap_or_default()),
        set(WATCH_AND_EVENTS)
    );
    assert!(!docs
        .iter()
        .any(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "netmux-server-watch"));
}

#[test]
fn cluster_wide_overlay() {
    let Some(docs) = build("overlays/cluster-wide") else {
        return;
    };
    check_server("overlays/cluster-wide", &docs, "All");
    let role: ClusterRole = as_(
        "overlays/cluster-wide",
        one(&docs, "ClusterRole", "netmux-server-watch"),
    );
    assert_eq!(
        grants(role.rules.as_deref().unwrap_or_default()),
        set(WATCH_AND_EVENTS)
    );
}

#[test]
fn examples_build_and_their_annotations_publish() {
    use netmux_server::runtime::kubernetes::{catalog_from, CatalogOptions};
    let mut services = Vec::new();
    for ex in [
        "sample-service",
        "sample-service-reverse",
        "kafka",
        "postgres",
        "prometheus",
        "grafana",
    ] {
        let Some(docs) = build(&format!("examples/{ex}")) else {
            return;
        };
        for d in docs.iter().filter(|d| d["kind"] == "Service") {
            let mut s: Service = as_(ex, d);
            // Assigned by the API server.
            if let Some(spec) = s.spec.as_mut() {
                spec.cluster_ip = Some("10.96.0.9".into());
            }
            services.push(s);
        }
    }
    let (catalog, problems) = catalog_from(
        &services,
        &[] as &[k8s_openapi::api::discovery::v1::EndpointSlice],
        &CatalogOptions::default(),
    );
    assert!(problems.is_empty(), "{problems:?}");
    let names: BTreeSet<String> = catalog.iter().map(|s| s.name.clone()).collect();
    for want in ["sample01", "sample-rev", "kafka", "postgres"] {
        assert!(names.contains(want), "{want} not published: {names:?}");
    }
}

/// Metric names the code registers (string literals `"netmux_..."`).
fn exported_metrics() -> HashSet<String> {
    let mut out = HashSet::new();
    for f in [
        "netmux-server/src/metrics.rs",
        "netmux-daemon/src/metrics.rs",
    ] {
        let text = std::fs::read_to_string(repo().join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        for piece in text.split('"').skip(1).step_by(2) {
            if piece.starts_with("netmux_")
                && piece
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                out.insert(piece.to_owned());
            }
        }
    }
    out
}

#[test]
fn every_dashboard_query_names_exported_metrics() {
    let path = repo().join("manifests/examples/grafana/netmux-dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard"))
        .expect("dashboard JSON");
    let exported = exported_metrics();
    assert!(
        exported.len() > 10,
        "metric names found in the code: {exported:?}"
    );
    let mut queries = 0;
    let mut used = HashSet::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            queries += 1;
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("netmux_"))
                .collect();
            assert!(
                !names.is_empty(),
                "panel {}: query names no netmux metric: {expr}",
                panel["title"]
            );
            for n in names {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| n.strip_suffix(s).filter(|b| exported.contains(*b)))
                    .unwrap_or(n);
                assert!(
                    exported.contains(base),
                    "panel {}: {n} is not exported by the code",
                    panel["title"]
                );
                used.insert(base.to_owned());
            }
        }
    }
    assert!(queries > 10);
    let unused: Vec<&String> = exported.iter().filter(|m| !used.contains(*m)).collect();
    // Not a failure (metrics are added elsewhere), but worth a panel.
    if !unused.is_empty() {
        eprintln!("NOTE: metrics without a dashboard panel: {unused:?}");
    }
}
