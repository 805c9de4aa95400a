//! Workloads stopped for a workstation with no Service in front of them
//! (`netmux intercept EP deploy/worker --replace`, docs/intercept.md
//! "Replace"): a queue consumer or a scheduler has no traffic to take, only
//! pods to stop while the local copy runs. Each is held by one daemon
//! session under a Lease of its own ([`super::cluster::Cluster::hold_stopped`],
//! which keeps the count before), renewed while the daemon is heard, and
//! started again when it ends: `leave`, the session's end, the daemon
//! silent for half the TTL, this server draining, or any replica's sweep
//! once the Lease expired.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use netmux_common::proto::replaced::Workload;
use netmux_common::sync::lock;
use quinn::Connection;

use super::live::{is_gone, liveness, rx_count, Backoff};
use super::{cluster::Cluster, Core, View, Who};

/// Workloads this replica holds stopped, by [`Workload`]'s key.
pub(crate) type Table = Arc<Mutex<std::collections::HashMap<String, Arc<Stopped>>>>;

/// One workload held stopped for a daemon session.
pub(crate) struct Stopped {
    workload: Workload,
    session: u64,
    client: String,
    conn: Connection,
    /// Received datagrams last seen, and since when unchanged.
    heard: Mutex<(u64, Instant)>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }
}

impl Core {
    /// Stops `w` for `holder` (refused while another session or replica
    /// holds it, naming them).
    pub(crate) async fn stop_workload(&self, holder: &Who, w: Workload) -> Result<(), String> {
        let Some(cluster) = self.cluster.clone() else {
            return Err("this server does not run the Kubernetes runtime: there is no workload to stop; fix: connect to a netmux-server deployed in the cluster".into());
        };
        let key = w.to_string();
        let _op = self.ops.lock().await;
        if let Some(s) = lock(&self.stopped).get(&key) {
            return match s.session == holder.session {
                true => Ok(()),
                false => Err(format!("{key} is stopped by {} already", s.client)),
            };
        }
        cluster
            .hold_stopped(&w, &holder.client, true)
            .await
            .map_err(|e| e.to_string())?;
        let stopped = Arc::new(Stopped {
            workload: w,
            session: holder.session,
            client: holder.client.clone(),
            conn: holder.conn.clone(),
            heard: Mutex::new((rx_count(&holder.conn), Instant::now())),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(keep(
            Arc::downgrade(&stopped),
            self.stopped.clone(),
            self.ops.clone(),
            cluster,
            self.ttl,
        ));
        *lock(&stopped.task) = Some(task);
        tracing::info!(workload = %key, client = %holder.client, "workload stopped for a workstation");
        lock(&self.stopped).insert(key, stopped);
        Ok(())
    }

    /// Ends `session`'s stop of `w` (starts it again); whether there was
    /// one.
    pub(crate) fn start_workload(&self, session: u64, w: &Workload) -> bool {
        let key = w.to_string();
        let ended = {
            let mut table = lock(&self.stopped);
            match table.get(&key) {
                Some(s) if s.session == session => table.remove(&key),
                _ => None,
            }
        };
        match (ended, &self.cluster) {
            (Some(s), Some(cluster)) => {
                tokio::spawn(start_again(s, cluster.clone(), self.ops.clone()));
                true
            }
            _ => false,
        }
    }

    /// Ends every stop of `session`.
    pub(super) fn start_all_of(&self, session: u64) {
        let mine: Vec<Workload> = lock(&self.stopped)
            .values()
            .filter(|s| s.session == session)
            .map(|s| s.workload.clone())
            .collect();
        for w in mine {
            self.start_workload(session, &w);
        }
    }

    /// Starts every workload this replica holds stopped (it drains).
    pub(super) async fn start_everything(&self) {
        let all: Vec<Arc<Stopped>> = lock(&self.stopped).drain().map(|(_, s)| s).collect();
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let starts = all
            .into_iter()
            .map(|s| start_again(s, cluster.clone(), self.ops.clone()));
        futures::future::join_all(starts).await;
    }

    /// The stops `session` holds.
    pub(super) fn stops_held_by(&self, session: u64) -> usize {
        lock(&self.stopped)
            .values()
            .filter(|s| s.session == session)
            .count()
    }

    /// The stops of `session`, as `status` shows intercepts (port 0).
    pub(super) fn stop_views(&self, session: u64, replica: &str) -> Vec<View> {
        lock(&self.stopped)
            .values()
            .filter(|s| s.session == session)
            .map(|s| View {
                key: s.workload.to_string(),
                port: 0,
                holder: format!("{} through replica {replica}", s.client),
                mode: "replace".into(),
                to_workstation: 0,
                to_pods: 0,
            })
            .collect()
    }
}

/// Every [`super::live::LIVENESS`]: ends the stop when its daemon is gone or
/// was silent for half the TTL; every `ttl / 4` renews the Lease and stops
/// the workload again if something started it.
async fn keep(
    stopped: Weak<Stopped>,
    table: Table,
    ops: Arc<tokio::sync::Mutex<()>>,
    cluster: Arc<Cluster>,
    ttl: Duration,
) {
    let silence = ttl / 2;
    let mut tick = liveness();
    let mut renewed = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let Some(s) = stopped.upgrade() else { return };
        if is_gone(&s.conn, &s.heard, silence) {
            tracing::warn!(workload = %s.workload, client = %s.client, "stop ended: its daemon is gone or silent");
            let key = s.workload.to_string();
            let mine = {
                let mut t = lock(&table);
                match t.get(&key) {
                    Some(x) if Arc::ptr_eq(x, &s) => t.remove(&key),
                    _ => None,
                }
            };
            if let Some(s) = mine {
                // Not awaited here: the task that runs it is this one.
                tokio::spawn(start_again(s, cluster.clone(), ops.clone()));
            }
            return;
        }
        if renewed.elapsed() < ttl / 4 {
            continue;
        }
        renewed = tokio::time::Instant::now();
        if let Err(e) = cluster.hold_stopped(&s.workload, &s.client, true).await {
            tracing::warn!(workload = %s.workload, error = %e, "cannot renew the stop Lease");
        }
    }
}

/// Starts `s`'s workload again, tried on the restore's [`Backoff`] (then
/// its Lease expires and a sweep does it).
async fn start_again(s: Arc<Stopped>, cluster: Arc<Cluster>, ops: Arc<tokio::sync::Mutex<()>>) {
    if let Some(t) = lock(&s.task).take() {
        t.abort();
    }
    let mut backoff = Backoff::new();
    loop {
        let done = {
            let _op = ops.lock().await;
            cluster.release_stopped(&s.workload).await
        };
        match done {
            Ok(()) => {
                tracing::info!(workload = %s.workload, "workload started again");
                return;
            }
            Err(e) if backoff.spent() => {
                tracing::warn!(workload = %s.workload, error = %e, "cannot start the workload again; its stop Lease expires and a replica's sweep does it");
                return;
            }
            Err(e) => {
                tracing::warn!(workload = %s.workload, error = %e, "cannot start the workload again yet; trying again");
            }
        }
        backoff.wait().await;
    }
}
