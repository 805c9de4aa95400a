//! Reverse (C2L) claims of one endpoint: which services this daemon asks
//! the server to send it, and where each cluster port goes locally.
//!
//! A claim has one local target per cluster port ([`Targets`]): a
//! connection to cluster port 18092 of a three-port service goes to the
//! target of 18092, never to the first port's. Streams and datagrams look
//! their target up with [`Claims::local_for`] by the port in their header.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use netmux_common::proto::catalog::{Direction, Protocol, Service};

/// What a reverse claim asks the server for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimKind {
    /// A C2L service of the catalog, by `namespace/name`.
    Catalog(String),
    /// An ad hoc service published by this daemon (`netmux expose`).
    Adhoc {
        /// Service name.
        name: String,
        /// Cluster-side port.
        port: u16,
    },
    /// An intercept of a cluster Service's port (`netmux intercept`,
    /// docs/intercept.md): its connections come here as reverse streams
    /// naming the L2C catalog entry and the port.
    Intercept {
        /// `namespace/name` of the catalog entry.
        service: String,
        /// The Service port.
        port: u16,
        /// Personal intercept's header (name lower-case, value); `None`:
        /// global.
        header: Option<(String, String)>,
        /// A mirror: copies of the requests, answers discarded.
        mirror: bool,
        /// A replace intercept: the workload is stopped meanwhile.
        replace: bool,
    },
    /// A workload no Service fronts, stopped while this daemon holds it
    /// (`netmux intercept EP deploy/worker --replace`).
    Stop(netmux_common::proto::replaced::Workload),
}

/// The claims-table name of the stop of `w`.
pub fn stop_name(w: &netmux_common::proto::replaced::Workload) -> String {
    format!("stop:{w}")
}

/// The claims-table name of the intercept of `service` port `port`.
pub fn intercept_name(service: &str, port: u16) -> String {
    format!("intercept:{service}:{port}")
}

impl ClaimKind {
    /// Whether catalog entry `svc` is the one this claim is about.
    pub(crate) fn is_for(&self, svc: &Service) -> bool {
        match self {
            ClaimKind::Catalog(key) => svc.direction == Direction::C2L && svc.key() == *key,
            ClaimKind::Adhoc { name, .. } => svc.direction == Direction::C2L && svc.name == *name,
            ClaimKind::Intercept { service, .. } => {
                svc.direction == Direction::L2C && svc.key() == *service
            }
            ClaimKind::Stop(_) => false,
        }
    }
}

/// Where a claim stands with the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimState {
    /// Not (yet) answered; sent again on every reconnect.
    Pending,
    /// Held: cluster connections come to this daemon.
    Held,
    /// Refused, with the server's reason.
    Refused(String),
}

/// The local target of each cluster port of a claimed service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Targets(BTreeMap<(u16, ProtocolKey), SocketAddr>);

/// [`Protocol`] as a map key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ProtocolKey {
    Tcp,
    Udp,
}

impl From<Protocol> for ProtocolKey {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => ProtocolKey::Tcp,
            Protocol::Udp => ProtocolKey::Udp,
        }
    }
}

impl Targets {
    /// Every port of catalog service `svc` to its `target_port` on `host`.
    pub(crate) fn for_service(svc: &Service, host: IpAddr) -> Self {
        Targets(
            svc.ports
                .iter()
                .map(|p| {
                    (
                        (p.port, p.protocol.into()),
                        SocketAddr::new(host, p.target_port),
                    )
                })
                .collect(),
        )
    }

    /// One TCP cluster port to `local` (`netmux expose`).
    pub(crate) fn one(port: u16, local: SocketAddr) -> Self {
        Targets([((port, ProtocolKey::Tcp), local)].into())
    }

    /// The local target of cluster `port`.
    pub(crate) fn get(&self, port: u16, protocol: Protocol) -> Option<SocketAddr> {
        self.0.get(&(port, protocol.into())).copied()
    }

    /// The local targets of the TCP ports.
    pub(crate) fn tcp(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.0
            .iter()
            .filter(|((_, p), _)| *p == ProtocolKey::Tcp)
            .map(|(_, addr)| *addr)
    }
}

/// A reverse service this daemon wants to hold.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    /// What is claimed.
    pub(crate) kind: ClaimKind,
    /// Where cluster connections go, per cluster port.
    pub(crate) targets: Targets,
    /// Where it stands.
    pub(crate) state: ClaimState,
    /// Who holds it as the server reports it (intercepts).
    pub(crate) holder: Option<String>,
    /// Connections or requests the server sent here (intercepts).
    pub(crate) served: u64,
}

/// The claims of one endpoint, keyed by a name the CLI uses; shared by
/// the endpoint task and the reverse stream and datagram handlers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Claims(Arc<Mutex<BTreeMap<String, Claim>>>);

impl Claims {
    /// The table (a panic elsewhere while it was held does not lose it).
    pub(crate) fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Claim>> {
        netmux_common::sync::lock(&self.0)
    }

    /// A copy of every claim with its name, for views.
    pub fn snapshot_named(&self) -> Vec<(String, Claim)> {
        self.lock()
            .iter()
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect()
    }

    /// Applies the server's report on this daemon's intercepts.
    pub fn report(&self, reports: &[netmux_common::proto::control::InterceptReport]) {
        for c in self.lock().values_mut() {
            let (service, port) = match &c.kind {
                ClaimKind::Intercept { service, port, .. } => (service.clone(), *port),
                ClaimKind::Stop(w) => (w.to_string(), 0),
                _ => continue,
            };
            if let Some(r) = reports
                .iter()
                .find(|r| r.service == service && r.port == port)
            {
                c.holder = Some(r.holder.clone());
                c.served = r.to_workstation;
            }
        }
    }

    /// A copy of every claim, for views.
    pub(crate) fn snapshot(&self) -> Vec<Claim> {
        self.lock().values().cloned().collect()
    }

    /// Where a connection to cluster `port` of `svc` goes, if this daemon
    /// claims `svc` and the claim has a target for that port.
    pub(crate) fn local_for(
        &self,
        svc: &Service,
        port: u16,
        protocol: Protocol,
    ) -> Option<SocketAddr> {
        self.lock()
            .values()
            .filter(|c| c.kind.is_for(svc))
            .find_map(|c| c.targets.get(port, protocol))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmux_common::proto::catalog::{ServiceId, ServicePort};

    fn three_ports() -> Service {
        let port = |port, target_port, protocol| ServicePort {
            name: None,
            port,
            target_port,
            protocol,
        };
        Service {
            id: ServiceId(3),
            name: "multi".into(),
            namespace: "demo".into(),
            aliases: vec![],
            addresses: vec![],
            ports: vec![
                port(18091, 19000, Protocol::Tcp),
                port(18092, 19001, Protocol::Tcp),
                port(18093, 19002, Protocol::Tcp),
                port(18093, 19003, Protocol::Udp),
            ],
            direction: Direction::C2L,
        }
    }

    #[test]
    fn each_cluster_port_goes_to_its_own_local_target() {
        let svc = three_ports();
        let claims = Claims::default();
        let lo = IpAddr::from([127, 0, 0, 1]);
        claims.lock().insert(
            svc.key(),
            Claim {
                kind: ClaimKind::Catalog(svc.key()),
                targets: Targets::for_service(&svc, lo),
                state: ClaimState::Held,
                holder: None,
                served: 0,
            },
        );
        for (port, local) in [(18091, 19000), (18092, 19001), (18093, 19002)] {
            assert_eq!(
                claims.local_for(&svc, port, Protocol::Tcp),
                Some(SocketAddr::new(lo, local)),
                "cluster port {port}"
            );
        }
        assert_eq!(
            claims.local_for(&svc, 18093, Protocol::Udp),
            Some(SocketAddr::new(lo, 19003))
        );
        // A port the service does not have, or a service not claimed.
        assert_eq!(claims.local_for(&svc, 18094, Protocol::Tcp), None);
        assert_eq!(claims.local_for(&svc, 18091, Protocol::Udp), None);
        let other = Service {
            name: "other".into(),
            ..three_ports()
        };
        assert_eq!(claims.local_for(&other, 18091, Protocol::Tcp), None);
    }

    #[test]
    fn an_exposed_service_has_its_one_port() {
        let svc = Service {
            ports: vec![ServicePort {
                name: None,
                port: 8080,
                target_port: 8080,
                protocol: Protocol::Tcp,
            }],
            ..three_ports()
        };
        let claims = Claims::default();
        let local: SocketAddr = "127.0.0.1:3000".parse().expect("literal");
        claims.lock().insert(
            "multi".into(),
            Claim {
                kind: ClaimKind::Adhoc {
                    name: "multi".into(),
                    port: 8080,
                },
                targets: Targets::one(8080, local),
                state: ClaimState::Pending,
                holder: None,
                served: 0,
            },
        );
        assert_eq!(claims.local_for(&svc, 8080, Protocol::Tcp), Some(local));
        assert_eq!(claims.local_for(&svc, 8081, Protocol::Tcp), None);
        assert_eq!(claims.snapshot().len(), 1);
    }
}
