//! An annotated Service's catalog entries: each bridge of its `nx`
//! annotation (see [`annotation`](super::super::annotation)) checked
//! against the Service and its endpoints, and turned into one entry, or
//! into why the Service (an invalid bridge) or the entry (a target the
//! policy refuses) is not published.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service as KService, ServicePort as KServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netmux_common::proto::catalog::{Direction, Protocol, Service, ServicePort};

use super::index::{Index, Resolved};
use super::{
    cluster_ips, is_headless, pod_port, port_u16, protocol, screen, service_ports, valid_label,
    Origin, Refused, Screened, Target,
};
use crate::policy::{Refusal, TargetPolicy};
use crate::runtime::entry;
use crate::runtime::kubernetes::annotation::Bridge;

/// The bridges of an annotation, or why the Service cannot be published.
/// Entries whose target the policy refuses are left out and told in
/// [`Screened::refused`]; the others are published.
pub(crate) fn annotated(
    index: &Index<'_>,
    policy: &TargetPolicy,
    svc: &KService,
    ns: &str,
    name: &str,
    bridges: &[Bridge],
) -> Result<Screened, String> {
    let mut out = Screened::default();
    let mut names: Vec<&str> = Vec::new();
    for (i, b) in bridges.iter().enumerate() {
        let entry_name = b.name.clone().unwrap_or_else(|| name.to_owned());
        let prefix = format!("annotation `nx` entry {i} ({entry_name})");
        let fail = |key: &str, message: String| format!("{prefix}: `{key}`: {message}");
        if !valid_label(&entry_name) {
            return Err(fail(
                "name",
                format!("{entry_name:?} is not one DNS label; fix: lower-case letters, digits and '-', at most 63"),
            ));
        }
        if names.contains(&entry_name.as_str()) {
            return Err(fail(
                "name",
                "appears twice in the annotation; fix: give each entry its own name".into(),
            ));
        }
        names.push(b.name.as_deref().unwrap_or(name));
        let mut refused = Vec::new();
        let built = bridge(index, policy, svc, ns, name, b, &entry_name, &mut refused);
        out.refused.extend(refused.into_iter().map(|r| Refused {
            why: r.why,
            subject: format!("{entry_name} {}", r.subject),
            message: format!("{prefix}: `containerAddr`: {}", r.message),
        }));
        match built {
            Ok(Some((s, origin))) => {
                s.validate().map_err(|e| fail("name", e.problem))?;
                out.entries.push((s, origin));
            }
            // A pod that is not ready now: published again when it is.
            Ok(None) => {}
            Err(Fault::Invalid((key, message))) => return Err(fail(key, message)),
            Err(Fault::Refused(why, message)) => out.refused.push(Refused {
                why,
                subject: entry_name.clone(),
                message: format!("{prefix}: `containerAddr`: {message}"),
            }),
        }
    }
    Ok(out)
}

type BridgeError = (&'static str, String);

/// Why a bridge is not published.
enum Fault {
    /// The annotation is wrong: the whole Service is not published.
    Invalid(BridgeError),
    /// The policy refuses its target: this entry alone is left out.
    Refused(Refusal, String),
}

impl From<BridgeError> for Fault {
    fn from(e: BridgeError) -> Self {
        Fault::Invalid(e)
    }
}

/// The Service ports a bridge stands for, with the local port of each.
fn bridge_ports<'s>(
    svc: &'s KService,
    b: &Bridge,
) -> Result<Vec<(u16, Option<&'s KServicePort>)>, BridgeError> {
    let family = b.family;
    let sports: Vec<&KServicePort> = service_ports(svc)
        .iter()
        .filter(|p| protocol(p) == Some(family) && port_u16(p.port).is_some())
        .collect();
    let family_name = match family {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    let pick = |key: &'static str, hint: u16| -> Result<Option<&'s KServicePort>, BridgeError> {
        if let [only] = sports.as_slice() {
            return Ok(Some(*only));
        }
        let found = sports
            .iter()
            .find(|p| port_u16(p.port) == Some(hint))
            .copied();
        match found {
            Some(p) => Ok(Some(p)),
            None if sports.is_empty() => Ok(None),
            None => Err((
                key,
                format!("the Service has several {family_name} ports and none is {hint}; fix: set both localPort and containerPort"),
            )),
        }
    };
    match (b.local_port, b.container_port) {
        (None, None) => {
            if sports.is_empty() {
                return Err((
                    "family",
                    format!("the Service has no {family_name} port to default to; fix: add one to the Service, or set localPort and containerPort"),
                ));
            }
            Ok(sports
                .iter()
                .filter_map(|p| Some((port_u16(p.port)?, Some(*p))))
                .collect())
        }
        (Some(l), None) => match pick("containerPort", l)? {
            Some(p) => Ok(vec![(l, Some(p))]),
            None => Err((
                "containerPort",
                format!(
                    "the Service has no {family_name} port to default to; fix: set containerPort"
                ),
            )),
        },
        (None, Some(c)) => match pick("localPort", c)? {
            Some(p) => Ok(vec![(port_u16(p.port).unwrap_or(c), Some(p))]),
            None => Err((
                "localPort",
                format!("the Service has no {family_name} port to default to; fix: set localPort"),
            )),
        },
        (Some(l), Some(_)) => Ok(vec![(
            l,
            sports.iter().find(|p| port_u16(p.port) == Some(l)).copied(),
        )]),
    }
}

/// One bridge as a catalog entry; `None` while the pod it names is not
/// ready.
#[expect(
    clippy::too_many_arguments,
    reason = "one bridge's whole context; a struct would only rename it"
)]
fn bridge(
    index: &Index<'_>,
    policy: &TargetPolicy,
    svc: &KService,
    ns: &str,
    name: &str,
    b: &Bridge,
    entry_name: &str,
    refused: &mut Vec<Refused>,
) -> Result<Option<(Service, Origin)>, Fault> {
    let ports = bridge_ports(svc, b)?;
    let own_names = [
        name.to_owned(),
        format!("{name}.{ns}"),
        format!("{name}.{ns}.svc"),
        format!("{name}.{ns}.svc.{}", index.domain),
    ];
    let own_ips = cluster_ips(svc);
    let is_own = |addr: &str| {
        own_names.iter().any(|n| n == addr.trim_end_matches('.'))
            || addr.parse::<IpAddr>().is_ok_and(|ip| own_ips.contains(&ip))
    };
    let sp_name =
        |sp: Option<&KServicePort>| sp.and_then(|p| p.name.clone()).filter(|n| valid_label(n));
    match b.direction {
        Direction::C2L => {
            let local_ok = match b.local_addr.as_deref() {
                None | Some("localhost") => true,
                Some(a) if a == entry_name || a == name => true,
                Some(a) => a.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
            };
            if !local_ok {
                return Err(Fault::Invalid((
                    "localAddr",
                    format!("{:?}: a C2L connection ends on the workstation's loopback; fix: remove localAddr or set 127.0.0.1", b.local_addr.as_deref().unwrap_or_default()),
                )));
            }
            if let Some(a) = b.container_addr.as_deref().filter(|a| !is_own(a)) {
                return Err(Fault::Invalid((
                    "containerAddr",
                    format!("{a:?}: a C2L service is served by the netmux server behind this Service; fix: remove containerAddr"),
                )));
            }
            let mut out = Vec::new();
            for (local, sp) in ports {
                // The server listens where the Service sends traffic: its
                // targetPort.
                let listen = match (b.container_port, sp) {
                    (Some(c), _) => c,
                    (None, Some(sp)) => match &sp.target_port {
                        None => port_u16(sp.port).unwrap_or(local),
                        Some(IntOrString::Int(n)) => port_u16(*n).unwrap_or(local),
                        Some(IntOrString::String(named)) => {
                            return Err(Fault::Invalid((
                                "containerPort",
                                format!("the Service's targetPort is the named port {named:?}, which the netmux server cannot listen on; fix: set containerPort"),
                            )))
                        }
                    },
                    (None, None) => local,
                };
                out.push(ServicePort {
                    name: sp_name(sp),
                    port: listen,
                    target_port: local,
                    protocol: b.family,
                });
            }
            Ok(Some((
                entry(entry_name, ns, vec![], vec![], out, Direction::C2L),
                vec![name.to_owned()],
            )))
        }
        Direction::L2C => {
            let mut aliases = vec![];
            if let Some(a) = b.local_addr.as_deref() {
                let a = a.trim_end_matches('.');
                if a.parse::<IpAddr>().is_ok() {
                    return Err(Fault::Invalid((
                        "localAddr",
                        format!("{a:?} is an address; the daemon chooses local addresses itself; fix: use a DNS name or remove localAddr"),
                    )));
                }
                if !netmux_common::proto::catalog::valid_dns_name(a) {
                    return Err(Fault::Invalid((
                        "localAddr",
                        format!("{a:?} is not a valid DNS name; fix: lower-case labels of letters, digits and '-', separated by '.'"),
                    )));
                }
                if a != entry_name {
                    aliases.push(a.to_owned());
                }
            }
            let own_target = || {
                if is_headless(svc) {
                    let ready = index.ready(ns, name);
                    let ports = ready.first().map(|r| r.ports).unwrap_or_default();
                    Target::Pods(ready.iter().map(|r| (r.ip, r.assigned)).collect(), ports)
                } else {
                    Target::Virtual(own_ips.clone())
                }
            };
            // The Services this entry reaches: RBAC is asked about each.
            let mut origin: Origin = vec![name.to_owned()];
            let mut reaches = |other: &str| {
                if !origin.iter().any(|o| o == other) {
                    origin.push(other.to_owned());
                }
            };
            let target = match b.container_addr.as_deref() {
                None => own_target(),
                Some(a) if is_own(a) => own_target(),
                Some(a) => match a.parse::<IpAddr>() {
                    Ok(ip) => {
                        let owners = index.owners(ip);
                        if let Some(o) = owners.iter().find(|o| o.ns != ns) {
                            return Err(Fault::Refused(
                                Refusal::OtherNamespace,
                                format!(
                                    "{ip} belongs to Service {}/{}: {}",
                                    o.ns,
                                    o.service,
                                    Refusal::OtherNamespace
                                ),
                            ));
                        }
                        owners.iter().for_each(|o| reaches(o.service));
                        Target::Literal(ip, owners.iter().any(|o| o.assigned))
                    }
                    Err(_) => match index.resolve(ns, a) {
                        Resolved::Service(other) => {
                            let oname = other.metadata.name.as_deref().unwrap_or_default();
                            reaches(oname);
                            if is_headless(other) {
                                let ready = index.ready(ns, oname);
                                let ports = ready.first().map(|r| r.ports).unwrap_or_default();
                                Target::Pods(
                                    ready.iter().map(|r| (r.ip, r.assigned)).collect(),
                                    ports,
                                )
                            } else {
                                Target::Virtual(cluster_ips(other))
                            }
                        }
                        Resolved::Pod {
                            service,
                            ip,
                            ports,
                            assigned,
                        } => {
                            reaches(service);
                            Target::Pods(vec![(ip, assigned)], ports)
                        }
                        Resolved::NotReady => return Ok(None),
                        Resolved::OtherNamespace(other) => {
                            return Err(Fault::Refused(
                                Refusal::OtherNamespace,
                                format!(
                                    "{a:?} names namespace {other} (or a Service {other} that {ns} does not have): {}",
                                    Refusal::OtherNamespace
                                ),
                            ))
                        }
                        Resolved::Unknown => {
                            return Err(Fault::Invalid((
                                "containerAddr",
                                format!("{a:?} is neither an address nor a Service or pod name in namespace {ns}; fix: use an IP, a Service name, or <pod-hostname>.<service>.{ns}.svc.{}", index.domain),
                            )))
                        }
                    },
                },
            };
            let (candidates, pod_ports) = match target {
                Target::Virtual(ips) => (ips.into_iter().map(|ip| (ip, true)).collect(), None),
                Target::Pods(ips, ports) => (ips, Some(ports)),
                Target::Literal(ip, assigned) => (vec![(ip, assigned)], None),
            };
            // Refused addresses are told by the caller; an entry left with
            // none is not published.
            let addresses = screen(policy, candidates, "address", refused);
            if addresses.is_empty() {
                // No cluster IP or no ready pod now: nothing to dial.
                return Ok(None);
            }
            let ports = ports
                .into_iter()
                .map(|(local, sp)| {
                    let target = match (b.container_port, sp, pod_ports) {
                        (Some(c), _, _) => c,
                        (None, Some(sp), Some(eps)) => pod_port(sp, eps),
                        (None, Some(sp), None) => port_u16(sp.port).unwrap_or(local),
                        (None, None, _) => local,
                    };
                    ServicePort {
                        name: sp_name(sp),
                        port: local,
                        target_port: target,
                        protocol: b.family,
                    }
                })
                .collect();
            Ok(Some((
                entry(entry_name, ns, aliases, addresses, ports, Direction::L2C),
                origin,
            )))
        }
    }
}
