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
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service as KService, ServicePort as KServicePort};
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netmux_common::proto::catalog::{Direction, Protocol, Service, ServiceId, ServicePort};

use super::annotation::{self, Bridge};

/// Label linking an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Policy knobs of [`catalog_from`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogOptions {
    /// Publish Services that carry no `nx` annotation (the original did).
    pub publish_unannotated: bool,
    /// The cluster's DNS domain, for per-pod names (`cluster.local`).
    pub cluster_domain: String,
}

impl Default for CatalogOptions {
    fn default() -> Self {
        CatalogOptions {
            publish_unannotated: true,
            cluster_domain: "cluster.local".into(),
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
}

impl ProblemKind {
    /// PascalCase reason for a Kubernetes Event.
    pub fn reason(self) -> &'static str {
        match self {
            ProblemKind::InvalidAnnotation => "InvalidNxAnnotation",
            ProblemKind::NameConflict => "NetmuxNameConflict",
        }
    }
}

/// Something wrong with one Service, to be told to its owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The Service's uid, for the Event's reference.
    pub uid: Option<String>,
    /// Reason.
    pub kind: ProblemKind,
    /// What is wrong, which entry, and the fix.
    pub message: String,
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

/// One ready endpoint of a Service.
struct Ready<'a> {
    ip: IpAddr,
    hostname: Option<&'a str>,
    ports: &'a [EndpointPort],
}

/// The inputs, indexed for lookups by name.
struct Index<'a> {
    /// namespace → name → Service.
    services: BTreeMap<&'a str, BTreeMap<&'a str, &'a KService>>,
    /// namespace → Service name → ready endpoints.
    ready: HashMap<&'a str, HashMap<&'a str, Vec<Ready<'a>>>>,
    domain: &'a str,
}

impl<'a> Index<'a> {
    fn new<S: Borrow<KService>, E: Borrow<EndpointSlice>>(
        services: &'a [S],
        slices: &'a [E],
        domain: &'a str,
    ) -> Self {
        let mut by_name: BTreeMap<&str, BTreeMap<&str, &KService>> = BTreeMap::new();
        for s in services {
            let s = s.borrow();
            if let (Some(ns), Some(name)) =
                (s.metadata.namespace.as_deref(), s.metadata.name.as_deref())
            {
                by_name.entry(ns).or_default().insert(name, s);
            }
        }
        let mut ready: HashMap<&str, HashMap<&str, Vec<Ready<'a>>>> = HashMap::new();
        for slice in slices {
            let slice = slice.borrow();
            let (Some(ns), Some(svc)) = (
                slice.metadata.namespace.as_deref(),
                slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .map(String::as_str),
            ) else {
                continue;
            };
            if slice.address_type == "FQDN" {
                continue;
            }
            let ports = slice.ports.as_deref().unwrap_or_default();
            for ep in slice.endpoints.iter().flatten() {
                // "nil should be interpreted as ready" (EndpointConditions).
                let is_ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !is_ready {
                    continue;
                }
                for a in &ep.addresses {
                    if let Ok(ip) = a.parse::<IpAddr>() {
                        ready
                            .entry(ns)
                            .or_default()
                            .entry(svc)
                            .or_default()
                            .push(Ready {
                                ip,
                                hostname: ep.hostname.as_deref(),
                                ports,
                            });
                    }
                }
            }
        }
        for v in ready.values_mut().flat_map(|m| m.values_mut()) {
            v.sort_by_key(|r| r.ip);
            v.dedup_by_key(|r| r.ip);
        }
        Index {
            services: by_name,
            ready,
            domain,
        }
    }

    fn ready(&self, ns: &str, svc: &str) -> &[Ready<'a>] {
        self.ready
            .get(ns)
            .and_then(|m| m.get(svc))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// What a DNS name means inside the cluster, read from `ns` as a pod's
    /// resolver would (search `ns.svc.<domain>`, `svc.<domain>`).
    fn resolve(&self, ns: &'a str, name: &str) -> Resolved<'a> {
        let name = name.trim_end_matches('.');
        let suffix = format!(".svc.{}", self.domain);
        let fqdn = if let Some(stem) = name.strip_suffix(&suffix) {
            stem.to_owned()
        } else if let Some(stem) = name.strip_suffix(".svc") {
            stem.to_owned()
        } else {
            name.to_owned()
        };
        let labels: Vec<&str> = fqdn.split('.').collect();
        match labels.as_slice() {
            [svc] => self.service(ns, svc),
            [svc, other_ns] => match self.service(other_ns, svc) {
                Resolved::Unknown => self.pod(ns, svc, other_ns),
                found => found,
            },
            [host, svc, other_ns] => self.pod(other_ns, svc, host),
            _ => Resolved::Unknown,
        }
    }

    fn service(&self, ns: &str, svc: &str) -> Resolved<'a> {
        match self.services.get(ns).and_then(|m| m.get(svc)) {
            Some(s) => Resolved::Service(s),
            None => Resolved::Unknown,
        }
    }

    fn pod(&self, ns: &str, svc: &str, host: &str) -> Resolved<'a> {
        if self.services.get(ns).and_then(|m| m.get(svc)).is_none() {
            return Resolved::Unknown;
        }
        let found: Vec<&Ready<'a>> = self
            .ready(ns, svc)
            .iter()
            .filter(|r| r.hostname == Some(host))
            .collect();
        match found.first() {
            Some(r) => Resolved::Pod {
                ip: r.ip,
                ports: r.ports,
            },
            None => Resolved::NotReady,
        }
    }
}

enum Resolved<'a> {
    Service(&'a KService),
    Pod {
        ip: IpAddr,
        ports: &'a [EndpointPort],
    },
    /// Names a pod of a known Service that has no ready endpoint now.
    NotReady,
    Unknown,
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

/// Where an L2C entry's connections go.
enum Target<'a> {
    /// A cluster IP: dialled at the Service port.
    Virtual(Vec<IpAddr>),
    /// Pod addresses: dialled at the pod's port.
    Pods(Vec<IpAddr>, &'a [EndpointPort]),
    /// A literal address from the annotation: dialled at the Service port.
    Literal(IpAddr),
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

/// [`catalog_from`], each entry with the name of the Kubernetes Service
/// (same namespace) that publishes it: what RBAC is asked about.
pub fn catalog_with_origins<S: Borrow<KService>, E: Borrow<EndpointSlice>>(
    services: &[S],
    slices: &[E],
    options: &CatalogOptions,
) -> (Vec<(Service, String)>, Vec<Problem>) {
    let index = Index::new(services, slices, &options.cluster_domain);
    let mut out: Vec<(Service, String)> = Vec::new();
    let mut problems = Vec::new();
    let mut taken: HashMap<(String, String), String> = HashMap::new();
    let all = index
        .services
        .iter()
        .flat_map(|(ns, m)| m.iter().map(move |(name, svc)| (*ns, *name, *svc)));
    for (ns, name, svc) in all {
        let problem = |kind, message: String| Problem {
            namespace: ns.to_owned(),
            service: name.to_owned(),
            uid: svc.metadata.uid.clone(),
            kind,
            message,
        };
        let annotation = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotation::KEY));
        let entries = if annotation::is_present(annotation) {
            let text = annotation.map(String::as_str).unwrap_or_default();
            match annotation::parse(text)
                .map_err(|e| e.to_string())
                .and_then(|bridges| annotated(&index, svc, ns, name, &bridges))
            {
                Ok(entries) => entries,
                Err(message) => {
                    problems.push(problem(ProblemKind::InvalidAnnotation, message));
                    continue;
                }
            }
        } else if options.publish_unannotated {
            unannotated(&index, svc, ns, name)
        } else {
            continue;
        };
        for entry in entries {
            let key = (entry.namespace.clone(), entry.name.clone());
            if let Some(owner) = taken.get(&key) {
                problems.push(problem(
                    ProblemKind::NameConflict,
                    format!(
                        "{}/{} is already published by Service {owner}; fix: give this entry another `name` in the nx annotation",
                        entry.namespace, entry.name
                    ),
                ));
                continue;
            }
            taken.insert(key, format!("{ns}/{name}"));
            out.push((entry, name.to_owned()));
        }
    }
    (out, problems)
}

fn entry(
    name: &str,
    ns: &str,
    aliases: Vec<String>,
    addresses: Vec<IpAddr>,
    ports: Vec<ServicePort>,
    direction: Direction,
) -> Service {
    Service {
        id: ServiceId(0),
        name: name.to_owned(),
        namespace: ns.to_owned(),
        aliases,
        addresses,
        ports,
        direction,
    }
}

/// Every port at the cluster IPs, or at the ready pods when headless.
fn unannotated(index: &Index<'_>, svc: &KService, ns: &str, name: &str) -> Vec<Service> {
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
    let mut out = Vec::new();
    if is_headless(svc) {
        let ready = index.ready(ns, name);
        let Some(first) = ready.first() else {
            return out;
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
        for r in ready {
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
        let ips = cluster_ips(svc);
        if ips.is_empty() {
            // ExternalName, or not yet allocated: nothing to dial.
            return out;
        }
        let ports = sports
            .iter()
            .map(|(sp, proto)| port(sp, *proto, port_u16(sp.port).unwrap_or(1)))
            .collect();
        out.push(entry(name, ns, vec![], ips, ports, Direction::L2C));
    }
    out.retain(|s| s.validate().is_ok());
    out
}

fn valid_label(s: &str) -> bool {
    netmux_common::proto::catalog::valid_dns_name(s) && !s.contains('.')
}

/// The bridges of an annotation, or why the Service cannot be published.
fn annotated(
    index: &Index<'_>,
    svc: &KService,
    ns: &str,
    name: &str,
    bridges: &[Bridge],
) -> Result<Vec<Service>, String> {
    let mut out: Vec<Service> = Vec::new();
    for (i, b) in bridges.iter().enumerate() {
        let entry_name = b.name.clone().unwrap_or_else(|| name.to_owned());
        let fail = |key: &str, message: String| {
            format!("annotation `nx` entry {i} ({entry_name}): `{key}`: {message}")
        };
        if !valid_label(&entry_name) {
            return Err(fail(
                "name",
                format!("{entry_name:?} is not one DNS label; fix: lower-case letters, digits and '-', at most 63"),
            ));
        }
        if out.iter().any(|o| o.name == entry_name) {
            return Err(fail(
                "name",
                "appears twice in the annotation; fix: give each entry its own name".into(),
            ));
        }
        match bridge(index, svc, ns, name, b, &entry_name) {
            Ok(Some(s)) => {
                s.validate().map_err(|e| fail("name", e.problem))?;
                out.push(s);
            }
            // A pod that is not ready now: published again when it is.
            Ok(None) => {}
            Err((key, message)) => return Err(fail(key, message)),
        }
    }
    Ok(out)
}

type BridgeError = (&'static str, String);

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
fn bridge(
    index: &Index<'_>,
    svc: &KService,
    ns: &str,
    name: &str,
    b: &Bridge,
    entry_name: &str,
) -> Result<Option<Service>, BridgeError> {
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
                return Err((
                    "localAddr",
                    format!("{:?}: a C2L connection ends on the workstation's loopback; fix: remove localAddr or set 127.0.0.1", b.local_addr.as_deref().unwrap_or_default()),
                ));
            }
            if let Some(a) = b.container_addr.as_deref().filter(|a| !is_own(a)) {
                return Err((
                    "containerAddr",
                    format!("{a:?}: a C2L service is served by the netmux server behind this Service; fix: remove containerAddr"),
                ));
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
                            return Err((
                                "containerPort",
                                format!("the Service's targetPort is the named port {named:?}, which the netmux server cannot listen on; fix: set containerPort"),
                            ))
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
            Ok(Some(entry(
                entry_name,
                ns,
                vec![],
                vec![],
                out,
                Direction::C2L,
            )))
        }
        Direction::L2C => {
            let mut aliases = vec![];
            if let Some(a) = b.local_addr.as_deref() {
                let a = a.trim_end_matches('.');
                if a.parse::<IpAddr>().is_ok() {
                    return Err((
                        "localAddr",
                        format!("{a:?} is an address; the daemon chooses local addresses itself; fix: use a DNS name or remove localAddr"),
                    ));
                }
                if !netmux_common::proto::catalog::valid_dns_name(a) {
                    return Err((
                        "localAddr",
                        format!("{a:?} is not a valid DNS name; fix: lower-case labels of letters, digits and '-', separated by '.'"),
                    ));
                }
                if a != entry_name {
                    aliases.push(a.to_owned());
                }
            }
            let own_target = || {
                if is_headless(svc) {
                    let ready = index.ready(ns, name);
                    let ports = ready.first().map(|r| r.ports).unwrap_or_default();
                    Target::Pods(ready.iter().map(|r| r.ip).collect(), ports)
                } else {
                    Target::Virtual(own_ips.clone())
                }
            };
            let target = match b.container_addr.as_deref() {
                None => own_target(),
                Some(a) if is_own(a) => own_target(),
                Some(a) => match a.parse::<IpAddr>() {
                    Ok(ip) => Target::Literal(ip),
                    Err(_) => match index.resolve(ns, a) {
                        Resolved::Service(other) if is_headless(other) => {
                            let (ons, oname) = (
                                other.metadata.namespace.as_deref().unwrap_or_default(),
                                other.metadata.name.as_deref().unwrap_or_default(),
                            );
                            let ready = index.ready(ons, oname);
                            let ports = ready.first().map(|r| r.ports).unwrap_or_default();
                            Target::Pods(ready.iter().map(|r| r.ip).collect(), ports)
                        }
                        Resolved::Service(other) => Target::Virtual(cluster_ips(other)),
                        Resolved::Pod { ip, ports, .. } => Target::Pods(vec![ip], ports),
                        Resolved::NotReady => return Ok(None),
                        Resolved::Unknown => {
                            return Err((
                                "containerAddr",
                                format!("{a:?} is neither an address nor a Service or pod name in the watched namespaces; fix: use an IP, a Service name, or <pod-hostname>.<service>.<namespace>.svc.{}", index.domain),
                            ))
                        }
                    },
                },
            };
            let (addresses, pod_ports) = match target {
                Target::Virtual(ips) => (ips, None),
                Target::Pods(ips, ports) => (ips, Some(ports)),
                Target::Literal(ip) => (vec![ip], None),
            };
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
            Ok(Some(entry(
                entry_name,
                ns,
                aliases,
                addresses,
                ports,
                Direction::L2C,
            )))
        }
    }
}

#[cfg(test)]
mod tests;
