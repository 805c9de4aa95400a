//! Prometheus metrics of the daemon.
//!
//! Labels are bounded: `endpoint` (configured names), `service`
//! (namespace/name from the catalog), `direction`, `reason` from fixed sets;
//! never peers or ephemeral ports. An endpoint's series are deleted when a
//! reload removes it from the configuration ([`Metrics::forget_endpoint`]).

use netmux_common::metrics::forget;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All daemon metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// 1 while the endpoint's session is up.
    pub(crate) endpoint_up: IntGaugeVec,
    /// Proxied connections opened.
    pub(crate) connections_total: IntCounterVec,
    /// Proxied connections open now.
    pub(crate) connections_active: IntGaugeVec,
    /// Bytes sent towards the cluster.
    pub(crate) bytes_sent: IntCounterVec,
    /// Bytes received from the cluster.
    pub(crate) bytes_received: IntCounterVec,
    /// Failed or aborted connections by reason.
    pub(crate) connection_errors: IntCounterVec,
    /// Accept to server's open result.
    pub(crate) connect_latency: HistogramVec,
    /// UDP datagrams by way (sent into the tunnel / received from it).
    pub(crate) udp_datagrams: IntCounterVec,
    /// UDP payload bytes by way.
    pub(crate) udp_bytes: IntCounterVec,
    /// UDP datagrams dropped by reason.
    pub(crate) udp_drops: IntCounterVec,
    /// UDP flows open now.
    pub(crate) udp_flows: IntGaugeVec,
    /// 1 while the endpoint's server has not answered for a few seconds
    /// (the session is kept; [`crate::health`]).
    pub(crate) endpoint_degraded: IntGaugeVec,
    /// Length of the current blackout, 0 outside one.
    pub(crate) blackout_seconds: IntGaugeVec,
    /// Blackouts by how they ended (`recovered`, `expired`, `session_lost`).
    pub(crate) blackouts: IntCounterVec,
}

const LABELS: &[&str] = &["endpoint", "service", "direction"];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            if let Err(e) = r.register(Box::new(c.clone())) {
                tracing::error!(error = %e, "metric registration failed");
            }
            c
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("static metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric"),
            )
        };
        Metrics {
            endpoint_up: gauge(
                "netmux_daemon_endpoint_up",
                "1 while the endpoint session is up",
                &["endpoint"],
            ),
            connections_total: counter(
                "netmux_daemon_connections_total",
                "Proxied connections opened",
                LABELS,
            ),
            connections_active: gauge(
                "netmux_daemon_connections_active",
                "Proxied connections open now",
                LABELS,
            ),
            bytes_sent: counter(
                "netmux_daemon_bytes_sent_total",
                "Bytes sent towards the cluster",
                LABELS,
            ),
            bytes_received: counter(
                "netmux_daemon_bytes_received_total",
                "Bytes received from the cluster",
                LABELS,
            ),
            connection_errors: counter(
                "netmux_daemon_connection_errors_total",
                "Failed or aborted proxied connections by reason",
                &["endpoint", "service", "direction", "reason"],
            ),
            connect_latency: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "netmux_daemon_connect_latency_seconds",
                        "From accepting a local connection to the server's open result",
                    )
                    .buckets(
                        prometheus::exponential_buckets(0.0001, 2.5, 14).expect("static buckets"),
                    ),
                    LABELS,
                )
                .expect("static metric"),
            ),
            udp_datagrams: counter(
                "netmux_daemon_udp_datagrams_total",
                "UDP datagrams by way (sent into the tunnel / received from it)",
                &["endpoint", "service", "direction", "way"],
            ),
            udp_bytes: counter(
                "netmux_daemon_udp_bytes_total",
                "UDP payload bytes by way",
                &["endpoint", "service", "direction", "way"],
            ),
            udp_drops: counter(
                "netmux_daemon_udp_drops_total",
                "UDP datagrams dropped by reason",
                &["endpoint", "service", "direction", "reason"],
            ),
            udp_flows: gauge(
                "netmux_daemon_udp_flows_active",
                "UDP flows open now",
                LABELS,
            ),
            endpoint_degraded: gauge(
                "netmux_daemon_endpoint_degraded",
                "1 while the server has not answered for a few seconds (session kept)",
                &["endpoint"],
            ),
            blackout_seconds: gauge(
                "netmux_daemon_blackout_seconds",
                "Length of the current blackout, 0 outside one",
                &["endpoint"],
            ),
            blackouts: counter(
                "netmux_daemon_blackouts_total",
                "Blackouts by how they ended (recovered, expired, session_lost)",
                &["endpoint", "outcome"],
            ),
            registry: r,
        }
    }

    /// Deletes every series labelled `endpoint = name` (the endpoint left
    /// the configuration).
    pub(crate) fn forget_endpoint(&self, name: &str) {
        let e = "endpoint";
        forget(&self.endpoint_up, e, name);
        forget(&self.connections_total, e, name);
        forget(&self.connections_active, e, name);
        forget(&self.bytes_sent, e, name);
        forget(&self.bytes_received, e, name);
        forget(&self.connection_errors, e, name);
        forget(&self.connect_latency, e, name);
        forget(&self.udp_datagrams, e, name);
        forget(&self.udp_bytes, e, name);
        forget(&self.udp_drops, e, name);
        forget(&self.udp_flows, e, name);
        forget(&self.endpoint_degraded, e, name);
        forget(&self.blackout_seconds, e, name);
        forget(&self.blackouts, e, name);
    }

    /// Text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Serves `/metrics` on `listener` until aborted.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        use axum::routing::get;
        let app = axum::Router::new().route(
            "/metrics",
            get(move || {
                let m = self.clone();
                async move { m.render() }
            }),
        );
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server failed");
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One series of every metric for endpoint `ep`.
    pub(crate) fn touch_every_series(m: &Metrics, ep: &str) {
        let svc = [ep, "shop/web", "l2c"];
        m.endpoint_up.with_label_values(&[ep]).set(1);
        m.connections_total.with_label_values(&svc).inc();
        m.connections_active.with_label_values(&svc).inc();
        m.bytes_sent.with_label_values(&svc).inc();
        m.bytes_received.with_label_values(&svc).inc();
        m.connection_errors
            .with_label_values(&[ep, "shop/web", "l2c", "refused"])
            .inc();
        m.connect_latency.with_label_values(&svc).observe(0.01);
        m.udp_datagrams
            .with_label_values(&[ep, "shop/web", "l2c", "sent"])
            .inc();
        m.udp_bytes
            .with_label_values(&[ep, "shop/web", "l2c", "sent"])
            .inc();
        m.udp_drops
            .with_label_values(&[ep, "shop/web", "l2c", "flow_limit"])
            .inc();
        m.udp_flows.with_label_values(&svc).inc();
        m.endpoint_degraded.with_label_values(&[ep]).set(1);
        m.blackout_seconds.with_label_values(&[ep]).set(3);
        m.blackouts.with_label_values(&[ep, "recovered"]).inc();
    }

    #[test]
    fn forgetting_an_endpoint_deletes_its_series_only() {
        let m = Metrics::new();
        touch_every_series(&m, "gone");
        touch_every_series(&m, "kept");
        m.forget_endpoint("gone");
        let text = m.render();
        assert!(!text.contains("endpoint=\"gone\""), "{text}");
        for family in m.registry.gather() {
            assert!(
                family
                    .get_metric()
                    .iter()
                    .any(|s| s.get_label().iter().any(|l| l.value() == "kept")),
                "{} lost the kept endpoint's series",
                family.name()
            );
        }
    }
}
