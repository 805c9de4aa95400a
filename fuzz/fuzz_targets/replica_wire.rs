//! What one server replica sends another (`proto::replica`) fed to a
//! `Reader` in arbitrary pieces: never a panic. The first byte picks the
//! piece size, which message the first frame is read as (each next frame
//! is read as the next of `ToHolder`, `ToMember`, `Forward`), and whether
//! the rest is the stream's bytes as they come or one JSON payload the
//! target frames itself (so the fuzzer reaches the JSON decoders without
//! first finding a length prefix that matches). What
//! decodes goes through `check_register` (a `ToHolder`), re-encodes and
//! decodes again to an equal value. A frame that does not decode ends the
//! stream, as it closes the peer's connection.
#![no_main]

use std::fmt::Debug;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use netmux_common::proto::frame::{self, MAX_FRAME_LEN};
use netmux_common::proto::replica::{
    check_register, to_bytes, Forward, Reader, ToHolder, ToMember, WireError,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The next message as `T`, checked to survive a round trip.
fn next<T>(r: &mut Reader) -> Result<Option<T>, WireError>
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let msg = r.message::<T>()?;
    if let Some(m) = &msg {
        round_trip(m);
    }
    Ok(msg)
}

fn round_trip<T>(msg: &T)
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    match to_bytes(msg) {
        Ok(wire) => {
            let mut r = Reader::new();
            r.push(&wire);
            let back = r.message::<T>().expect("a re-encoded message decodes");
            assert_eq!(back.as_ref(), Some(msg));
            assert!(r.rest().is_empty(), "one frame, nothing behind");
        }
        // Only a message whose JSON grew past the frame limit (a missing
        // mirror `header` is written as `null`) may fail to encode.
        Err(e) => {
            let len = serde_json::to_vec(msg).expect("serializes").len();
            assert!(len > MAX_FRAME_LEN, "{msg:?} did not encode: {e}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let self_framed = ctl & 1 == 1;
    let step = (usize::from(ctl >> 1) / 3).max(1);
    let mut kind = (ctl >> 1) % 3;
    let mut input = BytesMut::new();
    if self_framed {
        if frame::encode(rest, &mut input).is_err() {
            return;
        }
    } else {
        input.extend_from_slice(rest);
    }
    let mut reader = Reader::new();
    'feed: for chunk in input.chunks(step) {
        reader.push(chunk);
        loop {
            let read = match kind {
                0 => next::<ToHolder>(&mut reader).map(|m| {
                    m.map(|m| {
                        let _ = check_register(&m);
                    })
                }),
                1 => next::<ToMember>(&mut reader).map(|m| m.map(drop)),
                _ => next::<Forward>(&mut reader).map(|m| m.map(drop)),
            };
            match read {
                Ok(Some(())) => kind = (kind + 1) % 3,
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    let _ = reader.rest();
});
