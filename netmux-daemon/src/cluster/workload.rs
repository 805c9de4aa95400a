//! The workload behind a cluster Service, read with the user's own
//! credentials: one of its Ready pods and the environment of the container
//! a Service port reaches (`netmux env`, `netmux intercept --env-file`).
//!
//! Reads only what the user may read (the API server applies their RBAC
//! to every request): the Service, its pods, the ConfigMaps and Secrets
//! the container references, and the namespace's Services for the
//! service-link variables. What cannot be read becomes a note that names
//! the variable; [`super::environment`] does the kubelet's part.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodTemplateSpec, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};

use netmux_common::proto::control::INTERCEPT_ORIGINAL;

use super::environment::{self, volumes, Sources};
use super::forward::{is_ready, KubeLink};

/// How long reading a workload may take before the user is told.
const WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// `denied` for a read `netmux env` cannot do without, with the fix.
fn needed(verb: &str, what: &str, ns: &str, e: &kube::Error) -> String {
    let why = denied(verb, what, ns, e);
    match e {
        kube::Error::Api(s) if s.code == 403 => format!(
            "{why}; fix: an admin grants `{verb} {what}` there (the built-in ClusterRole `view` does)"
        ),
        _ => why,
    }
}

/// What `netmux env` asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asked<'a> {
    /// The Service port whose container is meant (`None`: its first).
    pub(crate) port: Option<u16>,
    /// The container by name instead.
    pub(crate) container: Option<&'a str>,
    /// Also the files of its volumes (`--mount`).
    pub(crate) mounts: bool,
}

/// A workload named instead of a Service: `KIND/NAME` or
/// `NAMESPACE/KIND/NAME`, with kubectl's kinds and short names (a worker
/// that no Service fronts has an environment too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Named {
    /// The namespace given (else the kubeconfig context's).
    pub(crate) namespace: Option<String>,
    /// Its kind.
    pub(crate) kind: Kind,
    /// Its name.
    pub(crate) name: String,
}

/// The kinds [`Named`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A pod itself.
    Pod,
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

impl Kind {
    /// The kind `word` names (`deployment`, `deployments`, `deploy`, …).
    fn parse(word: &str) -> Option<Kind> {
        match word.to_ascii_lowercase().as_str() {
            "pod" | "pods" | "po" => Some(Kind::Pod),
            "deployment" | "deployments" | "deploy" => Some(Kind::Deployment),
            "statefulset" | "statefulsets" | "sts" => Some(Kind::StatefulSet),
            "daemonset" | "daemonsets" | "ds" => Some(Kind::DaemonSet),
            _ => None,
        }
    }

    /// As kubectl names it.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Kind::Pod => "pod",
            Kind::Deployment => "deployment",
            Kind::StatefulSet => "statefulset",
            Kind::DaemonSet => "daemonset",
        }
    }
}

impl Named {
    /// `Ok(None)`: `text` names a Service (`NAME`, `NAMESPACE/NAME`).
    pub(crate) fn parse(text: &str) -> Result<Option<Named>, String> {
        let kinds = "deployment (deploy), statefulset (sts), daemonset (ds) or pod (po)";
        let named = |namespace: Option<&str>, kind, name: &str| {
            let empty = name.is_empty() || namespace.is_some_and(str::is_empty);
            match empty {
                true => Err(format!(
                    "{text:?}: an empty name; fix: KIND/NAME or NAMESPACE/KIND/NAME"
                )),
                false => Ok(Some(Named {
                    namespace: namespace.map(str::to_owned),
                    kind,
                    name: name.to_owned(),
                })),
            }
        };
        match text.split('/').collect::<Vec<_>>().as_slice() {
            [_] => Ok(None),
            [kind, name] => match Kind::parse(kind) {
                Some(kind) => named(None, kind, name),
                None => Ok(None),
            },
            [ns, kind, name] => match Kind::parse(kind) {
                Some(kind) => named(Some(ns), kind, name),
                None => Err(format!(
                    "{text:?}: {kind:?} is not a kind netmux env reads; fix: {kinds}, as NAMESPACE/KIND/NAME"
                )),
            },
            _ => Err(format!(
                "{text:?}: too many parts; fix: a Service (NAME or NAMESPACE/NAME) or a workload (KIND/NAME or NAMESPACE/KIND/NAME, KIND one of {kinds})"
            )),
        }
    }
}

/// What `netmux env` shows.
#[derive(Debug)]
pub(crate) struct Workload {
    /// The pod it was read from.
    pub(crate) pod: String,
    /// The container.
    pub(crate) container: String,
    /// The resolved variables and notes (the volumes' notes too).
    pub(crate) environment: environment::Environment,
    /// When asked for: the volume mounts whose files could be read.
    pub(crate) mounts: Vec<volumes::Mount>,
}

/// An API error as the user reads it: 403 names the permission asked
/// for (the caller or the note adds the fix).
fn denied(verb: &str, what: &str, ns: &str, e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => format!(
            "forbidden: your Kubernetes user may not {verb} {what} in namespace {ns} ({})",
            s.message
        ),
        kube::Error::Api(s) if s.code == 401 => format!(
            "the cluster refused your credentials (401 {}): run `netmux connect` again",
            s.message
        ),
        kube::Error::Api(s) if s.code == 404 => "not found".to_owned(),
        _ => format!("{verb} {what}: {e}"),
    }
}

/// The Service's pod selector; while it is intercepted, the one the
/// intercept recorded (the spec's is removed then).
fn selector(what: &str, svc: &Service) -> Result<BTreeMap<String, String>, String> {
    let recorded = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INTERCEPT_ORIGINAL));
    if let Some(text) = recorded {
        return serde_json::from_str::<BTreeMap<String, String>>(text)
            .ok()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                format!("{what} is intercepted and its annotation {INTERCEPT_ORIGINAL} is not a JSON object of strings: restore its selector (docs/intercept.md)")
            });
    }
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            format!("{what} has no selector: its endpoints are not pods, so there is no pod environment to read")
        })
}

/// Whether pod labels `labels` carry every pair of `selector`.
fn selects(selector: &BTreeMap<String, String>, labels: Option<&BTreeMap<String, String>>) -> bool {
    labels.is_some_and(|l| selector.iter().all(|(k, v)| l.get(k) == Some(v)))
}

/// A pod made from `template` in namespace `ns` (no name, no status).
fn from_template(ns: &str, template: PodTemplateSpec) -> Pod {
    let mut metadata = template.metadata.unwrap_or_default();
    metadata.namespace = Some(ns.to_owned());
    Pod {
        metadata,
        spec: template.spec,
        status: None,
    }
}

/// The first Deployment, StatefulSet or DaemonSet of `ns` (in that order)
/// whose pod template `selector` selects, as `Kind ns/name` and a pod
/// made from the template. Kinds the user may not list are passed over.
async fn template(
    client: &kube::Client,
    ns: &str,
    selector: &BTreeMap<String, String>,
) -> Option<(String, Pod)> {
    let hit =
        first_selected::<Deployment>(client, ns, selector, |d| (d.metadata.name, d.spec.template));
    if let Some(hit) = hit.await {
        return Some(hit);
    }
    let hit =
        first_selected::<StatefulSet>(client, ns, selector, |s| (s.metadata.name, s.spec.template));
    if let Some(hit) = hit.await {
        return Some(hit);
    }
    first_selected::<DaemonSet>(client, ns, selector, |d| (d.metadata.name, d.spec.template)).await
}

/// The workload kinds read here: namespaced, typed (Deployment,
/// StatefulSet, DaemonSet).
trait Apps:
    kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Apps for K where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
{
}

/// Of the workloads of kind `K` in `ns` (none if they cannot be listed),
/// the first whose pod template (`parts` gives its name and template)
/// `selector` selects: `Kind ns/name` and a pod made from the template.
async fn first_selected<K>(
    client: &kube::Client,
    ns: &str,
    selector: &BTreeMap<String, String>,
    parts: fn(K) -> (Option<String>, PodTemplateSpec),
) -> Option<(String, Pod)>
where
    K: Apps,
{
    let kind = K::kind(&()).into_owned();
    let list = Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .ok()?;
    list.items.into_iter().find_map(|w| {
        let (name, t) = parts(w);
        let labels = t.metadata.as_ref().and_then(|m| m.labels.as_ref());
        selects(selector, labels).then(|| {
            let name = name.unwrap_or_default();
            (format!("{kind} {ns}/{name}"), from_template(ns, t))
        })
    })
}

/// `k=v,k2=v2`, as a label selector.
fn label_selector(selector: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(",")
}

/// The pod of `what` (its pods carry `selector`) to read: a Ready one,
/// the same each time while it lives (the first by name); else one that
/// is not (crashing, say: its spec still gives the environment, and that
/// is when it is wanted), with a caveat. None: no pod at all.
async fn pick_pod(
    client: &kube::Client,
    ns: &str,
    selector: &BTreeMap<String, String>,
    what: &str,
) -> Result<Option<(Pod, Option<String>)>, String> {
    let mut pods: Vec<Pod> = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&label_selector(selector)))
        .await
        .map_err(|e| format!("pods of {what}: {}", needed("list", "pods", ns, &e)))?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    pods.sort_by_key(|p| (!is_ready(p), p.metadata.name.clone()));
    Ok(pods
        .into_iter()
        .next()
        .map(|pod| with_caveat(ns, pod, what)))
}

/// `pod` of `what`, with the caveat of reading it when it is not Ready.
fn with_caveat(ns: &str, pod: Pod, what: &str) -> (Pod, Option<String>) {
    let caveat = (!is_ready(&pod)).then(|| {
        format!(
            "pod {ns}/{} is not Ready (no pod of {what} is); its spec gives the environment, and what only a running pod has (its IPs) may be missing",
            pod.metadata.name.as_deref().unwrap_or("?")
        )
    });
    (pod, caveat)
}

/// The pod of workload `named` to read: the pod itself; else one of its
/// pods ([`pick_pod`] on its `matchLabels`), or its template.
async fn named_pod(
    client: &kube::Client,
    ns: &str,
    named: &Named,
    what: &str,
) -> Result<(Pod, Option<String>), String> {
    let name = named.name.as_str();
    let plural = format!("{}s", named.kind.word());
    let (selector, template) = match named.kind {
        Kind::Pod => {
            let pod = Api::<Pod>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .map_err(|e| format!("{what}: {}", needed("get", "pods", ns, &e)))?;
            return Ok(with_caveat(ns, pod, what));
        }
        Kind::Deployment => {
            let parts = |d: Deployment| (d.spec.selector, d.spec.template);
            get_parts(client, ns, name, &plural, what, parts).await?
        }
        Kind::StatefulSet => {
            let parts = |s: StatefulSet| (s.spec.selector, s.spec.template);
            get_parts(client, ns, name, &plural, what, parts).await?
        }
        Kind::DaemonSet => {
            let parts = |d: DaemonSet| (d.spec.selector, d.spec.template);
            get_parts(client, ns, name, &plural, what, parts).await?
        }
    };
    let labels = selector.match_labels.unwrap_or_default();
    let picked = match labels.is_empty() {
        // Only matchExpressions: its template, rather than a guess.
        true => None,
        false => pick_pod(client, ns, &labels, what).await?,
    };
    Ok(picked.unwrap_or_else(|| {
        let caveat = format!(
            "no pod of {what} to read: the environment comes from its pod template; what only a running pod has (its name, IPs, node) is missing"
        );
        (from_template(ns, template), Some(caveat))
    }))
}

/// Workload `name` of kind `K` in `ns`: its selector and pod template.
async fn get_parts<K>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    plural: &str,
    what: &str,
    parts: fn(K) -> (LabelSelector, PodTemplateSpec),
) -> Result<(LabelSelector, PodTemplateSpec), String>
where
    K: Apps,
{
    let w = Api::<K>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| format!("{what}: {}", needed("get", plural, ns, &e)))?;
    Ok(parts(w))
}

impl KubeLink {
    /// The environment of Service `ns/name`'s container for `asked.port`
    /// (the Service port; `None`: its first), or of the one named
    /// `asked.container`, in one of its Ready pods, within [`WITHIN`].
    pub(crate) async fn workload(
        &self,
        ns: &str,
        name: &str,
        asked: Asked<'_>,
    ) -> Result<Workload, String> {
        let what = format!("Service {ns}/{name}");
        let check = format!("kubectl get pods -n {ns}");
        self.within(&what, &check, self.read_workload(ns, name, asked))
            .await
    }

    /// `read`, or after [`WITHIN`] an error naming the API server, what
    /// was read and a command to `check` from here.
    async fn within(
        &self,
        what: &str,
        check: &str,
        read: impl std::future::Future<Output = Result<Workload, String>>,
    ) -> Result<Workload, String> {
        tokio::time::timeout(WITHIN, read).await.unwrap_or_else(|_| {
            Err(format!(
                "the API server ({}) did not answer within {}s while reading {what}: check `{check}` from here",
                self.api_server,
                WITHIN.as_secs()
            ))
        })
    }

    async fn read_workload(
        &self,
        ns: &str,
        name: &str,
        asked: Asked<'_>,
    ) -> Result<Workload, String> {
        let client = self.client().clone();
        let what = format!("Service {ns}/{name}");
        let svc = Api::<Service>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .map_err(|e| format!("{what}: {}", needed("get", "services", ns, &e)))?;
        let selector = selector(&what, &svc)?;
        let spec = svc.spec.unwrap_or_default();
        let ports = spec.ports.unwrap_or_default();
        let svc_port = match asked.port {
            None => ports.first(),
            Some(p) => ports.iter().find(|sp| sp.port == i32::from(p)),
        };
        if let (Some(p), None) = (asked.port, svc_port) {
            let have: Vec<String> = ports.iter().map(|p| p.port.to_string()).collect();
            return Err(format!(
                "{what} has no port {p}; it has {}",
                have.join(", ")
            ));
        }
        let (pod, caveat) = match pick_pod(&client, ns, &selector, &what).await? {
            Some(picked) => picked,
            // None at all (scaled to zero, say): the workload's template.
            None => match template(&client, ns, &selector).await {
                Some((workload, pod)) => (
                    pod,
                    Some(format!(
                        "no pod behind {what}: the environment comes from the pod template of {workload}; what only a running pod has (its name, IPs, node) is missing"
                    )),
                ),
                None => {
                    let labels = label_selector(&selector);
                    return Err(format!(
                        "no pod behind {what} (selector {labels}), and no Deployment, StatefulSet or DaemonSet in namespace {ns} whose pod template it selects: kubectl -n {ns} get pods -l {labels}"
                    ));
                }
            },
        };
        // A port without targetPort targets its own number.
        let target = svc_port.map(|p| p.target_port.clone().unwrap_or(IntOrString::Int(p.port)));
        let container = match asked.container {
            Some(c) => environment::container_named(&pod, c)?,
            None => environment::container_for(&pod, target.as_ref())?,
        };
        self.environment_of(pod, container, caveat, asked.mounts)
            .await
    }

    /// The environment of workload `named` (in `ns`): one of its pods, or
    /// its pod template when it has none, within [`WITHIN`].
    pub(crate) async fn named_workload(
        &self,
        ns: &str,
        named: &Named,
        asked: Asked<'_>,
    ) -> Result<Workload, String> {
        let what = format!("{} {ns}/{}", named.kind.word(), named.name);
        if asked.port.is_some() {
            return Err(format!(
                "{what}: --port picks the container of a Service port; fix: name the container with --container"
            ));
        }
        let read = async {
            let client = self.client().clone();
            let (pod, caveat) = named_pod(&client, ns, named, &what).await?;
            let container = match asked.container {
                Some(c) => environment::container_named(&pod, c)?,
                None => environment::container_for(&pod, None)?,
            };
            self.environment_of(pod, container, caveat, asked.mounts)
                .await
        };
        let check = format!("kubectl get {} -n {ns}", named.kind.word());
        self.within(&what, &check, read).await
    }

    /// The environment (and, with `mounts`, the volume files) of
    /// `container` in `pod`, reading what it references; `caveat` joins
    /// the notes.
    async fn environment_of(
        &self,
        pod: Pod,
        container: String,
        caveat: Option<String>,
        mounts: bool,
    ) -> Result<Workload, String> {
        let client = self.client().clone();
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let ns = ns.as_str();
        let mut refs = environment::references(&pod, &container);
        if mounts {
            refs = refs.merge(volumes::references(&pod, &container));
        }
        let mut sources = Sources {
            config_maps: BTreeMap::new(),
            secrets: BTreeMap::new(),
            services: Ok(Vec::new()),
            kubernetes_service: None,
        };
        let config_maps = Api::<ConfigMap>::namespaced(client.clone(), ns);
        for cm in refs.config_maps {
            let got = config_maps
                .get(&cm)
                .await
                .map_err(|e| denied("get", "configmaps", ns, &e));
            sources.config_maps.insert(cm, got);
        }
        let secrets = Api::<Secret>::namespaced(client.clone(), ns);
        for s in refs.secrets {
            let got = secrets
                .get(&s)
                .await
                .map_err(|e| denied("get", "secrets", ns, &e));
            sources.secrets.insert(s, got);
        }
        sources.services = Api::<Service>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .map_err(|e| denied("list", "services", ns, &e));
        sources.kubernetes_service = Api::<Service>::namespaced(client, "default")
            .get_opt("kubernetes")
            .await
            .ok()
            .flatten();
        let mut environment = environment::resolve(&pod, &container, &sources);
        let mounts = match mounts {
            true => {
                let (mounts, notes) = volumes::mounts(&pod, &container, &sources);
                environment.notes.extend(notes);
                mounts
            }
            false => Vec::new(),
        };
        environment.notes.extend(caveat);
        Ok(Workload {
            pod: pod.metadata.name.unwrap_or_else(|| "(template)".to_owned()),
            container,
            environment,
            mounts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("a Service")
    }

    #[test]
    fn workloads_are_named_as_kubectl_names_them() {
        let named = |ns: Option<&str>, kind, name: &str| Named {
            namespace: ns.map(str::to_owned),
            kind,
            name: name.to_owned(),
        };
        assert_eq!(Named::parse("web"), Ok(None));
        assert_eq!(Named::parse("apps/web"), Ok(None), "a Service");
        assert_eq!(
            Named::parse("deploy/worker"),
            Ok(Some(named(None, Kind::Deployment, "worker")))
        );
        assert_eq!(
            Named::parse("apps/sts/db"),
            Ok(Some(named(Some("apps"), Kind::StatefulSet, "db")))
        );
        assert_eq!(
            Named::parse("apps/Pod/web-0"),
            Ok(Some(named(Some("apps"), Kind::Pod, "web-0")))
        );
        assert_eq!(
            Named::parse("DaemonSets/agent"),
            Ok(Some(named(None, Kind::DaemonSet, "agent")))
        );
        let e = Named::parse("apps/cronjob/nightly").unwrap_err();
        assert!(
            e.contains("\"cronjob\"") && e.contains("fix: deployment"),
            "{e}"
        );
        let e = Named::parse("a/b/c/d").unwrap_err();
        assert!(e.contains("too many parts"), "{e}");
        let e = Named::parse("deploy/").unwrap_err();
        assert!(e.contains("empty name"), "{e}");
        assert!(Named::parse("/deploy/x").is_err());
    }

    #[test]
    fn selectors_come_from_the_intercept_record_and_templates_become_pods() {
        let plain = svc(
            serde_json::json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}}}),
        );
        assert_eq!(selector("web", &plain).unwrap()["app"], "web");
        let intercepted = svc(serde_json::json!({
            "metadata": {"name": "web", "annotations": {INTERCEPT_ORIGINAL: "{\"app\":\"web\",\"tier\":\"fe\"}"}},
            "spec": {},
        }));
        let sel = selector("web", &intercepted).unwrap();
        assert_eq!((sel["app"].as_str(), sel["tier"].as_str()), ("web", "fe"));
        let bad = svc(serde_json::json!({
            "metadata": {"name": "web", "annotations": {INTERCEPT_ORIGINAL: "[1]"}},
            "spec": {"selector": {"app": "web"}},
        }));
        let e = selector("Service apps/web", &bad).unwrap_err();
        assert!(
            e.contains(INTERCEPT_ORIGINAL) && e.contains("docs/intercept.md"),
            "{e}"
        );
        let labels =
            |v: serde_json::Value| serde_json::from_value::<BTreeMap<String, String>>(v).unwrap();
        let want = labels(serde_json::json!({"app": "web"}));
        assert!(selects(
            &want,
            Some(&labels(serde_json::json!({"app": "web", "tier": "fe"})))
        ));
        assert!(!selects(
            &want,
            Some(&labels(serde_json::json!({"app": "db"})))
        ));
        assert!(!selects(&want, None));
        let t: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app"}]},
        }))
        .unwrap();
        let pod = from_template("apps", t);
        assert_eq!(pod.metadata.namespace.as_deref(), Some("apps"));
        assert!(pod.metadata.name.is_none() && pod.status.is_none());
        assert_eq!(pod.spec.map(|s| s.containers.len()), Some(1));
        let none = svc(serde_json::json!({"metadata": {"name": "db"}, "spec": {}}));
        let e = selector("Service apps/db", &none).unwrap_err();
        assert!(e.contains("has no selector"), "{e}");
    }
}
