//! The control API between the `netmux` CLI and the daemon: one JSON request
//! per line on the unix socket, one JSON response per line back.
//!
//! Both sides use this crate: `netmux-cli` sends with [`call`], `netmuxd`
//! answers in its `control` module. It holds no daemon logic, and it is
//! what lets the daemon not depend on the CLI crate, which runs kubeconfig
//! credential plugins.

pub mod args;
mod client;
pub mod kube;

pub use client::call;

use serde::{Deserialize, Serialize};

/// A CLI request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Endpoints and services (`ls`).
    List {
        /// Only rows whose name or parent contains this.
        filter: Option<String>,
    },
    /// Connect an endpoint.
    Connect {
        /// Endpoint name.
        endpoint: String,
        /// For a Kubernetes endpoint: the user's credentials, resolved by
        /// the CLI (the daemon answers [`Reply::NeedKube`] without them).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kube: Option<crate::kube::KubeAccess>,
        /// `sudo netmux connect`: the uid of the user who ran sudo, whose
        /// kubeconfig `kube` was resolved from; they own the credentials
        /// (`netmux env` answers them). Taken only from root.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_behalf_of: Option<u32>,
    },
    /// Disconnect an endpoint and stop its services.
    Disconnect {
        /// Endpoint name.
        endpoint: String,
    },
    /// Start services matching a pattern (`+` matches any run of characters).
    Start {
        /// Endpoint name.
        endpoint: String,
        /// Service name, `namespace/name`, or pattern.
        service: String,
        /// Also claim C2L services a `+` pattern matches (a C2L service
        /// that is named exactly is always claimed).
        #[serde(default)]
        c2l: bool,
    },
    /// Stop services matching a pattern.
    Stop {
        /// Endpoint name.
        endpoint: String,
        /// Service name, `namespace/name`, or pattern.
        service: String,
    },
    /// Publish a local service to the cluster (C2L) and hold it.
    Expose {
        /// Endpoint name.
        endpoint: String,
        /// Service name in the cluster.
        name: String,
        /// Local target, `host:port`.
        local: String,
        /// Cluster-side port.
        remote_port: u16,
    },
    /// Withdraw a service published with `expose`.
    Unexpose {
        /// Endpoint name.
        endpoint: String,
        /// Service name.
        name: String,
    },
    /// Intercept a cluster Service's port (docs/intercept.md).
    Intercept {
        /// Endpoint name.
        endpoint: String,
        /// Service name or `namespace/name`, as `ls` shows it.
        service: String,
        /// Service port; `None`: its only port.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        /// Where its traffic goes on this machine, `host:port`; empty for
        /// a workload no Service fronts, stopped with `replace`.
        #[serde(default)]
        to: String,
        /// `name=value`: a personal intercept (only requests with this
        /// header); `None`: global (every connection).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        header: Option<String>,
        /// A mirror: a copy of each HTTP request (with `header`, of those
        /// carrying it) comes here, answers discarded; the originals go on.
        #[serde(default)]
        mirror: bool,
        /// Replace: a global intercept during which the workload running
        /// the Service's pods (Deployments, StatefulSets) is scaled to
        /// zero, and scaled back when it ends.
        #[serde(default)]
        replace: bool,
    },
    /// End an intercept.
    Leave {
        /// Endpoint name.
        endpoint: String,
        /// Service name or `namespace/name`.
        service: String,
        /// Service port; `None`: every intercept of the Service.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
    },
    /// The environment a container of the Service's pods has, read with
    /// the user's own Kubernetes credentials (`netmux env`, `netmux
    /// intercept --env-file`).
    Environment {
        /// Endpoint name (a Kubernetes endpoint).
        endpoint: String,
        /// Service name or `namespace/name`, as `ls` shows it; or a
        /// workload, `KIND/NAME` or `NAMESPACE/KIND/NAME` (deployment,
        /// statefulset, daemonset, pod, or kubectl's short names).
        service: String,
        /// Service port whose container is meant; `None`: its only (or
        /// first) port.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        /// The container, by name, instead of the one serving the port.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
        /// Also the files of its ConfigMap, Secret, downwardAPI and
        /// projected volumes (`--mount`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        mounts: bool,
    },
    /// Daemon status.
    Status,
    /// Re-read the configuration file; unchanged endpoints keep their
    /// connections.
    Reload,
    /// Stop everything and exit.
    Exit,
    /// Stop everything and remove every trace (hosts block, redirects).
    Cleanup,
}

/// One line of `netmux ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// `EP` or `SVC`.
    pub kind: String,
    /// Endpoint or service name.
    pub name: String,
    /// Endpoint of a service; `-` for endpoints.
    pub parent: String,
    /// Address summary.
    pub description: String,
    /// connected/degraded/connecting/down/off for endpoints; on/off/gone for services.
    pub status: String,
}

/// Endpoint part of the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    /// Name.
    pub name: String,
    /// Configured server.
    pub server: String,
    /// connected/degraded/connecting/down/off.
    pub state: String,
    /// Last error, if down; if degraded, how long the server has been
    /// silent and what happens at `survive_blackout`.
    pub error: Option<String>,
    /// Services in its catalog.
    pub services: usize,
    /// Services started.
    pub started: usize,
    /// What the daemon left alone or another endpoint holds, one line
    /// each (catalog addresses outside the cluster ranges, redirects of
    /// the same address held by an endpoint that started first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The live connection's path, while connected: its round-trip time
    /// and the size of its packets as MTU discovery found it (e.g. "RTT
    /// 0.2 ms, packets of 8952 bytes (jumbo frames)").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// `netmux status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// Daemon version.
    pub version: String,
    /// Redirect backend in use and why.
    pub redirect: String,
    /// Hosts file maintained.
    pub hosts_file: String,
    /// How names resolve: the DNS integration in force and why.
    #[serde(default)]
    pub dns: String,
    /// Endpoints.
    pub endpoints: Vec<EndpointView>,
    /// Intercepts this daemon holds or asks for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intercepts: Vec<InterceptView>,
}

/// One intercept in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterceptView {
    /// Endpoint.
    pub endpoint: String,
    /// `namespace/name`.
    pub service: String,
    /// Service port (0: its only port).
    pub port: u16,
    /// `global` or `personal name=value`.
    pub mode: String,
    /// Local target.
    pub to: String,
    /// `held`, `pending`, or `refused: why`.
    pub state: String,
    /// Who holds it, as the server names it.
    pub holder: String,
    /// Connections (global) or requests (personal) that came here.
    pub to_workstation: u64,
}

/// `netmux env`: the environment of one container of a Service's pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentView {
    /// `namespace/name` of the Service, or `kind namespace/name` of the
    /// workload named instead (`deployment apps/worker`).
    pub service: String,
    /// The pod it was read from.
    pub pod: String,
    /// The container of that pod.
    pub container: String,
    /// Variables in the container's order.
    pub vars: Vec<(String, String)>,
    /// One line per variable left out or approximated, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// When asked for: the container's volume mounts whose files could be
    /// read (ConfigMap, Secret, downwardAPI, projected), in spec order; the
    /// notes name the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountView>,
}

/// One volume mount of a container, with the files it shows there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountView {
    /// The container's mount path (absolute).
    pub path: String,
    /// The volume's name.
    pub volume: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Its files; a mount of one file (a `subPath` naming a file) has one
    /// entry with an empty path.
    pub files: Vec<FileView>,
}

/// One file of a [`MountView`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileView {
    /// Relative to the mount path, `/`-separated.
    pub path: String,
    /// The permission bits the kubelet gives it.
    pub mode: u32,
    /// The contents, standard base64.
    pub data: String,
}

impl std::fmt::Debug for FileView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The contents may be a Secret's: never in a log line.
        f.debug_struct("FileView")
            .field("path", &self.path)
            .field("mode", &format_args!("{:o}", self.mode))
            .finish_non_exhaustive()
    }
}

/// The kubelet's `IsEnvVarName`, `[-._a-zA-Z][-._a-zA-Z0-9]*`: the names
/// a container's environment holds (the daemon skips other keys; the CLI
/// reads notes that start with such names).
pub fn env_var_name(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    name.chars().all(ok) && name.chars().next().is_some_and(|c| !c.is_ascii_digit())
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// Done; a message for the user.
    Done {
        /// What happened.
        message: String,
    },
    /// `ls` rows.
    List {
        /// Rows.
        rows: Vec<Row>,
    },
    /// Status.
    Status(StatusView),
    /// A container's environment.
    Environment(EnvironmentView),
    /// The endpoint is a Kubernetes one: connect again with the user's
    /// credentials for these settings.
    NeedKube {
        /// Its `[endpoint.kubernetes]`.
        settings: crate::kube::KubeSettings,
    },
}

/// The wire response: a reply or an error for the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The reply, when the request succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<Reply>,
    /// The error, when it failed: names the thing and the fix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<Result<Reply, String>> for Response {
    fn from(r: Result<Reply, String>) -> Self {
        match r {
            Ok(reply) => Response {
                ok: Some(reply),
                error: None,
            },
            Err(e) => Response {
                ok: None,
                error: Some(e),
            },
        }
    }
}

/// Matches `pattern` (with `+` as "any run of characters") against `text`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('+').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_is_a_wildcard() {
        assert!(matches("+", "anything"));
        assert!(matches("kafka+", "kafka-0"));
        assert!(matches("+-0", "kafka-0"));
        assert!(matches("k+a+0", "kafka-0"));
        assert!(!matches("kafka+", "zookeeper"));
        assert!(matches("web", "web"));
        assert!(!matches("web", "web2"));
    }

    #[test]
    fn requests_round_trip_as_json() {
        let r = Request::Start {
            endpoint: "demo".into(),
            service: "+".into(),
            c2l: false,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
    }
}
