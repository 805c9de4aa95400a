//! One daemon's QUIC connection: control stream driver and proxied streams.
//!
//! The protocol decisions live in [`ServerSession`]; this driver only moves
//! bytes and timers. Any protocol violation closes this connection alone.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use netmux_common::proto::catalog::Direction;
use netmux_common::proto::error_code;
use netmux_common::proto::hello::HelloStatus;
use netmux_common::proto::session::{ServerEvent, ServerSession, SessionError};
use netmux_common::proto::stream::{OpenResult, StreamHeader};
use netmux_common::tunnel::pipe::{self, End};
use quinn::{Connection, RecvStream, SendStream, VarInt};

use crate::access::Identity;
use crate::{dial, Server};

/// Serves one daemon until its connection ends.
pub async fn serve(conn: Connection, server: Arc<Server>) {
    let remote = conn.remote_address();
    let span = tracing::info_span!("daemon", %remote);
    let _enter = span.enter();
    drop(_enter);
    match handshake(&conn, &server).await {
        Ok((identity, session, send, recv)) => {
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
                client: format!("{} ({remote})", identity.name),
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
            let streams = accept_streams(conn.clone(), server.clone(), identity.clone());
            let control = control_loop(session, send, recv, server.clone(), &holder, &identity);
            let reason = tokio::select! {
                r = control => r,
                () = streams => Ok(()),
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

async fn flush(session: &mut ServerSession, send: &mut SendStream) -> Result<(), SessionError> {
    while let Some(bytes) = session.poll_transmit() {
        send.write_all(&bytes)
            .await
            .map_err(|_| SessionError::Unexpected("control stream closed"))?;
    }
    Ok(())
}

type Handshake = (Identity, ServerSession, SendStream, RecvStream);

/// Accepts the control stream and decides on the hello.
async fn handshake(conn: &Connection, server: &Server) -> Result<Handshake, SessionError> {
    let timeout = server.config.hello_timeout;
    let mut session = ServerSession::new(Instant::now(), timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut send, mut recv) = tokio::time::timeout_at(deadline, conn.accept_bi())
        .await
        .map_err(|_| SessionError::HelloTimeout(timeout))?
        .map_err(|_| SessionError::Unexpected("connection closed before hello"))?;
    let hello = loop {
        if let Some(ServerEvent::Hello(h)) = session.poll_event() {
            break h;
        }
        let chunk = tokio::time::timeout_at(deadline, recv.read_chunk(4096, true)).await;
        let result = match chunk {
            Err(_) => session.handle_timeout(Instant::now() + timeout),
            Ok(Ok(Some(c))) => session.handle_input(&c.bytes),
            Ok(_) => Err(SessionError::Unexpected(
                "control stream ended before hello",
            )),
        };
        if let Err(e) = result {
            let _ = flush(&mut session, &mut send).await;
            return Err(e);
        }
    };
    match server.access.authenticate(&hello.credential).await {
        Ok(identity) => {
            let catalog = server.catalog.borrow().clone();
            let visible = server.access.visible(&identity, &catalog).await;
            session.accept(
                &format!("netmux-server {}", env!("CARGO_PKG_VERSION")),
                &visible,
            );
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
    loop {
        tokio::select! {
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
            let r = match server.access.may_claim(identity, &service).await {
                Ok(()) => server.reverse.claim(holder, &service).await,
                Err(denied) => Err(denied.to_string()),
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
            let key = format!("{}/{name}", server.config.adhoc_namespace);
            let r = match server.access.may_claim(identity, &key).await {
                Ok(()) => {
                    server
                        .reverse
                        .expose(holder, &name, port, target_port)
                        .await
                }
                Err(denied) => Err(denied.to_string()),
            };
            if let Err(e) = &r {
                tracing::info!(client = %holder.client, %name, error = %e, "expose refused");
            }
            session.claim_result(request, r.err());
        }
        ServerEvent::Release { service } => {
            server.reverse.release(holder.session, &service);
            server.reverse.release(
                holder.session,
                &format!("{}/{service}", server.config.adhoc_namespace),
            );
        }
    }
}

/// Accepts proxied streams until the connection ends.
async fn accept_streams(conn: Connection, server: Arc<Server>, identity: Identity) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let server = server.clone();
        let identity = identity.clone();
        tokio::spawn(async move { proxy_stream(send, recv, server, identity).await });
    }
}

async fn proxy_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    server: Arc<Server>,
    who: Identity,
) {
    let header =
        tokio::time::timeout(server.config.hello_timeout, pipe::read_header(&mut recv)).await;
    let (header, pending) = match header {
        Ok(Ok(h)) => h,
        failed => {
            let why = match failed {
                Ok(Err(why)) => why,
                _ => "no header in time",
            };
            tracing::debug!(client = %who.name, why, "stream dropped");
            server
                .metrics
                .connection_errors
                .with_label_values(&["unknown", "l2c", "bad_header"])
                .inc();
            let _ = send.reset(VarInt::from_u32(error_code::PROTOCOL_VIOLATION));
            let _ = recv.stop(VarInt::from_u32(error_code::PROTOCOL_VIOLATION));
            return;
        }
    };
    let StreamHeader::Connect { service, port } = header else {
        // Only the server opens reverse streams.
        server
            .metrics
            .connection_errors
            .with_label_values(&["unknown", "l2c", "bad_header"])
            .inc();
        let _ = send.reset(VarInt::from_u32(error_code::PROTOCOL_VIOLATION));
        return;
    };
    let catalog = server.catalog.borrow().clone();
    let resolved = dial::resolve(&catalog, service, port).and_then(|(svc, addrs)| {
        if server.access.may_reach(&who, &svc) {
            Ok((svc, addrs))
        } else {
            Err(OpenResult::NotAllowed)
        }
    });
    let (svc_key, direction) = match &resolved {
        Ok((svc, _)) => (svc.key(), svc.direction),
        Err(_) => ("unknown".to_owned(), Direction::L2C),
    };
    let labels = [svc_key.as_str(), direction.label()];
    let started = Instant::now();
    let dialled = match resolved {
        Ok((_, addrs)) => dial::connect(&addrs, server.config.dial_timeout).await,
        Err(r) => Err(r),
    };
    let mut tcp = match dialled {
        Ok(tcp) => tcp,
        Err(result) => {
            tracing::info!(client = %who.name, %service, port, %result, "connection not opened");
            server
                .metrics
                .connection_errors
                .with_label_values(&[labels[0], labels[1], result.label()])
                .inc();
            pipe::answer(&mut send, &mut recv, result).await;
            return;
        }
    };
    server
        .metrics
        .connect_latency
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    server
        .metrics
        .connections_total
        .with_label_values(&labels)
        .inc();
    let active = server.metrics.connections_active.with_label_values(&labels);
    active.inc();
    if pipe::answer(&mut send, &mut recv, OpenResult::Connected).await {
        let (sent, received) = (
            server.metrics.bytes_sent.with_label_values(&labels),
            server.metrics.bytes_received.with_label_values(&labels),
        );
        let meter = (
            |n: usize| sent.inc_by(n as u64),
            |n: usize| received.inc_by(n as u64),
        );
        let outcome = pipe::bridge(
            &mut tcp,
            send,
            recv,
            pending,
            |r| async move { Ok((r, Bytes::new())) },
            &meter,
        )
        .await;
        if outcome.end != End::Clean {
            server
                .metrics
                .connection_errors
                .with_label_values(&[labels[0], labels[1], outcome.end.label()])
                .inc();
        }
        tracing::debug!(client = %who.name, service = %svc_key, up = outcome.tcp_to_stream, down = outcome.stream_to_tcp, end = ?outcome.end, "connection closed");
    }
    active.dec();
}
