//! UDP services for one daemon: QUIC datagrams in, one connected UDP socket
//! per flow to catalog addresses only (L2C), and replies back; C2L UDP
//! flows originate in [`crate::reverse`].

use std::net::SocketAddr;
use std::sync::Arc;

use netmux_common::proto::catalog::{Catalog, Direction, Protocol, ServiceId};
use netmux_common::tunnel::udp::{Drop, Flows, UdpMeter, Way};
use quinn::Connection;
use tokio::sync::watch;

use crate::access::Identity;
use crate::metrics::Metrics;
use crate::Server;

/// Accounts UDP traffic under the catalog's service names.
pub(crate) struct Meter {
    metrics: Metrics,
    catalog: watch::Receiver<Arc<Catalog>>,
}

impl Meter {
    /// A meter labelling by `catalog`.
    pub(crate) fn new(metrics: Metrics, catalog: watch::Receiver<Arc<Catalog>>) -> Arc<Self> {
        Arc::new(Meter { metrics, catalog })
    }

    fn labels(&self, service: Option<ServiceId>) -> (String, &'static str) {
        netmux_common::tunnel::udp::metric_labels(&self.catalog.borrow(), service)
    }
}

impl UdpMeter for Meter {
    fn datagram(&self, service: ServiceId, way: Way, bytes: usize) {
        let (svc, dir) = self.labels(Some(service));
        // Server view: `sent` goes towards the daemon.
        let way = way.label();
        self.metrics
            .udp_datagrams
            .with_label_values(&[&svc, dir, way])
            .inc();
        self.metrics
            .udp_bytes
            .with_label_values(&[&svc, dir, way])
            .inc_by(bytes as u64);
    }

    fn dropped(&self, service: Option<ServiceId>, why: Drop) {
        if why == Drop::FlowLimit {
            self.metrics
                .session_limit_refusals
                .with_label_values(&[crate::metrics::limit::UDP_FLOWS])
                .inc();
        }
        let (svc, dir) = self.labels(service);
        self.metrics
            .udp_drops
            .with_label_values(&[&svc, dir, why.label()])
            .inc();
    }

    fn flows(&self, service: ServiceId, delta: i64) {
        let (svc, dir) = self.labels(Some(service));
        self.metrics
            .udp_flows
            .with_label_values(&[&svc, dir])
            .add(delta);
    }
}

/// Resolves an L2C UDP flow's target: a published UDP port of an L2C
/// service the daemon may reach; never an address named by the daemon.
pub(crate) fn resolve(
    catalog: &Catalog,
    server: &Server,
    who: &Identity,
    service: ServiceId,
    port: u16,
) -> Option<SocketAddr> {
    let svc = catalog.get(&service)?;
    if svc.direction != Direction::L2C || !server.access.may_reach(who, svc) {
        return None;
    }
    let p = svc.port(port, Protocol::Udp)?;
    svc.addresses
        .first()
        .map(|ip| SocketAddr::new(*ip, p.target_port))
}

/// Handles the daemon's datagrams until the connection ends.
pub(crate) async fn serve(conn: Connection, server: Arc<Server>, who: Identity, flows: Arc<Flows>) {
    let sweeper = tokio::spawn(flows.clone().sweep());
    while let Ok(bytes) = conn.read_datagram().await {
        let catalog = server.catalog.borrow().clone();
        flows
            .receive(
                &conn,
                &bytes,
                |id, port| resolve(&catalog, &server, &who, id, port),
                |_| {},
            )
            .await;
    }
    sweeper.abort();
    flows.clear_answered();
}
