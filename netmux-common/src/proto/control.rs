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
    fn invalid_entry_is_a_decode_error() {
        let mut s = svc(1, "x");
        s.name = "x y".into();
        let bytes = encode(&ServerMessage::Upsert(s)).unwrap();
        assert!(ServerMessage::decode(&bytes).is_err());
    }
}
