//! Reaching an endpoint's server: QUIC over UDP, over a TCP stream, over
//! a port-forward to a server pod, or `auto` (UDP first, then the
//! port-forward), then the hello ([`super::session::hello`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use netmux_common::proto::session::SessionError;
use netmux_common::tunnel::quic;
use quinn::Connection;

use super::session::{hello, Established};
use crate::cluster::forward::KubeLink;
use crate::config::{EndpointConfig, Transport};
use crate::transport::dial_udp;

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// Name resolution.
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    /// TLS or QUIC setup problem (bad CA, socket).
    #[error("{0}")]
    Setup(String),
    /// QUIC handshake or connection failure.
    #[error("QUIC: {0}")]
    Quic(String),
    /// The session failed (refused, version mismatch, protocol error).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The Kubernetes API refused the user's credentials (401).
    #[error("{0}")]
    Credentials(String),
}

impl From<crate::transport::DialError> for ConnectError {
    fn from(e: crate::transport::DialError) -> ConnectError {
        match e {
            crate::transport::DialError::Setup(m) => ConnectError::Setup(m),
            crate::transport::DialError::Quic(m) => ConnectError::Quic(m),
        }
    }
}

/// How long one Kubernetes API step of a connection attempt (reading the
/// CA, finding a pod, opening the forward) may take.
const KUBE_STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs a Kubernetes API step with [`KUBE_STEP_TIMEOUT`].
async fn kube_step<T>(
    what: &str,
    step: impl std::future::Future<Output = Result<T, crate::cluster::KubeError>>,
) -> Result<T, ConnectError> {
    use crate::cluster::KubeError;
    match tokio::time::timeout(KUBE_STEP_TIMEOUT, step).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(KubeError::Unauthorized(m))) => Err(ConnectError::Credentials(m)),
        Ok(Err(e)) => Err(ConnectError::Setup(e.to_string())),
        Err(_) => Err(ConnectError::Setup(format!(
            "{what}: no answer from the Kubernetes API within {}s",
            KUBE_STEP_TIMEOUT.as_secs()
        ))),
    }
}

/// [`crate::transport::client_config`] for a session: QUIC idle timeout `survive_blackout`
/// and the congestion controller behind `gate`
/// ([`netmux_common::tunnel::blackout`]).
fn session_client_config(
    ca_pem: &str,
    survive_blackout: Duration,
    gate: &netmux_common::tunnel::blackout::ProbeGate,
) -> Result<quinn::ClientConfig, ConnectError> {
    let mut t =
        quic::transport_config_with(gate.wrap(Arc::new(quic::congestion::BbrConfig::default())));
    netmux_common::tunnel::blackout::set_idle_timeout(&mut t, survive_blackout);
    Ok(crate::transport::client_config_with(ca_pem, t)?)
}

/// How long a QUIC handshake with the server may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `auto` waits for the server over UDP before it tries the
/// port-forward.
const AUTO_DIRECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Dials the server and completes the hello; returns once the catalog
/// snapshot is in, and whether the connection runs over the endpoint's UDP
/// socket.
pub(crate) async fn connect(
    config: &EndpointConfig,
    kube: Option<&KubeLink>,
    quic_endpoint: &mut Option<(quinn::Endpoint, bool)>,
    gate: &netmux_common::tunnel::blackout::ProbeGate,
) -> Result<(Established, bool), ConnectError> {
    let ca_pem = match (&config.ca_pem, kube) {
        (Some(pem), _) => pem.clone(),
        (None, Some(k)) => kube_step("reading the server's CA", k.ca_pem()).await?,
        (None, None) => return Err(ConnectError::Setup("no CA for the server".into())),
    };
    let client = session_client_config(&ca_pem, config.survive_blackout, gate)?;
    let mut via_udp = false;
    let (conn, server) = match config.transport {
        Transport::Quic => {
            let server = resolve(config).await?;
            quic_fits(server)?;
            via_udp = true;
            let dial = dial_udp(client, server, &config.server_name, quic_endpoint);
            // The idle timeout (survive_blackout) also bounds a handshake:
            // an unanswered one must fail long before that.
            let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, dial)
                .await
                .map_err(|_| {
                    ConnectError::Quic(format!(
                        "no answer from {server} within {}s",
                        HANDSHAKE_TIMEOUT.as_secs()
                    ))
                })??;
            (conn, server)
        }
        Transport::Tcp => {
            let server = resolve(config).await?;
            let conn = crate::transport::dial_tcp(
                server,
                client,
                &config.server_name,
                config.survive_blackout,
            )
            .await?;
            (conn, server)
        }
        Transport::PortForward => port_forward(config, kube, client).await?,
        Transport::Auto => {
            let direct = async {
                let server = resolve(config).await?;
                quic_fits(server)?;
                let conn =
                    dial_udp(client.clone(), server, &config.server_name, quic_endpoint).await?;
                Ok::<_, ConnectError>((conn, server))
            };
            match tokio::time::timeout(AUTO_DIRECT_TIMEOUT, direct).await {
                Ok(Ok(c)) => {
                    via_udp = true;
                    c
                }
                Ok(Err(e)) => {
                    tracing::info!(endpoint = %config.name, error = %e, "direct QUIC failed; trying the port-forward");
                    port_forward(config, kube, client).await?
                }
                Err(_) => {
                    tracing::info!(endpoint = %config.name, "no answer over UDP within {AUTO_DIRECT_TIMEOUT:?}; trying the port-forward");
                    port_forward(config, kube, client).await?
                }
            }
        }
    };
    // The configured token wins (a bot's endpoint); a Kubernetes
    // endpoint presents the user's (`--token-file`, else the kubeconfig's).
    let token = config
        .token
        .as_ref()
        .map(|t| t.0.clone())
        .or_else(|| kube.and_then(|k| k.bearer().map(str::to_owned)));
    Ok((hello(conn, server, token).await?, via_udp))
}

/// Fails at once, saying why and what to do, when the route to `server`
/// cannot carry QUIC's 1,200-byte packets (a tunnel interface with a small
/// MTU): the handshake would only time out.
fn quic_fits(server: SocketAddr) -> Result<(), ConnectError> {
    match crate::transport::route_too_small_for_quic(server) {
        Some(why) => Err(ConnectError::Quic(format!(
            "{why}: {}",
            crate::transport::TOO_SMALL_FOR_QUIC_FIX
        ))),
        None => Ok(()),
    }
}

/// The first address of `server`.
async fn resolve(config: &EndpointConfig) -> Result<SocketAddr, ConnectError> {
    let Some(name) = &config.server else {
        return Err(ConnectError::Setup(
            "no server address configured (needed for quic and tcp)".into(),
        ));
    };
    tokio::net::lookup_host(name)
        .await
        .map_err(|e| ConnectError::Resolve(name.clone(), e.to_string()))?
        .next()
        .ok_or_else(|| ConnectError::Resolve(name.clone(), "no address".into()))
}

/// QUIC over a port-forward to a ready server pod.
async fn port_forward(
    config: &EndpointConfig,
    kube: Option<&KubeLink>,
    client: quinn::ClientConfig,
) -> Result<(Connection, SocketAddr), ConnectError> {
    let Some(kube) = kube else {
        return Err(ConnectError::Setup(
            "port-forward needs the user's kubeconfig: run `netmux connect` as that user".into(),
        ));
    };
    let forward = kube_step("opening the port-forward", kube.open()).await?;
    tracing::info!(endpoint = %config.name, pod = %forward.pod, "port-forward open");
    let peer = forward.peer;
    let conn = crate::transport::dial_forward(forward, client, &config.server_name).await?;
    Ok((conn, peer))
}
