//! Which intercepts may coexist on a Service, and where one request goes,
//! sans IO.

use std::fmt;

/// What an intercept takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Every connection to the port.
    Global,
    /// HTTP requests carrying header `name: value` (name lower-case).
    Personal {
        /// Header name, lower-case.
        name: String,
        /// Exact value.
        value: String,
    },
    /// A copy of each HTTP request (of those carrying the header, if
    /// any); the answer is discarded and the request goes on as without.
    Mirror {
        /// Only requests with this header (name lower-case, value).
        header: Option<(String, String)>,
    },
    /// Every connection to the port, as [`Mode::Global`], while the
    /// workload's pods are stopped (scaled to zero): the workstation
    /// stands in for the workload, queue consumers and schedulers
    /// included.
    Replace,
}

impl Mode {
    /// Whether every connection to the port goes to the workstation.
    pub fn takes_every_connection(&self) -> bool {
        matches!(self, Mode::Global | Mode::Replace)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Global => write!(f, "global"),
            Mode::Replace => write!(f, "replace"),
            Mode::Personal { name, value } => write!(f, "personal {name}={value}"),
            Mode::Mirror { header: None } => write!(f, "mirror"),
            Mode::Mirror {
                header: Some((name, value)),
            } => write!(f, "mirror {name}={value}"),
        }
    }
}

/// One intercept as the router sees it: who, which port, which mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The daemon session (unique within this replica).
    pub session: u64,
    /// The daemon, as others are told.
    pub client: String,
    /// The Service port.
    pub port: u16,
    /// What it takes.
    pub mode: Mode,
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} intercept of port {})",
            self.client, self.mode, self.port
        )
    }
}

/// Why `new` cannot join `existing` on one Service; `None`: it can (or it
/// is the same intercept asked again by its holder).
pub fn conflict(existing: &[Claim], new: &Claim) -> Option<String> {
    for c in existing {
        if c == new {
            return None;
        }
    }
    for c in existing {
        let same_port = c.port == new.port;
        let why = match (&c.mode, &new.mode) {
            _ if c.session == new.session && same_port => {
                Some("this daemon already intercepts that port; leave it first")
            }
            // The pods are stopped: nothing else of the Service works.
            (Mode::Replace, _) => Some("a replace intercept stops the workload's pods, so every port goes to that workstation"),
            (_, Mode::Replace) => Some("a replace intercept stops the workload's pods, which this intercept needs"),
            (Mode::Global, _) if same_port => Some("a global intercept takes every connection"),
            (_, Mode::Global) if same_port => {
                Some("a global intercept conflicts with any other on the port")
            }
            // Mirrors see what the HTTP router sees; they coexist with
            // personal intercepts and each other.
            (Mode::Mirror { .. }, _) | (_, Mode::Mirror { .. }) => None,
            (
                Mode::Personal { name, value },
                Mode::Personal {
                    name: n2,
                    value: v2,
                },
            ) if same_port && name == n2 && value == v2 => Some("the same header would match both"),
            _ => None,
        };
        if let Some(why) = why {
            return Some(format!("held by {c}: {why}"));
        }
    }
    None
}

/// Where one request of a personal-intercept port goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// To the workstation of the intercept of this session.
    Workstation(u64),
    /// To the original pods.
    Pods,
}

/// The route of a request on `port` whose headers are `headers` (name,
/// value; names as received, compared case-insensitively): the first
/// personal intercept whose header matches, else the pods. A header that
/// appears several times matches if any value does.
pub fn choose(claims: &[Claim], port: u16, headers: &[(&str, &[u8])]) -> Choice {
    for c in claims.iter().filter(|c| c.port == port) {
        match &c.mode {
            Mode::Mirror { .. } => {}
            Mode::Global | Mode::Replace => return Choice::Workstation(c.session),
            Mode::Personal { name, value } => {
                if headers
                    .iter()
                    .any(|(n, v)| n.eq_ignore_ascii_case(name) && *v == value.as_bytes())
                {
                    return Choice::Workstation(c.session);
                }
            }
        }
    }
    Choice::Pods
}

/// Whether `headers` carry `name: value` (name compared
/// case-insensitively).
fn carries(headers: &[(&str, &[u8])], name: &str, value: &str) -> bool {
    headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case(name) && *v == value.as_bytes())
}

/// The sessions of the mirrors on `port` that want a copy of a request
/// with `headers`.
pub fn mirrors(claims: &[Claim], port: u16, headers: &[(&str, &[u8])]) -> Vec<u64> {
    claims
        .iter()
        .filter(|c| c.port == port)
        .filter(|c| match &c.mode {
            Mode::Mirror { header: None } => true,
            Mode::Mirror {
                header: Some((name, value)),
            } => carries(headers, name, value),
            _ => false,
        })
        .map(|c| c.session)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn personal(session: u64, who: &str, value: &str) -> Claim {
        Claim {
            session,
            client: who.into(),
            port: 8080,
            mode: Mode::Personal {
                name: "x-netmux-user".into(),
                value: value.into(),
            },
        }
    }

    fn global(session: u64, who: &str) -> Claim {
        Claim {
            session,
            client: who.into(),
            port: 8080,
            mode: Mode::Global,
        }
    }

    #[test]
    fn personal_intercepts_coexist_a_global_one_is_alone() {
        let alice = personal(1, "alice", "alice");
        let bob = personal(2, "bob", "bob");
        assert_eq!(conflict(std::slice::from_ref(&alice), &bob), None);
        assert_eq!(
            conflict(std::slice::from_ref(&alice), &alice),
            None,
            "asked again"
        );
        let carol = global(3, "carol");
        let refused = conflict(&[alice.clone(), bob.clone()], &carol).unwrap_or_default();
        assert!(refused.contains("alice"), "{refused}");
        let refused = conflict(std::slice::from_ref(&carol), &bob).unwrap_or_default();
        assert!(refused.contains("held by carol (global"), "{refused}");
        let same = personal(4, "dave", "alice");
        assert!(conflict(std::slice::from_ref(&alice), &same).is_some());
        let other_port = Claim {
            port: 9090,
            ..global(5, "erin")
        };
        assert_eq!(conflict(&[alice], &other_port), None);
    }

    #[test]
    fn mirrors_coexist_and_never_take_a_request() {
        let m = Claim {
            session: 9,
            client: "mia".into(),
            port: 8080,
            mode: Mode::Mirror { header: None },
        };
        let alice = personal(1, "alice", "alice");
        assert_eq!(conflict(std::slice::from_ref(&alice), &m), None);
        assert_eq!(conflict(std::slice::from_ref(&m), &alice), None);
        let global = global(11, "gus");
        assert!(
            conflict(std::slice::from_ref(&m), &global).is_some_and(|w| w.contains("mia")),
            "a global intercept would starve the mirror"
        );
        assert!(conflict(std::slice::from_ref(&global), &m).is_some());
        let claims = [m.clone(), alice];
        let with: &[(&str, &[u8])] = &[("x-netmux-user", b"alice")];
        assert_eq!(choose(&claims, 8080, with), Choice::Workstation(1));
        assert_eq!(choose(&claims, 8080, &[]), Choice::Pods);
        assert_eq!(mirrors(&claims, 8080, &[]), vec![9]);
        let only_bob = Claim {
            session: 10,
            mode: Mode::Mirror {
                header: Some(("x-netmux-user".into(), "bob".into())),
            },
            ..m
        };
        assert!(mirrors(std::slice::from_ref(&only_bob), 8080, with).is_empty());
    }

    #[test]
    fn requests_go_to_the_matching_header_else_to_the_pods() {
        let claims = [personal(1, "alice", "alice"), personal(2, "bob", "bob")];
        let h = |v: &'static [(&'static str, &'static [u8])]| v;
        assert_eq!(
            choose(&claims, 8080, h(&[("X-Netmux-User", b"bob")])),
            Choice::Workstation(2)
        );
        assert_eq!(
            choose(&claims, 8080, h(&[("x-netmux-user", b"carol")])),
            Choice::Pods
        );
        assert_eq!(choose(&claims, 8080, h(&[])), Choice::Pods);
        assert_eq!(
            choose(&claims, 9090, h(&[("x-netmux-user", b"alice")])),
            Choice::Pods
        );
        assert_eq!(
            choose(&[global(3, "c")], 8080, h(&[])),
            Choice::Workstation(3)
        );
    }

    #[test]
    fn a_replace_intercept_is_alone_on_every_port_of_the_service() {
        let rita = Claim {
            mode: Mode::Replace,
            ..global(7, "rita")
        };
        assert_eq!(conflict(&[], &rita), None);
        assert_eq!(conflict(std::slice::from_ref(&rita), &rita), None);
        let other_port = |c: Claim| Claim { port: 9090, ..c };
        for other in [
            global(1, "gus"),
            personal(2, "alice", "alice"),
            other_port(personal(3, "bob", "bob")),
            other_port(Claim {
                mode: Mode::Mirror { header: None },
                ..global(4, "mia")
            }),
        ] {
            let refused = conflict(std::slice::from_ref(&rita), &other).unwrap_or_default();
            assert!(
                refused.contains("held by rita (replace intercept"),
                "{refused}"
            );
            let refused = conflict(std::slice::from_ref(&other), &rita).unwrap_or_default();
            assert!(refused.contains("stops the workload's pods"), "{refused}");
        }
        assert_eq!(choose(&[rita], 8080, &[]), Choice::Workstation(7));
    }
}
