//! Helpers of `cargo xtask bench` (issue 7). Each binary is one tool:
//!
//! * `nx-delayline`: one direction of an emulated link (TUN in, AF_PACKET
//!   out), holding each packet for a fixed delay and dropping at random.
//! * `nx-quicperf`: a raw quinn sender and receiver, one stream, no relay:
//!   the QUIC ceiling for netmux's bulk numbers (same transport settings).
//! * `nx-probe`: connect latency, request latency under load, UDP echo
//!   latency at a fixed rate, many idle connections with the tunnel's
//!   memory per connection.
//!
//! Tools print one JSON object on stdout; the harness parses it.

pub mod gso;

/// Summary statistics of latency samples, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile (nearest rank).
    pub p95: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Stats {
    /// Statistics of `samples` (sorted in place); `None` when empty.
    pub fn of(samples: &mut [f64]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[i - 1]
        };
        Some(Stats {
            count: samples.len(),
            p50: rank(0.5),
            p95: rank(0.95),
            p99: rank(0.99),
            min: samples[0],
            max: samples[samples.len() - 1],
        })
    }

    /// As JSON fields (no braces), values in microseconds.
    pub fn json_fields(&self) -> String {
        format!(
            "\"count\":{},\"p50_us\":{:.1},\"p95_us\":{:.1},\"p99_us\":{:.1},\"min_us\":{:.1},\"max_us\":{:.1}",
            self.count, self.p50, self.p95, self.p99, self.min, self.max
        )
    }
}

/// A small xorshift generator: loss decisions need speed, not quality.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// Seeded generator (a zero seed is replaced).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stats::of(&mut v).expect("non-empty");
        assert_eq!(
            (s.p50, s.p95, s.p99, s.min, s.max),
            (50.0, 95.0, 99.0, 1.0, 100.0)
        );
        assert!(Stats::of(&mut []).is_none());
    }

    #[test]
    fn xorshift_stays_in_unit_interval() {
        let mut r = XorShift::new(0);
        let n = (0..10_000)
            .map(|_| r.next_f64())
            .filter(|x| *x < 0.01)
            .count();
        assert!((50..200).contains(&n), "about 1% below 0.01, got {n}");
    }
}
