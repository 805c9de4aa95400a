//! The datagram-stream `Decoder` (QUIC over TCP) fed arbitrary bytes in
//! arbitrary pieces, with and without a valid preamble: never a panic,
//! never an empty or oversized datagram, and the preamble, frames and bytes
//! left add up to the bytes pushed.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use netmux_common::proto::stream_framing::{Decoder, MAX_DATAGRAM, PREAMBLE};

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let mut input = Vec::new();
    if step & 1 == 1 {
        input.extend_from_slice(&PREAMBLE);
    }
    input.extend_from_slice(rest);
    let step = usize::from(step >> 1).max(1);
    let mut dec = Decoder::default();
    let mut buf = BytesMut::new();
    let mut consumed = 0;
    for chunk in input.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match dec.decode(&mut buf) {
                Ok(Some(d)) => {
                    assert!(!d.is_empty() && d.len() <= MAX_DATAGRAM);
                    consumed += before - buf.len();
                }
                Ok(None) => {
                    consumed += before - buf.len();
                    break;
                }
                Err(_) => return,
            }
        }
    }
    assert_eq!(consumed + buf.len(), input.len());
});
