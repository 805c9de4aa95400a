//! Unit tests of the DNS zone (kept beside `zone.rs` so that file stays
//! under ~800 lines).

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
    let active =
        |f: &ZoneFollower| -> Vec<String> { f.active().iter().map(|e| e.name.clone()).collect() };
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
