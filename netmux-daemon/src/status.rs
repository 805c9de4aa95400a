//! What an endpoint is doing, as `status` and `ls` show it. Published by
//! [`crate::endpoint`] and by [`crate::health`] (which marks a silent
//! server `degraded`); its own module so that neither imports the other for it.

use serde::Serialize;

/// What the endpoint is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub(crate) enum EndpointStatus {
    /// Dialling the server.
    Connecting,
    /// Session established.
    Connected {
        /// Server address in use.
        server: String,
        /// The server's greeting.
        greeting: String,
        /// The server has not answered for a few seconds: the session and
        /// its connections are kept up to `survive_blackout`
        /// ([`crate::health`]).
        degraded: bool,
    },
    /// Not connected; retrying.
    Down {
        /// Why the last attempt or connection failed.
        error: String,
    },
}

impl EndpointStatus {
    /// Short word for `netmux ls`.
    pub(crate) fn word(&self) -> &'static str {
        match self {
            EndpointStatus::Connecting => "connecting",
            EndpointStatus::Connected { degraded: true, .. } => "degraded",
            EndpointStatus::Connected { .. } => "connected",
            EndpointStatus::Down { .. } => "down",
        }
    }
}
