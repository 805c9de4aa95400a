//! `netmux-server`: see the crate docs of `netmux_server`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// netmux cluster-side server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Server configuration file.
    #[arg(
        long,
        short,
        env = "NETMUX_SERVER_CONFIG",
        default_value = "/etc/netmux/server.toml"
    )]
    config: PathBuf,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config = netmux_server::config::Config::load(&args.config)?;
    // One worker unless `worker_threads` says otherwise (issue 17,
    // BENCHMARKS.md): a second worker costs a futex wakeup per request and
    // splits the packets quinn would have batched.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(config))
}

async fn serve(config: netmux_server::config::Config) -> anyhow::Result<()> {
    netmux_server::run(config, async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "no SIGTERM handler");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
    .await
    .context("netmux-server failed")
}
