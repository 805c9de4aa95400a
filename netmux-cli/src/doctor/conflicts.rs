//! Conflicts with the hosts file and the routing table in netmux's address range.

use std::net::Ipv4Addr;

use netmux_daemon::config::Ipv4Range;
use netmux_daemon::system::hosts;

use super::Check;

fn in_range(range: &Ipv4Range, a: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - range.prefix);
    u32::from(a) & mask == u32::from(range.network)
}

/// Hosts lines outside netmux's block that claim addresses of its range or
/// cluster names (`*.svc.DOMAIN`): they shadow or fight the daemon's.
pub(crate) fn hosts_conflicts(text: &str, range: &Ipv4Range, domains: &[String]) -> Check {
    const NAME: &str = "hosts-file";
    let outside = hosts::strip_block(text);
    let mut found = Vec::new();
    for line in outside.lines() {
        let l = line.split('#').next().unwrap_or("").trim();
        let mut words = l.split_whitespace();
        let Some(addr) = words.next() else { continue };
        let names: Vec<&str> = words.collect();
        let addr_conflict = addr.parse::<Ipv4Addr>().is_ok_and(|a| in_range(range, a));
        let name_conflict = names.iter().any(|n| {
            domains
                .iter()
                .any(|d| n.ends_with(&format!(".svc.{d}")) || n.ends_with(".svc"))
        });
        if addr_conflict || name_conflict {
            found.push(l.to_owned());
        }
    }
    if found.is_empty() {
        Check::pass(NAME, "no entries outside the netmux block conflict")
    } else {
        Check::fail(
            NAME,
            format!(
                "entries outside the netmux block conflict with netmux: {}",
                found.join(" | ")
            ),
            "remove them from the hosts file (they are likely left over from another tool)",
        )
    }
}

/// Routes (from `/proc/net/route`) for addresses of the range that do not
/// go to `lo`: connections to services would leave the machine.
pub(crate) fn route_conflicts(route_table: &str, range: &Ipv4Range) -> Check {
    const NAME: &str = "routes";
    let mut found = Vec::new();
    for l in route_table.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // Host-order hex of a network-order address: its native bytes are
        // the address bytes.
        let addr = |s: &str| {
            u32::from_str_radix(s, 16)
                .ok()
                .map(|v| u32::from(Ipv4Addr::from(v.to_ne_bytes())))
        };
        let (Some(dest), Some(mask)) = (addr(f[1]), addr(f[7])) else {
            continue;
        };
        if mask == 0 || f[0] == "lo" {
            continue; // the default route does not win over lo's 127/8
        }
        let rmask = u32::MAX << (32 - range.prefix);
        let common = mask & rmask;
        if dest & common == u32::from(range.network) & common {
            found.push(format!(
                "{}/{} dev {}",
                Ipv4Addr::from(dest),
                mask.count_ones(),
                f[0]
            ));
        }
    }
    if found.is_empty() {
        Check::pass(
            NAME,
            format!("{}/{} stays on lo", range.network, range.prefix),
        )
    } else {
        Check::fail(
            NAME,
            format!(
                "routes send {}/{} away from lo: {}",
                range.network,
                range.prefix,
                found.join(", ")
            ),
            "delete them (ip route del ...) or choose another address_range in the config",
        )
    }
}
