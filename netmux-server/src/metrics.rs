//! Prometheus metrics of the server.
//!
//! Labels are bounded: `service` (namespace/name from the catalog, or
//! `unknown`), `direction`, `reason` from fixed sets; never peers or ports.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// All server metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Daemons currently connected.
    pub sessions_active: IntGauge,
    /// Daemon sessions by outcome of the hello.
    pub sessions_total: IntCounterVec,
    /// Services in the catalog.
    pub catalog_services: IntGauge,
    /// Proxied connections opened.
    pub connections_total: IntCounterVec,
    /// Proxied connections open now.
    pub connections_active: IntGaugeVec,
    /// Bytes sent towards daemons.
    pub bytes_sent: IntCounterVec,
    /// Bytes received from daemons.
    pub bytes_received: IntCounterVec,
    /// Failed or aborted connections by reason.
    pub connection_errors: IntCounterVec,
    /// Time to dial a target.
    pub connect_latency: HistogramVec,
    /// UDP datagrams by service, direction and way (sent/received).
    pub udp_datagrams: IntCounterVec,
    /// UDP payload bytes by service, direction and way.
    pub udp_bytes: IntCounterVec,
    /// UDP datagrams dropped by reason.
    pub udp_drops: IntCounterVec,
    /// UDP flows open now.
    pub udp_flows: IntGaugeVec,
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
            registry: r,
        }
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
