//! `netmux intercept` and `netmux leave` (docs/intercept.md): an intercept
//! is a claim of the endpoint ([`ClaimKind::Intercept`]), so it is sent
//! again on every reconnect and ended with the session like any claim; the
//! server's reverse streams for it are dialled to `--to`.

use std::net::SocketAddr;

use netmux_common::proto::catalog::{Direction, Protocol, Service};
use netmux_common::proto::control::{valid_header_name, valid_header_value};

use super::{wait_claims, Daemon};
use crate::api::{InterceptView, Reply};
use crate::claims::intercept_name;
use crate::endpoint::{ClaimKind, ClaimState, Targets};

/// `name=value` of `--header`, the name lower-cased.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text.split_once(['=', ':']).ok_or_else(|| {
        format!("--header {text:?}: expected NAME=VALUE, e.g. x-netmux-user=alice")
    })?;
    let name = name.trim().to_ascii_lowercase();
    let value = value.trim().to_owned();
    if !valid_header_name(&name) {
        return Err(format!(
            "--header {text:?}: {name:?} is not an HTTP header name (letters, digits, '-')"
        ));
    }
    if !valid_header_value(&value) {
        return Err(format!(
            "--header {text:?}: the value must be 1-256 visible ASCII characters"
        ));
    }
    Ok((name, value))
}

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

/// How `ls` and `status` name an intercept's mode (as the server does).
fn mode(header: Option<&(String, String)>, mirror: bool) -> String {
    match (header, mirror) {
        (None, true) => "mirror".into(),
        (Some((n, v)), true) => format!("mirror {n}={v}"),
        (Some((n, v)), false) => format!("personal {n}={v}"),
        (None, false) => "global".into(),
    }
}

impl Daemon {
    /// Intercepts port `port` of `service` on `ep` to `to`; personal with
    /// `header` (`name=value`).
    pub async fn intercept(
        &self,
        ep: &str,
        service: &str,
        port: Option<u16>,
        to: &str,
        header: Option<&str>,
        mirror: bool,
    ) -> Result<Reply, String> {
        let header = header.map(parse_header).transpose()?;
        let to: SocketAddr = tokio::net::lookup_host(to)
            .await
            .map_err(|e| format!("--to {to:?}: {e} (expected HOST:PORT, e.g. 127.0.0.1:8080)"))?
            .next()
            .ok_or_else(|| format!("--to {to:?} resolves to no address"))?;
        // The cluster must not reach past this machine through it.
        self.config.expose_target_allowed(to.ip())?;
        let state = self.state.lock().await;
        let found: Vec<Service> = self
            .matching(&state, ep, service)?
            .into_iter()
            .filter(|s| s.direction == Direction::L2C)
            .collect();
        let svc = match found.as_slice() {
            [one] => one.clone(),
            [] => return Err(format!("{service} on {ep} is not a cluster (L2C) Service")),
            many => {
                let names: Vec<String> = many.iter().map(Service::key).collect();
                return Err(format!(
                    "{service} matches {}; name one as namespace/name",
                    names.join(", ")
                ));
            }
        };
        let port = service_port(&svc, port)?;
        let c = self.connected(&state, ep)?;
        let name = intercept_name(&svc.key(), port);
        let mode = mode(header.as_ref(), mirror);
        c.endpoint.claim(
            &name,
            ClaimKind::Intercept {
                service: svc.key(),
                port,
                header,
                mirror,
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
        Ok(Reply::Done {
            message: format!(
                "intercepting {} port {port} ({mode}) => {to}; end it with `netmux leave {ep} {}`",
                svc.key(),
                svc.key()
            ),
        })
    }

    /// Ends the intercepts of `service` on `ep` (of `port` only, if given).
    pub async fn leave(&self, ep: &str, service: &str, port: Option<u16>) -> Result<Reply, String> {
        let state = self.state.lock().await;
        let c = self.connected(&state, ep)?;
        let names: Vec<String> = c
            .endpoint
            .claims()
            .snapshot_named()
            .into_iter()
            .filter_map(|(name, claim)| match claim.kind {
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
        Ok(Reply::Done {
            message: format!("left {}; the server restores the Service", names.join(", ")),
        })
    }

    /// The intercepts of every connected endpoint, for `status`.
    pub(super) fn intercept_views(&self, state: &super::State) -> Vec<InterceptView> {
        let mut out = Vec::new();
        for (ep, c) in &state.endpoints {
            for (_, claim) in c.endpoint.claims().snapshot_named() {
                let ClaimKind::Intercept {
                    service,
                    port,
                    header,
                    mirror,
                } = &claim.kind
                else {
                    continue;
                };
                out.push(InterceptView {
                    endpoint: ep.clone(),
                    service: service.clone(),
                    port: *port,
                    mode: mode(header.as_ref(), *mirror),
                    to: claim
                        .targets
                        .get(*port, Protocol::Tcp)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_header("X-Netmux-User=alice"),
            Ok(("x-netmux-user".into(), "alice".into()))
        );
        assert_eq!(
            parse_header("x-user: bob"),
            Ok(("x-user".into(), "bob".into()))
        );
        for bad in ["novalue", "bad name=x", "x=", "x=\u{7f}"] {
            assert!(parse_header(bad).is_err(), "{bad}");
        }
    }
}
