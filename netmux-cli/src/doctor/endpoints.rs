//! Endpoint checks: reachability (QUIC, TCP, port-forward probes) and certificate validity.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use netmux_daemon::config::EndpointConfig;

use super::Check;

/// The outcome of a QUIC handshake probe.
#[derive(Debug, Clone)]
pub(crate) enum Probe {
    /// Handshake completed in this time; the server's certificate chain.
    Ok(Duration, Vec<Vec<u8>>),
    /// No answer over UDP.
    Timeout(Duration),
    /// The server answered but TLS failed.
    Tls(String),
    /// The route toward the server cannot carry QUIC's packets (its MTU).
    RouteTooSmall(String),
    /// Anything else (resolution, local setup).
    Error(String),
    /// The Kubernetes port-forward could not be opened (kubeconfig,
    /// credentials, RBAC, no ready pod).
    PortForward(String),
}

/// Reachability of an endpoint's server over UDP (a QUIC handshake).
pub(crate) fn endpoint_reachability(ep: &str, server: &str, probe: &Probe) -> Check {
    let name = format!("endpoint {ep}");
    match probe {
        Probe::Ok(rtt, _) => Check::pass(
            name,
            format!("QUIC handshake with {server} in {} ms", rtt.as_millis()),
        ),
        Probe::Timeout(t) => Check::fail(
            name,
            format!("no answer over UDP from {server} within {} s", t.as_secs()),
            "check that netmux-server runs and that UDP to that port is not blocked (firewall, \
             load balancer without UDP); `kubectl -n netmux get svc` shows its address",
        ),
        Probe::Tls(e) => Check::fail(
            name,
            format!("{server} answered but TLS failed: {e}"),
            "see the certificate check; the CA in the config must be the server's state_dir/ca.pem \
             and server_name one of its server_names",
        ),
        Probe::RouteTooSmall(e) => Check::fail(
            name,
            e.clone(),
            netmux_daemon::transport::TOO_SMALL_FOR_QUIC_FIX,
        ),
        Probe::Error(e) => Check::fail(
            name,
            e.clone(),
            "fix `server` for this endpoint in the config",
        ),
        Probe::PortForward(e) => Check::fail(
            name,
            format!("port-forward: {e}"),
            "check the kubeconfig context (`kubectl config current-context`), that your user may \
             create pods/portforward in the server's namespace, and that a server pod is ready \
             (`kubectl -n NAMESPACE get pods -l app.kubernetes.io/name=netmux-server`); docs/kubernetes.md",
        ),
    }
}

/// Validity and expiry of the PEM certificates in `pem` at `now`; `what`
/// names them ("CA of dev").
pub(crate) fn certificates(name: &str, what: &str, ders: &[Vec<u8>], now: SystemTime) -> Check {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if ders.is_empty() {
        return Check::fail(
            name,
            format!("{what}: no certificate"),
            "put the server's state_dir/ca.pem in ca_file",
        );
    }
    let mut soonest: Option<(i64, String)> = None;
    for der in ders {
        let cert = match x509_parser::parse_x509_certificate(der) {
            Ok((_, c)) => c,
            Err(e) => {
                return Check::fail(
                    name,
                    format!("{what}: unparsable certificate: {e}"),
                    "put the server's state_dir/ca.pem in ca_file",
                )
            }
        };
        let subject = cert.subject().to_string();
        let nb = cert.validity().not_before.timestamp();
        let na = cert.validity().not_after.timestamp();
        if now < nb {
            return Check::fail(
                name,
                format!(
                    "{what} {subject} is not valid before {} (in {} s): is this clock behind?",
                    cert.validity().not_before,
                    nb - now
                ),
                "fix the clock (timedatectl set-ntp true), see the clock check",
            );
        }
        if now > na {
            return Check::fail(
                name,
                format!("{what} {subject} expired on {}", cert.validity().not_after),
                "renew it: restart netmux-server after removing the expired file from its state_dir \
                 (it issues a new one), then update ca_file",
            );
        }
        if soonest.as_ref().is_none_or(|(t, _)| na < *t) {
            soonest = Some((na, format!("{subject} until {}", cert.validity().not_after)));
        }
    }
    let Some((na, desc)) = soonest else {
        return Check::fail(name, format!("{what}: no certificate"), "set ca_file");
    };
    let days = (na - now) / 86_400;
    if days < 30 {
        Check::warn(
            name,
            format!("{what} {desc}: expires in {days} days"),
            "renew it before it expires (see docs/install.md)",
        )
    } else {
        Check::pass(name, format!("{what} {desc} ({days} days left)"))
    }
}

/// DER certificates in a PEM text.
pub(crate) fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    let mut r = pem.as_bytes();
    rustls_pemfile::certs(&mut r)
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect()
}

/// Dials the endpoint's server the way its `transport` says and completes
/// a QUIC handshake (no hello), bounded by `timeout`. Kubernetes endpoints
/// use the kubeconfig of the user running the doctor, as `netmux connect`
/// does. Returns the probe and the CA PEM it trusted.
pub(crate) async fn probe(cfg: &EndpointConfig, timeout: Duration) -> (Probe, Option<String>) {
    use netmux_daemon::config::Transport;
    let mut ca = cfg.ca_pem.clone();
    // A Kubernetes endpoint: the user's credentials first, as `netmux
    // connect` resolves them; the CA may come from the cluster.
    let link = match &cfg.kubernetes {
        None => None,
        Some(settings) => {
            let step = async {
                let link = kube_link(settings).await?;
                if ca.is_none() {
                    ca = Some(
                        link.ca_pem()
                            .await
                            .map_err(|e| Probe::PortForward(e.to_string()))?,
                    );
                }
                Ok::<_, Probe>(link)
            };
            match tokio::time::timeout(timeout, step).await {
                Ok(Ok(l)) => Some(l),
                Ok(Err(p)) => return (p, ca),
                Err(_) => {
                    return (
                        Probe::PortForward(format!(
                            "no answer from the Kubernetes API within {} s",
                            timeout.as_secs()
                        )),
                        ca,
                    )
                }
            }
        }
    };
    let Some(pem) = ca.clone() else {
        return (Probe::Error("no CA configured (ca_file)".into()), None);
    };
    let direct = match cfg.transport {
        Transport::PortForward => None,
        Transport::Quic | Transport::Tcp | Transport::Auto => {
            Some(probe_server(cfg, &pem, timeout).await)
        }
    };
    let forward = matches!(
        (&direct, cfg.transport),
        (_, Transport::PortForward)
            | (
                Some(Probe::Timeout(_) | Probe::Error(_) | Probe::RouteTooSmall(_)),
                Transport::Auto
            )
    );
    match (direct, forward, link) {
        (Some(p), false, _) => (p, ca),
        (_, true, Some(link)) => {
            let p = match tokio::time::timeout(timeout, probe_port_forward(cfg, &link, &pem)).await
            {
                Ok(p) => p,
                Err(_) => {
                    Probe::PortForward(format!("no handshake within {} s", timeout.as_secs()))
                }
            };
            (p, ca)
        }
        _ => (
            Probe::Error("transport needs [endpoint.kubernetes]".into()),
            ca,
        ),
    }
}

/// What the API server said about the user's rights in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rights {
    /// The verb `intercept` on services.
    pub intercept: bool,
    /// `patch` on deployments/scale (`intercept --replace`).
    pub replace: bool,
}

/// Whether the user of Kubernetes endpoint `ep` may intercept Services in
/// `namespace`, and replace their Deployments (`Ok(rights)`), or why that
/// could not be asked.
pub fn intercept_rights(ep: &str, namespace: &str, answer: Result<Rights, String>) -> Check {
    let name = format!("intercept rights {ep}");
    match answer {
        Ok(Rights {
            intercept: true,
            replace,
        }) => Check::pass(
            name,
            match replace {
                true => format!("you may intercept Services in namespace {namespace} (verb `intercept` on services), and stop their Deployments with --replace (patch on deployments/scale)"),
                false => format!("you may intercept Services in namespace {namespace} (verb `intercept` on services); --replace would be refused there (it needs patch on deployments/scale: the ClusterRole netmux-replace, bound by a RoleBinding in {namespace})"),
            },
        ),
        Ok(Rights { intercept: false, .. }) => Check::warn(
            name,
            format!("your user may not intercept Services in namespace {namespace}: RBAC does not grant the verb `intercept` on services there"),
            format!("ask an admin to bind the Role netmux-user (manifests/base/rbac-users.yaml) to you in {namespace}, if you need `netmux intercept` (docs/intercept.md)"),
        ),
        Err(e) => Check::warn(
            name,
            format!("could not ask the API server: {e}"),
            "check the kubeconfig (`kubectl auth can-i intercept services`)",
        ),
    }
}

/// Asks the API server, with the user's credentials of Kubernetes
/// endpoint `cfg`, whether they may intercept Services in their context's
/// namespace; `None` for other endpoints.
pub async fn probe_intercept_rights(cfg: &EndpointConfig, timeout: Duration) -> Option<Check> {
    let settings = cfg.kubernetes.as_ref()?;
    let asked = async {
        let link = kube_link(settings).await.map_err(|p| format!("{p:?}"))?;
        let ns = link.default_namespace().to_owned();
        let intercept = link.may_intercept(&ns).await.map_err(|e| e.to_string())?;
        let replace = link
            .may_scale_deployments(&ns)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((ns, Rights { intercept, replace }))
    };
    Some(match tokio::time::timeout(timeout, asked).await {
        Ok(Ok((ns, rights))) => intercept_rights(&cfg.name, &ns, Ok(rights)),
        Ok(Err(e)) => intercept_rights(&cfg.name, "-", Err(e)),
        Err(_) => intercept_rights(
            &cfg.name,
            "-",
            Err(format!("no answer within {} s", timeout.as_secs())),
        ),
    })
}

/// The user's credentials for a Kubernetes endpoint, resolved as
/// `netmux connect` does (plugins do not prompt here, and run off the
/// runtime so that the probe's timeout holds even if one hangs).
async fn kube_link(
    settings: &netmux_api::kube::KubeSettings,
) -> Result<netmux_daemon::cluster::forward::KubeLink, Probe> {
    let req = crate::credentials::Request {
        settings: Some(settings.clone()),
        interactive: false,
        ..Default::default()
    };
    let access = match tokio::task::spawn_blocking(move || {
        crate::credentials::resolve_as_user(&req)
    })
    .await
    {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return Err(Probe::PortForward(e.to_string())),
        Err(e) => return Err(Probe::PortForward(format!("resolving the kubeconfig: {e}"))),
    };
    netmux_daemon::cluster::forward::KubeLink::new(&access, settings.clone())
        .await
        .map_err(|e| Probe::PortForward(e.to_string()))
}

async fn probe_port_forward(
    cfg: &EndpointConfig,
    link: &netmux_daemon::cluster::forward::KubeLink,
    ca_pem: &str,
) -> Probe {
    let client = match netmux_daemon::transport::client_config(ca_pem) {
        Ok(c) => c,
        Err(e) => return Probe::Tls(e.to_string()),
    };
    let start = std::time::Instant::now();
    let forward = match link.open().await {
        Ok(f) => f,
        Err(e) => return Probe::PortForward(e.to_string()),
    };
    let pod = forward.pod.clone();
    match netmux_daemon::transport::dial_forward(forward, client, &cfg.server_name).await {
        Ok(conn) => {
            let chain = peer_chain(&conn);
            conn.close(0u32.into(), b"doctor");
            Probe::Ok(start.elapsed(), chain)
        }
        Err(e) => Probe::PortForward(format!("QUIC over the port-forward to {pod}: {e}")),
    }
}

/// A QUIC handshake with `server` over UDP (or TCP with `transport = "tcp"`).
async fn probe_server(cfg: &EndpointConfig, ca_pem: &str, timeout: Duration) -> Probe {
    let Some(name) = &cfg.server else {
        return Probe::Error("no `server` configured".into());
    };
    let server: SocketAddr = match tokio::net::lookup_host(name).await {
        Ok(mut a) => match a.next() {
            Some(a) => a,
            None => return Probe::Error(format!("{name} resolves to no address")),
        },
        Err(e) => return Probe::Error(format!("cannot resolve {name}: {e}")),
    };
    let client = match netmux_daemon::transport::client_config(ca_pem) {
        Ok(c) => c,
        Err(e) => return Probe::Tls(e.to_string()),
    };
    if matches!(cfg.transport, netmux_daemon::config::Transport::Tcp) {
        let start = std::time::Instant::now();
        let dial = netmux_daemon::transport::dial_tcp(
            server,
            client,
            &cfg.server_name,
            cfg.survive_blackout,
        );
        return match tokio::time::timeout(timeout, dial).await {
            Err(_) => Probe::Timeout(timeout),
            Ok(Err(e)) => Probe::Error(format!("QUIC over TCP to {server}: {e}")),
            Ok(Ok(conn)) => {
                let chain = peer_chain(&conn);
                conn.close(0u32.into(), b"doctor");
                Probe::Ok(start.elapsed(), chain)
            }
        };
    }
    if let Some(why) = netmux_daemon::transport::route_too_small_for_quic(server) {
        return Probe::RouteTooSmall(why.to_string());
    }
    let bind = netmux_common::tunnel::udp_socket::any_port(server.is_ipv6());
    let endpoint = match quinn::Endpoint::client(bind) {
        Ok(e) => e,
        Err(e) => return Probe::Error(format!("UDP socket: {e}")),
    };
    let start = std::time::Instant::now();
    let connecting = match endpoint.connect_with(client, server, &cfg.server_name) {
        Ok(c) => c,
        Err(e) => return Probe::Error(format!("cannot dial {server}: {e}")),
    };
    let r = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Probe::Timeout(timeout),
        Ok(Err(quinn::ConnectionError::TimedOut)) => Probe::Timeout(timeout),
        Ok(Err(e)) => Probe::Tls(e.to_string()),
        Ok(Ok(conn)) => {
            let chain = peer_chain(&conn);
            conn.close(0u32.into(), b"doctor");
            Probe::Ok(start.elapsed(), chain)
        }
    };
    endpoint.close(0u32.into(), b"");
    r
}

/// The server's certificate chain as DER, for the validity check.
fn peer_chain(conn: &quinn::Connection) -> Vec<Vec<u8>> {
    conn.peer_identity()
        .and_then(|i| {
            i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .map(|c| c.iter().map(|d| d.to_vec()).collect())
        .unwrap_or_default()
}
