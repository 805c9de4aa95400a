//! The embedded DNS server: answers for each endpoint's cluster domain from
//! the names of running services ([`crate::daemon::Daemon::names`]).
//!
//! [`zone`] is the sans-IO core (names → [`zone::Zone`], question →
//! [`zone::Answer`]); [`server`] is the hickory-server shell around it. How
//! the system's resolver is pointed at it lives in
//! [`crate::system::resolver`]. See `docs/dns.md`.

pub mod server;
pub mod zone;

pub use server::{DnsServer, Handler};
pub use zone::{answer, Answer, DnsEndpoint, Zone, ZoneFollower};

use crate::config::Config;

/// The DNS view of every configured endpoint.
pub fn endpoints(config: &Config) -> Vec<DnsEndpoint> {
    config
        .endpoints
        .iter()
        .map(|e| DnsEndpoint {
            name: e.name.clone(),
            domain: e.cluster_domain.clone(),
            default_namespace: config.dns.default_namespace(&e.name).to_owned(),
        })
        .collect()
}
