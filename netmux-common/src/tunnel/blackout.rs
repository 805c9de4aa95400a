//! Blackouts: a path that stops answering (a closed lid, a train tunnel, a
//! VPN reconnecting) is kept, with its streams, up to a bound.
//!
//! Sans IO. A driver samples a connection's received-datagram counter and
//! two clocks and feeds them in; [`Health`] says whether the peer answers
//! ([`Phase::Healthy`]), has been silent for a while ([`Phase::Degraded`]:
//! the session is kept, the path is probed) or longer than the bound
//! ([`Phase::Expired`]: tear the session down). [`ResumeDetector`] notices
//! that the process did not run for a while (suspend, `SIGSTOP`) from a
//! jump of `CLOCK_BOOTTIME`, so the driver probes at once instead of waiting
//! for a timer. [`ProbeGate`] lets a probe out through a congestion window
//! filled by packets lost in the blackout.
//!
//! Times are [`Duration`]s since any fixed origin, so the daemon can feed
//! `CLOCK_BOOTTIME` (which counts suspended time: a laptop that slept 20
//! minutes has been silent 20 minutes, whatever `CLOCK_MONOTONIC` says).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Default for `survive_blackout`: how long a silent peer's session, its
/// streams and the TCP connections on both sides are kept.
pub const DEFAULT_SURVIVE_BLACKOUT: Duration = Duration::from_secs(600);
/// Shortest accepted `survive_blackout`.
pub const MIN_SURVIVE_BLACKOUT: Duration = Duration::from_secs(5);
/// Longest accepted `survive_blackout`.
pub const MAX_SURVIVE_BLACKOUT: Duration = Duration::from_secs(24 * 3600);
/// Silence after which a connection is shown `degraded`. Keepalives go
/// every second ([`super::quic::KEEPALIVE`]), so a healthy peer is never
/// this quiet.
pub const DEGRADED_AFTER: Duration = Duration::from_secs(3);
/// How often a degraded connection probes its path.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// A clock jump beyond the sampling interval this large means the process
/// did not run (suspend or `SIGSTOP`).
pub const RESUME_GAP: Duration = Duration::from_secs(2);

/// Parses a `survive_blackout` value: whole seconds (`600`) or a number
/// with a unit (`90s`, `10m`, `1h`), between [`MIN_SURVIVE_BLACKOUT`] and
/// [`MAX_SURVIVE_BLACKOUT`]. The error says what is accepted.
pub fn parse_bound(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(bound_error(text)),
    };
    let n: u64 = digits.parse().map_err(|_| bound_error(text))?;
    let d = Duration::from_secs(n.saturating_mul(scale));
    if d < MIN_SURVIVE_BLACKOUT || d > MAX_SURVIVE_BLACKOUT {
        return Err(format!(
            "survive_blackout {text:?} is out of range: use {}s to {}h",
            MIN_SURVIVE_BLACKOUT.as_secs(),
            MAX_SURVIVE_BLACKOUT.as_secs() / 3600
        ));
    }
    Ok(d)
}

fn bound_error(text: &str) -> String {
    format!("survive_blackout {text:?} is not a duration: write seconds (600) or 90s, 10m, 1h")
}

/// Formats a duration for people: `42s`, `3m07s`, `1h02m`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The peer answered within [`DEGRADED_AFTER`].
    Healthy,
    /// Nothing received for `silent_for` (≥ [`DEGRADED_AFTER`]); the
    /// session, streams and TCP connections are kept for `remaining` more.
    Degraded {
        /// Time since the last datagram from the peer.
        silent_for: Duration,
        /// Until the session is torn down.
        remaining: Duration,
    },
    /// Silent for the whole bound: tear the session down.
    Expired {
        /// Time since the last datagram from the peer.
        silent_for: Duration,
    },
}

/// What changed with an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing new.
    None,
    /// The peer went silent: show `degraded`, keep the session.
    Degraded,
    /// The peer answered again after a blackout of this length.
    Recovered(Duration),
    /// The blackout reached the bound.
    Expired,
}

/// Health of one connection from its received-datagram counter.
#[derive(Debug, Clone)]
pub struct Health {
    bound: Duration,
    last_rx_count: u64,
    last_rx_at: Duration,
    degraded: bool,
    expired: bool,
    last_probe: Option<Duration>,
}

impl Health {
    /// A connection that last heard from its peer at `now`; kept through
    /// blackouts up to `bound`.
    pub fn new(now: Duration, bound: Duration, rx_count: u64) -> Self {
        Health {
            bound,
            last_rx_count: rx_count,
            last_rx_at: now,
            degraded: false,
            expired: false,
            last_probe: None,
        }
    }

    /// The bound this connection survives.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// Feeds the peer's received-datagram counter as of `now`.
    pub fn observe(&mut self, now: Duration, rx_count: u64) -> Transition {
        if self.expired {
            return Transition::None;
        }
        if rx_count != self.last_rx_count {
            let silent = now.saturating_sub(self.last_rx_at);
            self.last_rx_count = rx_count;
            self.last_rx_at = now;
            self.last_probe = None;
            if std::mem::take(&mut self.degraded) {
                return Transition::Recovered(silent);
            }
            return Transition::None;
        }
        match self.phase(now) {
            Phase::Healthy => Transition::None,
            Phase::Degraded { .. } if self.degraded => Transition::None,
            Phase::Degraded { .. } => {
                self.degraded = true;
                Transition::Degraded
            }
            Phase::Expired { .. } => {
                self.expired = true;
                Transition::Expired
            }
        }
    }

    /// The phase at `now` (without a new observation).
    pub fn phase(&self, now: Duration) -> Phase {
        let silent_for = now.saturating_sub(self.last_rx_at);
        if silent_for >= self.bound {
            Phase::Expired { silent_for }
        } else if silent_for >= DEGRADED_AFTER {
            Phase::Degraded {
                silent_for,
                remaining: self.bound - silent_for,
            }
        } else {
            Phase::Healthy
        }
    }

    /// Whether a degraded connection should probe its path now; counts the
    /// probe as sent when it says yes.
    pub fn probe_due(&mut self, now: Duration) -> bool {
        if !self.degraded || self.expired {
            return false;
        }
        match self.last_probe {
            Some(t) if now.saturating_sub(t) < PROBE_INTERVAL => false,
            _ => {
                self.last_probe = Some(now);
                true
            }
        }
    }
}

/// Why the process did not run for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// The machine was suspended (`CLOCK_BOOTTIME` ran ahead of
    /// `CLOCK_MONOTONIC`) for this long.
    Suspended(Duration),
    /// The process was stopped or starved (both clocks ran) this long.
    Stalled(Duration),
}

impl Gap {
    /// How long the process did not run.
    pub fn length(&self) -> Duration {
        match *self {
            Gap::Suspended(d) | Gap::Stalled(d) => d,
        }
    }
}

/// Notices that the process did not run between two samples taken
/// `interval` apart.
#[derive(Debug, Clone)]
pub struct ResumeDetector {
    interval: Duration,
    last: Option<(Duration, Duration)>,
}

impl ResumeDetector {
    /// Samples are taken every `interval`.
    pub fn new(interval: Duration) -> Self {
        ResumeDetector {
            interval,
            last: None,
        }
    }

    /// Feeds `CLOCK_BOOTTIME` and `CLOCK_MONOTONIC` as of now.
    pub fn observe(&mut self, boottime: Duration, monotonic: Duration) -> Option<Gap> {
        let (boot0, mono0) = self.last.replace((boottime, monotonic))?;
        let boot = boottime.saturating_sub(boot0);
        let mono = monotonic.saturating_sub(mono0);
        let late = boot.saturating_sub(self.interval);
        if late < RESUME_GAP {
            return None;
        }
        let suspended = boot.saturating_sub(mono);
        Some(if suspended >= RESUME_GAP {
            Gap::Suspended(suspended)
        } else {
            Gap::Stalled(late)
        })
    }
}

/// Lets a few packets past the congestion window.
///
/// In a blackout every packet sent is lost but counts as in flight until an
/// acknowledgement says otherwise, so the window fills and only loss probes
/// go out, at exponentially growing intervals (quinn's PTO backoff reaches
/// minutes). When the path returns, the connection would wait for the next
/// one. A probe [`open`](Self::open)s the gate for a couple of packets and
/// wakes the connection: the first gets through, its acknowledgement
/// declares the blackout's packets lost and the connection moves again.
#[derive(Debug, Clone, Default)]
pub struct ProbeGate(Arc<AtomicU32>);

/// Packets a probe lets past the window.
pub const PROBE_PACKETS: u32 = 2;

impl ProbeGate {
    /// Lets the next [`PROBE_PACKETS`] packets past the window.
    pub fn open(&self) {
        self.0.store(PROBE_PACKETS, Ordering::Relaxed);
    }

    /// Packets still allowed past the window.
    pub fn remaining(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    fn sent(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Wraps a congestion controller factory so its controllers obey the gate.
    pub fn wrap(
        &self,
        inner: Arc<dyn quinn::congestion::ControllerFactory + Send + Sync>,
    ) -> Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> {
        Arc::new(GatedFactory {
            inner,
            gate: self.clone(),
        })
    }
}

struct GatedFactory {
    inner: Arc<dyn quinn::congestion::ControllerFactory + Send + Sync>,
    gate: ProbeGate,
}

impl quinn::congestion::ControllerFactory for GatedFactory {
    fn build(
        self: Arc<Self>,
        now: std::time::Instant,
        current_mtu: u16,
    ) -> Box<dyn quinn::congestion::Controller> {
        Box::new(Gated {
            inner: self.inner.clone().build(now, current_mtu),
            gate: self.gate.clone(),
        })
    }
}

/// A controller whose window is unlimited while its gate is open.
struct Gated {
    inner: Box<dyn quinn::congestion::Controller>,
    gate: ProbeGate,
}

/// The window while the gate is open: above anything in flight, and above
/// `u32::MAX` so the pacer does not hold the probe either.
const OPEN_WINDOW: u64 = u64::MAX / 4;

impl quinn::congestion::Controller for Gated {
    fn on_sent(&mut self, now: std::time::Instant, bytes: u64, last_packet_number: u64) {
        self.gate.sent();
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: std::time::Instant,
        sent: std::time::Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: std::time::Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: std::time::Instant,
        sent: std::time::Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        if self.gate.remaining() > 0 {
            OPEN_WINDOW
        } else {
            self.inner.window()
        }
    }

    fn metrics(&self) -> quinn::congestion::ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn quinn::congestion::Controller> {
        Box::new(Gated {
            inner: self.inner.clone_box(),
            gate: self.gate.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

/// How much longer than `survive_blackout` the QUIC idle timeout is: the
/// [`Health`] drivers end the session at the bound themselves, with a
/// reason and their bookkeeping, before quinn's timer would.
pub const IDLE_GRACE: Duration = Duration::from_secs(3);

/// Sets the QUIC idle timeout to `bound` (plus [`IDLE_GRACE`]): quinn
/// closes a connection whose peer was silent that long. The effective
/// timeout is the smaller of both ends' (RFC 9000 10.1), so daemon and
/// server must both allow the bound.
pub fn set_idle_timeout(t: &mut quinn::TransportConfig, bound: Duration) {
    match quinn::IdleTimeout::try_from(bound + IDLE_GRACE) {
        Ok(idle) => {
            t.max_idle_timeout(Some(idle));
        }
        Err(_) => tracing::warn!(
            ?bound,
            "idle timeout out of QUIC's range; keeping the default"
        ),
    }
}

#[cfg(test)]
mod tests;
