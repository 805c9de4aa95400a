//! Which Lease wins, sans IO: [`decide`] reads a Lease and the time and
//! says whether this session may create it, take it, or is refused.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::CLIENT;

/// What to do with a Lease, as [`decide`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// There is none: create it.
    Create,
    /// It is free (expired, cleared, already ours, or left by an earlier
    /// session of this replica): replace it at this version.
    Take {
        /// The version read; the write fails if it changed since.
        resource_version: String,
        /// Holder changes so far, to count this one.
        transitions: i32,
        /// Whether the holder changes.
        new_holder: bool,
    },
    /// Someone else holds it.
    Held {
        /// Who, for the refusal.
        by: String,
    },
}

impl Decision {
    /// The version a replacing write must match and the Lease's holder
    /// transitions after it (for `Take`); `(None, 0)` for a new Lease.
    pub(crate) fn write_version(&self) -> (Option<String>, i32) {
        match self {
            Decision::Take {
                resource_version,
                transitions,
                new_holder,
            } => (
                Some(resource_version.clone()),
                transitions.saturating_add(i32::from(*new_holder)),
            ),
            _ => (None, 0),
        }
    }
}

/// When `lease` stops being valid: renewal (or acquisition) time plus its
/// duration; `None` if it says neither.
pub(crate) fn expiry(lease: &Lease) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    let since = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
    let secs = spec.lease_duration_seconds?;
    since
        .0
        .checked_add(SignedDuration::from_secs(i64::from(secs)))
        .ok()
}

/// The holder of `lease` as people read it: the daemon and the replica.
pub(crate) fn describe(lease: &Lease) -> String {
    let holder = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or("nobody");
    let replica = holder.split('/').next().unwrap_or(holder);
    match lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CLIENT))
    {
        Some(client) => format!("{client} through replica {replica}"),
        None => holder.to_owned(),
    }
}

/// Decides whether `me` (`<replica>/session-<n>`) may take `lease` at
/// `now`. A holder of the same replica other than `me` is stale: the
/// caller reserved the service locally first, so no live session of this
/// replica holds it.
pub(crate) fn decide(lease: Option<&Lease>, me: &str, replica: &str, now: Timestamp) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or("");
    let free = holder.is_empty()
        || holder == me
        || holder.split_once('/').is_some_and(|(r, _)| r == replica)
        || expiry(lease).is_none_or(|until| until <= now);
    match (&lease.metadata.resource_version, free) {
        (Some(rv), true) => Decision::Take {
            resource_version: rv.clone(),
            transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
            new_holder: holder != me,
        },
        (None, true) => Decision::Held {
            by: "an unknown holder (the Lease has no resourceVersion)".to_owned(),
        },
        (_, false) => Decision::Held {
            by: describe(lease),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};

    use super::*;

    fn lease(holder: &str, renewed: &str, secs: i32, rv: &str) -> Lease {
        let t: Timestamp = renewed.parse().unwrap_or_default();
        Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                resource_version: Some(rv.into()),
                annotations: Some(BTreeMap::from([(
                    CLIENT.into(),
                    "alice (1.2.3.4:5)".into(),
                )])),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(secs),
                renew_time: Some(MicroTime(t)),
                lease_transitions: Some(2),
                ..Default::default()
            }),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap_or_default()
    }

    #[test]
    fn a_valid_lease_of_another_replica_is_held() {
        let l = lease("pod-a/session-1", "2024-01-01T00:00:00Z", 15, "7");
        let d = decide(
            Some(&l),
            "pod-b/session-3",
            "pod-b",
            at("2024-01-01T00:00:10Z"),
        );
        assert_eq!(
            d,
            Decision::Held {
                by: "alice (1.2.3.4:5) through replica pod-a".into()
            }
        );
    }

    #[test]
    fn an_expired_lease_is_taken_and_counted() {
        let l = lease("pod-a/session-1", "2024-01-01T00:00:00Z", 15, "7");
        let d = decide(
            Some(&l),
            "pod-b/session-3",
            "pod-b",
            at("2024-01-01T00:00:15Z"),
        );
        assert_eq!(
            d,
            Decision::Take {
                resource_version: "7".into(),
                transitions: 2,
                new_holder: true
            }
        );
    }

    #[test]
    fn own_and_stale_same_replica_leases_are_taken() {
        let l = lease("pod-b/session-1", "2024-01-01T00:00:00Z", 15, "7");
        let now = at("2024-01-01T00:00:01Z");
        assert!(matches!(
            decide(Some(&l), "pod-b/session-1", "pod-b", now),
            Decision::Take {
                new_holder: false,
                ..
            }
        ));
        assert!(matches!(
            decide(Some(&l), "pod-b/session-2", "pod-b", now),
            Decision::Take {
                new_holder: true,
                ..
            }
        ));
        assert_eq!(
            decide(None, "pod-b/session-2", "pod-b", now),
            Decision::Create
        );
    }

    #[test]
    fn a_lease_without_times_or_version_is_handled() {
        let mut l = lease("pod-a/session-1", "2024-01-01T00:00:00Z", 15, "7");
        if let Some(s) = l.spec.as_mut() {
            s.renew_time = None;
        }
        assert!(matches!(
            decide(
                Some(&l),
                "pod-b/session-1",
                "pod-b",
                at("2024-01-01T00:00:01Z")
            ),
            Decision::Take { .. }
        ));
        l.metadata.resource_version = None;
        assert!(matches!(
            decide(
                Some(&l),
                "pod-b/session-1",
                "pod-b",
                at("2024-01-01T00:00:01Z")
            ),
            Decision::Held { .. }
        ));
    }
}
