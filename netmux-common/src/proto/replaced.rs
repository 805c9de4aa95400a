//! What `netmux intercept --replace` records on the Service about the
//! workloads it stopped, and how they are started again, sans IO
//! (docs/intercept.md, "Replace").
//!
//! A replace intercept scales the Deployments and StatefulSets that run
//! the Service's pods to zero, so nothing of the workload runs in the
//! cluster while the workstation stands in for it (a queue consumer, a
//! scheduler). Before it scales anything it records, in the annotation
//! [`INTERCEPT_REPLACED`] on the Service beside the recorded selector,
//! each workload and its replica count. Restoring (netmux-server on every
//! path that restores the selector, `netmux cleanup --intercepts`, or one
//! `kubectl scale`) reads it there, so it never depends on the replica or
//! the workstation that stopped them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Annotation on an intercepted Service: the workloads a replace
/// intercept scaled to zero, as JSON (a list of [`Replaced`]).
pub const INTERCEPT_REPLACED: &str = "netmux.dev/intercept-replaced";

/// Label on the server's intercept and stop Leases (its sweep lists them).
pub const LEASE_LABEL: &str = "netmux.io/intercept";
/// Annotation on a stop Lease: the workload, `namespace/Kind/name`
/// ([`Workload`]'s key).
pub const STOP_WORKLOAD: &str = "netmux.dev/workload";
/// Annotation on a stop Lease: the workload's replica count before.
pub const STOP_REPLICAS: &str = "netmux.dev/replicas";

/// The kinds of workload a replace intercept scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
}

impl Kind {
    /// Both kinds, in the order they are listed.
    pub const ALL: [Kind; 2] = [Kind::Deployment, Kind::StatefulSet];

    /// The API resource (`deployments`), group `apps`.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Deployment => "deployments",
            Kind::StatefulSet => "statefulsets",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
        })
    }
}

/// One workload a replace intercept scaled to zero.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replaced {
    /// Its kind.
    pub kind: Kind,
    /// Its name, in the Service's namespace.
    pub name: String,
    /// Its replica count before (what it is scaled back to).
    pub replicas: i32,
}

impl std::fmt::Display for Replaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({} replicas)",
            self.kind, self.name, self.replicas
        )
    }
}

/// A workload by namespace, kind and name: what `netmux intercept EP
/// deploy/worker --replace` stops when no Service fronts it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Workload {
    /// Its namespace.
    pub namespace: String,
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: String,
}

impl Workload {
    /// Whether the namespace and the name are names Kubernetes gives.
    pub fn is_valid(&self) -> bool {
        valid_name(&self.name)
            && valid_name(&self.namespace)
            && self.namespace.len() <= 63
            && !self.namespace.contains('.')
    }
}

impl std::str::FromStr for Workload {
    type Err = String;

    /// `namespace/Kind/name`, as [`Workload`] displays.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split('/');
        let (Some(namespace), Some(kind), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("{s:?} is not NAMESPACE/KIND/NAME"));
        };
        let kind = match kind {
            "Deployment" => Kind::Deployment,
            "StatefulSet" => Kind::StatefulSet,
            other => {
                return Err(format!(
                    "{s:?}: {other} is not a Deployment or a StatefulSet"
                ))
            }
        };
        let w = Workload {
            namespace: namespace.to_owned(),
            kind,
            name: name.to_owned(),
        };
        match w.is_valid() {
            true => Ok(w),
            false => Err(format!("{s:?} does not name a workload")),
        }
    }
}

impl std::fmt::Display for Workload {
    /// `namespace/Kind/name`, as status and refusals name it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

/// Why a record cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {INTERCEPT_REPLACED} of Service {service} is not a list of workloads ({why}); fix: scale each workload back by hand (kubectl -n NAMESPACE scale deployment/NAME --replicas=N) and remove the annotation")]
pub struct RecordError {
    /// `namespace/name` of the Service.
    pub service: String,
    /// What is wrong with it.
    pub why: String,
}

/// The workloads recorded in `annotations` of Service `service`
/// (`namespace/name`); empty when it carries no record.
pub fn recorded(
    service: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<Replaced>, RecordError> {
    let Some(text) = annotations.get(INTERCEPT_REPLACED) else {
        return Ok(Vec::new());
    };
    let bad = |why: String| RecordError {
        service: service.to_owned(),
        why,
    };
    let list: Vec<Replaced> = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    if let Some(w) = list.iter().find(|w| w.replicas < 0 || !valid_name(&w.name)) {
        return Err(bad(format!("{} {:?} cannot be scaled", w.kind, w.name)));
    }
    Ok(list)
}

/// The annotation's value for `list`.
pub fn record(list: &[Replaced]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned())
}

/// Whether a workload whose pod template carries `template_labels` runs
/// the pods of a Service selecting `selector` (every pair of the selector
/// is on the template; an empty selector selects nothing).
pub fn runs_pods_of(
    selector: &BTreeMap<String, String>,
    template_labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| template_labels.get(k) == Some(v))
}

/// What to scale a recorded workload to on restore, given its replica
/// count now: the recorded count if it is still at zero, nothing if
/// someone scaled it since (their count stands) or it was at zero before.
pub fn scale_back(recorded: &Replaced, now: i32) -> Option<i32> {
    (now == 0 && recorded.replicas > 0).then_some(recorded.replicas)
}

/// A DNS-1123 subdomain, as Kubernetes names Deployments and StatefulSets.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_record_survives_its_annotation_and_a_bad_one_names_the_fix() {
        let list = vec![
            Replaced {
                kind: Kind::Deployment,
                name: "worker".into(),
                replicas: 3,
            },
            Replaced {
                kind: Kind::StatefulSet,
                name: "queue-reader".into(),
                replicas: 1,
            },
        ];
        let text = record(&list);
        assert_eq!(
            text,
            r#"[{"kind":"Deployment","name":"worker","replicas":3},{"kind":"StatefulSet","name":"queue-reader","replicas":1}]"#
        );
        let a = BTreeMap::from([(INTERCEPT_REPLACED.to_owned(), text)]);
        assert_eq!(recorded("apps/web", &a).unwrap(), list);
        assert_eq!(recorded("apps/web", &BTreeMap::new()).unwrap(), vec![]);
        for bad in [
            "{}",
            r#"[{"kind":"DaemonSet","name":"x","replicas":1}]"#,
            r#"[{"kind":"Deployment","name":"../x","replicas":1}]"#,
            r#"[{"kind":"Deployment","name":"x","replicas":-1}]"#,
            r#"[{"kind":"Deployment","name":"x","replicas":1,"extra":2}]"#,
        ] {
            let a = BTreeMap::from([(INTERCEPT_REPLACED.to_owned(), bad.to_owned())]);
            let e = recorded("apps/web", &a).unwrap_err().to_string();
            assert!(
                e.contains("apps/web") && e.contains("kubectl -n NAMESPACE scale"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_workload_runs_a_services_pods_when_its_template_has_every_selected_label() {
        let sel = labels(&[("app", "web")]);
        assert!(runs_pods_of(
            &sel,
            &labels(&[("app", "web"), ("tier", "front")])
        ));
        assert!(!runs_pods_of(&sel, &labels(&[("app", "worker")])));
        assert!(!runs_pods_of(&sel, &labels(&[])));
        assert!(!runs_pods_of(&labels(&[]), &labels(&[("app", "web")])));
    }

    #[test]
    fn a_workload_is_named_by_its_key_and_a_bad_one_is_refused() {
        let w = Workload {
            namespace: "apps".into(),
            kind: Kind::StatefulSet,
            name: "queue-reader".into(),
        };
        assert_eq!(w.to_string(), "apps/StatefulSet/queue-reader");
        assert_eq!(w.to_string().parse::<Workload>(), Ok(w));
        for bad in [
            "apps/worker",
            "apps/DaemonSet/x",
            "apps/Deployment/Worker",
            "a.b/Deployment/x",
            "apps/Deployment/x/y",
            "/Deployment/x",
        ] {
            assert!(bad.parse::<Workload>().is_err(), "{bad}");
        }
    }

    #[test]
    fn restoring_scales_back_only_what_is_still_stopped() {
        let w = Replaced {
            kind: Kind::Deployment,
            name: "worker".into(),
            replicas: 3,
        };
        assert_eq!(scale_back(&w, 0), Some(3));
        assert_eq!(scale_back(&w, 5), None, "someone scaled it since");
        let zero = Replaced { replicas: 0, ..w };
        assert_eq!(scale_back(&zero, 0), None, "it was stopped before");
    }
}
