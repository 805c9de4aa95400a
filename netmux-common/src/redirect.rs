//! Map types shared with the eBPF connect hooks (`netmux-ebpf`).
//!
//! Keys and values are `#[repr(C)]`, contain no `bool` and no implicit
//! padding, so the kernel and userspace agree on every byte. Addresses are
//! always 16 bytes: IPv4 is stored v4-mapped (`::ffff:a.b.c.d`), which is also
//! what an IPv6 socket passes to `connect()` for an IPv4 destination, so the
//! IPv4 and IPv6 hooks share one key space.

/// Destination of a connect() or sendmsg() the programs look up: an IPv6
/// address (IPv4 is stored v4-mapped, `::ffff:a.b.c.d`), a port, both in
/// network byte order, and the IP protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Address bytes, network order; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Port in network byte order (the in-memory bytes are big-endian).
    pub port: u16,
    /// IP protocol (6 = TCP, 17 = UDP).
    pub proto: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
}

/// Key of the `SERVICE_BY_LISTENER` map: a daemon UDP listener (address,
/// port, protocol), the source address of the replies recvmsg() translates
/// back to the service address. Same layout as [`ServiceKey`].
pub type ListenerKey = ServiceKey;

/// Where a matching connect() is sent instead: the daemon's local listener.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerTarget {
    /// Listener address bytes, network order; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Listener port in network byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub _pad: [u8; 2],
}

/// The destination an application passed to connect() before it was
/// rewritten, kept per socket cookie so getpeername() can report it. Also the
/// value of `SERVICE_BY_LISTENER`: the service address a UDP listener's
/// replies are reported from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OriginalDst {
    /// Address bytes, network order; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Port in network byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub _pad: [u8; 2],
}

/// Runtime settings of the programs, the single entry of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RedirectConfig {
    /// Sockets whose `SO_MARK` equals this value are never redirected (the
    /// daemon's own dials). Zero disables the check: unmarked sockets have
    /// mark 0 and must stay redirectable.
    pub exclude_mark: u32,
    /// Connections made by this process (thread group id) are never
    /// redirected either: the daemon's, including sockets it cannot mark
    /// (the Kubernetes client's connections to the API server). Zero
    /// disables the check.
    pub exclude_tgid: u32,
}

/// IP protocol number of TCP, as stored in [`ServiceKey::proto`].
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP, as stored in [`ServiceKey::proto`].
pub const PROTO_UDP: u8 = 17;

/// Index of the only entry of the `CONFIG` array map.
pub const CONFIG_INDEX: u32 = 0;

/// Capacity of the `SERVICES` map: published (address, port, protocol) triples.
pub const MAX_SERVICES: u32 = 16 * 1024;
/// Capacity of the `SERVICE_BY_LISTENER` map: one entry per UDP service.
pub const MAX_UDP_LISTENERS: u32 = MAX_SERVICES;
/// Capacity of the `ORIGINAL_DST` LRU map: redirected sockets remembered for
/// getpeername(); the least recently used entry is evicted when full.
pub const MAX_REDIRECTED_SOCKETS: u32 = 64 * 1024;

/// The `SO_MARK` the daemon puts on its own sockets by default so the hooks
/// leave them alone ("NMX\x01"); chosen to be unlikely to collide with
/// policy-routing marks.
pub const DEFAULT_EXCLUDE_MARK: u32 = 0x4e4d_5801;

/// Builds the v4-mapped form of an IPv4 address in network order.
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// Returns the IPv4 octets of a v4-mapped address, `None` for any other.
pub const fn v4_unmapped(addr: &[u8; 16]) -> Option<[u8; 4]> {
    match addr {
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d] => Some([*a, *b, *c, *d]),
        _ => None,
    }
}

#[cfg(feature = "std")]
mod socket_addr {
    use std::net::{IpAddr, Ipv6Addr, SocketAddr};

    use super::{v4_mapped, v4_unmapped, ListenerTarget, OriginalDst, ServiceKey};

    fn addr_bytes(ip: IpAddr) -> [u8; 16] {
        match ip {
            IpAddr::V4(v4) => v4_mapped(v4.octets()),
            IpAddr::V6(v6) => v6.octets(),
        }
    }

    fn socket_addr(addr: [u8; 16], port_be: u16) -> SocketAddr {
        let port = u16::from_be(port_be);
        match v4_unmapped(&addr) {
            Some(v4) => SocketAddr::from((v4, port)),
            None => SocketAddr::from((Ipv6Addr::from(addr), port)),
        }
    }

    impl ServiceKey {
        /// The key for `addr` and IP protocol `proto`. An IPv4 address and its
        /// v4-mapped IPv6 form give the same key.
        pub fn new(addr: SocketAddr, proto: u8) -> Self {
            Self {
                addr: addr_bytes(addr.ip()),
                port: addr.port().to_be(),
                proto,
                _pad: 0,
            }
        }

        /// The service address; v4-mapped addresses come back as IPv4.
        pub fn socket_addr(&self) -> SocketAddr {
            socket_addr(self.addr, self.port)
        }
    }

    impl From<SocketAddr> for ListenerTarget {
        fn from(addr: SocketAddr) -> Self {
            Self {
                addr: addr_bytes(addr.ip()),
                port: addr.port().to_be(),
                _pad: [0; 2],
            }
        }
    }

    impl From<ListenerTarget> for SocketAddr {
        fn from(t: ListenerTarget) -> Self {
            socket_addr(t.addr, t.port)
        }
    }

    impl From<OriginalDst> for SocketAddr {
        fn from(t: OriginalDst) -> Self {
            socket_addr(t.addr, t.port)
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is repr(C), Copy, has only integer fields with
    // explicit padding, so any bit pattern is valid.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ListenerTarget {}
    unsafe impl aya::Pod for super::OriginalDst {}
    unsafe impl aya::Pod for super::RedirectConfig {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 16 + 2 + 1 + 1);
        assert_eq!(size_of::<ListenerTarget>(), 16 + 2 + 2);
        assert_eq!(size_of::<OriginalDst>(), 16 + 2 + 2);
        assert_eq!(size_of::<RedirectConfig>(), 8);
    }

    #[test]
    fn v4_mapping_round_trips() {
        let m = v4_mapped([10, 96, 0, 10]);
        assert_eq!(v4_unmapped(&m), Some([10, 96, 0, 10]));
        let mut v6 = m;
        v6[10] = 0;
        assert_eq!(v4_unmapped(&v6), None);
    }

    #[cfg(feature = "std")]
    #[test]
    fn socket_addr_conversions() {
        use std::net::SocketAddr;

        let v4: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.96.0.10]:80".parse().unwrap();
        let key = ServiceKey::new(v4, PROTO_TCP);
        assert_eq!(key, ServiceKey::new(mapped, PROTO_TCP));
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
        assert_eq!(key.socket_addr(), v4);

        let v6: SocketAddr = "[fd00:96::10]:443".parse().unwrap();
        assert_eq!(ServiceKey::new(v6, PROTO_TCP).socket_addr(), v6);
        assert_eq!(SocketAddr::from(ListenerTarget::from(v6)), v6);
        assert_eq!(SocketAddr::from(ListenerTarget::from(v4)), v4);
    }
}
