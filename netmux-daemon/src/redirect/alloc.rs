//! Hands out local addresses from the configured loopback range, one per
//! started service, so every service can listen on its own ports.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::config::Ipv4Range;

/// Allocates addresses from a range; never the network or broadcast address.
#[derive(Debug)]
pub(crate) struct AddressAllocator {
    range: Ipv4Range,
    used: BTreeSet<Ipv4Addr>,
}

impl AddressAllocator {
    /// An allocator over `range`.
    pub(crate) fn new(range: Ipv4Range) -> Self {
        AddressAllocator {
            range,
            used: BTreeSet::new(),
        }
    }

    /// The lowest free address, or `None` when the range is exhausted.
    pub(crate) fn allocate(&mut self) -> Option<Ipv4Addr> {
        let base = u32::from(self.range.network);
        let size = 1u32 << (32 - self.range.prefix);
        (1..size - 1)
            .map(|i| Ipv4Addr::from(base + i))
            .find(|a| !self.used.contains(a))
            .inspect(|a| {
                self.used.insert(*a);
            })
    }

    /// Returns an address to the pool.
    pub(crate) fn release(&mut self, addr: Ipv4Addr) {
        self.used.remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_free_and_exhausts() {
        let mut a = AddressAllocator::new("127.77.0.0/30".parse().unwrap());
        assert_eq!(a.allocate(), Some(Ipv4Addr::new(127, 77, 0, 1)));
        assert_eq!(a.allocate(), Some(Ipv4Addr::new(127, 77, 0, 2)));
        assert_eq!(a.allocate(), None);
        a.release(Ipv4Addr::new(127, 77, 0, 1));
        assert_eq!(a.allocate(), Some(Ipv4Addr::new(127, 77, 0, 1)));
    }
}
