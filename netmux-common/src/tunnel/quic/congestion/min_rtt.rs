//! BBRv1's windowed minimum-RTT filter (netmux's own; not part of the quinn
//! port).
//!
//! quinn-proto 0.11's BBR reads `RttEstimator::min()`, the minimum over the
//! connection's whole life. A tunnel opened on a 0.05 ms path that later runs
//! over 20 ms keeps a BDP of `bandwidth × 0.05 ms` forever (BENCHMARKS.md,
//! History). BBRv1 (draft-cardwell-iccrg-bbr-congestion-control-00 §4.1.2.3,
//! Linux `tcp_bbr.c` `bbr_update_min_rtt`) keeps the minimum of the last
//! 10 s instead: a lower sample replaces it at once; once it is older than
//! the window the next sample replaces it whatever its value, and the
//! controller enters ProbeRTT to drain its queue so that a true minimum
//! follows within ~200 ms.
//!
//! Sans-IO: samples and `now` come from the caller.

use std::time::{Duration, Instant};

/// The lowest RTT sample of the last [`MinRttFilter::WINDOW`].
#[derive(Debug, Clone, Copy)]
pub struct MinRttFilter {
    window: Duration,
    /// The estimate and when its window started.
    current: Option<(Duration, Instant)>,
}

impl Default for MinRttFilter {
    fn default() -> Self {
        Self::new(Self::WINDOW)
    }
}

impl MinRttFilter {
    /// BBRv1's min-RTT window (`MinRTTFilterLen`, Linux `bbr_min_rtt_win_sec`).
    pub const WINDOW: Duration = Duration::from_secs(10);

    /// An empty filter whose estimates expire after `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            current: None,
        }
    }

    /// The current minimum, `None` before the first sample.
    pub fn get(&self) -> Option<Duration> {
        self.current.map(|(rtt, _)| rtt)
    }

    /// Whether the minimum is older than the window at `now`. An empty
    /// filter never expires (there is nothing to probe for yet).
    pub fn is_expired(&self, now: Instant) -> bool {
        match self.current {
            Some((_, since)) => now.saturating_duration_since(since) > self.window,
            None => false,
        }
    }

    /// Feeds one RTT sample taken at `now`: it replaces the minimum if it is
    /// lower, or if the minimum has expired. Returns whether the minimum had
    /// expired, which is when BBR enters ProbeRTT.
    pub fn update(&mut self, now: Instant, sample: Duration) -> bool {
        let expired = self.is_expired(now);
        match self.current {
            Some((rtt, _)) if sample >= rtt && !expired => {}
            _ => self.current = Some((sample, now)),
        }
        expired
    }

    /// Starts a new window at `now` keeping the value: ProbeRTT has just
    /// measured with an empty queue, so the minimum is confirmed.
    pub fn restart_window(&mut self, now: Instant) {
        if let Some((_, since)) = &mut self.current {
            *since = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAN: Duration = Duration::from_micros(50);
    const WAN: Duration = Duration::from_millis(20);

    /// Feeds `sample` every `every` from `from` for `span`; returns the end.
    fn feed(
        f: &mut MinRttFilter,
        from: Instant,
        span: Duration,
        every: Duration,
        sample: Duration,
    ) -> Instant {
        let mut t = from;
        while t < from + span {
            t += every;
            f.update(t, sample);
        }
        t
    }

    #[test]
    fn empty_filter_has_no_minimum_and_never_expires() {
        let f = MinRttFilter::default();
        let t0 = Instant::now();
        assert_eq!(f.get(), None);
        assert!(!f.is_expired(t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn first_sample_is_the_minimum_and_reports_no_expiry() {
        let mut f = MinRttFilter::default();
        assert!(!f.update(Instant::now(), WAN));
        assert_eq!(f.get(), Some(WAN));
    }

    #[test]
    fn lan_minimum_gives_way_to_wan_samples_after_the_window() {
        // The bench's case: the tunnel opens on lan, then the path is 20 ms.
        let mut f = MinRttFilter::default();
        let t0 = Instant::now();
        f.update(t0, LAN);
        let t = feed(&mut f, t0, Duration::from_millis(9_900), WAN, WAN);
        assert_eq!(
            f.get(),
            Some(LAN),
            "still inside the window at {:?}",
            t - t0
        );
        feed(&mut f, t, Duration::from_millis(500), WAN, WAN);
        assert_eq!(f.get(), Some(WAN), "10 s of 20 ms samples must give 20 ms");
    }

    #[test]
    fn expiry_is_reported_once_and_the_new_value_gets_a_fresh_window() {
        let mut f = MinRttFilter::default();
        let t0 = Instant::now();
        f.update(t0, LAN);
        let late = t0 + MinRttFilter::WINDOW + Duration::from_millis(1);
        assert!(f.update(late, WAN), "expired minimum must be reported");
        assert_eq!(f.get(), Some(WAN));
        assert!(!f.update(late + WAN, WAN), "the replacement is fresh");
        assert!(!f.is_expired(late + MinRttFilter::WINDOW));
        assert!(f.is_expired(late + MinRttFilter::WINDOW + Duration::from_millis(1)));
    }

    #[test]
    fn lower_sample_wins_at_once_and_restarts_the_window() {
        let mut f = MinRttFilter::default();
        let t0 = Instant::now();
        f.update(t0, WAN);
        let t1 = t0 + Duration::from_secs(9);
        assert!(!f.update(t1, Duration::from_millis(19)));
        assert_eq!(f.get(), Some(Duration::from_millis(19)));
        // The window now counts from t1, not t0.
        assert!(!f.is_expired(t0 + Duration::from_secs(11)));
        assert!(f.is_expired(t1 + MinRttFilter::WINDOW + Duration::from_millis(1)));
    }

    #[test]
    fn higher_sample_inside_the_window_is_ignored() {
        let mut f = MinRttFilter::default();
        let t0 = Instant::now();
        f.update(t0, WAN);
        f.update(t0 + Duration::from_secs(5), Duration::from_millis(80));
        assert_eq!(f.get(), Some(WAN));
    }

    #[test]
    fn probe_rtt_restart_keeps_the_value_and_extends_the_window() {
        let mut f = MinRttFilter::default();
        let t0 = Instant::now();
        f.update(t0, WAN);
        let t1 = t0 + Duration::from_secs(10);
        f.restart_window(t1);
        assert_eq!(f.get(), Some(WAN));
        assert!(!f.is_expired(t1 + Duration::from_secs(5)));
        assert!(!f.update(t1 + Duration::from_secs(5), Duration::from_millis(25)));
        assert_eq!(f.get(), Some(WAN));
    }
}
