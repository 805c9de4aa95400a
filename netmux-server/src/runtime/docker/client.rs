//! The Docker Engine API through bollard: connecting (unix socket, or TCP
//! with TLS as `DOCKER_HOST` / `DOCKER_CERT_PATH` / `DOCKER_TLS_VERIFY`
//! describe) and turning inspected containers into [`Container`]s.
//!
//! Works with Podman's Docker-compatible API service too (`podman system
//! service`): the same endpoints, fields and events.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bollard::models::{ContainerInspectResponse, HealthStatusEnum};
use bollard::Docker;
use netmux_common::proto::catalog::Protocol;

use super::catalog::{parse_exposed, Attachment, Container, Health};
use super::Error;

/// Seconds a single API request may take (not the event stream, which is
/// long-lived: bollard bounds only the wait for response headers).
const REQUEST_TIMEOUT_SECS: u64 = 30;

/// Where the Docker API is, resolved from the config and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `unix:///var/run/docker.sock`.
    Unix(PathBuf),
    /// `tcp://host:2376` (or `http://`) without TLS.
    Tcp(String),
    /// `tcp://host:2376` with TLS: CA, client certificate and key.
    Tls {
        addr: String,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Tls { addr, .. } => write!(f, "{addr} (TLS)"),
        }
    }
}

/// The default socket.
pub(crate) const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Resolves `host` (config, else `DOCKER_HOST`, else the default socket)
/// with `cert_path` (`DOCKER_CERT_PATH`) and `tls_verify`
/// (`DOCKER_TLS_VERIFY` set): TCP uses TLS when either is given.
pub(crate) fn endpoint(
    host: &str,
    cert_path: Option<&Path>,
    tls_verify: bool,
) -> Result<Endpoint, Error> {
    let bad = |message: String| Error::Host {
        host: host.to_owned(),
        message,
    };
    if let Some(path) = host.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(bad(
                "no socket path; fix: write unix:///var/run/docker.sock".into(),
            ));
        }
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    let tcp = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("https://"))
        .or_else(|| host.strip_prefix("http://"));
    let Some(rest) = tcp else {
        return Err(bad(
            "unsupported scheme; fix: use unix:///path/docker.sock or tcp://host:port".into(),
        ));
    };
    if rest.is_empty() {
        return Err(bad("no address; fix: write tcp://host:2376".into()));
    }
    let tls = host.starts_with("https://") || cert_path.is_some() || tls_verify;
    if !tls {
        return Ok(Endpoint::Tcp(format!("tcp://{rest}")));
    }
    let dir = match cert_path {
        Some(d) => d.to_owned(),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".docker"))
            .ok_or_else(|| bad("TLS wanted but neither DOCKER_CERT_PATH nor HOME is set; fix: set DOCKER_CERT_PATH to the directory with ca.pem, cert.pem and key.pem".into()))?,
    };
    let [ca, cert, key] = ["ca.pem", "cert.pem", "key.pem"].map(|f| dir.join(f));
    for f in [&ca, &cert, &key] {
        if !f.is_file() {
            return Err(bad(format!(
                "TLS certificate file {} is missing; fix: point DOCKER_CERT_PATH at the directory holding ca.pem, cert.pem and key.pem (as `docker --tlsverify` uses)",
                f.display()
            )));
        }
    }
    Ok(Endpoint::Tls {
        addr: format!("tcp://{rest}"),
        ca,
        cert,
        key,
    })
}

/// A client for `ep` (no request made yet).
pub(crate) fn connect(ep: &Endpoint) -> Result<Docker, Error> {
    let version = bollard::API_DEFAULT_VERSION;
    let r = match ep {
        Endpoint::Unix(p) => {
            Docker::connect_with_unix(&p.display().to_string(), REQUEST_TIMEOUT_SECS, version)
        }
        Endpoint::Tcp(a) => Docker::connect_with_http(a, REQUEST_TIMEOUT_SECS, version),
        Endpoint::Tls {
            addr,
            ca,
            cert,
            key,
        } => Docker::connect_with_ssl(addr, key, cert, ca, REQUEST_TIMEOUT_SECS, version),
    };
    r.map_err(|e| Error::Host {
        host: ep.to_string(),
        message: e.to_string(),
    })
}

/// A running container as the catalog sees it; `None` when it is not
/// running (or not a container we can use).
pub(crate) fn container(r: &ContainerInspectResponse) -> Option<Container> {
    let state = r.state.as_ref()?;
    if state.running != Some(true) || state.paused == Some(true) || state.restarting == Some(true) {
        return None;
    }
    let health = match state.health.as_ref().and_then(|h| h.status) {
        None | Some(HealthStatusEnum::EMPTY) | Some(HealthStatusEnum::NONE) => Health::None,
        Some(HealthStatusEnum::STARTING) => Health::Starting,
        Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
        Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
    };
    let config = r.config.as_ref();
    let labels: BTreeMap<String, String> = config
        .and_then(|c| c.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut exposed: Vec<_> = config
        .and_then(|c| c.exposed_ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|k| parse_exposed(k))
        .collect();
    exposed.sort_by_key(|(port, proto)| (*port, *proto == Protocol::Udp));
    exposed.dedup();
    let mut networks: Vec<Attachment> = r
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .into_iter()
        .flatten()
        .map(|(name, ep)| Attachment {
            network: name.clone(),
            addresses: [ep.ip_address.as_deref(), ep.global_ipv6_address.as_deref()]
                .into_iter()
                .flatten()
                .filter_map(|a| a.parse::<IpAddr>().ok())
                .collect(),
            aliases: ep
                .aliases
                .iter()
                .flatten()
                .chain(ep.dns_names.iter().flatten())
                .cloned()
                .collect(),
        })
        .collect();
    networks.sort_by(|a, b| a.network.cmp(&b.network));
    Some(Container {
        id: r.id.clone()?,
        name: r.name.as_deref()?.trim_start_matches('/').to_owned(),
        labels,
        health,
        exposed,
        networks,
    })
}

/// The networks of a container (the server's own), by name.
pub(crate) fn network_names(r: &ContainerInspectResponse) -> Vec<String> {
    r.network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .map(|n| n.keys().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_resolve_with_tls_when_asked() {
        assert_eq!(
            endpoint("unix:///run/docker.sock", None, false).unwrap(),
            Endpoint::Unix("/run/docker.sock".into())
        );
        assert_eq!(
            endpoint("tcp://10.0.0.1:2375", None, false).unwrap(),
            Endpoint::Tcp("tcp://10.0.0.1:2375".into())
        );
        let dir = tempfile::tempdir().unwrap();
        let e = endpoint("tcp://10.0.0.1:2376", Some(dir.path()), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ca.pem") && e.contains("DOCKER_CERT_PATH"),
            "{e}"
        );
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        assert!(matches!(
            endpoint("tcp://10.0.0.1:2376", Some(dir.path()), false).unwrap(),
            Endpoint::Tls { ref addr, .. } if addr == "tcp://10.0.0.1:2376"
        ));
        let e = endpoint("ssh://host", None, false).unwrap_err().to_string();
        assert!(e.contains("ssh://host") && e.contains("fix:"), "{e}");
    }

    #[test]
    fn inspect_json_becomes_a_container() {
        let json = r#"{
          "Id": "abc123", "Name": "/shop_web_1",
          "State": {"Running": true, "Health": {"Status": "healthy"}},
          "Config": {"Labels": {"netmux.publish": "true"}, "ExposedPorts": {"8080/tcp": {}, "53/udp": {}}},
          "NetworkSettings": {"Networks": {"apps": {"IPAddress": "172.31.0.2", "Aliases": ["web"], "GlobalIPv6Address": ""}}}
        }"#;
        let r: ContainerInspectResponse = serde_json::from_str(json).unwrap();
        let c = container(&r).unwrap();
        assert_eq!(c.name, "shop_web_1");
        assert_eq!(c.health, Health::Healthy);
        assert_eq!(c.exposed.len(), 2);
        assert_eq!(
            c.networks[0].addresses,
            ["172.31.0.2".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(c.networks[0].aliases, ["web"]);
        let stopped: ContainerInspectResponse =
            serde_json::from_str(r#"{"Id": "x", "Name": "/x", "State": {"Running": false}}"#)
                .unwrap();
        assert_eq!(container(&stopped), None);
    }
}
