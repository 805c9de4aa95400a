//! The sans-IO core of the DNS server: a [`Zone`] built from the daemon's
//! [`NameRecord`]s, and [`answer`], which turns one question into a response
//! without sockets, clocks or locks.
//!
//! Names served, for every endpoint with cluster domain `D` (see
//! `docs/dns.md`):
//!
//! * `SVC.NS.svc.D` — A/AAAA to the record's addresses; of the endpoints
//!   publishing a name, the one connected first
//!   ([`NameRecord::connected`]) owns this plain form;
//! * `SVC.NS.svc.EP.D` — the same, qualified by endpoint `EP`, always
//!   (except for endpoints called `svc` or `pod`, which would be ambiguous);
//! * catalog aliases inside `D` (per-pod names of headless services such as
//!   `kafka-0.kafka.NS.svc.D`) and their qualified forms;
//! * `_PORT._tcp.SVC.NS.svc.D` — SRV for every named TCP port.
//!
//! Inside `D` an unknown name is NXDOMAIN and a known name without records of
//! the asked type is NODATA, both with the zone's SOA for negative caching.
//! Anything outside every configured domain is REFUSED: the server never
//! recurses and never becomes an open resolver.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use netmux_common::proto::catalog::Protocol;

use crate::dns::NameRecord;

/// TTL of positive answers, in seconds: short, because services come and go
/// with `netmux start/stop` and resolvers in front of us cache.
pub(crate) const TTL: u32 = 5;
/// TTL of negative answers (the SOA's minimum), in seconds.
pub(crate) const NEGATIVE_TTL: u32 = 5;

/// What the server needs to know about a configured endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsEndpoint {
    /// Endpoint name (one DNS label).
    pub name: String,
    /// Its cluster domain, without trailing dot (`cluster.local`).
    pub domain: String,
    /// Namespace short names resolve in (`svc` means `svc.NAMESPACE`).
    pub default_namespace: String,
}

impl DnsEndpoint {
    /// The search list a pod in the default namespace would have:
    /// `NS.svc.D svc.D D`.
    pub(crate) fn search(&self) -> [String; 3] {
        [
            format!("{}.svc.{}", self.default_namespace, self.domain),
            format!("svc.{}", self.domain),
            self.domain.clone(),
        ]
    }

    /// Whether this endpoint has an endpoint-qualified form: `svc` and `pod`
    /// would collide with Kubernetes' own labels.
    fn qualifiable(&self) -> bool {
        !matches!(self.name.as_str(), "svc" | "pod")
    }
}

/// The records of one owner name.
#[derive(Debug, Clone, Default)]
struct Node {
    /// Endpoint that owns the name; `None` for empty non-terminals (names
    /// that exist only because something below them does).
    owner: Option<String>,
    addrs: Vec<IpAddr>,
    srv: Vec<(u16, Name)>,
}

/// One authoritative domain.
#[derive(Debug, Clone)]
struct Apex {
    name: LowerName,
    soa: Record,
}

/// Everything the server answers, rebuilt whenever the names change.
#[derive(Debug, Clone)]
pub struct Zone {
    apexes: Vec<Apex>,
    nodes: HashMap<LowerName, Node>,
}

/// One reply, before the transport encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// RCODE.
    pub(crate) code: ResponseCode,
    /// AA bit: set for everything inside our domains.
    pub(crate) authoritative: bool,
    /// Answer section.
    pub(crate) answers: Vec<Record>,
    /// Authority section (the SOA of negative answers).
    pub(crate) authority: Vec<Record>,
    /// Additional section (addresses of SRV targets).
    pub(crate) additionals: Vec<Record>,
}

impl Answer {
    fn code(code: ResponseCode, authoritative: bool) -> Self {
        Answer {
            code,
            authoritative,
            answers: Vec::new(),
            authority: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

/// `s` as an absolute name, if it is one.
fn fqdn(s: &str) -> Option<Name> {
    let s = s.trim_end_matches('.');
    if s.is_empty() {
        return None;
    }
    Name::from_ascii(format!("{s}.")).ok()
}

/// `name` relative to `domain` (`a.b` for `a.b.D`), case-insensitively.
fn relative<'a>(name: &'a str, domain: &str) -> Option<&'a str> {
    let name = name.trim_end_matches('.');
    let cut = name.len().checked_sub(domain.len() + 1)?;
    let (head, tail) = (name.get(..cut)?, name.get(cut..)?);
    (tail.starts_with('.') && tail[1..].eq_ignore_ascii_case(domain) && !head.is_empty())
        .then_some(head)
}

impl Zone {
    /// A zone answering for the domains of `endpoints` with `records`.
    ///
    /// When two endpoints publish the same plain name, the one connected
    /// first (smaller [`NameRecord::connected`]) wins it; the other keeps its
    /// endpoint-qualified form. Ties (records built by hand) go by endpoint
    /// name. `serial` goes into the SOA.
    pub(crate) fn build(endpoints: &[DnsEndpoint], records: &[NameRecord], serial: u32) -> Zone {
        let mut zone = Zone {
            apexes: Vec::new(),
            nodes: HashMap::new(),
        };
        for ep in endpoints {
            let Some(apex) = fqdn(&ep.domain) else {
                continue;
            };
            let lower = LowerName::new(&apex);
            if zone.apexes.iter().any(|a| a.name == lower) {
                continue;
            }
            let soa = soa(&apex, serial);
            zone.apexes.push(Apex { name: lower, soa });
        }
        // Longest first, so nested domains find their own apex.
        zone.apexes
            .sort_by_key(|a| std::cmp::Reverse(a.name.num_labels()));

        let sorted = NameRecord::by_precedence(records);
        for r in sorted {
            let Some(ep) = endpoints.iter().find(|e| e.name == r.endpoint) else {
                continue;
            };
            let domain = r.domain.trim_end_matches('.');
            let svc = &r.service;
            let base = format!("{}.{}.svc", svc.name, svc.namespace);
            let mut heads = vec![base.clone()];
            for alias in &svc.aliases {
                if let Some(h) = relative(alias, domain) {
                    let h = h.to_ascii_lowercase();
                    if !heads.contains(&h) {
                        heads.push(h);
                    }
                }
            }
            let mut suffixes = vec![domain.to_owned()];
            if ep.qualifiable() {
                suffixes.push(format!("{}.{domain}", ep.name));
            }
            for suffix in &suffixes {
                let Some(target) = fqdn(&format!("{base}.{suffix}")) else {
                    continue;
                };
                for head in &heads {
                    if let Some(name) = fqdn(&format!("{head}.{suffix}")) {
                        zone.insert(&name, &r.endpoint, |n| n.addrs.clone_from(&r.addrs));
                    }
                }
                for p in svc.ports.iter().filter(|p| p.protocol == Protocol::Tcp) {
                    let Some(pname) = &p.name else { continue };
                    let Some(name) = fqdn(&format!("_{pname}._tcp.{base}.{suffix}")) else {
                        continue;
                    };
                    let t = target.clone();
                    zone.insert(&name, &r.endpoint, |n| n.srv.push((p.port, t)));
                }
            }
        }
        zone
    }

    /// Adds records to `name` unless another endpoint owns it, and marks its
    /// ancestors up to the apex as existing.
    fn insert(&mut self, name: &Name, endpoint: &str, fill: impl FnOnce(&mut Node)) {
        let key = LowerName::new(name);
        let Some(apex) = self.apex_of(&key).map(|a| a.name.clone()) else {
            return;
        };
        let node = self.nodes.entry(key).or_default();
        match &node.owner {
            Some(o) if o != endpoint => return,
            Some(_) => {}
            None => node.owner = Some(endpoint.to_owned()),
        }
        fill(node);
        let mut up = name.base_name();
        while up.num_labels() > apex.num_labels() {
            self.nodes.entry(LowerName::new(&up)).or_default();
            up = up.base_name();
        }
    }

    fn apex_of(&self, name: &LowerName) -> Option<&Apex> {
        self.apexes.iter().find(|a| a.name.zone_of(name))
    }

    /// Whether the zone has no records.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.values().all(|n| n.owner.is_none())
    }

    /// The domains this zone is authoritative for.
    #[cfg(test)]
    pub(crate) fn domains(&self) -> Vec<String> {
        self.apexes
            .iter()
            .map(|a| a.name.to_string().trim_end_matches('.').to_owned())
            .collect()
    }
}

/// Rebuilds the [`Zone`] when the names change, and knows which endpoints
/// are active (have records) in connection order.
///
/// The order is the daemon's ([`NameRecord::connected`], assigned by
/// `netmux connect` and kept while the endpoint stays connected), not the
/// order in which services were started: an endpoint connected first wins
/// the plain names even if another one started its services earlier, and
/// when it disconnects the next one takes them over.
#[derive(Debug)]
pub struct ZoneFollower {
    endpoints: Vec<DnsEndpoint>,
    order: Vec<String>,
    seen: Option<std::sync::Arc<Vec<NameRecord>>>,
    zone: std::sync::Arc<Zone>,
    serial: u32,
}

impl ZoneFollower {
    /// A follower for the configured `endpoints`, with no records yet.
    pub(crate) fn new(endpoints: Vec<DnsEndpoint>) -> Self {
        let zone = std::sync::Arc::new(Zone::build(&endpoints, &[], 1));
        ZoneFollower {
            endpoints,
            order: Vec::new(),
            seen: None,
            zone,
            serial: 1,
        }
    }

    /// Replaces the configured endpoints (after a configuration reload);
    /// the next [`Self::update`] rebuilds the zone if they changed.
    pub(crate) fn set_endpoints(&mut self, endpoints: Vec<DnsEndpoint>) {
        if endpoints != self.endpoints {
            self.endpoints = endpoints;
            self.seen = None;
        }
    }

    /// The zone for `records` (rebuilt only if they or the endpoints changed
    /// since the last call).
    pub(crate) fn update(
        &mut self,
        records: &std::sync::Arc<Vec<NameRecord>>,
    ) -> std::sync::Arc<Zone> {
        if self
            .seen
            .as_ref()
            .is_some_and(|s| std::sync::Arc::ptr_eq(s, records) || **s == **records)
        {
            return self.zone.clone();
        }
        let mut active: Vec<(u64, &str)> = Vec::new();
        for r in records.iter() {
            match active.iter_mut().find(|(_, ep)| *ep == r.endpoint) {
                Some(a) => a.0 = a.0.min(r.connected),
                None => active.push((r.connected, &r.endpoint)),
            }
        }
        active.sort();
        self.order = active.into_iter().map(|(_, ep)| ep.to_owned()).collect();
        self.serial = self.serial.wrapping_add(1);
        self.zone = std::sync::Arc::new(Zone::build(&self.endpoints, records, self.serial));
        self.seen = Some(records.clone());
        self.zone.clone()
    }

    /// Endpoints with records, in connection order.
    pub(crate) fn active(&self) -> Vec<&DnsEndpoint> {
        self.order
            .iter()
            .filter_map(|o| self.endpoints.iter().find(|e| &e.name == o))
            .collect()
    }

    /// Cluster domains of the active endpoints, without duplicates.
    pub(crate) fn active_domains(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in self.active() {
            if !out.contains(&e.domain) {
                out.push(e.domain.clone());
            }
        }
        out
    }

    /// Search list of the active endpoints (a pod's, per default
    /// namespace), without duplicates.
    pub(crate) fn search(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in self.active() {
            for s in e.search() {
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        out
    }
}

fn soa(apex: &Name, serial: u32) -> Record {
    let mname = Name::from_ascii("ns.dns")
        .ok()
        .and_then(|n| n.append_domain(apex).ok())
        .unwrap_or_else(|| apex.clone());
    let rname = Name::from_ascii("hostmaster")
        .ok()
        .and_then(|n| n.append_domain(apex).ok())
        .unwrap_or_else(|| apex.clone());
    let soa = SOA::new(mname, rname, serial, 60, 10, 3600, NEGATIVE_TTL);
    Record::from_rdata(apex.clone(), NEGATIVE_TTL, RData::SOA(soa))
}

fn addr_record(owner: &Name, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner.clone(), TTL, data)
}

fn wants(qtype: RecordType, ip: &IpAddr) -> bool {
    match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

/// Answers one question from `zone`. The owner name of answers is the
/// question's name exactly as asked (resolvers may randomise its case).
pub fn answer(query: &Query, zone: &Zone) -> Answer {
    if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
        return Answer::code(ResponseCode::Refused, false);
    }
    let qname = query.name();
    let key = LowerName::new(qname);
    let Some(apex) = zone.apex_of(&key) else {
        return Answer::code(ResponseCode::Refused, false);
    };
    let qtype = query.query_type();
    let mut out = Answer::code(ResponseCode::NoError, true);
    let is_apex = key == apex.name;
    let node = zone.nodes.get(&key);
    if node.is_none() && !is_apex {
        out.code = ResponseCode::NXDomain;
        out.authority.push(apex.soa.clone());
        return out;
    }
    if is_apex && matches!(qtype, RecordType::SOA | RecordType::ANY) {
        let mut soa = apex.soa.clone();
        soa.name = qname.clone();
        out.answers.push(soa);
    }
    if let Some(node) = node {
        for ip in node.addrs.iter().filter(|ip| wants(qtype, ip)) {
            out.answers.push(addr_record(qname, *ip));
        }
        if matches!(qtype, RecordType::SRV | RecordType::ANY) {
            // Targets' addresses go into the additional section, once each.
            let mut targets: BTreeMap<LowerName, &Name> = BTreeMap::new();
            for (port, target) in &node.srv {
                let srv = SRV::new(0, 100, *port, target.clone());
                out.answers
                    .push(Record::from_rdata(qname.clone(), TTL, RData::SRV(srv)));
                targets.insert(LowerName::new(target), target);
            }
            for (lower, target) in targets {
                if let Some(t) = zone.nodes.get(&lower) {
                    for ip in &t.addrs {
                        out.additionals.push(addr_record(target, *ip));
                    }
                }
            }
        }
    }
    if out.answers.is_empty() {
        out.authority.push(apex.soa.clone());
    }
    out
}

#[cfg(test)]
mod tests;
