//! A live session stays true: a Kubernetes user's credential is reviewed
//! again every `rbac.recheck_interval_ms` and when it says it expires, and
//! the session ends once the API server no longer accepts it. Each
//! re-check also refreshes the RBAC answers behind the daemon's catalog
//! and its streams ([`super::Access::visible`]), so revoked access stops
//! new streams within the interval.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Access, Denied, Identity};

/// Default `rbac.recheck_interval_ms`.
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// A bearer credential kept for re-review; never printed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(Arc<str>);

impl Secret {
    pub(crate) fn new(token: &str) -> Self {
        Secret(token.into())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Base64url without padding (a JWT segment), or `None`.
fn base64url(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The `exp` claim of a JWT, unverified: only when to look again.
pub(crate) fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let claims: serde_json::Value = serde_json::from_slice(&base64url(payload)?).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

/// When a session's credential is reviewed again.
pub(crate) struct Recheck {
    every: Duration,
    next: tokio::time::Instant,
    expires: Option<SystemTime>,
    active: bool,
}

impl Recheck {
    /// Waits for the next re-check: the interval, or the credential's
    /// expiry if sooner. Never returns for configured tokens.
    pub(crate) async fn due(&mut self) {
        if !self.active {
            return std::future::pending().await;
        }
        let mut at = self.next;
        if let Some(exp) = self.expires {
            let left = exp
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            at = at.min(tokio::time::Instant::now() + left);
        }
        tokio::time::sleep_until(at).await;
        self.next = tokio::time::Instant::now() + self.every;
    }
}

impl Access {
    /// Sets how often live sessions of Kubernetes users are re-checked.
    pub fn with_recheck_interval(mut self, every: Duration) -> Self {
        self.recheck_every = every;
        self
    }

    /// The re-check schedule of `who`'s session.
    pub(crate) fn recheck_timer(&self, who: &Identity) -> Recheck {
        Recheck {
            every: self.recheck_every,
            next: tokio::time::Instant::now() + self.recheck_every,
            expires: who.expires,
            active: self.rbac.is_some() && who.credential.is_some(),
        }
    }

    /// Reviews `who`'s credential again: `Err` when the session must end
    /// (expired, revoked, or now someone else). An API server that cannot
    /// answer keeps the session; its RBAC answers expire meanwhile.
    pub(crate) async fn recheck(&self, who: &Identity) -> Result<(), Denied> {
        let (Some(rbac), Some(secret)) = (&self.rbac, &who.credential) else {
            return Ok(());
        };
        if let Some(exp) = who.expires.filter(|e| *e <= SystemTime::now()) {
            let at = exp
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            return Err(Denied::Kubernetes(format!(
                "the token expired (exp {at}); run `netmux connect` again for a fresh one"
            )));
        }
        match rbac.review.review_token(&secret.0).await {
            Ok(user) if user.username == who.name => Ok(()),
            Ok(user) => Err(Denied::Kubernetes(format!(
                "the token now belongs to {} instead of {}",
                user.username, who.name
            ))),
            Err(Denied::Unavailable(why)) => {
                tracing::warn!(client = %who.name, %why, "cannot re-check the session's credential now; RBAC answers expire meanwhile");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_exp_is_read_and_anything_else_is_none() {
        // {"alg":"none"} . {"sub":"x","exp":2000000000} . sig
        let token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4IiwiZXhwIjoyMDAwMDAwMDAwfQ.c2ln";
        assert_eq!(
            jwt_expiry(token),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(jwt_expiry("opaque-token-0123456789"), None);
        assert_eq!(jwt_expiry("a.b.c.d"), None);
        assert_eq!(jwt_expiry("a.!!!.c"), None);
        assert_eq!(jwt_expiry("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln"), None);
    }

    #[test]
    fn secrets_are_not_printed() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "***");
    }
}
