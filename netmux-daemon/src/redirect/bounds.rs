//! Which catalog addresses the eBPF redirect may take over, and who holds
//! each redirect.
//!
//! The redirect rewrites connects to a catalog address into the daemon, for
//! every process in the cgroup: a catalog entry naming `1.1.1.1` or the
//! API server would capture the workstation's own traffic. So an address is
//! redirected only when it is inside the endpoint's cluster ranges
//! (`cluster_cidrs` in its config, else what the server announced in its
//! hello), and never when it is loopback, link-local, not unicast, the
//! netmux server's own address or the Kubernetes API server's. Anything
//! else is left alone and listed in `netmux status` with the reason.
//!
//! Two endpoints may publish the same address (two clusters with the
//! default Service range). [`Owners`] gives each redirect to the endpoint
//! that installed it first; the other's service keeps its endpoint-qualified
//! names, and stopping either never removes the other's entries.
//!
//! Sans IO: both are plain data, tested without BPF.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use netmux_common::proto::cidr::Cidr;

/// The rules for one endpoint's catalog addresses.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bounds {
    /// The cluster's ranges.
    pub(crate) ranges: Vec<Cidr>,
    /// Where the ranges come from, for messages (`cluster_cidrs in the
    /// config`, `the server's hello`).
    pub(crate) source: String,
    /// Addresses never redirected, each with what it is (the netmux
    /// server, the API server).
    pub(crate) never: Vec<(IpAddr, &'static str)>,
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Bounds {
    /// `Ok` when `ip` may be redirected, else why not.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), String> {
        let ip = canonical(ip);
        let not_unicast = match ip {
            IpAddr::V4(a) => a.is_unspecified() || a.is_multicast() || a.is_broadcast(),
            IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
        };
        let link_local = match ip {
            IpAddr::V4(a) => a.is_link_local(),
            IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
        };
        if ip.is_loopback() {
            return Err(format!("{ip} is a loopback address: never redirected"));
        }
        if link_local {
            return Err(format!(
                "{ip} is link-local (metadata services live there): never redirected"
            ));
        }
        if not_unicast {
            return Err(format!("{ip} is not a unicast address: never redirected"));
        }
        if let Some((_, what)) = self.never.iter().find(|(a, _)| canonical(*a) == ip) {
            return Err(format!("{ip} is {what}: never redirected"));
        }
        if self.ranges.is_empty() {
            return Err(format!(
                "{ip}: no cluster ranges are known ({}): set cluster_cidrs for this endpoint",
                self.source
            ));
        }
        if !self.ranges.iter().any(|r| r.contains(ip)) {
            let list: Vec<String> = self.ranges.iter().map(Cidr::to_string).collect();
            return Err(format!(
                "{ip} is outside the cluster ranges [{}] ({})",
                list.join(", "),
                self.source
            ));
        }
        Ok(())
    }
}

/// Redirect key: a service address and whether it is UDP.
pub(crate) type Key = (SocketAddr, bool);

/// Who holds each redirect entry.
#[derive(Debug, Default)]
pub(crate) struct Owners {
    held: BTreeMap<Key, (String, SocketAddr)>,
}

impl Owners {
    /// Records `endpoint` as the holder of `key` (redirected to
    /// `listener`); `Err(holder)` when another endpoint holds it. The same
    /// endpoint may move its own entry to another listener.
    pub(crate) fn claim(
        &mut self,
        key: Key,
        endpoint: &str,
        listener: SocketAddr,
    ) -> Result<(), String> {
        match self.held.get(&key) {
            Some((holder, _)) if holder != endpoint => Err(holder.clone()),
            _ => {
                self.held.insert(key, (endpoint.to_owned(), listener));
                Ok(())
            }
        }
    }

    /// Gives `key` up if `endpoint` holds it with `listener`; returns
    /// whether it did (and so whether the map entry must go).
    pub(crate) fn release(&mut self, key: Key, endpoint: &str, listener: SocketAddr) -> bool {
        match self.held.get(&key) {
            Some((holder, l)) if holder == endpoint && *l == listener => {
                self.held.remove(&key);
                true
            }
            _ => false,
        }
    }

    /// The endpoint holding `key`.
    #[cfg(test)]
    pub(crate) fn holder(&self, key: &Key) -> Option<&str> {
        self.held.get(key).map(|(h, _)| h.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn bounds() -> Bounds {
        Bounds {
            ranges: vec![
                "10.96.0.0/12".parse().unwrap(),
                "fd00:10:96::/112".parse().unwrap(),
            ],
            source: "the server's hello".into(),
            never: vec![
                (ip("10.96.0.1"), "the Kubernetes API server's address"),
                (ip("10.96.0.2"), "the netmux server's address"),
            ],
        }
    }

    #[test]
    fn only_cluster_addresses_are_redirected() {
        let b = bounds();
        assert!(b.check(ip("10.96.0.10")).is_ok());
        assert!(b.check(ip("fd00:10:96::a")).is_ok());
        assert!(b.check(ip("::ffff:10.96.0.10")).is_ok());
        for (addr, why) in [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("0.0.0.0", "unicast"),
            ("224.0.0.1", "unicast"),
            ("255.255.255.255", "unicast"),
            ("ff02::1", "unicast"),
            ("10.96.0.1", "API server"),
            ("10.96.0.2", "netmux server"),
            (
                "1.1.1.1",
                "outside the cluster ranges [10.96.0.0/12, fd00:10:96::/112]",
            ),
            ("10.112.0.1", "outside"),
        ] {
            let e = b.check(ip(addr)).unwrap_err();
            assert!(e.contains(why), "{addr}: {e}");
        }
        let none = Bounds {
            source: "the server announced none".into(),
            ..Bounds::default()
        };
        let e = none.check(ip("10.96.0.10")).unwrap_err();
        assert!(e.contains("cluster_cidrs"), "{e}");
    }

    #[test]
    fn the_first_holder_keeps_an_entry_and_only_it_removes_it() {
        let mut o = Owners::default();
        let key = ("10.96.0.10:80".parse().unwrap(), false);
        let (la, lb): (SocketAddr, SocketAddr) = (
            "127.77.0.1:80".parse().unwrap(),
            "127.77.0.2:80".parse().unwrap(),
        );
        o.claim(key, "alpha", la).unwrap();
        assert_eq!(o.claim(key, "beta", lb), Err("alpha".into()));
        assert_eq!(o.holder(&key), Some("alpha"));
        // beta stopping removes nothing of alpha's.
        assert!(!o.release(key, "beta", lb));
        assert_eq!(o.holder(&key), Some("alpha"));
        // Nor does a stale listener of alpha's.
        assert!(!o.release(key, "alpha", lb));
        assert!(o.release(key, "alpha", la));
        assert_eq!(o.holder(&key), None);
        o.claim(key, "beta", lb).unwrap();
        assert_eq!(o.holder(&key), Some("beta"));
        // UDP is another entry.
        o.claim((key.0, true), "alpha", la).unwrap();
    }
}
