//! `FrameDecoder` fed arbitrary bytes in arbitrary pieces: never a panic,
//! never a frame over the limit, and the bytes framed plus the bytes left
//! add up to the bytes pushed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netmux_common::proto::frame::{FrameDecoder, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut dec = FrameDecoder::new();
    let mut consumed = 0;
    for chunk in rest.chunks(step) {
        dec.push(chunk);
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= MAX_FRAME_LEN);
                    consumed += 4 + frame.len();
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    assert_eq!(consumed + dec.buffered(), rest.len());
});
