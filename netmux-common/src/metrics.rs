//! Prometheus helpers shared by daemon and server (feature `metrics`).

use std::collections::HashMap;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};

/// Deletes every series of `vec` whose label `label` is `value` (a
/// service that left the catalog, an endpoint removed from the config),
/// so churn does not grow the exposition. Handles still held keep
/// working; their updates no longer show.
pub fn forget<T: MetricVecBuilder>(vec: &MetricVec<T>, label: &str, value: &str) {
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels: HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if labels.get(label) == Some(&value) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounterVec, Opts};

    #[test]
    fn only_the_matching_series_go() {
        let v = IntCounterVec::new(Opts::new("t", "t"), &["endpoint", "service"]).unwrap();
        v.with_label_values(&["a", "x"]).inc();
        v.with_label_values(&["a", "y"]).inc();
        v.with_label_values(&["b", "x"]).inc();
        let held = v.with_label_values(&["a", "x"]);
        forget(&v, "endpoint", "a");
        let left: Vec<String> = v.collect()[0]
            .get_metric()
            .iter()
            .map(|m| m.get_label()[0].value().to_owned())
            .collect();
        assert_eq!(left, ["b"]);
        held.inc();
        assert_eq!(
            v.collect()[0].get_metric().len(),
            1,
            "a held handle does not bring it back"
        );
    }
}
