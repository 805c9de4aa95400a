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
pub const TTL: u32 = 5;
/// TTL of negative answers (the SOA's minimum), in seconds.
pub const NEGATIVE_TTL: u32 = 5;

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
    pub fn search(&self) -> [String; 3] {
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
    pub code: ResponseCode,
    /// AA bit: set for everything inside our domains.
    pub authoritative: bool,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section (the SOA of negative answers).
    pub authority: Vec<Record>,
    /// Additional section (addresses of SRV targets).
    pub additionals: Vec<Record>,
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
    pub fn build(endpoints: &[DnsEndpoint], records: &[NameRecord], serial: u32) -> Zone {
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

        let mut sorted: Vec<&NameRecord> = records.iter().collect();
        sorted.sort_by(|a, b| {
            (
                a.connected,
                &a.endpoint,
                &a.service.namespace,
                &a.service.name,
            )
                .cmp(&(
                    b.connected,
                    &b.endpoint,
                    &b.service.namespace,
                    &b.service.name,
                ))
        });
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

    /// The domains this zone is authoritative for.
    pub fn domains(&self) -> Vec<String> {
        self.apexes
            .iter()
            .map(|a| a.name.to_string().trim_end_matches('.').to_owned())
            .collect()
    }

    /// Number of owner names with records (for logs and tests).
    pub fn len(&self) -> usize {
        self.nodes.values().filter(|n| n.owner.is_some()).count()
    }

    /// Whether the zone has no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    pub fn new(endpoints: Vec<DnsEndpoint>) -> Self {
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
    pub fn set_endpoints(&mut self, endpoints: Vec<DnsEndpoint>) {
        if endpoints != self.endpoints {
            self.endpoints = endpoints;
            self.seen = None;
        }
    }

    /// The zone for `records` (rebuilt only if they or the endpoints changed
    /// since the last call).
    pub fn update(&mut self, records: &std::sync::Arc<Vec<NameRecord>>) -> std::sync::Arc<Zone> {
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
    pub fn active(&self) -> Vec<&DnsEndpoint> {
        self.order
            .iter()
            .filter_map(|o| self.endpoints.iter().find(|e| &e.name == o))
            .collect()
    }

    /// Cluster domains of the active endpoints, without duplicates.
    pub fn active_domains(&self) -> Vec<String> {
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
    pub fn search(&self) -> Vec<String> {
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
mod tests {
    use super::*;
    use netmux_common::proto::catalog::{Direction, Service, ServicePort};

    fn ep(name: &str) -> DnsEndpoint {
        DnsEndpoint {
            name: name.into(),
            domain: "cluster.local".into(),
            default_namespace: "demo".into(),
        }
    }

    fn service(name: &str, aliases: &[&str]) -> Service {
        Service {
            id: netmux_common::proto::catalog::ServiceId(1),
            name: name.into(),
            namespace: "demo".into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            addresses: vec![],
            ports: vec![
                ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: 8080,
                    protocol: Protocol::Tcp,
                },
                ServicePort {
                    name: None,
                    port: 81,
                    target_port: 81,
                    protocol: Protocol::Tcp,
                },
                ServicePort {
                    name: Some("dns".into()),
                    port: 53,
                    target_port: 53,
                    protocol: Protocol::Udp,
                },
            ],
            direction: Direction::L2C,
        }
    }

    /// A record of `endpoint`, which connected first if it is `demo`.
    fn record(endpoint: &str, svc: Service, addrs: &[&str]) -> NameRecord {
        let connected = if endpoint == "demo" { 1 } else { 2 };
        connected_as(connected, endpoint, svc, addrs)
    }

    fn connected_as(connected: u64, endpoint: &str, svc: Service, addrs: &[&str]) -> NameRecord {
        NameRecord {
            endpoint: endpoint.into(),
            domain: "cluster.local".into(),
            connected,
            service: svc,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn q(name: &str, t: RecordType) -> Query {
        Query::query(Name::from_ascii(name).unwrap(), t)
    }

    fn ips(a: &Answer) -> Vec<String> {
        a.answers
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => a.0.to_string(),
                RData::AAAA(a) => a.0.to_string(),
                other => format!("{other}"),
            })
            .collect()
    }

    fn zone() -> Zone {
        Zone::build(
            &[ep("demo"), ep("staging")],
            &[
                record(
                    "demo",
                    service(
                        "web",
                        &["web-0.web.demo.svc.cluster.local", "pg.example.internal"],
                    ),
                    &["127.77.0.1", "fd00::1"],
                ),
                record("staging", service("web", &[]), &["127.77.0.2"]),
                record("staging", service("db", &[]), &["127.77.0.3"]),
            ],
            7,
        )
    }

    #[test]
    fn a_and_aaaa_for_the_full_name() {
        let z = zone();
        let a = answer(&q("web.demo.svc.cluster.local.", RecordType::A), &z);
        assert_eq!(a.code, ResponseCode::NoError);
        assert!(a.authoritative);
        assert_eq!(ips(&a), ["127.77.0.1"]);
        assert_eq!(a.answers[0].ttl, TTL);
        let a = answer(&q("web.demo.svc.cluster.local.", RecordType::AAAA), &z);
        assert_eq!(ips(&a), ["fd00::1"]);
    }

    #[test]
    fn owner_name_keeps_the_askers_case() {
        let a = answer(&q("WeB.Demo.SVC.cluster.LOCAL.", RecordType::A), &zone());
        assert_eq!(ips(&a), ["127.77.0.1"]);
        assert_eq!(a.answers[0].name.to_string(), "WeB.Demo.SVC.cluster.LOCAL.");
    }

    #[test]
    fn first_endpoint_wins_the_plain_form_others_keep_the_qualified_one() {
        let z = zone();
        let a = answer(&q("web.demo.svc.staging.cluster.local.", RecordType::A), &z);
        assert_eq!(ips(&a), ["127.77.0.2"]);
        let a = answer(&q("web.demo.svc.demo.cluster.local.", RecordType::A), &z);
        assert_eq!(ips(&a), ["127.77.0.1"]);
        // db exists only on staging: the plain form is free for it.
        let a = answer(&q("db.demo.svc.cluster.local.", RecordType::A), &z);
        assert_eq!(ips(&a), ["127.77.0.3"]);
        // Connection order decides, not names nor the order of records.
        let z = Zone::build(
            &[ep("demo"), ep("staging")],
            &[
                connected_as(2, "demo", service("web", &[]), &["127.77.0.1"]),
                connected_as(1, "staging", service("web", &[]), &["127.77.0.2"]),
            ],
            1,
        );
        let a = answer(&q("web.demo.svc.cluster.local.", RecordType::A), &z);
        assert_eq!(ips(&a), ["127.77.0.2"]);
        let a = answer(&q("web.demo.svc.demo.cluster.local.", RecordType::A), &z);
        assert_eq!(ips(&a), ["127.77.0.1"], "the later one keeps its own form");
    }

    #[test]
    fn per_pod_aliases_inside_the_domain_only() {
        let z = zone();
        let a = answer(&q("web-0.web.demo.svc.cluster.local.", RecordType::A), &z);
        assert_eq!(ips(&a), ["127.77.0.1"]);
        let a = answer(
            &q("web-0.web.demo.svc.demo.cluster.local.", RecordType::A),
            &z,
        );
        assert_eq!(ips(&a), ["127.77.0.1"]);
        let a = answer(&q("pg.example.internal.", RecordType::A), &z);
        assert_eq!(a.code, ResponseCode::Refused);
    }

    #[test]
    fn srv_for_named_tcp_ports_with_target_addresses() {
        let z = zone();
        let a = answer(
            &q("_http._tcp.web.demo.svc.cluster.local.", RecordType::SRV),
            &z,
        );
        assert_eq!(a.code, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 1);
        let RData::SRV(srv) = &a.answers[0].data else {
            panic!("not SRV: {:?}", a.answers[0]);
        };
        assert_eq!(srv.port, 80);
        assert_eq!(srv.target.to_string(), "web.demo.svc.cluster.local.");
        assert_eq!(a.additionals.len(), 2, "{:?}", a.additionals);
        // The qualified SRV points at the qualified target.
        let a = answer(
            &q(
                "_http._tcp.web.demo.svc.staging.cluster.local.",
                RecordType::SRV,
            ),
            &z,
        );
        let RData::SRV(srv) = &a.answers[0].data else {
            panic!("not SRV");
        };
        assert_eq!(
            srv.target.to_string(),
            "web.demo.svc.staging.cluster.local."
        );
        // UDP ports are not tunnelled, so not published.
        let a = answer(
            &q("_dns._udp.web.demo.svc.cluster.local.", RecordType::SRV),
            &z,
        );
        assert_eq!(a.code, ResponseCode::NXDomain);
    }

    #[test]
    fn negative_answers_inside_the_domain_carry_the_soa() {
        let z = zone();
        let a = answer(&q("nope.demo.svc.cluster.local.", RecordType::A), &z);
        assert_eq!(a.code, ResponseCode::NXDomain);
        assert!(a.authoritative && a.answers.is_empty());
        assert_eq!(a.authority[0].record_type(), RecordType::SOA);
        assert_eq!(a.authority[0].name.to_string(), "cluster.local.");
        // Empty non-terminals and wrong types are NODATA, not NXDOMAIN.
        for (name, t) in [
            ("demo.svc.cluster.local.", RecordType::A),
            ("svc.cluster.local.", RecordType::A),
            ("web.demo.svc.cluster.local.", RecordType::TXT),
            ("db.demo.svc.cluster.local.", RecordType::AAAA),
            ("cluster.local.", RecordType::A),
        ] {
            let a = answer(&q(name, t), &z);
            assert_eq!(a.code, ResponseCode::NoError, "{name} {t}");
            assert!(a.answers.is_empty(), "{name} {t}");
            assert_eq!(a.authority.len(), 1, "{name} {t}");
        }
        let a = answer(&q("cluster.local.", RecordType::SOA), &z);
        assert_eq!(a.answers.len(), 1);
        assert_eq!(a.answers[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn outside_the_domain_is_refused_never_recursed() {
        let z = zone();
        for name in [
            "example.com.",
            "local.",
            ".",
            "web.",
            "web.demo.",
            "xcluster.local.",
        ] {
            let a = answer(&q(name, RecordType::A), &z);
            assert_eq!(a.code, ResponseCode::Refused, "{name}");
            assert!(!a.authoritative && a.answers.is_empty() && a.authority.is_empty());
        }
        let mut chaos = q("web.demo.svc.cluster.local.", RecordType::TXT);
        chaos.set_query_class(DNSClass::CH);
        assert_eq!(answer(&chaos, &z).code, ResponseCode::Refused);
    }

    #[test]
    fn configured_domains_answer_even_without_services() {
        let z = Zone::build(&[ep("demo")], &[], 1);
        assert!(z.is_empty());
        assert_eq!(z.domains(), ["cluster.local"]);
        let a = answer(&q("web.demo.svc.cluster.local.", RecordType::A), &z);
        assert_eq!(a.code, ResponseCode::NXDomain);
    }

    #[test]
    fn endpoints_named_like_kubernetes_labels_have_no_qualified_form() {
        let z = Zone::build(
            &[ep("svc")],
            &[record("svc", service("web", &[]), &["127.77.0.1"])],
            1,
        );
        let a = answer(&q("web.demo.svc.svc.cluster.local.", RecordType::A), &z);
        assert_eq!(a.code, ResponseCode::NXDomain);
    }

    #[test]
    fn follower_follows_reloaded_endpoints() {
        use std::sync::Arc;
        let mut f = ZoneFollower::new(vec![ep("demo")]);
        let records = Arc::new(vec![
            record("demo", service("web", &[]), &["127.77.0.1"]),
            record("staging", service("db", &[]), &["127.77.0.3"]),
        ]);
        let z = f.update(&records);
        let db = q("db.demo.svc.cluster.local.", RecordType::A);
        assert_eq!(
            answer(&db, &z).code,
            ResponseCode::NXDomain,
            "unknown endpoint"
        );
        let mut staging = ep("staging");
        staging.domain = "staging.example".into();
        f.set_endpoints(vec![ep("demo"), staging.clone()]);
        let z2 = f.update(&records);
        assert!(!Arc::ptr_eq(&z, &z2), "rebuilt for the new endpoints");
        // staging's record says cluster.local, its endpoint another domain:
        // the new domain is authoritative (NXDOMAIN, not REFUSED).
        let other = q("x.staging.example.", RecordType::A);
        assert_eq!(answer(&other, &z2).code, ResponseCode::NXDomain);
        assert_eq!(ips(&answer(&db, &z2)), ["127.77.0.3"]);
        f.set_endpoints(vec![ep("demo"), staging]);
        assert!(Arc::ptr_eq(&z2, &f.update(&records)), "same endpoints");
    }

    #[test]
    fn follower_rebuilds_only_on_change() {
        use std::sync::Arc;
        let mut f = ZoneFollower::new(vec![ep("demo"), ep("staging")]);
        assert!(f.active_domains().is_empty());
        let one = Arc::new(vec![record("demo", service("web", &[]), &["127.77.0.1"])]);
        let z1 = f.update(&one);
        assert!(
            Arc::ptr_eq(&z1, &f.update(&one)),
            "unchanged names, same zone"
        );
        assert!(Arc::ptr_eq(&z1, &f.update(&Arc::new((*one).clone()))));
        assert_eq!(f.active_domains(), ["cluster.local"]);
        assert_eq!(f.search().len(), 3);
        let z3 = f.update(&Arc::new(vec![]));
        assert!(z3.is_empty());
        assert!(f.search().is_empty());
    }

    /// The rule: the first connected endpoint wins the plain form,
    /// stays the owner while connected whoever starts services when, and
    /// the next one takes over when it disconnects.
    #[test]
    fn first_connected_wins_the_plain_form_until_it_disconnects() {
        use std::sync::Arc;
        let plain = |z: &Zone| ips(&answer(&q("web.demo.svc.cluster.local.", RecordType::A), z));
        let active = |f: &ZoneFollower| -> Vec<String> {
            f.active().iter().map(|e| e.name.clone()).collect()
        };
        let mut f = ZoneFollower::new(vec![ep("demo"), ep("staging")]);
        // demo connected (1), then staging (2); staging starts web first.
        let staging_web = connected_as(2, "staging", service("web", &[]), &["127.77.0.2"]);
        let z = f.update(&Arc::new(vec![staging_web.clone()]));
        assert_eq!(plain(&z), ["127.77.0.2"], "the only publisher has it");
        // demo starts web later, but connected earlier: it takes the name.
        let demo_web = connected_as(1, "demo", service("web", &[]), &["127.77.0.1"]);
        let z = f.update(&Arc::new(vec![staging_web.clone(), demo_web.clone()]));
        assert_eq!(plain(&z), ["127.77.0.1"]);
        assert_eq!(active(&f), ["demo", "staging"]);
        let qualified = answer(&q("web.demo.svc.staging.cluster.local.", RecordType::A), &z);
        assert_eq!(ips(&qualified), ["127.77.0.2"], "staging keeps its form");
        // Stable while demo stays connected, whatever else changes.
        let staging_db = connected_as(2, "staging", service("db", &[]), &["127.77.0.3"]);
        let z = f.update(&Arc::new(vec![
            staging_db.clone(),
            staging_web.clone(),
            demo_web.clone(),
        ]));
        assert_eq!(plain(&z), ["127.77.0.1"]);
        // demo disconnects: staging, next in line, takes over.
        let z = f.update(&Arc::new(vec![staging_web.clone(), staging_db.clone()]));
        assert_eq!(plain(&z), ["127.77.0.2"]);
        assert_eq!(active(&f), ["staging"]);
        // demo connects again (3): now it is second.
        let demo_again = connected_as(3, "demo", service("web", &[]), &["127.77.0.1"]);
        let z = f.update(&Arc::new(vec![demo_again, staging_web, staging_db]));
        assert_eq!(plain(&z), ["127.77.0.2"]);
        assert_eq!(active(&f), ["staging", "demo"]);
    }

    #[test]
    fn search_list_is_the_pods() {
        assert_eq!(
            ep("demo").search(),
            [
                "demo.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
    }

    #[test]
    fn relative_names() {
        assert_eq!(relative("a.b.cluster.local", "cluster.local"), Some("a.b"));
        assert_eq!(relative("a.B.Cluster.Local.", "cluster.local"), Some("a.B"));
        assert_eq!(relative("cluster.local", "cluster.local"), None);
        assert_eq!(relative("xcluster.local", "cluster.local"), None);
        assert_eq!(relative("é.cluster.local", "cluster.local"), Some("é"));
        assert_eq!(relative("", "cluster.local"), None);
    }
}
