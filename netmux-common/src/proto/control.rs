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
}

/// Daemon to server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// Application-level liveness probe, answered with a Pong.
    Ping(u64),
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
    /// Decodes one frame payload.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        decode_exact(payload, "client message")
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
