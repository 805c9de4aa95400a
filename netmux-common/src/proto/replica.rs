//! The replica-to-replica intercept protocol, sans IO.
//!
//! A netmux-server replica whose daemon asks for an intercept of a Service
//! another replica routes (the holder of its intercept Lease) becomes a
//! *member*: it opens a QUIC connection to the holder's replica endpoint
//! (mutual TLS from the server CA, netmux-server's `intercept::peer`) and,
//! per intercept, one bidirectional *registration* stream:
//!
//! 1. member → holder: [`ToHolder::Register`] (first frame, its version
//!    must be [`VERSION`]);
//! 2. holder → member: [`ToMember::Accepted`] or [`ToMember::Refused`] (and
//!    the holder finishes the stream);
//! 3. while accepted, holder → member: [`ToMember::Report`] about once a
//!    second. Either side ending the stream ends the intercept.
//!
//! For each request (or connection) the holder's router sends to a
//! member's user, the holder opens a bidirectional stream on the same
//! connection and writes one [`Forward`] frame; the member opens the
//! server-initiated stream to its daemon (its own catalog id) and relays
//! bytes both ways, the daemon's open result first ([`super::open`]).
//!
//! Every frame is a [`super::frame`] (u32 length, at most 64 KiB) holding
//! one JSON object. A frame that does not decode is [`WireError`]: the
//! peer's connection is closed, no other peer is affected. It lives here,
//! not in the server, so that a fuzz target can feed [`Reader`].

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::frame::{self, FrameDecoder};

/// The protocol version in [`ToHolder::Register`].
pub const VERSION: u16 = 1;
/// The ALPN of replica-to-replica connections.
pub const ALPN: &[u8] = b"netmux-replica/1";

/// Why a peer's bytes are refused (its connection is closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad frame from a peer replica: {0}")]
pub struct WireError(pub String);

/// An intercept mode on the wire (netmux-server's `route::Mode`, which
/// lower-cases the header names it receives).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WireMode {
    /// Every connection to the port.
    Global,
    /// HTTP requests carrying header `name: value`.
    Personal {
        /// Header name, lower-case.
        name: String,
        /// Its value.
        value: String,
    },
    /// A copy of each HTTP request (of those carrying the header, if any).
    Mirror {
        /// Only requests with this header.
        header: Option<(String, String)>,
    },
    /// Every connection to the port, the workload scaled to zero.
    Replace,
}

/// What a member sends on a registration stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToHolder {
    /// Route this intercept to me (the member already checked RBAC).
    Register {
        /// [`VERSION`].
        version: u16,
        /// The member's id of this registration ([`Forward`] names it).
        registration: u64,
        /// The Service's namespace.
        namespace: String,
        /// The Service's name.
        service: String,
        /// The Service port asked (0: the only one).
        port: u16,
        /// The mode.
        mode: WireMode,
        /// The user, as refusals and `status` name them.
        client: String,
        /// The member replica (pod name).
        replica: String,
    },
}

/// What the holder sends on a registration stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToMember {
    /// Routed by the holder from now on, on Service port `port`.
    Accepted {
        /// The Service port resolved.
        port: u16,
        /// The holder replica (pod name).
        holder: String,
    },
    /// Not routed; `why` names the conflicting intercept's holder.
    Refused {
        /// The refusal for the user.
        why: String,
    },
    /// What went where so far.
    Report {
        /// Requests (connections, global) to the member's workstation.
        to_workstation: u64,
        /// Requests of the Service's intercepted ports sent to the pods.
        to_pods: u64,
    },
}

/// The first frame of a stream the holder opens for one request's (or
/// connection's) way to a member's workstation; the bytes behind it are
/// the client's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// The member's registration.
    pub registration: u64,
    /// The Service port.
    pub port: u16,
    /// The cluster client.
    pub peer: SocketAddr,
}

/// Appends `msg` as one frame to `out`.
pub fn encode<T: Serialize>(msg: &T, out: &mut BytesMut) -> Result<(), WireError> {
    let json = serde_json::to_vec(msg).map_err(|e| WireError(e.to_string()))?;
    frame::encode(&json, out).map_err(|e| WireError(e.to_string()))
}

/// `msg` as one frame.
pub fn to_bytes<T: Serialize>(msg: &T) -> Result<Bytes, WireError> {
    let mut out = BytesMut::new();
    encode(msg, &mut out)?;
    Ok(out.freeze())
}

/// Frames of one direction of one stream.
#[derive(Debug, Default)]
pub struct Reader {
    frames: FrameDecoder,
}

impl Reader {
    /// Nothing read yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.frames.push(bytes);
    }

    /// The next whole message; `Ok(None)` while more bytes are needed.
    pub fn message<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, WireError> {
        match self.frames.next_frame() {
            Ok(Some(f)) => serde_json::from_slice(&f)
                .map(Some)
                .map_err(|e| WireError(e.to_string())),
            Ok(None) => Ok(None),
            Err(e) => Err(WireError(e.to_string())),
        }
    }

    /// The bytes behind the frames read (a forwarded client's).
    pub fn rest(&mut self) -> Bytes {
        self.frames.take_remaining().freeze()
    }
}

/// Checks a [`ToHolder::Register`]'s version and names; `Err` is the
/// refusal.
pub fn check_register(msg: &ToHolder) -> Result<(), String> {
    let ToHolder::Register {
        version,
        namespace,
        service,
        ..
    } = msg;
    if *version != VERSION {
        return Err(format!(
            "the holder replica speaks replica protocol {VERSION}, this one {version}: finish the rolling update"
        ));
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if !name_ok(namespace) || !name_ok(service) {
        return Err(format!("bad Service name {namespace:?}/{service:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register() -> ToHolder {
        ToHolder::Register {
            version: VERSION,
            registration: 7,
            namespace: "apps".into(),
            service: "web".into(),
            port: 80,
            mode: WireMode::Personal {
                name: "x-netmux-user".into(),
                value: "bob".into(),
            },
            client: "bob".into(),
            replica: "netmux-server-1".into(),
        }
    }

    #[test]
    fn frames_round_trip_byte_by_byte_and_keep_the_bytes_behind() {
        let mut wire = BytesMut::new();
        encode(&register(), &mut wire).unwrap();
        let fwd = Forward {
            registration: 7,
            port: 80,
            peer: "10.0.0.9:41000".parse().unwrap(),
        };
        encode(&fwd, &mut wire).unwrap();
        wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut r = Reader::new();
        let mut got_register = None;
        let mut got_forward = None;
        for b in wire.iter() {
            r.push(&[*b]);
            if got_register.is_none() {
                got_register = r.message::<ToHolder>().unwrap();
            } else if got_forward.is_none() {
                got_forward = r.message::<Forward>().unwrap();
            }
        }
        assert_eq!(got_register, Some(register()));
        assert_eq!(got_forward, Some(fwd));
        assert_eq!(&r.rest()[..], b"GET / HTTP/1.1\r\n");
        assert_eq!(check_register(&register()), Ok(()));
    }

    #[test]
    fn bad_frames_are_errors_never_panics() {
        // Too long a frame is refused before any allocation.
        let mut r = Reader::new();
        r.push(&[0xff, 0xff, 0xff, 0xff, b'{']);
        assert!(r.message::<ToHolder>().is_err());
        // Not JSON, unknown message, unknown field, wrong types.
        for payload in [
            &b"\x00\x01\x02"[..],
            br#"{"type":"take_over"}"#,
            br#"{"type":"accepted","port":80,"holder":"x","extra":1}"#,
            br#"{"type":"report","to_workstation":-1,"to_pods":0}"#,
        ] {
            let mut wire = BytesMut::new();
            frame::encode(payload, &mut wire).unwrap();
            let mut r = Reader::new();
            r.push(&wire);
            assert!(r.message::<ToMember>().is_err(), "{payload:?}");
        }
        // A short read is not an error.
        let mut r = Reader::new();
        r.push(&[0, 0, 0, 9, b'{']);
        assert_eq!(r.message::<ToMember>(), Ok(None));
        // Wrong version and names are refused with a reason.
        let ToHolder::Register { mode, .. } = register();
        let old = ToHolder::Register {
            version: 0,
            registration: 1,
            namespace: "apps".into(),
            service: "web".into(),
            port: 0,
            mode: mode.clone(),
            client: "c".into(),
            replica: "r".into(),
        };
        assert!(check_register(&old).is_err_and(|e| e.contains("rolling update")));
        let bad = ToHolder::Register {
            version: VERSION,
            registration: 1,
            namespace: "../etc".into(),
            service: "web".into(),
            port: 0,
            mode,
            client: "c".into(),
            replica: "r".into(),
        };
        assert!(check_register(&bad).is_err());
    }
}
