//! The thin async shell around [`super::zone::answer`]: hickory-server
//! moves bytes over UDP and TCP (decoding, FORMERR for undecodable queries,
//! truncation to the client's UDP size, TCP idle timeouts); [`Handler`]
//! only picks the current zone and encodes the [`super::zone::Answer`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use netmux_common::sync::lock;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;

use super::zone::{answer, DnsEndpoint, ZoneFollower};
use crate::dns::NameRecord;

/// How long an idle TCP client may hold a connection.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest UDP payload we offer in EDNS (fits a 1500-byte MTU).
const UDP_PAYLOAD: u16 = 1232;

/// Answers queries from the names the daemon publishes.
///
/// The zone is rebuilt on the first query after the names changed, so a
/// catalog change is visible to the very next query (no background task to
/// race with).
pub struct Handler {
    names: watch::Receiver<Arc<Vec<NameRecord>>>,
    follower: Mutex<ZoneFollower>,
    endpoints: Option<EndpointSource>,
}

/// The configured endpoints as of now (the daemon's configuration can be
/// reloaded).
pub type EndpointSource = Arc<dyn Fn() -> Vec<DnsEndpoint> + Send + Sync>;

impl Handler {
    /// A handler for the configured `endpoints` following `names`.
    pub fn new(names: watch::Receiver<Arc<Vec<NameRecord>>>, endpoints: Vec<DnsEndpoint>) -> Self {
        Handler {
            names,
            follower: Mutex::new(ZoneFollower::new(endpoints)),
            endpoints: None,
        }
    }

    /// A handler following `names` and the endpoints `endpoints` returns,
    /// asked at every query (so a `netmux reload` that adds an endpoint or
    /// changes a cluster domain is answered for at once).
    pub(crate) fn following(
        names: watch::Receiver<Arc<Vec<NameRecord>>>,
        endpoints: EndpointSource,
    ) -> Self {
        Handler {
            names,
            follower: Mutex::new(ZoneFollower::new(endpoints())),
            endpoints: Some(endpoints),
        }
    }

    fn zone(&self) -> Arc<super::zone::Zone> {
        let records = self.names.borrow().clone();
        let endpoints = self.endpoints.as_ref().map(|e| e());
        let mut f = lock(&self.follower);
        if let Some(e) = endpoints {
            f.set_endpoints(e);
        }
        f.update(&records)
    }
}

fn failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut builder = MessageResponseBuilder::from_message_request(request);
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_PAYLOAD);
        edns.set_version(0);
        if request.edns.is_some() {
            builder.edns(&edns);
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let code = match (&request.edns, request.metadata.op_code) {
            (Some(e), _) if e.version() > 0 => Some(ResponseCode::BADVERS),
            (_, op) if op != OpCode::Query => Some(ResponseCode::NotImp),
            _ if request.queries.len() != 1 => Some(ResponseCode::FormErr),
            _ => None,
        };
        let sent = if let Some(code) = code {
            response_handle
                .send_response(builder.error_msg(&request.metadata, code))
                .await
        } else if let Some(q) = request.queries.queries().first() {
            let zone = self.zone();
            let a = answer(q.original(), &zone);
            tracing::debug!(query = %q.original(), code = %a.code, answers = a.answers.len(), "dns");
            metadata.authoritative = a.authoritative;
            metadata.response_code = a.code;
            let response = builder.build(
                metadata,
                a.answers.iter(),
                a.authority.iter(),
                std::iter::empty(),
                a.additionals.iter(),
            );
            response_handle.send_response(response).await
        } else {
            response_handle
                .send_response(builder.error_msg(&request.metadata, ResponseCode::FormErr))
                .await
        };
        sent.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "cannot send DNS response");
            failed(request)
        })
    }
}

/// A running DNS server; stops when dropped or [`DnsServer::shutdown`].
pub struct DnsServer {
    server: hickory_server::Server<Handler>,
    local: SocketAddr,
}

impl DnsServer {
    /// Serves `handler` on a bound UDP socket and TCP listener (the same
    /// address, by convention).
    pub(crate) fn serve(
        udp: UdpSocket,
        tcp: TcpListener,
        handler: Handler,
    ) -> std::io::Result<Self> {
        let local = udp.local_addr()?;
        let mut server = hickory_server::Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_TIMEOUT, 64);
        Ok(DnsServer { server, local })
    }

    /// Binds UDP and TCP on `listen` and serves `handler`. With port 0 the
    /// UDP port picked by the kernel is reused for TCP.
    pub async fn bind(listen: SocketAddr, handler: Handler) -> std::io::Result<Self> {
        let mut last = None;
        for _ in 0..8 {
            let udp = UdpSocket::bind(listen).await?;
            match TcpListener::bind(udp.local_addr()?).await {
                Ok(tcp) => return Self::serve(udp, tcp, handler),
                Err(e) if listen.port() == 0 => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free port for UDP and TCP")))
    }

    /// The address served (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops serving and waits for the tasks to end.
    pub(crate) async fn shutdown(mut self) {
        if let Err(e) = self.server.shutdown_gracefully().await {
            tracing::debug!(error = %e, "dns server shutdown");
        }
    }
}
