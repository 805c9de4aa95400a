//! Control-stream state machines for both ends, sans IO.
//!
//! Drivers feed received bytes with `handle_input`, take bytes to send with
//! `poll_transmit`, and take what happened with `poll_event`. The server side
//! also has a deadline for the hello ([`ServerSession::poll_timeout`] /
//! [`ServerSession::handle_timeout`]). When a method returns an error, the
//! driver still flushes `poll_transmit` (a refusal may be queued), then closes
//! the connection with [`SessionError::close_code`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::catalog::{self, Catalog, CatalogEvent};
use super::codec::DecodeError;
use super::control::{self, ClientMessage, ServerMessage};
use super::frame::{self, FrameDecoder};
use super::hello::{Hello, HelloError, HelloReply, HelloStatus};
use super::{error_code, PROTOCOL_VERSION};

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The hello failed (bad magic, version mismatch, malformed).
    #[error("hello failed: {0}")]
    Hello(#[from] HelloError),
    /// The server refused us.
    #[error("refused by server ({status:?}): {message}")]
    Refused {
        /// Why.
        status: HelloStatus,
        /// The server's explanation.
        message: String,
    },
    /// A frame after the hello was invalid.
    #[error("protocol violation: {0}")]
    Protocol(DecodeError),
    /// The peer sent something that is not allowed in the current state.
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
    /// The daemon did not complete its hello in time.
    #[error("no hello within {0:?}")]
    HelloTimeout(Duration),
    /// The server did not accept and send its catalog in time (the
    /// daemon's side, [`ClientSession::expect_sync_within`]).
    #[error("no catalog from the server within {}s", .0.as_secs())]
    SyncTimeout(Duration),
}

impl SessionError {
    /// QUIC application error code to close the connection with.
    pub fn close_code(&self) -> u32 {
        match self {
            SessionError::Refused { .. } => error_code::REFUSED,
            SessionError::Hello(HelloError::VersionMismatch { .. }) => error_code::REFUSED,
            SessionError::HelloTimeout(_) | SessionError::SyncTimeout(_) => {
                error_code::HELLO_TIMEOUT
            }
            _ => error_code::PROTOCOL_VIOLATION,
        }
    }
}

fn push_frame<T: serde::Serialize>(out: &mut BytesMut, msg: &T) -> bool {
    // Messages that do not fit a frame are never sent truncated: a catalog
    // entry so large is left out and reported by the server session
    // ([`ServerSession::take_oversized`]); anything else is a bug here.
    match control::encode(msg).and_then(|body| frame::encode(&body, out)) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "control message not sent");
            false
        }
    }
}

/// What the daemon learns from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The hello was accepted; `message` names the server.
    Accepted {
        /// Server's greeting.
        message: String,
    },
    /// A full snapshot arrived; [`ClientSession::catalog`] holds it.
    CatalogReplaced,
    /// An incremental change, already applied to the catalog.
    Changed(CatalogEvent),
    /// Answer to a ping.
    Pong(u64),
    /// Answer to a claim or expose.
    ClaimResult {
        /// The request id returned by [`ClientSession::claim`].
        request: u32,
        /// Why it failed, if it did.
        error: Option<String>,
    },
    /// The server's report on this daemon's intercepts.
    Intercepts(Vec<super::control::InterceptReport>),
}

#[derive(Debug)]
enum ClientState {
    /// Hello sent, waiting for the reply.
    AwaitingReply { buf: BytesMut },
    /// Accepted; receiving frames. `pending` holds a snapshot in progress.
    Established { pending: Option<Catalog> },
    /// Ended with an error; no further input is processed.
    Failed,
}

/// The daemon's side of the control stream.
#[derive(Debug)]
pub struct ClientSession {
    state: ClientState,
    frames: FrameDecoder,
    out: BytesMut,
    events: VecDeque<ClientEvent>,
    catalog: Catalog,
    synced: bool,
    next_request: u32,
    /// Ranges the server announced in its hello reply.
    cluster_ranges: Vec<super::cidr::Cidr>,
    /// Entries the server left out of the snapshot (too large).
    left_out: super::left_out::LeftOut,
    /// Until when the hello reply and the first full catalog may take, and
    /// how long that was ([`Self::expect_sync_within`]).
    sync_deadline: Option<(Instant, Duration)>,
}

/// How long the daemon waits, from sending its hello, for the server's
/// reply and the first full catalog.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

impl ClientSession {
    /// Starts a session; the hello is queued for transmission.
    pub fn new(hello: &Hello) -> Self {
        let mut out = BytesMut::new();
        hello.encode(&mut out);
        ClientSession {
            state: ClientState::AwaitingReply {
                buf: BytesMut::new(),
            },
            frames: FrameDecoder::new(),
            out,
            events: VecDeque::new(),
            catalog: Catalog::new(),
            synced: false,
            next_request: 0,
            cluster_ranges: Vec::new(),
            left_out: Default::default(),
            sync_deadline: None,
        }
    }

    /// Expects the hello reply and the first full catalog within `timeout`
    /// from `now`: until then [`Self::poll_timeout`] reports the deadline,
    /// and [`Self::handle_timeout`] past it fails the session.
    pub fn expect_sync_within(&mut self, now: Instant, timeout: Duration) {
        self.sync_deadline = Some((now + timeout, timeout));
    }

    /// When [`Self::handle_timeout`] must be called next: the sync
    /// deadline, while the session is neither synced nor failed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (&self.state, self.synced) {
            (ClientState::Failed, _) | (_, true) => None,
            _ => self.sync_deadline.map(|(d, _)| d),
        }
    }

    /// Checks the sync deadline; past it the session fails with
    /// [`SessionError::SyncTimeout`].
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        match (self.poll_timeout(), self.sync_deadline) {
            (Some(deadline), Some((_, timeout))) if now >= deadline => {
                self.state = ClientState::Failed;
                Err(SessionError::SyncTimeout(timeout))
            }
            _ => Ok(()),
        }
    }

    /// The cluster's address ranges as the server announced them in its
    /// hello reply (empty before the reply, or from a server that announces
    /// none).
    pub fn cluster_ranges(&self) -> &[super::cidr::Cidr] {
        &self.cluster_ranges
    }

    /// Catalog entries the server left out of its snapshot because each is
    /// too large for a frame (named in its hello reply; empty from a server
    /// that predates the extension).
    pub fn left_out(&self) -> &super::left_out::LeftOut {
        &self.left_out
    }

    /// The catalog as last synced and updated.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Whether a full snapshot has been received.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Queues a ping.
    pub fn ping(&mut self, nonce: u64) {
        push_frame(&mut self.out, &ClientMessage::Ping(nonce));
    }

    fn next_request(&mut self) -> u32 {
        self.next_request = self.next_request.wrapping_add(1);
        self.next_request
    }

    /// Queues a claim of the C2L service `namespace/name`; the answer comes
    /// as [`ClientEvent::ClaimResult`] with the returned id.
    pub fn claim(&mut self, service: &str) -> u32 {
        let request = self.next_request();
        push_frame(
            &mut self.out,
            &ClientMessage::Claim {
                request,
                service: service.to_owned(),
            },
        );
        request
    }

    /// Queues an ad hoc C2L service publication and claim.
    pub fn expose(&mut self, name: &str, port: u16, target_port: u16) -> u32 {
        let request = self.next_request();
        push_frame(
            &mut self.out,
            &ClientMessage::Expose {
                request,
                name: name.to_owned(),
                port,
                target_port,
            },
        );
        request
    }

    /// Queues an intercept of port `port` (0: the only one) of the
    /// Service behind catalog entry `service`; global without `header`,
    /// and then replacing the workload with `replace`.
    /// Answered as [`ClientEvent::ClaimResult`] with the returned id.
    pub fn intercept(
        &mut self,
        service: &str,
        port: u16,
        header: Option<(String, String)>,
        mirror: bool,
        replace: bool,
    ) -> u32 {
        let request = self.next_request();
        push_frame(
            &mut self.out,
            &ClientMessage::Intercept {
                request,
                service: service.to_owned(),
                port,
                header,
                mirror,
                replace,
            },
        );
        request
    }

    /// Queues the stop of `workload` while this session holds it.
    /// Answered as [`ClientEvent::ClaimResult`] with the returned id.
    pub fn stop_workload(&mut self, workload: &super::replaced::Workload) -> u32 {
        let request = self.next_request();
        push_frame(
            &mut self.out,
            &ClientMessage::StopWorkload {
                request,
                workload: workload.clone(),
            },
        );
        request
    }

    /// Queues the end of a [`Self::stop_workload`].
    pub fn start_workload(&mut self, workload: &super::replaced::Workload) {
        push_frame(
            &mut self.out,
            &ClientMessage::StartWorkload {
                workload: workload.clone(),
            },
        );
    }

    /// Queues the end of an intercept.
    pub fn leave(&mut self, service: &str, port: u16) {
        push_frame(
            &mut self.out,
            &ClientMessage::Leave {
                service: service.to_owned(),
                port,
            },
        );
    }

    /// Queues the release of a claim.
    pub fn release(&mut self, service: &str) {
        push_frame(
            &mut self.out,
            &ClientMessage::Release {
                service: service.to_owned(),
            },
        );
    }

    /// Bytes to write to the control stream, if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// Next thing that happened.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Feeds bytes read from the control stream.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), SessionError> {
        let result = self.handle_input_inner(data);
        if result.is_err() {
            self.state = ClientState::Failed;
        }
        result
    }

    fn handle_input_inner(&mut self, data: &[u8]) -> Result<(), SessionError> {
        match &mut self.state {
            ClientState::Failed => return Err(SessionError::Unexpected("input after failure")),
            ClientState::AwaitingReply { buf } => {
                buf.extend_from_slice(data);
                let (reply, used) = match HelloReply::decode(buf) {
                    Ok(r) => r,
                    Err(HelloError::UnexpectedEnd) => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                if reply.status != HelloStatus::Accepted {
                    return Err(SessionError::Refused {
                        status: reply.status,
                        message: reply.message,
                    });
                }
                if reply.version != PROTOCOL_VERSION {
                    return Err(HelloError::VersionMismatch {
                        peer: reply.version,
                        ours: PROTOCOL_VERSION,
                    }
                    .into());
                }
                let (_, extensions, _) = HelloReply::decode_with_extensions(buf)?;
                self.cluster_ranges = extensions.cluster_ranges;
                self.left_out = extensions.left_out;
                let rest = buf.split_off(used);
                self.frames.push(&rest);
                self.events.push_back(ClientEvent::Accepted {
                    message: reply.message,
                });
                self.state = ClientState::Established { pending: None };
            }
            ClientState::Established { .. } => self.frames.push(data),
        }
        while let Some(payload) = self.frames.next_frame().map_err(SessionError::Protocol)? {
            let msg = ServerMessage::decode(&payload).map_err(SessionError::Protocol)?;
            self.handle_message(msg)?;
        }
        Ok(())
    }

    fn handle_message(&mut self, msg: ServerMessage) -> Result<(), SessionError> {
        let ClientState::Established { pending } = &mut self.state else {
            return Err(SessionError::Unexpected("message before hello reply"));
        };
        match msg {
            ServerMessage::CatalogBegin => *pending = Some(Catalog::new()),
            ServerMessage::CatalogSynced => {
                let snapshot = pending.take().ok_or(SessionError::Unexpected(
                    "CatalogSynced without CatalogBegin",
                ))?;
                self.catalog = snapshot;
                self.synced = true;
                self.events.push_back(ClientEvent::CatalogReplaced);
            }
            ServerMessage::Upsert(_) | ServerMessage::Remove(_) => {
                let event = match msg {
                    ServerMessage::Upsert(s) => CatalogEvent::Upsert(s),
                    ServerMessage::Remove(id) => CatalogEvent::Remove(id),
                    _ => return Err(SessionError::Unexpected("unreachable")),
                };
                match pending {
                    Some(snapshot) => catalog::apply(snapshot, &event),
                    None if self.synced => {
                        catalog::apply(&mut self.catalog, &event);
                        self.events.push_back(ClientEvent::Changed(event));
                    }
                    None => return Err(SessionError::Unexpected("catalog event before snapshot")),
                }
            }
            ServerMessage::Pong(n) => self.events.push_back(ClientEvent::Pong(n)),
            ServerMessage::ClaimResult { request, error } => self
                .events
                .push_back(ClientEvent::ClaimResult { request, error }),
            ServerMessage::Intercepts(r) => self.events.push_back(ClientEvent::Intercepts(r)),
        }
        Ok(())
    }
}

/// What the server learns from a daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A well-formed hello of our version: decide with
    /// [`ServerSession::accept`] or [`ServerSession::refuse`].
    Hello(Hello),
    /// The daemon asks to hold a C2L service; answer with
    /// [`ServerSession::claim_result`].
    Claim {
        /// Request id.
        request: u32,
        /// `namespace/name`.
        service: String,
    },
    /// The daemon publishes an ad hoc C2L service and claims it.
    Expose {
        /// Request id.
        request: u32,
        /// Service name.
        name: String,
        /// Cluster-side port.
        port: u16,
        /// Local target port.
        target_port: u16,
    },
    /// The daemon gives up a claim.
    Release {
        /// `namespace/name`.
        service: String,
    },
    /// The daemon intercepts a Service's port; answer with
    /// [`ServerSession::claim_result`].
    Intercept {
        /// Request id.
        request: u32,
        /// `namespace/name` of the catalog entry.
        service: String,
        /// Service port, 0: the only one.
        port: u16,
        /// Personal intercept's header, `None`: global.
        header: Option<(String, String)>,
        /// A mirror (copies only).
        mirror: bool,
        /// A replace intercept (the workload scaled to zero meanwhile).
        replace: bool,
    },
    /// The daemon stops a workload no Service fronts; answer with
    /// [`ServerSession::claim_result`].
    StopWorkload {
        /// Request id.
        request: u32,
        /// Which.
        workload: super::replaced::Workload,
    },
    /// The daemon ends a [`ServerEvent::StopWorkload`].
    StartWorkload {
        /// Which.
        workload: super::replaced::Workload,
    },
    /// The daemon ends an intercept.
    Leave {
        /// `namespace/name`.
        service: String,
        /// Service port as asked (0: the only one).
        port: u16,
    },
}

#[derive(Debug)]
enum ServerState {
    /// Waiting for the hello until `deadline`.
    AwaitingHello { buf: BytesMut, deadline: Instant },
    /// Hello received, verdict pending.
    Deciding,
    /// Accepted; `sent` is the catalog the daemon has.
    Established { sent: Catalog },
    /// Refused or failed.
    Closed,
}

/// The server's side of one daemon's control stream.
#[derive(Debug)]
pub struct ServerSession {
    state: ServerState,
    hello_timeout: Duration,
    frames: FrameDecoder,
    out: BytesMut,
    events: VecDeque<ServerEvent>,
    /// Catalog entries left out because they do not fit a frame.
    oversized: Vec<String>,
}

impl ServerSession {
    /// Starts waiting for a hello, which must arrive within `hello_timeout`.
    pub fn new(now: Instant, hello_timeout: Duration) -> Self {
        ServerSession {
            state: ServerState::AwaitingHello {
                buf: BytesMut::new(),
                deadline: now + hello_timeout,
            },
            hello_timeout,
            frames: FrameDecoder::new(),
            out: BytesMut::new(),
            events: VecDeque::new(),
            oversized: Vec::new(),
        }
    }

    /// `namespace/name` of the catalog entries left out since the last
    /// call because their encoding is over the 64 KiB frame limit; the
    /// driver reports each (log, metric). They are never sent truncated.
    pub fn take_oversized(&mut self) -> Vec<String> {
        std::mem::take(&mut self.oversized)
    }

    /// Sends `svc`, or, when it does not fit a frame, reports it and
    /// removes the `previous` version from the daemon if it had that one
    /// (it fit): the daemon never keeps a stale entry.
    fn push_upsert(&mut self, svc: &catalog::Service, previous: Option<&catalog::Service>) {
        if !push_frame(&mut self.out, &ServerMessage::Upsert(svc.clone())) {
            self.oversized.push(svc.key());
            if previous.is_some_and(control::upsert_fits) {
                push_frame(&mut self.out, &ServerMessage::Remove(svc.id));
            }
        }
    }

    /// Bytes to write to the control stream, if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// Next thing that happened.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            ServerState::AwaitingHello { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// Checks the hello deadline.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        if let ServerState::AwaitingHello { deadline, .. } = &self.state {
            if now >= *deadline {
                self.state = ServerState::Closed;
                return Err(SessionError::HelloTimeout(self.hello_timeout));
            }
        }
        Ok(())
    }

    /// Whether the daemon was accepted.
    pub fn is_established(&self) -> bool {
        matches!(self.state, ServerState::Established { .. })
    }

    fn reply(&mut self, status: HelloStatus, message: &str) {
        self.reply_with(status, message, &super::cidr::ReplyExtensions::default());
    }

    fn reply_with(
        &mut self,
        status: HelloStatus,
        message: &str,
        extensions: &super::cidr::ReplyExtensions,
    ) {
        HelloReply {
            version: PROTOCOL_VERSION,
            status,
            message: message.to_owned(),
        }
        .encode_with(extensions, &mut self.out);
    }

    /// Feeds bytes read from the control stream.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), SessionError> {
        let result = self.handle_input_inner(data);
        if result.is_err() {
            self.state = ServerState::Closed;
        }
        result
    }

    fn handle_input_inner(&mut self, data: &[u8]) -> Result<(), SessionError> {
        match &mut self.state {
            ServerState::Closed => Err(SessionError::Unexpected("input after close")),
            ServerState::Deciding => Err(SessionError::Unexpected("data before hello verdict")),
            ServerState::AwaitingHello { buf, .. } => {
                buf.extend_from_slice(data);
                match Hello::decode(buf) {
                    Ok((hello, used)) => {
                        if buf.len() > used {
                            return Err(SessionError::Unexpected("data behind the hello"));
                        }
                        self.state = ServerState::Deciding;
                        self.events.push_back(ServerEvent::Hello(hello));
                        Ok(())
                    }
                    Err(HelloError::UnexpectedEnd) => Ok(()),
                    Err(e @ HelloError::VersionMismatch { peer, ours }) => {
                        self.reply(
                            HelloStatus::VersionMismatch,
                            &format!(
                                "this server speaks netmux protocol v{ours}, the daemon v{peer}: \
                                 install matching versions"
                            ),
                        );
                        Err(e.into())
                    }
                    Err(e @ HelloError::BadMagic { .. }) => Err(e.into()),
                    Err(e) => {
                        self.reply(HelloStatus::Malformed, &e.to_string());
                        Err(e.into())
                    }
                }
            }
            ServerState::Established { .. } => {
                self.frames.push(data);
                while let Some(payload) =
                    self.frames.next_frame().map_err(SessionError::Protocol)?
                {
                    match ClientMessage::decode(&payload).map_err(SessionError::Protocol)? {
                        ClientMessage::Ping(n) => {
                            push_frame(&mut self.out, &ServerMessage::Pong(n));
                        }
                        ClientMessage::Claim { request, service } => self
                            .events
                            .push_back(ServerEvent::Claim { request, service }),
                        ClientMessage::Expose {
                            request,
                            name,
                            port,
                            target_port,
                        } => self.events.push_back(ServerEvent::Expose {
                            request,
                            name,
                            port,
                            target_port,
                        }),
                        ClientMessage::Release { service } => {
                            self.events.push_back(ServerEvent::Release { service })
                        }
                        ClientMessage::Intercept {
                            request,
                            service,
                            port,
                            header,
                            mirror,
                            replace,
                        } => self.events.push_back(ServerEvent::Intercept {
                            request,
                            service,
                            port,
                            header,
                            mirror,
                            replace,
                        }),
                        ClientMessage::Leave { service, port } => {
                            self.events.push_back(ServerEvent::Leave { service, port })
                        }
                        ClientMessage::StopWorkload { request, workload } => self
                            .events
                            .push_back(ServerEvent::StopWorkload { request, workload }),
                        ClientMessage::StartWorkload { workload } => self
                            .events
                            .push_back(ServerEvent::StartWorkload { workload }),
                    }
                }
                Ok(())
            }
        }
    }

    /// Accepts the daemon and queues the full catalog snapshot.
    pub fn accept(&mut self, greeting: &str, catalog: &Catalog) {
        self.accept_with(greeting, catalog, &super::cidr::ReplyExtensions::default());
    }

    /// [`Self::accept`], announcing `extensions` (the cluster's ranges) in
    /// the hello reply.
    pub fn accept_with(
        &mut self,
        greeting: &str,
        catalog: &Catalog,
        extensions: &super::cidr::ReplyExtensions,
    ) {
        // The snapshot first, so the reply can name what it leaves out.
        let mut snapshot = BytesMut::new();
        push_frame(&mut snapshot, &ServerMessage::CatalogBegin);
        let mut left_out = Vec::new();
        for svc in catalog.values() {
            if !push_frame(&mut snapshot, &ServerMessage::Upsert(svc.clone())) {
                left_out.push(svc.key());
            }
        }
        push_frame(&mut snapshot, &ServerMessage::CatalogSynced);
        let extensions = super::cidr::ReplyExtensions {
            left_out: super::left_out::LeftOut::from_keys(&left_out),
            ..extensions.clone()
        };
        self.reply_with(HelloStatus::Accepted, greeting, &extensions);
        self.out.extend_from_slice(&snapshot);
        self.oversized.extend(left_out);
        self.state = ServerState::Established {
            sent: catalog.clone(),
        };
    }

    /// Refuses the daemon; the driver flushes and closes.
    pub fn refuse(&mut self, status: HelloStatus, message: &str) -> SessionError {
        self.reply(status, message);
        self.state = ServerState::Closed;
        SessionError::Refused {
            status,
            message: message.to_owned(),
        }
    }

    /// Answers a claim or expose.
    pub fn claim_result(&mut self, request: u32, error: Option<String>) {
        push_frame(
            &mut self.out,
            &ServerMessage::ClaimResult { request, error },
        );
    }

    /// Reports the daemon's intercepts.
    pub fn intercept_reports(&mut self, reports: Vec<super::control::InterceptReport>) {
        push_frame(&mut self.out, &ServerMessage::Intercepts(reports));
    }

    /// Queues the events that bring the daemon to `catalog`.
    pub fn update_catalog(&mut self, catalog: &Catalog) {
        if let ServerState::Established { sent } = &mut self.state {
            let events = catalog::diff(sent, catalog);
            let before = std::mem::replace(sent, catalog.clone());
            for event in events {
                match event {
                    CatalogEvent::Upsert(svc) => self.push_upsert(&svc, before.get(&svc.id)),
                    other => {
                        push_frame(&mut self.out, &ServerMessage::from(other));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
