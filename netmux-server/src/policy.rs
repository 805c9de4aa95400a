//! Where the server may dial: the target policy of the Kubernetes catalog.
//!
//! Namespace editors write `nx` annotations and the EndpointSlices of
//! selectorless Services; the server dials what they name. This policy is
//! the cluster admin's word on which of those addresses are acceptable:
//!
//! - never, unless `allow_unsafe_targets` names them: loopback, link-local
//!   (with the cloud metadata addresses 169.254.169.254 and
//!   fd00:ec2::254), unspecified, multicast and broadcast addresses, and
//!   the server's own addresses;
//! - otherwise, with `allowed_target_cidrs` set, only addresses inside
//!   those ranges;
//! - without it, the cluster's own ranges as far as the server knows them:
//!   addresses the cluster assigned itself (cluster IPs, which the API
//!   server allocates from the Service range, and pod addresses the
//!   EndpointSlice controller wrote for a Service with a selector).
//!
//! Sans IO: [`TargetPolicy::check`] is a pure function of its inputs.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;
use serde::Deserialize;

/// An address or CIDR from the configuration (`10.96.0.0/12`,
/// `fd00::/8`, or a bare address meaning just that one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr(pub IpNet);

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Cidr(IpNet::from(ip)));
        }
        Err(format!(
            "{s:?} is not an address or CIDR; fix: write it like \"10.96.0.0/12\", \"fd00::/8\" or \"10.0.0.9\""
        ))
    }
}

impl Cidr {
    /// Whether `ip` is inside.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&canonical(ip))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why an address is refused as a target. Its [`Refusal::label`] is a
/// metric label, so the set stays fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 169.254.0.0/16, fe80::/10, fd00:ec2::254 (cloud metadata).
    LinkLocal,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 224.0.0.0/4, 255.255.255.255, ff00::/8.
    Multicast,
    /// One of the server's own addresses.
    ServerAddress,
    /// Outside `allowed_target_cidrs`, or (without it) not assigned by the
    /// cluster.
    NotAllowed,
    /// A name or address of another namespace: annotation targets stay in
    /// the Service's own namespace.
    OtherNamespace,
}

impl Refusal {
    /// Bounded metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Loopback => "loopback",
            Refusal::LinkLocal => "link_local",
            Refusal::Unspecified => "unspecified",
            Refusal::Multicast => "multicast",
            Refusal::ServerAddress => "server_address",
            Refusal::NotAllowed => "not_allowed",
            Refusal::OtherNamespace => "other_namespace",
        }
    }

    /// What is wrong and the fix, for Events and logs.
    pub(crate) fn explain(self) -> &'static str {
        match self {
            Refusal::Loopback => "a loopback address is the server's own host; fix: name a cluster address (or the admin lists it in allow_unsafe_targets)",
            Refusal::LinkLocal => "a link-local address (incl. cloud metadata 169.254.169.254, fd00:ec2::254) is never dialled; fix: name a cluster address (or the admin lists it in allow_unsafe_targets)",
            Refusal::Unspecified => "an unspecified address is not a target; fix: name a cluster address",
            Refusal::Multicast => "a multicast or broadcast address is not a target; fix: name a cluster address",
            Refusal::ServerAddress => "it is the netmux server's own address; fix: name another address (or the admin lists it in allow_unsafe_targets)",
            Refusal::NotAllowed => "it is outside the targets the server allows (runtime.allowed_target_cidrs, by default the cluster's own Service and pod addresses); fix: point at a Service or pod, or ask the cluster admin to allow the range",
            Refusal::OtherNamespace => "annotation targets stay in the Service's own namespace; fix: annotate a Service in that namespace instead",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.explain())
    }
}

/// The admin's target policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TargetPolicy {
    /// `runtime.allowed_target_cidrs`; `None`: the cluster's own
    /// assignments only.
    pub(crate) allowed: Option<Vec<Cidr>>,
    /// `runtime.allow_unsafe_targets`: exceptions to the never-list.
    pub(crate) allow_unsafe: Vec<Cidr>,
    /// The server's own addresses (listen addresses, `POD_IP`, `POD_IPS`).
    pub(crate) server_addresses: Vec<IpAddr>,
}

/// `::ffff:a.b.c.d` is judged as `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The never-list class of `ip`, if any.
fn unsafe_class(ip: IpAddr) -> Option<Refusal> {
    const EC2_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some(Refusal::Loopback)
            } else if v4.is_link_local() {
                Some(Refusal::LinkLocal)
            } else if v4.octets()[0] == 0 {
                Some(Refusal::Unspecified)
            } else if v4.is_multicast() || v4.is_broadcast() {
                Some(Refusal::Multicast)
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some(Refusal::Loopback)
            } else if v6.is_unspecified() {
                Some(Refusal::Unspecified)
            } else if v6.is_multicast() {
                Some(Refusal::Multicast)
            } else if v6.segments()[0] & 0xffc0 == 0xfe80 || v6 == EC2_METADATA_V6 {
                Some(Refusal::LinkLocal)
            } else {
                None
            }
        }
    }
}

impl TargetPolicy {
    /// Whether the server may dial `ip`; `assigned`: the cluster assigned
    /// it (a cluster IP, or a pod address the EndpointSlice controller
    /// wrote).
    pub(crate) fn check(&self, ip: IpAddr, assigned: bool) -> Result<(), Refusal> {
        let ip = canonical(ip);
        if self.allow_unsafe.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        if let Some(class) = unsafe_class(ip) {
            return Err(class);
        }
        if self
            .server_addresses
            .iter()
            .any(|own| canonical(*own) == ip)
        {
            return Err(Refusal::ServerAddress);
        }
        let allowed = match &self.allowed {
            Some(list) => list.iter().any(|c| c.contains(ip)),
            None => assigned,
        };
        if allowed {
            Ok(())
        } else {
            Err(Refusal::NotAllowed)
        }
    }

    /// The server's own addresses from `POD_IP` / `POD_IPS` (downward API)
    /// plus `listen` addresses that name one (not `0.0.0.0`).
    pub(crate) fn own_addresses(listen: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
        let env = ["POD_IP", "POD_IPS"]
            .iter()
            .filter_map(|k| std::env::var(k).ok())
            .collect::<Vec<_>>();
        let mut out: Vec<IpAddr> = env
            .iter()
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .chain(listen.into_iter().filter(|ip| !ip.is_unspecified()))
            .map(canonical)
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        Cidr::try_from(s.to_owned()).unwrap()
    }

    #[test]
    fn the_never_list_holds_even_when_listed() {
        let p = TargetPolicy {
            allowed: Some(vec![cidr("0.0.0.0/0"), cidr("::/0")]),
            allow_unsafe: vec![],
            server_addresses: vec![ip("10.244.3.7")],
        };
        for (addr, why) in [
            ("127.0.0.1", Refusal::Loopback),
            ("127.9.9.9", Refusal::Loopback),
            ("::1", Refusal::Loopback),
            ("::ffff:127.0.0.1", Refusal::Loopback),
            ("169.254.169.254", Refusal::LinkLocal),
            ("::ffff:169.254.169.254", Refusal::LinkLocal),
            ("fe80::1", Refusal::LinkLocal),
            ("fd00:ec2::254", Refusal::LinkLocal),
            ("0.0.0.0", Refusal::Unspecified),
            ("::", Refusal::Unspecified),
            ("224.0.0.1", Refusal::Multicast),
            ("255.255.255.255", Refusal::Multicast),
            ("ff02::1", Refusal::Multicast),
            ("10.244.3.7", Refusal::ServerAddress),
            ("::ffff:10.244.3.7", Refusal::ServerAddress),
        ] {
            assert_eq!(p.check(ip(addr), true), Err(why), "{addr}");
        }
        assert_eq!(p.check(ip("8.8.8.8"), false), Ok(()));
        assert_eq!(p.check(ip("fd00:ec2::253"), false), Ok(()));
    }

    #[test]
    fn allow_unsafe_targets_names_exceptions() {
        let p = TargetPolicy {
            allowed: None,
            allow_unsafe: vec![cidr("127.0.0.1"), cidr("10.244.3.7/32")],
            server_addresses: vec![ip("10.244.3.7")],
        };
        assert_eq!(p.check(ip("127.0.0.1"), false), Ok(()));
        assert_eq!(p.check(ip("10.244.3.7"), false), Ok(()));
        assert_eq!(p.check(ip("127.0.0.2"), false), Err(Refusal::Loopback));
        assert_eq!(
            p.check(ip("169.254.169.254"), true),
            Err(Refusal::LinkLocal)
        );
    }

    #[test]
    fn without_a_list_only_cluster_assigned_addresses_pass() {
        let p = TargetPolicy::default();
        assert_eq!(p.check(ip("10.96.0.10"), true), Ok(()));
        assert_eq!(p.check(ip("10.96.0.10"), false), Err(Refusal::NotAllowed));
        let listed = TargetPolicy {
            allowed: Some(vec![cidr("10.96.0.0/12")]),
            ..TargetPolicy::default()
        };
        assert_eq!(listed.check(ip("10.100.0.1"), false), Ok(()));
        assert_eq!(
            listed.check(ip("10.244.0.5"), true),
            Err(Refusal::NotAllowed),
            "a list replaces the default"
        );
    }

    #[test]
    fn cidrs_parse_with_a_fix_in_the_error() {
        assert_eq!(cidr("10.96.0.1/12").to_string(), "10.96.0.0/12");
        assert_eq!(cidr("10.0.0.9").to_string(), "10.0.0.9/32");
        assert_eq!(cidr("fd00::1").to_string(), "fd00::1/128");
        let e = Cidr::try_from("10.0.0.0/33".to_owned()).unwrap_err();
        assert!(e.contains("fix:") && e.contains("10.0.0.0/33"), "{e}");
        assert!(Cidr::try_from("cluster".to_owned()).is_err());
    }

    #[test]
    fn own_addresses_skip_unspecified_listens() {
        let own = TargetPolicy::own_addresses([ip("0.0.0.0"), ip("10.1.2.3"), ip("::")]);
        assert!(own.contains(&ip("10.1.2.3")));
        assert!(!own.iter().any(IpAddr::is_unspecified));
    }
}
