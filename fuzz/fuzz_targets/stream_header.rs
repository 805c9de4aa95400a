//! `StreamHeader::decode` and `OpenResult::decode` on arbitrary bytes:
//! never a panic; a decoded header re-encodes to exactly the bytes used.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use netmux_common::proto::stream::{OpenResult, StreamHeader, MAX_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok((header, used)) = StreamHeader::decode(data) {
        assert!(used <= data.len() && used <= MAX_HEADER_LEN);
        let mut out = BytesMut::new();
        header.encode(&mut out);
        assert_eq!(&out[..], &data[..used]);
    }
    if let Ok((result, used)) = OpenResult::decode(data) {
        assert_eq!(used, OpenResult::LEN);
        let mut out = BytesMut::new();
        result.encode(&mut out);
        assert_eq!(&out[..], &data[..used]);
    }
});
