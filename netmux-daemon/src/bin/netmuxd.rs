//! `netmuxd`: the workstation daemon.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use netmux_daemon::config::{Config, DEFAULT_CONFIG};
use netmux_daemon::{control, daemon::Daemon, metrics::Metrics};

/// netmux workstation daemon.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Configuration file.
    #[arg(long, short, env = "NETMUX_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Print how this binary was built (`ebpf=real` or `ebpf=stub: why`)
    /// and exit; `cargo xtask` refuses a stub when the toolchain is present.
    #[arg(long)]
    build_info: bool,
}

fn main() -> anyhow::Result<()> {
    // journald (structured fields) under systemd, text on stderr otherwise.
    netmux_daemon::system::journal::init();
    let args = Args::parse();
    if args.build_info {
        println!(
            "netmuxd {} ebpf={}",
            env!("CARGO_PKG_VERSION"),
            netmux_daemon::redirect::ebpf::BUILD
        );
        return Ok(());
    }
    let config = Config::load(&args.config)?;
    // One worker unless `worker_threads` says otherwise (issue 17,
    // BENCHMARKS.md): with two, each tunneled request cost a futex wakeup
    // between the workers and more packets; one core moves about 1 GiB/s
    // through one connection, more than any link to a cluster.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let (listener, gid) = control::bind(
        &config.socket,
        control::default_group(config.socket_group.as_deref()).as_deref(),
    )?;
    let socket = config.socket.clone();
    let metrics_task = match config.metrics {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics on {addr}"))?;
            Some(tokio::spawn(metrics.clone().serve(l)))
        }
        None => None,
    };
    let (backend, reason) =
        netmux_daemon::redirect::Backend::choose(config.redirect, &config.cgroup)
            .map_err(anyhow::Error::msg)?;
    backend
        .exempt_this_process()
        .map_err(|e| anyhow::anyhow!("exempting netmuxd from its own redirect: {e}"))?;
    tracing::info!(redirect = %reason, "redirect backend chosen");
    let daemon = Daemon::with_backend(config, metrics, backend, reason);
    // A crash leaves a hosts block behind; start from a clean slate.
    daemon.cleanup().await;
    // DNS server and resolver integration (removes a crashed run's first).
    let dns = netmux_daemon::dns::start(&daemon).await;
    for ep in daemon.config().endpoints.iter().filter(|e| e.autostart) {
        let name = ep.name.clone();
        if let Err(e) = daemon.connect(&name, None).await {
            tracing::error!(endpoint = %name, error = %e, "autostart failed");
        }
    }
    tracing::info!(socket = %socket.display(), "netmuxd ready");
    let control = tokio::spawn(control::serve(listener, gid, daemon.clone()));
    notify(netmux_daemon::system::notify::State::Ready);
    // SIGHUP (systemctl reload) re-reads the config like `netmux reload`.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing SIGHUP handler")?;
    let reloader = daemon.clone();
    let reload_task = tokio::spawn(async move {
        while hup.recv().await.is_some() {
            notify(netmux_daemon::system::notify::State::Reloading);
            match reloader.reload_from_disk().await {
                Ok(r) => tracing::info!(result = ?r, "SIGHUP: reloaded"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed"),
            }
            notify(netmux_daemon::system::notify::State::Ready);
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("terminated"),
        () = daemon.exit.notified() => tracing::info!("exit requested"),
    }
    notify(netmux_daemon::system::notify::State::Stopping);
    control.abort();
    reload_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    daemon.cleanup().await;
    if let Some(dns) = dns {
        dns.stop().await;
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// Tells systemd (`Type=notify`) about `state`; a no-op elsewhere.
fn notify(state: netmux_daemon::system::notify::State) {
    if let Err(e) = netmux_daemon::system::notify::notify(state, None) {
        tracing::warn!(error = %e, ?state, "sd_notify failed");
    }
}
