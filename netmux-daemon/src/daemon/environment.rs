//! `netmux env` (and `netmux intercept --env-file`): the environment of
//! the container behind a cluster Service, read with the credentials the
//! user connected the endpoint with ([`crate::cluster::workload`]), so it
//! shows exactly what that user may read and nothing more, and only to
//! that user (or root): another member of the socket group connects with
//! their own credentials first.
//!
//! The values are the pod's, with one change for this machine: a cluster
//! address of a Service started here that the redirect does not catch
//! (the loopback backend, or an address the eBPF redirect leaves alone)
//! becomes the Service's local address, so `WEB_SERVICE_HOST` and
//! `WEB_PORT=tcp://…` reach it from here as they do in the pod.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use super::Daemon;
use crate::api::{EnvironmentView, FileView, MountView, Reply};

/// Where a started Service's cluster addresses are reached from here:
/// the ones the redirect does not catch map to its local address; every
/// started address is in the set.
#[derive(Debug, Default)]
pub(crate) struct Here {
    /// Cluster address → the Service's local address.
    pub(crate) local: BTreeMap<IpAddr, Ipv4Addr>,
    /// Cluster addresses of Services started here.
    pub(crate) started: BTreeSet<IpAddr>,
}

/// Rewrites values that are a cluster address in `here.local`, alone or
/// in a `proto://ADDR:PORT` URL (the service-link forms), and notes the
/// service-link hosts of Services not started here.
pub(crate) fn localize(vars: &mut [(String, String)], here: &Here, ep: &str) -> Vec<String> {
    let mut rewritten = 0;
    let mut unreachable = Vec::new();
    for (name, value) in vars.iter_mut() {
        let (prefix, addr, suffix) = match value.split_once("://") {
            Some((proto, rest)) => match rest.rsplit_once(':') {
                Some((host, port)) => (format!("{proto}://"), host, format!(":{port}")),
                None => continue,
            },
            None => (String::new(), value.as_str(), String::new()),
        };
        // An IPv6 cluster address is bracketed in a URL (`tcp://[fd00::10]:53`).
        let addr = match addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
            Some(inner) if !prefix.is_empty() => inner,
            _ => addr,
        };
        let Ok(ip) = addr.parse::<IpAddr>() else {
            continue;
        };
        if let Some(local) = here.local.get(&ip) {
            *value = format!("{prefix}{local}{suffix}");
            rewritten += 1;
        } else if !here.started.contains(&ip) && name.ends_with("_SERVICE_HOST") {
            unreachable.push(name.clone());
        }
    }
    let mut notes = Vec::new();
    if rewritten > 0 {
        notes.push(format!(
            "{rewritten} value(s) holding the cluster address of a Service started here now hold its local address on this machine (the redirect does not catch that address here)"
        ));
    }
    if !unreachable.is_empty() {
        // Named in full only when few (a namespace can hold hundreds).
        let named = match unreachable.len() {
            n if n <= 6 => unreachable.join(", "),
            n => format!("{}, … ({n} in all)", unreachable[..5].join(", ")),
        };
        notes.push(format!(
            "{named}: the cluster addresses of Services not started here; fix: `netmux start {ep} NAME` (or `+`) to reach them from this machine"
        ));
    }
    notes
}

/// What `netmux env` names: a Service of the endpoint's catalog, or a
/// workload read directly.
enum Target {
    /// A catalog Service.
    Service(netmux_common::proto::catalog::Service),
    /// `KIND/NAME` or `NAMESPACE/KIND/NAME`.
    Workload(crate::cluster::workload::Named),
}

impl Daemon {
    /// The environment (and, if asked, the volume files) of `service`'s
    /// container on `ep`: the one serving `asked.port`, or named
    /// `asked.container`.
    pub(crate) async fn environment(
        &self,
        ep: &str,
        service: &str,
        asked: crate::cluster::workload::Asked<'_>,
        uid: u32,
    ) -> Result<Reply, String> {
        // A workload (`deploy/worker`) is read directly; a Service comes
        // from the endpoint's catalog.
        let named = crate::cluster::workload::Named::parse(service)?;
        let (target, kube, here) = {
            let state = self.state.lock().await;
            let target = match named {
                Some(named) => Target::Workload(named),
                None => Target::Service(self.cluster_service(&state, ep, service)?),
            };
            let kube = self.connected(&state, ep)?.endpoint.kube();
            let mut here = Here::default();
            for ((e, _), running) in &state.running {
                if e != ep {
                    continue;
                }
                for addr in &running.service.addresses {
                    here.started.insert(*addr);
                    if !running.redirects.iter().any(|(to, _)| to.ip() == *addr) {
                        here.local.insert(*addr, running.addr);
                    }
                }
            }
            (target, kube, here)
        };
        let Some(kube) = kube else {
            return Err(format!(
                "endpoint {ep} has no Kubernetes credentials of yours (it connects with a token): `netmux env` reads the pod spec, ConfigMaps and Secrets with your own credentials; fix: give the endpoint an [endpoint.kubernetes] section in the config, then `netmux connect {ep}`. A Docker or static server has no pod spec to read; for a container there: docker inspect -f '{{{{range .Config.Env}}}}{{{{println .}}}}{{{{end}}}}' NAME"
            ));
        };
        // Secrets are read with these credentials: only for their owner.
        if let Some(owner) = kube.owner.filter(|o| *o != uid && uid != 0) {
            return Err(format!(
                "endpoint {ep} is connected with the Kubernetes credentials of uid {owner} ({}); a pod's environment, Secrets included, is read with them for that user only; fix: run `netmux connect {ep}` as yourself first",
                kube.describe
            ));
        }
        let (read, label) = match target {
            Target::Service(svc) => (
                kube.workload(&svc.namespace, &svc.name, asked).await,
                svc.key(),
            ),
            Target::Workload(named) => {
                let ns = named
                    .namespace
                    .as_deref()
                    .unwrap_or(kube.default_namespace());
                let label = format!("{} {ns}/{}", named.kind.word(), named.name);
                (kube.named_workload(ns, &named, asked).await, label)
            }
        };
        let mut w = read.map_err(|e| format!("{ep}: {e}"))?;
        let more = localize(&mut w.environment.vars, &here, ep);
        w.environment.notes.extend(more);
        Ok(Reply::Environment(EnvironmentView {
            service: label,
            pod: w.pod,
            container: w.container,
            vars: w.environment.vars,
            notes: w.environment.notes,
            mounts: w.mounts.into_iter().map(mount_view).collect(),
        }))
    }
}

/// A mount as the CLI gets it (contents in base64).
fn mount_view(m: crate::cluster::environment::volumes::Mount) -> MountView {
    use base64::Engine as _;
    MountView {
        path: m.mount_path,
        volume: m.volume,
        read_only: m.read_only,
        files: m
            .files
            .into_iter()
            .map(|f| FileView {
                path: f.path,
                mode: f.mode,
                data: base64::engine::general_purpose::STANDARD.encode(&f.data),
            })
            .collect(),
    }
}

/// Who owns the Kubernetes credentials a client running as `uid` hands
/// over with `netmux connect`: that user; for root under `sudo`, the user
/// who ran sudo, whose kubeconfig the CLI resolved them from.
pub(super) fn credentials_owner(uid: u32, on_behalf_of: Option<u32>) -> Result<u32, String> {
    match on_behalf_of {
        None => Ok(uid),
        Some(other) if uid == 0 || other == uid => Ok(other),
        Some(other) => Err(format!(
            "connect: only root (sudo) connects on behalf of another user, and this client runs as uid {uid}, not root; fix: leave out on_behalf_of ({other}), the endpoint is then connected as uid {uid}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn started_services_are_reached_at_their_local_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let here = Here {
            local: BTreeMap::from([
                (ip("10.96.0.10"), Ipv4Addr::new(127, 77, 0, 2)),
                (ip("fd00::10"), Ipv4Addr::new(127, 77, 0, 3)),
            ]),
            // 10.96.0.11 is started and redirected by eBPF: left as is.
            started: BTreeSet::from([ip("10.96.0.10"), ip("10.96.0.11"), ip("fd00::10")]),
        };
        let mut v = vars(&[
            ("WEB_SERVICE_HOST", "10.96.0.10"),
            ("WEB_PORT", "tcp://10.96.0.10:8080"),
            ("WEB_PORT_8080_TCP_ADDR", "10.96.0.10"),
            ("API_SERVICE_HOST", "10.96.0.11"),
            ("DB_SERVICE_HOST", "10.96.0.12"),
            ("DB_URL", "postgres://db.apps:5432/app"),
            ("PLAIN", "10.96.0.100"),
            ("DNS_SERVICE_HOST", "fd00::10"),
            ("DNS_PORT", "udp://[fd00::10]:53"),
        ]);
        let notes = localize(&mut v, &here, "kind");
        let got: BTreeMap<&str, &str> = v.iter().map(|(k, x)| (k.as_str(), x.as_str())).collect();
        assert_eq!(got["WEB_SERVICE_HOST"], "127.77.0.2");
        assert_eq!(got["WEB_PORT"], "tcp://127.77.0.2:8080");
        assert_eq!(got["WEB_PORT_8080_TCP_ADDR"], "127.77.0.2");
        assert_eq!(got["API_SERVICE_HOST"], "10.96.0.11");
        assert_eq!(got["DB_SERVICE_HOST"], "10.96.0.12");
        assert_eq!(got["DB_URL"], "postgres://db.apps:5432/app");
        assert_eq!(got["PLAIN"], "10.96.0.100");
        assert_eq!(got["DNS_SERVICE_HOST"], "127.77.0.3");
        assert_eq!(got["DNS_PORT"], "udp://127.77.0.3:53");
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("5 value(s)"), "{notes:?}");
        assert!(
            notes[1].starts_with("DB_SERVICE_HOST: ") && notes[1].contains("netmux start kind"),
            "{notes:?}"
        );
        let mut none = vars(&[("A", "b")]);
        assert!(localize(&mut none, &Here::default(), "kind").is_empty());
    }

    #[test]
    fn credentials_belong_to_the_user_behind_sudo() {
        assert_eq!(credentials_owner(1000, None), Ok(1000));
        assert_eq!(credentials_owner(0, None), Ok(0));
        assert_eq!(credentials_owner(0, Some(1000)), Ok(1000));
        assert_eq!(credentials_owner(1000, Some(1000)), Ok(1000));
        let e = credentials_owner(1000, Some(1001)).unwrap_err();
        assert!(e.contains("uid 1000") && e.contains("only root"), "{e}");
    }
}
