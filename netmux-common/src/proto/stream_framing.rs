//! The framing of QUIC datagrams over a byte stream (a TCP connection, a
//! `kubectl port-forward`), sans-IO: a stream starts with [`PREAMBLE`]
//! (magic and version, so a stray HTTP probe on the port is an error, not
//! a flood of nonsense datagrams); then each datagram is a u16 big-endian
//! length (1..=65535) and that many bytes. The sockets that carry it are in
//! `tunnel::stream_socket` (feature `std`).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// First bytes of every stream, both directions: magic, then the framing
/// version.
pub const PREAMBLE: [u8; 8] = *b"NMXDGRM\x01";
/// Largest datagram a frame carries (the length prefix is a u16).
pub const MAX_DATAGRAM: usize = u16::MAX as usize;

/// Why a stream's framing is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The stream does not start with the netmux magic.
    #[error("not a netmux datagram stream (bad preamble)")]
    NotNetmux,
    /// The magic matched, the version is not ours.
    #[error("unsupported datagram stream version {0} (this side speaks {PREAMBLE_VERSION})", PREAMBLE_VERSION = PREAMBLE[7])]
    Version(u8),
    /// A zero length prefix: QUIC never sends an empty datagram.
    #[error("empty datagram frame")]
    Empty,
    /// A datagram longer than a u16 length can say.
    #[error("datagram of {0} bytes is over the {MAX_DATAGRAM} byte frame limit")]
    TooLong(usize),
}

/// Appends frames to a buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    preamble_sent: bool,
}

impl Encoder {
    /// Appends `datagram` as one frame, preceded by [`PREAMBLE`] the first
    /// time. Nothing is written on error.
    pub fn encode(&mut self, datagram: &[u8], out: &mut BytesMut) -> Result<(), FrameError> {
        let len = u16::try_from(datagram.len()).map_err(|_| FrameError::TooLong(datagram.len()))?;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        self.preamble(out);
        out.reserve(2 + datagram.len());
        out.put_u16(len);
        out.put_slice(datagram);
        Ok(())
    }

    /// Writes [`PREAMBLE`] unless already written.
    pub fn preamble(&mut self, out: &mut BytesMut) {
        if !self.preamble_sent {
            out.put_slice(&PREAMBLE);
            self.preamble_sent = true;
        }
    }
}

/// Takes frames out of a buffer; "incomplete" (`Ok(None)`) is kept apart
/// from "invalid" (`Err`). After an error the stream is unusable.
#[derive(Debug, Default)]
pub struct Decoder {
    preamble_seen: bool,
}

impl Decoder {
    /// Whether the [`PREAMBLE`] has been consumed.
    pub fn preamble_seen(&self) -> bool {
        self.preamble_seen
    }

    /// The next datagram in `buf`, consumed from it; `Ok(None)` when more
    /// bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if !self.preamble_seen {
            let magic = &PREAMBLE[..7];
            let have = buf.len().min(magic.len());
            if buf[..have] != magic[..have] {
                return Err(FrameError::NotNetmux);
            }
            if buf.len() < PREAMBLE.len() {
                return Ok(None);
            }
            if buf[7] != PREAMBLE[7] {
                return Err(FrameError::Version(buf[7]));
            }
            buf.advance(PREAMBLE.len());
            self.preamble_seen = true;
        }
        if buf.len() < 2 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if buf.len() < 2 + len {
            buf.reserve(2 + len - buf.len());
            return Ok(None);
        }
        buf.advance(2);
        Ok(Some(buf.split_to(len).freeze()))
    }
}
