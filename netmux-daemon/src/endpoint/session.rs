//! The control session on an endpoint's connection: the hello, then
//! claims sent and answered and catalog updates applied until the
//! connection ends. The protocol is [`ClientSession`]'s; this only moves
//! its bytes and timers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use netmux_common::proto::catalog::Indexed;
use netmux_common::proto::error_code;
use netmux_common::proto::hello::{Credential, Hello};
use netmux_common::proto::session::{ClientEvent, ClientSession, SessionError, SYNC_TIMEOUT};
use quinn::{Connection, VarInt};
use tokio::sync::watch;

use super::connect::ConnectError;
use super::{ClaimKind, ClaimState, Claims, Command};

/// A connection whose hello is done: the connection, its session, the
/// control stream, the server's address and its greeting.
pub(crate) type Established = (
    Connection,
    ClientSession,
    quinn::SendStream,
    quinn::RecvStream,
    SocketAddr,
    String,
);

/// Completes the hello on a fresh connection; returns once the catalog
/// snapshot is in.
pub(crate) async fn hello(
    conn: Connection,
    server: SocketAddr,
    token: Option<String>,
) -> Result<Established, ConnectError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| ConnectError::Quic(e.to_string()))?;
    let credential = match token {
        Some(t) => Credential::Bearer(t),
        None => Credential::None,
    };
    let mut session = ClientSession::new(&Hello::new(client_name(), credential));
    session.expect_sync_within(std::time::Instant::now(), SYNC_TIMEOUT);
    flush(&mut session, &mut send).await?;
    let mut greeting = String::new();
    let handshake = async {
        loop {
            while let Some(ev) = session.poll_event() {
                if let ClientEvent::Accepted { message } = ev {
                    greeting = message;
                }
            }
            if session.is_synced() {
                return Ok(());
            }
            // The session's own deadline bounds the wait (the sans-IO
            // core keeps the clock; this loop only sleeps until it).
            let read = recv.read_chunk(64 * 1024, true);
            let chunk = match session.poll_timeout() {
                Some(deadline) => tokio::select! {
                    r = read => r,
                    () = tokio::time::sleep_until(deadline.into()) => {
                        session.handle_timeout(std::time::Instant::now())?;
                        continue;
                    }
                },
                None => read.await,
            };
            match chunk {
                Ok(Some(c)) => session.handle_input(&c.bytes)?,
                Ok(None) => {
                    return Err(ConnectError::Quic(
                        "server closed the control stream".into(),
                    ))
                }
                Err(e) => {
                    // A refusal arrives as a close with a reason: surface it.
                    return Err(ConnectError::Quic(close_reason(&conn, e)));
                }
            }
        }
    };
    match handshake.await {
        Ok(()) => Ok((conn, session, send, recv, server, greeting)),
        Err(ConnectError::Session(e @ SessionError::SyncTimeout(_))) => {
            conn.close(VarInt::from_u32(e.close_code()), b"hello timeout");
            Err(ConnectError::Session(e))
        }
        Err(e) => {
            conn.close(VarInt::from_u32(error_code::NO_ERROR), b"");
            Err(e)
        }
    }
}

fn close_reason(conn: &Connection, e: quinn::ReadError) -> String {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => {
            String::from_utf8_lossy(&c.reason).into_owned()
        }
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

fn client_name() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "netmuxd".into());
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

async fn flush(
    session: &mut ClientSession,
    send: &mut quinn::SendStream,
) -> Result<(), ConnectError> {
    while let Some(bytes) = session.poll_transmit() {
        send.write_all(&bytes)
            .await
            .map_err(|e| ConnectError::Quic(e.to_string()))?;
    }
    Ok(())
}

/// Sends every pending claim not already awaiting an answer.
fn send_pending(
    session: &mut ClientSession,
    claims: &Claims,
    in_flight: &mut std::collections::HashMap<u32, String>,
) {
    for (name, claim) in claims.lock().iter() {
        if claim.state != ClaimState::Pending || in_flight.values().any(|n| n == name) {
            continue;
        }
        let request = match &claim.kind {
            ClaimKind::Catalog(key) => session.claim(key),
            ClaimKind::Adhoc { name, port } => match claim
                .targets
                .get(*port, netmux_common::proto::catalog::Protocol::Tcp)
            {
                Some(local) => session.expose(name, *port, local.port()),
                None => continue,
            },
            ClaimKind::Intercept {
                service,
                port,
                header,
                mirror,
                replace,
            } => session.intercept(service, *port, header.clone(), *mirror, *replace),
            ClaimKind::Stop(w) => session.stop_workload(w),
        };
        in_flight.insert(request, name.clone());
    }
}

/// First wait before a refused claim is asked again; doubles up to
/// [`CLAIM_RETRY_MAX`].
pub(crate) const CLAIM_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait between two tries of a refused claim.
pub(crate) const CLAIM_RETRY_MAX: Duration = Duration::from_secs(30);

/// When refused claims are tried again on this connection.
struct ClaimRetry {
    at: Option<tokio::time::Instant>,
    next_wait: Duration,
}

impl Default for ClaimRetry {
    fn default() -> Self {
        ClaimRetry {
            at: None,
            next_wait: CLAIM_RETRY_MIN,
        }
    }
}

impl ClaimRetry {
    /// A refusal arrived: try again after the current backoff (once).
    fn schedule(&mut self) {
        if self.at.is_none() {
            self.at = Some(tokio::time::Instant::now() + self.next_wait);
            self.next_wait = (self.next_wait * 2).min(CLAIM_RETRY_MAX);
        }
    }

    /// Resolves when a retry is due (never while none is scheduled).
    async fn due(&mut self) {
        match self.at {
            Some(at) => {
                tokio::time::sleep_until(at).await;
                self.at = None;
            }
            None => std::future::pending().await,
        }
    }
}

/// Applies catalog updates until the connection ends; returns why.
pub(crate) async fn follow(
    conn: &Connection,
    mut session: ClientSession,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    catalog_tx: &watch::Sender<Arc<Indexed>>,
    claims: &Claims,
    commands: &mut tokio::sync::mpsc::UnboundedReceiver<Command>,
) -> String {
    let mut in_flight: std::collections::HashMap<u32, String> = std::collections::HashMap::new();
    send_pending(&mut session, claims, &mut in_flight);
    if flush(&mut session, &mut send).await.is_err() {
        return "control stream closed".into();
    }
    // Refused claims are asked again with backoff: the holder may leave,
    // or its replica may stop (a rolling update frees its Leases).
    let mut retry = ClaimRetry::default();
    loop {
        let chunk: Result<Option<Bytes>, String> = tokio::select! {
            () = retry.due() => {
                for c in claims.lock().values_mut() {
                    if matches!(c.state, ClaimState::Refused(_)) {
                        c.state = ClaimState::Pending;
                    }
                }
                send_pending(&mut session, claims, &mut in_flight);
                if flush(&mut session, &mut send).await.is_err() {
                    return "control stream closed".into();
                }
                continue;
            }
            Some(cmd) = commands.recv() => {
                match cmd {
                    Command::Sync => send_pending(&mut session, claims, &mut in_flight),
                    Command::Release(ClaimKind::Catalog(key)) => session.release(&key),
                    Command::Release(ClaimKind::Adhoc { name, .. }) => session.release(&name),
                    Command::Release(ClaimKind::Intercept { service, port, .. }) => {
                        session.leave(&service, port)
                    }
                    Command::Release(ClaimKind::Stop(w)) => session.start_workload(&w),
                }
                if flush(&mut session, &mut send).await.is_err() {
                    return "control stream closed".into();
                }
                continue;
            }
            c = recv.read_chunk(64 * 1024, true) => match c {
                Ok(Some(c)) => Ok(Some(c.bytes)),
                Ok(None) => Ok(None),
                Err(e) => Err(close_reason(conn, e)),
            },
            e = conn.closed() => Err(e.to_string()),
        };
        let bytes = match chunk {
            Ok(Some(b)) => b,
            Ok(None) => return "server closed the control stream".into(),
            Err(e) => return e,
        };
        if let Err(e) = session.handle_input(&bytes) {
            conn.close(VarInt::from_u32(e.close_code()), e.to_string().as_bytes());
            return e.to_string();
        }
        let mut changed = false;
        while let Some(ev) = session.poll_event() {
            changed |= matches!(ev, ClientEvent::CatalogReplaced | ClientEvent::Changed(_));
            if let ClientEvent::Intercepts(reports) = &ev {
                claims.report(reports);
            }
            if let ClientEvent::ClaimResult { request, error } = ev {
                if let Some(name) = in_flight.remove(&request) {
                    if let Some(c) = claims.lock().get_mut(&name) {
                        c.state = match error {
                            None => ClaimState::Held,
                            Some(e) => {
                                retry.schedule();
                                ClaimState::Refused(e)
                            }
                        };
                    }
                }
                changed = true;
            }
        }
        if changed {
            catalog_tx.send_replace(Arc::new(Indexed::from(session.catalog().clone())));
        }
        if flush(&mut session, &mut send).await.is_err() {
            return "control stream closed".into();
        }
    }
}
