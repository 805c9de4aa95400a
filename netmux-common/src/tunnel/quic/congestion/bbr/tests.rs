//! Unit tests of the BBR controller (kept beside `bbr.rs` so that file
//! stays under ~800 lines).

use super::*;

const PACKET: u64 = 1200;

/// A sender limited by the controller's window on a path with one
/// bottleneck of `rate` bytes/s and a propagation RTT that the test
/// changes mid-way; every packet is acked on its own, nothing is lost.
/// Sans-IO: time is simulated, the next event is jumped to.
struct Path {
    bbr: Bbr,
    now: Instant,
    rate: f64,
    prop_rtt: Duration,
    /// When the bottleneck is free again.
    link_free: Instant,
    /// (ack arrival, sent at, packet number), in arrival order.
    in_flight: std::collections::VecDeque<(Instant, Instant, u64)>,
    next_pn: u64,
    /// (ack arrival, bytes) of every delivered packet.
    delivered: Vec<(Instant, u64)>,
    /// Packets one ACK frame covers: the receiver acknowledges every
    /// `ack_every`th arrival, and quinn reports all the frame's packets at
    /// one instant.
    ack_every: usize,
}

impl Path {
    fn new(rate_mbit: f64, prop_rtt: Duration) -> Self {
        let config = Arc::new(BbrConfig {
            seed: Some(7),
            ..BbrConfig::default()
        });
        let now = Instant::now();
        Self {
            bbr: Bbr::new(config, PACKET as u16),
            now,
            rate: rate_mbit * 1e6 / 8.0,
            prop_rtt,
            link_free: now,
            in_flight: Default::default(),
            next_pn: 0,
            delivered: Vec::new(),
            ack_every: 1,
        }
    }

    fn bytes_in_flight(&self) -> u64 {
        self.in_flight.len() as u64 * PACKET
    }

    fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        while self.now < end {
            while self.bytes_in_flight() + PACKET <= self.bbr.window() {
                let start = self.link_free.max(self.now);
                self.link_free = start + Duration::from_secs_f64(PACKET as f64 / self.rate);
                let arrival = self.link_free + self.prop_rtt;
                self.bbr.on_sent(self.now, PACKET, self.next_pn);
                self.in_flight.push_back((arrival, self.now, self.next_pn));
                self.next_pn += 1;
            }
            // The frame goes when its last packet has arrived.
            let frame: Vec<_> = self
                .in_flight
                .drain(..self.ack_every.min(self.in_flight.len()))
                .collect();
            let Some(&(arrival, _, pn)) = frame.last() else {
                panic!("window {} lets nothing out", self.bbr.window());
            };
            self.now = self.now.max(arrival);
            for &(_, sent, _) in &frame {
                self.bbr.on_ack_packet(self.now, sent, PACKET, false);
                self.delivered.push((self.now, PACKET));
            }
            let in_flight = self.bytes_in_flight();
            self.bbr.on_end_acks(self.now, in_flight, false, Some(pn));
        }
    }

    /// Delivered rate over the last `span`, in Mbit/s.
    fn recent_mbit(&self, span: Duration) -> f64 {
        let from = self.now - span;
        let bytes: u64 = self
            .delivered
            .iter()
            .filter(|(t, _)| *t >= from)
            .map(|(_, b)| b)
            .sum();
        bytes as f64 * 8.0 / span.as_secs_f64() / 1e6
    }
}

#[test]
fn fills_a_path_whose_rtt_grew_after_a_lan_start() {
    // The bench's scenario 2 without loss: the tunnel opens on a
    // 0.05 ms path, which then becomes 20 ms. A lifetime minimum would
    // hold the window at the floor of a sub-millisecond path, the initial
    // window (~96 Mbit/s at 20 ms). (A 0.05 ms path is a fast one: at
    // 20 Mbit/s that floor would be a standing queue of 96 ms.)
    let mut path = Path::new(200.0, Duration::from_micros(50));
    path.run_for(Duration::from_secs(2));
    assert!(path.bbr.min_rtt() < Duration::from_millis(1));
    path.prop_rtt = Duration::from_millis(20);
    path.run_for(Duration::from_secs(14));
    let min_rtt = path.bbr.min_rtt();
    assert!(
        min_rtt >= Duration::from_millis(20) && min_rtt < Duration::from_millis(25),
        "min RTT {min_rtt:?} should follow the path to 20 ms"
    );
    let mbit = path.recent_mbit(Duration::from_secs(2));
    assert!(mbit > 160.0, "{mbit:.1} Mbit/s of 200 after the RTT grew");
}

#[test]
fn reaches_the_bottleneck_rate_from_startup() {
    let mut path = Path::new(20.0, Duration::from_millis(20));
    path.run_for(Duration::from_secs(4));
    let mbit = path.recent_mbit(Duration::from_secs(2));
    assert!(mbit > 16.0, "{mbit:.1} Mbit/s of 20");
    // Startup is over. (It stays in Drain here: quinn does not pace at
    // BBR's pacing rate, and this sender fills the window at once.)
    assert!(path.bbr.is_at_full_bandwidth);
}

#[test]
fn estimates_the_bottleneck_when_one_ack_covers_many_packets() {
    // quinn acknowledges several packets per ACK frame and reports them at
    // one instant. Per-packet rates then gave one packet per ACK interval
    // (a tenth of the rate here), everything above it counted as ACK
    // aggregation, and the window grew without bound.
    let mut path = Path::new(100.0, Duration::from_millis(1));
    path.ack_every = 10;
    path.run_for(Duration::from_secs(3));
    let rate = path.rate as u64;
    let estimate = path.bbr.max_bandwidth.get_estimate();
    assert!(
        estimate > rate * 8 / 10 && estimate < rate * 5 / 4,
        "bandwidth estimate {estimate} B/s for a {rate} B/s bottleneck"
    );
    let bdp = rate / 1000;
    let window = path.bbr.window();
    assert!(
        window < 8 * bdp,
        "window {window} B for a {bdp} B bandwidth-delay product"
    );
    let mbit = path.recent_mbit(Duration::from_secs(1));
    assert!(mbit > 80.0, "{mbit:.1} Mbit/s of 100");
}

#[test]
fn the_window_stays_at_the_initial_window_on_a_path_of_microseconds() {
    // One packet per 40 µs round trip: twice the bandwidth-delay product
    // is about two packets, but the tunnel's bursts need more.
    let mut bbr = Bbr::new(Arc::new(BbrConfig::default()), PACKET as u16);
    let mut now = Instant::now();
    for pn in 0..1000 {
        let sent = now;
        bbr.on_sent(sent, PACKET, pn);
        now += Duration::from_micros(40);
        bbr.on_ack_packet(now, sent, PACKET, false);
        bbr.on_end_acks(now, 0, false, Some(pn));
    }
    assert!(bbr.is_at_full_bandwidth, "Startup is over");
    assert!(bbr.get_target_cwnd(bbr.cwnd_gain) <= 4 * PACKET);
    assert_eq!(bbr.window(), bbr.initial_window());
}

#[test]
fn no_probe_rtt_before_the_first_rtt_sample() {
    let mut bbr = Bbr::new(Arc::new(BbrConfig::default()), 1200);
    let now = Instant::now();
    bbr.on_sent(now, 1200, 0);
    bbr.on_end_acks(now, 1200, false, None);
    assert_eq!(bbr.mode, Mode::Startup);
    assert_eq!(bbr.window(), bbr.initial_window());
}

#[test]
fn gain_cycle_offsets_stay_in_range() {
    let mut rng = XorShift64::new(0);
    let mut seen = [false; 7];
    for _ in 0..1000 {
        let r = rng.below(7);
        seen[usize::from(r)] = true;
    }
    assert!(seen.iter().all(|&s| s), "all offsets drawn: {seen:?}");
}
