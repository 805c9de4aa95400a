//! Arbitrary bytes into both control-stream state machines, in arbitrary
//! pieces: never a panic. The first byte picks the piece size and whether
//! a valid hello (reply) goes first, so the fuzzer also reaches the
//! established states.
#![no_main]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use netmux_common::proto::catalog::Catalog;
use netmux_common::proto::hello::{Credential, Hello, HelloReply, HelloStatus};
use netmux_common::proto::session::{ClientSession, ServerEvent, ServerSession};
use netmux_common::proto::PROTOCOL_VERSION;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(ctl >> 1).max(1);
    let valid_prefix = ctl & 1 == 1;

    // Daemon side.
    let mut client = ClientSession::new(&Hello::new("fuzz", Credential::Bearer("t".into())));
    let _ = client.poll_transmit();
    let mut input = BytesMut::new();
    if valid_prefix {
        HelloReply {
            version: PROTOCOL_VERSION,
            status: HelloStatus::Accepted,
            message: "fuzz".into(),
        }
        .encode(&mut input);
    }
    input.extend_from_slice(rest);
    for chunk in input.chunks(step) {
        let failed = client.handle_input(chunk).is_err();
        while client.poll_event().is_some() {}
        let _ = client.poll_transmit();
        if failed {
            break;
        }
    }
    let _ = client.catalog().len();

    // Server side.
    let now = Instant::now();
    let mut server = ServerSession::new(now, Duration::from_secs(5));
    let mut input = BytesMut::new();
    let prefix_len = if valid_prefix {
        Hello::new("fuzz", Credential::Bearer("t".into())).encode(&mut input);
        input.len()
    } else {
        0
    };
    if valid_prefix {
        // Deliver the hello alone so the session can be accepted first.
        let _ = server.handle_input(&input[..prefix_len]);
        while let Some(ServerEvent::Hello(_)) = server.poll_event() {
            server.accept("fuzz", &Catalog::new());
        }
    }
    for chunk in rest.chunks(step) {
        let failed = server.handle_input(chunk).is_err();
        while let Some(ServerEvent::Hello(_)) = server.poll_event() {
            server.accept("fuzz", &Catalog::new());
        }
        let _ = server.poll_transmit();
        if failed {
            break;
        }
    }
    let _ = server.handle_timeout(now + Duration::from_secs(6));
    let _ = server.poll_timeout();
});
