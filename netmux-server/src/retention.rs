//! A silent daemon's session kept through a blackout (a laptop asleep, a
//! train tunnel), with a per-identity cap.
//!
//! The QUIC idle timeout is `limits.survive_blackout` (default 10 minutes),
//! so a daemon that stops answering keeps its session, its streams and the
//! sockets dialled for them until it comes back or the bound passes. While
//! it is silent ([`DEGRADED_AFTER`] without a datagram; the blackout state
//! is [`netmux_common::tunnel::blackout::Health`]'s) the session counts in
//! `netmux_server_sessions_degraded`. Each silent session holds at most
//! its flow-control windows and `max_streams_per_session` sockets; how
//! many silent sessions one identity may hold is
//! `limits.max_blackout_sessions`: beyond it the longest-silent one is
//! closed (a daemon that restarted while its old session was silent, or
//! many laptops sharing a token, cannot pile them up). At the bound the
//! session is closed: its streams are reset, its dialled sockets closed,
//! its claims released.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use netmux_common::proto::error_code;
use netmux_common::sync::lock;
use netmux_common::tunnel::blackout::{human, Health, Transition, DEGRADED_AFTER};
use quinn::{Connection, VarInt};

use crate::Server;

/// How often a session's counters are sampled.
const TICK: Duration = Duration::from_millis(500);

/// The silent sessions of one identity: session id, since when, connection.
type Silent = Vec<(u64, Instant, Connection)>;

/// Silent sessions by identity name.
static SILENT: LazyLock<Mutex<HashMap<String, Silent>>> = LazyLock::new(Default::default);

fn silent() -> std::sync::MutexGuard<'static, HashMap<String, Silent>> {
    lock(&SILENT)
}

/// The origin of the monotonic times fed to [`Health`].
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now() -> Duration {
    ORIGIN.elapsed()
}

/// Undoes a session's silent bookkeeping however the watch ends.
struct Degraded<'a> {
    server: &'a Server,
    identity: &'a str,
    session: u64,
    on: bool,
}

impl Degraded<'_> {
    fn set(&mut self, on: bool, conn: &Connection) {
        if on == self.on {
            return;
        }
        self.on = on;
        let mut map = silent();
        if on {
            self.server.metrics.sessions_degraded.inc();
            let list = map.entry(self.identity.to_owned()).or_default();
            list.push((self.session, Instant::now(), conn.clone()));
            let cap = self.server.config.limits.max_blackout_sessions;
            if let Some((id, since, old)) = over_cap(list, cap) {
                let why = format!(
                    "evicted after {} of silence: {} silent sessions for {} (limits.max_blackout_sessions = {cap})",
                    human(since.elapsed()),
                    cap + 1,
                    self.identity
                );
                tracing::warn!(client = %self.identity, session = id, "{why}");
                self.server
                    .metrics
                    .blackouts
                    .with_label_values(&["evicted"])
                    .inc();
                old.close(VarInt::from_u32(error_code::NO_ERROR), why.as_bytes());
            }
        } else {
            self.server.metrics.sessions_degraded.dec();
            if let Some(list) = map.get_mut(self.identity) {
                list.retain(|(id, _, _)| *id != self.session);
                if list.is_empty() {
                    map.remove(self.identity);
                }
            }
        }
    }
}

impl Drop for Degraded<'_> {
    fn drop(&mut self) {
        if !self.on {
            return;
        }
        self.server.metrics.sessions_degraded.dec();
        let mut map = silent();
        if let Some(list) = map.get_mut(self.identity) {
            list.retain(|(id, _, _)| *id != self.session);
            if list.is_empty() {
                map.remove(self.identity);
            }
        }
    }
}

/// Watches session `session` of `identity` until its connection ends;
/// closes it when its daemon was silent for `limits.survive_blackout`.
pub(crate) async fn watch(conn: Connection, server: Arc<Server>, identity: String, session: u64) {
    let bound = server.config.limits.survive_blackout;
    let mut health = Health::new(now(), bound, rx_count(&conn));
    let mut state = Degraded {
        server: &server,
        identity: &identity,
        session,
        on: false,
    };
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = conn.closed() => return,
        }
        match health.observe(now(), rx_count(&conn)) {
            Transition::Degraded => {
                tracing::info!(client = %identity, session, silent = %human(DEGRADED_AFTER), survive_blackout = %human(bound), "daemon silent; keeping its session");
                state.set(true, &conn);
            }
            Transition::Recovered(len) => {
                tracing::info!(client = %identity, session, blackout = %human(len), rtt = ?conn.rtt(), "daemon answers again");
                // Over a TCP stream the blackout's packets arrive late, not
                // lost: their acknowledgements would be taken as round trips
                // of minutes (vendor/quinn-proto `reset_rtt`).
                conn.reset_rtt();
                server
                    .metrics
                    .blackouts
                    .with_label_values(&["recovered"])
                    .inc();
                state.set(false, &conn);
            }
            Transition::Expired => {
                let why = format!(
                    "no answer from the daemon for {} (survive_blackout): session closed",
                    human(bound)
                );
                tracing::info!(client = %identity, session, "{why}");
                server
                    .metrics
                    .blackouts
                    .with_label_values(&["expired"])
                    .inc();
                conn.close(VarInt::from_u32(error_code::NO_ERROR), why.as_bytes());
                return;
            }
            Transition::None => {}
        }
    }
}

/// Beyond `cap` silent sessions, the longest-silent one leaves the list
/// (it is the least likely to return) and is returned for closing.
fn over_cap<T>(list: &mut Vec<(u64, Instant, T)>, cap: usize) -> Option<(u64, Instant, T)> {
    if list.len() <= cap {
        return None;
    }
    list.sort_by_key(|(_, since, _)| *since);
    Some(list.remove(0))
}

fn rx_count(conn: &Connection) -> u64 {
    conn.stats().udp_rx.datagrams
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_the_cap_the_longest_silent_session_goes() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut list = vec![(7, at(30), "c"), (5, at(10), "a"), (6, at(20), "b")];
        assert!(over_cap(&mut list, 3).is_none(), "at the cap nothing goes");
        list.push((8, at(40), "d"));
        assert_eq!(over_cap(&mut list, 3), Some((5, at(10), "a")));
        assert_eq!(list.len(), 3);
        assert!(list.iter().all(|(id, _, _)| *id != 5));
        assert!(over_cap(&mut list, 3).is_none());
    }
}
