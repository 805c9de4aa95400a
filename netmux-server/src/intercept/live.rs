//! How intercepts stay alive and end: the liveness of each intercept's
//! daemon, the Lease renewed while one is heard, and the Service restored
//! (with backoff) once none is left. [`super::stop`] keeps its stopped
//! workloads alive with the same checks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netmux_common::sync::lock;
use quinn::Connection;

use super::cluster::Cluster;
use super::{Held, Routed};

pub(super) fn rx_count(conn: &Connection) -> u64 {
    conn.stats().udp_rx.datagrams
}

/// Whether the daemon behind `conn` is gone: its connection closed, or no
/// datagram from it for `silence` (`heard`: the count last seen, and
/// since when).
pub(super) fn is_gone(conn: &Connection, heard: &Mutex<(u64, Instant)>, silence: Duration) -> bool {
    if conn.close_reason().is_some() {
        return true;
    }
    let mut heard = lock(heard);
    let now = rx_count(conn);
    if now != heard.0 {
        *heard = (now, Instant::now());
    }
    heard.1.elapsed() >= silence
}

/// The ticker of the liveness checks: every [`LIVENESS`], from one
/// [`LIVENESS`] on, late ticks delayed rather than bunched.
pub(super) fn liveness() -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + LIVENESS, LIVENESS);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// The retry schedule of a restore: 250 ms doubling to 2 s between
/// attempts, for up to [`RESTORE_PATIENCE`] (then the Lease, no longer
/// renewed, expires and a replica's sweep does it).
pub(super) struct Backoff {
    give_up: Instant,
    next: Duration,
}

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff {
            give_up: Instant::now() + RESTORE_PATIENCE,
            next: Duration::from_millis(250),
        }
    }

    /// Whether the patience is spent.
    pub(super) fn spent(&self) -> bool {
        Instant::now() >= self.give_up
    }

    /// Sleeps until the next attempt.
    pub(super) async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_secs(2));
    }
}

/// Removes `routed` (still empty) from the table and restores its Service.
pub(super) async fn finish(
    routed: Arc<Routed>,
    table: Arc<Mutex<HashMap<String, Arc<Routed>>>>,
    ops: Arc<tokio::sync::Mutex<()>>,
    cluster: Arc<Cluster>,
) {
    let mut op = ops.lock().await;
    {
        let mut t = lock(&table);
        match t.get(&routed.key) {
            Some(r) if Arc::ptr_eq(r, &routed) && lock(&routed.held).is_empty() => {
                t.remove(&routed.key);
            }
            // Re-intercepted meanwhile, or already finished.
            _ => return,
        }
    }
    // A refused or failed write (a conflict, the API server busy) is tried
    // again with backoff for up to RESTORE_PATIENCE, other operations
    // running in between; after that the Lease, no longer renewed,
    // expires and a replica's sweep restores the Service.
    let mut backoff = Backoff::new();
    let mut attempt = 0u32;
    loop {
        match cluster.restore(&routed.namespace, &routed.service).await {
            Ok(()) => break,
            Err(e) if backoff.spent() => {
                tracing::warn!(service = %routed.key, attempt, error = %e, "cannot restore the Service; its intercept Lease expires and a replica's sweep restores it");
                break;
            }
            Err(e) => {
                tracing::warn!(service = %routed.key, attempt, error = %e, "cannot restore the Service yet; trying again");
            }
        }
        attempt += 1;
        drop(op);
        backoff.wait().await;
        op = ops.lock().await;
        if lock(&table).contains_key(&routed.key) {
            // Intercepted again meanwhile: the new intercept owns it.
            return;
        }
    }
    drop(op);
    // Dropping the last reference stops the listeners.
    drop(routed);
}

/// How long [`finish`] keeps trying to restore a Service.
const RESTORE_PATIENCE: Duration = Duration::from_secs(30);

/// How often the daemons of a Service's intercepts are checked.
pub(super) const LIVENESS: Duration = Duration::from_millis(500);

/// Every [`LIVENESS`]: drops intercepts whose daemon is gone or was silent
/// for half the TTL, restoring the Service when none is left; every
/// `ttl / 4` renews the Lease.
pub(super) async fn renew(
    routed: std::sync::Weak<Routed>,
    table: Arc<Mutex<HashMap<String, Arc<Routed>>>>,
    ops: Arc<tokio::sync::Mutex<()>>,
    cluster: Arc<Cluster>,
    ttl: Duration,
) {
    // Silent this long, a daemon is gone (its QUIC keepalive is every
    // second): the Service is restored well before its Lease could expire.
    let silence = ttl / 2;
    let mut tick = liveness();
    let mut renewed = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let Some(r) = routed.upgrade() else { return };
        let dropped: Vec<Held> = {
            let mut held = lock(&r.held);
            let (gone, live): (Vec<Held>, Vec<Held>) = held
                .drain(..)
                .partition(|h| is_gone(h.via.conn(), &h.heard, silence));
            *held = live;
            gone
        };
        for h in &dropped {
            tracing::warn!(service = %r.key, client = %h.claim.client, "intercept ended: its daemon is gone or silent");
        }
        if lock(&r.held).is_empty() {
            tokio::spawn(finish(r, table, ops, cluster));
            return;
        }
        if renewed.elapsed() < ttl / 4 {
            continue;
        }
        renewed = tokio::time::Instant::now();
        let who = format!("{} through replica {}", r.describe(), cluster.replica());
        if let Err(e) = cluster.take(&r.namespace, &r.service, &who).await {
            tracing::warn!(service = %r.key, error = %e, "cannot renew the intercept Lease");
            continue;
        }
        // Level-triggered: whatever undid the divert, it is redone while
        // the intercepts live (docs/intercept.md, Limits: GitOps).
        if let Err(e) = cluster
            .ensure_diverted(
                &r.namespace,
                &r.service,
                &r.slice_ports,
                &who,
                r.stopped.as_deref().unwrap_or_default(),
            )
            .await
        {
            tracing::warn!(service = %r.key, error = %e, "cannot check the intercepted Service");
        }
    }
}
