//! One daemon's QUIC connection: control stream driver and proxied streams.
//!
//! The protocol decisions live in [`ServerSession`]; this driver only moves
//! bytes and timers. Any protocol violation closes this connection alone.
//!
//! Until the hello succeeded the peer has one stream and a small window
//! ([`quic::server_transport_config`]), its datagrams are discarded, and
//! the credential check is bounded in time; then the windows open and the
//! per-session limits apply (`[limits]`): proxied streams at once, claims
//! and exposes held, UDP flows ([`crate::udp`]). Each refusal is counted in
//! `netmux_server_session_limit_refusals_total`.

use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use netmux_common::proto::error_code;
use netmux_common::proto::hello::HelloStatus;
use netmux_common::proto::session::{ServerEvent, ServerSession, SessionError};
use netmux_common::tunnel::quic;
use quinn::{Connection, RecvStream, SendStream, VarInt};

use crate::access::{Denied, Identity};
use crate::admission::Ticket;
use crate::metrics::limit;
use crate::Server;

/// The most `limits.max_streams_per_session` may be.
pub(crate) const MAX_STREAMS_PER_SESSION: u32 = quic::MAX_STREAMS;
/// Streams a daemon may open beyond its limit, so that the excess ones are
/// refused promptly (reset) instead of waiting for QUIC stream credit.
const REFUSAL_HEADROOM: u32 = 16;

/// Serves one daemon until its connection ends; `ticket` holds its place
/// among the admitted connections.
pub(crate) async fn serve(conn: Connection, server: Arc<Server>, mut ticket: Ticket) {
    let remote = conn.remote_address();
    let span = tracing::info_span!("daemon", %remote);
    let _enter = span.enter();
    drop(_enter);
    // Datagrams before the hello are nobody's: read and dropped, so they
    // do not sit in quinn's receive buffer.
    let discard = async { while conn.read_datagram().await.is_ok() {} };
    let handshake = tokio::select! {
        biased;
        () = discard => Err(SessionError::Unexpected("connection closed before hello")),
        h = handshake(&conn, &server) => h,
    };
    match handshake {
        Ok((identity, session, send, recv)) => {
            // What is buffered now was sent before the daemon could have
            // seen the reply (it arrived with the hello): also dropped.
            while let Some(Ok(_)) = conn.read_datagram().now_or_never() {}
            ticket.hello_done();
            // Over `stream_listen`, the stream under this connection is
            // silent in a blackout exactly when the session is: held, it
            // lives as long as the session ([`crate::retention`] ends it at
            // survive_blackout), not just the stream idle timeout.
            let _stream = server.stream_peers.hold(remote);
            let limits = &server.config.limits;
            // The control stream, the proxied streams, and room to refuse.
            quic::open_after_hello(&conn, limits.max_streams_per_session + 1 + REFUSAL_HEADROOM);
            server
                .metrics
                .sessions_total
                .with_label_values(&["accepted"])
                .inc();
            server.metrics.sessions_active.inc();
            tracing::info!(%remote, client = %identity.name, "daemon connected");
            let holder = crate::reverse::Holder {
                session: server
                    .sessions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                // Who, not where from: refusals tell others this name.
                client: identity.name.clone(),
                conn: conn.clone(),
                flows: netmux_common::tunnel::udp::Flows::new(
                    server.config.max_udp_flows,
                    server.config.udp_idle_timeout,
                    crate::udp::Meter::new(server.metrics.clone(), server.catalog.clone()),
                ),
            };
            let udp = tokio::spawn(crate::udp::serve(
                conn.clone(),
                server.clone(),
                identity.clone(),
                holder.flows.clone(),
            ));
            let streams = accept_streams(
                conn.clone(),
                server.clone(),
                identity.clone(),
                limits.max_streams_per_session,
            );
            let control = control_loop(session, send, recv, server.clone(), &holder, &identity);
            let retention = crate::retention::watch(
                conn.clone(),
                server.clone(),
                identity.name.clone(),
                holder.session,
            );
            let reason = tokio::select! {
                r = control => r,
                () = streams => Ok(()),
                // Closes the connection at survive_blackout (or eviction).
                () = retention => Ok(()),
            };
            match reason {
                Ok(()) => tracing::info!(%remote, client = %identity.name, "daemon disconnected"),
                Err(e) => {
                    tracing::warn!(%remote, client = %identity.name, error = %e, "dropping daemon");
                    conn.close(VarInt::from_u32(e.close_code()), e.to_string().as_bytes());
                }
            }
            udp.abort();
            holder.flows.clear_answered();
            server.reverse.release_all(holder.session);
            server.intercepts.release_all(holder.session);
            server.metrics.sessions_active.dec();
        }
        Err(e) => {
            let result = match &e {
                SessionError::Refused { .. } => "refused",
                SessionError::HelloTimeout(_) => "timeout",
                _ => "protocol_error",
            };
            server
                .metrics
                .sessions_total
                .with_label_values(&[result])
                .inc();
            tracing::warn!(%remote, error = %e, "daemon refused");
            // Give the refusal time to reach the daemon before closing.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            conn.close(VarInt::from_u32(e.close_code()), e.to_string().as_bytes());
        }
    }
}

/// Catalog entries too large for a frame were left out of what the daemon
/// gets: said in the log and counted, never sent truncated.
fn report_oversized(server: &Server, client: &str, session: &mut ServerSession) {
    for service in session.take_oversized() {
        tracing::error!(%client, %service, "catalog entry over the 64 KiB frame limit not sent (the daemon's status names it): it has too many aliases, addresses or ports; split the Service");
        server
            .metrics
            .catalog_refused
            .with_label_values(&["too_large"])
            .inc();
    }
}

async fn flush(session: &mut ServerSession, send: &mut SendStream) -> Result<(), SessionError> {
    while let Some(bytes) = session.poll_transmit() {
        send.write_all(&bytes)
            .await
            .map_err(|_| SessionError::Unexpected("control stream closed"))?;
    }
    Ok(())
}

/// Runs `fut` until the session's next deadline: `None` when the deadline
/// came first (then [`ServerSession::handle_timeout`] decides).
async fn until_deadline<F: std::future::Future>(
    session: &ServerSession,
    fut: F,
) -> Option<F::Output> {
    match session.poll_timeout() {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), fut).await.ok(),
        None => Some(fut.await),
    }
}

type Handshake = (Identity, ServerSession, SendStream, RecvStream);

/// Accepts the control stream and decides on the hello.
async fn handshake(conn: &Connection, server: &Server) -> Result<Handshake, SessionError> {
    let timeout = server.config.hello_timeout;
    // The session keeps the hello deadline; this driver only sleeps until
    // it and hands the time back (`poll_timeout` / `handle_timeout`).
    let mut session = ServerSession::new(Instant::now(), timeout);
    let (mut send, mut recv) = match until_deadline(&session, conn.accept_bi()).await {
        None => {
            let e = session.handle_timeout(Instant::now()).err();
            return Err(e.unwrap_or(SessionError::HelloTimeout(timeout)));
        }
        Some(accepted) => {
            accepted.map_err(|_| SessionError::Unexpected("connection closed before hello"))?
        }
    };
    let hello = loop {
        if let Some(ServerEvent::Hello(h)) = session.poll_event() {
            break h;
        }
        let result = match until_deadline(&session, recv.read_chunk(4096, true)).await {
            None => session.handle_timeout(Instant::now()),
            Some(Ok(Some(c))) => session.handle_input(&c.bytes),
            Some(_) => Err(SessionError::Unexpected(
                "control stream ended before hello",
            )),
        };
        if let Err(e) = result {
            let _ = flush(&mut session, &mut send).await;
            return Err(e);
        }
    };
    let timeout = server.config.hello_timeout;
    let authenticated =
        tokio::time::timeout(timeout, server.access.authenticate(&hello.credential))
            .await
            .unwrap_or_else(|_| {
                Err(Denied::Unavailable(format!(
                    "the credential check took longer than {timeout:?}"
                )))
            });
    match authenticated {
        Ok(identity) => {
            let catalog = server.catalog.borrow().clone();
            let visible = server.access.visible(&identity, &catalog).await;
            // The cluster's ranges bound the daemon's eBPF redirect.
            session.accept_with(
                &format!("netmux-server {}", env!("CARGO_PKG_VERSION")),
                &visible,
                &netmux_common::proto::cidr::ReplyExtensions {
                    cluster_ranges: server.config.announced_ranges(),
                    // Filled by the session with what it leaves out.
                    ..Default::default()
                },
            );
            report_oversized(server, &identity.name, &mut session);
            flush(&mut session, &mut send).await?;
            Ok((identity, session, send, recv))
        }
        Err(denied) => {
            tracing::info!(client = %hello.client_name, reason = %denied, "authentication failed");
            let e = session.refuse(HelloStatus::Unauthenticated, &denied.to_string());
            let _ = flush(&mut session, &mut send).await;
            let _ = send.finish();
            Err(e)
        }
    }
}

/// Follows the catalog and the daemon's control messages.
async fn control_loop(
    mut session: ServerSession,
    mut send: SendStream,
    mut recv: RecvStream,
    server: Arc<Server>,
    holder: &crate::reverse::Holder,
    identity: &Identity,
) -> Result<(), SessionError> {
    let mut catalog = server.catalog.clone();
    catalog.mark_unchanged();
    let mut recheck = server.access.recheck_timer(identity);
    let mut reports = tokio::time::interval(std::time::Duration::from_secs(1));
    reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = Vec::new();
    loop {
        tokio::select! {
            _ = reports.tick() => {
                let now: Vec<_> = server
                    .intercepts
                    .views(holder.session)
                    .into_iter()
                    .map(|v| netmux_common::proto::control::InterceptReport {
                        service: v.key,
                        port: v.port,
                        holder: v.holder,
                        to_workstation: v.to_workstation,
                        to_pods: v.to_pods,
                    })
                    .collect();
                if now != reported {
                    session.intercept_reports(now.clone());
                    reported = now;
                }
            }
            () = recheck.due() => {
                // The credential again, then fresh RBAC answers.
                if let Err(denied) = server.access.recheck(identity).await {
                    tracing::info!(client = %identity.name, reason = %denied, "credential no longer valid; ending the session");
                    holder.conn.close(VarInt::from_u32(error_code::REFUSED), denied.to_string().as_bytes());
                    return Ok(());
                }
                let current = catalog.borrow().clone();
                session.update_catalog(&server.access.visible(identity, &current).await);
            }
            chunk = recv.read_chunk(64 * 1024, true) => match chunk {
                Ok(Some(c)) => {
                    session.handle_input(&c.bytes)?;
                    while let Some(event) = session.poll_event() {
                        handle_event(&server, holder, identity, &mut session, event).await;
                    }
                }
                Ok(None) => return Ok(()),
                Err(quinn::ReadError::ConnectionLost(_)) => return Ok(()),
                Err(_) => return Err(SessionError::Unexpected("control stream reset")),
            },
            changed = catalog.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let current = catalog.borrow_and_update().clone();
                session.update_catalog(&server.access.visible(identity, &current).await);
            }
        }
        report_oversized(&server, &identity.name, &mut session);
        flush(&mut session, &mut send).await?;
    }
}

/// Acts on a daemon's request after the hello.
async fn handle_event(
    server: &Server,
    holder: &crate::reverse::Holder,
    identity: &Identity,
    session: &mut ServerSession,
    event: ServerEvent,
) {
    match event {
        ServerEvent::Hello(_) => {}
        ServerEvent::Claim { request, service } => {
            let r = match claims_left(server, holder) {
                Err(e) => Err(e),
                Ok(()) => match server.access.may_claim(identity, &service).await {
                    Ok(()) => server.reverse.claim(holder, &service).await,
                    Err(denied) => Err(denied.to_string()),
                },
            };
            if let Err(e) = &r {
                tracing::info!(client = %holder.client, %service, error = %e, "claim refused");
            }
            session.claim_result(request, r.err());
        }
        ServerEvent::Expose {
            request,
            name,
            port,
            target_port,
        } => {
            let key = server.reverse.adhoc_key(&name);
            let allowed = match &key {
                Some(key) => server.access.may_claim(identity, key).await,
                // Refused by expose itself, with the fix.
                None => Ok(()),
            };
            let r = match claims_left(server, holder) {
                Err(e) => Err(e),
                Ok(()) => match allowed {
                    Ok(()) => {
                        server
                            .reverse
                            .expose(holder, &name, port, target_port)
                            .await
                    }
                    Err(denied) => Err(denied.to_string()),
                },
            };
            if let Err(e) = &r {
                tracing::info!(client = %holder.client, %name, error = %e, "expose refused");
            }
            session.claim_result(request, r.err());
        }
        ServerEvent::Intercept {
            request,
            service,
            port,
            header,
            mirror,
            replace,
        } => {
            let mode = match (header, mirror, replace) {
                (_, _, true) => crate::intercept::route::Mode::Replace,
                (header, true, _) => crate::intercept::route::Mode::Mirror { header },
                (None, false, _) => crate::intercept::route::Mode::Global,
                (Some((name, value)), false, _) => {
                    crate::intercept::route::Mode::Personal { name, value }
                }
            };
            let r = intercept(server, holder, identity, &service, port, mode).await;
            if let Err(e) = &r {
                tracing::info!(client = %holder.client, %service, error = %e, "intercept refused");
            }
            session.claim_result(request, r.err());
        }
        ServerEvent::StopWorkload { request, workload } => {
            let r = stop_workload(server, holder, identity, workload).await;
            if let Err(e) = &r {
                tracing::info!(client = %holder.client, error = %e, "workload stop refused");
            }
            session.claim_result(request, r.err());
        }
        ServerEvent::StartWorkload { workload } => {
            server.intercepts.start_workload(holder.session, &workload);
        }
        ServerEvent::Leave { service, port } => {
            server.intercepts.leave(holder.session, &service, port);
        }
        ServerEvent::Release { service } => {
            server.reverse.release(holder.session, &service);
            if let Some(key) = server.reverse.adhoc_key(&service) {
                server.reverse.release(holder.session, &key);
            }
        }
    }
}

/// Intercepts catalog entry `key`'s Service for `holder`, if RBAC allows
/// and the session's limit is not reached.
async fn intercept(
    server: &Server,
    holder: &crate::reverse::Holder,
    identity: &Identity,
    key: &str,
    port: u16,
    mode: crate::intercept::route::Mode,
) -> Result<(), String> {
    let catalog = server.catalog.borrow().clone();
    let Some(svc) = catalog.values().find(|s| s.key() == key).cloned() else {
        return Err(format!(
            "no service {key} in the catalog; fix: name it as `netmux ls` shows it"
        ));
    };
    if svc.direction != netmux_common::proto::catalog::Direction::L2C {
        return Err(format!(
            "{key} is a C2L service (netmux's own); intercept the cluster's Services"
        ));
    }
    // The Service itself, also for an entry an `nx` annotation names.
    let service = server
        .reverse
        .origin(key)
        .unwrap_or_else(|| svc.name.clone());
    server
        .access
        .may_intercept(identity, &svc.namespace, &service)
        .await
        .map_err(|d| d.to_string())?;
    if mode == crate::intercept::route::Mode::Replace {
        // Stopping the workload is the user's own right to ask for.
        let stopped = server
            .intercepts
            .would_stop(&svc.namespace, &service)
            .await?;
        server
            .access
            .may_stop(identity, &svc.namespace, &stopped)
            .await
            .map_err(|d| d.to_string())?;
    }
    claims_left(server, holder)?;
    server
        .intercepts
        .start(
            holder,
            crate::intercept::Ask {
                key: key.to_owned(),
                namespace: svc.namespace.clone(),
                service,
                id: svc.id,
                port,
                mode,
            },
        )
        .await
}

/// Stops `w` (no Service in front) for `holder`, if RBAC lets the user
/// scale it and the session's limit is not reached.
async fn stop_workload(
    server: &Server,
    holder: &crate::reverse::Holder,
    identity: &Identity,
    w: netmux_common::proto::replaced::Workload,
) -> Result<(), String> {
    // Only where this server serves Services: never a namespace it does
    // not watch, whatever its account could scale there.
    let served = server.catalog.borrow().values().any(|s| {
        s.direction == netmux_common::proto::catalog::Direction::L2C && s.namespace == w.namespace
    });
    if !served {
        return Err(format!(
            "namespace {} has no Service this server serves: it stops workloads only in the namespaces its catalog comes from; fix: name the workload's namespace as `netmux ls` shows it, or ask an admin to add it to the server's runtime namespaces",
            w.namespace
        ));
    }
    let one = netmux_common::proto::replaced::Replaced {
        kind: w.kind,
        name: w.name.clone(),
        replicas: 0,
    };
    server
        .access
        .may_stop(identity, &w.namespace, std::slice::from_ref(&one))
        .await
        .map_err(|d| d.to_string())?;
    claims_left(server, holder)?;
    server
        .intercepts
        .stop_workload(&crate::intercept::Who::from(holder), w)
        .await
}

/// Whether `holder` may hold one more claim or expose
/// (`limits.max_claims_per_session`); a refusal is counted.
fn claims_left(server: &Server, holder: &crate::reverse::Holder) -> Result<(), String> {
    let max = server.config.limits.max_claims_per_session;
    if server.reverse.held_by(holder.session) + server.intercepts.held_by(holder.session) < max {
        return Ok(());
    }
    server
        .metrics
        .session_limit_refusals
        .with_label_values(&[limit::CLAIMS])
        .inc();
    Err(format!(
        "this daemon already holds {max} services (the server's limits.max_claims_per_session); stop one first"
    ))
}

/// Accepts proxied streams until the connection ends, at most `max` at
/// once: a stream beyond is reset (`REFUSED`) and counted.
async fn accept_streams(conn: Connection, server: Arc<Server>, identity: Identity, max: u32) {
    let open = Arc::new(());
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        // `open`'s clones are the streams in progress.
        if Arc::strong_count(&open) > max as usize {
            server
                .metrics
                .session_limit_refusals
                .with_label_values(&[limit::STREAMS])
                .inc();
            tracing::debug!(client = %identity.name, max, "stream refused: limits.max_streams_per_session");
            let _ = send.reset(VarInt::from_u32(error_code::REFUSED));
            let _ = recv.stop(VarInt::from_u32(error_code::REFUSED));
            continue;
        }
        let server = server.clone();
        let identity = identity.clone();
        let open = open.clone();
        tokio::spawn(async move {
            proxy_stream(send, recv, server, identity).await;
            drop(open);
        });
    }
}

async fn proxy_stream(send: SendStream, recv: RecvStream, server: Arc<Server>, who: Identity) {
    crate::stream::answer(send, recv, &server, &who).await;
}
