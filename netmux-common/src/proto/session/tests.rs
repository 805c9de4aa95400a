use super::*;
use crate::proto::catalog::tests::svc;
use crate::proto::catalog::ServiceId;
use crate::proto::hello::Credential;

/// Moves every queued byte between the two sessions, in small pieces.
fn pump(client: &mut ClientSession, server: &mut ServerSession) -> Result<(), SessionError> {
    loop {
        let mut moved = false;
        while let Some(b) = client.poll_transmit() {
            for chunk in b.chunks(5) {
                server.handle_input(chunk)?;
            }
            moved = true;
        }
        while let Some(b) = server.poll_transmit() {
            for chunk in b.chunks(5) {
                client.handle_input(chunk)?;
            }
            moved = true;
        }
        if !moved {
            return Ok(());
        }
    }
}

fn catalog(ids: &[u32]) -> Catalog {
    ids.iter()
        .map(|&i| (ServiceId(i), svc(i, &format!("svc{i}"))))
        .collect()
}

#[test]
fn an_entry_over_a_frame_is_left_out_and_reported_never_truncated() {
    let mut client = ClientSession::new(&Hello::new("me", Credential::None));
    let mut server = ServerSession::new(Instant::now(), Duration::from_secs(5));
    pump(&mut client, &mut server).unwrap();
    assert!(matches!(server.poll_event(), Some(ServerEvent::Hello(_))));
    let mut big = svc(2, "big");
    big.aliases = (0..400)
        .map(|i| {
            format!(
                "pod-{i:03}.{0}.{0}.{0}.big.ns.svc.cluster.local",
                "x".repeat(50)
            )
        })
        .collect();
    let mut cat = catalog(&[1]);
    cat.insert(ServiceId(2), big.clone());
    server.accept("srv", &cat);
    assert_eq!(server.take_oversized(), [big.key()]);
    pump(&mut client, &mut server).unwrap();
    assert_eq!(client.catalog(), &catalog(&[1]));
    // The reply named it, for the daemon's status.
    assert_eq!(
        client.left_out(),
        &crate::proto::left_out::LeftOut {
            total: 1,
            listed: vec![big.key()]
        }
    );
    // Again on a later change; a smaller version goes through.
    cat.insert(ServiceId(3), svc(3, "svc3"));
    server.update_catalog(&cat);
    assert!(server.take_oversized().is_empty());
    let mut fits = big.clone();
    fits.aliases.truncate(3);
    cat.insert(ServiceId(2), fits.clone());
    server.update_catalog(&cat);
    assert!(server.take_oversized().is_empty());
    pump(&mut client, &mut server).unwrap();
    assert_eq!(client.catalog().get(&ServiceId(2)), Some(&fits));
    // Growing past the frame again removes it from the daemon: no
    // stale version is kept.
    cat.insert(ServiceId(2), big.clone());
    server.update_catalog(&cat);
    assert_eq!(server.take_oversized(), [big.key()]);
    pump(&mut client, &mut server).unwrap();
    assert_eq!(client.catalog().get(&ServiceId(2)), None);
    assert_eq!(client.catalog().len(), 2);
}

#[test]
fn cluster_ranges_announced_in_the_hello_reach_the_client() {
    let mut client = ClientSession::new(&Hello::new("me", Credential::None));
    let mut server = ServerSession::new(Instant::now(), Duration::from_secs(5));
    pump(&mut client, &mut server).unwrap();
    assert!(matches!(server.poll_event(), Some(ServerEvent::Hello(_))));
    let ext = crate::proto::cidr::ReplyExtensions {
        cluster_ranges: vec!["10.96.0.0/12".parse().unwrap()],
        ..Default::default()
    };
    server.accept_with("srv", &catalog(&[1]), &ext);
    pump(&mut client, &mut server).unwrap();
    assert_eq!(client.cluster_ranges(), &ext.cluster_ranges[..]);
    assert_eq!(client.catalog(), &catalog(&[1]));
}

#[test]
fn accepted_session_syncs_then_follows_changes() {
    let now = Instant::now();
    let mut client = ClientSession::new(&Hello::new("me", Credential::Bearer("t".into())));
    let mut server = ServerSession::new(now, Duration::from_secs(5));
    pump(&mut client, &mut server).unwrap();
    let Some(ServerEvent::Hello(h)) = server.poll_event() else {
        panic!("no hello event")
    };
    assert_eq!(h.credential, Credential::Bearer("t".into()));
    server.accept("srv", &catalog(&[1, 2]));
    pump(&mut client, &mut server).unwrap();
    assert!(matches!(
        client.poll_event(),
        Some(ClientEvent::Accepted { .. })
    ));
    assert_eq!(client.poll_event(), Some(ClientEvent::CatalogReplaced));
    assert_eq!(client.catalog(), &catalog(&[1, 2]));

    server.update_catalog(&catalog(&[2, 3]));
    pump(&mut client, &mut server).unwrap();
    assert_eq!(client.catalog(), &catalog(&[2, 3]));
    assert_eq!(
        client.poll_event(),
        Some(ClientEvent::Changed(CatalogEvent::Remove(ServiceId(1))))
    );

    client.ping(9);
    pump(&mut client, &mut server).unwrap();
    assert!(matches!(client.poll_event(), Some(ClientEvent::Changed(_))));
    assert_eq!(client.poll_event(), Some(ClientEvent::Pong(9)));
}

#[test]
fn claims_are_answered_by_request_id() {
    let mut client = ClientSession::new(&Hello::new("me", Credential::None));
    let mut server = ServerSession::new(Instant::now(), Duration::from_secs(5));
    pump(&mut client, &mut server).unwrap();
    server.poll_event();
    server.accept("srv", &Catalog::new());
    pump(&mut client, &mut server).unwrap();
    while client.poll_event().is_some() {}
    let a = client.claim("ns/web");
    let b = client.expose("debug", 8080, 3000);
    client.release("ns/web");
    pump(&mut client, &mut server).unwrap();
    assert_eq!(
        server.poll_event(),
        Some(ServerEvent::Claim {
            request: a,
            service: "ns/web".into()
        })
    );
    assert_eq!(
        server.poll_event(),
        Some(ServerEvent::Expose {
            request: b,
            name: "debug".into(),
            port: 8080,
            target_port: 3000
        })
    );
    assert_eq!(
        server.poll_event(),
        Some(ServerEvent::Release {
            service: "ns/web".into()
        })
    );
    server.claim_result(a, None);
    server.claim_result(b, Some("held by bob@box".into()));
    pump(&mut client, &mut server).unwrap();
    assert_eq!(
        client.poll_event(),
        Some(ClientEvent::ClaimResult {
            request: a,
            error: None
        })
    );
    assert_eq!(
        client.poll_event(),
        Some(ClientEvent::ClaimResult {
            request: b,
            error: Some("held by bob@box".into())
        })
    );
}

#[test]
fn refusal_reaches_the_client_with_its_message() {
    let mut client = ClientSession::new(&Hello::new("me", Credential::None));
    let mut server = ServerSession::new(Instant::now(), Duration::from_secs(5));
    pump(&mut client, &mut server).unwrap();
    assert!(server.poll_event().is_some());
    let err = server.refuse(HelloStatus::Unauthenticated, "bad token");
    assert_eq!(err.close_code(), error_code::REFUSED);
    let result = pump(&mut client, &mut server);
    assert_eq!(
        result,
        Err(SessionError::Refused {
            status: HelloStatus::Unauthenticated,
            message: "bad token".into()
        })
    );
}

#[test]
fn version_mismatch_is_answered_and_reported() {
    let mut hello = Hello::new("me", Credential::None);
    hello.version = PROTOCOL_VERSION + 1;
    let mut client = ClientSession::new(&hello);
    let mut server = ServerSession::new(Instant::now(), Duration::from_secs(5));
    let bytes = client.poll_transmit().unwrap();
    let err = server.handle_input(&bytes).unwrap_err();
    assert!(matches!(
        err,
        SessionError::Hello(HelloError::VersionMismatch { .. })
    ));
    let reply = server.poll_transmit().unwrap();
    let err = client.handle_input(&reply).unwrap_err();
    assert!(matches!(
        err,
        SessionError::Refused {
            status: HelloStatus::VersionMismatch,
            ..
        }
    ));
}

#[test]
fn client_sync_deadline() {
    let now = Instant::now();
    let t = Duration::from_secs(10);
    let mut client = ClientSession::new(&Hello::new("me", Credential::None));
    assert_eq!(client.poll_timeout(), None, "no deadline unless asked");
    client.expect_sync_within(now, t);
    assert_eq!(client.poll_timeout(), Some(now + t));
    let just_before = now + t - Duration::from_millis(1);
    assert!(client.handle_timeout(just_before).is_ok());
    let e = client.handle_timeout(now + t).unwrap_err();
    assert!(matches!(e, SessionError::SyncTimeout(d) if d == t));
    assert_eq!(e.close_code(), error_code::HELLO_TIMEOUT);
    assert_eq!(e.to_string(), "no catalog from the server within 10s");
    assert_eq!(client.poll_timeout(), None, "failed: no deadline");

    // Synced in time: the deadline is gone.
    let mut client = ClientSession::new(&Hello::new("me", Credential::None));
    client.expect_sync_within(now, t);
    let mut server = ServerSession::new(now, Duration::from_secs(5));
    pump(&mut client, &mut server).unwrap();
    assert!(matches!(server.poll_event(), Some(ServerEvent::Hello(_))));
    server.accept("srv", &catalog(&[1]));
    pump(&mut client, &mut server).unwrap();
    assert!(client.is_synced());
    assert_eq!(client.poll_timeout(), None);
    assert!(client.handle_timeout(now + 2 * t).is_ok());
}

#[test]
fn hello_deadline() {
    let now = Instant::now();
    let mut server = ServerSession::new(now, Duration::from_secs(5));
    assert_eq!(server.poll_timeout(), Some(now + Duration::from_secs(5)));
    assert!(server.handle_timeout(now + Duration::from_secs(4)).is_ok());
    assert!(matches!(
        server.handle_timeout(now + Duration::from_secs(5)),
        Err(SessionError::HelloTimeout(_))
    ));
}

#[test]
fn garbage_after_hello_is_a_protocol_violation() {
    let mut client = ClientSession::new(&Hello::new("me", Credential::None));
    let mut server = ServerSession::new(Instant::now(), Duration::from_secs(5));
    pump(&mut client, &mut server).unwrap();
    server.poll_event();
    server.accept("srv", &Catalog::new());
    assert!(server
        .handle_input(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .is_err());
    assert!(!server.is_established());
}
