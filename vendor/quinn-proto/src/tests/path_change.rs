//! netmux: a client that moves to a network with smaller packets, with and
//! without `Connection::path_changed` (upstream's API; netmuxd calls it,
//! through the vendored quinn's `Connection::path_changed`, whenever it
//! moves its session to a new socket: vendor/quinn/README.netmux.md,
//! change 5); and the server's end when the client keeps its IPv4 address
//! (change 9 in README.netmux.md).

use super::*;

/// The largest UDP payload of a 9,000-byte IPv6 path, as netmux searches.
const JUMBO: u16 = 8952;

/// A pair whose endpoints accept and search for jumbo packets, connected
/// over a link that carries them (over IPv6, or IPv4 with `v4`).
fn jumbo_pair(v4: bool) -> (Pair, ConnectionHandle, ConnectionHandle) {
    let mut transport = TransportConfig::default();
    let mut mtud = MtuDiscoveryConfig::default();
    mtud.upper_bound(JUMBO);
    transport.mtu_discovery_config(Some(mtud));
    let transport = Arc::new(transport);
    let endpoint = EndpointConfig {
        max_udp_payload_size: VarInt::from(JUMBO),
        ..EndpointConfig::default()
    };
    let mut server = server_config();
    server.transport = transport.clone();
    let mut client = client_config();
    client.transport = transport;
    let mut pair = Pair::new(Arc::new(endpoint), server);
    pair.mtu = usize::from(JUMBO);
    if v4 {
        pair.client.addr.set_ip(Ipv4Addr::LOCALHOST.into());
        pair.server.addr.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    let (client_ch, server_ch) = pair.connect_with(client);
    pair.drive();
    let found = pair.client_conn_mut(client_ch).path_mtu();
    assert!(found > 8000, "the jumbo path was not found: {found}");
    (pair, client_ch, server_ch)
}

/// The client moves onto a link carrying UDP payloads of `link` bytes, at
/// `addr`, and rebinds as quinn's `Endpoint::rebind` does for every
/// connection; with `path_changed`, as netmuxd then does.
fn move_client(
    pair: &mut Pair,
    client_ch: ConnectionHandle,
    link: usize,
    addr: SocketAddr,
    path_changed: bool,
) {
    pair.mtu = link;
    pair.client.addr = addr;
    pair.client_conn_mut(client_ch).local_address_changed();
    if path_changed {
        let now = pair.time;
        pair.client_conn_mut(client_ch).path_changed(now);
    }
}

/// Writes all of `payload` (which the peer's windows hold) and finishes.
fn write_all(mut send: SendStream<'_>, payload: &[u8]) {
    let mut sent = 0;
    while sent < payload.len() {
        sent += send.write(&payload[sent..]).unwrap();
    }
    send.finish().unwrap();
}

/// The client moves to a network whose packets carry 1,452 bytes, from a
/// new address (a laptop from a data centre's network to an office's),
/// optionally telling its connection that the path changed; then it sends
/// 256 KiB. Returns the client's path statistics.
fn move_and_send(path_changed: bool) -> (Pair, ConnectionHandle, PathStats) {
    let (mut pair, client_ch, server_ch) = jumbo_pair(false);
    let addr = SocketAddr::new(
        Ipv6Addr::LOCALHOST.into(),
        CLIENT_PORTS.lock().unwrap().next().unwrap(),
    );
    move_client(&mut pair, client_ch, 1452, addr, path_changed);
    let payload = vec![7u8; 256 * 1024];
    let s = pair.client_streams(client_ch).open(Dir::Uni).unwrap();
    write_all(pair.client_send(client_ch, s), &payload);
    assert!(!pair.drive_bounded(), "the connections never went idle");
    let got = stream_chunks(pair.server_recv(server_ch, s));
    assert_eq!(got.len(), payload.len(), "every byte arrived");
    assert!(got.iter().all(|b| *b == 7));
    let stats = pair.client_conn_mut(client_ch).stats().path;
    (pair, client_ch, stats)
}

#[test]
fn a_client_that_says_its_path_changed_finds_the_smaller_packets_at_once() {
    let _guard = subscribe();
    let (mut pair, client_ch, stats) = move_and_send(true);
    // Back to the initial MTU, then discovery climbed to what the new link
    // carries; no packet of data was sent too large for it.
    assert_eq!(stats.black_holes_detected, 0, "{stats:?}");
    assert_eq!(stats.lost_packets, 0, "{stats:?}");
    // (The binary search stops within 20 bytes of the link's limit.)
    let mtu = pair.client_conn_mut(client_ch).path_mtu();
    assert!((1432..=1452).contains(&mtu), "{mtu}");
}

#[test]
fn a_client_that_does_not_loses_its_large_packets_to_a_black_hole() {
    let _guard = subscribe();
    // Upstream's behaviour without the call: the client keeps the jumbo
    // MTU (migration resets the path only at the end that sees a new
    // address), its large packets are lost until the black hole detector
    // falls back to the minimum MTU, where it stays for the cooldown.
    let (mut pair, client_ch, stats) = move_and_send(false);
    assert_eq!(stats.black_holes_detected, 1, "{stats:?}");
    assert!(stats.lost_packets >= 3, "{stats:?}");
    assert_eq!(pair.client_conn_mut(client_ch).path_mtu(), 1200);
}

#[test]
fn the_server_restarts_discovery_when_the_client_keeps_its_ipv4_address() {
    let _guard = subscribe();
    // The client's network now carries 1,472-byte UDP payloads (an IPv4
    // MTU of 1,500); it rebinds to a new port on the same address, as
    // netmuxd does after a change, and the server sends 256 KiB.
    let (mut pair, client_ch, server_ch) = jumbo_pair(true);
    assert!(pair.server_conn_mut(server_ch).path_mtu() > 8000);
    let mut addr = pair.client.addr;
    addr.set_port(CLIENT_PORTS.lock().unwrap().next().unwrap());
    move_client(&mut pair, client_ch, 1472, addr, true);
    pair.drive();
    assert_eq!(
        pair.server_conn_mut(server_ch).remote_address(),
        pair.client.addr,
        "the server migrated"
    );
    let payload = vec![9u8; 256 * 1024];
    let s = pair.server_streams(server_ch).open(Dir::Uni).unwrap();
    write_all(pair.server_send(server_ch, s), &payload);
    assert!(!pair.drive_bounded(), "the connections never went idle");
    let got = stream_chunks(pair.client_recv(client_ch, s));
    assert_eq!(got.len(), payload.len(), "every byte arrived");
    // The server's end of the path went back to the initial MTU and
    // searched again (upstream kept 8,952 for a NAT rebinding and lost its
    // packets until its black hole detector fell back to 1,200).
    let stats = pair.server_conn_mut(server_ch).stats().path;
    assert_eq!(stats.black_holes_detected, 0, "{stats:?}");
    assert_eq!(stats.lost_packets, 0, "{stats:?}");
    let mtu = pair.server_conn_mut(server_ch).path_mtu();
    assert!((1452..=1472).contains(&mtu), "{mtu}");
}
