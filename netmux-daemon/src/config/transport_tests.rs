//! Unit tests of the endpoint transport settings (kept beside `config.rs`
//! so that file stays under ~800 lines).

use super::Transport;

#[derive(serde::Deserialize)]
struct T {
    transport: Transport,
}

#[test]
fn transport_words() {
    let t: T = toml::from_str("transport = \"tcp\"").expect("tcp");
    assert_eq!(t.transport, Transport::Tcp);
    let t: T = toml::from_str("transport = \"quic\"").expect("quic");
    assert_eq!(t.transport, Transport::Quic);
    let t: T = toml::from_str("transport = \"direct\"").expect("direct");
    assert_eq!(t.transport, Transport::Quic);
    let t: T = toml::from_str("transport = \"port-forward\"").expect("port-forward");
    assert_eq!(t.transport, Transport::PortForward);
    let t: T = toml::from_str("transport = \"auto\"").expect("auto");
    assert_eq!(t.transport, Transport::Auto);
    assert!(toml::from_str::<T>("transport = \"udp\"").is_err());
}
