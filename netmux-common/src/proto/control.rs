//! Messages on the control stream after the hello.
//!
//! Encoded with postcard inside [`super::frame`]s. Every decoded message is
//! checked: a catalog entry that fails [`Service::validate`] is a protocol
//! violation, not something to write into a hosts file.

use serde::{Deserialize, Serialize};

use super::catalog::{CatalogEvent, Service, ServiceId};
use super::codec::DecodeError;

/// Server to daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// A full snapshot starts: the daemon forgets its catalog.
    CatalogBegin,
    /// A service was added or changed.
    Upsert(Service),
    /// A service was removed.
    Remove(ServiceId),
    /// The snapshot is complete; later Upsert/Remove are incremental.
    CatalogSynced,
    /// Answer to [`ClientMessage::Ping`].
    Pong(u64),
    /// Answer to a [`ClientMessage::Claim`] or [`ClientMessage::Expose`].
    ClaimResult {
        /// The request this answers.
        request: u32,
        /// `None` when the claim is held; otherwise why not (names the
        /// current holder when another daemon has it).
        error: Option<String>,
    },
    /// This daemon's intercepts as the server routes them (sent when
    /// they change, at most about once a second).
    Intercepts(Vec<InterceptReport>),
}

/// One intercept in [`ServerMessage::Intercepts`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterceptReport {
    /// `namespace/name`.
    pub service: String,
    /// Service port.
    pub port: u16,
    /// The holder and the replica routing it.
    pub holder: String,
    /// Connections (global) or requests (personal) sent to the daemon.
    pub to_workstation: u64,
    /// Requests of the Service's intercepted ports sent to its pods.
    pub to_pods: u64,
}

/// Daemon to server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// Application-level liveness probe, answered with a Pong.
    Ping(u64),
    /// Hold a C2L catalog service (`namespace/name`): the server opens its
    /// cluster-side listeners and sends their connections to this daemon.
    Claim {
        /// Correlates the [`ServerMessage::ClaimResult`].
        request: u32,
        /// `namespace/name` of a C2L service in the catalog.
        service: String,
    },
    /// Publish an ad hoc C2L service and claim it (`netmux expose`).
    Expose {
        /// Correlates the [`ServerMessage::ClaimResult`].
        request: u32,
        /// Service name (DNS label); published in the server's namespace
        /// for ad hoc services.
        name: String,
        /// Cluster-side port.
        port: u16,
        /// Port of the local target (informational, shown in `ls`).
        target_port: u16,
    },
    /// Give up a claim (and remove the service if it was exposed ad hoc).
    Release {
        /// `namespace/name`.
        service: String,
    },
    /// Intercept an existing Service's port (docs/intercept.md): its
    /// traffic comes to this daemon as server-initiated
    /// [`super::stream::StreamHeader::Reverse`] streams naming the catalog
    /// entry and the port. Answered by a [`ServerMessage::ClaimResult`].
    Intercept {
        /// Correlates the [`ServerMessage::ClaimResult`].
        request: u32,
        /// `namespace/name` of the catalog entry of the Service.
        service: String,
        /// The Service port; 0: its only port.
        port: u16,
        /// `None`: a global intercept (every connection). `Some((name,
        /// value))`: a personal one, only HTTP requests carrying this
        /// header come here.
        header: Option<(String, String)>,
        /// A mirror: a copy of every HTTP request (with `header`, of
        /// those carrying it) comes here, its answer discarded; the
        /// original goes on as before.
        mirror: bool,
        /// A replace intercept (global only): the Deployments and
        /// StatefulSets running the Service's pods are scaled to zero
        /// while it lives (recorded on the Service, see
        /// [`super::replaced`]) and scaled back when it ends.
        replace: bool,
    },
    /// Stop a workload no Service fronts for as long as this session
    /// holds it (`netmux intercept EP deploy/worker --replace`): scaled to
    /// zero, its count kept by the server, scaled back when it ends.
    /// Answered by a [`ServerMessage::ClaimResult`].
    StopWorkload {
        /// Correlates the [`ServerMessage::ClaimResult`].
        request: u32,
        /// Which.
        workload: super::replaced::Workload,
    },
    /// End a [`ClientMessage::StopWorkload`] (`netmux leave`).
    StartWorkload {
        /// Which.
        workload: super::replaced::Workload,
    },
    /// End an intercept (`netmux leave`).
    Leave {
        /// `namespace/name`.
        service: String,
        /// The Service port it was asked for (0: its only port).
        port: u16,
    },
}

/// Annotation an intercept writes on the Kubernetes Service it diverts:
/// the original `spec.selector` as JSON (docs/intercept.md). Written by
/// the server, read by `netmux cleanup --intercepts` and `netmux env`.
pub const INTERCEPT_ORIGINAL: &str = "netmux.dev/intercept-original";
/// Annotation naming who intercepts the Service (for people reading it).
pub const INTERCEPT_HOLDER: &str = "netmux.dev/intercept-holder";

/// Longest header value a personal intercept matches.
pub const MAX_HEADER_VALUE: usize = 256;

/// Whether `name` is an HTTP header name a personal intercept may match:
/// a lower-case token (RFC 9110 `tchar`s), at most 64 bytes.
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

/// Whether `value` is a header value a personal intercept may match:
/// visible ASCII and inner spaces, at most [`MAX_HEADER_VALUE`] bytes.
pub fn valid_header_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_HEADER_VALUE
        && value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !value.starts_with(' ')
        && !value.ends_with(' ')
}

impl From<CatalogEvent> for ServerMessage {
    fn from(e: CatalogEvent) -> Self {
        match e {
            CatalogEvent::Upsert(s) => ServerMessage::Upsert(s),
            CatalogEvent::Remove(id) => ServerMessage::Remove(id),
        }
    }
}

/// Encodes a message body (without the frame).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, DecodeError> {
    postcard::to_allocvec(msg).map_err(|e| DecodeError::invalid("control message", e.to_string()))
}

/// Whether `svc` fits one frame as an [`ServerMessage::Upsert`]. An entry
/// that does not is left out of what daemons get, never sent truncated
/// (its id counts: pass the largest, `ServiceId(u32::MAX)`, to judge an
/// entry before it has one).
pub fn upsert_fits(svc: &Service) -> bool {
    encode(&ServerMessage::Upsert(svc.clone()))
        .is_ok_and(|body| body.len() <= super::frame::MAX_FRAME_LEN)
}

impl ServerMessage {
    /// Decodes and validates one frame payload.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let msg: ServerMessage = decode_exact(payload, "server message")?;
        if let ServerMessage::Upsert(svc) = &msg {
            svc.validate()
                .map_err(|e| DecodeError::invalid("catalog entry", e.to_string()))?;
        }
        Ok(msg)
    }
}

impl ClientMessage {
    /// Decodes and validates one frame payload.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let msg: ClientMessage = decode_exact(payload, "client message")?;
        match &msg {
            ClientMessage::Expose { name, port, .. } => {
                if !super::catalog::valid_dns_name(name) || name.contains('.') {
                    return Err(DecodeError::invalid(
                        "expose",
                        format!("{name:?} is not a DNS label"),
                    ));
                }
                if *port == 0 {
                    return Err(DecodeError::invalid("expose", "port 0"));
                }
            }
            ClientMessage::Claim { service, .. } | ClientMessage::Release { service } => {
                if service.len() > 253 {
                    return Err(DecodeError::invalid("claim", "service name too long"));
                }
            }
            ClientMessage::Intercept {
                service,
                header,
                mirror,
                replace,
                ..
            } => {
                if service.len() > 253 {
                    return Err(DecodeError::invalid("intercept", "service name too long"));
                }
                if *replace && (header.is_some() || *mirror) {
                    return Err(DecodeError::invalid(
                        "intercept",
                        "a replace intercept is global: no header, no mirror",
                    ));
                }
                if let Some((name, value)) = header {
                    if !valid_header_name(name) || !valid_header_value(value) {
                        return Err(DecodeError::invalid(
                            "intercept",
                            "header is not a lower-case token and a visible-ASCII value",
                        ));
                    }
                }
            }
            ClientMessage::StopWorkload { workload, .. }
            | ClientMessage::StartWorkload { workload } => {
                if !workload.is_valid() {
                    return Err(DecodeError::invalid(
                        "workload",
                        "namespace or name is not a Kubernetes name",
                    ));
                }
            }
            ClientMessage::Leave { service, .. } => {
                if service.len() > 253 {
                    return Err(DecodeError::invalid("leave", "service name too long"));
                }
            }
            ClientMessage::Ping(_) => {}
        }
        Ok(msg)
    }
}

fn decode_exact<'a, T: Deserialize<'a>>(
    payload: &'a [u8],
    what: &'static str,
) -> Result<T, DecodeError> {
    let (msg, rest) = postcard::take_from_bytes(payload)
        .map_err(|e| DecodeError::invalid(what, e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::invalid(what, "trailing bytes"));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::catalog::tests::svc;

    #[test]
    fn round_trip() {
        for msg in [
            ServerMessage::CatalogBegin,
            ServerMessage::Upsert(svc(7, "web")),
            ServerMessage::Remove(ServiceId(7)),
            ServerMessage::CatalogSynced,
            ServerMessage::Pong(42),
        ] {
            let bytes = encode(&msg).unwrap();
            assert_eq!(ServerMessage::decode(&bytes).unwrap(), msg);
        }
    }

    #[test]
    fn intercepts_round_trip_and_bad_headers_are_refused() {
        let ok = ClientMessage::Intercept {
            request: 3,
            service: "apps/web".into(),
            port: 8080,
            header: Some(("x-netmux-user".into(), "alice".into())),
            mirror: false,
            replace: false,
        };
        let bytes = encode(&ok).unwrap();
        assert_eq!(ClientMessage::decode(&bytes).unwrap(), ok);
        let replace = |header: Option<(String, String)>, mirror| ClientMessage::Intercept {
            request: 4,
            service: "apps/worker".into(),
            port: 0,
            header,
            mirror,
            replace: true,
        };
        let global = replace(None, false);
        assert_eq!(
            ClientMessage::decode(&encode(&global).unwrap()).unwrap(),
            global
        );
        for bad in [
            replace(Some(("x-a".into(), "b".into())), false),
            replace(None, true),
        ] {
            let e = ClientMessage::decode(&encode(&bad).unwrap()).unwrap_err();
            assert!(e.to_string().contains("global"), "{e}");
        }
        let leave = ClientMessage::Leave {
            service: "apps/web".into(),
            port: 0,
        };
        assert_eq!(
            ClientMessage::decode(&encode(&leave).unwrap()).unwrap(),
            leave
        );
        for (name, value) in [
            ("X-Upper", "a"),
            ("bad name", "a"),
            ("x", ""),
            ("x", "new\nline"),
        ] {
            let bad = ClientMessage::Intercept {
                request: 1,
                service: "apps/web".into(),
                port: 1,
                header: Some((name.into(), value.into())),
                mirror: true,
                replace: false,
            };
            assert!(
                ClientMessage::decode(&encode(&bad).unwrap()).is_err(),
                "{name:?}: {value:?}"
            );
        }
    }

    #[test]
    fn workloads_to_stop_round_trip_and_bad_names_are_refused() {
        use crate::proto::replaced::{Kind, Workload};
        let w = |namespace: &str, name: &str| Workload {
            namespace: namespace.into(),
            kind: Kind::Deployment,
            name: name.into(),
        };
        for ok in [
            ClientMessage::StopWorkload {
                request: 9,
                workload: w("apps", "worker"),
            },
            ClientMessage::StartWorkload {
                workload: w("apps", "worker"),
            },
        ] {
            assert_eq!(ClientMessage::decode(&encode(&ok).unwrap()).unwrap(), ok);
        }
        for (ns, name) in [("apps", "../x"), ("a.b", "x"), ("apps", ""), ("", "x")] {
            let bad = ClientMessage::StopWorkload {
                request: 1,
                workload: w(ns, name),
            };
            assert!(
                ClientMessage::decode(&encode(&bad).unwrap()).is_err(),
                "{ns}/{name}"
            );
        }
    }

    #[test]
    fn invalid_entry_is_a_decode_error() {
        let mut s = svc(1, "x");
        s.name = "x y".into();
        let bytes = encode(&ServerMessage::Upsert(s)).unwrap();
        assert!(ServerMessage::decode(&bytes).is_err());
    }
}
