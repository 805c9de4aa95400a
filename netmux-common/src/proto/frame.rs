//! Length-prefixed frames on the control stream.
//!
//! A frame is a big-endian `u32` payload length followed by the payload. The
//! length is bounded by [`MAX_FRAME_LEN`]: a peer announcing more is invalid,
//! never a reason to allocate.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::codec::DecodeError;

/// Largest payload accepted in one frame (one catalog entry or a hello).
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Appends one frame holding `payload` to `out`.
///
/// Returns an error instead of truncating when `payload` is too large.
pub fn encode(payload: &[u8], out: &mut BytesMut) -> Result<(), DecodeError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(DecodeError::invalid(
            "frame",
            format!("payload of {} bytes exceeds {MAX_FRAME_LEN}", payload.len()),
        ));
    }
    let len = u32::try_from(payload.len())
        .map_err(|_| DecodeError::invalid("frame", "payload length overflows u32"))?;
    out.reserve(4 + payload.len());
    out.put_u32(len);
    out.put_slice(payload);
    Ok(())
}

/// Reassembles frames from a byte stream.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// Creates an empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Buffers received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Takes the next complete frame's payload.
    ///
    /// `Ok(None)` means more bytes are needed; `Err` means the stream is
    /// corrupt and must be abandoned.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, DecodeError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = (&self.buf[..4]).get_u32() as usize;
        if len > MAX_FRAME_LEN {
            return Err(DecodeError::invalid(
                "frame",
                format!("announced length {len} exceeds {MAX_FRAME_LEN}"),
            ));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        self.buf.advance(4);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Takes back the bytes buffered but not yet framed (after the hello, the
    /// rest belongs to the next layer).
    pub fn take_remaining(&mut self) -> BytesMut {
        std::mem::take(&mut self.buf)
    }

    /// Bytes buffered and not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_split_input() {
        let mut out = BytesMut::new();
        encode(b"hello", &mut out).unwrap();
        encode(b"", &mut out).unwrap();
        encode(&[7u8; 1000], &mut out).unwrap();
        let mut dec = FrameDecoder::new();
        let mut frames = Vec::new();
        for chunk in out.chunks(3) {
            dec.push(chunk);
            while let Some(f) = dec.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(&frames[0][..], b"hello");
        assert!(frames[1].is_empty());
        assert_eq!(frames[2].len(), 1000);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn oversized_announcement_is_invalid_without_allocating() {
        let mut dec = FrameDecoder::new();
        dec.push(&u32::MAX.to_be_bytes());
        assert!(matches!(dec.next_frame(), Err(DecodeError::Invalid { .. })));
    }

    #[test]
    fn oversized_payload_is_refused_on_encode() {
        let mut out = BytesMut::new();
        assert!(encode(&vec![0; MAX_FRAME_LEN + 1], &mut out).is_err());
        assert!(out.is_empty());
    }
}
