//! A streaming checksum over 8-byte words (not cryptographic: it detects
//! corruption, loss, duplication and reordering, not tampering).
//!
//! The result does not depend on how the input is split into chunks.

use std::fmt;

const PRIME: u64 = 0x0000_0100_0000_01B3;
const SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// Running checksum of a byte stream.
#[derive(Debug, Clone)]
pub struct StreamSum {
    state: u64,
    partial: [u8; 8],
    partial_len: usize,
    count: u64,
}

impl Default for StreamSum {
    fn default() -> Self {
        StreamSum {
            state: SEED,
            partial: [0; 8],
            partial_len: 0,
            count: 0,
        }
    }
}

/// Byte count and checksum of a finished stream.
///
/// Its [`fmt::Display`] form, `"<count> <sum as 16 hex digits>"`, is what
/// `nx-echo sink` sends back; [`Summary::parse`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Number of bytes.
    pub count: u64,
    /// Checksum of the bytes.
    pub sum: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:016x}", self.count, self.sum)
    }
}

impl Summary {
    /// Parses the [`fmt::Display`] form (surrounding whitespace allowed).
    pub fn parse(s: &str) -> Option<Summary> {
        let mut it = s.split_whitespace();
        let count = it.next()?.parse().ok()?;
        let sum = u64::from_str_radix(it.next()?, 16).ok()?;
        it.next().is_none().then_some(Summary { count, sum })
    }

    /// Summary of `bytes`.
    pub fn of(bytes: &[u8]) -> Summary {
        let mut s = StreamSum::new();
        s.update(bytes);
        s.finish()
    }

    /// Summary of the first `len` bytes of the [`crate::Pattern`].
    pub fn of_pattern(len: u64) -> Summary {
        let mut s = StreamSum::new();
        let mut p = crate::Pattern::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
            p.fill(&mut buf[..n]);
            s.update(&buf[..n]);
            left -= n as u64;
        }
        s.finish()
    }
}

impl StreamSum {
    /// An empty checksum.
    pub fn new() -> Self {
        Self::default()
    }

    fn mix(&mut self, word: u64) {
        self.state = (self.state ^ word).wrapping_mul(PRIME).rotate_left(29);
    }

    /// Adds bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.count += data.len() as u64;
        if self.partial_len > 0 {
            let take = (8 - self.partial_len).min(data.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&data[..take]);
            self.partial_len += take;
            data = &data[take..];
            if self.partial_len < 8 {
                return;
            }
            let word = u64::from_le_bytes(self.partial);
            self.mix(word);
            self.partial_len = 0;
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let mut arr = [0u8; 8];
            arr.copy_from_slice(w);
            self.mix(u64::from_le_bytes(arr));
        }
        let rest = words.remainder();
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
    }

    /// Bytes seen so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The summary of everything added.
    pub fn finish(&self) -> Summary {
        let mut s = self.clone();
        if s.partial_len > 0 {
            let mut arr = [0u8; 8];
            arr[..s.partial_len].copy_from_slice(&s.partial[..s.partial_len]);
            s.mix(u64::from_le_bytes(arr));
        }
        s.mix(s.count);
        Summary {
            count: self.count,
            sum: s.state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_does_not_matter_and_changes_are_seen() {
        let data = crate::Pattern::bytes(1001);
        let whole = Summary::of(&data);
        for step in [1, 2, 7, 8, 9, 100] {
            let mut s = StreamSum::new();
            for c in data.chunks(step) {
                s.update(c);
            }
            assert_eq!(s.finish(), whole, "step {step}");
        }
        assert_eq!(Summary::of_pattern(1001), whole);
        let mut swapped = data.clone();
        swapped.swap(0, 8);
        assert_ne!(Summary::of(&swapped), whole);
        assert_ne!(Summary::of(&data[..1000]), whole);
        assert_ne!(Summary::of(&[0]), Summary::of(&[0, 0]));
    }

    #[test]
    fn display_parse_round_trip() {
        let s = Summary::of(b"hello");
        assert_eq!(Summary::parse(&format!("{s}\n")), Some(s));
        assert_eq!(Summary::parse("12"), None);
        assert_eq!(Summary::parse("x y"), None);
    }
}
