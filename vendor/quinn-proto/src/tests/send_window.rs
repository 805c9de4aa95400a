//! netmux: the send window bounded at the congestion window plus a margin
//! (`TransportConfig::send_window_above_congestion_window`, change 8 in
//! README.netmux.md).

use super::*;

const MARGIN: u64 = 1000;

fn client_with_margin(margin: Option<u64>) -> ClientConfig {
    let mut cfg = client_config();
    let mut transport = TransportConfig::default();
    transport.send_window_above_congestion_window(margin);
    cfg.transport = Arc::new(transport);
    cfg
}

/// Writes `len` bytes or until the stream refuses more; the bytes accepted.
fn write_all_accepted(pair: &mut Pair, ch: ConnectionHandle, s: StreamId, len: usize) -> u64 {
    let data = vec![0u8; len];
    let mut accepted = 0;
    while accepted < len {
        match pair.client_send(ch, s).write(&data[accepted..]) {
            Ok(n) => accepted += n,
            Err(WriteError::Blocked) => break,
            Err(e) => panic!("write failed: {e:?}"),
        }
    }
    accepted as u64
}

#[test]
fn writes_stop_at_the_congestion_window_plus_the_margin() {
    let _guard = subscribe();
    let mut pair = Pair::default();
    let (client_ch, server_ch) = pair.connect_with(client_with_margin(Some(MARGIN)));
    let cwnd = pair.client_conn_mut(client_ch).stats().path.cwnd;
    let s = pair.client_streams(client_ch).open(Dir::Uni).unwrap();
    // Far below the peer's flow control limits and the fixed send window.
    assert_eq!(
        write_all_accepted(&mut pair, client_ch, s, 1 << 20),
        cwnd + MARGIN
    );

    // Sent, acknowledged: slow start grew the congestion window, the send
    // window grew with it, and the blocked writer was told.
    pair.drive();
    let grown = pair.client_conn_mut(client_ch).stats().path.cwnd;
    assert!(grown > cwnd, "congestion window {cwnd} -> {grown}");
    let mut writable = false;
    while let Some(event) = pair.client_conn_mut(client_ch).poll() {
        writable |= matches!(event, Event::Stream(StreamEvent::Writable { id }) if id == s);
    }
    assert!(writable, "the blocked stream was not woken");
    assert_eq!(
        write_all_accepted(&mut pair, client_ch, s, 1 << 20),
        grown + MARGIN
    );

    // The receiver got every byte accepted, in order.
    pair.client_send(client_ch, s).finish().unwrap();
    pair.drive();
    let expected = cwnd + MARGIN + grown + MARGIN;
    let server_s = pair.server_streams(server_ch).accept(Dir::Uni).unwrap();
    let mut recv = pair.server_recv(server_ch, server_s);
    let mut chunks = recv.read(true).unwrap();
    let mut received = 0u64;
    while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
        assert_eq!(chunk.offset, received);
        received += chunk.bytes.len() as u64;
    }
    let _ = chunks.finalize();
    assert_eq!(received, expected);
}

#[test]
fn a_smaller_configured_send_window_still_wins() {
    let _guard = subscribe();
    let mut pair = Pair::default();
    let (client_ch, _) = pair.connect_with(client_with_margin(Some(MARGIN)));
    pair.client_conn_mut(client_ch).set_send_window(100);
    let s = pair.client_streams(client_ch).open(Dir::Uni).unwrap();
    assert_eq!(write_all_accepted(&mut pair, client_ch, s, 1 << 20), 100);
    // Acknowledgements recompute the window from the configured 100 bytes.
    pair.drive();
    assert_eq!(write_all_accepted(&mut pair, client_ch, s, 1 << 20), 100);
}

#[test]
fn without_a_margin_the_window_ignores_the_congestion_window() {
    let _guard = subscribe();
    let mut pair = Pair::default();
    let (client_ch, _) = pair.connect_with(client_with_margin(None));
    let cwnd = pair.client_conn_mut(client_ch).stats().path.cwnd;
    let s = pair.client_streams(client_ch).open(Dir::Uni).unwrap();
    // Upstream's behaviour: the peer's stream receive window is the limit.
    let accepted = write_all_accepted(&mut pair, client_ch, s, 4 << 20);
    assert!(
        accepted > 10 * cwnd,
        "{accepted} bytes for a {cwnd}-byte congestion window"
    );
}
