//! Headers of the per-connection QUIC streams.
//!
//! The daemon opens a bidirectional stream per proxied TCP connection and
//! writes a [`StreamHeader`] followed immediately by the client's first bytes
//! (no round trip is spent on the open). The server answers with an
//! [`OpenResult`] before any byte of the target, so a failed dial becomes a
//! prompt reset on the workstation instead of a hang.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, BytesMut};

use super::catalog::ServiceId;
use super::codec::{get_u16, get_u32, get_u8, DecodeError};

/// Longest header any version of this protocol writes; a driver that has
/// buffered this much without a complete header drops the stream.
pub const MAX_HEADER_LEN: usize = 64;

const KIND_CONNECT: u8 = 1;
const KIND_REVERSE: u8 = 2;

/// First bytes of a daemon-opened stream: what to connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamHeader {
    /// Open a TCP connection to a published port of a catalog service.
    Connect {
        /// The catalog id (never an address: the server dials only what its
        /// catalog says).
        service: ServiceId,
        /// The service port the client dialled.
        port: u16,
    },
    /// Server to daemon: a cluster workload connected to the cluster-side
    /// listener of a C2L service this daemon holds.
    Reverse {
        /// The C2L service.
        service: ServiceId,
        /// The cluster-side port it connected to.
        port: u16,
        /// The cluster peer (for logs; never used to dial).
        peer: SocketAddr,
    },
}

impl StreamHeader {
    /// Appends the wire form to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            StreamHeader::Connect { service, port } => {
                out.put_u8(KIND_CONNECT);
                out.put_u32(service.0);
                out.put_u16(*port);
            }
            StreamHeader::Reverse {
                service,
                port,
                peer,
            } => {
                out.put_u8(KIND_REVERSE);
                out.put_u32(service.0);
                out.put_u16(*port);
                match peer.ip() {
                    IpAddr::V4(a) => {
                        out.put_u8(4);
                        out.put_slice(&a.octets());
                    }
                    IpAddr::V6(a) => {
                        out.put_u8(6);
                        out.put_slice(&a.octets());
                    }
                }
                out.put_u16(peer.port());
            }
        }
    }

    /// Decodes a header at the start of `input`; returns it and its length.
    pub fn decode(input: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut buf = input;
        match get_u8(&mut buf)? {
            KIND_CONNECT => {
                let service = ServiceId(get_u32(&mut buf)?);
                let port = get_u16(&mut buf)?;
                if port == 0 {
                    return Err(DecodeError::invalid("stream header", "port 0"));
                }
                Ok((
                    StreamHeader::Connect { service, port },
                    input.len() - buf.len(),
                ))
            }
            KIND_REVERSE => {
                let service = ServiceId(get_u32(&mut buf)?);
                let port = get_u16(&mut buf)?;
                let ip = match get_u8(&mut buf)? {
                    4 => {
                        let mut o = [0u8; 4];
                        take(&mut buf, &mut o)?;
                        IpAddr::V4(Ipv4Addr::from(o))
                    }
                    6 => {
                        let mut o = [0u8; 16];
                        take(&mut buf, &mut o)?;
                        IpAddr::V6(Ipv6Addr::from(o))
                    }
                    other => {
                        return Err(DecodeError::invalid(
                            "stream header",
                            format!("unknown address family {other}"),
                        ))
                    }
                };
                let peer_port = get_u16(&mut buf)?;
                if port == 0 {
                    return Err(DecodeError::invalid("stream header", "port 0"));
                }
                Ok((
                    StreamHeader::Reverse {
                        service,
                        port,
                        peer: SocketAddr::new(ip, peer_port),
                    },
                    input.len() - buf.len(),
                ))
            }
            other => Err(DecodeError::invalid(
                "stream header",
                format!("unknown stream kind {other}"),
            )),
        }
    }
}

fn take(buf: &mut &[u8], out: &mut [u8]) -> Result<(), DecodeError> {
    if buf.len() < out.len() {
        return Err(DecodeError::UnexpectedEnd);
    }
    out.copy_from_slice(&buf[..out.len()]);
    *buf = &buf[out.len()..];
    Ok(())
}

/// The answer to a stream's header, from whichever side dials: the server
/// for [`StreamHeader::Connect`], the daemon for [`StreamHeader::Reverse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenResult {
    /// Connected; the target's bytes follow.
    Connected,
    /// The target actively refused (RST).
    Refused,
    /// The target could not be reached (no route, timeout).
    Unreachable,
    /// The daemon's identity may not reach this service.
    NotAllowed,
    /// No such service or port in the catalog (e.g. removed meanwhile).
    UnknownService,
}

impl OpenResult {
    /// Every variant, for metric label pre-registration and tests.
    pub const ALL: [OpenResult; 5] = [
        OpenResult::Connected,
        OpenResult::Refused,
        OpenResult::Unreachable,
        OpenResult::NotAllowed,
        OpenResult::UnknownService,
    ];

    /// Wire length of a result.
    pub const LEN: usize = 1;

    fn code(self) -> u8 {
        match self {
            OpenResult::Connected => 0,
            OpenResult::Refused => 1,
            OpenResult::Unreachable => 2,
            OpenResult::NotAllowed => 3,
            OpenResult::UnknownService => 4,
        }
    }

    /// Lower-case label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            OpenResult::Connected => "connected",
            OpenResult::Refused => "refused",
            OpenResult::Unreachable => "unreachable",
            OpenResult::NotAllowed => "not_allowed",
            OpenResult::UnknownService => "unknown_service",
        }
    }

    /// Appends the wire form to `out`.
    pub fn encode(self, out: &mut BytesMut) {
        out.put_u8(self.code());
    }

    /// Decodes a result from the start of `input`.
    pub fn decode(input: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut buf = input;
        let code = get_u8(&mut buf)?;
        OpenResult::ALL
            .into_iter()
            .find(|r| r.code() == code)
            .map(|r| (r, 1))
            .ok_or_else(|| DecodeError::invalid("open result", format!("unknown code {code}")))
    }
}

impl fmt::Display for OpenResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_incomplete() {
        let h = StreamHeader::Connect {
            service: ServiceId(0xdead_beef),
            port: 5432,
        };
        let mut out = BytesMut::new();
        h.encode(&mut out);
        out.put_slice(b"first bytes");
        for cut in 0..7 {
            assert_eq!(
                StreamHeader::decode(&out[..cut]),
                Err(DecodeError::UnexpectedEnd)
            );
        }
        assert_eq!(StreamHeader::decode(&out).unwrap(), (h, 7));
        const { assert!(7 <= MAX_HEADER_LEN) };
    }

    #[test]
    fn reverse_header_round_trip_both_families() {
        for peer in ["10.1.2.3:40000", "[fd00::1]:5"] {
            let h = StreamHeader::Reverse {
                service: ServiceId(9),
                port: 8080,
                peer: peer.parse().unwrap(),
            };
            let mut out = BytesMut::new();
            h.encode(&mut out);
            assert!(out.len() <= MAX_HEADER_LEN);
            for cut in 0..out.len() {
                assert_eq!(
                    StreamHeader::decode(&out[..cut]),
                    Err(DecodeError::UnexpectedEnd)
                );
            }
            assert_eq!(StreamHeader::decode(&out).unwrap(), (h, out.len()));
        }
    }

    #[test]
    fn results_round_trip() {
        for r in OpenResult::ALL {
            let mut out = BytesMut::new();
            r.encode(&mut out);
            assert_eq!(OpenResult::decode(&out).unwrap(), (r, 1));
        }
        assert!(OpenResult::decode(&[200]).is_err());
    }
}
