//! The files a container sees under its ConfigMap, Secret, downwardAPI and
//! projected volumes, computed as the kubelet writes them: Telepresence's
//! `--mount` as a snapshot, so a developer runs the service locally with its
//! config files and certificates.
//!
//! Sans-IO, as [`super::resolve`]: the caller fetches the ConfigMaps and
//! Secrets of [`references`] with the user's own credentials and hands them
//! over in [`Sources`]; [`mounts`] does no I/O.
//!
//! It follows the kubelet's `MakePayload` (pkg/volume/configmap,
//! pkg/volume/secret), `CollectData` (pkg/volume/downwardapi), the projected
//! volume's `collectData` (a later source replaces a file of an earlier
//! one) and the atomic writer's path checks (pkg/volume/util); the writer's
//! `..data` symlink layout is not reproduced, only the logical files. Where
//! the kubelet would fail the mount (a forbidden Secret, a missing key) the
//! mount is left out, and a note names it, the object and the fix. Every
//! path from the cluster is checked, so none leaves the mount.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, Pod, Volume, VolumeMount, VolumeProjection,
};

use super::{
    fetched, field, find_container, fix, is_not_found, namespace, not_in_pod, resources, FieldUse,
    References, Sources,
};

/// One file of a mounted volume. Its Debug shows path and mode, never data.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct File {
    /// Relative to the mount, '/'-separated, validated: not empty, not
    /// absolute, no `..` or `.` or empty component. Empty only for a mount
    /// of a single file (see [`Mount::files`]).
    pub(crate) path: String,
    /// Permission bits the kubelet would give (items' `mode`, else the
    /// volume's `defaultMode`, else 0o644), masked to 0o777.
    pub(crate) mode: u32,
    pub(crate) data: Vec<u8>,
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File")
            .field("path", &self.path)
            .field("mode", &format_args!("{:#o}", self.mode))
            .finish()
    }
}

/// One volumeMount of the container with the files the container sees under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The container's mountPath (absolute, as written in the spec).
    pub(crate) mount_path: String,
    /// The volume's name.
    pub(crate) volume: String,
    /// Whether the container sees the mount read-only: always, for the
    /// volume kinds copied here (the kubelet mounts them read-only whatever
    /// the mount's `readOnly` says).
    pub(crate) read_only: bool,
    /// When the mount has a subPath naming a single file of the volume: the
    /// mount is that one file, and `files` holds one File whose `path` is
    /// "" (the only case an empty path is allowed). Otherwise the files
    /// under the mount, sorted by path.
    pub(crate) files: Vec<File>,
}

/// A volume's files by path: mode and data.
type Payload = BTreeMap<String, (u32, Vec<u8>)>;

/// The mode of a file when the volume sets no `defaultMode` (the API
/// server's default).
const DEFAULT_MODE: i32 = 0o644;

/// The other way, at the end of a fix.
const YOURSELF: &str = "provide the files yourself";

/// The container's volume mounts with the pod's volume of each (None: the
/// pod has no such volume).
fn mounted<'p>(
    pod: &'p Pod,
    own: &'p Container,
) -> impl Iterator<Item = (&'p VolumeMount, Option<&'p Volume>)> {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref());
    let volumes = volumes.unwrap_or(&[]);
    let mounts = own.volume_mounts.iter().flatten();
    mounts.map(move |m| (m, volumes.iter().find(|v| v.name == m.name)))
}

/// A mount's `subPathExpr`, if set.
fn sub_path_expr(mount: &VolumeMount) -> Option<&str> {
    mount.sub_path_expr.as_deref().filter(|e| !e.is_empty())
}

/// ConfigMaps and Secrets the container's *mounted* volumes need (sorted,
/// each once, empty names dropped).
pub(crate) fn references(pod: &Pod, container: &str) -> References {
    let (mut config_maps, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    let own = find_container(pod, container);
    let volumes = own.into_iter().flat_map(|own| mounted(pod, own));
    for (_, volume) in volumes.filter(|(m, _)| sub_path_expr(m).is_none()) {
        let Some(volume) = volume else { continue };
        if let Some(cm) = &volume.config_map {
            config_maps.insert(cm.name.clone());
        } else if let Some(s) = &volume.secret {
            secrets.insert(s.secret_name.clone().unwrap_or_default());
        }
        let projected = volume.projected.as_ref();
        for source in projected
            .and_then(|p| p.sources.as_ref())
            .into_iter()
            .flatten()
        {
            if let Some(s) = &source.secret {
                secrets.insert(s.name.clone());
            } else if let Some(cm) = &source.config_map {
                config_maps.insert(cm.name.clone());
            }
        }
    }
    References::new(config_maps, secrets)
}

/// The container's volume mounts, in spec order, with their files, plus
/// notes (one line each, naming the mount path, the volume and the object,
/// and the fix).
pub(crate) fn mounts(pod: &Pod, container: &str, sources: &Sources) -> (Vec<Mount>, Vec<String>) {
    let Some(own) = find_container(pod, container) else {
        return (Vec::new(), vec![not_in_pod(pod, container)]);
    };
    let mut copier = Copier {
        pod,
        own,
        ns: namespace(pod),
        sources,
        at: String::new(),
        notes: Vec::new(),
    };
    let mut mounts = Vec::new();
    for (mount, volume) in mounted(pod, own) {
        copier.at = format!("{} (volume {})", mount.mount_path, mount.name);
        match copier.mount(mount, volume) {
            Ok(files) => mounts.push(Mount {
                mount_path: mount.mount_path.clone(),
                volume: mount.name.clone(),
                read_only: true,
                files,
            }),
            Err(why) => copier.note(format!("left out: {why}")),
        }
    }
    (mounts, copier.notes)
}

/// The ConfigMap or Secret of a volume source.
#[derive(Clone, Copy)]
enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    /// As in notes and RBAC verbs (`get configmaps`).
    fn name(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }

    /// The keys of object `name` with their bytes (a ConfigMap's `data` as
    /// UTF-8 and its `binaryData`; a Secret's decoded `data`), or the error
    /// of fetching it.
    fn entries(self, sources: &Sources, name: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
        match self {
            Kind::ConfigMap => fetched(&sources.config_maps, name).map(|cm| {
                let text = cm.data.iter().flatten();
                let text = text.map(|(k, v)| (k.clone(), v.clone().into_bytes()));
                let binary = cm.binary_data.iter().flatten();
                text.chain(binary.map(|(k, v)| (k.clone(), v.0.clone())))
                    .collect()
            }),
            // stringData is write-only: the API server folds it into data.
            Kind::Secret => fetched(&sources.secrets, name).map(|secret| {
                let data = secret.data.iter().flatten();
                data.map(|(k, v)| (k.clone(), v.0.clone())).collect()
            }),
        }
    }
}

/// A ConfigMap or Secret source of a volume: kind, name, items, optional.
type Object<'a> = (Kind, &'a str, Option<&'a [KeyToPath]>, Option<bool>);

/// The mounts being copied.
struct Copier<'a> {
    /// The pod whose container this is.
    pod: &'a Pod,
    /// The container.
    own: &'a Container,
    /// The pod's namespace.
    ns: &'a str,
    /// What the caller fetched.
    sources: &'a Sources,
    /// The mount being copied, for notes: "/etc/app (volume config)".
    at: String,
    /// The notes so far.
    notes: Vec<String>,
}

impl Copier<'_> {
    /// A note about the current mount.
    fn note(&mut self, what: String) {
        self.notes.push(format!("{}: {what}", self.at));
    }

    /// The files the container sees under `mount`; Err: the mount is left
    /// out, and why.
    fn mount(&mut self, mount: &VolumeMount, volume: Option<&Volume>) -> Result<Vec<File>, String> {
        if let Some(expr) = sub_path_expr(mount) {
            return Err(format!(
                "subPathExpr `{expr}` is expanded from the container's environment, which netmux does not do for mounts; fix: {YOURSELF}"
            ));
        }
        let volume = volume.ok_or_else(|| {
            format!(
                "the pod has no volume {}; fix: mount one of its volumes",
                mount.name
            )
        })?;
        let sub = mount.sub_path.as_deref().filter(|s| !s.is_empty());
        if let Some(Err(why)) = sub.map(check_path) {
            return Err(format!("subPath `{}` {why}", sub.unwrap_or_default()));
        }
        let mut payload = self.payload(volume)?;
        if let Some((file, under)) = file_and_directory(&payload) {
            return Err(format!(
                "`{file}` is both a file and the directory of `{under}`, which the kubelet fails to write; fix: {YOURSELF}"
            ));
        }
        let Some(sub) = sub else {
            return Ok(files(payload, ""));
        };
        if let Some((mode, data)) = payload.remove(sub) {
            let path = String::new();
            return Ok(vec![File { path, mode, data }]);
        }
        let files = files(payload, &format!("{sub}/"));
        if files.is_empty() {
            self.note(format!(
                "subPath `{sub}` is not in the volume, so the kubelet mounts an empty directory"
            ));
        }
        Ok(files)
    }

    /// All files of `volume`.
    fn payload(&mut self, volume: &Volume) -> Result<Payload, String> {
        let mut out = Payload::new();
        let mode = |m: Option<i32>| m.unwrap_or(DEFAULT_MODE);
        if let Some(cm) = &volume.config_map {
            let object = (Kind::ConfigMap, &*cm.name, cm.items.as_deref(), cm.optional);
            self.object(object, mode(cm.default_mode), &mut out)?;
        } else if let Some(s) = &volume.secret {
            let name = s.secret_name.as_deref().unwrap_or("");
            let object = (Kind::Secret, name, s.items.as_deref(), s.optional);
            self.object(object, mode(s.default_mode), &mut out)?;
        } else if let Some(d) = &volume.downward_api {
            let items = d.items.as_deref().unwrap_or(&[]);
            self.downward(items, mode(d.default_mode), &mut out);
        } else if let Some(p) = &volume.projected {
            for source in p.sources.iter().flatten() {
                self.projection(source, mode(p.default_mode), &mut out)?;
            }
        } else {
            return Err(format!(
                "{} volume: its contents live in the cluster or on the node, and are not copied; fix: copy what you need yourself (e.g. kubectl cp)",
                kind_of(volume)
            ));
        }
        Ok(out)
    }

    /// One source of a projected volume, over the files of the earlier
    /// ones.
    fn projection(
        &mut self,
        source: &VolumeProjection,
        default: i32,
        out: &mut Payload,
    ) -> Result<(), String> {
        let object = if let Some(s) = &source.secret {
            (Kind::Secret, &*s.name, s.items.as_deref(), s.optional)
        } else if let Some(cm) = &source.config_map {
            (Kind::ConfigMap, &*cm.name, cm.items.as_deref(), cm.optional)
        } else if let Some(d) = &source.downward_api {
            self.downward(d.items.as_deref().unwrap_or(&[]), default, out);
            return Ok(());
        } else {
            let why = if let Some(t) = &source.service_account_token {
                let sa = self.pod.spec.as_ref();
                let sa = sa.and_then(|s| s.service_account_name.as_deref());
                format!(
                    "not copied: serviceAccountToken `{}`: a token of the pod's service account ({}) is not given out; fix: use your own credentials, or put a token there yourself",
                    t.path,
                    sa.unwrap_or("default")
                )
            } else if let Some(b) = &source.cluster_trust_bundle {
                format!(
                    "not copied: clusterTrustBundle `{}`: the kubelet builds it from ClusterTrustBundle objects; fix: set that file yourself",
                    b.path
                )
            } else if source.pod_certificate.is_some() {
                "not copied: podCertificate: a key and certificate the kubelet makes for the pod; fix: set those files yourself".into()
            } else {
                "not copied: a projected source netmux does not read; fix: set its files yourself"
                    .into()
            };
            self.note(why);
            return Ok(());
        };
        self.object(object, default, out)
    }

    /// A ConfigMap or Secret source, as the kubelet's `MakePayload`.
    fn object(&mut self, object: Object, default: i32, out: &mut Payload) -> Result<(), String> {
        let (of, name, items, optional) = object;
        let (kind, optional) = (of.name(), optional == Some(true));
        let entries = match of.entries(self.sources, name) {
            Ok(entries) => entries,
            Err(e) if optional && is_not_found(&e) => BTreeMap::new(),
            Err(e) => {
                let fix = fix(kind, name, self.ns, &e, YOURSELF);
                return Err(format!("{kind} {name}: {e}; fix: {fix}"));
            }
        };
        let Some(items) = items.filter(|i| !i.is_empty()) else {
            for (key, data) in entries {
                match check_key(&key) {
                    Ok(()) => self.put(out, &key, default, data, &format!("{kind} {name}")),
                    Err(why) => self.note(format!("left out key `{key}` of {kind} {name}: {why}")),
                }
            }
            return Ok(());
        };
        for item in items {
            let Some(data) = entries.get(&item.key) else {
                if optional {
                    continue;
                }
                return Err(format!(
                    "{kind} {name} has no key `{}`, which the kubelet fails the mount for; fix: add it, or {YOURSELF}",
                    item.key
                ));
            };
            let from = format!("key `{}` of {kind} {name}", item.key);
            let mode = item.mode.unwrap_or(default);
            self.put(out, &item.path, mode, data.clone(), &from);
        }
        Ok(())
    }

    /// A downwardAPI source, as the kubelet's `CollectData`. A value that
    /// cannot be had leaves its file out, with a note.
    fn downward(&mut self, items: &[DownwardAPIVolumeFile], default: i32, out: &mut Payload) {
        for item in items {
            let value = if let Some(f) = &item.field_ref {
                field(self.pod, f, FieldUse::Volume)
            } else if let Some(r) = &item.resource_field_ref {
                resources::value(self.pod, r, self.own)
            } else {
                Ok(String::new())
            };
            let mode = item.mode.unwrap_or(default);
            match value {
                Ok(v) => self.put(out, &item.path, mode, v.into_bytes(), "downwardAPI"),
                Err(why) => self.note(format!("left out `{}` (downwardAPI): {why}", item.path)),
            }
        }
    }

    /// Adds file `path` (from `from`, for the note if the path is bad),
    /// replacing an earlier one.
    fn put(&mut self, out: &mut Payload, path: &str, mode: i32, data: Vec<u8>, from: &str) {
        match check_path(path) {
            Ok(()) => {
                // The kubelet's modes are 0..0o777; masked, a bad one cannot add setuid bits.
                let mode = (mode & 0o777) as u32;
                out.insert(path.to_owned(), (mode, data));
            }
            Err(why) => self.note(format!("left out `{path}` ({from}): the path {why}")),
        }
    }
}

/// The files of `payload` under `prefix` ("" or "dir/"), relative to it.
fn files(payload: Payload, prefix: &str) -> Vec<File> {
    let under = payload.into_iter().filter_map(|(path, (mode, data))| {
        let path = path.strip_prefix(prefix)?.to_owned();
        Some(File { path, mode, data })
    });
    under.collect()
}

/// A file of `payload` that another file's path puts a directory at: the
/// file and the other file.
fn file_and_directory(payload: &Payload) -> Option<(&str, &str)> {
    payload.keys().find_map(|file| {
        let dir = format!("{file}/");
        let (under, _) = payload.range(dir.clone()..).next()?;
        under
            .starts_with(&dir)
            .then_some((file.as_str(), under.as_str()))
    })
}

/// The volume's kind as the spec names it (`emptyDir`, `persistentVolumeClaim`…).
fn kind_of(volume: &Volume) -> String {
    let json = serde_json::to_value(volume).unwrap_or_default();
    let mut keys = json.as_object().into_iter().flat_map(|o| o.keys());
    let kind = keys.find(|k| *k != "name");
    kind.cloned().unwrap_or_else(|| "source-less".into())
}

/// Checks a path from the cluster, as the kubelet's atomic writer and
/// stricter: relative, '/'-separated, no empty, `.` or `..` component, not
/// starting with `..` (the writer's own `..data`), no backslash (a
/// separator elsewhere) or NUL. Err: why not.
fn check_path(path: &str) -> Result<(), &'static str> {
    let parts = path.split('/');
    let bad = |(i, part): (usize, &str)| match part {
        "" => Some("has an empty component"),
        "." => Some("has a `.` component"),
        ".." => Some("has a `..` component"),
        _ if i == 0 && part.starts_with("..") => Some("starts with `..`"),
        _ if part.len() > 255 => Some("has a component longer than 255 bytes"),
        _ => None,
    };
    if path.is_empty() {
        Err("is empty")
    } else if path.starts_with('/') {
        Err("is absolute")
    } else if path.len() > 4096 {
        Err("is longer than 4096 bytes")
    } else if path.contains(['\\', '\0']) {
        Err("holds a backslash or NUL")
    } else {
        parts.enumerate().find_map(bad).map_or(Ok(()), Err)
    }
}

/// Checks a ConfigMap or Secret key used as a file name (the API server's
/// `IsConfigMapKey`; [`check_path`] does the rest).
fn check_key(key: &str) -> Result<(), &'static str> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    match key.len() <= 253 && !key.is_empty() && key.chars().all(allowed) {
        true => Ok(()),
        false => Err("not a valid key ([-._a-zA-Z0-9], 1 to 253 characters)"),
    }
}

#[cfg(test)]
#[path = "volume_tests.rs"]
mod tests;
