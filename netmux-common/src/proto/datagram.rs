//! UDP flows over QUIC datagrams (RFC 9221).
//!
//! Each UDP flow (a local 5-tuple) gets a flow id chosen by the side that
//! started it. Every datagram from that side names the target
//! ([`Datagram::Open`]: service id and port), so the far end can create the
//! flow from whichever datagram arrives first — datagrams are unordered and
//! may be lost. Answers carry only the flow id ([`Datagram::Reply`]).

use bytes::{BufMut, BytesMut};

use super::catalog::ServiceId;
use super::codec::{get_u16, get_u32, get_u8, DecodeError};

const TYPE_OPEN: u8 = 1;
const TYPE_REPLY: u8 = 2;

/// Header bytes of an [`Datagram::Open`].
pub const OPEN_HEADER_LEN: usize = 11;
/// Header bytes of a [`Datagram::Reply`].
pub const REPLY_HEADER_LEN: usize = 5;

/// One QUIC datagram of a UDP flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// From the flow's originator, to the service's port.
    Open {
        /// Originator's flow id.
        flow: u32,
        /// Target service (catalog id; never an address).
        service: ServiceId,
        /// Service port (UDP).
        port: u16,
        /// The UDP payload.
        payload: &'a [u8],
    },
    /// From the answering side, back to the originator's flow.
    Reply {
        /// The originator's flow id.
        flow: u32,
        /// The UDP payload.
        payload: &'a [u8],
    },
}

impl<'a> Datagram<'a> {
    /// Wire length.
    pub fn len(&self) -> usize {
        match self {
            Datagram::Open { payload, .. } => OPEN_HEADER_LEN + payload.len(),
            Datagram::Reply { payload, .. } => REPLY_HEADER_LEN + payload.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        match self {
            Datagram::Open { payload, .. } | Datagram::Reply { payload, .. } => payload.is_empty(),
        }
    }

    /// Appends the wire form to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.len());
        match self {
            Datagram::Open {
                flow,
                service,
                port,
                payload,
            } => {
                out.put_u8(TYPE_OPEN);
                out.put_u32(*flow);
                out.put_u32(service.0);
                out.put_u16(*port);
                out.put_slice(payload);
            }
            Datagram::Reply { flow, payload } => {
                out.put_u8(TYPE_REPLY);
                out.put_u32(*flow);
                out.put_slice(payload);
            }
        }
    }

    /// Decodes a whole datagram (a datagram is never partial: a short one is
    /// invalid, not incomplete).
    pub fn decode(input: &'a [u8]) -> Result<Self, DecodeError> {
        let short = |_| DecodeError::invalid("datagram", "too short");
        let mut buf = input;
        match get_u8(&mut buf).map_err(short)? {
            TYPE_OPEN => {
                let flow = get_u32(&mut buf).map_err(short)?;
                let service = ServiceId(get_u32(&mut buf).map_err(short)?);
                let port = get_u16(&mut buf).map_err(short)?;
                if port == 0 {
                    return Err(DecodeError::invalid("datagram", "port 0"));
                }
                Ok(Datagram::Open {
                    flow,
                    service,
                    port,
                    payload: buf,
                })
            }
            TYPE_REPLY => {
                let flow = get_u32(&mut buf).map_err(short)?;
                Ok(Datagram::Reply { flow, payload: buf })
            }
            other => Err(DecodeError::invalid(
                "datagram",
                format!("unknown type {other}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short_input() {
        for d in [
            Datagram::Open {
                flow: 7,
                service: ServiceId(3),
                port: 53,
                payload: b"query",
            },
            Datagram::Reply {
                flow: 7,
                payload: b"",
            },
        ] {
            let mut out = BytesMut::new();
            d.encode(&mut out);
            assert_eq!(out.len(), d.len());
            assert_eq!(Datagram::decode(&out).unwrap(), d);
            let header = match d {
                Datagram::Open { .. } => OPEN_HEADER_LEN,
                Datagram::Reply { .. } => REPLY_HEADER_LEN,
            };
            for cut in 0..header {
                assert!(Datagram::decode(&out[..cut]).is_err());
            }
        }
        assert!(Datagram::decode(&[9, 0, 0, 0, 0]).is_err());
    }
}
