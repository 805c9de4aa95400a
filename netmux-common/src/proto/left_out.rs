//! The hello reply's extension naming catalog entries the server left out
//! of the daemon's catalog because one entry does not fit a frame
//! (64 KiB: thousands of per-pod aliases or addresses). They are never sent
//! truncated; the daemon shows them in `netmux status`.
//!
//! Tag [`TAG_LEFT_OUT`] of [`super::cidr::ReplyExtensions`]: `total u32 |
//! count u8 | count × str16 "namespace/name"`, at most [`MAX_LISTED`]
//! names; `total` says how many there are in all. Daemons that predate it
//! skip it like any unknown tag.

use bytes::{Buf, BufMut, BytesMut};

use super::catalog::valid_dns_name;
use super::codec::{get_str16, get_u32, get_u8, put_str16, DecodeError};

/// Extension tag: entries left out.
pub const TAG_LEFT_OUT: u8 = 2;
/// Most names one reply lists.
pub const MAX_LISTED: usize = 32;

/// Catalog entries left out of the snapshot, by `namespace/name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeftOut {
    /// How many entries were left out.
    pub total: u32,
    /// The first [`MAX_LISTED`] of them.
    pub listed: Vec<String>,
}

impl LeftOut {
    /// The entries `keys` (`namespace/name`).
    pub fn from_keys(keys: &[String]) -> LeftOut {
        LeftOut {
            total: u32::try_from(keys.len()).unwrap_or(u32::MAX),
            listed: keys.iter().take(MAX_LISTED).cloned().collect(),
        }
    }

    /// Nothing was left out.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Appends the extension (nothing when empty).
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        if self.is_empty() {
            return;
        }
        let mut value = BytesMut::new();
        value.put_u32(self.total);
        let listed = &self.listed[..self.listed.len().min(MAX_LISTED)];
        value.put_u8(u8::try_from(listed.len()).unwrap_or(u8::MAX));
        for key in listed {
            put_str16(&mut value, key);
        }
        out.put_u8(TAG_LEFT_OUT);
        // At most 4 + 1 + 32 * (2 + 127) bytes: always fits.
        out.put_u16(u16::try_from(value.len()).unwrap_or(u16::MAX));
        out.put_slice(&value);
    }

    /// Reads the extension's value; every name must be `namespace/name`
    /// of two DNS labels (they are shown to the user).
    pub(crate) fn decode(mut value: &[u8]) -> Result<LeftOut, DecodeError> {
        let strict = |e: DecodeError| match e {
            DecodeError::UnexpectedEnd => DecodeError::invalid("left-out entries", "truncated"),
            other => other,
        };
        let total = get_u32(&mut value).map_err(strict)?;
        let count = usize::from(get_u8(&mut value).map_err(strict)?);
        if count > MAX_LISTED || u32::try_from(count).map_or(true, |c| c > total) {
            return Err(DecodeError::invalid(
                "left-out entries",
                format!("{count} names listed of {total}, at most {MAX_LISTED}"),
            ));
        }
        let mut listed = Vec::with_capacity(count);
        for _ in 0..count {
            let key = get_str16(&mut value, "left-out entry").map_err(strict)?;
            let valid = key.split_once('/').is_some_and(|(ns, name)| {
                [ns, name]
                    .iter()
                    .all(|l| valid_dns_name(l) && !l.contains('.'))
            });
            if !valid {
                return Err(DecodeError::invalid(
                    "left-out entry",
                    format!("{key:?} is not namespace/name"),
                ));
            }
            listed.push(key);
        }
        if value.has_remaining() {
            return Err(DecodeError::invalid("left-out entries", "trailing bytes"));
        }
        if total == 0 {
            return Err(DecodeError::invalid("left-out entries", "announced empty"));
        }
        Ok(LeftOut { total, listed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::cidr::ReplyExtensions;

    #[test]
    fn names_are_listed_up_to_the_cap_and_validated() {
        let keys: Vec<String> = (0..40).map(|i| format!("ns/big-{i}")).collect();
        let left = LeftOut::from_keys(&keys);
        assert_eq!(left.total, 40);
        assert_eq!(left.listed.len(), MAX_LISTED);
        let ext = ReplyExtensions {
            left_out: left.clone(),
            ..Default::default()
        };
        let mut out = BytesMut::new();
        ext.encode(&mut out);
        assert_eq!(ReplyExtensions::decode(&out).unwrap(), ext);
        for cut in 1..out.len() {
            assert!(ReplyExtensions::decode(&out[..cut]).is_err(), "cut {cut}");
        }
        // A name that is not namespace/name (it would be printed) fails.
        let bad = LeftOut {
            total: 1,
            listed: vec!["ns/x\x1b[31m".into()],
        };
        let mut out = BytesMut::new();
        bad.encode(&mut out);
        assert!(ReplyExtensions::decode(&out).is_err());
        // Nothing left out: nothing written.
        let mut out = BytesMut::new();
        LeftOut::default().encode(&mut out);
        assert!(out.is_empty());
    }
}
