use super::*;
use serde_json::json;

/// The kafka Service of the original deck (Annotations slide), verbatim.
pub(crate) const DECK_KAFKA_NX: &str = "- name: kafka
- name: kafka-0
  localAddr: kafka-0.kafka.netmux.svc.cluster.local
  containerAddr: kafka-0.kafka.netmux.svc.cluster.local
- name: kafka-1
  localAddr: kafka-1.kafka.netmux.svc.cluster.local
  containerAddr: kafka-1.kafka.netmux.svc.cluster.local
- name: kafka-2
  localAddr: kafka-2.kafka.netmux.svc.cluster.local
  containerAddr: kafka-2.kafka.netmux.svc.cluster.local";

/// [`netmux_fakekube::service`] with a `uid` (`uid-<name>`), typed.
fn service(
    ns: &str,
    name: &str,
    cluster_ip: &str,
    ports: serde_json::Value,
    nx: Option<&str>,
) -> KService {
    let mut v = netmux_fakekube::service(ns, name, cluster_ip, ports, nx);
    v["metadata"]["uid"] = json!(format!("uid-{name}"));
    serde_json::from_value(v).unwrap()
}

/// [`netmux_fakekube::endpoint_slice`], typed; `endpoints`: (ip,
/// hostname, ready).
fn slice(
    ns: &str,
    svc: &str,
    endpoints: &[(&str, Option<&str>, bool)],
    ports: serde_json::Value,
) -> EndpointSlice {
    serde_json::from_value(netmux_fakekube::endpoint_slice(ns, svc, endpoints, ports)).unwrap()
}

fn tcp(name: Option<&str>, port: u16, target: u16) -> ServicePort {
    ServicePort {
        name: name.map(str::to_owned),
        port,
        target_port: target,
        protocol: Protocol::Tcp,
    }
}

fn find<'a>(c: &'a [Service], name: &str) -> &'a Service {
    c.iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} missing from {c:#?}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Options whose policy allows `cidrs` (`runtime.allowed_target_cidrs`).
fn allowing(cidrs: &[&str]) -> CatalogOptions {
    let mut o = CatalogOptions::default();
    o.policy.allowed = Some(
        cidrs
            .iter()
            .map(|c| crate::policy::Cidr::try_from(c.to_string()).unwrap())
            .collect(),
    );
    o
}

fn kafka_brokers() -> EndpointSlice {
    slice(
        "netmux",
        "kafka",
        &[
            ("10.244.0.10", Some("kafka-0"), true),
            ("10.244.0.11", Some("kafka-1"), true),
            ("10.244.0.12", Some("kafka-2"), true),
        ],
        json!([{"name": "9092", "port": 9092, "protocol": "TCP"}]),
    )
}

#[test]
fn deck_kafka_example_publishes_the_service_and_each_broker() {
    let kafka = service(
        "netmux",
        "kafka",
        "10.96.0.50",
        json!([{"name": "9092", "port": 9092, "protocol": "TCP", "targetPort": 9092}]),
        Some(DECK_KAFKA_NX),
    );
    let (c, problems) = catalog_from(&[kafka], &[kafka_brokers()], &CatalogOptions::default());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(c.len(), 4, "{c:#?}");
    let k = find(&c, "kafka");
    assert_eq!(k.namespace, "netmux");
    assert_eq!(k.addresses, vec![ip("10.96.0.50")]);
    assert!(k.aliases.is_empty());
    assert_eq!(k.ports, vec![tcp(Some("9092"), 9092, 9092)]);
    assert_eq!(k.direction, Direction::L2C);
    for (i, name) in ["kafka-0", "kafka-1", "kafka-2"].iter().enumerate() {
        let b = find(&c, name);
        assert_eq!(
            b.aliases,
            vec![format!("{name}.kafka.netmux.svc.cluster.local")]
        );
        assert_eq!(b.addresses, vec![ip(&format!("10.244.0.1{i}"))]);
        assert_eq!(b.ports, vec![tcp(Some("9092"), 9092, 9092)]);
        assert_eq!(b.direction, Direction::L2C);
        b.validate().unwrap();
    }
}

#[test]
fn broker_not_ready_is_left_out_until_it_is() {
    let kafka = service(
        "netmux",
        "kafka",
        "10.96.0.50",
        json!([{"name": "9092", "port": 9092}]),
        Some(DECK_KAFKA_NX),
    );
    let mut s = kafka_brokers();
    s.endpoints.as_mut().unwrap()[1].conditions =
        Some(k8s_openapi::api::discovery::v1::EndpointConditions {
            ready: Some(false),
            ..Default::default()
        });
    let (c, problems) = catalog_from(&[kafka], &[s], &CatalogOptions::default());
    assert!(problems.is_empty(), "{problems:?}");
    let names: Vec<&str> = c.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["kafka", "kafka-0", "kafka-2"]);
}

#[test]
fn unannotated_multi_port_service_publishes_every_port() {
    let web = service(
        "default",
        "web",
        "10.96.0.10",
        json!([
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "https", "port": 443, "targetPort": "https"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "sctp", "port": 9, "protocol": "SCTP"},
        ]),
        None,
    );
    let (c, problems) = catalog_from(&[web], &[] as &[EndpointSlice], &CatalogOptions::default());
    assert!(problems.is_empty());
    assert_eq!(c.len(), 1);
    // The server dials the cluster IP, so at the Service port.
    assert_eq!(
        c[0].ports,
        vec![
            tcp(Some("http"), 80, 80),
            tcp(Some("https"), 443, 443),
            ServicePort {
                name: Some("dns".into()),
                port: 53,
                target_port: 53,
                protocol: Protocol::Udp
            },
        ]
    );
    assert_eq!(c[0].addresses, vec![ip("10.96.0.10")]);
}

#[test]
fn unannotated_services_can_be_left_out() {
    let web = service("default", "web", "10.96.0.10", json!([{"port": 80}]), None);
    let nx = service(
        "default",
        "pg",
        "10.96.0.11",
        json!([{"port": 5432}]),
        Some("- name: pg"),
    );
    let opts = CatalogOptions {
        publish_unannotated: false,
        ..Default::default()
    };
    let (c, _) = catalog_from(&[web, nx], &[] as &[EndpointSlice], &opts);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].name, "pg");
}

#[test]
fn headless_service_publishes_each_ready_pod_under_its_name() {
    let db = service(
        "data",
        "db",
        "None",
        json!([{"name": "pg", "port": 5432, "targetPort": "pg"}, {"name": "metrics", "port": 9187}]),
        None,
    );
    let eps = slice(
        "data",
        "db",
        &[
            ("10.244.1.5", Some("db-0"), true),
            ("10.244.1.6", Some("db-1"), true),
            ("10.244.1.7", Some("db-2"), false),
            ("10.244.1.8", None, true),
        ],
        json!([{"name": "pg", "port": 15432}, {"name": "metrics", "port": 9187}]),
    );
    let (c, problems) = catalog_from(&[db], &[eps], &CatalogOptions::default());
    assert!(problems.is_empty());
    let names: Vec<&str> = c.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["db", "db-0", "db-1"]);
    let main = find(&c, "db");
    assert_eq!(
        main.addresses,
        vec![ip("10.244.1.5"), ip("10.244.1.6"), ip("10.244.1.8")]
    );
    // Pods are dialled at the pod's port, clients keep the Service port.
    assert_eq!(
        main.ports,
        vec![
            tcp(Some("pg"), 5432, 15432),
            tcp(Some("metrics"), 9187, 9187)
        ]
    );
    let db1 = find(&c, "db-1");
    assert_eq!(
        db1.aliases,
        vec!["db-1.db.data.svc.cluster.local".to_owned()]
    );
    assert_eq!(db1.addresses, vec![ip("10.244.1.6")]);
    assert_eq!(db1.ports, main.ports);
}

#[test]
fn headless_service_without_ready_pods_is_not_published() {
    let db = service("data", "db", "None", json!([{"port": 5432}]), None);
    let (c, problems) = catalog_from(&[db], &[] as &[EndpointSlice], &CatalogOptions::default());
    assert!(c.is_empty() && problems.is_empty());
}

#[test]
fn original_reverse_sample_without_its_ignored_keys() {
    let rev = service(
        "netmux",
        "sample-rev",
        "10.96.0.60",
        json!([{"name": "sample-rev", "port": 8082, "targetPort": 8082}]),
        Some(
            "- localPort: \"8082\"\n  name: sample-rev\n  direction: C2L\n  localAddr: 127.0.0.1\n",
        ),
    );
    let (c, problems) = catalog_from(&[rev], &[] as &[EndpointSlice], &CatalogOptions::default());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(c[0].direction, Direction::C2L);
    assert!(c[0].addresses.is_empty());
    assert_eq!(c[0].ports, vec![tcp(Some("sample-rev"), 8082, 8082)]);
}

#[test]
fn explicit_ports_and_addresses() {
    let svc = service(
        "default",
        "api",
        "10.96.0.70",
        json!([{"name": "http", "port": 80, "targetPort": 8080}, {"name": "grpc", "port": 9000}]),
        Some("- name: api-debug\n  localPort: 8081\n  containerPort: 6060\n- name: api-http\n  localPort: 80\n- name: legacy\n  containerAddr: 10.0.0.9\n  containerPort: 7000\n  localPort: '7001'\n"),
    );
    let (c, problems) = catalog_from(&[svc], &[] as &[EndpointSlice], &allowing(&["10.0.0.0/8"]));
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(find(&c, "api-debug").ports, vec![tcp(None, 8081, 6060)]);
    assert_eq!(find(&c, "api-http").ports, vec![tcp(Some("http"), 80, 80)]);
    let legacy = find(&c, "legacy");
    assert_eq!(legacy.addresses, vec![ip("10.0.0.9")]);
    assert_eq!(legacy.ports, vec![tcp(None, 7001, 7000)]);
}

#[test]
fn invalid_annotation_skips_that_service_only_and_says_why() {
    let good = service("default", "good", "10.96.0.1", json!([{"port": 80}]), None);
    let cases = [
        ("- name: a\n  auto: false\n", "unknown field `auto`"),
        ("- name: Bad_Name\n", "`name`"),
        ("- direction: both\n", "`direction`"),
        ("- localAddr: 10.1.1.1\n", "`localAddr`"),
        ("- containerAddr: nowhere\n", "`containerAddr`"),
        ("- name: a\n- name: a\n", "twice"),
        (
            "- localPort: 1234\n  containerPort: 80\n  containerAddr: x\n",
            "`containerAddr`",
        ),
        ("{not: a list}", "not a list"),
    ];
    for (nx, expect) in cases {
        let bad = service(
            "default",
            "bad",
            "10.96.0.2",
            json!([{"port": 80}, {"name": "b", "port": 81}]),
            Some(nx),
        );
        let (c, problems) = catalog_from(
            &[good.clone(), bad],
            &[] as &[EndpointSlice],
            &CatalogOptions::default(),
        );
        assert_eq!(c.len(), 1, "{nx}: {c:?}");
        assert_eq!(c[0].name, "good");
        assert_eq!(problems.len(), 1, "{nx}");
        let p = &problems[0];
        assert_eq!(
            (p.namespace.as_str(), p.service.as_str()),
            ("default", "bad")
        );
        assert_eq!(p.kind, ProblemKind::InvalidAnnotation);
        assert_eq!(p.uid.as_deref(), Some("uid-bad"));
        let text = p.to_string();
        assert!(text.starts_with("Service default/bad: "), "{text}");
        assert!(
            text.contains(expect) && text.contains("fix"),
            "{nx}: {text}"
        );
    }
}

#[test]
fn ambiguous_default_port_is_refused_with_the_fix() {
    let svc = service(
        "default",
        "multi",
        "10.96.0.3",
        json!([{"name": "a", "port": 80}, {"name": "b", "port": 81}]),
        Some("- localPort: 9999\n"),
    );
    let (c, p) = catalog_from(&[svc], &[] as &[EndpointSlice], &CatalogOptions::default());
    assert!(c.is_empty());
    assert!(
        p[0].message.contains("entry 0 (multi)")
            && p[0]
                .message
                .contains("set both localPort and containerPort"),
        "{}",
        p[0]
    );
}

#[test]
fn name_conflicts_keep_the_first_and_report_the_second() {
    let a = service(
        "default",
        "a",
        "10.96.0.1",
        json!([{"port": 80}]),
        Some("- name: shared\n"),
    );
    let b = service(
        "default",
        "b",
        "10.96.0.2",
        json!([{"port": 80}]),
        Some("- name: shared\n- name: b\n"),
    );
    let (c, p) = catalog_from(&[b, a], &[] as &[EndpointSlice], &CatalogOptions::default());
    let names: Vec<&str> = c.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["shared", "b"]);
    assert_eq!(c[0].addresses, vec![ip("10.96.0.1")]);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].service, "b");
    assert_eq!(p[0].kind, ProblemKind::NameConflict);
    assert!(p[0].message.contains("Service default/a"), "{}", p[0]);
}

#[test]
fn output_does_not_depend_on_input_order() {
    let a = service("x", "a", "10.96.0.1", json!([{"port": 80}]), None);
    let b = service("x", "b", "10.96.0.2", json!([{"port": 80}]), None);
    let one = catalog_from(
        &[a.clone(), b.clone()],
        &[] as &[EndpointSlice],
        &CatalogOptions::default(),
    );
    let two = catalog_from(&[b, a], &[] as &[EndpointSlice], &CatalogOptions::default());
    assert_eq!(one, two);
}

mod policy;
