//! `Hello::decode` and `HelloReply::decode` on arbitrary bytes: never a
//! panic; what decodes survives a re-encode unchanged.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use netmux_common::proto::hello::{Hello, HelloReply};

fuzz_target!(|data: &[u8]| {
    if let Ok((hello, used)) = Hello::decode(data) {
        assert!(used <= data.len());
        let mut out = BytesMut::new();
        hello.encode(&mut out);
        let (again, n) = Hello::decode(&out).expect("re-encoded hello decodes");
        assert_eq!((again, n), (hello, out.len()));
    }
    if let Ok((reply, used)) = HelloReply::decode(data) {
        assert!(used <= data.len());
        let mut out = BytesMut::new();
        reply.encode(&mut out);
        let (again, _) = HelloReply::decode(&out).expect("re-encoded reply decodes");
        assert_eq!(again, reply);
    }
});
