//! `nx-echo`: the sample services of the netmux demo and end-to-end tests.
//!
//! * `http`: a minimal HTTP/1.1 server (keep-alive; `GET /bytes/N` sends N
//!   pattern bytes, `POST`/`PUT` echo the body, `/status/CODE` answers with
//!   that code, anything else says hello).
//! * `tcp`: echoes every byte; on the client's EOF it finishes writing and
//!   shuts its write side (half-close aware).
//! * `sink`: reads to EOF, then answers `"<count> <checksum>\n"` and closes.
//! * `source`: reads a line `N\n`, sends N pattern bytes and closes.
//!
//! Pattern and checksum are [`sample_apps::Pattern`] and
//! [`sample_apps::StreamSum`], so a test can check 100 MiB byte-exact in both
//! directions without keeping a copy.

mod http;
mod stream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Sample services for netmux demos and tests.
#[derive(Debug, Parser)]
#[command(name = "nx-echo", version)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, clap::Args)]
struct ListenArgs {
    /// Address to listen on (repeatable).
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Most connections served at once; more wait in the accept queue.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// HTTP/1.1 echo server.
    Http {
        #[command(flatten)]
        listen: ListenArgs,
        /// Name in the hello body (default: the listen address).
        #[arg(long)]
        name: Option<String>,
    },
    /// TCP echo, half-close aware.
    Tcp {
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// UDP echo: every datagram is sent back to its sender.
    Udp {
        /// Address to listen on (repeatable).
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
    },
    /// Reads to EOF, answers "<count> <checksum>\n".
    Sink {
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// Reads "N\n", answers N pattern bytes.
    Source {
        #[command(flatten)]
        listen: ListenArgs,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        match cli.mode {
            Mode::Http { listen, name } => {
                serve(listen, move |sock, local| {
                    let name = name.clone().unwrap_or_else(|| local.to_string());
                    http::serve_connection(sock, name)
                })
                .await
            }
            Mode::Tcp { listen } => serve(listen, |sock, _| stream::echo(sock)).await,
            Mode::Udp { listen } => udp_echo(listen).await,
            Mode::Sink { listen } => serve(listen, |sock, _| stream::sink(sock)).await,
            Mode::Source { listen } => serve(listen, |sock, _| stream::source(sock)).await,
        }
    })
}

/// Binds every address, then serves each accepted connection with `handler`
/// until the process is killed or receives SIGINT/SIGTERM.
async fn serve<F, Fut>(args: ListenArgs, handler: F) -> anyhow::Result<()>
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(args.max_connections.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for addr in args.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr().unwrap_or(addr);
        eprintln!("nx-echo: listening on {local}");
        let handler = handler.clone();
        let limit = limit.clone();
        tasks.spawn(async move {
            loop {
                let permit = match limit.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                };
                let (sock, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        eprintln!("nx-echo: accept on {local}: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = sock.set_nodelay(true);
                let fut = handler(sock, local);
                tokio::spawn(async move {
                    if let Err(e) = fut.await {
                        if !matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                        ) {
                            eprintln!("nx-echo: {peer} -> {local}: {e}");
                        }
                    }
                    drop(permit);
                });
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = tasks.join_next() => {}
    }
    Ok(())
}

/// Echoes datagrams on every `listen` address until killed.
async fn udp_echo(listen: Vec<SocketAddr>) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for addr in listen {
        let socket = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding udp {addr}"))?;
        eprintln!("nx-echo udp listening on {addr}");
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                match socket.recv_from(&mut buf).await {
                    Ok((n, peer)) => {
                        let _ = socket.send_to(&buf[..n], peer).await;
                    }
                    Err(e) => eprintln!("nx-echo udp: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("udp echo task")?;
    }
    Ok(())
}
