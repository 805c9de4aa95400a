//! The service catalog: what a server publishes and a daemon may reach.
//!
//! The server's runtime (static file, Kubernetes) produces [`Service`]s; the
//! server sends them to each daemon as a snapshot then as [`CatalogEvent`]s
//! computed by [`diff`]. Names end up in hosts files and DNS answers, so every
//! entry is [`Service::validate`]d on both sides.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Stable id of a service within one server's catalog, used in stream
/// headers instead of names or addresses (the daemon never names an address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceId(pub u32);

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Which way connections flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Local to cluster: workstation processes reach a cluster service.
    L2C,
    /// Cluster to local: cluster workloads reach a workstation service.
    C2L,
}

impl Direction {
    /// Lower-case label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Direction::L2C => "l2c",
            Direction::C2L => "c2l",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::L2C => "L2C",
            Direction::C2L => "C2L",
        })
    }
}

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// One published port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    /// Port name (for SRV records), if any.
    pub name: Option<String>,
    /// The port clients dial (the Service port).
    pub port: u16,
    /// The port the server dials on the target.
    pub target_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
}

/// One published service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Service {
    /// Catalog id, stable while the service exists.
    pub id: ServiceId,
    /// Service name (DNS label).
    pub name: String,
    /// Namespace (DNS label).
    pub namespace: String,
    /// Extra fully-qualified names (per-pod names of headless services...).
    pub aliases: Vec<String>,
    /// Cluster addresses clients use; the server dials these, in order.
    pub addresses: Vec<IpAddr>,
    /// Published ports.
    pub ports: Vec<ServicePort>,
    /// L2C or C2L.
    pub direction: Direction,
}

/// Why a catalog entry is unacceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service {service:?}: {problem}")]
pub struct InvalidService {
    /// The service's name as given.
    pub service: String,
    /// What is wrong and how to fix it.
    pub problem: String,
}

/// Checks a DNS name: labels of `[a-z0-9-]`, 1..=63 bytes, not starting or
/// ending with `-`, 253 bytes at most.
pub fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

impl Service {
    /// `namespace/name`, the key users and logs refer to.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Looks up a published port by its client-facing number and protocol.
    pub fn port(&self, port: u16, protocol: Protocol) -> Option<&ServicePort> {
        self.ports
            .iter()
            .find(|p| p.port == port && p.protocol == protocol)
    }

    /// Rejects entries that could not be used safely (names written into
    /// hosts files, ports dialled).
    pub fn validate(&self) -> Result<(), InvalidService> {
        let fail = |problem: String| InvalidService {
            service: self.name.clone(),
            problem,
        };
        if !valid_dns_name(&self.name) || self.name.contains('.') {
            return Err(fail(
                "name must be one DNS label: lower-case letters, digits and '-'".into(),
            ));
        }
        if !valid_dns_name(&self.namespace) || self.namespace.contains('.') {
            return Err(fail(format!(
                "namespace {:?} must be one DNS label",
                self.namespace
            )));
        }
        for alias in &self.aliases {
            if !valid_dns_name(alias) {
                return Err(fail(format!(
                    "alias {alias:?} is not a valid DNS name (lower-case labels separated by '.')"
                )));
            }
        }
        if self.ports.is_empty() {
            return Err(fail("publishes no port; add at least one".into()));
        }
        for p in &self.ports {
            if p.port == 0 || p.target_port == 0 {
                return Err(fail("port 0 is not a valid port".into()));
            }
            if let Some(name) = &p.name {
                if !valid_dns_name(name) || name.contains('.') {
                    return Err(fail(format!("port name {name:?} must be one DNS label")));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.ports {
            if !seen.insert((p.port, p.protocol)) {
                return Err(fail(format!(
                    "port {} {:?} is listed twice",
                    p.port, p.protocol
                )));
            }
        }
        if self.direction == Direction::L2C && self.addresses.is_empty() {
            return Err(fail(
                "an L2C service needs at least one address to dial".into(),
            ));
        }
        Ok(())
    }
}

/// A change to a catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogEvent {
    /// A new service, or a new version of an existing id.
    Upsert(Service),
    /// The service with this id is gone.
    Remove(ServiceId),
}

/// A catalog keyed by id.
pub type Catalog = BTreeMap<ServiceId, Service>;

/// A catalog with an index by [`Service::key`] (`namespace/name`), for the
/// lookups by name the daemon makes on every reconcile and connection;
/// dereferences to the [`Catalog`]. Of two entries with the same key, the
/// one with the smaller id is found, as a scan in id order would.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Indexed {
    services: Catalog,
    by_key: std::collections::HashMap<String, ServiceId>,
}

impl Indexed {
    /// The service named `key` (`namespace/name`), if any.
    pub fn by_key(&self, key: &str) -> Option<&Service> {
        self.by_key.get(key).and_then(|id| self.services.get(id))
    }
}

impl From<Catalog> for Indexed {
    fn from(services: Catalog) -> Self {
        let mut by_key = std::collections::HashMap::with_capacity(services.len());
        for s in services.values() {
            by_key.entry(s.key()).or_insert(s.id);
        }
        Indexed { services, by_key }
    }
}

impl std::ops::Deref for Indexed {
    type Target = Catalog;
    fn deref(&self) -> &Catalog {
        &self.services
    }
}

/// Events that turn `old` into `new`: removals first, then upserts of what
/// is new or changed. Unchanged entries produce nothing.
pub fn diff(old: &Catalog, new: &Catalog) -> Vec<CatalogEvent> {
    let mut events: Vec<CatalogEvent> = old
        .keys()
        .filter(|id| !new.contains_key(id))
        .map(|id| CatalogEvent::Remove(*id))
        .collect();
    events.extend(
        new.iter()
            .filter(|(id, svc)| old.get(id) != Some(svc))
            .map(|(_, svc)| CatalogEvent::Upsert(svc.clone())),
    );
    events
}

/// Applies one event to a catalog.
pub fn apply(catalog: &mut Catalog, event: &CatalogEvent) {
    match event {
        CatalogEvent::Upsert(svc) => {
            catalog.insert(svc.id, svc.clone());
        }
        CatalogEvent::Remove(id) => {
            catalog.remove(id);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn svc(id: u32, name: &str) -> Service {
        Service {
            id: ServiceId(id),
            name: name.into(),
            namespace: "default".into(),
            aliases: vec![],
            addresses: vec!["10.96.0.1".parse().unwrap()],
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: 8080,
                protocol: Protocol::Tcp,
            }],
            direction: Direction::L2C,
        }
    }

    #[test]
    fn diff_then_apply_reaches_the_new_catalog() {
        let old: Catalog = [(ServiceId(1), svc(1, "a")), (ServiceId(2), svc(2, "b"))].into();
        let mut changed = svc(2, "b");
        changed.ports[0].port = 81;
        let new: Catalog = [(ServiceId(2), changed), (ServiceId(3), svc(3, "c"))].into();
        let events = diff(&old, &new);
        assert_eq!(events.len(), 3);
        let mut cat = old.clone();
        for e in &events {
            apply(&mut cat, e);
        }
        assert_eq!(cat, new);
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn validation_rejects_names_that_could_break_a_hosts_file() {
        let mut s = svc(1, "ok");
        assert!(s.validate().is_ok());
        s.name = "bad\nname".into();
        assert!(s.validate().is_err());
        let mut s = svc(1, "ok");
        s.aliases = vec!["kafka-0.kafka.ns.svc.cluster.local".into()];
        assert!(s.validate().is_ok());
        s.aliases = vec!["evil 1.2.3.4".into()];
        assert!(s.validate().is_err());
        let mut s = svc(1, "ok");
        s.ports.clear();
        assert!(s.validate().is_err());
        let mut s = svc(1, "ok");
        s.addresses.clear();
        assert!(s.validate().is_err());
    }

    #[test]
    fn the_index_finds_by_key_like_a_scan_in_id_order() {
        let mut c = Catalog::new();
        let entries = [
            (3, "a", "web"),
            (1, "b", "web"),
            (2, "a", "db"),
            (4, "a", "web"),
        ];
        for (id, ns, name) in entries {
            let mut s = svc(id, name);
            s.namespace = ns.into();
            c.insert(s.id, s);
        }
        let idx = Indexed::from(c.clone());
        for key in ["a/web", "b/web", "a/db", "c/none"] {
            let scan = c.values().find(|s| s.key() == key);
            assert_eq!(idx.by_key(key), scan, "{key}");
        }
        assert_eq!(idx.by_key("a/web").map(|s| s.id), Some(ServiceId(3)));
        assert_eq!(idx.len(), 4, "derefs to the catalog");
    }
}
