//! `Datagram::decode` (every QUIC datagram a peer sends, `proto::datagram`)
//! on arbitrary bytes: never a panic; what decodes re-encodes to exactly
//! the input, with its length and port as decoded.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use netmux_common::proto::datagram::Datagram;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Datagram::decode(data) {
        if let Datagram::Open { port, .. } = d {
            assert_ne!(port, 0);
        }
        assert_eq!(d.len(), data.len());
        let mut out = BytesMut::new();
        d.encode(&mut out);
        assert_eq!(&out[..], data);
    }
});
