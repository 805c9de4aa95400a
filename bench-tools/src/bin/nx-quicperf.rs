//! `nx-quicperf`: raw quinn, one bidirectional stream, no relay: the QUIC
//! ceiling netmux's bulk numbers are compared with. It uses netmux's own
//! transport settings and UDP socket setup
//! (`netmux_common::tunnel::quic`) but, by default, quinn's stock BBR
//! (`--congestion quinn`), so it stays the reference netmux's own
//! controller is measured against; `--congestion netmux` runs netmux's.
//!
//! `server --listen ADDR --cert-out FILE` writes its self-signed certificate
//! to FILE and, per stream, reads to the end, then answers the byte count
//! (8 bytes, big endian). `client --connect ADDR --cert FILE --seconds S`
//! sends 64 KiB chunks for S seconds, finishes the stream, waits for the
//! count and prints `{"bytes":N,"seconds":T,"gbit_s":G}`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use netmux_common::tunnel::quic;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const ALPN: &[u8] = b"nx-quicperf";
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Parser)]
#[command(name = "nx-quicperf")]
struct Cli {
    /// Congestion controller of this end.
    #[arg(long, value_enum, default_value_t = Congestion::Quinn, global = true)]
    congestion: Congestion,
    #[command(subcommand)]
    mode: Mode,
}

/// Which BBR the endpoint runs.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Congestion {
    /// quinn's `BbrConfig` (lifetime minimum RTT).
    Quinn,
    /// netmux's (`netmux_common::tunnel::quic::congestion`, windowed
    /// minimum RTT), as netmuxd and netmux-server run it.
    Netmux,
}

impl Congestion {
    fn transport(self) -> quinn::TransportConfig {
        match self {
            Congestion::Quinn => {
                quic::transport_config_with(Arc::new(quinn::congestion::BbrConfig::default()))
            }
            Congestion::Netmux => quic::transport_config(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Receive streams and answer their byte counts.
    Server {
        #[arg(long)]
        listen: SocketAddr,
        /// Where to write the certificate (DER) for clients.
        #[arg(long)]
        cert_out: PathBuf,
        /// Exit after this many seconds.
        #[arg(long, default_value_t = 3600)]
        seconds: u64,
    },
    /// Send for a while on one stream; print the rate.
    Client {
        #[arg(long)]
        connect: SocketAddr,
        /// The server's certificate (DER).
        #[arg(long)]
        cert: PathBuf,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
}

/// netmux's provider, so that this stays netmux's QUIC without the relay.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    netmux_common::tunnel::quic::crypto_provider()
}

async fn server(listen: SocketAddr, cert_out: PathBuf, cc: Congestion) -> anyhow::Result<()> {
    let ck = rcgen::generate_simple_self_signed(vec!["nx-quicperf".to_owned()])?;
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(cc.transport()));
    let socket = quic::bind_udp(listen)?;
    let endpoint = quic::endpoint(Some(config), socket)?;
    let tmp = cert_out.with_extension("tmp");
    std::fs::write(&tmp, cert.as_ref())?;
    std::fs::rename(&tmp, &cert_out)?;
    eprintln!("nx-quicperf: listening on {listen}");
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => return eprintln!("nx-quicperf: handshake: {e}"),
            };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    let mut total: u64 = 0;
                    loop {
                        match recv.read_chunk(usize::MAX, true).await {
                            Ok(Some(chunk)) => total += chunk.bytes.len() as u64,
                            Ok(None) => break,
                            Err(e) => return eprintln!("nx-quicperf: read: {e}"),
                        }
                    }
                    let _ = send.write_all(&total.to_be_bytes()).await;
                    let _ = send.finish();
                    let _ = send.stopped().await;
                });
            }
        });
    }
    Ok(())
}

async fn client(
    connect: SocketAddr,
    cert: PathBuf,
    seconds: f64,
    cc: Congestion,
) -> anyhow::Result<()> {
    let der = std::fs::read(&cert).with_context(|| format!("reading {}", cert.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(cc.transport()));
    let bind: SocketAddr = if connect.is_ipv6() {
        "[::]:0".parse()?
    } else {
        "0.0.0.0:0".parse()?
    };
    let socket = quic::bind_udp(bind)?;
    let mut endpoint = quic::endpoint(None, socket)?;
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(connect, "nx-quicperf")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let chunk = Bytes::from(vec![0x5a; CHUNK]);
    let start = Instant::now();
    let stop = start + Duration::from_secs_f64(seconds);
    let mut sent: u64 = 0;
    while Instant::now() < stop {
        send.write_chunk(chunk.clone()).await?;
        sent += CHUNK as u64;
    }
    send.finish()?;
    let mut count = [0u8; 8];
    recv.read_exact(&mut count).await?;
    let elapsed = start.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(count);
    if got != sent {
        bail!("server counted {got} bytes, sent {sent}");
    }
    println!(
        "{{\"bytes\":{sent},\"seconds\":{elapsed:.3},\"gbit_s\":{:.3}}}",
        sent as f64 * 8.0 / elapsed / 1e9
    );
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cc = cli.congestion;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.mode {
            Mode::Server {
                listen,
                cert_out,
                seconds,
            } => tokio::time::timeout(Duration::from_secs(seconds), server(listen, cert_out, cc))
                .await
                .unwrap_or(Ok(())),
            Mode::Client {
                connect,
                cert,
                seconds,
            } => {
                let limit = Duration::from_secs_f64(seconds + 30.0);
                tokio::time::timeout(limit, client(connect, cert, seconds, cc))
                    .await
                    .context("client timed out")?
            }
        }
    })
}
