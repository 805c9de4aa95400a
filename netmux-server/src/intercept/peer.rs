//! The replica-to-replica endpoint of intercepts (docs/intercept.md,
//! "Several replicas"): QUIC with mutual TLS, both sides presenting the
//! replica certificate the shared server CA issues ([`crate::ca`]), on a
//! UDP port of the pod IP (`replica_port`, default ephemeral) that the
//! intercept Lease advertises.
//!
//! A handshake without a client certificate of that CA with client
//! authentication (daemons never have one) fails before any stream is
//! read; a connection without the replica ALPN is closed. What flows on
//! it is [`wire`]'s. The member side also relays the holder's forwarded
//! streams to its daemon here ([`relay`]).

pub mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use netmux_common::proto::error_code;
use netmux_common::proto::stream::StreamHeader;
use netmux_common::sync::lock;
use netmux_common::tunnel::quic;
use quinn::{Connection, RecvStream, SendStream, VarInt};

use crate::ca::{ServerIdentity, REPLICA_NAME};

/// How long the first frame of a stream may take.
pub const FIRST_FRAME: Duration = Duration::from_secs(10);

/// The replica endpoint of this server.
pub struct Peers {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    /// Connections to holders, by their address.
    holders: Mutex<HashMap<SocketAddr, Connection>>,
}

impl Drop for Peers {
    fn drop(&mut self) {
        self.endpoint
            .close(VarInt::from_u32(error_code::NO_ERROR), b"replica stopping");
    }
}

fn tls_error(e: impl std::fmt::Display) -> String {
    format!("replica TLS setup: {e}")
}

impl Peers {
    /// Binds on `ip` and `port` (the `replica_port` key; 0: an ephemeral
    /// port) with this replica's certificate.
    pub fn bind(ip: IpAddr, port: u16, identity: &ServerIdentity) -> Result<Self, String> {
        let provider = netmux_common::tunnel::quic::crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(identity.ca_der.clone()).map_err(tls_error)?;
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(tls_error)?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                identity.replica_chain.clone(),
                identity.replica_key.clone_key(),
            )
            .map_err(tls_error)?;
        server.alpn_protocols = vec![wire::ALPN.to_vec()];
        server.max_early_data_size = 0;
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                identity.replica_chain.clone(),
                identity.replica_key.clone_key(),
            )
            .map_err(tls_error)?;
        client.alpn_protocols = vec![wire::ALPN.to_vec()];
        let transport = Arc::new(quic::transport_config());
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(tls_error)?,
        ));
        server.transport_config(transport.clone());
        let mut client = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(tls_error)?,
        ));
        client.transport_config(transport);
        let at = SocketAddr::new(ip, port);
        let socket = quic::bind_udp(at).map_err(|e| match port {
            0 => format!("cannot bind the replica endpoint on {ip} (an ephemeral UDP port): {e}"),
            _ => format!(
                "cannot bind the replica endpoint on {at} (replica_port): {e}; choose another port, or 0 for an ephemeral one"
            ),
        })?;
        let mut endpoint =
            quic::endpoint(Some(server), socket).map_err(|e| format!("replica endpoint: {e}"))?;
        endpoint.set_default_client_config(client);
        let addr = endpoint
            .local_addr()
            .map_err(|e| format!("replica endpoint: {e}"))?;
        Ok(Peers {
            endpoint,
            addr,
            holders: Mutex::new(HashMap::new()),
        })
    }

    /// Where other replicas reach this one.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next authenticated replica connecting here; `None` once the
    /// endpoint is closed.
    pub async fn accept(&self) -> Option<Connection> {
        loop {
            let incoming = self.endpoint.accept().await?;
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) if alpn(&conn).as_deref() == Some(wire::ALPN) => return Some(conn),
                Ok(conn) => {
                    tracing::info!(%remote, "replica connection without the replica ALPN; closed");
                    conn.close(
                        VarInt::from_u32(error_code::PROTOCOL_VIOLATION),
                        b"replica ALPN required",
                    );
                }
                // No certificate of the CA: refused by the handshake.
                Err(e) => tracing::info!(%remote, error = %e, "replica handshake refused"),
            }
        }
    }

    /// A connection to the holder at `addr`: the open one, or a new one
    /// (`true`: its forwarded streams are still to be served).
    pub async fn connect(&self, addr: SocketAddr) -> Result<(Connection, bool), String> {
        if let Some(c) = lock(&self.holders)
            .get(&addr)
            .filter(|c| c.close_reason().is_none())
        {
            return Ok((c.clone(), false));
        }
        let connecting = self
            .endpoint
            .connect(addr, REPLICA_NAME)
            .map_err(|e| format!("cannot reach the holder replica at {addr}: {e}"))?;
        let conn = tokio::time::timeout(FIRST_FRAME, connecting)
            .await
            .map_err(|_| format!("the holder replica at {addr} did not answer"))?
            .map_err(|e| format!("cannot reach the holder replica at {addr}: {e}"))?;
        let mut holders = lock(&self.holders);
        if let Some(c) = holders.get(&addr).filter(|c| c.close_reason().is_none()) {
            // Raced with another registration: keep one connection.
            conn.close(VarInt::from_u32(error_code::NO_ERROR), b"duplicate");
            return Ok((c.clone(), false));
        }
        holders.insert(addr, conn.clone());
        Ok((conn, true))
    }
}

fn alpn(conn: &Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// Reads the first message of `recv` within [`FIRST_FRAME`]; the reader
/// keeps the bytes behind it.
pub async fn first<T: for<'de> serde::Deserialize<'de>>(
    recv: &mut RecvStream,
    reader: &mut wire::Reader,
) -> Result<T, FirstError> {
    let read = async {
        loop {
            if let Some(m) = reader.message()? {
                return Ok(m);
            }
            match recv.read_chunk(64 * 1024, true).await {
                Ok(Some(c)) => reader.push(&c.bytes),
                Ok(None) | Err(_) => return Err(FirstError::Ended),
            }
        }
    };
    tokio::time::timeout(FIRST_FRAME, read)
        .await
        .unwrap_or(Err(FirstError::Ended))
}

/// Why [`first`] has no message.
#[derive(Debug)]
pub enum FirstError {
    /// The stream ended or was reset (or took too long).
    Ended,
    /// The peer sent a bad frame: close its connection.
    Bad(wire::WireError),
}

impl From<wire::WireError> for FirstError {
    fn from(e: wire::WireError) -> Self {
        FirstError::Bad(e)
    }
}

/// Closes the connection of a replica that broke the protocol (only that
/// one).
pub fn violation(conn: &Connection, e: &wire::WireError) {
    tracing::warn!(remote = %conn.remote_address(), error = %e, "closing a peer replica's connection");
    conn.close(
        VarInt::from_u32(error_code::PROTOCOL_VIOLATION),
        e.to_string().as_bytes(),
    );
}

/// Where a member sends a forwarded stream: its daemon's connection and
/// the catalog id its daemon knows.
pub type Route =
    dyn Fn(u64) -> Option<(Connection, netmux_common::proto::catalog::ServiceId)> + Send + Sync;

/// The member side of connection `conn` to a holder: each stream the
/// holder opens starts with a [`wire::Forward`]; it becomes a
/// server-initiated stream to the daemon of that registration (`route`)
/// and bytes are relayed both ways, the daemon's open result first.
pub async fn relay(conn: Connection, route: Arc<Route>) {
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let conn = conn.clone();
        let route = route.clone();
        tokio::spawn(async move { forward(conn, send, recv, &*route).await });
    }
}

async fn forward(conn: Connection, mut send: SendStream, mut recv: RecvStream, route: &Route) {
    let mut reader = wire::Reader::new();
    let fwd: wire::Forward = match first(&mut recv, &mut reader).await {
        Ok(f) => f,
        Err(FirstError::Bad(e)) => return violation(&conn, &e),
        Err(FirstError::Ended) => return,
    };
    let Some((daemon, service)) = route(fwd.registration) else {
        // The intercept ended here meanwhile: the holder's client is reset.
        let _ = send.reset(VarInt::from_u32(error_code::NO_ERROR));
        let _ = recv.stop(VarInt::from_u32(error_code::NO_ERROR));
        return;
    };
    let (mut up, down) = match daemon.open_bi().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "the member's daemon is unreachable");
            let _ = send.reset(VarInt::from_u32(error_code::NO_ERROR));
            let _ = recv.stop(VarInt::from_u32(error_code::NO_ERROR));
            return;
        }
    };
    let mut head = BytesMut::new();
    netmux_common::proto::open::write_header(
        &StreamHeader::Reverse {
            service,
            port: fwd.port,
            peer: fwd.peer,
        },
        &mut head,
    );
    head.extend_from_slice(&reader.rest());
    if up.write_chunk(head.freeze()).await.is_err() {
        let _ = send.reset(VarInt::from_u32(error_code::NO_ERROR));
        return;
    }
    tokio::join!(pipe(recv, up), pipe(down, send));
}

/// Copies `recv` into `send` until it ends (then finishes `send`); an
/// error on either side resets the other.
async fn pipe(mut recv: RecvStream, mut send: SendStream) {
    match tokio::io::copy(&mut recv, &mut send).await {
        Ok(_) => {
            let _ = send.finish();
        }
        Err(_) => {
            let _ = send.reset(VarInt::from_u32(error_code::NO_ERROR));
            let _ = recv.stop(VarInt::from_u32(error_code::NO_ERROR));
        }
    }
}

#[cfg(test)]
mod tests;
