//! Services and EndpointSlices in, catalog out: no IO, no clock.
//!
//! [`catalog_from`] is the whole policy of the Kubernetes runtime. The
//! watchers only keep its inputs current; its problems become Kubernetes
//! Events on the Services concerned.
//!
//! What gets published:
//! - an unannotated Service (when [`CatalogOptions::publish_unannotated`]):
//!   every TCP and UDP port at its cluster IPs; a headless Service at the
//!   addresses of its ready endpoints, and each ready endpoint with a
//!   hostname also under its per-pod name (`kafka-0`, alias
//!   `kafka-0.kafka.ns.svc.cluster.local`) at that pod's address;
//! - an annotated Service: exactly the bridges of its `nx` annotation (see
//!   [`annotation`](super::annotation)); an invalid annotation skips the
//!   Service alone and yields a [`Problem`].

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service as KService, ServicePort as KServicePort};
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netmux_common::proto::catalog::{Direction, Protocol, Service, ServiceId, ServicePort};

use super::annotation;
use bridge::annotated;
use index::{Index, Ready};

mod bridge;
mod index;
use crate::policy::{Refusal, TargetPolicy};
use crate::runtime::entry;

/// Label linking an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Policy knobs of [`catalog_from`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogOptions {
    /// Publish Services that carry no `nx` annotation (the original did).
    pub(crate) publish_unannotated: bool,
    /// The cluster's DNS domain, for per-pod names (`cluster.local`).
    pub(crate) cluster_domain: String,
    /// Which addresses entries may point at.
    pub(crate) policy: TargetPolicy,
}

impl Default for CatalogOptions {
    fn default() -> Self {
        CatalogOptions {
            publish_unannotated: true,
            cluster_domain: "cluster.local".into(),
            policy: TargetPolicy::default(),
        }
    }
}

/// Why a problem is reported (the Event's reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// The `nx` annotation is malformed or names something impossible; the
    /// Service is not published.
    InvalidAnnotation,
    /// Another Service already publishes this name in the namespace; this
    /// entry is not published.
    NameConflict,
    /// An address or name the target policy refuses; that address (or the
    /// entry, if nothing is left) is not published, the rest is.
    TargetRefused(Refusal),
    /// One entry is over the 64 KiB a catalog entry may take on the wire:
    /// daemons do not get it (each session leaves it out, names it in its
    /// hello reply and counts it); the rest is published.
    TooLarge,
}

impl ProblemKind {
    /// PascalCase reason for a Kubernetes Event.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            ProblemKind::InvalidAnnotation => "InvalidNxAnnotation",
            ProblemKind::NameConflict => "NetmuxNameConflict",
            ProblemKind::TargetRefused(_) => "NetmuxTargetRefused",
            ProblemKind::TooLarge => "NetmuxEntryTooLarge",
        }
    }

    /// Bounded metric label (`netmux_server_catalog_refused_total`).
    pub(crate) fn label(self) -> &'static str {
        match self {
            ProblemKind::InvalidAnnotation => "invalid_annotation",
            ProblemKind::NameConflict => "name_conflict",
            ProblemKind::TargetRefused(r) => r.label(),
            ProblemKind::TooLarge => "too_large",
        }
    }
}

/// Something wrong with one Service, to be told to its owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    /// The Service's namespace.
    pub(crate) namespace: String,
    /// The Service's name.
    pub(crate) service: String,
    /// The Service's uid, for the Event's reference.
    pub(crate) uid: Option<String>,
    /// Reason.
    pub(crate) kind: ProblemKind,
    /// What is refused (an entry name, an address), empty for the whole
    /// Service: Events about distinct subjects are kept apart.
    pub(crate) subject: String,
    /// What is wrong, which entry, and the fix.
    pub(crate) message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Service {}/{}: {}",
            self.namespace, self.service, self.message
        )
    }
}

fn protocol(p: &KServicePort) -> Option<Protocol> {
    match p.protocol.as_deref() {
        None | Some("TCP") => Some(Protocol::Tcp),
        Some("UDP") => Some(Protocol::Udp),
        _ => None,
    }
}

fn port_u16(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

fn is_headless(s: &KService) -> bool {
    s.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| ip == "None")
}

fn cluster_ips(s: &KService) -> Vec<IpAddr> {
    let Some(spec) = &s.spec else { return vec![] };
    let mut ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    // cluster_ips[0] == cluster_ip: keep the first occurrence only.
    let mut seen = std::collections::HashSet::new();
    ips.retain(|ip| seen.insert(*ip));
    ips
}

fn service_ports(s: &KService) -> &[KServicePort] {
    s.spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
}

/// The port a pod listens on for Service port `sp`: the EndpointSlice's
/// port of the same name, else a numeric targetPort, else the port itself.
fn pod_port(sp: &KServicePort, ports: &[EndpointPort]) -> u16 {
    let by_name = ports
        .iter()
        .find(|p| p.name.as_deref().unwrap_or("") == sp.name.as_deref().unwrap_or(""))
        .and_then(|p| p.port)
        .and_then(port_u16);
    by_name
        .or(match &sp.target_port {
            Some(IntOrString::Int(n)) => port_u16(*n),
            _ => None,
        })
        .or(port_u16(sp.port))
        .unwrap_or(1)
}

/// Where an L2C entry's connections go; each address says whether the
/// cluster assigned it.
enum Target<'a> {
    /// A cluster IP: dialled at the Service port.
    Virtual(Vec<IpAddr>),
    /// Pod addresses: dialled at the pod's port.
    Pods(Vec<(IpAddr, bool)>, &'a [EndpointPort]),
    /// A literal address from the annotation: dialled at the Service port.
    Literal(IpAddr, bool),
}

/// One catalog entry and the Kubernetes Services (same namespace, the
/// publishing one first) it reaches: what RBAC is asked about.
pub(crate) type Origin = Vec<String>;

/// One refused address or entry.
struct Refused {
    why: Refusal,
    /// The entry or address.
    subject: String,
    message: String,
}

/// Refusals of one Service's entries, and the entries kept.
#[derive(Default)]
struct Screened {
    entries: Vec<(Service, Origin)>,
    refused: Vec<Refused>,
}

/// Builds the catalog from the current Services and EndpointSlices.
///
/// Deterministic: the same inputs in any order give the same output.
/// Services are processed by namespace and name, so when two publish the
/// same name the first keeps it and the second gets a
/// [`ProblemKind::NameConflict`].
pub fn catalog_from<S: Borrow<KService>, E: Borrow<EndpointSlice>>(
    services: &[S],
    slices: &[E],
    options: &CatalogOptions,
) -> (Vec<Service>, Vec<Problem>) {
    let (out, problems) = catalog_with_origins(services, slices, options);
    (out.into_iter().map(|(s, _)| s).collect(), problems)
}

/// [`catalog_from`], each entry with the names of the Kubernetes Services
/// (same namespace) it reaches, the publishing one first: what RBAC is
/// asked about.
pub fn catalog_with_origins<S: Borrow<KService>, E: Borrow<EndpointSlice>>(
    services: &[S],
    slices: &[E],
    options: &CatalogOptions,
) -> (Vec<(Service, Origin)>, Vec<Problem>) {
    let index = Index::new(services, slices, &options.cluster_domain);
    let policy = &options.policy;
    let mut out: Vec<(Service, Origin)> = Vec::new();
    let mut problems = Vec::new();
    let mut taken: HashMap<(String, String), String> = HashMap::new();
    let all = index
        .services
        .iter()
        .flat_map(|(ns, m)| m.iter().map(move |(name, svc)| (*ns, *name, *svc)));
    for (ns, name, svc) in all {
        let problem = |kind, subject: &str, message: String| Problem {
            namespace: ns.to_owned(),
            service: name.to_owned(),
            uid: svc.metadata.uid.clone(),
            kind,
            subject: subject.to_owned(),
            message,
        };
        let annotation = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotation::KEY));
        let screened = if annotation::is_present(annotation) {
            let text = annotation.map(String::as_str).unwrap_or_default();
            match annotation::parse(text)
                .map_err(|e| e.to_string())
                .and_then(|bridges| annotated(&index, policy, svc, ns, name, &bridges))
            {
                Ok(screened) => screened,
                Err(message) => {
                    problems.push(problem(ProblemKind::InvalidAnnotation, "", message));
                    continue;
                }
            }
        } else if options.publish_unannotated {
            unannotated(&index, policy, svc, ns, name)
        } else {
            continue;
        };
        for r in screened.refused {
            problems.push(problem(
                ProblemKind::TargetRefused(r.why),
                &r.subject,
                r.message,
            ));
        }
        for (entry, origin) in screened.entries {
            let key = (entry.namespace.clone(), entry.name.clone());
            if let Some(owner) = taken.get(&key) {
                problems.push(problem(
                    ProblemKind::NameConflict,
                    &entry.name,
                    format!(
                        "{}/{} is already published by Service {owner}; fix: give this entry another `name` in the nx annotation",
                        entry.namespace, entry.name
                    ),
                ));
                continue;
            }
            taken.insert(key, format!("{ns}/{name}"));
            if let Some(message) = too_large(&entry) {
                problems.push(problem(ProblemKind::TooLarge, &entry.name, message));
            }
            out.push((entry, origin));
        }
    }
    (out, problems)
}

/// Why `entry` cannot reach daemons, if it is over the frame limit.
fn too_large(entry: &Service) -> Option<String> {
    let worst = Service {
        id: ServiceId(u32::MAX),
        ..entry.clone()
    };
    if netmux_common::proto::control::upsert_fits(&worst) {
        return None;
    }
    Some(format!(
        "catalog entry {}/{} is over the 64 KiB limit of one entry ({} names, {} addresses, {} ports) and is not sent to daemons; `netmux status` names it. Fix: split the Service, or publish fewer per-pod names, addresses or ports",
        entry.namespace,
        entry.name,
        entry.aliases.len(),
        entry.addresses.len(),
        entry.ports.len()
    ))
}

/// The addresses of `candidates` the policy accepts; each refused one is
/// told in `refused` as `<what> <address>: <why>`.
fn screen(
    policy: &TargetPolicy,
    candidates: impl IntoIterator<Item = (IpAddr, bool)>,
    what: &str,
    refused: &mut Vec<Refused>,
) -> Vec<IpAddr> {
    let mut kept = Vec::new();
    for (ip, assigned) in candidates {
        match policy.check(ip, assigned) {
            Ok(()) => kept.push(ip),
            Err(why) => refused.push(Refused {
                why,
                subject: ip.to_string(),
                message: format!("{what} {ip}: {why}"),
            }),
        }
    }
    kept
}

/// Every port at the cluster IPs, or at the ready pods when headless.
fn unannotated(
    index: &Index<'_>,
    policy: &TargetPolicy,
    svc: &KService,
    ns: &str,
    name: &str,
) -> Screened {
    let sports: Vec<(&KServicePort, Protocol)> = service_ports(svc)
        .iter()
        .filter_map(|p| Some((p, protocol(p)?)))
        .filter(|(p, _)| port_u16(p.port).is_some())
        .collect();
    let port = |sp: &KServicePort, proto, target| ServicePort {
        name: sp.name.clone().filter(|n| !n.is_empty()),
        port: port_u16(sp.port).unwrap_or(1),
        target_port: target,
        protocol: proto,
    };
    let mut refused = Vec::new();
    let mut out = Vec::new();
    if is_headless(svc) {
        let ready: Vec<&Ready<'_>> = index
            .ready(ns, name)
            .iter()
            .filter(|r| {
                screen(
                    policy,
                    [(r.ip, r.assigned)],
                    "endpoint address",
                    &mut refused,
                )
                .len()
                    == 1
            })
            .collect();
        let Some(first) = ready.first() else {
            return Screened {
                entries: vec![],
                refused,
            };
        };
        let ports_for = |eps: &[EndpointPort]| {
            sports
                .iter()
                .map(|(sp, proto)| port(sp, *proto, pod_port(sp, eps)))
                .collect::<Vec<_>>()
        };
        let main = entry(
            name,
            ns,
            vec![],
            ready.iter().map(|r| r.ip).collect(),
            ports_for(first.ports),
            Direction::L2C,
        );
        out.push(main);
        for r in &ready {
            let Some(host) = r.hostname.filter(|h| valid_label(h)) else {
                continue;
            };
            if host == name {
                continue;
            }
            out.push(entry(
                host,
                ns,
                vec![format!("{host}.{name}.{ns}.svc.{}", index.domain)],
                vec![r.ip],
                ports_for(r.ports),
                Direction::L2C,
            ));
        }
    } else {
        let ips = screen(
            policy,
            cluster_ips(svc).into_iter().map(|ip| (ip, true)),
            "cluster IP",
            &mut refused,
        );
        if !ips.is_empty() {
            let ports = sports
                .iter()
                .map(|(sp, proto)| port(sp, *proto, port_u16(sp.port).unwrap_or(1)))
                .collect();
            out.push(entry(name, ns, vec![], ips, ports, Direction::L2C));
        }
        // No cluster IP: ExternalName, or not yet allocated: nothing to dial.
    }
    out.retain(|s| s.validate().is_ok());
    Screened {
        entries: out
            .into_iter()
            .map(|s| (s, vec![name.to_owned()]))
            .collect(),
        refused,
    }
}

fn valid_label(s: &str) -> bool {
    netmux_common::proto::catalog::valid_dns_name(s) && !s.contains('.')
}
#[cfg(test)]
mod tests;
