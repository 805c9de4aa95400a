//! The Prometheus side of [`Hooks`]: one proxied connection's series,
//! resolved once per connection, for the daemon (`endpoint`, `service`,
//! `direction`) and the server (`service`, `direction`) alike.

use std::time::Duration;

use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use super::Hooks;
use crate::tunnel::pipe::Meter;

/// The metric families a proxied connection reports to; every family but
/// `errors` has the same labels, `errors` has one more: `reason`.
pub struct Families<'a> {
    /// `connections_total`.
    pub total: &'a IntCounterVec,
    /// `connections_active`.
    pub active: &'a IntGaugeVec,
    /// Bytes from TCP into the stream.
    pub sent: &'a IntCounterVec,
    /// Bytes from the stream into TCP.
    pub received: &'a IntCounterVec,
    /// `connection_errors`, by `reason` after the other labels.
    pub errors: &'a IntCounterVec,
    /// `connect_latency`.
    pub latency: &'a HistogramVec,
}

/// [`Families`] of a metrics struct whose fields are named as the daemon's
/// and the server's are: `connections_total`, `connections_active`,
/// `bytes_sent`, `bytes_received`, `connection_errors`, `connect_latency`.
#[macro_export]
macro_rules! stream_families {
    ($metrics:expr) => {
        $crate::tunnel::stream::Families {
            total: &$metrics.connections_total,
            active: &$metrics.connections_active,
            sent: &$metrics.bytes_sent,
            received: &$metrics.bytes_received,
            errors: &$metrics.connection_errors,
            latency: &$metrics.connect_latency,
        }
    };
}

/// One connection's series.
pub struct Counters {
    labels: Vec<String>,
    total: IntCounter,
    active: IntGauge,
    sent: IntCounter,
    received: IntCounter,
    errors: IntCounterVec,
    latency: prometheus::Histogram,
    peer_down: &'static str,
}

impl Counters {
    /// The series of `families` with `labels`; `peer_down` is the error
    /// reason when the peer's connection cannot carry a stream.
    pub fn new(families: &Families<'_>, labels: &[&str], peer_down: &'static str) -> Self {
        Counters {
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            total: families.total.with_label_values(labels),
            active: families.active.with_label_values(labels),
            sent: families.sent.with_label_values(labels),
            received: families.received.with_label_values(labels),
            errors: families.errors.clone(),
            latency: families.latency.with_label_values(labels),
            peer_down,
        }
    }
}

impl Meter for Counters {
    fn tcp_to_stream(&self, n: usize) {
        self.sent.inc_by(n as u64);
    }
    fn stream_to_tcp(&self, n: usize) {
        self.received.inc_by(n as u64);
    }
}

impl Hooks for Counters {
    fn peer_down(&self) -> &'static str {
        self.peer_down
    }

    fn opened(&self) {
        self.total.inc();
    }

    fn answered(&self, connected: bool, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
        if connected {
            self.active.inc();
        }
    }

    fn failed(&self, reason: &str) {
        let mut labels: Vec<&str> = self.labels.iter().map(String::as_str).collect();
        labels.push(reason);
        self.errors.with_label_values(&labels).inc();
    }

    fn closed(&self) {
        self.active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{HistogramOpts, Opts};

    #[test]
    fn each_hook_moves_its_series_once() {
        let labels = ["svc", "l2c"];
        let counter = |name: &str, extra: &[&str]| {
            let mut l = vec!["service", "direction"];
            l.extend_from_slice(extra);
            IntCounterVec::new(Opts::new(name, name), &l).expect("metric")
        };
        let (total, sent, received, errors) = (
            counter("t", &[]),
            counter("s", &[]),
            counter("r", &[]),
            counter("e", &["reason"]),
        );
        let active =
            IntGaugeVec::new(Opts::new("a", "a"), &["service", "direction"]).expect("metric");
        let latency = HistogramVec::new(HistogramOpts::new("l", "l"), &["service", "direction"])
            .expect("metric");
        let c = Counters::new(
            &Families {
                total: &total,
                active: &active,
                sent: &sent,
                received: &received,
                errors: &errors,
                latency: &latency,
            },
            &labels,
            "endpoint_down",
        );
        c.opened();
        c.tcp_to_stream(5);
        c.stream_to_tcp(7);
        c.answered(true, Duration::from_millis(3));
        assert_eq!(active.with_label_values(&labels).get(), 1);
        c.failed("tcp_reset");
        c.failed(c.peer_down());
        c.closed();
        assert_eq!(total.with_label_values(&labels).get(), 1);
        assert_eq!(sent.with_label_values(&labels).get(), 5);
        assert_eq!(received.with_label_values(&labels).get(), 7);
        assert_eq!(active.with_label_values(&labels).get(), 0);
        assert_eq!(latency.with_label_values(&labels).get_sample_count(), 1);
        assert_eq!(
            errors.with_label_values(&["svc", "l2c", "tcp_reset"]).get(),
            1
        );
        assert_eq!(
            errors
                .with_label_values(&["svc", "l2c", "endpoint_down"])
                .get(),
            1
        );
    }
}
