//! The catalog cannot be steered: target policy, namespace confinement,
//! the Services each entry reaches (RBAC), refusals told per entry.

use super::*;

fn refusals(p: &[Problem]) -> Vec<(String, &'static str)> {
    let mut v: Vec<(String, &'static str)> = p
        .iter()
        .filter_map(|p| match p.kind {
            ProblemKind::TargetRefused(r) => Some((p.service.clone(), r.label())),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn names(c: &[Service]) -> Vec<&str> {
    let mut v: Vec<&str> = c.iter().map(|s| s.name.as_str()).collect();
    v.sort_unstable();
    v
}

#[test]
fn refused_annotation_targets_leave_the_rest_of_the_service_published() {
    let web = service(
        "shop",
        "web",
        "10.96.0.10",
        json!([{"port": 80}]),
        Some(
            "- name: web\n\
             - name: metadata\n  containerAddr: 169.254.169.254\n\
             - name: metadata6\n  containerAddr: fd00:ec2::254\n\
             - name: lo\n  containerAddr: 127.0.0.1\n\
             - name: mapped\n  containerAddr: \"::ffff:127.0.0.1\"\n\
             - name: outside\n  containerAddr: 192.0.2.7\n\
             - name: myself\n  containerAddr: 10.244.9.9\n",
        ),
    );
    let other = service("shop", "cart", "10.96.0.11", json!([{"port": 80}]), None);
    let mut options = CatalogOptions::default();
    options.policy.server_addresses = vec![ip("10.244.9.9")];
    let (c, problems) = catalog_from(&[web, other.clone()], &[] as &[EndpointSlice], &options);
    assert_eq!(names(&c), ["cart", "web"], "{problems:#?}");
    assert_eq!(
        refusals(&problems),
        [
            ("web".to_owned(), "link_local"),
            ("web".to_owned(), "link_local"),
            ("web".to_owned(), "loopback"),
            ("web".to_owned(), "loopback"),
            ("web".to_owned(), "not_allowed"),
            ("web".to_owned(), "server_address"),
        ]
    );
    let meta = problems
        .iter()
        .find(|p| p.message.contains("(metadata)"))
        .expect("metadata refusal");
    assert_eq!(meta.kind.reason(), "NetmuxTargetRefused");
    assert_eq!(meta.uid.as_deref(), Some("uid-web"));
    assert!(
        meta.message.contains("169.254.169.254")
            && meta.message.contains("`containerAddr`")
            && meta.message.contains("fix:"),
        "{}",
        meta.message
    );

    // Even a listed range does not open the never-list; allow_unsafe_targets does.
    let web = service(
        "shop",
        "web",
        "10.96.0.10",
        json!([{"port": 80}]),
        Some(
            "- name: lo\n  containerAddr: 127.0.0.1\n- name: outside\n  containerAddr: 192.0.2.7\n",
        ),
    );
    let mut options = allowing(&["0.0.0.0/0"]);
    let (c, problems) = catalog_from(
        std::slice::from_ref(&web),
        &[] as &[EndpointSlice],
        &options,
    );
    assert_eq!(names(&c), ["outside"]);
    assert_eq!(refusals(&problems), [("web".to_owned(), "loopback")]);
    options.policy.allow_unsafe =
        vec![crate::policy::Cidr::try_from("127.0.0.1".to_owned()).unwrap()];
    let (c, problems) = catalog_from(&[web], &[] as &[EndpointSlice], &options);
    assert_eq!(names(&c), ["lo", "outside"], "{problems:?}");
}

#[test]
fn annotation_targets_stay_in_the_services_namespace() {
    let pg = service("db", "postgres", "10.96.5.5", json!([{"port": 5432}]), None);
    let pg_pods = slice(
        "db",
        "postgres",
        &[("10.244.5.1", Some("pg-0"), true)],
        json!([{"port": 5432}]),
    );
    let local_pg = service(
        "shop",
        "postgres",
        "10.96.0.9",
        json!([{"port": 5432}]),
        None,
    );
    let alias = service(
        "shop",
        "pg-alias",
        "10.96.0.8",
        json!([{"port": 5432}]),
        Some(
            "- name: by-ns\n  containerAddr: postgres.db\n\
             - name: by-fqdn\n  containerAddr: postgres.db.svc.cluster.local\n\
             - name: by-pod\n  containerAddr: pg-0.postgres.db.svc.cluster.local\n\
             - name: by-ip\n  containerAddr: 10.96.5.5\n\
             - name: by-pod-ip\n  containerAddr: 10.244.5.1\n\
             - name: local\n  containerAddr: postgres\n\
             - name: local-ns\n  containerAddr: postgres.shop.svc.cluster.local\n",
        ),
    );
    let (c, problems) = catalog_from(
        &[pg, local_pg, alias],
        &[pg_pods],
        &allowing(&["10.0.0.0/8"]),
    );
    let other_ns: Vec<_> = refusals(&problems)
        .into_iter()
        .filter(|(_, why)| *why == "other_namespace")
        .collect();
    assert_eq!(other_ns.len(), 5, "{problems:#?}");
    assert!(
        problems.iter().all(|p| p.service == "pg-alias"),
        "{problems:#?}"
    );
    assert!(!names(&c).iter().any(|n| n.starts_with("by-")), "{c:#?}");
    assert_eq!(find(&c, "local").addresses, vec![ip("10.96.0.9")]);
    assert_eq!(find(&c, "local-ns").addresses, vec![ip("10.96.0.9")]);
    let by_ip = problems
        .iter()
        .find(|p| p.message.contains("(by-ip)"))
        .expect("by-ip refused");
    assert!(by_ip.message.contains("db/postgres"), "{}", by_ip.message);
}

#[test]
fn each_entry_names_every_service_it_reaches() {
    let db = service("shop", "db", "10.96.0.20", json!([{"port": 5432}]), None);
    let kafka = service(
        "shop",
        "kafka",
        "None",
        json!([{"name": "9092", "port": 9092}]),
        None,
    );
    let brokers = slice(
        "shop",
        "kafka",
        &[("10.244.0.10", Some("kafka-0"), true)],
        json!([{"name": "9092", "port": 9092}]),
    );
    let bridge = service(
        "shop",
        "tools",
        "10.96.0.21",
        json!([{"port": 5432}]),
        Some(
            "- name: tools\n\
             - name: tools-db\n  containerAddr: db\n\
             - name: tools-db-ip\n  containerAddr: 10.96.0.20\n\
             - name: tools-k0\n  containerAddr: kafka-0.kafka\n  containerPort: 9092\n  localPort: 9092\n",
        ),
    );
    let (c, problems) =
        catalog_with_origins(&[db, kafka, bridge], &[brokers], &CatalogOptions::default());
    assert!(problems.is_empty(), "{problems:#?}");
    let origin = |name: &str| {
        c.iter()
            .find(|(s, _)| s.name == name)
            .map(|(_, o)| o.clone())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(origin("tools"), ["tools"]);
    assert_eq!(origin("tools-db"), ["tools", "db"]);
    assert_eq!(origin("tools-db-ip"), ["tools", "db"]);
    assert_eq!(origin("tools-k0"), ["tools", "kafka"]);
    assert_eq!(origin("kafka-0"), ["kafka"]);
}

#[test]
fn selectorless_and_headless_slice_addresses_obey_the_same_rules() {
    // A selectorless headless Service: its EndpointSlice is a user's.
    let mut ext = service("shop", "ext", "None", json!([{"port": 80}]), None);
    if let Some(spec) = ext.spec.as_mut() {
        spec.selector = None;
    }
    let mut ext_slice = slice(
        "shop",
        "ext",
        &[
            ("10.244.1.5", Some("a"), true),
            ("127.0.0.1", Some("b"), true),
            ("169.254.169.254", Some("c"), true),
        ],
        json!([{"port": 80}]),
    );
    ext_slice.metadata.labels.as_mut().unwrap().insert(
        "endpointslice.kubernetes.io/managed-by".into(),
        "someone".into(),
    );
    let (c, problems) = catalog_from(
        &[ext.clone()],
        &[ext_slice.clone()],
        &CatalogOptions::default(),
    );
    assert!(c.is_empty(), "not the cluster's addresses: {c:#?}");
    assert_eq!(
        refusals(&problems),
        [
            ("ext".to_owned(), "link_local"),
            ("ext".to_owned(), "loopback"),
            ("ext".to_owned(), "not_allowed"),
        ]
    );
    let (c, problems) = catalog_from(&[ext], &[ext_slice], &allowing(&["10.244.0.0/16"]));
    assert_eq!(names(&c), ["a", "ext"]);
    assert_eq!(find(&c, "ext").addresses, vec![ip("10.244.1.5")]);
    assert_eq!(refusals(&problems).len(), 2);

    // A user's slice added to a Service with a selector is a user's too;
    // the controller's addresses stay published.
    let db = service("shop", "db", "None", json!([{"port": 5432}]), None);
    let pods = slice(
        "shop",
        "db",
        &[("10.244.2.1", None, true)],
        json!([{"port": 5432}]),
    );
    let mut forged = slice(
        "shop",
        "db",
        &[("169.254.169.254", None, true), ("10.0.0.99", None, true)],
        json!([{"port": 5432}]),
    );
    forged.metadata.name = Some("db-mine".into());
    forged
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("endpointslice.kubernetes.io/managed-by".into(), "me".into());
    let (c, problems) = catalog_from(&[db], &[pods, forged], &CatalogOptions::default());
    assert_eq!(find(&c, "db").addresses, vec![ip("10.244.2.1")]);
    assert_eq!(
        refusals(&problems),
        [
            ("db".to_owned(), "link_local"),
            ("db".to_owned(), "not_allowed"),
        ]
    );

    // A bridge to such a Service obeys the same rules.
    let mut ext = service("shop", "ext", "None", json!([{"port": 80}]), None);
    if let Some(spec) = ext.spec.as_mut() {
        spec.selector = None;
    }
    let ext_slice = slice(
        "shop",
        "ext",
        &[("169.254.169.254", None, true)],
        json!([{"port": 80}]),
    );
    let bridge = service(
        "shop",
        "via",
        "10.96.0.30",
        json!([{"port": 80}]),
        Some("- name: via\n- name: via-ext\n  containerAddr: ext\n"),
    );
    let options = CatalogOptions {
        publish_unannotated: false,
        ..CatalogOptions::default()
    };
    let (c, problems) = catalog_from(&[ext, bridge], &[ext_slice], &options);
    assert_eq!(names(&c), ["via"]);
    assert_eq!(refusals(&problems), [("via".to_owned(), "link_local")]);
}

#[test]
fn cluster_ips_are_the_clusters_own_but_still_screened() {
    let a = service("shop", "a", "10.96.0.1", json!([{"port": 80}]), None);
    let (c, problems) = catalog_from(
        std::slice::from_ref(&a),
        &[] as &[EndpointSlice],
        &CatalogOptions::default(),
    );
    assert!(problems.is_empty());
    assert_eq!(names(&c), ["a"]);
    let (c, problems) = catalog_from(&[a], &[] as &[EndpointSlice], &allowing(&["10.244.0.0/16"]));
    assert!(c.is_empty(), "a configured list replaces the default");
    assert_eq!(refusals(&problems), [("a".to_owned(), "not_allowed")]);
}
