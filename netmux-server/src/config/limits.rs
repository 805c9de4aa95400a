//! `[limits]`: what one peer, authenticated or not, can make the server
//! hold. Every key has a safe default; see SECURITY.md.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::admission::Caps;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    #[serde(default = "d::max_connections")]
    max_connections: usize,
    #[serde(default = "d::max_connections_per_source")]
    max_connections_per_source: usize,
    #[serde(default = "d::max_pending_hello")]
    max_pending_hello: usize,
    #[serde(default = "d::stream_preamble_timeout_ms")]
    stream_preamble_timeout_ms: u64,
    #[serde(default = "d::stream_idle_timeout_ms")]
    stream_idle_timeout_ms: u64,
    #[serde(default = "d::max_streams_per_session")]
    max_streams_per_session: u32,
    #[serde(default = "d::max_claims_per_session")]
    max_claims_per_session: usize,
    #[serde(default)]
    survive_blackout: Option<RawBound>,
    #[serde(default = "d::max_blackout_sessions")]
    max_blackout_sessions: usize,
}

/// A `survive_blackout` value: seconds, or a string with a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawBound {
    Seconds(u64),
    Text(String),
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_connections: d::max_connections(),
            max_connections_per_source: d::max_connections_per_source(),
            max_pending_hello: d::max_pending_hello(),
            stream_preamble_timeout_ms: d::stream_preamble_timeout_ms(),
            stream_idle_timeout_ms: d::stream_idle_timeout_ms(),
            max_streams_per_session: d::max_streams_per_session(),
            max_claims_per_session: d::max_claims_per_session(),
            survive_blackout: None,
            max_blackout_sessions: d::max_blackout_sessions(),
        }
    }
}

/// Defaults.
mod d {
    pub(super) fn max_connections() -> usize {
        1024
    }
    pub(super) fn max_connections_per_source() -> usize {
        128
    }
    pub(super) fn max_pending_hello() -> usize {
        256
    }
    pub(super) fn stream_preamble_timeout_ms() -> u64 {
        5_000
    }
    pub(super) fn stream_idle_timeout_ms() -> u64 {
        30_000
    }
    pub(super) fn max_streams_per_session() -> u32 {
        4096
    }
    pub(super) fn max_claims_per_session() -> usize {
        64
    }
    pub(super) fn max_blackout_sessions() -> usize {
        4
    }
}

/// Validated `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// QUIC connections at once (UDP and `stream_listen` together).
    pub(crate) max_connections: usize,
    /// Connections at once from one source address; on `stream_listen`
    /// the TCP peer's address (every port-forwarded daemon comes from the
    /// pod's loopback, so this also caps port-forwarded daemons per replica).
    pub(crate) max_connections_per_source: usize,
    /// Connections at once whose hello has not succeeded (QUIC handshake,
    /// hello, credential check).
    pub(crate) max_pending_hello: usize,
    /// A `stream_listen` connection must send its preamble within this.
    pub(crate) stream_preamble_timeout: Duration,
    /// A `stream_listen` connection silent this long is closed (QUIC
    /// keepalives arrive every second on a live one).
    pub(crate) stream_idle_timeout: Duration,
    /// Proxied TCP streams one daemon may have open at once; more are
    /// reset and counted.
    pub(crate) max_streams_per_session: u32,
    /// Claims and exposes one daemon may hold at once; more are refused.
    pub(crate) max_claims_per_session: usize,
    /// How long a silent daemon's session, its streams and dialled sockets
    /// are kept (also the QUIC idle timeout; default 10 minutes;
    /// [`crate::retention`]).
    pub(crate) survive_blackout: Duration,
    /// Silent sessions kept per identity; beyond it the longest-silent one
    /// is closed.
    pub(crate) max_blackout_sessions: usize,
}

impl Limits {
    /// The connection caps.
    pub fn caps(&self) -> Caps {
        Caps {
            total: self.max_connections,
            per_source: self.max_connections_per_source,
            pending: self.max_pending_hello,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        RawLimits::default()
            .validate(Path::new("(defaults)"))
            .expect("the defaults are valid")
    }
}

impl RawLimits {
    pub(super) fn validate(self, path: &Path) -> Result<Limits, ConfigError> {
        let invalid = |field: &str, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            field: format!("limits.{field}"),
            message: message.to_owned(),
        };
        let positive = "must be positive (remove the key for the default)";
        for (field, value) in [
            ("max_connections", self.max_connections as u64),
            (
                "max_connections_per_source",
                self.max_connections_per_source as u64,
            ),
            ("max_pending_hello", self.max_pending_hello as u64),
            (
                "stream_preamble_timeout_ms",
                self.stream_preamble_timeout_ms,
            ),
            ("stream_idle_timeout_ms", self.stream_idle_timeout_ms),
            (
                "max_streams_per_session",
                u64::from(self.max_streams_per_session),
            ),
            ("max_claims_per_session", self.max_claims_per_session as u64),
            ("max_blackout_sessions", self.max_blackout_sessions as u64),
        ] {
            if value == 0 {
                return Err(invalid(field, positive));
            }
        }
        if self.max_streams_per_session > crate::connection::MAX_STREAMS_PER_SESSION {
            return Err(invalid(
                "max_streams_per_session",
                &format!(
                    "{} is over the most a QUIC connection carries here ({})",
                    self.max_streams_per_session,
                    crate::connection::MAX_STREAMS_PER_SESSION
                ),
            ));
        }
        if self.stream_idle_timeout_ms < 3_000 {
            return Err(invalid(
                "stream_idle_timeout_ms",
                "must be at least 3000: QUIC keepalives arrive every second, a shorter timeout cuts live daemons",
            ));
        }
        let survive_blackout = match &self.survive_blackout {
            None => netmux_common::tunnel::blackout::DEFAULT_SURVIVE_BLACKOUT,
            Some(RawBound::Seconds(n)) => {
                netmux_common::tunnel::blackout::parse_bound(&n.to_string())
                    .map_err(|m| invalid("survive_blackout", &m))?
            }
            Some(RawBound::Text(t)) => netmux_common::tunnel::blackout::parse_bound(t)
                .map_err(|m| invalid("survive_blackout", &m))?,
        };
        Ok(Limits {
            survive_blackout,
            max_blackout_sessions: self.max_blackout_sessions,
            max_connections: self.max_connections,
            max_connections_per_source: self.max_connections_per_source,
            max_pending_hello: self.max_pending_hello,
            stream_preamble_timeout: Duration::from_millis(self.stream_preamble_timeout_ms),
            stream_idle_timeout: Duration::from_millis(self.stream_idle_timeout_ms),
            max_streams_per_session: self.max_streams_per_session,
            max_claims_per_session: self.max_claims_per_session,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Limits, String> {
        let raw: RawLimits = toml::from_str(text).map_err(|e| e.to_string())?;
        raw.validate(Path::new("s.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_bounded() {
        let l = parse("").expect("defaults");
        assert_eq!(l, Limits::default());
        assert!(l.max_connections <= 4096 && l.max_pending_hello <= l.max_connections);
        assert!(l.max_streams_per_session < crate::connection::MAX_STREAMS_PER_SESSION);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = parse("max_connections = 0").unwrap_err();
        assert!(e.contains("limits.max_connections"), "{e}");
        let e = parse("stream_idle_timeout_ms = 1000").unwrap_err();
        assert!(e.contains("keepalives"), "{e}");
        let e = parse("max_streams_per_session = 100000").unwrap_err();
        assert!(e.contains("max_streams_per_session"), "{e}");
        let e = parse("max_conections = 3").unwrap_err();
        assert!(e.contains("max_conections"), "{e}");
        let l = parse("max_connections = 10\nmax_pending_hello = 5").expect("valid");
        assert_eq!((l.caps().total, l.caps().pending), (10, 5));
    }
}
