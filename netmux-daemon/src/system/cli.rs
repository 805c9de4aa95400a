//! The `netmux` subcommands that integrate with the workstation and work
//! without a running daemon: `install`, `uninstall`, `doctor`, `logs`,
//! `completions`, `man`. The binary (src/bin/netmux.rs) only wires them in;
//! completions and the man page are generated from its clap definition,
//! passed in as a `clap::Command`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::api::{Reply, Request};
use crate::config::Config;
use crate::control;
use crate::system::doctor::{self, Status};
use crate::system::install::{self, Artifact, Commands, Init, Layout};

/// `netmux install`.
#[derive(Args, Debug, Clone)]
pub struct InstallArgs {
    /// Filesystem root to install into (a staging directory for packaging
    /// or tests; `/` is the running system).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Prefix for binaries, man page and completions.
    #[arg(long, default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// Directory holding the `netmux` and `netmuxd` binaries to install
    /// (default: the directory of this `netmux`).
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Service manager (default: systemd on Linux, launchd on macOS).
    #[arg(long, value_enum)]
    pub init: Option<InitArg>,
    /// Do not enable or start the service.
    #[arg(long)]
    pub no_enable: bool,
}

/// `netmux uninstall`.
#[derive(Args, Debug, Clone)]
pub struct UninstallArgs {
    /// Filesystem root the installation is in.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Prefix used at install time.
    #[arg(long, default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// Service manager (default: as recorded at install time).
    #[arg(long, value_enum)]
    pub init: Option<InitArg>,
    /// Also remove /etc/netmux/config.toml when it was edited.
    #[arg(long)]
    pub purge: bool,
}

/// Service manager on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum InitArg {
    /// systemd unit.
    Systemd,
    /// launchd plist (macOS).
    Launchd,
}

impl From<InitArg> for Init {
    fn from(i: InitArg) -> Init {
        match i {
            InitArg::Systemd => Init::Systemd,
            InitArg::Launchd => Init::Launchd,
        }
    }
}

/// `netmux doctor`.
#[derive(Args, Debug, Clone)]
pub struct DoctorArgs {
    /// Print the checks as JSON.
    #[arg(long)]
    pub json: bool,
    /// Bound on each endpoint's QUIC handshake, in seconds.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

/// `netmux logs`.
#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// Keep printing new entries.
    #[arg(long, short)]
    pub follow: bool,
    /// Only entries about this endpoint.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Only entries about this service (`namespace/name`).
    #[arg(long)]
    pub service: Option<String>,
    /// Number of past entries to show.
    #[arg(long, short = 'n', default_value_t = 200)]
    pub lines: u32,
    /// Only entries since this time (journalctl syntax: "1 hour ago", "today").
    #[arg(long)]
    pub since: Option<String>,
}

/// `netmux man`.
#[derive(Args, Debug, Clone)]
pub struct ManArgs {
    /// Write netmux.1 and one page per subcommand into this directory
    /// instead of printing netmux.1.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("netmux: {msg}");
    ExitCode::FAILURE
}

/// `cmd` named `netmux` (clap would take the package name, netmux-daemon).
fn named(cmd: &clap::Command) -> clap::Command {
    cmd.clone().name("netmux").bin_name("netmux")
}

/// Man page and completions for `cmd`, at their paths under the prefix.
pub fn artifacts(cmd: &clap::Command) -> Result<Vec<Artifact>, String> {
    let cmd = &named(cmd);
    let mut out = Vec::new();
    let mut man = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut man)
        .map_err(|e| format!("rendering the man page: {e}"))?;
    out.push(Artifact {
        rel: "share/man/man1/netmux.1".into(),
        contents: man,
    });
    for (shell, rel) in [
        (
            clap_complete::Shell::Bash,
            "share/bash-completion/completions/netmux",
        ),
        (
            clap_complete::Shell::Zsh,
            "share/zsh/site-functions/_netmux",
        ),
        (
            clap_complete::Shell::Fish,
            "share/fish/vendor_completions.d/netmux.fish",
        ),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "netmux", &mut buf);
        out.push(Artifact {
            rel: rel.into(),
            contents: buf,
        });
    }
    Ok(out)
}

/// `netmux install`.
pub fn run_install(args: &InstallArgs, cmd: &clap::Command) -> ExitCode {
    let from = match &args.from {
        Some(f) => f.clone(),
        None => match std::env::current_exe() {
            Ok(p) => p.parent().map(Path::to_owned).unwrap_or_default(),
            Err(e) => return fail(format!("cannot find this binary ({e}): pass --from DIR")),
        },
    };
    let artifacts = match artifacts(cmd) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let layout = Layout::new(
        &args.root,
        &args.prefix,
        args.init.map_or_else(Init::native, Init::from),
    );
    let opts = install::InstallOptions {
        from,
        artifacts,
        enable: !args.no_enable,
    };
    match install::install(&layout, &opts, &Commands::from_env()) {
        Ok(done) => {
            for d in done {
                println!("{d}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `netmux uninstall`: `cleanup` first (live system only), then remove.
pub async fn run_uninstall(args: &UninstallArgs, socket: &Path) -> ExitCode {
    let mut layout = Layout::new(
        &args.root,
        &args.prefix,
        args.init.map_or_else(Init::native, Init::from),
    );
    if let Ok(Some(m)) = install::read_manifest(&layout) {
        if let (None, Some(i)) = (args.init, m.init) {
            layout.init = i;
        }
    }
    if layout.is_live() {
        match control::call(socket, &Request::Cleanup).await {
            Ok(r) => match (r.ok, r.error) {
                (Some(Reply::Done { message }), _) => println!("{message}"),
                (_, Some(e)) => eprintln!("netmux: cleanup: {e}"),
                _ => {}
            },
            Err(_) => println!("netmuxd is not running; nothing to clean up in it"),
        }
    }
    let opts = install::UninstallOptions { purge: args.purge };
    match install::uninstall(&layout, &opts, &Commands::from_env()) {
        Ok(done) => {
            for d in done {
                println!("{d}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `netmux doctor`: exit status 1 when any check fails.
pub async fn run_doctor(args: &DoctorArgs, config: &Path, socket: &Path) -> ExitCode {
    let loaded = Config::load(config).map_err(|e| e.to_string());
    let status = match control::call(socket, &Request::Status).await {
        Ok(r) => match r.ok {
            Some(Reply::Status(s)) => Some(s),
            _ => None,
        },
        Err(_) => None,
    };
    let opts = doctor::Options {
        timeout: Duration::from_secs(args.timeout.max(1)),
        unit: PathBuf::from("/etc/systemd/system").join(install::UNIT_NAME),
    };
    let checks = doctor::run(
        loaded.as_ref().map_err(Clone::clone),
        config,
        status.as_ref(),
        &opts,
    )
    .await;
    if args.json {
        match serde_json::to_string_pretty(&checks) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(e),
        }
    } else {
        print!("{}", doctor::render(&checks));
    }
    if checks.iter().any(|c| c.status == Status::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The `journalctl` command line for `netmux logs` (`NETMUX_JOURNALCTL`
/// overrides the program).
pub fn journalctl_args(args: &LogsArgs) -> Vec<String> {
    let mut v = vec![
        "--unit".to_owned(),
        install::UNIT_NAME.to_owned(),
        "--lines".to_owned(),
        args.lines.to_string(),
        "--output".to_owned(),
        "short-iso".to_owned(),
        "--no-pager".to_owned(),
    ];
    if args.follow {
        v.push("--follow".into());
    }
    if let Some(s) = &args.since {
        v.push("--since".into());
        v.push(s.clone());
    }
    // journald matches on the structured fields netmuxd logs.
    if let Some(e) = &args.endpoint {
        v.push(format!("ENDPOINT={e}"));
    }
    if let Some(s) = &args.service {
        v.push(format!("SERVICE={s}"));
    }
    v
}

/// `netmux logs`: journald on Linux, launchd's log file on macOS.
pub fn run_logs(args: &LogsArgs) -> ExitCode {
    let status = if cfg!(target_os = "macos") {
        let log = Layout::new("/", "/usr/local", Init::Launchd).launchd_log();
        let mut t = std::process::Command::new("tail");
        t.arg("-n").arg(args.lines.to_string());
        if args.follow {
            t.arg("-f");
        }
        t.arg(log).status()
    } else {
        let program = std::env::var_os("NETMUX_JOURNALCTL").unwrap_or_else(|| "journalctl".into());
        std::process::Command::new(program)
            .args(journalctl_args(args))
            .status()
    };
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => fail(format!(
            "journalctl exited with {s}; to read the journal you need to be root or in the \
             systemd-journal (or adm) group"
        )),
        Err(e) => fail(format!(
            "cannot run journalctl ({e}); without systemd, netmuxd logs to its stderr"
        )),
    }
}

/// `netmux completions SHELL`.
pub fn run_completions(shell: clap_complete::Shell, cmd: &clap::Command) -> ExitCode {
    clap_complete::generate(shell, &mut named(cmd), "netmux", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// `netmux man`.
pub fn run_man(args: &ManArgs, cmd: &clap::Command) -> ExitCode {
    let cmd = &named(cmd);
    match &args.out {
        None => {
            let mut buf = Vec::new();
            if let Err(e) = clap_mangen::Man::new(cmd.clone()).render(&mut buf) {
                return fail(e);
            }
            match std::io::stdout().write_all(&buf) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Some(dir) => match clap_mangen::generate_to(cmd.clone(), dir) {
            Ok(()) => {
                println!("wrote man pages to {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("writing man pages to {}: {e}", dir.display())),
        },
    }
}
