//! Address ranges (`10.96.0.0/12`, `fd00::/108`) and the hello reply's
//! optional extension that announces the cluster's ranges.
//!
//! The server may append extensions to the payload of an accepted
//! [`super::hello::HelloReply`]: `tag u8 | len u16 | value`. Daemons that
//! predate them stop reading after the message (they never looked at the
//! rest), and a new daemon reading an old server finds no extension. Unknown
//! tags are skipped, so later extensions stay compatible too.
//!
//! Tag [`TAG_CLUSTER_RANGES`]: `count u8` then per range `family u8 (4|6) |
//! address (4|16 bytes) | prefix u8`. The daemon redirects (eBPF) only
//! addresses inside these ranges unless its endpoint configures its own
//! `cluster_cidrs`. Tag [`super::left_out::TAG_LEFT_OUT`]: catalog entries
//! too large for a frame, left out of the snapshot.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{Buf, BufMut, BytesMut};

use super::codec::{get_u16, get_u8, DecodeError};

/// Extension tag: the cluster's address ranges.
pub const TAG_CLUSTER_RANGES: u8 = 1;
/// Most ranges one reply may announce.
pub const MAX_RANGES: usize = 64;

/// An IPv4 or IPv6 network in CIDR form, host bits clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a range is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?}: {problem}")]
pub struct CidrError {
    /// What was given.
    pub input: String,
    /// What is wrong and how to write it.
    pub problem: String,
}

fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn mask(width: u8, prefix: u8) -> u128 {
    let all = if width == 32 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    if prefix == 0 {
        0
    } else {
        all & !(all >> prefix)
    }
}

impl Cidr {
    /// `addr/prefix`; fails when the prefix is too long for the family or
    /// host bits are set (the error names the network meant).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let (value, width) = bits(addr);
        let input = format!("{addr}/{prefix}");
        if prefix > width {
            return Err(CidrError {
                input,
                problem: format!("prefix /{prefix} is longer than /{width}"),
            });
        }
        let m = mask(width, prefix);
        if value & !m != 0 {
            let network = match addr {
                IpAddr::V4(_) => {
                    IpAddr::V4(Ipv4Addr::from(u32::try_from(value & m).unwrap_or_default()))
                }
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(value & m)),
            };
            return Err(CidrError {
                input,
                problem: format!("host bits are set; write {network}/{prefix}"),
            });
        }
        Ok(Cidr { addr, prefix })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (a, wa) = bits(self.addr);
        let (b, wb) = bits(ip);
        wa == wb && (a ^ b) & mask(wa, self.prefix) == 0
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |problem: &str| CidrError {
            input: s.to_owned(),
            problem: problem.to_owned(),
        };
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| err("not CIDR: write ADDRESS/PREFIX, e.g. 10.96.0.0/12"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| err("not an IPv4 or IPv6 address before the '/'"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| err("the prefix after '/' must be a number (0-32, 0-128 for IPv6)"))?;
        Cidr::new(addr, prefix).map_err(|e| CidrError {
            input: s.to_owned(),
            problem: e.problem,
        })
    }
}

/// Optional extensions of an accepted hello reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyExtensions {
    /// The cluster's address ranges (Service and Pod networks), as the
    /// server knows them; empty when it announces none.
    pub cluster_ranges: Vec<Cidr>,
    /// Catalog entries left out of the snapshot (too large for a frame).
    pub left_out: super::left_out::LeftOut,
}

impl ReplyExtensions {
    /// Appends the extensions present (nothing when empty).
    pub fn encode(&self, out: &mut BytesMut) {
        self.encode_ranges(out);
        self.left_out.encode(out);
    }

    fn encode_ranges(&self, out: &mut BytesMut) {
        if self.cluster_ranges.is_empty() {
            return;
        }
        let mut value = BytesMut::new();
        let ranges = &self.cluster_ranges[..self.cluster_ranges.len().min(MAX_RANGES)];
        value.put_u8(u8::try_from(ranges.len()).unwrap_or(u8::MAX));
        for r in ranges {
            match r.addr {
                IpAddr::V4(a) => {
                    value.put_u8(4);
                    value.put_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    value.put_u8(6);
                    value.put_slice(&a.octets());
                }
            }
            value.put_u8(r.prefix);
        }
        out.put_u8(TAG_CLUSTER_RANGES);
        // At most 64 * 18 + 1 bytes: always fits.
        out.put_u16(u16::try_from(value.len()).unwrap_or(u16::MAX));
        out.put_slice(&value);
    }

    /// Reads the extensions after the reply's message; `rest` is the whole
    /// remainder of the payload. Unknown tags are skipped.
    pub fn decode(mut rest: &[u8]) -> Result<ReplyExtensions, DecodeError> {
        let strict = |e: DecodeError| match e {
            DecodeError::UnexpectedEnd => DecodeError::invalid("hello extension", "truncated"),
            other => other,
        };
        let mut ext = ReplyExtensions::default();
        while rest.has_remaining() {
            let tag = get_u8(&mut rest).map_err(strict)?;
            let len = usize::from(get_u16(&mut rest).map_err(strict)?);
            if rest.remaining() < len {
                return Err(DecodeError::invalid("hello extension", "truncated"));
            }
            let (mut value, tail) = rest.split_at(len);
            rest = tail;
            if tag == super::left_out::TAG_LEFT_OUT {
                if !ext.left_out.is_empty() {
                    return Err(DecodeError::invalid(
                        "left-out entries",
                        "announced twice in one reply",
                    ));
                }
                ext.left_out = super::left_out::LeftOut::decode(value)?;
                continue;
            }
            if tag != TAG_CLUSTER_RANGES {
                continue;
            }
            if !ext.cluster_ranges.is_empty() {
                return Err(DecodeError::invalid(
                    "cluster ranges",
                    "announced twice in one reply",
                ));
            }
            let count = usize::from(get_u8(&mut value).map_err(strict)?);
            if count > MAX_RANGES {
                return Err(DecodeError::invalid(
                    "cluster ranges",
                    format!("{count} ranges, at most {MAX_RANGES}"),
                ));
            }
            for _ in 0..count {
                let addr = match get_u8(&mut value).map_err(strict)? {
                    4 if value.remaining() >= 4 => {
                        let mut o = [0; 4];
                        value.copy_to_slice(&mut o);
                        IpAddr::V4(Ipv4Addr::from(o))
                    }
                    6 if value.remaining() >= 16 => {
                        let mut o = [0; 16];
                        value.copy_to_slice(&mut o);
                        IpAddr::V6(Ipv6Addr::from(o))
                    }
                    4 | 6 => return Err(DecodeError::invalid("cluster ranges", "truncated")),
                    other => {
                        return Err(DecodeError::invalid(
                            "cluster ranges",
                            format!("unknown address family {other}"),
                        ))
                    }
                };
                let prefix = get_u8(&mut value).map_err(strict)?;
                let cidr = Cidr::new(addr, prefix)
                    .map_err(|e| DecodeError::invalid("cluster ranges", e.to_string()))?;
                ext.cluster_ranges.push(cidr);
            }
            if value.has_remaining() {
                return Err(DecodeError::invalid("cluster ranges", "trailing bytes"));
            }
        }
        Ok(ext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_contains_and_errors() {
        let svc = c("10.96.0.0/12");
        assert!(svc.contains("10.96.0.10".parse().unwrap()));
        assert!(svc.contains("10.111.255.255".parse().unwrap()));
        assert!(!svc.contains("10.112.0.0".parse().unwrap()));
        assert!(svc.contains("::ffff:10.96.0.1".parse().unwrap()));
        assert!(!svc.contains("fd00::1".parse().unwrap()));
        let v6 = c("fd00:10:96::/112");
        assert!(v6.contains("fd00:10:96::a".parse().unwrap()));
        assert!(!v6.contains("10.96.0.1".parse().unwrap()));
        assert!(c("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
        assert_eq!(c("10.96.0.0/12").to_string(), "10.96.0.0/12");
        let e = "10.96.0.1/12".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("write 10.96.0.0/12"), "{e}");
        for bad in ["10.96.0.0", "10.96.0.0/33", "x/8", "::/129", "10.0.0.0/a"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn extensions_round_trip_and_skip_unknown_tags() {
        let ext = ReplyExtensions {
            cluster_ranges: vec![c("10.96.0.0/12"), c("fd00::/108")],
            ..Default::default()
        };
        let mut out = BytesMut::new();
        // An unknown extension first: skipped.
        out.put_u8(200);
        out.put_u16(3);
        out.put_slice(b"abc");
        ext.encode(&mut out);
        assert_eq!(ReplyExtensions::decode(&out).unwrap(), ext);
        assert_eq!(ReplyExtensions::decode(&[]).unwrap(), Default::default());
        // Every truncation inside an extension is an error, never a panic
        // (byte 6 ends the unknown one: a whole, shorter list).
        for cut in (1..out.len()).filter(|&c| c != 6) {
            assert!(ReplyExtensions::decode(&out[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn bad_ranges_are_refused() {
        let mut out = BytesMut::new();
        out.put_u8(TAG_CLUSTER_RANGES);
        out.put_u16(7);
        out.put_slice(&[1, 4, 10, 96, 0, 1, 12]);
        let e = ReplyExtensions::decode(&out).unwrap_err().to_string();
        assert!(e.contains("host bits"), "{e}");
    }
}
