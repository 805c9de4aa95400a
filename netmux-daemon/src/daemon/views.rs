//! The list and status views: `netmux ls` rows and `netmux status`.

use std::net::Ipv4Addr;

use netmux_common::proto::catalog::{Direction, Protocol, Service};

use super::{Daemon, Running};
use crate::api::{EndpointView, Row, StatusView};
use crate::endpoint::{ClaimState, EndpointStatus};

fn describe(svc: &Service, local: Option<Ipv4Addr>) -> String {
    let remote = svc
        .addresses
        .first()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".into());
    let ports: Vec<String> = svc
        .ports
        .iter()
        .map(|p| {
            let local = local.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
            let remote = if remote.contains(':') {
                format!("[{remote}]")
            } else {
                remote.clone()
            };
            let udp = if p.protocol == Protocol::Udp {
                "/udp"
            } else {
                ""
            };
            format!("{local}:{}{udp} => {remote}:{}{udp}", p.port, p.target_port)
        })
        .collect();
    format!("{}: {}", svc.direction, ports.join(", "))
}

impl Daemon {
    /// `ls` rows: every configured endpoint, then the services of connected
    /// ones.
    pub(crate) async fn list(&self, filter: Option<&str>) -> Vec<Row> {
        let state = self.state.lock().await;
        let mut rows = Vec::new();
        for cfg in &self.config.endpoints {
            let connected = state.endpoints.get(&cfg.name);
            rows.push(Row {
                kind: "EP".into(),
                name: cfg.name.clone(),
                parent: "-".into(),
                description: cfg.describe(),
                status: connected
                    .map(|c| c.endpoint.status().word().to_owned())
                    .unwrap_or_else(|| "off".into()),
            });
            let Some(c) = connected else { continue };
            let catalog = c.endpoint.catalog();
            let claims = c.endpoint.claims().snapshot();
            for svc in catalog.values().filter(|s| s.direction == Direction::C2L) {
                let claim = claims.iter().find(|cl| cl.kind.is_for(svc));
                let cluster = svc
                    .addresses
                    .first()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "*".into());
                let ports: Vec<String> = svc
                    .ports
                    .iter()
                    .map(|p| match claim {
                        Some(cl) => match cl.targets.get(p.port, p.protocol) {
                            Some(local) => format!("{cluster}:{} => {local}", p.port),
                            None => format!("{cluster}:{} => -", p.port),
                        },
                        None => format!("{cluster}:{} => -:{}", p.port, p.target_port),
                    })
                    .collect();
                rows.push(Row {
                    kind: "SVC".into(),
                    name: svc.key(),
                    parent: cfg.name.clone(),
                    description: format!("C2L: {}", ports.join(", ")),
                    status: match claim.map(|c| &c.state) {
                        Some(ClaimState::Held) => "on".into(),
                        Some(ClaimState::Pending) => "pending".into(),
                        Some(ClaimState::Refused(e)) => format!("error: {e}"),
                        None => "off".into(),
                    },
                });
            }
            for svc in catalog.values().filter(|s| s.direction == Direction::L2C) {
                let key = (cfg.name.clone(), svc.key());
                let running = state.running.get(&key);
                rows.push(Row {
                    kind: "SVC".into(),
                    name: svc.key(),
                    parent: cfg.name.clone(),
                    description: match running {
                        Some(r) => {
                            let notes = redirect_notes(r);
                            let d = describe(svc, Some(r.addr));
                            if notes.is_empty() {
                                d
                            } else {
                                format!("{d} ({})", notes.join("; "))
                            }
                        }
                        None => describe(svc, None),
                    },
                    status: if running.is_some() {
                        "on".into()
                    } else if state.wanted.contains(&key) {
                        "error".into()
                    } else {
                        "off".into()
                    },
                });
            }
            for v in self
                .intercept_views(&state)
                .into_iter()
                .filter(|v| v.endpoint == cfg.name)
            {
                rows.push(Row {
                    kind: "ICPT".into(),
                    name: v.service,
                    parent: v.endpoint,
                    description: match v.port {
                        // A workload stopped with no Service in front.
                        0 => format!("{}: stopped (scaled to zero); holder {}", v.mode, v.holder),
                        port => format!(
                            "port {port} {} => {}; holder {}; {} to the workstation",
                            v.mode, v.to, v.holder, v.to_workstation
                        ),
                    },
                    status: v.state,
                });
            }
            for (ep, k) in state.wanted.iter().filter(|(ep, _)| *ep == cfg.name) {
                if catalog.by_key(k).is_none() {
                    rows.push(Row {
                        kind: "SVC".into(),
                        name: k.clone(),
                        parent: ep.clone(),
                        description: "no longer published".into(),
                        status: "gone".into(),
                    });
                }
            }
        }
        if let Some(f) = filter {
            rows.retain(|r| r.name.contains(f) || r.parent.contains(f));
        }
        rows
    }

    /// `status`.
    pub(crate) async fn status(&self) -> StatusView {
        let state = self.state.lock().await;
        StatusView {
            intercepts: self.intercept_views(&state),
            version: env!("CARGO_PKG_VERSION").into(),
            redirect: self.backend_reason.clone(),
            dns: self.name_service.status(),
            hosts_file: self.hosts.path().display().to_string(),
            endpoints: self
                .config
                .endpoints
                .iter()
                .map(|cfg| {
                    let c = state.endpoints.get(&cfg.name);
                    let st = c.map(|c| c.endpoint.status());
                    EndpointView {
                        name: cfg.name.clone(),
                        server: cfg.describe(),
                        state: st
                            .as_ref()
                            .map(|s| s.word().to_owned())
                            .unwrap_or_else(|| "off".into()),
                        error: match st {
                            Some(EndpointStatus::Down { error }) => Some(error),
                            // How long the blackout lasts, what happens at the bound.
                            Some(EndpointStatus::Connected { degraded: true, .. }) => {
                                c.and_then(|c| c.endpoint.blackout()).map(|b| b.describe())
                            }
                            _ => None,
                        },
                        services: c.map(|c| c.endpoint.catalog().len()).unwrap_or(0),
                        started: state.running.keys().filter(|(e, _)| *e == cfg.name).count(),
                        notes: c
                            .and_then(|c| left_out_note(&c.endpoint))
                            .into_iter()
                            .chain(
                                state
                                    .running
                                    .iter()
                                    .filter(|((e, _), _)| *e == cfg.name)
                                    .flat_map(|((_, k), r)| {
                                        redirect_notes(r)
                                            .into_iter()
                                            .map(move |n| format!("{k}: {n}"))
                                    }),
                            )
                            .collect(),
                        path: c.and_then(|c| {
                            let conn = c.endpoint.watch_connection().borrow().clone()?;
                            Some(netmux_common::tunnel::quic::describe_path(
                                conn.rtt(),
                                conn.stats().path.current_mtu,
                            ))
                        }),
                    }
                })
                .collect(),
        }
    }
}

/// What `status` says about catalog entries the server left out (each too
/// large for a frame), unless they arrived since, in a smaller version.
fn left_out_note(endpoint: &crate::endpoint::Endpoint) -> Option<String> {
    let left = endpoint.left_out();
    let catalog = endpoint.catalog();
    let missing: Vec<&String> = left
        .listed
        .iter()
        .filter(|k| catalog.by_key(k).is_none())
        .collect();
    let listed = u32::try_from(left.listed.len()).unwrap_or(u32::MAX);
    let unlisted = left.total.saturating_sub(listed);
    if missing.is_empty() && unlisted == 0 {
        return None;
    }
    let mut names: Vec<String> = missing.iter().map(|k| k.to_string()).collect();
    if unlisted > 0 {
        names.push(format!("and {unlisted} more"));
    }
    Some(format!(
        "left out by the server (each catalog entry over the 64 KiB frame limit, not sent): {}; the server's log (and on Kubernetes an Event on the Service) says so: split the Service or trim its names, addresses or ports",
        names.join(", ")
    ))
}

/// What `status` and `ls` say about a running service's redirects.
fn redirect_notes(r: &Running) -> Vec<String> {
    let mut notes: Vec<String> = r
        .unredirected
        .iter()
        .map(|why| format!("not redirected: {why}"))
        .collect();
    for (service, udp, _, holder) in &r.blocked {
        let udp = if *udp { "/udp" } else { "" };
        notes.push(format!(
            "{service}{udp} is redirected to endpoint {holder}, which started it first; use this endpoint's names ({}.{}.svc.ENDPOINT.{})",
            r.service.name, r.service.namespace, r.domain
        ));
    }
    notes
}
