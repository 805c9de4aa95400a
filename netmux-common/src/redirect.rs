//! Map types shared with the eBPF connect hooks.
//!
//! Keys and values are `#[repr(C)]`, contain no `bool` and no implicit
//! padding, so the kernel and userspace agree on every byte.

/// Destination of a connect() the programs look up: an IPv6 address (IPv4 is
/// stored v4-mapped, `::ffff:a.b.c.d`) and a port, both in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Address bytes, network order; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Port in network byte order.
    pub port: u16,
    /// IP protocol (6 = TCP, 17 = UDP).
    pub proto: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
}

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

/// IP protocol number of TCP, as stored in [`ServiceKey::proto`].
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP, as stored in [`ServiceKey::proto`].
pub const PROTO_UDP: u8 = 17;

/// Builds the v4-mapped form of an IPv4 address in network order.
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both types are repr(C), Copy, have explicit padding and no
    // invalid bit patterns.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ListenerTarget {}
}
