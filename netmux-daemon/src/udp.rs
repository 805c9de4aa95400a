//! UDP on the daemon side: L2C listeners originate flows into the tunnel;
//! C2L flows from the server are answered by dialling the local target of
//! the claim. The flow machinery is `netmux_common::tunnel::udp`.

use std::net::SocketAddr;
use std::sync::Arc;

use netmux_common::proto::catalog::{Indexed, ServiceId};
use netmux_common::tunnel::udp::{Drop, Flows, UdpMeter, Way};
use quinn::Connection;
use tokio::sync::watch;

use crate::claims::Claims;
use crate::metrics::Metrics;

/// A flow idle this long is closed.
pub(crate) const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// C2L UDP flows one endpoint answers at once.
pub(crate) const MAX_ANSWERED: usize = 1024;

/// Accounts UDP traffic under endpoint and catalog names.
pub(crate) struct Meter {
    metrics: Metrics,
    endpoint: String,
    catalog: watch::Receiver<Arc<Indexed>>,
}

impl Meter {
    /// A meter for `endpoint`, labelling by its catalog.
    pub(crate) fn new(
        metrics: Metrics,
        endpoint: String,
        catalog: watch::Receiver<Arc<Indexed>>,
    ) -> Arc<Self> {
        Arc::new(Meter {
            metrics,
            endpoint,
            catalog,
        })
    }

    fn labels(&self, service: Option<ServiceId>) -> (String, &'static str) {
        netmux_common::tunnel::udp::metric_labels(&self.catalog.borrow(), service)
    }
}

impl UdpMeter for Meter {
    fn datagram(&self, service: ServiceId, way: Way, bytes: usize) {
        let (svc, dir) = self.labels(Some(service));
        let way = way.label();
        let l = [self.endpoint.as_str(), &svc, dir, way];
        self.metrics.udp_datagrams.with_label_values(&l).inc();
        self.metrics
            .udp_bytes
            .with_label_values(&l)
            .inc_by(bytes as u64);
    }

    fn dropped(&self, service: Option<ServiceId>, why: Drop) {
        let (svc, dir) = self.labels(service);
        self.metrics
            .udp_drops
            .with_label_values(&[&self.endpoint, &svc, dir, why.label()])
            .inc();
    }

    fn flows(&self, service: ServiceId, delta: i64) {
        let (svc, dir) = self.labels(Some(service));
        self.metrics
            .udp_flows
            .with_label_values(&[&self.endpoint, &svc, dir])
            .add(delta);
    }
}

/// Handles the server's datagrams on `conn` until it closes: replies to
/// L2C flows, and C2L flows to the local targets of held claims.
pub(crate) async fn serve(
    conn: Connection,
    flows: Arc<Flows>,
    claims: Claims,
    catalog: watch::Receiver<Arc<Indexed>>,
) {
    while let Ok(bytes) = conn.read_datagram().await {
        let resolve = |id: ServiceId, port: u16| -> Option<SocketAddr> {
            let catalog = catalog.borrow();
            let svc = catalog.get(&id)?;
            claims.local_for(svc, port, netmux_common::proto::catalog::Protocol::Udp)
        };
        flows
            .receive(&conn, &bytes, resolve, crate::redirect::exempt)
            .await;
    }
    flows.clear_answered();
}
