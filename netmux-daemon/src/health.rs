//! Endpoint health across blackouts: a laptop's sleep, a train tunnel, a
//! change of network.
//!
//! The QUIC connection's idle timeout is the endpoint's `survive_blackout`
//! (default 10 minutes), so a silent path no longer ends the session after
//! seconds. This driver watches the connection instead
//! ([`netmux_common::tunnel::blackout`] decides, with `CLOCK_BOOTTIME` as
//! its clock so a suspended laptop's sleep counts):
//!
//! - after [`DEGRADED_AFTER`] without a datagram from the server the
//!   endpoint shows `degraded` (status, `ls`, metrics); every stream and the
//!   TCP connections on both sides are kept;
//! - while degraded, and at once after a resume (suspend or `SIGSTOP`), it
//!   probes the path ([`crate::transport::probe_path`]). A closed port
//!   (the server process is gone) ends the session now; an answer means the
//!   path is back: the probe gate lets a packet past the congestion window
//!   filled in the blackout, and the endpoint's socket is rebound
//!   (`Endpoint::rebind`), from the new local address if it changed, so the
//!   server migrates to a fresh path instead of waiting out its PTO
//!   backoff. A server that answers probes but not the session has lost it
//!   (it restarted): the session ends and the endpoint reconnects;
//! - while healthy, a new local address toward the server (a roam, a VPN
//!   coming up), or a route whose MTU no longer carries the session's
//!   packets, migrates the session at once;
//! - every migration restarts the path's congestion control, RTT estimate
//!   and MTU discovery, as the new path may have other limits;
//! - after `survive_blackout` of silence the session is closed; open
//!   connections get resets.
//!
//! New connections while degraded wait up to [`CONNECT_WAIT`] for the path
//! to come back, then get a reset (see [`wait_usable`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use netmux_common::proto::error_code;
use netmux_common::sync::lock;
use netmux_common::tunnel::blackout::{
    human, Gap, Health, Phase, ProbeGate, ResumeDetector, Transition, DEGRADED_AFTER,
};
use quinn::{Connection, VarInt};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::status::EndpointStatus;
use crate::transport::{PathProbe, Route, QUIC_MIN_PACKET};

/// How often the connection's counters are sampled.
const TICK: Duration = Duration::from_millis(500);
/// How long a new connection waits for a degraded endpoint's path.
pub(crate) const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// Probes the server answers while the session stays silent before the
/// session is taken as lost by the server.
const ANSWERED_BUT_SILENT: u32 = 3;

/// The current blackout of an endpoint, for status and doctor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Blackout {
    /// Time since the server last answered.
    pub(crate) silent_for: Duration,
    /// Until the session is torn down.
    pub(crate) remaining: Duration,
    /// The endpoint's `survive_blackout`.
    pub(crate) bound: Duration,
}

impl Blackout {
    /// One line for `netmux status` and doctor.
    pub(crate) fn describe(&self) -> String {
        format!(
            "no answer from the server for {}; the session and its open connections are kept {} more, then reset (survive_blackout {})",
            human(self.silent_for),
            human(self.remaining),
            human(self.bound)
        )
    }
}

/// What the health driver shares with the endpoint.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The current blackout, if any.
    pub(crate) blackout: Option<Blackout>,
    /// Connections open (`service (direction)` and count) as last seen
    /// while the session was alive: what a lost session takes with it.
    pub(crate) open: Vec<(String, i64)>,
}

/// The shared state behind a lock that survives a panicked holder.
pub(crate) type SharedState = Arc<Mutex<Shared>>;

/// Degraded flags of live connections, by `Connection::stable_id`, for the
/// listeners (which hold only the connection).
static DEGRADED: LazyLock<Mutex<HashMap<usize, watch::Receiver<bool>>>> =
    LazyLock::new(Default::default);

struct Registration(usize);

impl Registration {
    fn new(conn: &Connection, rx: watch::Receiver<bool>) -> Self {
        let id = conn.stable_id();
        if let Ok(mut m) = DEGRADED.lock() {
            m.insert(id, rx);
        }
        Registration(id)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut m) = DEGRADED.lock() {
            m.remove(&self.0);
        }
    }
}

/// For a new local connection: `Ok` when `conn`'s server answers, or starts
/// answering within [`CONNECT_WAIT`]; otherwise the error to log (the
/// caller resets the local connection: a prompt, clear failure rather than
/// a connection hanging for the whole blackout).
pub(crate) async fn wait_usable(conn: &Connection) -> Result<(), String> {
    let rx = match DEGRADED.lock() {
        Ok(m) => m.get(&conn.stable_id()).cloned(),
        Err(_) => None,
    };
    let Some(mut rx) = rx else { return Ok(()) };
    if !*rx.borrow() {
        return Ok(());
    }
    let answered = tokio::time::timeout(CONNECT_WAIT, rx.wait_for(|d| !*d))
        .await
        .is_ok_and(|r| r.is_ok());
    match answered {
        true => Ok(()),
        false => Err(format!(
            "the server has not answered for a while (blackout); no new connection within {}s",
            CONNECT_WAIT.as_secs()
        )),
    }
}

/// `CLOCK_BOOTTIME` (counts suspended time) and `CLOCK_MONOTONIC` (does
/// not), since boot.
fn clocks() -> (Duration, Duration) {
    let mono = read_clock(libc::CLOCK_MONOTONIC).unwrap_or_default();
    #[cfg(target_os = "linux")]
    let boot = read_clock(libc::CLOCK_BOOTTIME).unwrap_or(mono);
    #[cfg(not(target_os = "linux"))]
    let boot = mono;
    (boot, mono)
}

fn read_clock(id: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime writes only
    // into it and reports failure through its return value.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    if rc != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

/// The address the kernel sends from towards `server` now (no packet sent).
fn route_source(server: SocketAddr) -> Option<IpAddr> {
    crate::transport::route_to(server).map(|r| r.local)
}

/// Why a healthy session should move to a fresh path, if it should.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouteChange {
    /// Packets leave from another address: another network.
    Address,
    /// The route no longer carries the session's packets (`packet` UDP
    /// payload bytes): a smaller MTU on the same address.
    TooSmall,
}

impl RouteChange {
    /// What the migration's log line says.
    fn why(self) -> &'static str {
        match self {
            RouteChange::Address => "the local address changed",
            RouteChange::TooSmall => "the route's MTU no longer carries the session's packets",
        }
    }
}

/// Compares the route now with the session's last local address, the
/// route's MTU at the last look, and the UDP payload size the session's
/// packets use now (`packet`).
///
/// Only a change of the MTU counts: were the kernel to keep a smaller path
/// MTU than the path has (a stale or forged ICMP message; quinn sends with
/// `IP_PMTUDISC_PROBE`, past the kernel's estimate), discovery would climb
/// above it again and a rule on the size alone would restart the path each
/// time. Below QUIC's minimum a restart cannot help either.
fn route_change(
    last_local: Option<IpAddr>,
    last_mtu: Option<u32>,
    now: Route,
    packet: u16,
) -> Option<RouteChange> {
    if last_local != Some(now.local) {
        return Some(RouteChange::Address);
    }
    match now.udp_payload() {
        Some(limit)
            if now.mtu != last_mtu && limit < u32::from(packet) && packet > QUIC_MIN_PACKET =>
        {
            Some(RouteChange::TooSmall)
        }
        _ => None,
    }
}

/// What the driver watches and where it reports.
pub(crate) struct Watch {
    /// The session's connection.
    pub(crate) conn: Connection,
    /// For QUIC over UDP: the endpoint's socket owner (rebound on a change
    /// of network) and the server's address (probed). `None` over TCP and
    /// port-forwards, whose stream ends the connection when it breaks.
    pub(crate) udp: Option<(quinn::Endpoint, SocketAddr)>,
    /// `survive_blackout`.
    pub(crate) bound: Duration,
    /// The connection's probe gate ([`ProbeGate::wrap`] in its congestion
    /// controller).
    pub(crate) gate: ProbeGate,
    /// Endpoint name (logs, metrics).
    pub(crate) name: String,
    /// Metrics.
    pub(crate) metrics: Metrics,
    /// The endpoint's status (`degraded` is set and cleared here).
    pub(crate) status: watch::Sender<EndpointStatus>,
    /// Blackout and open connections, for status.
    pub(crate) shared: SharedState,
}

/// Watches the session until it must end; closes it and returns why.
pub(crate) async fn watch(w: Watch) -> String {
    let Watch {
        conn,
        udp,
        bound,
        gate,
        name,
        metrics,
        status,
        shared,
    } = w;
    let (degraded_tx, degraded_rx) = watch::channel(false);
    let _registration = Registration::new(&conn, degraded_rx);
    let degraded_gauge = metrics.endpoint_degraded.with_label_values(&[&name]);
    let seconds = metrics.blackout_seconds.with_label_values(&[&name]);
    let outcome = |o: &str| metrics.blackouts.with_label_values(&[&name, o]).inc();
    let set_degraded = |d: bool| {
        degraded_tx.send_replace(d);
        degraded_gauge.set(i64::from(d));
        status.send_modify(|s| {
            if let EndpointStatus::Connected { degraded, .. } = s {
                *degraded = d;
            }
        });
    };
    let (boot, mono) = clocks();
    let mut health = Health::new(boot, bound, conn.stats().udp_rx.datagrams);
    let mut resume = ResumeDetector::new(TICK);
    resume.observe(boot, mono);
    let route = udp
        .as_ref()
        .and_then(|(_, s)| crate::transport::route_to(*s));
    let mut local = route.map(|r| r.local);
    let mut route_mtu_seen = route.and_then(|r| r.mtu);
    let mut answered_silent = 0u32;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = |why: String, lost_session: bool| {
        conn.close(VarInt::from_u32(error_code::NO_ERROR), why.as_bytes());
        if lost_session {
            outcome("session_lost");
        }
        degraded_gauge.set(0);
        seconds.set(0);
        lock(&shared).blackout = None;
        why
    };
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            e = conn.closed() => {
                degraded_gauge.set(0);
                seconds.set(0);
                lock(&shared).blackout = None;
                return e.to_string();
            }
        }
        let (boot, mono) = clocks();
        let gap = resume.observe(boot, mono);
        let stats = conn.stats();
        match health.observe(boot, stats.udp_rx.datagrams) {
            Transition::Degraded => {
                tracing::warn!(endpoint = %name, silent = %human(DEGRADED_AFTER), survive_blackout = %human(bound), rtt = ?conn.rtt(), "no answer from the server; degraded, keeping the session and its connections");
                set_degraded(true);
            }
            Transition::Recovered(len) => {
                tracing::info!(endpoint = %name, blackout = %human(len), rtt = ?conn.rtt(), "the server answers again; connections carry on");
                // Over a TCP stream the blackout's packets arrive late, not
                // lost: their acknowledgements would be taken as round trips
                // of minutes, putting loss detection minutes away
                // (vendor/quinn-proto `reset_rtt`).
                conn.reset_rtt();
                // Its packets arrive, but ours may still wait for a loss
                // probe minutes away (PTO backoff) behind a window full of
                // the blackout's packets: let the next ones past and move
                // to a fresh socket now, so both ends send at once.
                gate.open();
                if let Some((endpoint, server)) = &udp {
                    migrate(&conn, endpoint, *server, &name, "the blackout ended", local);
                    local = route_source(*server);
                }
                set_degraded(false);
                outcome("recovered");
                answered_silent = 0;
            }
            Transition::Expired => {
                outcome("expired");
                let why = format!(
                    "no answer from the server for {}, longer than survive_blackout: session closed, open connections reset{}",
                    human(bound),
                    lost_list(&shared)
                );
                tracing::warn!(endpoint = %name, "{why}");
                return end(why, false);
            }
            Transition::None => {}
        }
        let phase = health.phase(boot);
        {
            let mut s = lock(&shared);
            s.blackout = match phase {
                Phase::Degraded {
                    silent_for,
                    remaining,
                } => Some(Blackout {
                    silent_for,
                    remaining,
                    bound,
                }),
                _ => None,
            };
            if matches!(phase, Phase::Healthy) {
                s.open = open_connections(&metrics, &name);
            }
        }
        seconds.set(match phase {
            Phase::Degraded { silent_for, .. } => {
                i64::try_from(silent_for.as_secs()).unwrap_or(i64::MAX)
            }
            _ => 0,
        });
        if let Some(g) = gap {
            let what = match g {
                Gap::Suspended(_) => "suspended",
                Gap::Stalled(_) => "stopped",
            };
            tracing::info!(endpoint = %name, gap = %human(g.length()), "resumed after being {what}; probing the path now");
        }
        let resumed = gap.is_some();
        let degraded = !matches!(phase, Phase::Healthy);
        if let (Some((endpoint, server)), false, false) = (&udp, degraded, resumed) {
            // A move to another network that left no silence behind (a
            // roam between access points, a VPN coming up): the packets
            // leave from the new address already, but the path's limits
            // are the old network's until the session migrates.
            if let Some(now) = crate::transport::route_to(*server) {
                // The packet size now, not the tick's first `stats`: a
                // recovery above may have migrated and restarted discovery.
                let packet = conn.stats().path.current_mtu;
                let change = route_change(local, route_mtu_seen, now, packet);
                route_mtu_seen = now.mtu;
                // A rebind that failed is tried again at the next tick.
                if change.is_some_and(|c| migrate(&conn, endpoint, *server, &name, c.why(), local))
                {
                    local = Some(now.local);
                }
            }
        }
        if !resumed && !health.probe_due(boot) {
            continue;
        }
        let Some((endpoint, server)) = &udp else {
            continue;
        };
        let probe = crate::transport::probe_path(*server).await;
        tracing::debug!(endpoint = %name, ?probe, resumed, degraded, "path probe");
        match probe {
            PathProbe::Refused => {
                let why = format!(
                    "the server at {server} is not listening any more (stopped or restarted): the session is lost{}",
                    lost_list(&shared)
                );
                tracing::warn!(endpoint = %name, "{why}");
                return end(why, true);
            }
            PathProbe::Answered { local: now_local } => {
                // The path works: let a packet past the window the
                // blackout filled and migrate, so both ends move at once.
                if degraded || resumed || local != Some(now_local) {
                    gate.open();
                    migrate(&conn, endpoint, *server, &name, "the path answers", local);
                    local = Some(now_local);
                }
                if degraded {
                    answered_silent += 1;
                    if answered_silent >= ANSWERED_BUT_SILENT {
                        let why = format!(
                            "the server at {server} answers but no longer knows this session (it restarted): the session is lost{}",
                            lost_list(&shared)
                        );
                        tracing::warn!(endpoint = %name, "{why}");
                        return end(why, true);
                    }
                }
            }
            PathProbe::Silent { local: now_local } => {
                if now_local.is_some() && now_local != local {
                    // A new network, not answering yet: send from it now.
                    migrate(
                        &conn,
                        endpoint,
                        *server,
                        &name,
                        "the local address changed",
                        local,
                    );
                    gate.open();
                    local = now_local;
                }
            }
        }
    }
}

/// Moves the session to a fresh socket, from the address the kernel picks
/// now (the server migrates, RFC 9000 9), and restarts the path's
/// congestion control, RTT estimate and MTU discovery: the path may lead
/// through another network with other limits, such as smaller packets than
/// the jumbo frames of the network left (vendor/quinn change 5).
fn migrate(
    conn: &Connection,
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    name: &str,
    why: &str,
    previous: Option<IpAddr>,
) -> bool {
    match crate::transport::rebind(endpoint, server.is_ipv6()) {
        Ok(addr) => {
            conn.path_changed();
            tracing::info!(endpoint = %name, local = %addr, previous = ?previous, "{why}; migrated the session to a new socket");
            true
        }
        Err(e) => {
            tracing::warn!(endpoint = %name, error = %e, "cannot rebind the QUIC socket");
            false
        }
    }
}

/// The endpoint's open connections by service and direction.
fn open_connections(metrics: &Metrics, endpoint: &str) -> Vec<(String, i64)> {
    use prometheus::core::Collector;
    let mut out = Vec::new();
    for family in metrics.connections_active.collect() {
        for m in family.get_metric() {
            let label = |k: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == k)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            let n = m.get_gauge().get_value() as i64;
            if n > 0 && label("endpoint") == endpoint {
                out.push((format!("{} ({})", label("service"), label("direction")), n));
            }
        }
    }
    out
}

/// "; 3 open connections lost: demo/web (l2c) ×2, ..." or "".
pub(crate) fn lost_list(shared: &SharedState) -> String {
    let open = lock(shared).open.clone();
    let total: i64 = open.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return String::new();
    }
    let list: Vec<String> = open.iter().map(|(s, n)| format!("{s} ×{n}")).collect();
    format!("; {total} open connections lost: {}", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blackout_line_says_how_long_and_what_happens_at_the_bound() {
        let b = Blackout {
            silent_for: Duration::from_secs(42),
            remaining: Duration::from_secs(558),
            bound: Duration::from_secs(600),
        };
        let line = b.describe();
        assert!(line.contains("for 42s"), "{line}");
        assert!(line.contains("kept 9m18s more, then reset"), "{line}");
        assert!(line.contains("survive_blackout 10m00s"), "{line}");
    }

    #[test]
    fn the_clocks_run_and_boottime_is_not_behind() {
        let (b0, m0) = clocks();
        std::thread::sleep(Duration::from_millis(20));
        let (b1, m1) = clocks();
        assert!(m1 > m0 && b1 > b0);
        assert!(b1 >= m1, "CLOCK_BOOTTIME counts everything MONOTONIC does");
    }

    #[test]
    fn a_route_that_changes_address_or_shrinks_below_the_packets_moves_the_session() {
        let v4: IpAddr = "10.0.0.5".parse().unwrap();
        let v6: IpAddr = "fd00::5".parse().unwrap();
        let other: IpAddr = "192.168.1.9".parse().unwrap();
        // The MTU at the last look: jumbo frames.
        let was = Some(9000);
        let too_small = Some(RouteChange::TooSmall);
        let address = Some(RouteChange::Address);
        // (last address, last MTU, address now, MTU now, packet, change)
        let cases = [
            // Unchanged: the address, and an MTU that carries the packets.
            (Some(v4), was, v4, Some(1500), 1452, None),
            (Some(v4), was, v4, Some(1500), 1472, None),
            (Some(v4), was, v4, Some(9000), 8952, None),
            (Some(v4), was, v4, None, 8952, None),
            // IPv4 at 1,500 bytes carries UDP payloads up to 1,472; IPv6 1,452.
            (Some(v4), was, v4, Some(1500), 1473, too_small),
            (Some(v6), was, v6, Some(1500), 1452, None),
            (Some(v6), was, v6, Some(1500), 1453, too_small),
            // Jumbo packets on a 1,500-byte route; a VPN's 1,400.
            (Some(v4), was, v4, Some(1500), 8952, too_small),
            (Some(v4), Some(1500), v4, Some(1400), 1452, too_small),
            // Only a change counts: packets that outgrew an MTU the kernel
            // kept (discovery climbed past a stale estimate) restart nothing.
            (Some(v4), Some(1400), v4, Some(1400), 1452, None),
            // A route below QUIC's minimum: nothing a restart could fix.
            (Some(v4), was, v4, Some(1200), 1200, None),
            (Some(v4), was, v4, Some(1200), 1452, too_small),
            // Another address, whatever the MTU; none known before.
            (Some(v4), was, other, Some(9000), 1452, address),
            (None, None, v4, Some(1500), 1452, address),
        ];
        for (last_local, last_mtu, local, mtu, packet, want) in cases {
            assert_eq!(
                route_change(last_local, last_mtu, Route { local, mtu }, packet),
                want,
                "{last_local:?} {last_mtu:?} -> {local} {mtu:?}, packets of {packet}"
            );
        }
    }

    #[test]
    fn the_route_to_loopback_names_its_address_and_mtu() {
        let r = crate::transport::route_to("127.0.0.1:9".parse().unwrap())
            .expect("a route to loopback");
        assert_eq!(r.local, IpAddr::from([127, 0, 0, 1]));
        #[cfg(target_os = "linux")]
        assert!(r.mtu.is_some_and(|m| m >= 1500), "{r:?}");
    }

    #[test]
    fn lost_connections_are_listed_from_the_gauge() {
        let metrics = Metrics::new();
        metrics
            .connections_active
            .with_label_values(&["dev", "demo/web", "l2c"])
            .set(2);
        metrics
            .connections_active
            .with_label_values(&["other", "demo/web", "l2c"])
            .set(5);
        let shared = SharedState::default();
        assert_eq!(lost_list(&shared), "");
        lock(&shared).open = open_connections(&metrics, "dev");
        assert_eq!(
            lost_list(&shared),
            "; 2 open connections lost: demo/web (l2c) ×2"
        );
    }
}
