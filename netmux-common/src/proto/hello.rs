//! The hello exchange that opens the control stream.
//!
//! Its layout is fixed forever so that any two versions can tell each other
//! apart: `MAGIC (4) | version (u16) | frame(payload)`. Only after magic and
//! version match does either side interpret the rest.

use std::fmt;

use bytes::{Buf, BufMut, BytesMut};

use super::codec::{get_str16, get_u16, get_u8, put_str16, DecodeError};
use super::{frame, MAGIC, PROTOCOL_VERSION};

/// How the daemon proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// No credential (refused by every server that requires one).
    None,
    /// A bearer token: listed in the server config, or a Kubernetes token.
    Bearer(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::None => f.write_str("None"),
            Credential::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// The daemon's first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the daemon speaks.
    pub version: u16,
    /// Free-form client name (user@host), for logs and metrics of the server.
    pub client_name: String,
    /// Proof of identity.
    pub credential: Credential,
}

/// The server's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloReply {
    /// Protocol version the server speaks.
    pub version: u16,
    /// Accepted or why not.
    pub status: HelloStatus,
    /// Human-readable detail (server name when accepted, the reason when not).
    pub message: String,
}

/// Outcome of the hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloStatus {
    /// Session established; catalog follows.
    Accepted = 0,
    /// The protocol versions differ.
    VersionMismatch = 1,
    /// Missing or wrong credential.
    Unauthenticated = 2,
    /// The hello could not be parsed.
    Malformed = 3,
}

impl HelloStatus {
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            0 => HelloStatus::Accepted,
            1 => HelloStatus::VersionMismatch,
            2 => HelloStatus::Unauthenticated,
            3 => HelloStatus::Malformed,
            other => {
                return Err(DecodeError::invalid(
                    "hello status",
                    format!("unknown code {other}"),
                ))
            }
        })
    }
}

/// Why a hello could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// More bytes are needed.
    #[error("incomplete hello")]
    UnexpectedEnd,
    /// The peer does not speak netmux at all.
    #[error("peer is not netmux: expected magic {expected:?}, got {got:?}")]
    BadMagic {
        /// The magic we expect.
        expected: [u8; 4],
        /// What the peer sent.
        got: [u8; 4],
    },
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: peer speaks v{peer}, we speak v{ours}")]
    VersionMismatch {
        /// The peer's version.
        peer: u16,
        /// Ours.
        ours: u16,
    },
    /// The payload is malformed.
    #[error(transparent)]
    Invalid(DecodeError),
}

impl From<DecodeError> for HelloError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::UnexpectedEnd => HelloError::UnexpectedEnd,
            other => HelloError::Invalid(other),
        }
    }
}

/// Reads magic and version; returns the version and the frame payload, and
/// how many bytes were consumed.
fn decode_envelope(input: &[u8], check_version: bool) -> Result<(u16, &[u8], usize), HelloError> {
    let mut buf = input;
    if buf.len() < 4 {
        // Reject a wrong prefix as early as we can see it.
        if buf != &MAGIC[..buf.len()] {
            let mut got = [0; 4];
            got[..buf.len()].copy_from_slice(buf);
            return Err(HelloError::BadMagic {
                expected: MAGIC,
                got,
            });
        }
        return Err(HelloError::UnexpectedEnd);
    }
    let mut got = [0; 4];
    buf.copy_to_slice(&mut got);
    if got != MAGIC {
        return Err(HelloError::BadMagic {
            expected: MAGIC,
            got,
        });
    }
    let version = get_u16(&mut buf)?;
    if check_version && version != PROTOCOL_VERSION {
        return Err(HelloError::VersionMismatch {
            peer: version,
            ours: PROTOCOL_VERSION,
        });
    }
    let mut dec = frame::FrameDecoder::new();
    dec.push(buf);
    let payload_len = match dec.next_frame()? {
        Some(p) => p.len(),
        None => return Err(HelloError::UnexpectedEnd),
    };
    let start = 6 + 4;
    Ok((
        version,
        &input[start..start + payload_len],
        start + payload_len,
    ))
}

fn encode_envelope(version: u16, payload: &[u8], out: &mut BytesMut) {
    out.put_slice(&MAGIC);
    out.put_u16(version);
    // Hello payloads are a few short strings, always within the frame limit.
    if frame::encode(payload, out).is_err() {
        out.put_u32(0);
    }
}

impl Hello {
    /// Builds a hello for this protocol version.
    pub fn new(client_name: impl Into<String>, credential: Credential) -> Self {
        Hello {
            version: PROTOCOL_VERSION,
            client_name: client_name.into(),
            credential,
        }
    }

    /// Appends the wire form to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut payload = BytesMut::new();
        put_str16(&mut payload, &self.client_name);
        match &self.credential {
            Credential::None => {
                payload.put_u8(0);
                put_str16(&mut payload, "");
            }
            Credential::Bearer(t) => {
                payload.put_u8(1);
                put_str16(&mut payload, t);
            }
        }
        encode_envelope(self.version, &payload, out);
    }

    /// Decodes a hello at the start of `input`, returning it and the number
    /// of bytes it used. A version mismatch is reported as such (before the
    /// payload is interpreted) so the server can answer it precisely.
    pub fn decode(input: &[u8]) -> Result<(Hello, usize), HelloError> {
        let (version, mut payload, used) = decode_envelope(input, true)?;
        let client_name = get_str16(&mut payload, "client name").map_err(strict)?;
        let kind = get_u8(&mut payload).map_err(strict)?;
        let secret = get_str16(&mut payload, "credential").map_err(strict)?;
        let credential = match kind {
            0 => Credential::None,
            1 => Credential::Bearer(secret),
            other => {
                return Err(HelloError::Invalid(DecodeError::invalid(
                    "credential kind",
                    format!("unknown kind {other}"),
                )))
            }
        };
        if payload.has_remaining() {
            return Err(HelloError::Invalid(DecodeError::invalid(
                "hello",
                "trailing bytes in payload",
            )));
        }
        Ok((
            Hello {
                version,
                client_name,
                credential,
            },
            used,
        ))
    }
}

/// Inside a complete frame, running out of bytes is corruption, not
/// incompleteness.
fn strict(e: DecodeError) -> HelloError {
    match e {
        DecodeError::UnexpectedEnd => {
            HelloError::Invalid(DecodeError::invalid("hello", "payload too short"))
        }
        other => HelloError::Invalid(other),
    }
}

impl HelloReply {
    /// Appends the wire form to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut payload = BytesMut::new();
        payload.put_u8(self.status as u8);
        put_str16(&mut payload, &self.message);
        encode_envelope(self.version, &payload, out);
    }

    /// [`Self::encode`] followed by optional extensions
    /// ([`super::cidr::ReplyExtensions`]), which daemons that predate them
    /// ignore.
    pub fn encode_with(&self, extensions: &super::cidr::ReplyExtensions, out: &mut BytesMut) {
        let mut payload = BytesMut::new();
        payload.put_u8(self.status as u8);
        put_str16(&mut payload, &self.message);
        extensions.encode(&mut payload);
        encode_envelope(self.version, &payload, out);
    }

    /// Decodes a reply of any version: a refusal from a newer or older server
    /// must still be readable.
    pub fn decode(input: &[u8]) -> Result<(HelloReply, usize), HelloError> {
        let (reply, _, used) = Self::decode_parts(input)?;
        Ok((reply, used))
    }

    /// [`Self::decode`] plus the extensions after the message (validated;
    /// none from a server that predates them).
    pub fn decode_with_extensions(
        input: &[u8],
    ) -> Result<(HelloReply, super::cidr::ReplyExtensions, usize), HelloError> {
        let (reply, rest, used) = Self::decode_parts(input)?;
        let ext = super::cidr::ReplyExtensions::decode(rest).map_err(HelloError::Invalid)?;
        Ok((reply, ext, used))
    }

    fn decode_parts(input: &[u8]) -> Result<(HelloReply, &[u8], usize), HelloError> {
        let (version, mut payload, used) = decode_envelope(input, false)?;
        let status = HelloStatus::from_u8(get_u8(&mut payload).map_err(strict)?)?;
        let message = get_str16(&mut payload, "hello message").map_err(strict)?;
        Ok((
            HelloReply {
                version,
                status,
                message,
            },
            payload,
            used,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_byte_by_byte() {
        let hello = Hello::new("alice@laptop", Credential::Bearer("s3cret".into()));
        let mut out = BytesMut::new();
        hello.encode(&mut out);
        for cut in 0..out.len() {
            assert_eq!(Hello::decode(&out[..cut]), Err(HelloError::UnexpectedEnd));
        }
        let (decoded, used) = Hello::decode(&out).unwrap();
        assert_eq!(decoded, hello);
        assert_eq!(used, out.len());
    }

    #[test]
    fn wrong_magic_is_reported_from_the_first_byte() {
        assert!(matches!(
            Hello::decode(b"G"),
            Err(HelloError::BadMagic { .. })
        ));
        assert!(matches!(
            Hello::decode(b"GET / HTTP/1.1\r\n"),
            Err(HelloError::BadMagic { .. })
        ));
    }

    #[test]
    fn version_mismatch_is_reported_before_the_payload() {
        let mut hello = Hello::new("x", Credential::None);
        hello.version = PROTOCOL_VERSION + 1;
        let mut out = BytesMut::new();
        hello.encode(&mut out);
        assert_eq!(
            Hello::decode(&out[..6]),
            Err(HelloError::VersionMismatch {
                peer: PROTOCOL_VERSION + 1,
                ours: PROTOCOL_VERSION
            })
        );
    }

    #[test]
    fn reply_of_another_version_still_decodes() {
        let reply = HelloReply {
            version: 9,
            status: HelloStatus::VersionMismatch,
            message: "server speaks v9".into(),
        };
        let mut out = BytesMut::new();
        reply.encode(&mut out);
        assert_eq!(HelloReply::decode(&out).unwrap().0, reply);
    }

    #[test]
    fn extensions_are_optional_both_ways() {
        use crate::proto::cidr::ReplyExtensions;
        let reply = HelloReply {
            version: PROTOCOL_VERSION,
            status: HelloStatus::Accepted,
            message: "netmux-server".into(),
        };
        let ext = ReplyExtensions {
            cluster_ranges: vec!["10.96.0.0/12".parse().unwrap()],
            ..Default::default()
        };
        let mut out = BytesMut::new();
        reply.encode_with(&ext, &mut out);
        // A daemon that predates extensions reads the same reply.
        assert_eq!(
            HelloReply::decode(&out).unwrap(),
            (reply.clone(), out.len())
        );
        assert_eq!(
            HelloReply::decode_with_extensions(&out).unwrap(),
            (reply.clone(), ext, out.len())
        );
        // A server that predates them announces nothing.
        let mut old = BytesMut::new();
        reply.encode(&mut old);
        assert_eq!(
            HelloReply::decode_with_extensions(&old).unwrap().1,
            ReplyExtensions::default()
        );
    }

    #[test]
    fn credential_is_masked_in_debug() {
        let hello = Hello::new("x", Credential::Bearer("topsecret".into()));
        assert!(!format!("{hello:?}").contains("topsecret"));
    }
}
