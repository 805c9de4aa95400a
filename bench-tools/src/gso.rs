//! Packets as a TUN device with offloads hands them over: a `virtio_net_hdr`
//! followed by an IPv4 packet that may be a GSO "superpacket" (up to 64 KiB
//! that the kernel would cut into MTU-sized segments on the wire).
//!
//! `nx-delayline` reads superpackets so that one read moves up to 44
//! segments, the way a veth passes them. Loss is still decided per segment,
//! as on a real link: when a segment of a superpacket is lost, [`split`]
//! cuts it here into the segments the kernel would have sent, each a
//! complete IPv4 packet with its checksums, and the survivors go on alone.
//! Sans-IO: no sockets, no clock.

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial (offloaded).
pub const NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (UDP GSO, as QUIC stacks send).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`, or'ed into the type.
pub const GSO_ECN: u8 = 0x80;

/// `struct virtio_net_hdr` (little-endian fields, as TUN and AF_PACKET use
/// them on little-endian hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Its size on the wire.
    pub const LEN: usize = 10;

    /// Parses the first [`Self::LEN`] bytes.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; Self::LEN] = b.get(..Self::LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Its wire form.
    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// The same header with its offsets moved by `n` bytes, for a packet
    /// that gets an `n`-byte link-layer header in front (offsets count from
    /// the start of what is sent).
    pub fn shifted(self, n: u16) -> VnetHdr {
        let moved = |v: u16| if v == 0 { 0 } else { v.saturating_add(n) };
        VnetHdr {
            hdr_len: moved(self.hdr_len),
            csum_start: if self.flags & NEEDS_CSUM != 0 {
                self.csum_start.saturating_add(n)
            } else {
                self.csum_start
            },
            ..self
        }
    }

    fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE && self.gso_size > 0
    }
}

/// The IPv4 and L4 layout of a packet this module can cut.
struct Layout {
    ip_len: usize,
    l4_len: usize,
    proto: u8,
}

fn layout(pkt: &[u8]) -> Option<Layout> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return None;
    }
    let ip_len = usize::from(pkt[0] & 0x0f) * 4;
    let proto = pkt[9];
    let l4_len = match proto {
        6 => usize::from(pkt.get(ip_len + 12)? >> 4) * 4,
        17 => 8,
        _ => return None,
    };
    (ip_len >= 20 && pkt.len() >= ip_len + l4_len).then_some(Layout {
        ip_len,
        l4_len,
        proto,
    })
}

/// How many packets `pkt` is on the wire: its segments when it is a GSO
/// superpacket of TCP or UDP over IPv4, else 1.
pub fn segments(h: &VnetHdr, pkt: &[u8]) -> usize {
    match (h.is_gso(), layout(pkt)) {
        (true, Some(l)) => {
            let payload = pkt.len() - l.ip_len - l.l4_len;
            payload.div_ceil(usize::from(h.gso_size)).max(1)
        }
        _ => 1,
    }
}

/// One's-complement sum of `data` as big-endian 16-bit words, added to `acc`.
fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
        if acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum(0, data))
}

/// The segments of superpacket `pkt` whose index `keep` accepts, each a
/// complete IPv4 packet (length, id, sequence number, flags and both
/// checksums as the kernel's segmentation would set them), appended to
/// `out`. `None` when `pkt` is not a superpacket this module can cut.
pub fn split(
    h: &VnetHdr,
    pkt: &[u8],
    mut keep: impl FnMut(usize) -> bool,
    out: &mut Vec<Vec<u8>>,
) -> Option<()> {
    let l = layout(pkt).filter(|_| h.is_gso())?;
    let head = l.ip_len + l.l4_len;
    let mss = usize::from(h.gso_size);
    let payload = &pkt[head..];
    let n = segments(h, pkt);
    let id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let (src, dst) = (&pkt[12..16], &pkt[16..20]);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        if !keep(i) {
            continue;
        }
        let mut seg = Vec::with_capacity(head + chunk.len());
        seg.extend_from_slice(&pkt[..head]);
        seg.extend_from_slice(chunk);
        let total = u16::try_from(seg.len()).ok()?;
        // IPv4: length, id, header checksum.
        seg[2..4].copy_from_slice(&total.to_be_bytes());
        seg[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        seg[10..12].copy_from_slice(&[0, 0]);
        let ip_sum = checksum(&seg[..l.ip_len]);
        seg[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        let l4 = l.ip_len;
        let l4_total = u16::try_from(seg.len() - l4).ok()?;
        let check_at = if l.proto == 6 {
            let seq = u32::from_be_bytes(seg[l4 + 4..l4 + 8].try_into().ok()?);
            let seq = seq.wrapping_add((i * mss) as u32);
            seg[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            const FIN: u8 = 0x01;
            const PSH: u8 = 0x08;
            const CWR: u8 = 0x80;
            if i > 0 {
                seg[l4 + 13] &= !CWR;
            }
            if i + 1 < n {
                seg[l4 + 13] &= !(FIN | PSH);
            }
            l4 + 16
        } else {
            seg[l4 + 4..l4 + 6].copy_from_slice(&l4_total.to_be_bytes());
            l4 + 6
        };
        seg[check_at..check_at + 2].copy_from_slice(&[0, 0]);
        let mut acc = sum(0, src);
        acc = sum(acc, dst);
        acc = sum(acc, &[0, l.proto]);
        acc = sum(acc, &l4_total.to_be_bytes());
        acc = sum(acc, &seg[l4..]);
        let mut l4_sum = fold(acc);
        if l.proto == 17 && l4_sum == 0 {
            l4_sum = 0xffff;
        }
        seg[check_at..check_at + 2].copy_from_slice(&l4_sum.to_be_bytes());
        out.push(seg);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 header 10.0.0.1 → 10.0.0.2 (no options, TTL 64) of a
    /// `proto` packet whose L4 header (`l4_header` bytes, zeroed here)
    /// carries `payload` bytes.
    fn ipv4(proto: u8, l4_header: usize, payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 20 + l4_header];
        p[0] = 0x45;
        let total = (20 + l4_header + payload) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p
    }

    /// A TCP/IPv4 packet 10.0.0.1:1000 → 10.0.0.2:2000 with `payload`, its
    /// checksums complete.
    fn tcp(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = ipv4(6, 20, payload.len());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6] = 0x40; // DF
        p[20..22].copy_from_slice(&1000u16.to_be_bytes());
        p[22..24].copy_from_slice(&2000u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p[34..36].copy_from_slice(&512u16.to_be_bytes());
        p.extend_from_slice(payload);
        fill_checksums(&mut p);
        p
    }

    fn udp(payload: &[u8]) -> Vec<u8> {
        let mut p = ipv4(17, 8, payload.len());
        p[20..22].copy_from_slice(&4433u16.to_be_bytes());
        p[22..24].copy_from_slice(&5555u16.to_be_bytes());
        p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(payload);
        fill_checksums(&mut p);
        p
    }

    /// Sets both checksums of `p` the slow, obvious way.
    fn fill_checksums(p: &mut [u8]) {
        p[10..12].copy_from_slice(&[0, 0]);
        let s = checksum(&p[..20]);
        p[10..12].copy_from_slice(&s.to_be_bytes());
        let at = if p[9] == 6 { 36 } else { 26 };
        p[at..at + 2].copy_from_slice(&[0, 0]);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&p[12..20]);
        pseudo.extend_from_slice(&[0, p[9]]);
        pseudo.extend_from_slice(&((p.len() - 20) as u16).to_be_bytes());
        pseudo.extend_from_slice(&p[20..]);
        let mut s = checksum(&pseudo);
        if p[9] == 17 && s == 0 {
            s = 0xffff;
        }
        p[at..at + 2].copy_from_slice(&s.to_be_bytes());
    }

    fn gso(kind: u8, mss: u16) -> VnetHdr {
        VnetHdr {
            flags: NEEDS_CSUM,
            gso_type: kind,
            hdr_len: 40,
            gso_size: mss,
            csum_start: 20,
            csum_offset: 16,
        }
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn the_header_round_trips_and_shifts_its_offsets() {
        let h = gso(GSO_TCPV4, 1448);
        assert_eq!(VnetHdr::parse(&h.to_bytes()), Some(h));
        let s = h.shifted(14);
        assert_eq!((s.hdr_len, s.csum_start, s.csum_offset), (54, 34, 16));
        // Without a partial checksum there is no offset to move.
        let plain = VnetHdr::default().shifted(14);
        assert_eq!(plain, VnetHdr::default());
        assert_eq!(VnetHdr::parse(&[0; 9]), None);
    }

    #[test]
    fn a_tcp_superpacket_splits_into_the_segments_the_kernel_would_send() {
        let data = payload(1448 * 3 + 100);
        let sp = tcp(1_000_000, 0x18 | 0x01 | 0x80, &data); // PSH ACK FIN CWR
        let h = gso(GSO_TCPV4, 1448);
        assert_eq!(segments(&h, &sp), 4);
        let mut out = Vec::new();
        split(&h, &sp, |_| true, &mut out).unwrap();
        assert_eq!(out.len(), 4);
        for (i, seg) in out.iter().enumerate() {
            let chunk = &data[i * 1448..((i + 1) * 1448).min(data.len())];
            let flags = if i == 0 {
                0x10 | 0x80
            } else if i == 3 {
                0x18 | 0x01
            } else {
                0x10
            };
            let mut want = tcp(1_000_000 + (i * 1448) as u32, flags, chunk);
            want[4..6].copy_from_slice(&(0x1234 + i as u16).to_be_bytes());
            fill_checksums(&mut want);
            assert_eq!(seg, &want, "segment {i}");
            // A received packet's checksums verify to zero.
            assert_eq!(checksum(&seg[..20]), 0);
        }
    }

    #[test]
    fn a_udp_superpacket_splits_into_datagrams_and_keeps_only_the_survivors() {
        let data = payload(1452 * 4 + 1);
        let sp = udp(&data);
        let h = VnetHdr {
            csum_offset: 6,
            hdr_len: 28,
            ..gso(GSO_UDP_L4, 1452)
        };
        assert_eq!(segments(&h, &sp), 5);
        let mut out = Vec::new();
        split(&h, &sp, |i| i != 1 && i != 4, &mut out).unwrap();
        let kept: Vec<usize> = vec![0, 2, 3];
        assert_eq!(out.len(), kept.len());
        for (seg, i) in out.iter().zip(kept) {
            let chunk = &data[i * 1452..((i + 1) * 1452).min(data.len())];
            let mut want = udp(chunk);
            want[4..6].copy_from_slice(&(i as u16).to_be_bytes());
            fill_checksums(&mut want);
            assert_eq!(seg, &want, "datagram {i}");
        }
    }

    #[test]
    fn what_is_not_a_superpacket_counts_once_and_is_not_cut() {
        let sp = tcp(1, 0x10, &payload(100));
        let mut out = Vec::new();
        assert_eq!(segments(&VnetHdr::default(), &sp), 1);
        assert!(split(&VnetHdr::default(), &sp, |_| true, &mut out).is_none());
        // Not IPv4, too short, an unknown protocol: one packet, never cut.
        let h = gso(GSO_TCPV4, 1448);
        for bad in [vec![0x60; 60], vec![0x45; 10], {
            let mut p = sp.clone();
            p[9] = 1;
            p
        }] {
            assert_eq!(segments(&h, &bad), 1);
            assert!(split(&h, &bad, |_| true, &mut out).is_none());
        }
        assert!(out.is_empty());
    }
}
