//! The environment a container of a running pod has, computed as the
//! kubelet computes it, for `netmux env` and `netmux intercept --env-file`:
//! a developer runs the intercepted service locally with the pod's
//! configuration (as Telepresence's `--env-file` and mirrord's env import).
//!
//! Sans-IO: the caller fetches the pod, the ConfigMaps and Secrets it
//! references ([`references`]) and the namespace's Services, with the
//! user's own credentials, and hands them over in [`Sources`]; [`resolve`]
//! does no I/O and reads no clock.
//!
//! It follows the kubelet's `makeEnvironmentVariables`
//! (pkg/kubelet/kubelet_pods.go): the service-link variables of
//! `envvars.FromServices` (pkg/kubelet/envvars/envvars.go) first, then
//! `envFrom` in order, then `env` in order, a later definition of a name
//! replacing the earlier value in place; `$(VAR)` is expanded as
//! third_party/forked/golang/expansion/expand.go does. Where the kubelet
//! would fail the container (a forbidden Secret, a missing key) or needs
//! what only the node knows (its allocatable), the variable is left out and
//! a note names it, the object and the fix. The kubelet's own order is a
//! map's; here it is definition order, so an env file reads as the pod
//! spec does.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use fields::{field, FieldUse};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvFromSource, EnvVar, Pod, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// What the caller fetched for one pod. A failed fetch is kept as its error
/// text (e.g. "forbidden: User \"alice\" cannot get resource \"secrets\"…"
/// or "not found"), so the variables that needed it can be named in a note.
/// An error whose text holds `not found` / `NotFound` (kube's text for a
/// 404) counts as not found, which an `optional` reference ignores.
#[derive(Clone)]
pub(crate) struct Sources {
    /// ConfigMaps by name, in the pod's namespace.
    pub(crate) config_maps: BTreeMap<String, Result<ConfigMap, String>>,
    /// Secrets by name, in the pod's namespace.
    pub(crate) secrets: BTreeMap<String, Result<Secret, String>>,
    /// The namespace's Services for the docker-link variables
    /// (FOO_SERVICE_HOST…), or the error of listing them; plus, if the
    /// caller found it, the `kubernetes` Service of namespace `default`
    /// (kubelet always adds it).
    pub(crate) services: Result<Vec<Service>, String>,
    /// The `kubernetes` Service of namespace `default`, if found.
    pub(crate) kubernetes_service: Option<Service>,
}

/// Names of the ConfigMaps and Secrets a container references.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct References {
    /// ConfigMap names, each once, sorted.
    pub(crate) config_maps: Vec<String>,
    /// Secret names, each once, sorted.
    pub(crate) secrets: Vec<String>,
}

impl References {
    /// The names of both, each once, sorted.
    pub(crate) fn merge(self, other: References) -> References {
        let cms = self.config_maps.into_iter().chain(other.config_maps);
        let secrets = self.secrets.into_iter().chain(other.secrets);
        References::new(cms.collect(), secrets.collect())
    }

    /// From sets of names, dropping the empty one.
    pub(super) fn new(mut config_maps: BTreeSet<String>, mut secrets: BTreeSet<String>) -> Self {
        config_maps.remove("");
        secrets.remove("");
        References {
            config_maps: config_maps.into_iter().collect(),
            secrets: secrets.into_iter().collect(),
        }
    }
}

/// The resolved environment. Its `Debug` shows names, never values.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Environment {
    /// In definition order; a later definition of a name replaces the value in place.
    pub(crate) vars: Vec<(String, String)>,
    /// One line per variable left out or approximated, and why (names the
    /// variable and the object, e.g. "DB_PASSWORD: left out: secret
    /// db-creds: forbidden: …; fix: ask for `get secrets` in namespace apps,
    /// or set it yourself").
    pub(crate) notes: Vec<String>,
}

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.vars.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Environment")
            .field("vars", &names)
            .field("notes", &self.notes)
            .finish()
    }
}

/// The pod's namespace (`default` when unset, as the API server defaults it).
pub(super) fn namespace(pod: &Pod) -> &str {
    pod.metadata
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
}

/// `namespace/name` of the pod, for notes.
fn pod_label(pod: &Pod) -> String {
    format!(
        "{}/{}",
        namespace(pod),
        pod.metadata.name.as_deref().unwrap_or("?")
    )
}

/// The pod's containers, then its init containers (sidecars are init
/// containers).
fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.iter();
    spec.flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    })
}

/// The container called `name`, of [`all_containers`].
pub(super) fn find_container<'p>(pod: &'p Pod, name: &str) -> Option<&'p Container> {
    all_containers(pod).find(|c| c.name == name)
}

/// The value an `env` entry takes from `valueFrom`: only when `value` is
/// empty, as the kubelet reads it.
fn value_from(var: &EnvVar) -> Option<&k8s_openapi::api::core::v1::EnvVarSource> {
    match var.value.as_deref() {
        Some(v) if !v.is_empty() => None,
        _ => var.value_from.as_ref(),
    }
}

/// Names of the ConfigMaps and Secrets container `container` of `pod` references (env valueFrom and envFrom), each once, sorted.
pub(crate) fn references(pod: &Pod, container: &str) -> References {
    let mut config_maps = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    if let Some(c) = find_container(pod, container) {
        for from in c.env_from.iter().flatten() {
            // The kubelet reads configMapRef when both are set.
            if let Some(r) = &from.config_map_ref {
                config_maps.insert(r.name.clone());
            } else if let Some(r) = &from.secret_ref {
                secrets.insert(r.name.clone());
            }
        }
        for source in c.env.iter().flatten().filter_map(value_from) {
            if source.field_ref.is_some() || source.resource_field_ref.is_some() {
                continue;
            }
            if let Some(r) = &source.config_map_key_ref {
                config_maps.insert(r.name.clone());
            } else if let Some(r) = &source.secret_key_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    References::new(config_maps, secrets)
}

/// Container `name` of `pod` (sidecars included); Err names the ones it
/// has.
pub(crate) fn container_named(pod: &Pod, name: &str) -> Result<String, String> {
    if find_container(pod, name).is_some() {
        return Ok(name.to_owned());
    }
    let names: Vec<&str> = all_containers(pod).map(|c| c.name.as_str()).collect();
    Err(format!(
        "pod {} has no container {name}; it has {}",
        pod_label(pod),
        names.join(", ")
    ))
}

/// The container a Service port's targetPort reaches: the one declaring that port (by number or name); with no match or no target, the pod's first container. Err when the pod has no containers.
///
/// Sidecars (init containers with `restartPolicy: Always`) are searched
/// after the regular containers, since a Service can target their ports.
pub(crate) fn container_for(pod: &Pod, target: Option<&IntOrString>) -> Result<String, String> {
    let spec = pod.spec.as_ref();
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or(&[]);
    let Some(first) = containers.first() else {
        return Err(format!(
            "pod {}: has no containers; fix: pick another pod of the workload",
            pod_label(pod)
        ));
    };
    let sidecars = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or(&[])
        .iter()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let declares = |c: &&Container| {
        c.ports.iter().flatten().any(|p| match target {
            Some(IntOrString::Int(n)) => p.container_port == *n,
            Some(IntOrString::String(name)) => p.name.as_deref() == Some(name.as_str()),
            None => false,
        })
    };
    let found = containers.iter().chain(sidecars).find(declares);
    Ok(found.unwrap_or(first).name.clone())
}

/// The note for a container `container` that `pod` does not have.
pub(super) fn not_in_pod(pod: &Pod, container: &str) -> String {
    let names: Vec<&str> = all_containers(pod).map(|c| c.name.as_str()).collect();
    format!(
        "container {container}: not in pod {} (it has: {}); fix: name one of those",
        pod_label(pod),
        names.join(", ")
    )
}

/// The environment container `container` of `pod` has, as the kubelet
/// computes it, from what the caller fetched.
pub(crate) fn resolve(pod: &Pod, container: &str, sources: &Sources) -> Environment {
    let Some(own) = find_container(pod, container) else {
        return Environment {
            vars: Vec::new(),
            notes: vec![not_in_pod(pod, container)],
        };
    };
    let mut env = Builder {
        pod,
        ns: namespace(pod),
        sources,
        vars: Vec::new(),
        index: HashMap::new(),
        left_out: BTreeSet::new(),
        unknown: Vec::new(),
        notes: Vec::new(),
    };
    env.service_links();
    for from in own.env_from.iter().flatten() {
        env.env_from(from);
    }
    for var in own.env.iter().flatten() {
        env.env_var(var, own);
    }
    Environment {
        vars: env.vars,
        notes: env.notes,
    }
}

/// The environment being built, in definition order.
struct Builder<'a> {
    /// The pod whose container this is.
    pod: &'a Pod,
    /// The pod's namespace.
    ns: &'a str,
    /// What the caller fetched.
    sources: &'a Sources,
    /// The variables so far, in definition order.
    vars: Vec<(String, String)>,
    /// Position of each name in `vars`.
    index: HashMap<String, usize>,
    /// Names left out (with a note) and not defined again since.
    left_out: BTreeSet<String>,
    /// Sources whose variable names are unknown (a failed envFrom, the
    /// service links), for notes on a `$(VAR)` that stays unexpanded.
    unknown: Vec<String>,
    /// [`Environment::notes`].
    notes: Vec<String>,
}

impl Builder<'_> {
    /// Defines `name`, replacing an earlier value in place.
    fn define(&mut self, name: String, value: String) {
        self.left_out.remove(&name);
        match self.index.get(&name) {
            Some(&at) => self.vars[at].1 = value,
            None => {
                self.index.insert(name.clone(), self.vars.len());
                self.vars.push((name, value));
            }
        }
    }

    /// Leaves `name` out (the caller notes why). An earlier definition goes
    /// too: the container has the later value, which is unknown here.
    fn drop_var(&mut self, name: &str) {
        if let Some(at) = self.index.remove(name) {
            self.vars.remove(at);
            self.index
                .values_mut()
                .filter(|i| **i > at)
                .for_each(|i| *i -= 1);
        }
        self.left_out.insert(name.to_owned());
    }

    /// The value of `name`, if defined so far.
    fn get(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&at| self.vars[at].1.as_str())
    }

    /// The service-link variables, by Service name (kubelet's
    /// `getServiceEnvVarMap` + `envvars.FromServices`).
    fn service_links(&mut self) {
        let enabled = self.pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false);
        let mut chosen: BTreeMap<&str, &Service> = BTreeMap::new();
        // The kubelet always adds the master service, even with links
        // disabled; a Service of the pod's own namespace of that name wins.
        if let Some(k) = self
            .sources
            .kubernetes_service
            .as_ref()
            .filter(|s| ip_set(s))
        {
            chosen.insert(k.metadata.name.as_deref().unwrap_or("kubernetes"), k);
        }
        match &self.sources.services {
            Ok(list) if enabled => {
                for s in list.iter().filter(|s| ip_set(s)) {
                    let name = s.metadata.name.as_deref().unwrap_or("");
                    let ns = s.metadata.namespace.as_deref();
                    if !name.is_empty() && ns.is_none_or(|n| n == self.ns) {
                        chosen.insert(name, s);
                    }
                }
            }
            Err(e) if enabled => {
                self.unknown.push("the service links".into());
                self.notes.push(format!(
                    "service links (NAME_SERVICE_HOST, NAME_SERVICE_PORT, NAME_PORT…): left out for the Services of namespace {ns}: listing them: {e}; fix: ask for `list services` in namespace {ns}, or set them yourself",
                    ns = self.ns
                ));
            }
            _ => {}
        }
        if !chosen.contains_key("kubernetes") {
            self.notes.push("KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT, KUBERNETES_PORT…: left out: the `kubernetes` Service of namespace default could not be read (absent, or your RBAC does not allow `get services` there); set them yourself if your program needs them".into());
        }
        for (name, service) in chosen {
            self.link_vars(name, service);
        }
    }

    /// One Service's variables, in `envvars.FromServices` order.
    fn link_vars(&mut self, name: &str, service: &Service) {
        let prefix = name.to_uppercase().replace('-', "_");
        let spec = service.spec.as_ref();
        let ip = spec.and_then(|s| s.cluster_ip.clone()).unwrap_or_default();
        self.define(format!("{prefix}_SERVICE_HOST"), ip.clone());
        let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or(&[]);
        let Some(first) = ports.first() else {
            self.notes.push(format!(
                "{prefix}_SERVICE_PORT, {prefix}_PORT…: left out: service {name} has no ports"
            ));
            return;
        };
        self.define(format!("{prefix}_SERVICE_PORT"), first.port.to_string());
        for p in ports {
            if let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                let port_name = port_name.to_uppercase().replace('-', "_");
                self.define(
                    format!("{prefix}_SERVICE_PORT_{port_name}"),
                    p.port.to_string(),
                );
            }
        }
        for (i, p) in ports.iter().enumerate() {
            let proto = p
                .protocol
                .as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or("TCP");
            let lower = proto.to_lowercase();
            // net.JoinHostPort: an IPv6 address goes in brackets.
            let url = match ip.contains(':') {
                true => format!("{lower}://[{ip}]:{}", p.port),
                false => format!("{lower}://{ip}:{}", p.port),
            };
            if i == 0 {
                self.define(format!("{prefix}_PORT"), url.clone());
            }
            let var = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            self.define(var.clone(), url);
            self.define(format!("{var}_PROTO"), lower);
            self.define(format!("{var}_PORT"), p.port.to_string());
            self.define(format!("{var}_ADDR"), ip.clone());
        }
    }

    /// The keys of ConfigMap or Secret `name` (`kind` is `configmap` or
    /// `secret`), or the error of fetching it.
    fn entries(&self, kind: &str, name: &str) -> Result<Entries, String> {
        match kind {
            "configmap" => fetched(&self.sources.config_maps, name).map(config_map_entries),
            _ => fetched(&self.sources.secrets, name).map(secret_entries),
        }
    }

    /// One `envFrom` entry: every key of the ConfigMap or Secret, prefixed.
    fn env_from(&mut self, from: &EnvFromSource) {
        let prefix = from.prefix.as_deref().unwrap_or("");
        // The kubelet reads configMapRef when both are set.
        let (kind, name, optional) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => ("configmap", &r.name, r.optional),
            (None, Some(r)) => ("secret", &r.name, r.optional),
            (None, None) => return,
        };
        let mut what = format!("envFrom {kind} {name}");
        if !prefix.is_empty() {
            what = format!("{what} (prefix {prefix})");
        }
        let (entries, binary) = match self.entries(kind, name) {
            Ok(got) => got,
            Err(e) if optional == Some(true) && is_not_found(&e) => return,
            Err(e) => {
                let fix = fix(kind, name, self.ns, &e, "set them yourself");
                self.notes
                    .push(format!("{what}: left out: {e}; fix: {fix}"));
                self.unknown.push(what);
                return;
            }
        };
        let (mut invalid, mut unusable) = (Vec::new(), Vec::new());
        for (key, value) in entries {
            let var = format!("{prefix}{key}");
            if !netmux_api::env_var_name(&var) {
                invalid.push(format!("`{var}`"));
            } else if let Some(value) = value {
                self.define(var, value);
            } else {
                unusable.push(format!("`{var}`"));
                self.drop_var(&var);
            }
        }
        let binary: Vec<String> = binary.iter().map(|k| format!("binaryData `{k}`")).collect();
        for (keys, why) in [
            (
                invalid,
                "not valid variable names (the kubelet skips them too)",
            ),
            (
                unusable,
                "the value is not UTF-8 text or holds a NUL byte; fix: set it yourself",
            ),
            (binary, "the kubelet puts only `data` in the environment"),
        ] {
            if !keys.is_empty() {
                self.notes
                    .push(format!("{what}: left out {}: {why}", keys.join(", ")));
            }
        }
    }

    /// One `env` entry.
    fn env_var(&mut self, var: &EnvVar, own: &Container) {
        let name = var.name.as_str();
        if name.is_empty() {
            self.notes
                .push("(an env entry without a name): left out".into());
            return;
        }
        let Some(source) = value_from(var) else {
            let value = self.expand(name, var.value.as_deref().unwrap_or(""));
            return self.define(name.to_owned(), value);
        };
        let resolved = if let Some(f) = &source.field_ref {
            field(self.pod, f, FieldUse::Env).map(Some)
        } else if let Some(r) = &source.resource_field_ref {
            resources::value(self.pod, r, own).map(Some)
        } else if let Some(r) = &source.config_map_key_ref {
            self.key("configmap", &r.name, &r.key, r.optional == Some(true))
        } else if let Some(r) = &source.secret_key_ref {
            self.key("secret", &r.name, &r.key, r.optional == Some(true))
        } else if let Some(r) = &source.file_key_ref {
            Err(format!(
                "fileKeyRef reads key `{}` of file {} in volume {}, written inside the pod; fix: set it yourself",
                r.key, r.path, r.volume_name
            ))
        } else {
            Ok(Some(String::new()))
        };
        match resolved {
            Ok(Some(value)) => self.define(name.to_owned(), value),
            Ok(None) => {}
            Err(why) => {
                self.drop_var(name);
                self.notes.push(format!("{name}: left out: {why}"));
            }
        }
    }

    /// `configMapKeyRef` / `secretKeyRef`: `Ok(None)` when the kubelet
    /// skips it (optional, and the object or key is missing).
    fn key(
        &self,
        kind: &str,
        name: &str,
        key: &str,
        optional: bool,
    ) -> Result<Option<String>, String> {
        let (entries, binary) = match self.entries(kind, name) {
            Ok(got) => got,
            Err(e) if optional && is_not_found(&e) => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "{kind} {name}: {e}; fix: {}",
                    fix(kind, name, self.ns, &e, "set it yourself")
                ))
            }
        };
        match entries.into_iter().find(|(k, _)| k == key) {
            Some((_, Some(value))) => Ok(Some(value)),
            Some((_, None)) => Err(format!(
                "{kind} {name}: key `{key}` is not UTF-8 text or holds a NUL byte; fix: set it yourself"
            )),
            None if optional => Ok(None),
            None => {
                let binary = match binary.iter().any(|k| k == key) {
                    true => " (it is in binaryData, which the kubelet does not use for env)",
                    false => "",
                };
                Err(format!("{kind} {name} has no key `{key}`{binary}; fix: set it yourself"))
            }
        }
    }

    /// Expands `$(VAR)` in `input` against what is defined so far, as the
    /// kubelet's `expansion.Expand`: `$$` is `$`, an undefined `$(VAR)` and
    /// an unclosed `$(` stay as written, `$` before anything else stays.
    fn expand(&mut self, name: &str, input: &str) -> String {
        let bytes = input.as_bytes();
        let mut out = String::with_capacity(input.len());
        let mut missing = Vec::new();
        let (mut at, mut checkpoint) = (0, 0);
        while at + 1 < bytes.len() {
            if bytes[at] != b'$' {
                at += 1;
                continue;
            }
            out.push_str(&input[checkpoint..at]);
            // `)` is searched for only after `$(` (all three are ASCII, so
            // every index here is a char boundary).
            let close = || bytes[at + 2..].iter().position(|&b| b == b')');
            match bytes[at + 1] {
                b'$' => {
                    out.push('$');
                    at += 2;
                }
                b'(' => match close() {
                    Some(len) => {
                        let var = &input[at + 2..at + 2 + len];
                        match self.get(var) {
                            Some(value) => out.push_str(value),
                            None => {
                                out.push_str(&input[at..at + 3 + len]);
                                missing.push(var);
                            }
                        }
                        at += 3 + len;
                    }
                    None => {
                        out.push_str("$(");
                        at += 2;
                    }
                },
                _ => {
                    out.push('$');
                    at += 1;
                }
            }
            checkpoint = at;
        }
        out.push_str(&input[checkpoint..]);
        for var in missing {
            if self.left_out.contains(var) {
                self.notes.push(format!(
                    "{name}: approximated: $({var}) is left out above, so it stays as written"
                ));
            } else if !self.unknown.is_empty() {
                self.notes.push(format!(
                    "{name}: approximated: $({var}) is not defined here and may come from {}, left out above; it stays as written",
                    self.unknown.join(", ")
                ));
            }
        }
        out
    }
}

/// Whether the Service has a cluster IP (not headless, not "None").
fn ip_set(service: &Service) -> bool {
    let ip = service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
    !matches!(ip, None | Some("") | Some("None"))
}

/// Whether a fetch error is a not-found (kube: `… "x" not found`).
pub(super) fn is_not_found(error: &str) -> bool {
    let lower = error.to_lowercase();
    lower.contains("not found") || lower.contains("notfound")
}

/// The fix for a failed fetch of `kind` `name`, ending with the other way
/// (`otherwise`, e.g. "set it yourself").
pub(super) fn fix(kind: &str, name: &str, ns: &str, error: &str, otherwise: &str) -> String {
    if error.to_lowercase().contains("forbidden") {
        format!("ask for `get {kind}s` in namespace {ns}, or {otherwise}")
    } else if is_not_found(error) {
        format!("create {kind} {name} in namespace {ns}, or {otherwise}")
    } else {
        format!("try again, or {otherwise}")
    }
}

/// Object `name` of what the caller fetched, or the error of fetching it.
pub(super) fn fetched<'s, T>(
    all: &'s BTreeMap<String, Result<T, String>>,
    name: &str,
) -> Result<&'s T, String> {
    match all.get(name) {
        Some(Ok(object)) => Ok(object),
        Some(Err(e)) => Err(e.clone()),
        None => Err("it was not fetched".into()),
    }
}

/// Keys and values of a fetched object, sorted by key (`None`: not usable
/// as env), and its binaryData keys.
type Entries = (Vec<(String, Option<String>)>, Vec<String>);

/// A value as env: UTF-8 text without NUL.
fn text(bytes: Vec<u8>) -> Option<String> {
    String::from_utf8(bytes).ok().filter(|t| !t.contains('\0'))
}

/// A ConfigMap's `data`; `binaryData` keys apart.
fn config_map_entries(cm: &ConfigMap) -> Entries {
    let data = cm.data.iter().flatten();
    let entries = data.map(|(k, v)| (k.clone(), text(v.clone().into_bytes())));
    let binary = cm.binary_data.iter().flatten().map(|(k, _)| k.clone());
    (entries.collect(), binary.collect())
}

/// A Secret's `data` (decoded bytes) with `stringData` over it, as the API
/// server merges them.
fn secret_entries(secret: &Secret) -> Entries {
    let data = secret.data.iter().flatten().map(|(k, v)| (k, v.0.clone()));
    let strings = secret.string_data.iter().flatten();
    let all = data.chain(strings.map(|(k, v)| (k, v.clone().into_bytes())));
    let merged: BTreeMap<_, _> = all.map(|(k, v)| (k.clone(), text(v))).collect();
    (merged.into_iter().collect(), Vec::new())
}

mod fields;
mod resources;
pub(crate) mod volumes;

#[cfg(test)]
mod tests;
