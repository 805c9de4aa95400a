//! Containers in, catalog out: no IO, no clock.
//!
//! [`catalog_from`] is the whole policy of the Docker runtime; the driver
//! only keeps its input (the inspected running containers) current.
//!
//! What gets published, per running container that is selected (label
//! `netmux.publish=true`, a `netmux.nx` label, or attached to one of the
//! configured `networks`; `netmux.publish=false` opts out) and, when it
//! has a health check, healthy:
//! - without `netmux.nx`: one L2C entry named after the container, in the
//!   configured namespace, at its addresses on the networks the server
//!   shares with it, with its exposed ports (or those `netmux.ports`
//!   lists); its network aliases become aliases under the cluster domain
//!   (`web.docker.internal`: daemons serve no alias outside it); a compose
//!   container also makes an entry named after its service in a namespace
//!   named after its project, so `web.shop` reaches every replica;
//! - with `netmux.nx`: exactly its bridges, in the format of the Kubernetes
//!   `nx` annotation ([`annotation`]), C2L included.
//!
//! An invalid label skips that container alone and yields a [`Problem`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use netmux_common::proto::catalog::{
    valid_dns_name, Direction, Protocol, Service, ServiceId, ServicePort,
};

use crate::policy::{Refusal, TargetPolicy};
use crate::runtime::entry;
use crate::runtime::kubernetes::annotation::{self, Bridge};

/// Label that opts a container in (`true`) or out (`false`).
pub(crate) const PUBLISH_LABEL: &str = "netmux.publish";
/// Label narrowing the published ports: `8080,9000/tcp,53/udp`.
pub(crate) const PORTS_LABEL: &str = "netmux.ports";
/// Label carrying `nx` bridges, as the Kubernetes annotation does.
pub(crate) const NX_LABEL: &str = "netmux.nx";
/// Compose's labels naming a container's service and project.
const COMPOSE_SERVICE: &str = "com.docker.compose.service";
const COMPOSE_PROJECT: &str = "com.docker.compose.project";

/// A container's health, as far as publishing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// No health check: published while running.
    None,
    /// Health check not passed yet.
    Starting,
    /// Passing.
    Healthy,
    /// Failing.
    Unhealthy,
}

/// One network a container is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attachment {
    /// The network's name.
    pub(crate) network: String,
    /// The container's addresses on it.
    pub(crate) addresses: Vec<IpAddr>,
    /// Its aliases on it (compose adds the service name).
    pub(crate) aliases: Vec<String>,
}

/// What the catalog needs of a running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Container {
    /// Full id.
    pub(crate) id: String,
    /// Name, without Docker's leading `/`.
    pub(crate) name: String,
    /// Its labels.
    pub(crate) labels: BTreeMap<String, String>,
    /// Health check state.
    pub(crate) health: Health,
    /// Exposed ports (`EXPOSE`, `--expose`, compose `expose:`).
    pub(crate) exposed: Vec<(u16, Protocol)>,
    /// Networks it is attached to.
    pub(crate) networks: Vec<Attachment>,
}

/// Which networks the server can reach containers on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Every network: the server runs beside dockerd, which puts its own
    /// address on every bridge.
    All,
    /// The networks of the server's own container.
    Networks(BTreeSet<String>),
}

impl Reach {
    fn reaches(&self, network: &str) -> bool {
        match self {
            Reach::All => true,
            Reach::Networks(n) => n.contains(network),
        }
    }
}

/// Policy knobs of [`catalog_from`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CatalogOptions {
    /// Namespace of the published entries.
    pub(crate) namespace: String,
    /// Domain under which aliases are also published (`docker.internal`).
    pub(crate) cluster_domain: String,
    /// Containers on these networks are published without a label.
    pub(crate) networks: Vec<String>,
    /// Networks shared with the server.
    pub(crate) reach: Reach,
    /// Which container addresses may be published ([`crate::policy`]):
    /// Docker assigned them all, so by default every one but the
    /// never-list (loopback, link-local, the server's own...).
    pub(crate) policy: TargetPolicy,
}

/// Something wrong with one container, told in the server's log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Problem {
    /// The container's name.
    pub(crate) container: String,
    /// What is wrong and the fix.
    pub(crate) message: String,
    /// Set when an address was refused by the target policy (a metric
    /// label).
    pub(crate) refused: Option<Refusal>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "container {}: {}", self.container, self.message)
    }
}

/// A DNS label for a Docker name: lower case, `_` as `-`.
pub(crate) fn dns_label(name: &str) -> Option<String> {
    let l = name.to_ascii_lowercase().replace('_', "-");
    (valid_dns_name(&l) && !l.contains('.')).then_some(l)
}

/// Parses `netmux.ports`: `8080`, `8080/tcp`, `53/udp`, comma separated.
pub(crate) fn parse_ports(value: &str) -> Result<Vec<(u16, Protocol)>, String> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (num, proto) = item.split_once('/').unwrap_or((item, "tcp"));
        let protocol = match proto.trim() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => {
                return Err(format!(
                    "label `{PORTS_LABEL}`: {item:?}: protocol {other:?} is not tcp or udp; fix: write e.g. 8080,53/udp"
                ))
            }
        };
        let port = num
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                format!("label `{PORTS_LABEL}`: {item:?} is not a port; fix: write ports from 1 to 65535, e.g. 8080,53/udp")
            })?;
        if !out.contains(&(port, protocol)) {
            out.push((port, protocol));
        }
    }
    if out.is_empty() {
        return Err(format!(
            "label `{PORTS_LABEL}` lists no port; fix: write e.g. 8080,53/udp or remove it"
        ));
    }
    Ok(out)
}

/// Parses an exposed-port key (`8080/tcp`); other protocols are skipped.
pub(crate) fn parse_exposed(key: &str) -> Option<(u16, Protocol)> {
    let (num, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return None,
    };
    Some((num.parse::<u16>().ok().filter(|p| *p != 0)?, protocol))
}

/// A container ready to be published: its reachable addresses, its names.
struct Candidate<'a> {
    c: &'a Container,
    label: Option<String>,
    addresses: Vec<IpAddr>,
    /// Addresses the policy refuses, with why.
    refused: Vec<(IpAddr, String, Refusal)>,
    /// Names other containers' `containerAddr` may use for it.
    names: Vec<String>,
}

fn compose_name(c: &Container) -> Option<String> {
    let svc = dns_label(c.labels.get(COMPOSE_SERVICE)?)?;
    let project = dns_label(c.labels.get(COMPOSE_PROJECT)?)?;
    Some(format!("{svc}.{project}"))
}

fn candidate<'a>(c: &'a Container, reach: &Reach, policy: &TargetPolicy) -> Candidate<'a> {
    let short_id = c.id.get(..12).unwrap_or(&c.id);
    let mut addresses = Vec::new();
    let mut refused = Vec::new();
    let mut names = Vec::new();
    let label = dns_label(&c.name);
    names.extend(label.clone());
    let mut nets: Vec<&Attachment> = c
        .networks
        .iter()
        .filter(|a| reach.reaches(&a.network))
        .collect();
    nets.sort_by(|a, b| a.network.cmp(&b.network));
    for a in nets {
        for ip in &a.addresses {
            // Docker assigned every container address.
            match policy.check(*ip, true) {
                Ok(()) if !addresses.contains(ip) => addresses.push(*ip),
                Ok(()) => {}
                Err(r) => refused.push((*ip, a.network.clone(), r)),
            }
        }
        for alias in &a.aliases {
            if alias == short_id || alias == &c.id {
                continue;
            }
            if let Some(l) = dns_label(alias).or_else(|| {
                let l = alias.to_ascii_lowercase();
                valid_dns_name(&l).then_some(l)
            }) {
                if !names.contains(&l) {
                    names.push(l);
                }
            }
        }
    }
    if let Some(n) = compose_name(c) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    Candidate {
        c,
        label,
        addresses,
        refused,
        names,
    }
}

/// Whether the container is to be published, or why its labels are wrong.
fn selected(c: &Container, options: &CatalogOptions) -> Result<bool, String> {
    let on_network = c
        .networks
        .iter()
        .any(|a| options.networks.iter().any(|n| n == &a.network));
    match c.labels.get(PUBLISH_LABEL).map(|v| v.trim()) {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(format!(
            "label `{PUBLISH_LABEL}`: {other:?} is not true or false; fix: write true or false"
        )),
        None => Ok(on_network || c.labels.contains_key(NX_LABEL)),
    }
}

/// Builds the catalog from the running containers.
///
/// Deterministic: containers are processed by name, so when two publish the
/// same name the first keeps it and the second gets a [`Problem`].
pub(crate) fn catalog_from(
    containers: &[Container],
    options: &CatalogOptions,
) -> (Vec<Service>, Vec<Problem>) {
    let mut sorted: Vec<&Container> = containers.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    let candidates: Vec<Candidate<'_>> = sorted
        .iter()
        .map(|c| candidate(c, &options.reach, &options.policy))
        .collect();
    let mut out: Vec<Service> = Vec::new();
    let mut problems = Vec::new();
    // Every name the workstation would use → the container publishing it.
    let mut taken: HashMap<String, String> = HashMap::new();
    let mut compose = Compose::new();
    for cand in &candidates {
        let c = cand.c;
        let problem = |message: String| Problem {
            container: c.name.clone(),
            message,
            refused: None,
        };
        match selected(c, options) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(m) => {
                problems.push(problem(m));
                continue;
            }
        }
        if matches!(c.health, Health::Starting | Health::Unhealthy) {
            continue;
        }
        for (ip, network, why) in &cand.refused {
            problems.push(Problem {
                refused: Some(*why),
                ..problem(format!(
                    "address {ip} on network {network} is not published: {why}; fix: allow it with runtime.allow_unsafe_targets if it is really meant"
                ))
            });
        }
        let entries = match entries(cand, &candidates, options) {
            Ok(e) => e,
            Err(m) => {
                problems.push(problem(m));
                continue;
            }
        };
        for mut entry in entries {
            let key = format!("{}.{}", entry.name, entry.namespace);
            if let Some(owner) = taken.get(&key) {
                problems.push(problem(format!(
                    "{}/{} is already published by container {owner}; fix: rename one of them or give this one another `name` in `{NX_LABEL}`",
                    entry.namespace, entry.name
                )));
                continue;
            }
            entry.aliases.retain(|a| match taken.get(a) {
                Some(owner) if owner != &c.name => {
                    problems.push(problem(format!(
                        "alias {a} is already published by container {owner}; published without it"
                    )));
                    false
                }
                _ => true,
            });
            taken.insert(key, c.name.clone());
            for a in &entry.aliases {
                taken.insert(a.clone(), c.name.clone());
            }
            if entry.direction == Direction::L2C && !c.labels.contains_key(NX_LABEL) {
                add_to_compose(&mut compose, c, &entry);
            }
            out.push(entry);
        }
    }
    for ((svc, project), (entry, first)) in compose {
        let key = format!("{svc}.{project}");
        match taken.get(&key) {
            Some(owner) => problems.push(Problem {
                container: first,
                refused: None,
                message: format!(
                    "compose name {key} is already published by container {owner}; fix: rename one of them"
                ),
            }),
            None => {
                taken.insert(key, first);
                out.push(entry);
            }
        }
    }
    (out, problems)
}

/// Compose services by (service, project): one entry named `service` in
/// namespace `project` (so daemons answer to `service.project`), at the
/// addresses of every published replica.
type Compose = BTreeMap<(String, String), (Service, String)>;

fn add_to_compose(compose: &mut Compose, c: &Container, entry: &Service) {
    let (Some(svc), Some(project)) = (
        c.labels.get(COMPOSE_SERVICE).and_then(|s| dns_label(s)),
        c.labels.get(COMPOSE_PROJECT).and_then(|p| dns_label(p)),
    ) else {
        return;
    };
    let (group, _) = compose
        .entry((svc.clone(), project.clone()))
        .or_insert_with(|| {
            (
                Service {
                    id: ServiceId(0),
                    name: svc,
                    namespace: project,
                    aliases: vec![],
                    addresses: vec![],
                    ports: vec![],
                    direction: Direction::L2C,
                },
                c.name.clone(),
            )
        });
    for ip in &entry.addresses {
        if !group.addresses.contains(ip) {
            group.addresses.push(*ip);
        }
    }
    for p in &entry.ports {
        if !group
            .ports
            .iter()
            .any(|q| (q.port, q.protocol) == (p.port, p.protocol))
        {
            group.ports.push(p.clone());
        }
    }
}

/// The container's ports: `netmux.ports`, else the exposed ones.
fn ports(c: &Container) -> Result<Vec<(u16, Protocol)>, String> {
    match c.labels.get(PORTS_LABEL) {
        Some(v) => parse_ports(v),
        None => Ok(c.exposed.clone()),
    }
}

/// The container's catalog entries, or why its labels are wrong.
fn entries(
    cand: &Candidate<'_>,
    all: &[Candidate<'_>],
    options: &CatalogOptions,
) -> Result<Vec<Service>, String> {
    let c = cand.c;
    let ports = ports(c)?;
    if let Some(nx) = c
        .labels
        .get(NX_LABEL)
        .filter(|v| annotation::is_present(Some(v)))
    {
        let bridges = annotation::parse(nx).map_err(|e| format!("label `{NX_LABEL}`: {e}"))?;
        return bridges
            .iter()
            .enumerate()
            .map(|(i, b)| bridge(cand, all, options, &ports, i, b))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|v| {
                let mut seen = BTreeSet::new();
                for s in &v {
                    if !seen.insert(s.name.clone()) {
                        return Err(format!("label `{NX_LABEL}`: name {} appears twice; fix: give each entry its own name", s.name));
                    }
                }
                Ok(v)
            });
    }
    let Some(name) = cand.label.clone() else {
        return Err(format!(
            "its name is not a DNS label even in lower case with '_' as '-'; fix: rename the container, or publish it under another name with `{NX_LABEL}`"
        ));
    };
    if ports.is_empty() {
        return Err(format!(
            "exposes no port; fix: EXPOSE one in the image, run with --expose, or list them in label `{PORTS_LABEL}`"
        ));
    }
    if cand.addresses.is_empty() {
        return Err(unreachable_message(options));
    }
    // Daemons serve aliases under the cluster domain only; the compose
    // name is an entry of its own (see `compose_entries`).
    let compose = compose_name(c);
    let mut aliases = Vec::new();
    for n in cand
        .names
        .iter()
        .filter(|n| **n != name && Some(*n) != compose.as_ref())
    {
        let qualified = format!("{n}.{}", options.cluster_domain);
        if valid_dns_name(&qualified) && !aliases.contains(&qualified) {
            aliases.push(qualified);
        }
    }
    let ports = ports
        .iter()
        .map(|(p, proto)| ServicePort {
            name: None,
            port: *p,
            target_port: *p,
            protocol: *proto,
        })
        .collect();
    let s = entry(
        &name,
        &options.namespace,
        aliases,
        cand.addresses.clone(),
        ports,
        Direction::L2C,
    );
    s.validate().map_err(|e| e.problem)?;
    Ok(vec![s])
}

fn unreachable_message(options: &CatalogOptions) -> String {
    match &options.reach {
        Reach::All => "has no address (network mode host or none?); fix: attach it to a bridge network".into(),
        Reach::Networks(n) => format!(
            "is on no network the server shares (the server is on {}); fix: connect it to one of them, or connect the server's container to its network",
            n.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}

fn family_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// The (local, container) port pairs of a bridge.
fn bridge_ports(
    b: &Bridge,
    ports: &[(u16, Protocol)],
) -> Result<Vec<(u16, u16)>, (&'static str, String)> {
    let family = b.family;
    let own: Vec<u16> = ports
        .iter()
        .filter(|(_, p)| *p == family)
        .map(|(n, _)| *n)
        .collect();
    let fam = family_name(family);
    let pick = |key: &'static str, hint: u16| -> Result<u16, (&'static str, String)> {
        match own.as_slice() {
            [only] => Ok(*only),
            _ if own.contains(&hint) => Ok(hint),
            [] => Err((key, format!("the container exposes no {fam} port to default to; fix: set {key}"))),
            _ => Err((key, format!("the container has several {fam} ports and none is {hint}; fix: set both localPort and containerPort"))),
        }
    };
    match (b.local_port, b.container_port) {
        (None, None) if own.is_empty() => Err((
            "family",
            format!("the container exposes no {fam} port to default to; fix: set localPort and containerPort, or list ports in `{PORTS_LABEL}`"),
        )),
        (None, None) => Ok(own.iter().map(|p| (*p, *p)).collect()),
        (Some(l), None) => Ok(vec![(l, pick("containerPort", l)?)]),
        (None, Some(c)) => Ok(vec![(c, c)]),
        (Some(l), Some(c)) => Ok(vec![(l, c)]),
    }
}

/// One bridge as a catalog entry.
fn bridge(
    cand: &Candidate<'_>,
    all: &[Candidate<'_>],
    options: &CatalogOptions,
    ports: &[(u16, Protocol)],
    index: usize,
    b: &Bridge,
) -> Result<Service, String> {
    let entry_name = b
        .name
        .clone()
        .or_else(|| cand.label.clone())
        .unwrap_or_else(|| cand.c.name.clone());
    let fail = |key: &str, message: String| {
        format!("label `{NX_LABEL}` entry {index} ({entry_name}): `{key}`: {message}")
    };
    if dns_label(&entry_name).as_deref() != Some(entry_name.as_str()) {
        return Err(fail(
            "name",
            format!("{entry_name:?} is not one DNS label; fix: lower-case letters, digits and '-', at most 63"),
        ));
    }
    let pairs = bridge_ports(b, ports).map_err(|(k, m)| fail(k, m))?;
    let is_own = |a: &str| {
        let a = a.trim_end_matches('.').to_ascii_lowercase();
        cand.names
            .iter()
            .any(|n| *n == a || format!("{n}.{}", options.cluster_domain) == a)
            || a.parse::<IpAddr>()
                .is_ok_and(|ip| cand.addresses.contains(&ip))
    };
    let s = match b.direction {
        Direction::C2L => {
            let local_ok = match b.local_addr.as_deref() {
                None | Some("localhost") => true,
                Some(a) if a == entry_name => true,
                Some(a) => a.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
            };
            if !local_ok {
                return Err(fail(
                    "localAddr",
                    format!("{:?}: a C2L connection ends on the workstation's loopback; fix: remove localAddr or set 127.0.0.1", b.local_addr.as_deref().unwrap_or_default()),
                ));
            }
            if let Some(a) = b.container_addr.as_deref().filter(|a| !is_own(a)) {
                return Err(fail(
                    "containerAddr",
                    format!("{a:?}: a C2L service is served by the netmux server itself (on reverse_bind, at containerPort); fix: remove containerAddr"),
                ));
            }
            // The server listens on containerPort; the workstation's
            // service is at localPort.
            let ports = pairs
                .iter()
                .map(|(local, listen)| ServicePort {
                    name: None,
                    port: *listen,
                    target_port: *local,
                    protocol: b.family,
                })
                .collect();
            entry(
                &entry_name,
                &options.namespace,
                vec![],
                vec![],
                ports,
                Direction::C2L,
            )
        }
        Direction::L2C => {
            let mut aliases = Vec::new();
            if let Some(a) = b.local_addr.as_deref() {
                let a = a.trim_end_matches('.');
                if a.parse::<IpAddr>().is_ok() {
                    return Err(fail(
                        "localAddr",
                        format!("{a:?} is an address; the daemon chooses local addresses itself; fix: use a DNS name or remove localAddr"),
                    ));
                }
                if !valid_dns_name(a) {
                    return Err(fail(
                        "localAddr",
                        format!("{a:?} is not a valid DNS name; fix: lower-case labels of letters, digits and '-', separated by '.'"),
                    ));
                }
                if a != entry_name {
                    aliases.push(a.to_owned());
                }
            }
            let addresses = match b.container_addr.as_deref() {
                None => cand.addresses.clone(),
                Some(a) if is_own(a) => cand.addresses.clone(),
                Some(a) => target(a, all, options).map_err(|m| fail("containerAddr", m))?,
            };
            if addresses.is_empty() {
                return Err(fail("containerAddr", unreachable_message(options)));
            }
            let ports = pairs
                .iter()
                .map(|(local, remote)| ServicePort {
                    name: None,
                    port: *local,
                    target_port: *remote,
                    protocol: b.family,
                })
                .collect();
            entry(
                &entry_name,
                &options.namespace,
                aliases,
                addresses,
                ports,
                Direction::L2C,
            )
        }
    };
    s.validate().map_err(|e| fail("name", e.problem))?;
    Ok(s)
}

/// The addresses `containerAddr` names: another container (name, alias,
/// `service.project`, or one of its addresses). Never an address no
/// container has: the server dials container addresses only.
fn target(a: &str, all: &[Candidate<'_>], options: &CatalogOptions) -> Result<Vec<IpAddr>, String> {
    let wanted = a.trim_end_matches('.').to_ascii_lowercase();
    let suffix = format!(".{}", options.cluster_domain);
    let short = wanted.strip_suffix(&suffix).unwrap_or(&wanted).to_owned();
    if let Ok(ip) = wanted.parse::<IpAddr>() {
        return match all.iter().find(|c| c.addresses.contains(&ip)) {
            Some(_) => Ok(vec![ip]),
            None => Err(format!("{a:?} is not the address of a running container on a network the server shares; fix: name a container instead (the server dials container addresses only)")),
        };
    }
    let found: Vec<&Candidate<'_>> = all
        .iter()
        .filter(|c| c.names.contains(&short))
        .filter(|c| !matches!(c.c.health, Health::Starting | Health::Unhealthy))
        .collect();
    if found.is_empty() {
        return Err(format!("{a:?} names no running, healthy container on a network the server shares; fix: use a container name, network alias or service.project"));
    }
    let mut out = Vec::new();
    for c in found {
        for ip in &c.addresses {
            if !out.contains(ip) {
                out.push(*ip);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "catalog_tests.rs"]
mod tests;
