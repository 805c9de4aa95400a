//! What the CLI and the daemon exchange about a Kubernetes endpoint: the
//! `[endpoint.kubernetes]` settings, the resolved [`KubeAccess`] that
//! `netmux connect` hands over, and [`KubeError`].
//!
//! The CLI resolves a user's kubeconfig (running its credential plugins as
//! that user); the daemon accepts only the inline result. See
//! `netmux-daemon/src/cluster/` and `netmux-cli/src/credentials.rs`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[endpoint.kubernetes]`: where the server runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeSettings {
    /// Kubeconfig to use; default `$KUBECONFIG`, else `~/.kube/config` of
    /// the user running `netmux connect`.
    pub kubeconfig: Option<PathBuf>,
    /// Context; default the kubeconfig's current context.
    pub context: Option<String>,
    /// The server's namespace.
    pub namespace: String,
    /// The server's Service: its selector finds the pods.
    pub service: String,
    /// The Service port (name or number) whose target carries QUIC over
    /// TCP (the server's `stream_listen`).
    pub port: String,
    /// If set, the only API server URL accepted from `netmux connect`: the
    /// administrator pins the cluster every user of this endpoint reaches
    /// (any member of the control socket's group may connect it).
    #[serde(default)]
    pub api_server: Option<String>,
}

impl KubeSettings {
    /// Checks the values; the error names the key and the fix.
    pub fn validate(
        kubeconfig: Option<PathBuf>,
        context: Option<String>,
        namespace: String,
        service: String,
        port: String,
    ) -> Result<KubeSettings, (&'static str, String)> {
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && netmux_common::proto::catalog::valid_dns_name(s)
                && !s.contains('.')
        };
        if !label(&namespace) {
            return Err((
                "namespace",
                format!("{namespace:?} is not a namespace name (one DNS label)"),
            ));
        }
        if !label(&service) {
            return Err((
                "service",
                format!("{service:?} is not a Service name (one DNS label)"),
            ));
        }
        if port_ref(&port).is_none() {
            return Err((
                "port",
                format!("{port:?} is neither a port number (1-65535) nor a port name (1-15 of a-z 0-9 -)"),
            ));
        }
        if context.as_deref() == Some("") {
            return Err((
                "context",
                "is empty; leave it out for the current context".into(),
            ));
        }
        Ok(KubeSettings {
            kubeconfig,
            context,
            namespace,
            service,
            port,
            api_server: None,
        })
    }
}

/// A Service port reference: a number or an IANA-style name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    /// `7443`.
    Number(u16),
    /// `quic-stream`.
    Name(String),
}

/// Parses a port reference; `None` when it is neither.
pub fn port_ref(s: &str) -> Option<PortRef> {
    if let Ok(n) = s.parse::<u16>() {
        return (n != 0).then_some(PortRef::Number(n));
    }
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-');
    ok.then(|| PortRef::Name(s.to_owned()))
}

/// What `netmux connect` hands the daemon for a Kubernetes endpoint: one
/// kubeconfig context with every credential inline.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeAccess {
    /// A kubeconfig (JSON) with one cluster, one user and one current
    /// context; credentials inline (`token`, `client-certificate-data`,
    /// `client-key-data`, `username`/`password`), no file and no command.
    pub kubeconfig: String,
    /// `context (user)`, for logs and `status`.
    pub describe: String,
    /// When the credential stops working (an `exec` plugin's
    /// `expirationTimestamp`), if known.
    pub expires: Option<String>,
    /// A netmux token for the hello instead of the kubeconfig's bearer
    /// token (`netmux connect --token-file`): for client-certificate users,
    /// a ServiceAccount token the admin handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello_token: Option<String>,
}

impl std::fmt::Debug for KubeAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeAccess")
            .field("describe", &self.describe)
            .field("expires", &self.expires)
            .field("kubeconfig", &"***")
            .field("hello_token", &self.hello_token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Why a Kubernetes endpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig cannot be read or is unusable.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// Which file(s).
        path: String,
        /// What is wrong and the fix.
        message: String,
    },
    /// A credential plugin failed.
    #[error("credential plugin {command:?} of user {user:?}: {message}")]
    Exec {
        /// The plugin.
        command: String,
        /// The kubeconfig user it belongs to.
        user: String,
        /// What went wrong.
        message: String,
    },
    /// The daemon refuses what the CLI sent.
    #[error("{0}")]
    Refused(String),
    /// The API server said no, or could not be reached.
    #[error("{0}")]
    Api(String),
    /// The API server refused the credentials (401): expired or revoked.
    #[error("{0}")]
    Unauthorized(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_refs() {
        assert_eq!(port_ref("7443"), Some(PortRef::Number(7443)));
        assert_eq!(
            port_ref("quic-stream"),
            Some(PortRef::Name("quic-stream".into()))
        );
        for bad in [
            "0",
            "",
            "-x",
            "x-",
            "Quic",
            "a_b",
            "sixteen-chars-xx",
            "70000",
        ] {
            assert_eq!(port_ref(bad), None, "{bad}");
        }
    }

    #[test]
    fn settings_are_checked() {
        let ok = |ns: &str, svc: &str, port: &str| {
            KubeSettings::validate(None, None, ns.into(), svc.into(), port.into())
        };
        assert!(ok("netmux", "netmux-server", "quic-stream").is_ok());
        assert_eq!(ok("Net mux", "s", "1").unwrap_err().0, "namespace");
        assert_eq!(ok("n", "a.b", "1").unwrap_err().0, "service");
        assert_eq!(ok("n", "s", "0").unwrap_err().0, "port");
    }

    #[test]
    fn access_debug_hides_credentials() {
        let a = KubeAccess {
            kubeconfig: "{\"token\":\"s3cret\"}".into(),
            describe: "kind (alice)".into(),
            expires: None,
            hello_token: Some("t0ken".into()),
        };
        assert!(!format!("{a:?}").contains("t0ken"));
        assert!(!format!("{a:?}").contains("s3cret"));
    }
}
