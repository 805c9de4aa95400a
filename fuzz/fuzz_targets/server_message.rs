//! `ServerMessage::decode` on arbitrary bytes: never a panic, and whatever
//! decodes is a valid catalog message that round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netmux_common::proto::control::{self, ServerMessage};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ServerMessage::decode(data) {
        if let ServerMessage::Upsert(svc) = &msg {
            assert!(svc.validate().is_ok());
        }
        let bytes = control::encode(&msg).expect("decoded message encodes");
        assert_eq!(ServerMessage::decode(&bytes).expect("round trip"), msg);
    }
});
