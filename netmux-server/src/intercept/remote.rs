//! Intercepts of one Service by users of several replicas (docs/intercept.md,
//! "Several replicas").
//!
//! The replica holding a Service's intercept Lease (the *holder*) routes
//! every intercept of it: its HTTP router stays the one place that reads
//! headers. A replica whose daemon asks for an intercept of a Service
//! another replica holds becomes a *member*: it checks RBAC as for any
//! intercept, then registers it with the holder over the replica endpoint
//! ([`super::peer`]; [`register`]). The holder adds it to the Service's
//! intercepts like one of its own, except that its workstation's streams
//! are opened on the member's connection ([`super::Via::Peer`]); the member
//! relays each to its daemon ([`super::peer::relay`]).
//!
//! The registration stream lives as long as the intercept: the member
//! ends it on `leave`, on the daemon's disconnect or silence; the holder
//! ends it when it stops routing the Service. A member whose registration
//! ends without a `leave` (the holder stopped or died) places the
//! intercept again every second: with the new holder, or here once the
//! Lease expired and this replica takes it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netmux_common::proto::catalog::ServiceId;
use netmux_common::sync::lock;
use quinn::{Connection, RecvStream, SendStream};

use super::peer::wire::{self, ToHolder, ToMember, WireMode};
use super::peer::{self, FirstError, Peers};
use super::route::{self, Claim, Mode};
use super::{Ask, Core, Routed, Via, View, Who};

/// Sessions of intercepts registered by members, on the holder: apart
/// from daemon sessions (those count up from 1).
const MEMBER_SESSIONS: u64 = 1 << 62;
/// How often a member reports, and a lost registration is placed again.
const TICK: Duration = Duration::from_secs(1);
/// How often a member checks its daemon.
const LIVENESS: Duration = Duration::from_millis(500);

/// One intercept of this replica's daemon, routed by another replica.
struct Member {
    session: u64,
    ask: Ask,
    /// The Service port the holder resolved.
    port: u16,
    client: String,
    daemon: Connection,
    /// The holder replica; `None` while placed again.
    holder: Option<String>,
    to_workstation: Arc<AtomicU64>,
    to_pods: Arc<AtomicU64>,
    task: Option<tokio::task::AbortHandle>,
}

impl Drop for Member {
    fn drop(&mut self) {
        // Dropping the task's streams ends the registration.
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// This replica's intercepts routed by other replicas, by registration.
#[derive(Clone, Default)]
pub struct Members {
    inner: Arc<Mutex<HashMap<u64, Member>>>,
    next: Arc<AtomicU64>,
}

impl Members {
    /// `Some` when `session` already has an intercept of `ask.key` here:
    /// `Ok` if it is the same, else why not.
    pub(crate) fn already(&self, session: u64, ask: &Ask) -> Option<Result<(), String>> {
        let map = lock(&self.inner);
        let m = map.values().find(|m| {
            m.session == session
                && m.ask.key == ask.key
                && (ask.port == 0 || m.port == ask.port || m.ask.port == ask.port)
        })?;
        Some(if m.ask.mode == ask.mode {
            Ok(())
        } else {
            Err(format!(
                "Service {} port {} is held by you ({} intercept): this daemon already intercepts that port; leave it first",
                ask.key, m.port, m.ask.mode
            ))
        })
    }

    /// Ends `session`'s intercepts of `key` at `port` (0: all).
    pub(crate) fn leave(&self, session: u64, key: &str, port: u16) -> bool {
        let mut map = lock(&self.inner);
        let before = map.len();
        map.retain(|_, m| {
            !(m.session == session
                && m.ask.key == key
                && (port == 0 || m.port == port || m.ask.port == port))
        });
        before != map.len()
    }

    /// Ends every intercept of `session`.
    pub(crate) fn leave_all(&self, session: u64) {
        lock(&self.inner).retain(|_, m| m.session != session);
    }

    /// Ends them all (the server stops).
    pub(crate) fn clear(&self) {
        lock(&self.inner).clear();
    }

    /// How many `session` has.
    pub(crate) fn held_by(&self, session: u64) -> usize {
        lock(&self.inner)
            .values()
            .filter(|m| m.session == session)
            .count()
    }

    /// `session`'s, as `ls` shows them.
    pub(crate) fn views(&self, session: u64) -> Vec<View> {
        lock(&self.inner)
            .values()
            .filter(|m| m.session == session)
            .map(|m| View {
                key: m.ask.key.clone(),
                port: m.port,
                holder: match &m.holder {
                    Some(h) => format!("{} through replica {h}", m.client),
                    None => format!("{} (its replica is gone; placing it again)", m.client),
                },
                mode: m.ask.mode.to_string(),
                to_workstation: m.to_workstation.load(Ordering::Relaxed),
                to_pods: m.to_pods.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Where a stream forwarded for `registration` goes.
    fn route(&self, registration: u64) -> Option<(Connection, ServiceId)> {
        lock(&self.inner)
            .get(&registration)
            .map(|m| (m.daemon.clone(), m.ask.id))
    }

    fn contains(&self, registration: u64) -> bool {
        lock(&self.inner).contains_key(&registration)
    }
}

/// A registration the holder accepted.
struct Link {
    send: SendStream,
    recv: RecvStream,
    port: u16,
    holder: String,
}

/// Registers `ask` of `who` with the holder at `address` (`by` describes
/// it, for errors) and keeps it registered.
pub(crate) async fn register(
    core: &Core,
    who: &Who,
    ask: Ask,
    address: SocketAddr,
    by: &str,
) -> Result<(), String> {
    let registration = core.members.next.fetch_add(1, Ordering::Relaxed);
    let link = connect(core, who, &ask, address, registration)
        .await
        .map_err(|e| match e {
            NotLinked::Refused(why) => why,
            NotLinked::Unreachable(e) => format!("{by}; {e}"),
        })?;
    tracing::info!(service = %ask.key, client = %who.client, mode = %ask.mode, holder = %link.holder, "intercept registered with the holder replica");
    let member = Member {
        session: who.session,
        port: link.port,
        client: who.client.clone(),
        daemon: who.conn.clone(),
        holder: Some(link.holder.clone()),
        to_workstation: Arc::default(),
        to_pods: Arc::default(),
        task: None,
        ask,
    };
    lock(&core.members.inner).insert(registration, member);
    let task = tokio::spawn(keep(core.clone(), who.clone(), registration, link));
    // Left already: the task sees it and ends the registration.
    if let Some(m) = lock(&core.members.inner).get_mut(&registration) {
        m.task = Some(task.abort_handle());
    }
    Ok(())
}

/// Why [`connect`] did not register.
enum NotLinked {
    /// The holder refused (names the conflicting intercept's holder).
    Refused(String),
    /// The holder could not be reached or broke the protocol.
    Unreachable(String),
}

impl std::fmt::Display for NotLinked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotLinked::Refused(e) | NotLinked::Unreachable(e) => f.write_str(e),
        }
    }
}

/// Connects to the holder (serving its forwarded streams on a new
/// connection) and registers.
async fn connect(
    core: &Core,
    who: &Who,
    ask: &Ask,
    address: SocketAddr,
    registration: u64,
) -> Result<Link, NotLinked> {
    use NotLinked::Unreachable;
    let Some(peers) = core.peers.clone() else {
        return Err(Unreachable(
            "this replica has no replica endpoint (no POD_IP)".into(),
        ));
    };
    let (conn, new) = peers.connect(address).await.map_err(Unreachable)?;
    if new {
        let members = core.members.clone();
        let route: Arc<peer::Route> = Arc::new(move |r| members.route(r));
        tokio::spawn(peer::relay(conn.clone(), route));
    }
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| {
        Unreachable(format!(
            "the holder replica at {address} is unreachable: {e}"
        ))
    })?;
    let msg = ToHolder::Register {
        version: wire::VERSION,
        registration,
        namespace: ask.namespace.clone(),
        service: ask.service.clone(),
        port: ask.port,
        mode: WireMode::from(&ask.mode),
        client: who.client.clone(),
        replica: core
            .cluster
            .as_ref()
            .map(|c| c.replica().to_owned())
            .unwrap_or_default(),
    };
    let bytes = wire::to_bytes(&msg).map_err(|e| Unreachable(e.to_string()))?;
    send.write_all(&bytes).await.map_err(|e| {
        Unreachable(format!(
            "the holder replica at {address} is unreachable: {e}"
        ))
    })?;
    let mut reader = wire::Reader::new();
    match peer::first::<ToMember>(&mut recv, &mut reader).await {
        Ok(ToMember::Accepted { port, holder }) => Ok(Link {
            send,
            recv,
            port,
            holder,
        }),
        Ok(ToMember::Refused { why }) => Err(NotLinked::Refused(why)),
        Ok(ToMember::Report { .. }) => {
            let e = wire::WireError("a report before the answer".into());
            peer::violation(&conn, &e);
            Err(Unreachable(e.to_string()))
        }
        Err(FirstError::Bad(e)) => {
            peer::violation(&conn, &e);
            Err(Unreachable(e.to_string()))
        }
        Err(FirstError::Ended) => Err(Unreachable(format!(
            "the holder replica at {address} did not answer the registration"
        ))),
    }
}

/// Keeps `registration` alive: takes the holder's reports, ends it when
/// the daemon is gone, places it again when the holder ends it.
async fn keep(core: Core, who: Who, registration: u64, mut link: Link) {
    let silence = core.ttl / 2;
    loop {
        match follow(&core, &who, registration, &mut link, silence).await {
            Followed::Left => return,
            Followed::DaemonGone => {
                tracing::warn!(client = %who.client, "intercept ended: its daemon is gone or silent");
                lock(&core.members.inner).remove(&registration);
                return;
            }
            Followed::HolderGone => {}
        }
        if let Some(m) = lock(&core.members.inner).get_mut(&registration) {
            m.holder = None;
        }
        loop {
            tokio::time::sleep(TICK).await;
            if who.conn.close_reason().is_some() {
                lock(&core.members.inner).remove(&registration);
                return;
            }
            let Some(ask) = lock(&core.members.inner)
                .get(&registration)
                .map(|m| m.ask.clone())
            else {
                return;
            };
            match again(&core, &who, &ask, registration).await {
                Ok(Some(l)) => {
                    if let Some(m) = lock(&core.members.inner).get_mut(&registration) {
                        m.holder = Some(l.holder.clone());
                        m.port = l.port;
                    }
                    tracing::info!(service = %ask.key, client = %who.client, holder = %l.holder, "intercept registered again with the new holder replica");
                    link = l;
                    break;
                }
                Ok(None) => {
                    // Routed here now. Left meanwhile: undo it.
                    let left = lock(&core.members.inner).remove(&registration).is_none();
                    if left {
                        core.leave(who.session, &ask.key, ask.port);
                    }
                    tracing::info!(service = %ask.key, client = %who.client, "intercept taken over by this replica");
                    return;
                }
                Err(e) => {
                    tracing::info!(service = %ask.key, client = %who.client, error = %e, "cannot place the intercept again yet");
                }
            }
        }
    }
}

/// Places `ask` again: `Ok(None)` routed here, `Ok(Some)` registered with
/// the holder.
async fn again(
    core: &Core,
    who: &Who,
    ask: &Ask,
    registration: u64,
) -> Result<Option<Link>, String> {
    let Some(cluster) = core.cluster.clone() else {
        return Err("no cluster".into());
    };
    let claim = Claim {
        session: who.session,
        client: who.client.clone(),
        port: ask.port,
        mode: ask.mode.clone(),
    };
    let op = core.ops.lock().await;
    let existing = lock(&core.table).get(&ask.key).cloned();
    if let Some(routed) = existing {
        // Another of this replica's daemons took it over first.
        return core.add(&routed, who, ask).map(|()| None);
    }
    match cluster
        .take(&ask.namespace, &ask.service, &claim.to_string())
        .await
    {
        Ok(()) => {
            let routed = core.route_new(&cluster, who, ask).await;
            drop(op);
            routed.map(|()| None)
        }
        Err(super::cluster::TakeError::Held {
            address: Some(address),
            ..
        }) => {
            drop(op);
            connect(core, who, ask, address, registration)
                .await
                .map(Some)
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

enum Followed {
    Left,
    DaemonGone,
    HolderGone,
}

/// Follows one accepted registration until it ends.
async fn follow(
    core: &Core,
    who: &Who,
    registration: u64,
    link: &mut Link,
    silence: Duration,
) -> Followed {
    let mut reader = wire::Reader::new();
    let mut tick = tokio::time::interval(LIVENESS);
    let mut heard = (who.conn.stats().udp_rx.datagrams, Instant::now());
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if !core.members.contains(registration) {
                    let _ = link.send.finish();
                    return Followed::Left;
                }
                if who.conn.close_reason().is_some() {
                    return Followed::DaemonGone;
                }
                let rx = who.conn.stats().udp_rx.datagrams;
                if rx != heard.0 {
                    heard = (rx, Instant::now());
                } else if heard.1.elapsed() >= silence {
                    return Followed::DaemonGone;
                }
            }
            chunk = link.recv.read_chunk(64 * 1024, true) => match chunk {
                Ok(Some(c)) => {
                    reader.push(&c.bytes);
                    loop {
                        match reader.message::<ToMember>() {
                            Ok(Some(ToMember::Report { to_workstation, to_pods })) => {
                                if let Some(m) = lock(&core.members.inner).get(&registration) {
                                    m.to_workstation.store(to_workstation, Ordering::Relaxed);
                                    m.to_pods.store(to_pods, Ordering::Relaxed);
                                }
                            }
                            Ok(None) => break,
                            Ok(Some(other)) => {
                                tracing::warn!(?other, "unexpected message from the holder replica");
                                return Followed::HolderGone;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "bad frame from the holder replica");
                                return Followed::HolderGone;
                            }
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    tracing::warn!(client = %who.client, "the holder replica ended the registration; placing the intercept again");
                    return Followed::HolderGone;
                }
            },
        }
    }
}

/// The holder side: serves the registrations of replicas connecting to
/// this one's endpoint until it closes.
pub(crate) async fn serve(peers: Arc<Peers>, core: Core) {
    while let Some(conn) = peers.accept().await {
        let core = core.clone();
        tokio::spawn(async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(registration(core.clone(), conn.clone(), send, recv));
            }
        });
    }
}

/// One member's intercept, on the holder: joined to the Service's
/// intercepts while its stream lives.
async fn registration(core: Core, conn: Connection, mut send: SendStream, mut recv: RecvStream) {
    let mut reader = wire::Reader::new();
    let msg: ToHolder = match peer::first(&mut recv, &mut reader).await {
        Ok(m) => m,
        Err(FirstError::Bad(e)) => return peer::violation(&conn, &e),
        Err(FirstError::Ended) => return,
    };
    let joined = match wire::check_register(&msg) {
        Ok(()) => join(&core, &conn, msg).await,
        Err(why) => Err(why),
    };
    let (routed, session, port) = match joined {
        Ok(j) => j,
        Err(why) => {
            tracing::info!(remote = %conn.remote_address(), %why, "member's intercept refused");
            if let Ok(b) = wire::to_bytes(&ToMember::Refused { why }) {
                let _ = send.write_all(&b).await;
            }
            let _ = send.finish();
            return;
        }
    };
    let me = core
        .cluster
        .as_ref()
        .map(|c| c.replica().to_owned())
        .unwrap_or_default();
    let accepted = ToMember::Accepted { port, holder: me };
    let mut ok = match wire::to_bytes(&accepted) {
        Ok(b) => send.write_all(&b).await.is_ok(),
        Err(_) => false,
    };
    let mut tick = tokio::time::interval(TICK);
    let mut last = None;
    while ok {
        tokio::select! {
            _ = tick.tick() => {
                let Some(h) = routed.held().into_iter().find(|h| h.claim.session == session) else {
                    // No longer routed here (restored, daemon silent, drain).
                    break;
                };
                let report = ToMember::Report {
                    to_workstation: h.to_workstation.get().0,
                    to_pods: routed.to_pods.get().0,
                };
                if last.as_ref() != Some(&report) {
                    ok = match wire::to_bytes(&report) {
                        Ok(b) => send.write_all(&b).await.is_ok(),
                        Err(_) => false,
                    };
                    last = Some(report);
                }
            }
            chunk = recv.read_chunk(64, true) => match chunk {
                Ok(Some(_)) => {
                    peer::violation(&conn, &wire::WireError("bytes after the registration".into()));
                    break;
                }
                // Left (or the member is gone).
                Ok(None) | Err(_) => break,
            },
        }
    }
    let _ = send.finish();
    core.leave(session, &routed.key, 0);
}

/// Joins a member's intercept to the Service this replica routes.
async fn join(
    core: &Core,
    conn: &Connection,
    msg: ToHolder,
) -> Result<(Arc<Routed>, u64, u16), String> {
    let ToHolder::Register {
        registration,
        namespace,
        service,
        port,
        mode,
        client,
        replica,
        ..
    } = msg;
    let _op = core.ops.lock().await;
    let routed = lock(&core.table)
        .values()
        .find(|r| r.namespace == namespace && r.service == service)
        .cloned()
        .ok_or_else(|| {
            format!("this replica does not route Service {namespace}/{service} (any more); retry")
        })?;
    let port = super::resolve_port(&routed.key, &routed.ports, port)?;
    static NEXT: AtomicU64 = AtomicU64::new(MEMBER_SESSIONS);
    let session = NEXT.fetch_add(1, Ordering::Relaxed);
    let claim = Claim {
        session,
        client: client.clone(),
        port,
        mode: Mode::from(mode),
    };
    if let Some(why) = route::conflict(&routed.claims(), &claim) {
        return Err(format!("Service {} port {port} is {why}", routed.key));
    }
    tracing::info!(service = %routed.key, %client, %replica, mode = %claim.mode, port, "intercept added for another replica's daemon");
    lock(&routed.held).push(super::held(
        Via::Peer {
            conn: conn.clone(),
            registration,
        },
        claim,
        port,
    ));
    Ok((routed, session, port))
}
