//! `netmux intercept` and `netmux leave` (docs/intercept.md): an intercept
//! is a claim of the endpoint ([`ClaimKind::Intercept`]), so it is sent
//! again on every reconnect and ended with the session like any claim; the
//! server's reverse streams for it are dialled to `--to`.

use netmux_common::proto::catalog::{Direction, Protocol, Service};

use super::{wait_claims, Daemon};
use crate::api::{self, InterceptView, Reply};
use crate::claims::{intercept_name, stop_name};
use crate::cluster::workload::{Kind as NamedKind, Named};
use crate::endpoint::{ClaimKind, ClaimState, Targets};

/// The TCP port of `svc` the user means: `asked`, or its only one.
fn service_port(svc: &Service, asked: Option<u16>) -> Result<u16, String> {
    let tcp: Vec<u16> = svc
        .ports
        .iter()
        .filter(|p| p.protocol == Protocol::Tcp)
        .map(|p| p.port)
        .collect();
    let list = tcp
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    match (asked, tcp.as_slice()) {
        (None, [only]) => Ok(*only),
        (None, []) => Err(format!("{} has no TCP port to intercept", svc.key())),
        (None, _) => Err(format!(
            "{} has ports {list}; fix: choose one with --port",
            svc.key()
        )),
        (Some(p), _) if tcp.contains(&p) => Ok(p),
        (Some(p), _) => Err(format!("{} has no TCP port {p}; it has {list}", svc.key())),
    }
}

/// What an intercept takes, as `netmux intercept` asked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Takes<'a> {
    /// `name=value`: a personal intercept (or a mirror's filter).
    pub header: Option<&'a str>,
    /// A mirror: copies only.
    pub mirror: bool,
    /// Replace: global, the workload stopped meanwhile.
    pub replace: bool,
}

/// How `ls` and `status` name an intercept's mode (as the server does).
fn mode(header: Option<&(String, String)>, mirror: bool, replace: bool) -> String {
    match (header, mirror) {
        _ if replace => "replace".into(),
        (None, true) => "mirror".into(),
        (Some((n, v)), true) => format!("mirror {n}={v}"),
        (Some((n, v)), false) => format!("personal {n}={v}"),
        (None, false) => "global".into(),
    }
}

impl Daemon {
    /// The one cluster (L2C) Service of `ep`'s catalog that `service`
    /// (a name or `namespace/name`) names.
    pub(super) fn cluster_service(
        &self,
        state: &super::State,
        ep: &str,
        service: &str,
    ) -> Result<Service, String> {
        let found: Vec<Service> = self
            .matching(state, ep, service)?
            .into_iter()
            .filter(|s| s.direction == Direction::L2C)
            .collect();
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(format!("{service} on {ep} is not a cluster (L2C) Service")),
            many => {
                let names: Vec<String> = many.iter().map(Service::key).collect();
                Err(format!(
                    "{service} matches {}; name one as namespace/name",
                    names.join(", ")
                ))
            }
        }
    }

    /// Intercepts port `port` of `service` on `ep` to `to`, taking what
    /// `takes` says (global, personal, mirror, replace).
    pub async fn intercept(
        &self,
        ep: &str,
        service: &str,
        port: Option<u16>,
        to: &str,
        takes: Takes<'_>,
    ) -> Result<Reply, String> {
        let Takes {
            header,
            mirror,
            replace,
        } = takes;
        if replace && (header.is_some() || mirror) {
            return Err("--replace is a global intercept (the workload is stopped, so nothing is left to answer the other requests); fix: drop --header and --mirror, or --replace".into());
        }
        if let Some(named) = Named::parse(service)? {
            if port.is_some() {
                return Err(format!(
                    "{service} is a workload: --port names a Service's port; fix: drop --port"
                ));
            }
            return self.stop_workload(ep, service, named, to, replace).await;
        }
        if to.is_empty() {
            return Err(format!("--to is needed: where the connections of {service} go on this machine (HOST:PORT, or PORT for 127.0.0.1:PORT)"));
        }
        let header = header
            .map(|h| api::args::header(h).map_err(|e| format!("--header {h:?}: {e}")))
            .transpose()?;
        let to = super::resolve("--to", to).await?;
        // The cluster must not reach past this machine through it.
        self.config.expose_target_allowed(to.ip())?;
        let state = self.state.lock().await;
        let svc = self.cluster_service(&state, ep, service)?;
        let port = service_port(&svc, port)?;
        let c = self.connected(&state, ep)?;
        let name = intercept_name(&svc.key(), port);
        let mode = mode(header.as_ref(), mirror, replace);
        c.endpoint.claim(
            &name,
            ClaimKind::Intercept {
                service: svc.key(),
                port,
                header,
                mirror,
                replace,
            },
            Targets::one(port, to),
        );
        let errors = wait_claims(&c.endpoint, std::slice::from_ref(&name)).await;
        if let Some(e) = errors.first() {
            // Not kept: a refused intercept is not retried behind the
            // user's back.
            c.endpoint.claims().lock().remove(&name);
            return Err(format!("could not intercept: {e}"));
        }
        drop(state);
        let stopped = if replace {
            "; the workload running its pods is scaled to zero until then"
        } else {
            ""
        };
        let message = format!(
            "intercepting {} port {port} ({mode}) => {to}; end it with `netmux leave {ep} {}`{stopped}",
            svc.key(),
            svc.key()
        );
        Ok(Reply::Done {
            message: crate::reverse::with_probe_notes(message, [to]).await,
        })
    }

    /// Stops workload `named` (`asked` as typed) of `ep`, which no Service
    /// fronts, while this daemon holds it: a claim the server answers by
    /// scaling it to zero, sent again on every reconnect.
    async fn stop_workload(
        &self,
        ep: &str,
        asked: &str,
        named: Named,
        to: &str,
        replace: bool,
    ) -> Result<Reply, String> {
        use netmux_common::proto::replaced::{Kind, Workload};
        if !replace {
            return Err(format!("{asked} is a workload: an intercept takes a Service's connections; fix: intercept the Service in front of it, or add --replace to stop the workload while its copy runs here"));
        }
        if !to.is_empty() {
            return Err(format!("{asked} is a workload with no Service in front: no connection would come to --to; fix: drop --to (--replace stops it), or intercept the Service that fronts it"));
        }
        let kind = match named.kind {
            NamedKind::Deployment => Kind::Deployment,
            NamedKind::StatefulSet => Kind::StatefulSet,
            other => {
                return Err(format!(
                    "{asked}: a {} cannot be scaled to zero; --replace stops Deployments and StatefulSets",
                    other.word()
                ))
            }
        };
        let state = self.state.lock().await;
        let c = self.connected(&state, ep)?;
        let namespace = match (named.namespace, c.endpoint.kube()) {
            (Some(ns), _) => ns,
            (None, Some(kube)) => kube.default_namespace().to_owned(),
            (None, None) => {
                return Err(format!("{asked}: name its namespace (NAMESPACE/{}/{}); endpoint {ep} has no kubeconfig context to take it from", named.kind.word(), named.name))
            }
        };
        let w = Workload {
            namespace,
            kind,
            name: named.name,
        };
        if !w.is_valid() {
            return Err(format!(
                "{asked} does not name a workload Kubernetes could have"
            ));
        }
        let name = stop_name(&w);
        c.endpoint
            .claim(&name, ClaimKind::Stop(w.clone()), Targets::default());
        let errors = wait_claims(&c.endpoint, std::slice::from_ref(&name)).await;
        if let Some(e) = errors.first() {
            c.endpoint.claims().lock().remove(&name);
            return Err(format!("could not stop {w}: {e}"));
        }
        Ok(Reply::Done {
            message: format!("stopped {w} (scaled to zero) for as long as this lasts; start it again with `netmux leave {ep} {asked}`"),
        })
    }

    /// Ends the intercepts of `service` on `ep` (of `port` only, if given).
    pub async fn leave(&self, ep: &str, service: &str, port: Option<u16>) -> Result<Reply, String> {
        let named = Named::parse(service)?;
        let state = self.state.lock().await;
        let c = self.connected(&state, ep)?;
        let names: Vec<String> = c
            .endpoint
            .claims()
            .snapshot_named()
            .into_iter()
            .filter_map(|(name, claim)| match claim.kind {
                ClaimKind::Stop(w)
                    if named.as_ref().is_some_and(|n| {
                        n.name == w.name
                            && n.kind.word() == w.kind.to_string().to_ascii_lowercase()
                            && n.namespace.as_ref().is_none_or(|ns| *ns == w.namespace)
                    }) =>
                {
                    Some(name)
                }
                ClaimKind::Intercept {
                    service: key,
                    port: p,
                    ..
                } if (key == service
                    || key.rsplit_once('/').is_some_and(|(_, n)| n == service))
                    && port.is_none_or(|want| want == p) =>
                {
                    Some(name)
                }
                _ => None,
            })
            .collect();
        if names.is_empty() {
            return Err(format!(
                "{service} is not intercepted on {ep}: see `netmux status`"
            ));
        }
        for n in &names {
            c.endpoint.release(n);
        }
        let restores = match named {
            Some(_) => "the server starts the workload again",
            None => "the server restores the Service",
        };
        Ok(Reply::Done {
            message: format!("left {}; {restores}", names.join(", ")),
        })
    }

    /// The intercepts of every connected endpoint, for `status`.
    pub(super) fn intercept_views(&self, state: &super::State) -> Vec<InterceptView> {
        let mut out = Vec::new();
        for (ep, c) in &state.endpoints {
            for (_, claim) in c.endpoint.claims().snapshot_named() {
                let (service, port, mode) = match &claim.kind {
                    ClaimKind::Intercept {
                        service,
                        port,
                        header,
                        mirror,
                        replace,
                    } => (
                        service.clone(),
                        *port,
                        mode(header.as_ref(), *mirror, *replace),
                    ),
                    // A workload stopped with no Service in front: no port.
                    ClaimKind::Stop(w) => (w.to_string(), 0, "replace".to_owned()),
                    _ => continue,
                };
                out.push(InterceptView {
                    endpoint: ep.clone(),
                    service,
                    port,
                    mode,
                    to: claim
                        .targets
                        .get(port, Protocol::Tcp)
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "-".into()),
                    state: match &claim.state {
                        ClaimState::Held => "held".into(),
                        ClaimState::Pending => "pending".into(),
                        ClaimState::Refused(e) => format!("refused: {e}"),
                    },
                    holder: claim.holder.clone().unwrap_or_else(|| "-".into()),
                    to_workstation: claim.served,
                });
            }
        }
        out
    }
}
