//! Bulk transfer: scenario 1 (one TCP stream on lan, with an optional
//! perf profile) and the transfer itself, which scenario 2 reuses under
//! loss.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use netmux_testbed::bin;

use super::link::Profile;
use super::perf::Perf;
use super::scenarios::{host_port, measure, table, ws_exec, Meta};
use super::world::{Target, World};
use super::{loadavg, Outcome, Peer, Row, Settings, Table};

/// Runs the iperf3 client with `args` (plus `-J`) for a `secs` test and
/// returns its JSON report, also when iperf3 exits with an error (the
/// report then says why). A server still "busy" with the previous test
/// (a tunnel that buffered a lot may still be draining it) is asked
/// again, up to ten times, two seconds apart; any other error fails.
pub(super) fn iperf3_json(
    w: &World<'_>,
    args: &[&str],
    secs: u64,
) -> anyhow::Result<serde_json::Value> {
    let args: Vec<String> = args
        .iter()
        .chain(&["-J"])
        .map(|s| (*s).to_owned())
        .collect();
    let mut tries = 0;
    loop {
        let out = match ws_exec(w, "iperf3", &args, Duration::from_secs(secs + 40)) {
            Ok(out) => out,
            Err(e) => match e.downcast_ref::<netmux_testbed::Error>() {
                Some(netmux_testbed::Error::Command { stdout, .. }) => stdout.clone(),
                _ => return Err(e),
            },
        };
        let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
        match v.get("error") {
            Some(e) if e.to_string().contains("busy") && tries < 10 => {
                tries += 1;
                std::thread::sleep(Duration::from_secs(2));
            }
            Some(e) => bail!("iperf3: {e}"),
            None => return Ok(v),
        }
    }
}

/// iperf3 client for `secs`: (Gbit/s received, bytes received).
pub(super) fn iperf(w: &World<'_>, addr: SocketAddr, secs: u64) -> anyhow::Result<(f64, f64)> {
    let (h, p) = host_port(addr);
    let v = iperf3_json(w, &["-c", &h, "-p", &p, "-t", &secs.to_string()], secs)?;
    let sum = &v["end"]["sum_received"];
    let bps = sum["bits_per_second"]
        .as_f64()
        .context("no bits_per_second")?;
    let bytes = sum["bytes"].as_f64().context("no bytes")?;
    Ok((bps / 1e9, bytes))
}

pub(super) fn quinn(w: &World<'_>, secs: u64) -> anyhow::Result<(f64, f64)> {
    let qp = bin("nx-quicperf")?.to_string_lossy().into_owned();
    let mut args = vec![
        "client".into(),
        "--connect".into(),
        w.addr(Peer::Quinn, Target::Iperf).to_string(),
        "--cert".into(),
        w.quinn_cert.to_string_lossy().into_owned(),
        "--seconds".into(),
        secs.to_string(),
    ];
    if let Some(cc) = std::env::var_os("NETMUX_BENCH_QUINN_CC") {
        // Experiment: the sender runs `--congestion netmux` (netmux's BBR)
        // instead of quinn's stock BBR.
        args.push("--congestion".into());
        args.push(cc.to_string_lossy().into_owned());
    }
    let out = ws_exec(w, &qp, &args, Duration::from_secs(secs + 40))?;
    let v: serde_json::Value = serde_json::from_str(out.trim()).context("nx-quicperf JSON")?;
    Ok((
        v["gbit_s"].as_f64().context("gbit_s")?,
        v["bytes"].as_f64().context("bytes")?,
    ))
}

/// Bulk through `peer`: (Gbit/s, bytes).
pub(super) fn bulk(w: &World<'_>, peer: Peer, secs: u64) -> anyhow::Result<(f64, f64)> {
    if peer == Peer::Quinn {
        quinn(w, secs)
    } else {
        iperf(w, w.addr(peer, Target::Iperf), secs)
    }
}

pub(super) const IPERF_CMD: &str =
    "iperf3 -c ADDR -p PORT -t {T} -J (one TCP stream; server `iperf3 -s` in the cluster)";
pub(super) const QUINN_CMD: &str = "nx-quicperf client --connect CLUSTER:7600 --cert CERT --seconds {T} (one QUIC stream, netmux-common transport settings, quinn's stock BBR)";

/// 1 (bulk) and 9 (CPU per GiB, from the same runs), on `profile`: lan,
/// jumbo (the same veth at MTU 9000) or wan (20 ms RTT); the targets are
/// lan's, the others are shown beside it. (Scenario 2 is bulk on lossy.)
pub(super) fn scenario1(
    w: &World<'_>,
    s: &Settings,
    profile: Profile,
) -> anyhow::Result<Vec<Table>> {
    // (chart id and title of scenario 1, of scenario 9, perf file name)
    let (id1, title1, id9, title9, perf_name) = match profile {
        Profile::Jumbo => (
            "s1-bulk-jumbo",
            "Bulk, one TCP stream, MTU 9000",
            "s9-cpu-per-gib-jumbo",
            "CPU seconds per GiB moved, MTU 9000 (tunnel processes, both ends; during scenario 1)",
            "bulk-jumbo",
        ),
        Profile::Lossy => (
            "s1-bulk-lossy",
            "Bulk, one TCP stream, 20 ms RTT, 1% loss",
            "s9-cpu-per-gib-lossy",
            "CPU seconds per GiB moved, 20 ms RTT, 1% loss (tunnel processes, both ends; during scenario 1)",
            "bulk-lossy",
        ),
        Profile::Wan => (
            "s1-bulk-wan",
            "Bulk, one TCP stream, 20 ms RTT",
            "s9-cpu-per-gib-wan",
            "CPU seconds per GiB moved, 20 ms RTT (tunnel processes, both ends; during scenario 1)",
            "bulk-wan",
        ),
        Profile::Lan => (
            "s1-bulk-lan",
            "Bulk, one TCP stream",
            "s9-cpu-per-gib",
            "CPU seconds per GiB moved (tunnel processes, both ends; during scenario 1)",
            "bulk",
        ),
    };
    let load = loadavg();
    let mut cpu: Vec<(Peer, Vec<f64>)> = Vec::new();
    let mut profiled = false;
    let rows = measure(w, &Peer::ALL, Target::Iperf, s.reps, |w, peer| {
        let names = World::cpu_names(peer);
        let before = w.cpu_seconds(names);
        let perf = match (&s.profile, peer) {
            (Some(dir), Peer::Netmux) if !profiled => {
                profiled = true;
                Perf::start(w, dir, perf_name)
            }
            _ => None,
        };
        let (gbit, bytes) = bulk(w, peer, s.bulk_secs)?;
        if let Some(p) = perf {
            p.finish();
        }
        let used = w.cpu_seconds(names) - before;
        let per_gib = used / (bytes / f64::from(1u32 << 30));
        match cpu.iter_mut().find(|(p, _)| *p == peer) {
            Some((_, v)) => v.push(per_gib),
            None => cpu.push((peer, vec![per_gib])),
        }
        Ok((gbit, Vec::new()))
    });
    let t = s.bulk_secs.to_string();
    let commands = vec![IPERF_CMD.replace("{T}", &t), QUINN_CMD.replace("{T}", &t)];
    let t1 = table(
        Meta {
            id: id1,
            scenario: 1,
            title: title1,
            profile,
            unit: "Gbit/s",
            higher_better: true,
        },
        w,
        load.clone(),
        rows.clone(),
        &[],
        commands.clone(),
    );
    let rows9: Vec<Row> = rows
        .iter()
        .filter(|r| r.peer != Peer::Direct)
        .map(|r| Row {
            peer: r.peer,
            label: None,
            outcome: match &r.outcome {
                Outcome::Values(_) => Outcome::Values(
                    cpu.iter()
                        .find(|(p, _)| *p == r.peer)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default(),
                ),
                other => other.clone(),
            },
            extra: vec![World::cpu_names(r.peer).join(" + ")],
        })
        .collect();
    let mut t9 = table(
        Meta {
            id: id9,
            scenario: 9,
            title: title9,
            profile,
            unit: "CPU s/GiB",
            higher_better: false,
        },
        w,
        load,
        rows9,
        &["processes counted"],
        commands,
    );
    t9.notes.push(
        "User + system time of the named processes in both namespaces (reaped children included), \
         read from /proc/PID/stat before and after each bulk run; iperf3 itself is not counted. \
         For raw quinn the sender and receiver are the endpoints themselves."
            .into(),
    );
    Ok(vec![t1, t9])
}
