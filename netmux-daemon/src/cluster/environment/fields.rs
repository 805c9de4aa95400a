//! `fieldRef` values: the kubelet's `podFieldSelectorRuntimeValue` for env
//! (pkg/kubelet/kubelet_pods.go) and `fieldpath.ExtractFieldPathAsString`
//! for downwardAPI volumes (pkg/fieldpath), with its `FormatMap`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::core::v1::{ObjectFieldSelector, Pod};

use super::namespace;

/// What reads a `fieldRef`: the kubelet gives env and downwardAPI volumes
/// different fields.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum FieldUse {
    /// `env[].valueFrom.fieldRef` (`podFieldSelectorRuntimeValue`).
    Env,
    /// A downwardAPI volume's item (`fieldpath.ExtractFieldPathAsString`):
    /// `metadata.*` only, the whole label and annotation maps too.
    Volume,
}

/// `fieldRef` of `pod`, as the kubelet reads it for `to`.
pub(super) fn field(pod: &Pod, sel: &ObjectFieldSelector, to: FieldUse) -> Result<String, String> {
    let path = sel.field_path.as_str();
    if let Some(v) = sel
        .api_version
        .as_deref()
        .filter(|v| !v.is_empty() && *v != "v1")
    {
        return Err(format!(
            "fieldRef `{path}` has apiVersion {v}, which the kubelet refuses"
        ));
    }
    let (meta, spec) = (&pod.metadata, pod.spec.as_ref());
    let unsupported = || {
        let to = match to {
            FieldUse::Env => "env",
            FieldUse::Volume => "a downwardAPI volume",
        };
        Err(format!(
            "fieldRef `{path}` is not a field the kubelet gives to {to}; fix: set it yourself"
        ))
    };
    if to == FieldUse::Volume {
        match path {
            "metadata.labels" => return Ok(format_map(meta.labels.as_ref())),
            "metadata.annotations" => return Ok(format_map(meta.annotations.as_ref())),
            _ if !path.starts_with("metadata.") => return unsupported(),
            _ => {}
        }
    }
    let status = pod.status.as_ref();
    // Status fields (and the node) are empty until the pod runs.
    let running = |value: Option<String>, what: &str| {
        value.filter(|v| !v.is_empty()).ok_or_else(|| {
            format!("fieldRef `{path}`: the pod has no {what} yet; fix: pick a running pod, or set it yourself")
        })
    };
    let host_ip = status.and_then(|s| s.host_ip.clone());
    let pod_ip = status.and_then(|s| s.pod_ip.clone());
    let join = |ips: Vec<&str>, one: Option<String>| match ips.is_empty() {
        true => one,
        false => Some(ips.join(",")),
    };
    match path {
        "metadata.name" => Ok(meta.name.clone().unwrap_or_default()),
        "metadata.namespace" => Ok(namespace(pod).to_owned()),
        "metadata.uid" => Ok(meta.uid.clone().unwrap_or_default()),
        "spec.nodeName" => running(spec.and_then(|s| s.node_name.clone()), "node"),
        "spec.serviceAccountName" => Ok(spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default()),
        "status.hostIP" => running(host_ip, "host IP"),
        "status.podIP" => running(pod_ip, "IP"),
        "status.hostIPs" => {
            let ips = status
                .and_then(|s| s.host_ips.as_ref())
                .into_iter()
                .flatten();
            running(
                join(ips.map(|i| i.ip.as_str()).collect(), host_ip),
                "host IP",
            )
        }
        "status.podIPs" => {
            let ips = status
                .and_then(|s| s.pod_ips.as_ref())
                .into_iter()
                .flatten();
            running(join(ips.map(|i| i.ip.as_str()).collect(), pod_ip), "IP")
        }
        _ => {
            // `metadata.labels['key']`: the kubelet gives "" for a missing key.
            let subscript = path.strip_suffix("']").and_then(|p| p.split_once("['"));
            let (map, key) = match subscript {
                Some(("metadata.labels", key)) => (&meta.labels, key),
                Some(("metadata.annotations", key)) => (&meta.annotations, key),
                _ => return unsupported(),
            };
            Ok(map
                .as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default())
        }
    }
}

/// A label or annotation map as the kubelet's `fieldpath.FormatMap`:
/// `key="value"` lines sorted by key, joined by "\n", each value quoted as
/// Go's `%q`.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    let lines = map.into_iter().flatten();
    let lines = lines.map(|(key, value)| format!("{key}={}", go_quote(value)));
    lines.collect::<Vec<_>>().join("\n")
}

/// `s` quoted as Go's `strconv.Quote`.
pub(super) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        let code = u32::from(c);
        // Writing to a String cannot fail.
        let _ = match c {
            '"' | '\\' => write!(out, "\\{c}"),
            '\x07' => write!(out, "\\a"),
            '\x08' => write!(out, "\\b"),
            '\x0c' => write!(out, "\\f"),
            '\n' => write!(out, "\\n"),
            '\r' => write!(out, "\\r"),
            '\t' => write!(out, "\\t"),
            '\x0b' => write!(out, "\\v"),
            _ if c < ' ' || c == '\x7f' => write!(out, "\\x{code:02x}"),
            _ if go_printable(c) => write!(out, "{c}"),
            _ if code < 0x10000 => write!(out, "\\u{code:04x}"),
            _ => write!(out, "\\U{code:08x}"),
        };
    }
    out.push('"');
    out
}

/// Go's `strconv.IsPrint`: letters, marks, numbers, punctuation, symbols
/// and the ASCII space. Rust's `escape_debug` keeps exactly those (after a
/// string's first character, where it also escapes combining marks), but
/// for the quotes and backslash, which [`go_quote`] handles before.
fn go_printable(c: char) -> bool {
    c == '\'' || ['a', c].iter().collect::<String>().escape_debug().nth(1) == Some(c)
}
