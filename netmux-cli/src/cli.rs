//! The `netmux` subcommands that integrate with the workstation and work
//! without a running daemon: `install`, `uninstall`, `doctor`, `logs`,
//! `completions`, `man`. The binary (src/main.rs) only wires them in;
//! completions and the man page are generated from its clap definition,
//! passed in as a `clap::Command`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};

use netmux_api::{Reply, Request};
use netmux_daemon::config::Config;

use crate::doctor;
use crate::install::{self, Artifact, Commands, Init, Layout};

/// `netmux install`.
#[derive(Args, Debug, Clone)]
pub struct InstallArgs {
    /// Filesystem root to install into (a staging directory for packaging
    /// or tests; `/` is the running system).
    #[arg(long, default_value = "/")]
    pub(crate) root: PathBuf,
    /// Prefix for binaries, man page and completions.
    #[arg(long, default_value = "/usr/local")]
    pub(crate) prefix: PathBuf,
    /// Directory holding the `netmux` and `netmuxd` binaries to install
    /// (default: the directory of this `netmux`).
    #[arg(long)]
    pub(crate) from: Option<PathBuf>,
    /// Service manager (default: systemd on Linux, launchd on macOS).
    #[arg(long, value_enum)]
    pub(crate) init: Option<InitArg>,
    /// Do not enable or start the service.
    #[arg(long)]
    pub(crate) no_enable: bool,
}

/// `netmux uninstall`.
#[derive(Args, Debug, Clone)]
pub struct UninstallArgs {
    /// Filesystem root the installation is in.
    #[arg(long, default_value = "/")]
    pub(crate) root: PathBuf,
    /// Prefix used at install time.
    #[arg(long, default_value = "/usr/local")]
    pub(crate) prefix: PathBuf,
    /// Service manager (default: as recorded at install time).
    #[arg(long, value_enum)]
    pub(crate) init: Option<InitArg>,
    /// Also remove /etc/netmux/config.toml when it was edited.
    #[arg(long)]
    pub(crate) purge: bool,
}

/// Service manager on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum InitArg {
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
    pub(crate) json: bool,
    /// Bound on each endpoint's QUIC handshake, in seconds.
    #[arg(long, default_value_t = 3)]
    pub(crate) timeout: u64,
}

/// `netmux logs`.
#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    /// Keep printing new entries.
    #[arg(long, short)]
    pub(crate) follow: bool,
    /// Only entries about this endpoint.
    #[arg(long)]
    pub(crate) endpoint: Option<String>,
    /// Only entries about this service (`namespace/name`).
    #[arg(long)]
    pub(crate) service: Option<String>,
    /// Number of past entries to show.
    #[arg(long, short = 'n', default_value_t = 200)]
    pub(crate) lines: u32,
    /// Only entries since this time (journalctl syntax: "1 hour ago", "today").
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) output: LogFormat,
}

/// How `netmux logs` prints journal entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// One line per entry: time (UTC), `netmuxd[PID]:`, the message and
    /// netmuxd's structured fields (`ENDPOINT=dev SERVICE=ns/web CONN=4`).
    #[default]
    Text,
    /// journalctl's JSON: one object per entry and line, every field.
    Json,
}

/// `netmux man`.
#[derive(Args, Debug, Clone)]
pub struct ManArgs {
    /// Write netmux.1 and one page per subcommand into this directory
    /// instead of printing netmux.1.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
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
pub(crate) fn artifacts(cmd: &clap::Command) -> Result<Vec<Artifact>, String> {
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
        match netmux_api::call(socket, &Request::Cleanup).await {
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
    let status = match netmux_api::call(socket, &Request::Status).await {
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
    ExitCode::from(doctor::exit_status(&checks))
}

/// systemd-coredump's `MESSAGE_ID` for a core dump (what `journalctl -u`
/// matches to show a unit's crashes).
const COREDUMP_MESSAGE_ID: &str = "fc2e22bc6ee647b6b90729ab34a250b1";

/// The `journalctl` command line for `netmux logs` (`NETMUX_JOURNALCTL`
/// overrides the program). Entries are read as JSON whatever
/// [`LogsArgs::output`] says: the text format is rendered from it.
///
/// Which entries are netmuxd's: not `--unit netmuxd.service`, which is
/// `_SYSTEMD_UNIT=netmuxd.service` and exists only when systemd started the
/// daemon, but the alternatives (journalctl's `+`)
/// `_SYSTEMD_UNIT=netmuxd.service` or `SYSLOG_IDENTIFIER=netmuxd` (set by
/// netmuxd on every entry, see [`netmux_daemon::system::journal`]), so that a
/// daemon started otherwise with stderr on the journal is found too. Without
/// `--endpoint`/`--service` also what `--unit` adds: systemd's messages
/// about the unit (started, exited, restarted) and its core dumps. The
/// field filters are repeated in every alternative (each `+` starts a new
/// conjunction).
pub(crate) fn journalctl_args(args: &LogsArgs) -> Vec<String> {
    let mut v = vec![
        "--lines".to_owned(),
        args.lines.to_string(),
        "--output".to_owned(),
        "json".to_owned(),
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
    let mut filters = Vec::new();
    if let Some(e) = &args.endpoint {
        filters.push(format!("ENDPOINT={e}"));
    }
    if let Some(s) = &args.service {
        filters.push(format!("SERVICE={s}"));
    }
    let unit = install::UNIT_NAME;
    let mut alternatives = vec![
        vec![format!("_SYSTEMD_UNIT={unit}")],
        vec![format!(
            "SYSLOG_IDENTIFIER={}",
            netmux_daemon::system::journal::SYSLOG_IDENTIFIER
        )],
    ];
    if filters.is_empty() {
        alternatives.push(vec!["_PID=1".into(), format!("UNIT={unit}")]);
        alternatives.push(vec![
            format!("MESSAGE_ID={COREDUMP_MESSAGE_ID}"),
            "_UID=0".into(),
            format!("COREDUMP_UNIT={unit}"),
        ]);
        alternatives.push(vec!["_UID=0".into(), format!("OBJECT_SYSTEMD_UNIT={unit}")]);
    }
    for (i, alt) in alternatives.into_iter().enumerate() {
        if i > 0 {
            v.push("+".into());
        }
        v.extend(alt);
        v.extend(filters.iter().cloned());
    }
    v
}

/// Fields of netmuxd's own entries that [`render_entry`] leaves out: the
/// message itself and what journald or tracing-journald add to every entry.
const UNSHOWN_FIELDS: &[&str] = &[
    "MESSAGE",
    "PRIORITY",
    "SYSLOG_IDENTIFIER",
    "SYSLOG_PID",
    "SYSLOG_FACILITY",
    "SYSLOG_TIMESTAMP",
    "SYSLOG_RAW",
    "TARGET",
    "CODE_FILE",
    "CODE_LINE",
    "CODE_FUNC",
    "SPAN_NAME",
    "SPAN_TARGET",
    "SPAN_CODE_FILE",
    "SPAN_CODE_LINE",
];

/// Fields printed first, in this order; the others follow alphabetically.
const FIRST_FIELDS: &[&str] = &["ENDPOINT", "SERVICE", "CONN"];

/// The values of a field in journalctl's JSON: a string, an array of bytes
/// (not UTF-8 or with control characters), or an array of those when the
/// entry has the field more than once; `null` (too large) has none.
fn field_values(v: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    let bytes = |a: &[Value]| -> Option<String> {
        let b: Option<Vec<u8>> = a
            .iter()
            .map(|x| x.as_u64().and_then(|n| u8::try_from(n).ok()))
            .collect();
        b.map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => match bytes(a) {
            Some(s) if !a.is_empty() => vec![s],
            _ => a.iter().flat_map(field_values).collect(),
        },
        Value::Null => Vec::new(),
        other => vec![other.to_string()],
    }
}

/// `KEY=value`, the value quoted (Rust string syntax) when it has spaces,
/// quotes, `=` or control characters.
fn field_text(key: &str, value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=');
    if plain {
        format!("{key}={value}")
    } else {
        format!("{key}={value:?}")
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for microseconds since the Unix epoch.
fn utc_time(usec: u64) -> String {
    let secs = usec / 1_000_000;
    let millis = (usec % 1_000_000) / 1_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// One entry of journalctl's JSON output as a line of `netmux logs`:
/// `TIME IDENTIFIER[PID]: [LEVEL ]MESSAGE FIELDS`. The structured fields
/// are shown for netmuxd's own entries (native protocol, identifier
/// netmuxd), not for systemd's or for text netmuxd wrote to stderr.
pub(crate) fn render_entry(entry: &serde_json::Map<String, serde_json::Value>) -> String {
    let first = |k: &str| {
        entry
            .get(k)
            .and_then(|v| field_values(v).into_iter().next())
    };
    let time = first("__REALTIME_TIMESTAMP")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or_else(|| "-".to_owned(), utc_time);
    let ident = first("SYSLOG_IDENTIFIER")
        .or_else(|| first("_COMM"))
        .unwrap_or_else(|| "?".into());
    let pid = first("_PID").or_else(|| first("SYSLOG_PID"));
    let mut line = match pid {
        Some(p) => format!("{time} {ident}[{p}]:"),
        None => format!("{time} {ident}:"),
    };
    match first("PRIORITY").and_then(|p| p.parse::<u8>().ok()) {
        Some(0..=3) => line.push_str(" ERROR"),
        Some(4) => line.push_str(" WARN"),
        _ => {}
    }
    line.push(' ');
    line.push_str(first("MESSAGE").unwrap_or_default().trim_end());
    let ours = ident == netmux_daemon::system::journal::SYSLOG_IDENTIFIER
        && first("_TRANSPORT").as_deref() == Some("journal");
    if ours {
        let mut keys: Vec<&String> = entry
            .keys()
            .filter(|k| !k.starts_with('_') && !UNSHOWN_FIELDS.contains(&k.as_str()))
            .collect();
        keys.sort_by_key(|k| {
            (
                FIRST_FIELDS
                    .iter()
                    .position(|f| f == k)
                    .unwrap_or(FIRST_FIELDS.len()),
                k.as_str(),
            )
        });
        for k in keys {
            for v in entry.get(k.as_str()).map(field_values).unwrap_or_default() {
                line.push(' ');
                line.push_str(&field_text(k, &v));
            }
        }
    }
    line
}

/// Copies journalctl's JSON lines from `input` to `out` as [`render_entry`]
/// lines; lines that are not JSON objects are copied unchanged. Stops at
/// the end of `input` or when `out` fails (a closed pipe).
pub(crate) fn render_stream(
    input: impl std::io::BufRead,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    for line in input.lines() {
        let line = line?;
        let text = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(serde_json::Value::Object(entry)) => render_entry(&entry),
            _ => line,
        };
        writeln!(out, "{text}")?;
        // Entries appear as they come under --follow.
        out.flush()?;
    }
    Ok(())
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
        let mut cmd = std::process::Command::new(program);
        cmd.args(journalctl_args(args));
        match args.output {
            LogFormat::Json => cmd.status(),
            LogFormat::Text => {
                cmd.stdout(std::process::Stdio::piped())
                    .spawn()
                    .and_then(|mut child| {
                        if let Some(out) = child.stdout.take() {
                            let rendered = render_stream(
                                std::io::BufReader::new(out),
                                &mut std::io::stdout().lock(),
                            );
                            if rendered.is_err() {
                                // Our reader is gone (`netmux logs | head`):
                                // journalctl --follow would run on.
                                let _ = child.kill();
                            }
                        }
                        child.wait()
                    })
            }
        }
    };
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        // Killed after our stdout closed.
        Ok(s) if std::os::unix::process::ExitStatusExt::signal(&s).is_some() => ExitCode::SUCCESS,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(endpoint: Option<&str>, service: Option<&str>) -> LogsArgs {
        LogsArgs {
            follow: false,
            endpoint: endpoint.map(str::to_owned),
            service: service.map(str::to_owned),
            lines: 50,
            since: None,
            output: LogFormat::Text,
        }
    }

    /// The match arguments, split into journalctl's `+` alternatives.
    fn alternatives(args: &[String]) -> Vec<Vec<&str>> {
        let matches = args
            .iter()
            .skip_while(|a| a.starts_with("--") || !a.contains('='))
            .map(String::as_str)
            .collect::<Vec<_>>();
        matches.split(|a| *a == "+").map(<[&str]>::to_vec).collect()
    }

    #[test]
    fn journalctl_matches_the_unit_or_the_identifier() {
        let args = journalctl_args(&logs(None, None));
        assert!(!args.iter().any(|a| a == "--unit" || a == "-u"), "{args:?}");
        assert_eq!(
            &args[..5],
            ["--lines", "50", "--output", "json", "--no-pager"]
        );
        let alts = alternatives(&args);
        assert_eq!(alts[0], ["_SYSTEMD_UNIT=netmuxd.service"]);
        assert_eq!(alts[1], ["SYSLOG_IDENTIFIER=netmuxd"]);
        // What `journalctl -u` adds: systemd's messages about the unit and
        // its core dumps.
        assert!(
            alts.contains(&vec!["_PID=1", "UNIT=netmuxd.service"]),
            "{alts:?}"
        );
        assert!(
            alts.iter()
                .any(|a| a.contains(&"COREDUMP_UNIT=netmuxd.service")),
            "{alts:?}"
        );

        let args = journalctl_args(&logs(Some("dev"), Some("shop/web")));
        let alts = alternatives(&args);
        assert_eq!(
            alts,
            [
                vec![
                    "_SYSTEMD_UNIT=netmuxd.service",
                    "ENDPOINT=dev",
                    "SERVICE=shop/web"
                ],
                vec![
                    "SYSLOG_IDENTIFIER=netmuxd",
                    "ENDPOINT=dev",
                    "SERVICE=shop/web"
                ],
            ]
        );
        let follow = journalctl_args(&LogsArgs {
            follow: true,
            since: Some("1 hour ago".into()),
            ..logs(None, None)
        });
        assert!(follow.iter().any(|a| a == "--follow"));
        assert!(follow.windows(2).any(|w| w == ["--since", "1 hour ago"]));
    }

    fn entry(json: &str) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::from_str(json) {
            Ok(serde_json::Value::Object(m)) => m,
            other => panic!("not an object: {other:?}"),
        }
    }

    #[test]
    fn entries_render_with_their_fields() {
        let e = entry(
            r#"{"__REALTIME_TIMESTAMP":"1795664684123456","_PID":"812","_TRANSPORT":"journal",
                "SYSLOG_IDENTIFIER":"netmuxd","PRIORITY":"6","MESSAGE":"connection closed",
                "TARGET":"netmux_daemon::listeners","CODE_FILE":"x.rs","CODE_LINE":"1",
                "END":"clean","SENT":"78","CONN":"4","SERVICE":"shop/web","ENDPOINT":"dev",
                "_SYSTEMD_UNIT":"netmuxd.service","_HOSTNAME":"ws"}"#,
        );
        assert_eq!(
            render_entry(&e),
            "2026-11-26T03:44:44.123Z netmuxd[812]: connection closed \
             ENDPOINT=dev SERVICE=shop/web CONN=4 END=clean SENT=78"
        );
        let warn = entry(
            r#"{"_PID":"9","_TRANSPORT":"journal","SYSLOG_IDENTIFIER":"netmuxd",
                "PRIORITY":"4","MESSAGE":"cannot connect","ENDPOINT":"prod",
                "ERROR":"timed out = \"x\"","SPAN_NAME":"s"}"#,
        );
        assert_eq!(
            render_entry(&warn),
            r#"- netmuxd[9]: WARN cannot connect ENDPOINT=prod ERROR="timed out = \"x\"""#
        );
        // systemd's and stderr lines: the message only.
        let pid1 = entry(
            r#"{"_PID":"1","_TRANSPORT":"journal","SYSLOG_IDENTIFIER":"systemd",
                "PRIORITY":"6","MESSAGE":"Started netmuxd.service.","UNIT":"netmuxd.service"}"#,
        );
        assert_eq!(
            render_entry(&pid1),
            "- systemd[1]: Started netmuxd.service."
        );
        let stderr = entry(
            r#"{"_PID":"9","_TRANSPORT":"stdout","SYSLOG_IDENTIFIER":"netmuxd",
                "PRIORITY":"3","MESSAGE":[112,97,110,105,99,10],"X":"y"}"#,
        );
        assert_eq!(render_entry(&stderr), "- netmuxd[9]: ERROR panic");
        // A field logged twice, and a binary value.
        let twice = entry(
            r#"{"_TRANSPORT":"journal","SYSLOG_IDENTIFIER":"netmuxd","MESSAGE":"m",
                "ENDPOINT":["a","b"],"DATA":[104,105]}"#,
        );
        assert_eq!(
            render_entry(&twice),
            "- netmuxd: m ENDPOINT=a ENDPOINT=b DATA=hi"
        );
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_time(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc_time(1_795_664_684_123_456), "2026-11-26T03:44:44.123Z");
        assert_eq!(utc_time(4_107_542_399_999_999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn non_json_lines_pass_through() {
        let input = "{\"MESSAGE\":\"m\",\"SYSLOG_IDENTIFIER\":\"netmuxd\"}\n-- No entries --\n";
        let mut out = Vec::new();
        render_stream(input.as_bytes(), &mut out).expect("render");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "- netmuxd: m\n-- No entries --\n"
        );
    }
}
