//! netmux (issue 17): the endpoint's receive buffers, handed on without a copy.
//!
//! Upstream quinn receives a batch of datagrams into one large buffer and
//! copies each received datagram (with GRO, up to 64 KiB of coalesced
//! segments) into a fresh `BytesMut` before `quinn_proto` sees it. On a
//! netmux receiver moving bulk data that copy was 13 of the 17.8% that
//! `memcpy` took of the process's user-space instructions (callgrind).
//!
//! Here every slot of the batch is a buffer of its own. A large datagram is
//! split off its slot and handed on as it is; the slot is replaced by an
//! earlier buffer whose contents have all been dropped since (reclaimed
//! without allocating), or by a new one. Small datagrams are still copied:
//! handing on a 64 KiB buffer for a 100-byte request would keep the whole
//! buffer alive until the application has read those 100 bytes.

use std::collections::VecDeque;
use std::io::IoSliceMut;

use bytes::BytesMut;

/// Slots larger than this are never handed on (each would keep that much
/// memory alive per datagram); the receiver then copies, as upstream does.
/// On Linux no single receive exceeds it: the kernel coalesces UDP (GRO)
/// only up to 64 KiB (`GRO_LEGACY_MAX_SIZE`), and a UDP datagram, GSO-sent
/// or not, carries at most 65,527 bytes.
const MAX_HANDED_ON_SLOT: usize = 64 * 1024;

/// Datagrams at least this long are handed on; shorter ones are copied.
/// A handed-on buffer keeps at most 4× its data's size alive.
const MIN_HANDED_ON: usize = 16 * 1024;

/// Buffers handed on and waiting for their contents to be dropped. Beyond
/// this many the oldest is let go (freed by whoever drops its data last).
/// At full speed a stream's receive queue holds more than 64 of them (with
/// 64, a zeroed allocation replaced the copy in 1.6% of the tunnel's CPU;
/// with 256, under 0.5%). Up to 16 MiB stay parked after a bulk transfer.
const MAX_PARKED: usize = 256;

pub(crate) struct RecvBuffers {
    /// Each exactly `slot_len` long, every byte initialised.
    slots: Vec<BytesMut>,
    slot_len: usize,
    /// Remainders of handed-on buffers, oldest first.
    parked: VecDeque<BytesMut>,
}

impl RecvBuffers {
    /// `batch` slots of `slot_len` bytes (`slot_len` as upstream sizes one
    /// datagram's buffer: the largest UDP payload times the GRO segments).
    pub(crate) fn new(batch: usize, slot_len: usize) -> Self {
        let slot_len = if cfg!(any(target_os = "linux", target_os = "android")) {
            slot_len.min(MAX_HANDED_ON_SLOT)
        } else {
            slot_len
        };
        Self {
            slots: (0..batch).map(|_| BytesMut::zeroed(slot_len)).collect(),
            slot_len,
            parked: VecDeque::new(),
        }
    }

    /// One `IoSliceMut` per slot, for one `poll_recv`.
    pub(crate) fn io_slices<const N: usize>(&mut self) -> [IoSliceMut<'_>; N] {
        assert_eq!(self.slots.len(), N, "one slot per receive");
        let mut slots = self.slots.iter_mut();
        std::array::from_fn(|_| IoSliceMut::new(&mut slots.next().expect("N slots")[..]))
    }

    /// The first `len` bytes of slot `i`, as received; the slot is ready for
    /// the next receive afterwards.
    pub(crate) fn take(&mut self, i: usize, len: usize) -> BytesMut {
        let len = len.min(self.slot_len);
        if self.slot_len > MAX_HANDED_ON_SLOT || len < MIN_HANDED_ON {
            return BytesMut::from(&self.slots[i][..len]);
        }
        let fresh = self.reuse_or_allocate();
        let mut slot = std::mem::replace(&mut self.slots[i], fresh);
        let data = slot.split_to(len);
        // `slot` now holds the rest of the buffer `data` lives in: once
        // `data` and everything split from it are dropped, it is the only
        // handle and can take the whole buffer back.
        if self.parked.len() == MAX_PARKED {
            self.parked.pop_front();
        }
        self.parked.push_back(slot);
        data
    }

    fn reuse_or_allocate(&mut self) -> BytesMut {
        if let Some(mut buf) = self.parked.pop_front() {
            buf.clear();
            if buf.try_reclaim(self.slot_len) {
                // SAFETY: `try_reclaim` never allocates: it succeeded by
                // moving `buf` back to the start of its own allocation, a
                // `BytesMut::zeroed(self.slot_len)` from `new` or below. All
                // of it was initialised then, and has only been written
                // since, so its first `slot_len` bytes are initialised.
                unsafe { buf.set_len(self.slot_len) };
                return buf;
            }
            // Still in use (the oldest, so likely the others too).
            self.parked.push_front(buf);
        }
        BytesMut::zeroed(self.slot_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `poll_recv` does: `payload` written into slot `i` of two.
    fn receive(bufs: &mut RecvBuffers, i: usize, payload: &[u8]) -> BytesMut {
        bufs.io_slices::<2>()[i][..payload.len()].copy_from_slice(payload);
        bufs.take(i, payload.len())
    }

    #[test]
    fn small_datagrams_are_copied_and_the_slot_kept() {
        let mut bufs = RecvBuffers::new(2, 64 * 1024);
        let before = bufs.slots[0].as_ptr();
        let data = receive(&mut bufs, 0, b"hello");
        assert_eq!(&data[..], b"hello");
        assert_eq!(bufs.slots[0].as_ptr(), before);
        assert!(bufs.parked.is_empty());
    }

    #[test]
    fn large_datagrams_are_handed_on_and_their_buffer_reused_once_dropped() {
        let mut bufs = RecvBuffers::new(2, 64 * 1024);
        let first = bufs.slots[1].as_ptr();
        let payload: Vec<u8> = (0..40_000u32).map(|n| n as u8).collect();
        let data = receive(&mut bufs, 1, &payload);
        assert_eq!(&data[..], &payload[..]);
        assert_eq!(data.as_ptr(), first, "handed on, not copied");
        assert_eq!(bufs.slots[1].len(), 64 * 1024);

        // While the data lives, its buffer cannot be reused.
        let second = receive(&mut bufs, 1, &payload);
        assert_ne!(second.as_ptr(), first);
        assert_eq!(&second[..], &payload[..]);

        // Dropped (with a piece split from it), the buffer comes back whole.
        let mut data = data;
        let piece = data.split_to(1_000).freeze();
        drop(data);
        drop(piece);
        let third = receive(&mut bufs, 1, &payload);
        assert_eq!(&third[..], &payload[..]);
        assert_eq!(
            bufs.slots[1].as_ptr(),
            first,
            "the slot's new buffer is the first one, reclaimed without allocating"
        );
        assert_eq!(bufs.slots[1].len(), 64 * 1024);
    }

    #[test]
    fn parked_buffers_are_bounded() {
        let mut bufs = RecvBuffers::new(2, 64 * 1024);
        let payload = vec![7u8; 20_000];
        let held: Vec<BytesMut> = (0..MAX_PARKED + 10)
            .map(|_| receive(&mut bufs, 0, &payload))
            .collect();
        assert!(bufs.parked.len() <= MAX_PARKED);
        assert!(held.iter().all(|d| d[..] == payload[..]));
    }

    #[test]
    fn oversized_slots_are_copied_not_handed_on() {
        // As on a platform whose slots `new` does not cap at 64 KiB.
        let slot_len = 2 * MAX_HANDED_ON_SLOT;
        let mut bufs = RecvBuffers {
            slots: (0..2).map(|_| BytesMut::zeroed(slot_len)).collect(),
            slot_len,
            parked: VecDeque::new(),
        };
        let payload = vec![1u8; 30_000];
        let before = bufs.slots[0].as_ptr();
        let data = receive(&mut bufs, 0, &payload);
        assert_eq!(&data[..], &payload[..]);
        assert_eq!(bufs.slots[0].as_ptr(), before);
        assert!(bufs.parked.is_empty());
    }
}
