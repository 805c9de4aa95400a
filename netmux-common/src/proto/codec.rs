//! Small big-endian codec helpers with an explicit "need more bytes" error.
//!
//! Every decoder in [`super`] reports [`DecodeError::UnexpectedEnd`] when the
//! input is merely incomplete, and [`DecodeError::Invalid`] when no amount of
//! further input can make it valid, so drivers know whether to read more or to
//! drop the peer.

use bytes::{Buf, BufMut};

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// More bytes are needed; nothing was consumed.
    #[error("unexpected end of input")]
    UnexpectedEnd,
    /// The bytes can never form a valid message.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// What was being decoded.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
}

impl DecodeError {
    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        DecodeError::Invalid {
            what,
            detail: detail.into(),
        }
    }
}

pub(crate) fn get_u8(buf: &mut impl Buf) -> Result<u8, DecodeError> {
    if buf.remaining() < 1 {
        return Err(DecodeError::UnexpectedEnd);
    }
    Ok(buf.get_u8())
}

pub(crate) fn get_u16(buf: &mut impl Buf) -> Result<u16, DecodeError> {
    if buf.remaining() < 2 {
        return Err(DecodeError::UnexpectedEnd);
    }
    Ok(buf.get_u16())
}

pub(crate) fn get_u32(buf: &mut impl Buf) -> Result<u32, DecodeError> {
    if buf.remaining() < 4 {
        return Err(DecodeError::UnexpectedEnd);
    }
    Ok(buf.get_u32())
}

/// A UTF-8 string behind a `u16` length.
pub(crate) fn get_str16(buf: &mut impl Buf, what: &'static str) -> Result<String, DecodeError> {
    let len = usize::from(get_u16(buf)?);
    if buf.remaining() < len {
        return Err(DecodeError::UnexpectedEnd);
    }
    let mut bytes = vec![0; len];
    buf.copy_to_slice(&mut bytes);
    String::from_utf8(bytes).map_err(|_| DecodeError::invalid(what, "not UTF-8"))
}

/// Writes `s` behind a `u16` length, truncating at a char boundary if longer
/// than `u16::MAX` bytes (only used for human-readable messages).
pub(crate) fn put_str16(buf: &mut impl BufMut, s: &str) {
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let len = u16::try_from(end).unwrap_or(u16::MAX);
    buf.put_u16(len);
    buf.put_slice(&s.as_bytes()[..end]);
}
