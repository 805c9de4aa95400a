//! Property tests of the wire codec: round trips with arbitrary valid
//! values, truncated input (always "need more" or an error, never a wrong
//! value), and random garbage (never a panic).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use netmux_common::proto::catalog::{
    Catalog, Direction, Protocol, Service, ServiceId, ServicePort,
};
use netmux_common::proto::codec::DecodeError;
use netmux_common::proto::control::{self, ClientMessage, ServerMessage};
use netmux_common::proto::frame::{self, FrameDecoder};
use netmux_common::proto::hello::{Credential, Hello, HelloError, HelloReply, HelloStatus};
use netmux_common::proto::session::{ClientSession, ServerEvent, ServerSession};
use netmux_common::proto::stream::{OpenResult, StreamHeader};
use netmux_common::proto::PROTOCOL_VERSION;
use proptest::prelude::*;

fn credential() -> impl Strategy<Value = Credential> {
    prop_oneof![
        Just(Credential::None),
        ".{0,80}".prop_map(Credential::Bearer),
    ]
}

fn hello() -> impl Strategy<Value = Hello> {
    (".{0,80}", credential()).prop_map(|(client_name, credential)| Hello {
        version: PROTOCOL_VERSION,
        client_name,
        credential,
    })
}

fn hello_status() -> impl Strategy<Value = HelloStatus> {
    prop_oneof![
        Just(HelloStatus::Accepted),
        Just(HelloStatus::VersionMismatch),
        Just(HelloStatus::Unauthenticated),
        Just(HelloStatus::Malformed),
    ]
}

fn hello_reply() -> impl Strategy<Value = HelloReply> {
    (any::<u16>(), hello_status(), ".{0,200}").prop_map(|(version, status, message)| HelloReply {
        version,
        status,
        message,
    })
}

fn stream_header() -> impl Strategy<Value = StreamHeader> {
    (any::<u32>(), 1..=u16::MAX).prop_map(|(id, port)| StreamHeader::Connect {
        service: ServiceId(id),
        port,
    })
}

fn label() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,20}[a-z0-9])?"
}

fn dns_name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..5).prop_map(|labels| labels.join("."))
}

fn ports() -> impl Strategy<Value = Vec<ServicePort>> {
    prop::collection::btree_map(
        // (port, is_udp): unique like the (port, protocol) pairs must be.
        (1..=u16::MAX, any::<bool>()),
        (1..=u16::MAX, prop::option::of(label())),
        1..5,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|((port, udp), (target_port, name))| ServicePort {
                name,
                port,
                target_port,
                protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
            })
            .collect()
    })
}

fn service() -> impl Strategy<Value = Service> {
    (
        any::<u32>(),
        label(),
        label(),
        prop::collection::vec(dns_name(), 0..3),
        prop::collection::vec(any::<IpAddr>(), 1..4),
        ports(),
        prop_oneof![Just(Direction::L2C), Just(Direction::C2L)],
    )
        .prop_map(
            |(id, name, namespace, aliases, addresses, ports, direction)| Service {
                id: ServiceId(id),
                name,
                namespace,
                aliases,
                addresses,
                ports,
                direction,
            },
        )
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        Just(ServerMessage::CatalogBegin),
        Just(ServerMessage::CatalogSynced),
        any::<u64>().prop_map(ServerMessage::Pong),
        any::<u32>().prop_map(|id| ServerMessage::Remove(ServiceId(id))),
        service().prop_map(ServerMessage::Upsert),
    ]
}

proptest! {
    #[test]
    fn hello_round_trips_and_every_prefix_is_incomplete(h in hello(), tail in prop::collection::vec(any::<u8>(), 0..8)) {
        let mut out = BytesMut::new();
        h.encode(&mut out);
        let len = out.len();
        for cut in 0..len {
            prop_assert_eq!(Hello::decode(&out[..cut]), Err(HelloError::UnexpectedEnd));
        }
        out.extend_from_slice(&tail);
        prop_assert_eq!(Hello::decode(&out), Ok((h, len)));
    }

    #[test]
    fn hello_reply_round_trips_and_every_prefix_is_incomplete(r in hello_reply()) {
        let mut out = BytesMut::new();
        r.encode(&mut out);
        for cut in 0..out.len() {
            prop_assert_eq!(HelloReply::decode(&out[..cut]), Err(HelloError::UnexpectedEnd));
        }
        prop_assert_eq!(HelloReply::decode(&out), Ok((r, out.len())));
    }

    #[test]
    fn stream_header_round_trips_and_every_prefix_is_incomplete(
        h in stream_header(),
        first_bytes in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut out = BytesMut::new();
        h.encode(&mut out);
        let len = out.len();
        for cut in 0..len {
            prop_assert_eq!(StreamHeader::decode(&out[..cut]), Err(DecodeError::UnexpectedEnd));
        }
        out.extend_from_slice(&first_bytes);
        prop_assert_eq!(StreamHeader::decode(&out), Ok((h, len)));
    }

    #[test]
    fn open_results_round_trip(i in 0..OpenResult::ALL.len(), tail in prop::collection::vec(any::<u8>(), 0..4)) {
        let r = OpenResult::ALL[i];
        let mut out = BytesMut::new();
        r.encode(&mut out);
        out.extend_from_slice(&tail);
        prop_assert_eq!(OpenResult::decode(&out), Ok((r, OpenResult::LEN)));
        prop_assert_eq!(OpenResult::decode(&[]), Err(DecodeError::UnexpectedEnd));
    }

    #[test]
    fn frames_round_trip_in_any_pieces_and_truncation_loses_only_the_tail(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..2048), 0..8),
        step in 1usize..600,
        cut_frac in 0.0f64..1.0,
    ) {
        let mut out = BytesMut::new();
        for p in &payloads {
            frame::encode(p, &mut out).unwrap();
        }
        // Whole stream, in pieces.
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for chunk in out.chunks(step) {
            dec.push(chunk);
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f.to_vec());
            }
        }
        prop_assert_eq!(&got, &payloads);
        prop_assert_eq!(dec.buffered(), 0);
        // A truncated stream yields a prefix of the frames, then "need more".
        let cut = (out.len() as f64 * cut_frac) as usize;
        let mut dec = FrameDecoder::new();
        dec.push(&out[..cut]);
        let mut got = Vec::new();
        while let Some(f) = dec.next_frame().unwrap() {
            got.push(f.to_vec());
        }
        prop_assert!(got.len() <= payloads.len());
        prop_assert_eq!(&got[..], &payloads[..got.len()]);
    }

    #[test]
    fn server_messages_round_trip_and_truncation_is_an_error(msg in server_message()) {
        if let ServerMessage::Upsert(svc) = &msg {
            prop_assert!(svc.validate().is_ok(), "strategy made an invalid service: {:?}", svc);
        }
        let bytes = control::encode(&msg).unwrap();
        prop_assert_eq!(ServerMessage::decode(&bytes), Ok(msg.clone()));
        for cut in 0..bytes.len() {
            prop_assert!(ServerMessage::decode(&bytes[..cut]).is_err(), "prefix {} of {:?} decoded", cut, msg);
        }
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(ServerMessage::decode(&longer).is_err(), "trailing byte accepted");
    }

    #[test]
    fn client_messages_round_trip(n in any::<u64>()) {
        let msg = ClientMessage::Ping(n);
        let bytes = control::encode(&msg).unwrap();
        prop_assert_eq!(ClientMessage::decode(&bytes), Ok(msg));
        for cut in 0..bytes.len() {
            prop_assert!(ClientMessage::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn garbage_never_panics_a_decoder(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Hello::decode(&data);
        let _ = HelloReply::decode(&data);
        let _ = StreamHeader::decode(&data);
        let _ = OpenResult::decode(&data);
        if let Ok(ServerMessage::Upsert(svc)) = ServerMessage::decode(&data) {
            prop_assert!(svc.validate().is_ok());
        }
        let _ = ClientMessage::decode(&data);
        let mut dec = FrameDecoder::new();
        dec.push(&data);
        while let Ok(Some(_)) = dec.next_frame() {}
    }

    #[test]
    fn garbage_never_panics_a_session(
        data in prop::collection::vec(any::<u8>(), 0..512),
        step in 1usize..64,
        valid_prefix in any::<bool>(),
    ) {
        let mut client = ClientSession::new(&Hello::new("p", Credential::Bearer("t".into())));
        let _ = client.poll_transmit();
        let mut input = BytesMut::new();
        if valid_prefix {
            HelloReply { version: PROTOCOL_VERSION, status: HelloStatus::Accepted, message: "s".into() }
                .encode(&mut input);
        }
        input.extend_from_slice(&data);
        for chunk in input.chunks(step) {
            if client.handle_input(chunk).is_err() {
                // Once failed, it stays failed.
                prop_assert!(client.handle_input(b"x").is_err());
                break;
            }
            while client.poll_event().is_some() {}
        }

        let now = Instant::now();
        let mut server = ServerSession::new(now, Duration::from_secs(5));
        if valid_prefix {
            let mut hello = BytesMut::new();
            Hello::new("p", Credential::None).encode(&mut hello);
            server.handle_input(&hello).unwrap();
            let Some(ServerEvent::Hello(_)) = server.poll_event() else {
                panic!("valid hello not reported");
            };
            server.accept("s", &Catalog::new());
            let _ = server.poll_transmit();
        }
        for chunk in data.chunks(step) {
            if server.handle_input(chunk).is_err() {
                prop_assert!(!server.is_established());
                break;
            }
            while let Some(ServerEvent::Hello(_)) = server.poll_event() {
                server.accept("s", &Catalog::new());
            }
            let _ = server.poll_transmit();
        }
    }
}
