//! `ClientMessage::decode` on arbitrary bytes: never a panic; round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netmux_common::proto::control::{self, ClientMessage};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ClientMessage::decode(data) {
        let bytes = control::encode(&msg).expect("decoded message encodes");
        assert_eq!(ClientMessage::decode(&bytes).expect("round trip"), msg);
    }
});
