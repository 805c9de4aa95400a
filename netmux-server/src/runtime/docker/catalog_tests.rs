use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn container(name: &str, net: &str, addr: &str) -> Container {
    Container {
        id: format!("{:0<64}", name.len()),
        name: name.into(),
        labels: BTreeMap::new(),
        health: Health::None,
        exposed: vec![(8080, Protocol::Tcp)],
        networks: vec![Attachment {
            network: net.into(),
            addresses: vec![ip(addr)],
            aliases: vec![],
        }],
    }
}

fn label(mut c: Container, k: &str, v: &str) -> Container {
    c.labels.insert(k.into(), v.into());
    c
}

fn options() -> CatalogOptions {
    CatalogOptions {
        namespace: "docker".into(),
        cluster_domain: "docker.internal".into(),
        networks: vec!["apps".into()],
        reach: Reach::All,
        policy: TargetPolicy::default(),
    }
}

fn names(s: &[Service]) -> Vec<String> {
    s.iter()
        .map(|s| format!("{}.{}", s.name, s.namespace))
        .collect()
}

#[test]
fn containers_on_configured_networks_and_labelled_ones_are_published() {
    let cs = [
        container("web", "apps", "172.31.0.2"),
        container("other", "misc", "172.32.0.2"),
        label(
            container("tagged", "misc", "172.32.0.3"),
            PUBLISH_LABEL,
            "true",
        ),
        label(
            container("opted-out", "apps", "172.31.0.4"),
            PUBLISH_LABEL,
            "false",
        ),
    ];
    let (s, p) = catalog_from(&cs, &options());
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(names(&s), ["tagged.docker", "web.docker"]);
    let web = s.iter().find(|s| s.name == "web").unwrap();
    assert_eq!(web.addresses, [ip("172.31.0.2")]);
    assert_eq!(web.ports.len(), 1);
    assert_eq!((web.ports[0].port, web.ports[0].target_port), (8080, 8080));
    assert_eq!(web.direction, Direction::L2C);
}

#[test]
fn only_addresses_on_networks_the_server_shares() {
    let mut c = container("web", "apps", "172.31.0.2");
    c.networks.push(Attachment {
        network: "backend".into(),
        addresses: vec![ip("172.33.0.2")],
        aliases: vec![],
    });
    let mut o = options();
    o.reach = Reach::Networks(["backend".to_owned()].into());
    let (s, _) = catalog_from(std::slice::from_ref(&c), &o);
    assert_eq!(s[0].addresses, [ip("172.33.0.2")]);
    o.reach = Reach::Networks(["elsewhere".to_owned()].into());
    let (s, p) = catalog_from(&[c], &o);
    assert!(s.is_empty());
    assert!(
        p[0].message.contains("no network the server shares"),
        "{p:?}"
    );
}

#[test]
fn names_aliases_and_compose_service_project() {
    let replica = |n: &str, addr: &str| {
        let mut c = container(n, "apps", addr);
        c.id = format!("{n:0<64}").replace('_', "0");
        c.networks[0].aliases = vec!["web".into(), c.id[..12].to_owned(), "Front".into()];
        label(label(c, COMPOSE_SERVICE, "web"), COMPOSE_PROJECT, "shop")
    };
    let (s, p) = catalog_from(
        &[
            replica("shop_web_1", "172.31.0.2"),
            replica("shop_web_2", "172.31.0.3"),
        ],
        &options(),
    );
    let text: Vec<String> = p.iter().map(ToString::to_string).collect();
    assert_eq!(
        names(&s),
        ["shop-web-1.docker", "shop-web-2.docker", "web.shop"],
        "{text:?}"
    );
    assert_eq!(
        s[0].aliases,
        ["web.docker.internal", "front.docker.internal"]
    );
    // The second replica cannot have the same aliases.
    assert!(s[1].aliases.is_empty(), "{:?}", s[1].aliases);
    assert!(
        text.iter()
            .all(|t| t.contains("already published by container shop_web_1")),
        "{text:?}"
    );
    let compose = &s[2];
    assert_eq!(compose.addresses, [ip("172.31.0.2"), ip("172.31.0.3")]);
    assert_eq!(compose.ports.len(), 1);
}

#[test]
fn unhealthy_and_starting_containers_are_not_published() {
    let mut a = container("a", "apps", "172.31.0.2");
    a.health = Health::Unhealthy;
    let mut b = container("b", "apps", "172.31.0.3");
    b.health = Health::Starting;
    let mut c = container("c", "apps", "172.31.0.4");
    c.health = Health::Healthy;
    let (s, p) = catalog_from(&[a, b, c], &options());
    assert!(p.is_empty());
    assert_eq!(names(&s), ["c.docker"]);
}

#[test]
fn ports_label_narrows_and_bad_values_name_the_fix() {
    let mut c = container("dns", "apps", "172.31.0.2");
    c.exposed = vec![(8080, Protocol::Tcp), (9090, Protocol::Tcp)];
    let c = label(c, PORTS_LABEL, "8080, 53/udp");
    let (s, _) = catalog_from(std::slice::from_ref(&c), &options());
    let got: Vec<_> = s[0].ports.iter().map(|p| (p.port, p.protocol)).collect();
    assert_eq!(got, [(8080, Protocol::Tcp), (53, Protocol::Udp)]);
    for bad in ["http", "70000", "53/sctp", ""] {
        let e = parse_ports(bad).unwrap_err();
        assert!(e.contains(PORTS_LABEL) && e.contains("fix:"), "{bad}: {e}");
    }
}

#[test]
fn an_invalid_label_skips_that_container_alone() {
    let bad = label(
        container("bad", "apps", "172.31.0.2"),
        NX_LABEL,
        "- name: x\n  localport: 80\n",
    );
    let worse = label(
        container("worse", "apps", "172.31.0.3"),
        PUBLISH_LABEL,
        "yes",
    );
    let good = container("good", "apps", "172.31.0.4");
    let (s, p) = catalog_from(&[bad, worse, good], &options());
    assert_eq!(names(&s), ["good.docker"]);
    assert_eq!(p.len(), 2, "{p:?}");
    let text: Vec<String> = p.iter().map(|p| p.to_string()).collect();
    assert!(
        text[0].starts_with("container bad:") && text[0].contains("unknown field `localport`"),
        "{text:?}"
    );
    assert!(
        text[1].starts_with("container worse:") && text[1].contains("fix:"),
        "{text:?}"
    );
}

#[test]
fn nx_label_gives_the_kubernetes_control_c2l_included() {
    let nx = "- name: api\n  localAddr: api.local.test\n  localPort: 80\n  containerPort: 8080\n- name: ws-hook\n  direction: C2L\n  localPort: 3000\n  containerPort: 9090\n- name: stats\n  family: udp\n  containerPort: 8125\n";
    let c = label(container("svc", "misc", "172.32.0.2"), NX_LABEL, nx);
    let (s, p) = catalog_from(&[c], &options());
    assert!(p.is_empty(), "{p:?}");
    assert_eq!(names(&s), ["api.docker", "ws-hook.docker", "stats.docker"]);
    assert_eq!(s[0].aliases, ["api.local.test"]);
    assert_eq!(s[0].addresses, [ip("172.32.0.2")]);
    assert_eq!((s[0].ports[0].port, s[0].ports[0].target_port), (80, 8080));
    assert_eq!(s[1].direction, Direction::C2L);
    assert!(s[1].addresses.is_empty());
    assert_eq!(
        (s[1].ports[0].port, s[1].ports[0].target_port),
        (9090, 3000)
    );
    assert_eq!(s[2].ports[0].protocol, Protocol::Udp);
}

#[test]
fn nx_container_addr_names_another_container_never_a_foreign_address() {
    let db = container("db", "apps", "172.31.0.9");
    let nx = "- name: db-proxy\n  containerAddr: db\n  containerPort: 5432\n";
    let c = label(container("svc", "apps", "172.31.0.2"), NX_LABEL, nx);
    let (s, p) = catalog_from(&[db.clone(), c], &options());
    assert!(p.is_empty(), "{p:?}");
    let proxy = s.iter().find(|s| s.name == "db-proxy").unwrap();
    assert_eq!(proxy.addresses, [ip("172.31.0.9")]);
    let nx = "- name: meta\n  containerAddr: 169.254.169.254\n  containerPort: 80\n";
    let c = label(container("svc", "apps", "172.31.0.2"), NX_LABEL, nx);
    let (s, p) = catalog_from(&[db, c], &options());
    assert!(s.iter().all(|s| s.name != "meta"));
    assert!(
        p[0].message.contains("`containerAddr`")
            && p[0].message.contains("container addresses only"),
        "{p:?}"
    );
}

#[test]
fn name_conflicts_keep_the_first() {
    let a = label(
        container("a", "apps", "172.31.0.2"),
        NX_LABEL,
        "- name: api\n",
    );
    let b = label(
        container("b", "apps", "172.31.0.3"),
        NX_LABEL,
        "- name: api\n",
    );
    let (s, p) = catalog_from(&[b, a], &options());
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].addresses, [ip("172.31.0.2")]);
    assert!(
        p[0].to_string()
            .contains("already published by container a"),
        "{p:?}"
    );
}

#[test]
fn container_names_become_dns_labels_or_a_problem() {
    assert_eq!(dns_label("My_App").as_deref(), Some("my-app"));
    assert_eq!(dns_label("a.b"), None);
    let (s, p) = catalog_from(&[container("a.b", "apps", "172.31.0.2")], &options());
    assert!(s.is_empty());
    assert!(p[0].message.contains(NX_LABEL), "{p:?}");
}

#[test]
fn exposed_port_keys_parse() {
    assert_eq!(parse_exposed("8080/tcp"), Some((8080, Protocol::Tcp)));
    assert_eq!(parse_exposed("53/udp"), Some((53, Protocol::Udp)));
    assert_eq!(parse_exposed("9/sctp"), None);
}

#[test]
fn the_target_policy_leaves_refused_addresses_out() {
    let mut c = container("web", "apps", "172.31.0.2");
    c.networks.push(Attachment {
        network: "odd".into(),
        addresses: vec![ip("169.254.169.254")],
        aliases: vec![],
    });
    let mut o = options();
    o.policy.server_addresses = vec![ip("172.31.0.9")];
    let server = container("server", "apps", "172.31.0.9");
    let (s, p) = catalog_from(&[c, server], &o);
    assert_eq!(names(&s), ["web.docker"], "{p:?}");
    assert_eq!(s[0].addresses, [ip("172.31.0.2")]);
    let refused: Vec<_> = p.iter().filter_map(|p| p.refused).collect();
    assert_eq!(
        refused,
        [Refusal::ServerAddress, Refusal::LinkLocal],
        "{p:?}"
    );
    o.policy.allowed = Some(vec![
        crate::policy::Cidr::try_from("10.0.0.0/8".to_owned()).unwrap()
    ]);
    let (s, p) = catalog_from(&[container("web", "apps", "172.31.0.2")], &o);
    assert!(s.is_empty());
    assert_eq!(p[0].refused, Some(Refusal::NotAllowed), "{p:?}");
}
