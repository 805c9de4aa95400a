//! The blackout state machine with injected time (no sockets, no clock).

use super::*;

const BOUND: Duration = Duration::from_secs(20);

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn silence_degrades_then_recovers_with_its_length() {
    let mut h = Health::new(s(100), BOUND, 7);
    assert_eq!(h.observe(s(101), 8), Transition::None);
    assert_eq!(h.phase(s(101)), Phase::Healthy);
    // Keepalives stop arriving.
    assert_eq!(h.observe(s(103), 8), Transition::None);
    assert_eq!(h.observe(s(104), 8), Transition::Degraded);
    assert_eq!(
        h.phase(s(104)),
        Phase::Degraded {
            silent_for: s(3),
            remaining: s(17)
        }
    );
    // Still degraded: no second transition.
    assert_eq!(h.observe(s(110), 8), Transition::None);
    assert_eq!(h.observe(s(111), 9), Transition::Recovered(s(10)));
    assert_eq!(h.phase(s(111)), Phase::Healthy);
}

#[test]
fn a_blackout_as_long_as_the_bound_expires_once() {
    let mut h = Health::new(s(0), BOUND, 0);
    assert_eq!(h.observe(s(5), 0), Transition::Degraded);
    assert_eq!(h.observe(s(19), 0), Transition::None);
    assert_eq!(h.observe(s(20), 0), Transition::Expired);
    assert_eq!(h.phase(s(21)), Phase::Expired { silent_for: s(21) });
    // A late datagram does not revive an expired session.
    assert_eq!(h.observe(s(22), 1), Transition::None);
    assert!(!h.probe_due(s(22)));
}

#[test]
fn a_resume_after_the_bound_expires_without_passing_through_degraded() {
    // Suspended past the bound: the first sample after resume already
    // sees the whole silence.
    let mut h = Health::new(s(0), BOUND, 3);
    assert_eq!(h.observe(s(1), 3), Transition::None);
    assert_eq!(h.observe(s(600), 3), Transition::Expired);
}

#[test]
fn probes_go_every_interval_while_degraded_only() {
    let mut h = Health::new(s(0), BOUND, 0);
    assert!(!h.probe_due(s(1)), "healthy connections are not probed");
    assert_eq!(h.observe(s(3), 0), Transition::Degraded);
    assert!(h.probe_due(s(3)));
    assert!(!h.probe_due(s(4)));
    assert!(h.probe_due(s(5)));
    assert_eq!(h.observe(s(6), 1), Transition::Recovered(s(6)));
    assert!(!h.probe_due(s(8)));
}

#[test]
fn resume_detector_tells_suspend_from_stall() {
    let interval = Duration::from_millis(500);
    let mut r = ResumeDetector::new(interval);
    assert_eq!(r.observe(s(10), s(10)), None);
    // On time, and a little late: nothing.
    assert_eq!(
        r.observe(s(10) + interval, s(10) + interval),
        None,
        "a regular tick"
    );
    assert_eq!(r.observe(s(12), s(12)), None, "1.5 s late is under the gap");
    // SIGSTOP for 90 s: both clocks ran.
    assert_eq!(
        r.observe(s(102), s(102)),
        Some(Gap::Stalled(s(90) - interval))
    );
    // Suspend for 20 min: only CLOCK_BOOTTIME ran.
    let g = r.observe(s(1302) + interval, s(102) + interval);
    assert_eq!(g, Some(Gap::Suspended(s(1200))));
    assert_eq!(g.map(|g| g.length()), Some(s(1200)));
}

#[test]
fn bounds_parse_with_units_and_refuse_nonsense() {
    assert_eq!(parse_bound("600"), Ok(s(600)));
    assert_eq!(parse_bound("90s"), Ok(s(90)));
    assert_eq!(parse_bound("10m"), Ok(s(600)));
    assert_eq!(parse_bound("1h"), Ok(s(3600)));
    for bad in ["", "ten minutes", "10 m", "5d", "-3", "1.5m"] {
        let e = parse_bound(bad).expect_err(bad);
        assert!(e.contains("10m"), "{bad}: {e}");
    }
    for out in ["1", "4s", "25h"] {
        let e = parse_bound(out).expect_err(out);
        assert!(e.contains("out of range"), "{out}: {e}");
    }
}

#[test]
fn human_durations() {
    assert_eq!(human(s(42)), "42s");
    assert_eq!(human(s(187)), "3m07s");
    assert_eq!(human(s(3720)), "1h02m");
}

#[test]
fn the_gate_lets_exactly_the_probe_packets_past_the_window() {
    let gate = ProbeGate::default();
    let factory = gate.wrap(Arc::new(quinn::congestion::NewRenoConfig::default()));
    let now = std::time::Instant::now();
    let mut c = factory.build(now, 1200);
    let closed = c.window();
    assert!(closed < u64::from(u32::MAX));
    gate.open();
    assert!(c.window() > u64::from(u32::MAX), "open: unlimited, unpaced");
    c.on_sent(now, 1200, 1);
    assert!(c.window() > u64::from(u32::MAX));
    c.on_sent(now, 1200, 2);
    assert_eq!(c.window(), closed, "closed again after PROBE_PACKETS");
    c.on_sent(now, 1200, 3);
    assert_eq!(gate.remaining(), 0);
    assert_eq!(c.metrics().congestion_window, closed);
}
