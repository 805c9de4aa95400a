//! Scenario 11 (issue 17): UDP request/response latency. One UDP socket
//! sends a numbered 64-byte datagram at a fixed rate to `nx-echo udp` in the
//! cluster and times each echo; p50/p95/p99 next to direct, on lan and wan.
//! netmux carries it as QUIC datagrams; the TCP-only peers have no UDP.

use std::time::Duration;

use anyhow::Context;

use super::link::Profile;
use super::scenarios::{fmt_ratio, measure, probe, table, ws_exec, Meta};
use super::world::{Target, World};
use super::{loadavg, Outcome, Peer, Settings, Table, Verdict};

/// Datagrams per second: fast enough for a few thousand samples per run,
/// slow enough that the probe never queues behind its own traffic.
const RATE: u32 = 200;
/// Payload bytes of each datagram.
const SIZE: usize = 64;

/// One table for `profile` (lan or wan).
pub fn scenario11(w: &World<'_>, s: &Settings, profile: Profile) -> anyhow::Result<Table> {
    let load = loadavg();
    let p = probe()?;
    let secs = s.reqlat_secs;
    // The echo backend is the same for both peers; "usable" only checks the
    // peer itself (the TCP echo target stands in for the backend's side).
    let mut rows = measure(
        w,
        &[Peer::Direct, Peer::Netmux],
        Target::Echo,
        s.reps,
        |w, peer| {
            let addr = w
                .udp_echo_addr(peer)
                .with_context(|| format!("{} has no UDP echo address", peer.label()))?;
            let args = vec![
                "udp-echo".into(),
                "--addr".into(),
                addr.to_string(),
                "--seconds".into(),
                secs.to_string(),
                "--rate".into(),
                RATE.to_string(),
                "--size".into(),
                SIZE.to_string(),
            ];
            let out = ws_exec(w, &p, &args, Duration::from_secs(secs + 60))?;
            let v: serde_json::Value = serde_json::from_str(out.trim()).context("nx-probe JSON")?;
            let us = |k: &str| v[k].as_f64().with_context(|| format!("no {k}"));
            Ok((
                us("p95_us")?,
                vec![
                    format!("{:.0}", us("p50_us")?),
                    format!("{:.0}", us("p99_us")?),
                    format!("{}/{}", v["lost"], v["sent"]),
                ],
            ))
        },
    );
    for r in &mut rows {
        if r.peer == Peer::Netmux && w.udp_echo_addr(Peer::Netmux).is_none() {
            r.outcome = Outcome::Skipped("netmux has no UDP echo service".into());
        }
    }
    let (id, title) = match profile {
        Profile::Wan => (
            "s11-udp-echo-wan",
            "UDP echo, 64-byte datagrams at a fixed rate: p95 round trip",
        ),
        _ => (
            "s11-udp-echo-lan",
            "UDP echo, 64-byte datagrams at a fixed rate: p95 round trip",
        ),
    };
    let mut t = table(
        Meta {
            id,
            scenario: 11,
            title,
            profile,
            unit: "µs (p95)",
            higher_better: false,
        },
        w,
        load,
        rows,
        &["p50 µs (last rep)", "p99 µs (last rep)", "lost (last rep)"],
        vec![format!(
            "nx-probe udp-echo --addr ADDR:9001 --seconds {secs} --rate {RATE} --size {SIZE} \
             (one socket; server `nx-echo udp` in the cluster; an echo not back within 1 s is lost)"
        )],
    );
    t.notes.push(
        "Only direct and netmux carry UDP among the peers (netmux: QUIC datagrams, one flow)."
            .into(),
    );
    Ok(t)
}

/// Targets: p95 ≤ direct + 1 ms on lan, ≤ 1.05× direct on wan.
pub fn verdicts(t: &Table) -> Vec<Verdict> {
    let nm = t.median(Peer::Netmux);
    let direct = t.median(Peer::Direct);
    match t.id.as_str() {
        "s11-udp-echo-lan" => {
            let d = nm.zip(direct).map(|(n, d)| n - d);
            vec![t.verdict(
                "UDP echo p95 ≤ direct + 1 ms (lan)",
                d.map(|d| format!("direct {:+.0} µs", d))
                    .unwrap_or("n/a".into()),
                d.map(|d| d <= 1000.0),
            )]
        }
        "s11-udp-echo-wan" => {
            let r = super::scenarios::ratio(nm, direct);
            vec![t.verdict(
                "UDP echo p95 ≤ 1.05× direct (wan)",
                format!("{} direct", fmt_ratio(r)),
                r.map(|r| r <= 1.05),
            )]
        }
        _ => Vec::new(),
    }
}
