//! netmux (issue 17): the sent packets of a packet space, in packet-number
//! order, without a B-tree.
//!
//! Upstream keeps them in a `BTreeMap<u64, SentPacket>`. Packet numbers only
//! grow, and packets mostly leave from the oldest end (in-order ACKs), which
//! is the B-tree's worst case: every removal shifts the rest of the oldest
//! leaf (about 100 bytes per entry) and every few inserts allocate a node.
//! Callgrind put it at about 6% of a bulk sender's instructions, and natively
//! its `memmove` showed up beside the copy of the data itself.
//!
//! Here the packets sit in a `VecDeque` of `(number, Option<packet>)`,
//! ascending: an insert is a push at the back, a lookup a binary search, a
//! removal leaves a hole. Holes at either end go at once; holes inside are
//! dropped when they outnumber the live entries, so the storage stays within
//! about twice the live packets however long one old packet stays
//! unacknowledged (what made upstream go back from a ring buffer indexed by
//! packet number, quinn PR 2858).

use std::collections::VecDeque;
use std::ops::{Bound, Index, RangeBounds};

/// Holes tolerated inside beyond the number of live entries.
const SLACK: usize = 16;

/// Packets by number, for the subset of `BTreeMap`'s API that quinn-proto
/// uses on sent packets.
#[derive(Debug, Clone)]
pub(super) struct SentPackets<T> {
    /// Ascending packet numbers; `None` once removed.
    entries: VecDeque<(u64, Option<T>)>,
    live: usize,
}

impl<T> Default for SentPackets<T> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            live: 0,
        }
    }
}

impl<T> SentPackets<T> {
    /// Adds packet `number`, which is normally above every number held.
    pub(super) fn insert(&mut self, number: u64, packet: T) {
        match self.entries.back() {
            Some(&(last, _)) if number <= last => {
                // Not the case for sent packets, handled like a map would.
                match self.position(number) {
                    Ok(i) => {
                        if self.entries[i].1.replace(packet).is_none() {
                            self.live += 1;
                        }
                    }
                    Err(i) => {
                        self.entries.insert(i, (number, Some(packet)));
                        self.live += 1;
                    }
                }
            }
            _ => {
                self.entries.push_back((number, Some(packet)));
                self.live += 1;
            }
        }
    }

    pub(super) fn get(&self, number: &u64) -> Option<&T> {
        let i = self.position(*number).ok()?;
        self.entries[i].1.as_ref()
    }

    pub(super) fn remove(&mut self, number: &u64) -> Option<T> {
        let i = self.position(*number).ok()?;
        let packet = self.entries[i].1.take()?;
        self.live -= 1;
        while matches!(self.entries.front(), Some((_, None))) {
            self.entries.pop_front();
        }
        while matches!(self.entries.back(), Some((_, None))) {
            self.entries.pop_back();
        }
        if self.entries.len() > 2 * self.live + SLACK {
            self.entries.retain(|(_, p)| p.is_some());
        }
        Some(packet)
    }

    /// The packets whose numbers lie in `range`, ascending.
    pub(super) fn range<R: RangeBounds<u64>>(
        &self,
        range: R,
    ) -> impl DoubleEndedIterator<Item = (&u64, &T)> {
        let start = match range.start_bound() {
            Bound::Included(&s) => self.entries.partition_point(|e| e.0 < s),
            Bound::Excluded(&s) => self.entries.partition_point(|e| e.0 <= s),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => self.entries.partition_point(|x| x.0 <= e),
            Bound::Excluded(&e) => self.entries.partition_point(|x| x.0 < e),
            Bound::Unbounded => self.entries.len(),
        };
        self.entries
            .range(start..end.max(start))
            .filter_map(|(n, p)| Some((n, p.as_ref()?)))
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().filter_map(|(_, p)| p.as_ref())
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().filter_map(|(_, p)| p.as_mut())
    }

    pub(super) fn into_values(self) -> impl Iterator<Item = T> {
        self.entries.into_iter().filter_map(|(_, p)| p)
    }

    fn position(&self, number: u64) -> Result<usize, usize> {
        // Without holes or skipped numbers, the offset from the oldest is
        // the index: the common case, one comparison instead of a search.
        if let Some(&(first, _)) = self.entries.front() {
            let guess = number.wrapping_sub(first);
            if guess < self.entries.len() as u64 && self.entries[guess as usize].0 == number {
                return Ok(guess as usize);
            }
        }
        self.entries.binary_search_by_key(&number, |e| e.0)
    }

    #[cfg(test)]
    fn storage(&self) -> usize {
        self.entries.len()
    }
}

impl<T> Index<&u64> for SentPackets<T> {
    type Output = T;

    fn index(&self, number: &u64) -> &T {
        self.get(number).expect("no sent packet with this number")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::{rngs::StdRng, RngExt, SeedableRng};

    use super::*;

    /// Every operation, checked against upstream's `BTreeMap` as the oracle:
    /// inserts at the back, removals anywhere (in-order ACKs, ACKs out of
    /// order, losses), lookups and ranges of every kind.
    #[test]
    fn behaves_like_the_btree_map_it_replaces() {
        let mut rng = StdRng::seed_from_u64(17);
        let mut ours = SentPackets::default();
        let mut oracle = BTreeMap::new();
        let mut next = 0u64;
        for step in 0..20_000u32 {
            match rng.random_range(0..10) {
                0..=3 => {
                    // Packet numbers only grow, sometimes skipping one.
                    next += rng.random_range(1..3);
                    ours.insert(next, step);
                    oracle.insert(next, step);
                }
                4..=5 => {
                    // The oldest leaves (an in-order ACK).
                    let first = oracle.keys().next().copied();
                    if let Some(n) = first {
                        assert_eq!(ours.remove(&n), oracle.remove(&n));
                    }
                }
                6..=7 => {
                    // Any number, held or not.
                    let n = rng.random_range(0..next + 2);
                    assert_eq!(ours.remove(&n), oracle.remove(&n));
                }
                _ => {
                    let n = rng.random_range(0..next + 2);
                    assert_eq!(ours.get(&n), oracle.get(&n));
                    let (a, b) = (rng.random_range(0..next + 2), rng.random_range(0..next + 2));
                    let (lo, hi) = (a.min(b), a.max(b));
                    assert!(ours.range(lo..hi).eq(oracle.range(lo..hi)));
                    assert!(ours.range(lo..=hi).eq(oracle.range(lo..=hi)));
                    assert!(ours.range(..hi).eq(oracle.range(..hi)));
                    let after = (Bound::Excluded(lo), Bound::Unbounded);
                    assert!(ours.range(after).eq(oracle.range(after)));
                    assert!(ours.range(lo..hi).rev().eq(oracle.range(lo..hi).rev()));
                }
            }
            assert!(ours.values().eq(oracle.values()));
        }
        for v in ours.values_mut() {
            *v += 1;
        }
        oracle.values_mut().for_each(|v| *v += 1);
        assert!(ours.clone().into_values().eq(oracle.clone().into_values()));
        // A number below the newest, as a map would take it.
        if let Some(&n) = oracle.keys().next() {
            ours.insert(n, 0);
            oracle.insert(n, 0);
            assert!(ours.values().eq(oracle.values()));
        }
    }

    /// quinn PR 2858's case: the oldest packet stays unacknowledged while
    /// thousands after it come and go. The storage follows the live packets.
    #[test]
    fn one_old_packet_does_not_make_the_storage_grow() {
        let mut packets = SentPackets::default();
        packets.insert(0, "old");
        for n in 1..=4_095u64 {
            packets.insert(n, "new");
            if n > 8 {
                assert_eq!(packets.remove(&(n - 8)), Some("new"));
            }
            assert!(
                packets.storage() <= 2 * 9 + SLACK + 1,
                "{} entries held for at most 9 live packets",
                packets.storage()
            );
        }
        assert_eq!(packets[&0], "old");
        assert_eq!(packets.values().count(), 9);
    }
}
