//! A deterministic, non-periodic byte stream addressable by offset.
//!
//! Byte `i` is byte `i % 8` (little endian) of `splitmix64(i / 8)`, so any
//! loss, duplication or reordering of a chunk changes the checksum of what
//! is received, and a server can produce any range without state.

/// The stream of pattern bytes from an offset on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pattern {
    offset: u64,
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Pattern {
    /// The pattern from offset 0.
    pub fn new() -> Self {
        Pattern { offset: 0 }
    }

    /// The pattern from `offset`.
    pub fn at(offset: u64) -> Self {
        Pattern { offset }
    }

    /// Offset of the next byte [`Self::fill`] writes.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Fills `buf` with the next `buf.len()` pattern bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        // Unaligned head.
        while i < buf.len() && self.offset & 7 != 0 {
            buf[i] = self.byte();
            self.offset += 1;
            i += 1;
        }
        // Whole words.
        let mut words = buf[i..].chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&splitmix64(self.offset / 8).to_le_bytes());
            self.offset += 8;
        }
        let rest = words.into_remainder().len();
        let done = buf.len() - rest;
        for b in &mut buf[done..] {
            *b = self.byte();
            self.offset += 1;
        }
    }

    fn byte(&self) -> u8 {
        splitmix64(self.offset / 8).to_le_bytes()[(self.offset % 8) as usize]
    }

    /// The first `len` pattern bytes, for small tests.
    pub fn bytes(len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        Pattern::new().fill(&mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_independent_of_chunking() {
        let whole = Pattern::bytes(1000);
        for step in [1, 3, 7, 8, 13, 64] {
            let mut p = Pattern::new();
            let mut got = Vec::new();
            let mut buf = vec![0; step];
            while got.len() < 1000 {
                let n = step.min(1000 - got.len());
                p.fill(&mut buf[..n]);
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, whole, "chunk size {step}");
        }
        let mut tail = vec![0; 500];
        Pattern::at(500).fill(&mut tail);
        assert_eq!(&tail[..], &whole[500..]);
    }
}
