//! Prometheus metrics of the server.
//!
//! Labels are bounded: `service` (namespace/name from the catalog, or
//! `unknown`), `direction`, `reason` from fixed sets; never peers or ports.
//! A service's series are deleted when it leaves the catalog
//! ([`Metrics::forget_service`]), so churn does not grow the exposition.

use netmux_common::metrics::forget;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// All server metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Daemons currently connected.
    pub sessions_active: IntGauge,
    /// Daemon sessions by outcome of the hello.
    pub(crate) sessions_total: IntCounterVec,
    /// Services in the catalog.
    pub(crate) catalog_services: IntGauge,
    /// Catalog entries (or addresses) not published, by reason (Kubernetes
    /// runtime: target policy, invalid annotation, name conflict).
    pub catalog_refused: IntCounterVec,
    /// Proxied connections opened.
    pub(crate) connections_total: IntCounterVec,
    /// Proxied connections open now.
    pub(crate) connections_active: IntGaugeVec,
    /// Bytes sent towards daemons.
    pub(crate) bytes_sent: IntCounterVec,
    /// Bytes received from daemons.
    pub(crate) bytes_received: IntCounterVec,
    /// Failed or aborted connections by reason.
    pub(crate) connection_errors: IntCounterVec,
    /// Time to dial a target.
    pub(crate) connect_latency: HistogramVec,
    /// UDP datagrams by service, direction and way (sent/received).
    pub(crate) udp_datagrams: IntCounterVec,
    /// UDP payload bytes by service, direction and way.
    pub(crate) udp_bytes: IntCounterVec,
    /// UDP datagrams dropped by reason.
    pub udp_drops: IntCounterVec,
    /// UDP flows open now.
    pub(crate) udp_flows: IntGaugeVec,
    /// QUIC connections and `stream_listen` peers refused by a cap
    /// (`[limits]`), by reason.
    pub peers_refused: IntCounterVec,
    /// QUIC Retries sent to make a peer prove its address (half the
    /// pending-hello places taken).
    pub address_validations: IntCounter,
    /// Requests of an authenticated daemon refused by a per-session limit:
    /// `streams`, `udp_flows`, `claims`.
    pub session_limit_refusals: IntCounterVec,
    /// Sessions whose daemon has not answered for a few seconds (kept up
    /// to `survive_blackout`; [`crate::retention`]).
    pub sessions_degraded: IntGauge,
    /// Blackouts of daemon sessions by how they ended: `recovered`,
    /// `expired` (longer than `survive_blackout`), `evicted`
    /// (`max_blackout_sessions`).
    pub blackouts: IntCounterVec,
    /// Requests (connections, for global intercepts) of intercepted
    /// Services by `route`: `workstation` or `pods`.
    pub(crate) intercept_requests: IntCounterVec,
    /// Body bytes (both ways) of intercepted Services by `route`.
    pub(crate) intercept_bytes: IntCounterVec,
}

/// `limit` label values of [`Metrics::session_limit_refusals`].
pub(crate) mod limit {
    /// Proxied streams at once (`limits.max_streams_per_session`).
    pub(crate) const STREAMS: &str = "streams";
    /// UDP flows at once (`max_udp_flows`), either direction.
    pub(crate) const UDP_FLOWS: &str = "udp_flows";
    /// Claims and exposes held at once (`limits.max_claims_per_session`).
    pub(crate) const CLAIMS: &str = "claims";
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are static and unique, so registration cannot collide.
    if let Err(e) = r.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "metric registration failed");
    }
    c
}

const SVC: &[&str] = &["service", "direction"];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("static metric"),
            )
        };
        Metrics {
            sessions_active: register(
                &r,
                IntGauge::new("netmux_server_sessions_active", "Daemons connected now")
                    .expect("static metric"),
            ),
            sessions_total: counter(
                "netmux_server_sessions_total",
                "Daemon sessions by hello outcome",
                &["result"],
            ),
            catalog_services: register(
                &r,
                IntGauge::new("netmux_server_catalog_services", "Services in the catalog")
                    .expect("static metric"),
            ),
            catalog_refused: counter(
                "netmux_server_catalog_refused_total",
                "Catalog entries or addresses not published, by reason",
                &["reason"],
            ),
            connections_total: counter(
                "netmux_server_connections_total",
                "Proxied connections opened",
                SVC,
            ),
            connections_active: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "netmux_server_connections_active",
                        "Proxied connections open now",
                    ),
                    SVC,
                )
                .expect("static metric"),
            ),
            bytes_sent: counter(
                "netmux_server_bytes_sent_total",
                "Bytes sent towards daemons",
                SVC,
            ),
            bytes_received: counter(
                "netmux_server_bytes_received_total",
                "Bytes received from daemons",
                SVC,
            ),
            connection_errors: counter(
                "netmux_server_connection_errors_total",
                "Failed or aborted proxied connections by reason",
                &["service", "direction", "reason"],
            ),
            connect_latency: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "netmux_server_connect_latency_seconds",
                        "Time to dial a target",
                    )
                    .buckets(
                        prometheus::exponential_buckets(0.0001, 2.5, 14).expect("static buckets"),
                    ),
                    SVC,
                )
                .expect("static metric"),
            ),
            udp_datagrams: counter(
                "netmux_server_udp_datagrams_total",
                "UDP datagrams by way (sent towards daemons / received from them)",
                &["service", "direction", "way"],
            ),
            udp_bytes: counter(
                "netmux_server_udp_bytes_total",
                "UDP payload bytes by way",
                &["service", "direction", "way"],
            ),
            udp_drops: counter(
                "netmux_server_udp_drops_total",
                "UDP datagrams dropped by reason",
                &["service", "direction", "reason"],
            ),
            udp_flows: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("netmux_server_udp_flows_active", "UDP flows open now"),
                    SVC,
                )
                .expect("static metric"),
            ),
            peers_refused: counter(
                "netmux_server_peers_refused_total",
                "Connections and stream_listen peers refused by a [limits] cap, by reason",
                &["reason"],
            ),
            address_validations: register(
                &r,
                IntCounter::new(
                    "netmux_server_address_validations_total",
                    "QUIC Retries sent under load (half the pending-hello places taken)",
                )
                .expect("static metric"),
            ),
            intercept_requests: counter(
                "netmux_server_intercept_requests_total",
                "Requests (connections for global intercepts) of intercepted Services, by route (workstation, pods)",
                &["service", "route"],
            ),
            intercept_bytes: counter(
                "netmux_server_intercept_bytes_total",
                "Bytes of intercepted Services' requests and responses, by route",
                &["service", "route"],
            ),
            session_limit_refusals: counter(
                "netmux_server_session_limit_refusals_total",
                "Requests of a daemon refused by a per-session limit",
                &["limit"],
            ),
            sessions_degraded: register(
                &r,
                IntGauge::new(
                    "netmux_server_sessions_degraded",
                    "Sessions whose daemon has not answered for a few seconds (kept up to survive_blackout)",
                )
                .expect("static metric"),
            ),
            blackouts: counter(
                "netmux_server_blackouts_total",
                "Blackouts of daemon sessions by outcome (recovered, expired, evicted)",
                &["outcome"],
            ),
            registry: r,
        }
    }

    /// Deletes every series labelled `service = key` (the service left the
    /// catalog). Handles still held by open connections keep working; their
    /// updates just no longer show.
    pub(crate) fn forget_service(&self, key: &str) {
        forget(&self.connections_total, "service", key);
        forget(&self.connections_active, "service", key);
        forget(&self.bytes_sent, "service", key);
        forget(&self.bytes_received, "service", key);
        forget(&self.connection_errors, "service", key);
        forget(&self.connect_latency, "service", key);
        forget(&self.udp_datagrams, "service", key);
        forget(&self.udp_bytes, "service", key);
        forget(&self.udp_drops, "service", key);
        forget(&self.udp_flows, "service", key);
        forget(&self.intercept_requests, "service", key);
        forget(&self.intercept_bytes, "service", key);
    }

    /// Text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_a_service_deletes_its_series_only() {
        let m = Metrics::new();
        for svc in ["shop/web", "shop/db"] {
            m.connections_total.with_label_values(&[svc, "l2c"]).inc();
            m.connections_active.with_label_values(&[svc, "l2c"]).inc();
            m.bytes_sent.with_label_values(&[svc, "l2c"]).inc_by(5);
            m.bytes_received.with_label_values(&[svc, "l2c"]).inc_by(5);
            m.connection_errors
                .with_label_values(&[svc, "c2l", "refused"])
                .inc();
            m.connect_latency
                .with_label_values(&[svc, "l2c"])
                .observe(0.01);
            m.udp_datagrams
                .with_label_values(&[svc, "l2c", "sent"])
                .inc();
            m.udp_bytes.with_label_values(&[svc, "l2c", "sent"]).inc();
            m.udp_drops
                .with_label_values(&[svc, "l2c", "flow_limit"])
                .inc();
            m.udp_flows.with_label_values(&[svc, "l2c"]).inc();
        }
        let held = m.connections_active.with_label_values(&["shop/web", "l2c"]);
        m.forget_service("shop/web");
        let text = m.render();
        assert!(!text.contains("shop/web"), "{text}");
        assert!(text.contains("service=\"shop/db\""), "{text}");
        held.dec(); // a connection that outlived its service
        assert!(!m.render().contains("shop/web"));
    }
}
