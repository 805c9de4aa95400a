//! Who may connect, and what they may reach.
//!
//! The static setup authenticates daemons by bearer tokens listed in the
//! server configuration (compared in constant time). Authorization per
//! service is a hook for the Kubernetes runtime (RBAC); with tokens, an
//! authenticated daemon may reach every published service.

use netmux_common::proto::catalog::Service;
use netmux_common::proto::hello::Credential;
use subtle::ConstantTimeEq;

use crate::config::{Config, Token};

/// An authenticated daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's name.
    pub name: String,
}

/// Why a daemon was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No credential was presented.
    #[error("no credential presented: configure `token` for this endpoint")]
    Missing,
    /// The credential matches no configured token.
    #[error("invalid token: check the endpoint's `token` against the server's [[token]] list")]
    BadToken,
}

/// The server's access policy.
#[derive(Debug, Clone)]
pub struct Access {
    tokens: Vec<Token>,
}

impl Access {
    /// Builds the policy from the configured tokens.
    pub fn from_config(config: &Config) -> Self {
        Access {
            tokens: config.tokens.clone(),
        }
    }

    /// Checks a hello's credential.
    pub fn authenticate(&self, credential: &Credential) -> Result<Identity, Denied> {
        let Credential::Bearer(presented) = credential else {
            return Err(Denied::Missing);
        };
        // Compare against every token so timing does not reveal which matched.
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.secret.as_bytes().ct_eq(presented.as_bytes())) {
                found = Some(t.name.clone());
            }
        }
        found.map(|name| Identity { name }).ok_or(Denied::BadToken)
    }

    /// Whether `who` may reach `service`.
    pub fn may_reach(&self, _who: &Identity, _service: &Service) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access {
            tokens: vec![Token {
                name: "alice".into(),
                secret: "0123456789abcdef".into(),
            }],
        }
    }

    #[test]
    fn right_token_authenticates() {
        let id = access()
            .authenticate(&Credential::Bearer("0123456789abcdef".into()))
            .unwrap();
        assert_eq!(id.name, "alice");
    }

    #[test]
    fn wrong_or_missing_token_is_denied() {
        assert_eq!(
            access().authenticate(&Credential::Bearer("0123456789abcdeX".into())),
            Err(Denied::BadToken)
        );
        assert_eq!(
            access().authenticate(&Credential::None),
            Err(Denied::Missing)
        );
    }
}
