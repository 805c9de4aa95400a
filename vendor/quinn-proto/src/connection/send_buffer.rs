use std::{collections::VecDeque, ops::Range};

use bytes::{Buf, Bytes};

use crate::{VarInt, range_set::RangeSet};

/// netmux: slots `release` leaves in the segment deques of a stream (the
/// smallest capacity a deque allocates for elements of this size)
const MIN_SEGMENT_SLOTS: usize = 4;

/// Buffer of outgoing retransmittable stream data
#[derive(Default, Debug)]
pub(super) struct SendBuffer {
    /// Data queued by the application but not yet acknowledged. May or may not have been sent.
    unacked_segments: VecDeque<Bytes>,
    /// netmux: the stream offset at which each of `unacked_segments` ends, so
    /// that `get` finds a segment by binary search instead of a scan
    segment_ends: VecDeque<u64>,
    /// Total size of `unacked_segments`
    unacked_len: usize,
    /// Acknowledged bytes removed from the first segment's view but still held by its allocation
    front_trimmed: usize,
    /// The first offset that hasn't been written by the application, i.e. the offset past the end of `unacked`
    offset: u64,
    /// The first offset that hasn't been sent
    ///
    /// Always lies in (offset - unacked.len())..offset
    unsent: u64,
    /// Acknowledged ranges which couldn't be discarded yet as they don't include the earliest
    /// offset in `unacked`
    // TODO: Recover storage from these by compacting (#700)
    acks: RangeSet,
    /// Previously transmitted ranges deemed lost
    retransmits: RangeSet,
}

impl SendBuffer {
    /// Construct an empty buffer at the initial offset
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Append application data to the end of the stream
    pub(super) fn write(&mut self, data: Bytes) {
        self.unacked_len += data.len();
        self.offset += data.len() as u64;
        self.unacked_segments.push_back(data);
        self.segment_ends.push_back(self.offset);
    }

    /// Discard a range of acknowledged stream data
    pub(super) fn ack(&mut self, mut range: Range<u64>) {
        // Clamp the range to data which is still tracked
        let base_offset = self.offset - self.unacked_len as u64;
        range.start = base_offset.max(range.start);
        range.end = base_offset.max(range.end);

        // netmux: an ACK of the oldest data while nothing was acknowledged out
        // of order (every ACK of a transfer without loss) releases that data
        // at once; upstream passed each range through the B-tree of `acks`,
        // an insert (a node allocation) and a pop per acknowledged frame.
        if range.start == base_offset && self.acks.is_empty() {
            self.release((range.end - range.start) as usize);
            return;
        }

        self.acks.insert(range);

        while self.acks.min() == Some(self.offset - self.unacked_len as u64) {
            let prefix = self.acks.pop_min().unwrap();
            self.release((prefix.end - prefix.start) as usize);
        }
    }

    /// Drop `to_advance` bytes from the front of the unacknowledged data
    fn release(&mut self, mut to_advance: usize) {
        self.unacked_len -= to_advance;
        while to_advance > 0 {
            let front = self
                .unacked_segments
                .front_mut()
                .expect("Expected buffered data");

            if front.len() <= to_advance {
                to_advance -= front.len();
                self.unacked_segments.pop_front();
                self.segment_ends.pop_front();
                self.front_trimmed = 0;

                // netmux: upstream shrank to fit, so a stream whose data was
                // all acknowledged freed its deque and allocated it again for
                // its next write: an allocation and a free per response on a
                // connection of small requests. A few slots stay.
                if self.unacked_segments.capacity() > MIN_SEGMENT_SLOTS
                    && self.unacked_segments.len() * 4 < self.unacked_segments.capacity()
                {
                    self.unacked_segments.shrink_to(MIN_SEGMENT_SLOTS);
                    self.segment_ends.shrink_to(MIN_SEGMENT_SLOTS);
                }
            } else {
                front.advance(to_advance);
                self.front_trimmed += to_advance;
                to_advance = 0;
            }
        }
    }

    /// Compute the next range to transmit on this stream and update state to account for that
    /// transmission.
    ///
    /// `max_len` here includes the space which is available to transmit the
    /// offset and length of the data to send. The caller has to guarantee that
    /// there is at least enough space available to write maximum-sized metadata
    /// (8 byte offset + 8 byte length).
    ///
    /// The method returns a tuple:
    /// - The first return value indicates the range of data to send
    /// - The second return value indicates whether the length needs to be encoded
    ///   in the STREAM frames metadata (`true`), or whether it can be omitted
    ///   since the selected range will fill the whole packet.
    pub(super) fn poll_transmit(&mut self, mut max_len: usize) -> (Range<u64>, bool) {
        debug_assert!(max_len >= 8 + 8);
        let mut encode_length = false;

        if let Some(range) = self.retransmits.pop_min() {
            // Retransmit sent data

            // When the offset is known, we know how many bytes are required to encode it.
            // Offset 0 requires no space
            if range.start != 0 {
                max_len -= VarInt::size(unsafe { VarInt::from_u64_unchecked(range.start) });
            }
            if range.end - range.start < max_len as u64 {
                encode_length = true;
                max_len -= 8;
            }

            let end = range.end.min((max_len as u64).saturating_add(range.start));
            if end != range.end {
                self.retransmits.insert(end..range.end);
            }
            return (range.start..end, encode_length);
        }

        // Transmit new data

        // When the offset is known, we know how many bytes are required to encode it.
        // Offset 0 requires no space
        if self.unsent != 0 {
            max_len -= VarInt::size(unsafe { VarInt::from_u64_unchecked(self.unsent) });
        }
        if self.offset - self.unsent < max_len as u64 {
            encode_length = true;
            max_len -= 8;
        }

        let end = self
            .offset
            .min((max_len as u64).saturating_add(self.unsent));
        let result = self.unsent..end;
        self.unsent = end;
        (result, encode_length)
    }

    /// Returns data which is associated with a range
    ///
    /// This function can return a subset of the range, if the data is stored
    /// in noncontiguous fashion in the send buffer. In this case callers
    /// should call the function again with an incremented start offset to
    /// retrieve more data.
    pub(super) fn get(&self, offsets: Range<u64>) -> &[u8] {
        // netmux: upstream scanned every unacked segment from the oldest, for
        // every STREAM frame: O(segments in flight) per packet in a bulk
        // transfer. The first segment ending after `offsets.start` holds it.
        let index = self
            .segment_ends
            .partition_point(|&end| end <= offsets.start);
        let (Some(segment), Some(&segment_end)) = (
            self.unacked_segments.get(index),
            self.segment_ends.get(index),
        ) else {
            return &[];
        };
        // The front segment may have been trimmed by an ACK: its data starts
        // at the base offset, which `segment_end - len` gives for every segment.
        let segment_offset = segment_end - segment.len() as u64;
        if offsets.start < segment_offset {
            return &[];
        }
        let start = (offsets.start - segment_offset) as usize;
        let end = (offsets.end - segment_offset) as usize;
        &segment[start..end.min(segment.len())]
    }

    /// Release abandoned data while preserving the final offset for RESET_STREAM
    pub(super) fn discard(&mut self) {
        *self = Self {
            offset: self.offset,
            unsent: self.offset,
            ..Self::default()
        };
    }

    /// Queue a range of sent but unacknowledged data to be retransmitted
    pub(super) fn retransmit(&mut self, range: Range<u64>) {
        debug_assert!(range.end <= self.unsent, "unsent data can't be lost");
        self.retransmits.insert(range);
    }

    pub(super) fn retransmit_all_for_0rtt(&mut self) {
        debug_assert_eq!(self.offset, self.unacked_len as u64);
        self.unsent = 0;
    }

    /// First stream offset unwritten by the application, i.e. the offset that the next write will
    /// begin at
    pub(super) fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether all sent data has been acknowledged
    pub(super) fn is_fully_acked(&self) -> bool {
        self.unacked_len == 0
    }

    /// Whether there's data to send
    ///
    /// There may be sent unacknowledged data even when this is false.
    pub(super) fn has_unsent_data(&self) -> bool {
        self.unsent != self.offset || !self.retransmits.is_empty()
    }

    /// Bytes still retained from application writes, including acknowledged data
    pub(super) fn buffered(&self) -> u64 {
        (self.unacked_len + self.front_trimmed) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_with_length() {
        let mut buf = SendBuffer::new();
        const MSG: &[u8] = b"Hello, world!";
        buf.write(MSG.into());
        // 0 byte offset => 19 bytes left => 13 byte data isn't enough
        // with 8 bytes reserved for length 11 payload bytes will fit
        assert_eq!(buf.poll_transmit(19), (0..11, true));
        assert_eq!(
            buf.poll_transmit(MSG.len() + 16 - 11),
            (11..MSG.len() as u64, true)
        );
        assert_eq!(
            buf.poll_transmit(58),
            (MSG.len() as u64..MSG.len() as u64, true)
        );
    }

    #[test]
    fn fragment_without_length() {
        let mut buf = SendBuffer::new();
        const MSG: &[u8] = b"Hello, world with some extra data!";
        buf.write(MSG.into());
        // 0 byte offset => 19 bytes left => can be filled by 34 bytes payload
        assert_eq!(buf.poll_transmit(19), (0..19, false));
        assert_eq!(
            buf.poll_transmit(MSG.len() - 19 + 1),
            (19..MSG.len() as u64, false)
        );
        assert_eq!(
            buf.poll_transmit(58),
            (MSG.len() as u64..MSG.len() as u64, true)
        );
    }

    #[test]
    fn reserves_encoded_offset() {
        let mut buf = SendBuffer::new();

        // Pretend we have more than 1 GB of data in the buffer
        let chunk: Bytes = Bytes::from_static(&[0; 1024 * 1024]);
        for _ in 0..1025 {
            buf.write(chunk.clone());
        }

        const SIZE1: u64 = 64;
        const SIZE2: u64 = 16 * 1024;
        const SIZE3: u64 = 1024 * 1024 * 1024;

        // Offset 0 requires no space
        assert_eq!(buf.poll_transmit(16), (0..16, false));
        buf.retransmit(0..16);
        assert_eq!(buf.poll_transmit(16), (0..16, false));
        let mut transmitted = 16u64;

        // Offset 16 requires 1 byte
        assert_eq!(
            buf.poll_transmit((SIZE1 - transmitted + 1) as usize),
            (transmitted..SIZE1, false)
        );
        buf.retransmit(transmitted..SIZE1);
        assert_eq!(
            buf.poll_transmit((SIZE1 - transmitted + 1) as usize),
            (transmitted..SIZE1, false)
        );
        transmitted = SIZE1;

        // Offset 64 requires 2 bytes
        assert_eq!(
            buf.poll_transmit((SIZE2 - transmitted + 2) as usize),
            (transmitted..SIZE2, false)
        );
        buf.retransmit(transmitted..SIZE2);
        assert_eq!(
            buf.poll_transmit((SIZE2 - transmitted + 2) as usize),
            (transmitted..SIZE2, false)
        );
        transmitted = SIZE2;

        // Offset 16384 requires requires 4 bytes
        assert_eq!(
            buf.poll_transmit((SIZE3 - transmitted + 4) as usize),
            (transmitted..SIZE3, false)
        );
        buf.retransmit(transmitted..SIZE3);
        assert_eq!(
            buf.poll_transmit((SIZE3 - transmitted + 4) as usize),
            (transmitted..SIZE3, false)
        );
        transmitted = SIZE3;

        // Offset 1GB requires 8 bytes
        assert_eq!(
            buf.poll_transmit(chunk.len() + 8),
            (transmitted..transmitted + chunk.len() as u64, false)
        );
        buf.retransmit(transmitted..transmitted + chunk.len() as u64);
        assert_eq!(
            buf.poll_transmit(chunk.len() + 8),
            (transmitted..transmitted + chunk.len() as u64, false)
        );
    }

    #[test]
    fn multiple_segments() {
        let mut buf = SendBuffer::new();
        const MSG: &[u8] = b"Hello, world!";
        const MSG_LEN: u64 = MSG.len() as u64;

        const SEG1: &[u8] = b"He";
        buf.write(SEG1.into());
        const SEG2: &[u8] = b"llo,";
        buf.write(SEG2.into());
        const SEG3: &[u8] = b" w";
        buf.write(SEG3.into());
        const SEG4: &[u8] = b"o";
        buf.write(SEG4.into());
        const SEG5: &[u8] = b"rld!";
        buf.write(SEG5.into());

        assert_eq!(aggregate_unacked(&buf), MSG);

        assert_eq!(buf.poll_transmit(16), (0..8, true));
        assert_eq!(buf.get(0..5), SEG1);
        assert_eq!(buf.get(2..8), SEG2);
        assert_eq!(buf.get(6..8), SEG3);

        assert_eq!(buf.poll_transmit(16), (8..MSG_LEN, true));
        assert_eq!(buf.get(8..MSG_LEN), SEG4);
        assert_eq!(buf.get(9..MSG_LEN), SEG5);

        assert_eq!(buf.poll_transmit(42), (MSG_LEN..MSG_LEN, true));

        // Now drain the segments
        buf.ack(0..1);
        assert_eq!(aggregate_unacked(&buf), &MSG[1..]);
        buf.ack(0..3);
        assert_eq!(aggregate_unacked(&buf), &MSG[3..]);
        buf.ack(3..5);
        assert_eq!(aggregate_unacked(&buf), &MSG[5..]);
        buf.ack(7..9);
        assert_eq!(aggregate_unacked(&buf), &MSG[5..]);
        buf.ack(4..7);
        assert_eq!(aggregate_unacked(&buf), &MSG[9..]);
        buf.ack(0..MSG_LEN);
        assert_eq!(aggregate_unacked(&buf), &[] as &[u8]);
    }

    #[test]
    fn retransmit() {
        let mut buf = SendBuffer::new();
        const MSG: &[u8] = b"Hello, world with extra data!";
        buf.write(MSG.into());
        // Transmit two frames
        assert_eq!(buf.poll_transmit(16), (0..16, false));
        assert_eq!(buf.poll_transmit(16), (16..23, true));
        // Lose the first, but not the second
        buf.retransmit(0..16);
        // Ensure we only retransmit the lost frame, then continue sending fresh data
        assert_eq!(buf.poll_transmit(16), (0..16, false));
        assert_eq!(buf.poll_transmit(16), (23..MSG.len() as u64, true));
        // Lose the second frame
        buf.retransmit(16..23);
        assert_eq!(buf.poll_transmit(16), (16..23, true));
    }

    #[test]
    fn ack() {
        let mut buf = SendBuffer::new();
        const MSG: &[u8] = b"Hello, world!";
        buf.write(MSG.into());
        assert_eq!(buf.poll_transmit(16), (0..8, true));
        buf.ack(0..8);
        assert_eq!(aggregate_unacked(&buf), &MSG[8..]);
    }

    #[test]
    fn reordered_ack() {
        let mut buf = SendBuffer::new();
        const MSG: &[u8] = b"Hello, world with extra data!";
        buf.write(MSG.into());
        assert_eq!(buf.poll_transmit(16), (0..16, false));
        assert_eq!(buf.poll_transmit(16), (16..23, true));
        buf.ack(16..23);
        assert_eq!(aggregate_unacked(&buf), MSG);
        buf.ack(0..16);
        assert_eq!(aggregate_unacked(&buf), &MSG[23..]);
        assert!(buf.acks.is_empty());
    }

    /// netmux: `get` by binary search returns what upstream's scan returned,
    /// for every offset, across segments of uneven sizes, a trimmed front
    /// segment, out-of-order ACKs and retransmissions.
    #[test]
    fn get_finds_the_segment_of_every_offset() {
        fn scan(buf: &SendBuffer, offsets: Range<u64>) -> Vec<u8> {
            let mut segment_offset = buf.offset - buf.unacked_len as u64;
            for segment in buf.unacked_segments.iter() {
                if offsets.start >= segment_offset
                    && offsets.start < segment_offset + segment.len() as u64
                {
                    let start = (offsets.start - segment_offset) as usize;
                    let end = (offsets.end - segment_offset) as usize;
                    return segment[start..end.min(segment.len())].to_vec();
                }
                segment_offset += segment.len() as u64;
            }
            Vec::new()
        }
        fn check(buf: &SendBuffer) {
            assert_eq!(buf.segment_ends.len(), buf.unacked_segments.len());
            for start in 0..buf.offset + 3 {
                for len in [0, 1, 7, 1200] {
                    let offsets = start..start + len;
                    assert_eq!(buf.get(offsets.clone()), &scan(buf, offsets.clone())[..]);
                }
            }
        }

        let mut buf = SendBuffer::new();
        let mut next = 0u8;
        for len in [1usize, 5, 0, 300, 2, 1500, 64, 0, 9, 700] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            buf.write(data.into());
        }
        check(&buf);
        while buf.poll_transmit(500).0.start < buf.offset {}
        check(&buf);
        buf.ack(0..3); // trims the front, pops the first segment
        check(&buf);
        buf.ack(400..900); // out of order: kept aside
        check(&buf);
        buf.retransmit(10..60);
        assert_eq!(buf.poll_transmit(500).0, 10..60);
        check(&buf);
        buf.ack(3..400); // releases everything up to 900
        check(&buf);
        assert_eq!(buf.get(899..901), &[] as &[u8]);
        assert_eq!(buf.get(900..901).len(), 1);
        buf.ack(0..buf.offset);
        assert!(buf.unacked_segments.is_empty() && buf.segment_ends.is_empty());
        check(&buf);
    }

    /// netmux: in-order ACKs take the fast path only while nothing is held
    /// out of order; either way the buffer releases exactly what upstream did.
    #[test]
    fn in_order_acks_release_like_out_of_order_ones() {
        const MSG: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let filled = || {
            let mut buf = SendBuffer::new();
            for chunk in MSG.chunks(5) {
                buf.write(Bytes::copy_from_slice(chunk));
            }
            while buf.poll_transmit(20).0.start < buf.offset {}
            buf
        };
        // In order, with an empty and a repeated range: the fast path.
        let mut buf = filled();
        for range in [0..3, 3..3, 3..12, 0..12, 12..20] {
            buf.ack(range);
            assert!(buf.acks.is_empty());
        }
        assert_eq!(aggregate_unacked(&buf), &MSG[20..]);
        // An ACK beyond the base is held; the in-order one after it releases
        // both, through the range set.
        let mut buf = filled();
        buf.ack(10..14);
        assert_eq!(aggregate_unacked(&buf), MSG);
        buf.ack(0..12);
        assert!(buf.acks.is_empty());
        assert_eq!(aggregate_unacked(&buf), &MSG[14..]);
        buf.ack(14..MSG.len() as u64);
        assert_eq!(aggregate_unacked(&buf), &[] as &[u8]);
        assert!(buf.is_fully_acked());
        assert!(buf.segment_ends.is_empty());
    }

    /// netmux: a stream that sends one small message per round trip reuses
    /// its segment deques instead of freeing them on every ACK, and a burst
    /// of segments still gives its memory back once acknowledged.
    #[test]
    fn an_acknowledged_buffer_keeps_a_few_slots() {
        let mut buf = SendBuffer::new();
        for round in 0..3u64 {
            buf.write(Bytes::from_static(b"GET"));
            assert_eq!(buf.poll_transmit(100).0, round * 3..round * 3 + 3);
            buf.ack(round * 3..round * 3 + 3);
            assert!(buf.is_fully_acked());
            assert_eq!(buf.unacked_segments.capacity(), MIN_SEGMENT_SLOTS);
            assert_eq!(buf.segment_ends.capacity(), MIN_SEGMENT_SLOTS);
        }
        for _ in 0..1000 {
            buf.write(Bytes::from_static(b"x"));
        }
        while buf.poll_transmit(100).0.start < buf.offset {}
        buf.ack(0..buf.offset);
        assert!(buf.unacked_segments.capacity() < 16);
        assert!(buf.segment_ends.capacity() < 16);
        assert_eq!(aggregate_unacked(&buf), &[] as &[u8]);
    }

    fn aggregate_unacked(buf: &SendBuffer) -> Vec<u8> {
        let mut result = Vec::new();
        for segment in buf.unacked_segments.iter() {
            result.extend_from_slice(&segment[..]);
        }
        result
    }
}
