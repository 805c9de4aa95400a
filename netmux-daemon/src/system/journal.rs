//! Logging: structured journald records under systemd, text on stderr
//! otherwise.
//!
//! Under systemd (`JOURNAL_STREAM` set, stderr going to the journal) events
//! go to journald natively, each `tracing` field as a journal field of the
//! same name in upper case: `ENDPOINT=`, `SERVICE=`, `CONN=`, ..., and
//! `SYSLOG_IDENTIFIER=netmuxd`, so that `netmux logs --endpoint dev` is
//! `journalctl SYSLOG_IDENTIFIER=netmuxd ENDPOINT=dev` (or'ed with the unit's
//! `_SYSTEMD_UNIT=netmuxd.service`, see `cli::journalctl_args`): the
//! identifier works whoever started netmuxd with stderr on the journal, the
//! unit only under systemd.

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

/// `SYSLOG_IDENTIFIER` of netmuxd's journal entries.
pub const SYSLOG_IDENTIFIER: &str = "netmuxd";

/// Where logs went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// journald, structured.
    Journald,
    /// stderr, text.
    Stderr,
}

/// Whether stderr is connected to the journal (`JOURNAL_STREAM` names the
/// device and inode of stderr, see systemd.exec(5)).
pub(crate) fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Installs the global subscriber (filter from `RUST_LOG`, default `info`).
pub fn init() -> Sink {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if stderr_is_journal() {
        if let Ok(layer) = tracing_journald::layer() {
            let layer = layer
                .with_field_prefix(None)
                .with_syslog_identifier(SYSLOG_IDENTIFIER.into());
            if tracing_subscriber::registry()
                .with(filter())
                .with(layer)
                .try_init()
                .is_ok()
            {
                return Sink::Journald;
            }
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    Sink::Stderr
}
