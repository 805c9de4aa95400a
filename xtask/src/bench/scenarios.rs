//! The scenarios of issues 7, 9 and 17 (1-13). Each measures every peer, repetition-major
//! (rep 1 of every peer, then rep 2, ...) so that load drift from other
//! work on the machine spreads over all peers alike.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use netmux_testbed::{bin, Side};

use super::link::Profile;
use super::world::{Target, World};
use super::{bulk, requests, udp_echo};
use super::{loadavg, Outcome, Peer, Results, Row, Settings, Table, Verdict};

/// Runs the wanted scenarios in an order that switches the link rarely.
pub fn run_all(
    w: &mut World<'_>,
    s: &Settings,
    wanted: &dyn Fn(u8) -> bool,
    out: &mut Results,
) -> anyhow::Result<()> {
    let plan: [(u8, Profile); 15] = [
        (1, Profile::Lan),
        (10, Profile::Lan),
        (11, Profile::Lan),
        (3, Profile::Lan),
        (12, Profile::Lan),
        (13, Profile::Lan),
        (6, Profile::Lan),
        (8, Profile::Lan),
        (1, Profile::Jumbo),
        (1, Profile::Wan),
        (4, Profile::Wan),
        (7, Profile::Wan),
        (11, Profile::Wan),
        (2, Profile::Lossy),
        (5, Profile::Lossy),
    ];
    for (n, profile) in plan {
        if !(wanted(n) || n == 1 && wanted(9)) {
            continue;
        }
        let before = w.link.current();
        let switched = w.link.set(w.sb, profile)?;
        // quinn's MTU discovery runs once per connection (then every ten
        // minutes): a connection opened at MTU 1500 would not find the
        // jumbo path, and one at MTU 9000 would send into a black hole
        // after it. Either way netmux reconnects.
        let mtu_changed = before.is_some_and(|b| b.mtu() != profile.mtu());
        if switched && (mtu_changed || std::env::var_os("NETMUX_BENCH_RECONNECT").is_some()) {
            // (The environment variable, an experiment: a fresh QUIC
            // connection on every new link, so the congestion controller
            // starts from this link's RTT.)
            w.reconnect_netmux()?;
        }
        println!("==> bench: scenario {n} ({})", profile.name());
        let tables = match n {
            1 => bulk::scenario1(w, s, profile)?,
            2 => vec![scenario2(w, s)?],
            3 => vec![requests::scenario3(w, s)?],
            4 => vec![scenario4(w, s)?],
            5 => vec![scenario5(w, s)?],
            6 => vec![scenario6(w, s)?],
            7 => scenario7(w, s)?,
            10 => vec![scenario10(w, s)?],
            11 => vec![udp_echo::scenario11(w, s, profile)?],
            12 => requests::scenario12(w, s)?,
            13 => requests::scenario13(w, s)?,
            8 => match super::ebpf::scenario8(s) {
                Ok(t) => vec![t],
                Err(e) => {
                    println!("bench: scenario 8 not measured: {e:#}");
                    let why: String = format!("{e:#}").chars().take(300).collect();
                    out.pending.push((8, format!("not measured: {why}")));
                    continue;
                }
            },
            _ => continue,
        };
        for t in tables {
            if t.scenario == 9 && !wanted(9) {
                continue;
            }
            if t.scenario != 9 && !wanted(t.scenario) {
                continue;
            }
            out.verdicts.extend(verdicts(&t));
            out.tables.push(t);
        }
    }
    w.link.set(w.sb, Profile::Lan)?;
    Ok(())
}

/// Measures `f` for each usable peer, `reps` times, repetition-major.
/// `f` returns the figure and the extra columns.
pub(super) fn measure(
    w: &World<'_>,
    peers: &[Peer],
    target: Target,
    reps: usize,
    mut f: impl FnMut(&World<'_>, Peer) -> anyhow::Result<(f64, Vec<String>)>,
) -> Vec<Row> {
    let mut rows: Vec<Row> = peers
        .iter()
        .map(|&peer| Row {
            peer,
            label: None,
            outcome: match w.usable(peer, target) {
                Ok(()) => Outcome::Values(Vec::new()),
                Err(why) => Outcome::Skipped(why),
            },
            extra: Vec::new(),
        })
        .collect();
    for rep in 0..reps {
        for row in &mut rows {
            let Outcome::Values(values) = &mut row.outcome else {
                continue;
            };
            match f(w, row.peer) {
                Ok((v, extra)) => {
                    println!("    {} rep {}: {v:.3}", row.peer.label(), rep + 1);
                    values.push(v);
                    row.extra = extra;
                }
                Err(e) => {
                    println!("    {} rep {}: FAILED {e:#}", row.peer.label(), rep + 1);
                    let msg = format!("{e:#}");
                    let short: String = msg.chars().take(300).collect();
                    row.outcome = Outcome::Failed(short);
                }
            }
        }
    }
    rows
}

pub(super) struct Meta {
    pub id: &'static str,
    pub scenario: u8,
    pub title: &'static str,
    pub profile: Profile,
    pub unit: &'static str,
    pub higher_better: bool,
}

pub(super) fn table(
    m: Meta,
    w: &World<'_>,
    load_before: String,
    rows: Vec<Row>,
    extra_cols: &[&str],
    commands: Vec<String>,
) -> Table {
    Table {
        id: m.id.to_owned(),
        scenario: m.scenario,
        title: m.title.to_owned(),
        profile: m.profile.name(),
        unit: m.unit,
        higher_better: m.higher_better,
        rows,
        extra_cols: extra_cols.iter().map(|s| (*s).to_owned()).collect(),
        commands,
        load: (load_before, loadavg()),
        link_check: w.link.check.clone(),
        notes: Vec::new(),
    }
}

pub(super) fn ws_exec(
    w: &World<'_>,
    program: &str,
    args: &[String],
    timeout: Duration,
) -> anyhow::Result<String> {
    let out =
        w.sb.exec(Side::Workstation, program, args, timeout)
            .with_context(|| format!("{program} {}", args.join(" ")))?;
    Ok(out.stdout)
}

pub(super) fn host_port(a: SocketAddr) -> (String, String) {
    (a.ip().to_string(), a.port().to_string())
}

fn scenario2(w: &World<'_>, s: &Settings) -> anyhow::Result<Table> {
    let load = loadavg();
    let rows = measure(w, &Peer::ALL, Target::Iperf, s.reps, |w, peer| {
        Ok((
            bulk::bulk(w, peer, s.lossy_bulk_secs)?.0 * 1000.0,
            Vec::new(),
        ))
    });
    let t = s.lossy_bulk_secs.to_string();
    Ok(table(
        Meta {
            id: "s2-bulk-lossy",
            scenario: 2,
            title: "Bulk under loss, one TCP stream",
            profile: Profile::Lossy,
            unit: "Mbit/s",
            higher_better: true,
        },
        w,
        load,
        rows,
        &[],
        vec![
            bulk::IPERF_CMD.replace("{T}", &t),
            bulk::QUINN_CMD.replace("{T}", &t),
        ],
    ))
}

pub(super) fn probe() -> anyhow::Result<String> {
    Ok(bin("nx-probe")?.to_string_lossy().into_owned())
}

fn scenario4(w: &World<'_>, s: &Settings) -> anyhow::Result<Table> {
    let load = loadavg();
    let rtt = w.link.rtt_ms;
    let p = probe()?;
    let rows = measure(w, &Peer::TCP, Target::Echo, s.reps, |w, peer| {
        let args = vec![
            "connect-rtt".into(),
            "--addr".into(),
            w.addr(peer, Target::Echo).to_string(),
            "--count".into(),
            s.connect_samples.to_string(),
        ];
        let out = ws_exec(w, &p, &args, Duration::from_secs(120))?;
        let v: serde_json::Value = serde_json::from_str(out.trim())?;
        let p50 = v["p50_us"].as_f64().context("p50")? / 1000.0;
        let p99 = v["p99_us"].as_f64().context("p99")? / 1000.0;
        Ok((p50, vec![format!("{:.2}", p50 / rtt), format!("{p99:.2}")]))
    });
    let mut t = table(
        Meta { id: "s4-connect-wan", scenario: 4, title: "New connection: connect + 1-byte echo on a fresh TCP connection (median of samples)", profile: Profile::Wan, unit: "ms", higher_better: false },
        w,
        load,
        rows,
        &["× ping RTT (last rep)", "p99 ms (last rep)"],
        vec![format!("nx-probe connect-rtt --addr ADDR:PORT --count {} (echo server nx-echo tcp)", s.connect_samples)],
    );
    t.notes.push(format!("Ping RTT {rtt:.2} ms. Tunnels are established before the samples (ssh, rathole control channel, netmux QUIC connection)."));
    Ok(t)
}

/// Offered UDP rate for scenario 10 (issue 9): fixed, so loss is comparable.
const UDP_RATE: &str = "200M";

/// UDP (issue 9): `iperf3 -u` at a fixed offered rate, throughput received
/// and loss; UDP rides QUIC datagrams, one flow. Only direct and netmux
/// carry UDP among the peers.
fn scenario10(w: &World<'_>, s: &Settings) -> anyhow::Result<Table> {
    let load = loadavg();
    let secs = s.bulk_secs;
    let rows = measure(
        w,
        &[Peer::Direct, Peer::Netmux],
        Target::Iperf,
        s.reps,
        |w, peer| {
            let (h, p) = host_port(w.addr(peer, Target::Iperf));
            let v = super::bulk::iperf3_json(
                w,
                &[
                    "-c",
                    &h,
                    "-p",
                    &p,
                    "-u",
                    "-b",
                    UDP_RATE,
                    "-l",
                    "1200",
                    "-t",
                    &secs.to_string(),
                ],
                secs,
            )?;
            let sum = &v["end"]["sum"];
            let mbps = sum["bits_per_second"].as_f64().context("bits_per_second")? / 1e6;
            let loss = sum["lost_percent"].as_f64().context("lost_percent")?;
            Ok((mbps, vec![format!("{loss:.2}")]))
        },
    );
    let mut t = table(
        Meta { id: "s10-udp-lan", scenario: 10, title: "UDP: iperf3 -u at a fixed offered rate (receiver throughput)", profile: Profile::Lan, unit: "Mbit/s", higher_better: true },
        w,
        load,
        rows,
        &["loss % (last rep)"],
        vec![format!("iperf3 -c ADDR -p PORT -u -b {UDP_RATE} -l 1200 -t {secs} -J (server `iperf3 -s`; TCP control and UDP data on the same port)")],
    );
    t.notes.push("ssh -L, rathole (TCP tunnel here), socat (TCP relay here) and raw quinn carry no UDP in this setup and are not listed.".into());
    Ok(t)
}

fn scenario5(w: &World<'_>, s: &Settings) -> anyhow::Result<Table> {
    let load = loadavg();
    let p = probe()?;
    let secs = s.reqlat_secs;
    let rows = measure(w, &Peer::TCP, Target::Echo, s.reps, |w, peer| {
        let (h, port) = host_port(w.addr(peer, Target::Iperf));
        let mut bulk =
            w.sb.process(Side::Workstation, "hol-bulk", "iperf3")
                .args(["-c", &h, "-p", &port, "-t", &(secs + 2).to_string()])
                .spawn()?;
        std::thread::sleep(Duration::from_millis(1500));
        let args = vec![
            "reqlat".into(),
            "--addr".into(),
            w.addr(peer, Target::Echo).to_string(),
            "--seconds".into(),
            secs.to_string(),
            "--rate".into(),
            "50".into(),
        ];
        let r = ws_exec(w, &p, &args, Duration::from_secs(secs + 60));
        // Let the bulk transfer end by itself so iperf3's server stays sane.
        if bulk.wait_timeout(Duration::from_secs(20)).is_none() {
            bulk.kill();
        }
        let out = r?;
        let v: serde_json::Value = serde_json::from_str(out.trim())?;
        let p99 = v["p99_us"].as_f64().context("p99")? / 1000.0;
        let p50 = v["p50_us"].as_f64().context("p50")? / 1000.0;
        let max = v["max_us"].as_f64().context("max")? / 1000.0;
        Ok((p99, vec![format!("{p50:.1}"), format!("{max:.1}")]))
    });
    Ok(table(
        Meta { id: "s5-hol-lossy", scenario: 5, title: "Head-of-line blocking: p99 of 64-byte echo requests while a bulk transfer shares the tunnel", profile: Profile::Lossy, unit: "ms (p99)", higher_better: false },
        w,
        load,
        rows,
        &["p50 ms (last rep)", "max ms (last rep)"],
        vec![
            format!("iperf3 -c ADDR -p PORT -t {} (bulk, same peer)", secs + 2),
            format!("nx-probe reqlat --addr ADDR:PORT --seconds {secs} --rate 50 (one connection, 64-byte request, echo)"),
        ],
    ))
}

fn scenario6(w: &World<'_>, s: &Settings) -> anyhow::Result<Table> {
    let load = loadavg();
    let p = probe()?;
    let nm = w.netmux.as_ref();
    let (dpid, spid) = match nm {
        Some(nm) => (nm.daemon.pid(), nm.server.pid()),
        None => (None, None),
    };
    let n = s.idle_conns;
    let mut extra = Vec::new();
    let outcome = match (w.usable(Peer::Netmux, Target::Echo), dpid, spid) {
        (Err(why), _, _) => Outcome::Skipped(why),
        (Ok(()), Some(d), Some(sv)) => {
            let args = vec![
                "idle".into(),
                "--addr".into(),
                w.addr(Peer::Netmux, Target::Echo).to_string(),
                "--count".into(),
                n.to_string(),
                "--rss".into(),
                format!("daemon={d}"),
                "--rss".into(),
                format!("server={sv}"),
            ];
            match ws_exec(w, &p, &args, Duration::from_secs(300)) {
                Ok(out) => {
                    let v: serde_json::Value = serde_json::from_str(out.trim())?;
                    let per = |who: &str| {
                        let r = &v["rss"][who];
                        (r["after_kib"].as_f64().unwrap_or(f64::NAN)
                            - r["before_kib"].as_f64().unwrap_or(f64::NAN))
                            / n as f64
                    };
                    extra.push(format!("{:.1}", per("server")));
                    extra.push(format!("{}/{n}", v["usable_after"]));
                    extra.push(format!("{}", v["open_seconds"]));
                    extra.push(format!(
                        "daemon {}→{} KiB, server {}→{} KiB",
                        v["rss"]["daemon"]["before_kib"],
                        v["rss"]["daemon"]["after_kib"],
                        v["rss"]["server"]["before_kib"],
                        v["rss"]["server"]["after_kib"]
                    ));
                    Outcome::Values(vec![per("daemon")])
                }
                Err(e) => Outcome::Failed(format!("{e:#}").chars().take(400).collect()),
            }
        }
        _ => Outcome::Skipped("netmux processes not running".into()),
    };
    let mut t = table(
        Meta { id: "s6-idle-scale", scenario: 6, title: "Scale: concurrent idle tunneled connections, memory per connection", profile: Profile::Lan, unit: "daemon KiB/conn", higher_better: false },
        w,
        load,
        vec![Row { peer: Peer::Netmux, label: None, outcome, extra }],
        &["server KiB/conn", "usable after hold", "open s", "VmRSS"],
        vec![format!("nx-probe idle --addr ADDR:PORT --count {n} --rss daemon=PID --rss server=PID (opens, echoes once, holds 3 s, reads VmRSS, echoes again on each)")],
    );
    t.notes.push(format!(
        "{n} connections; (VmRSS after - before) / {n} for netmuxd and netmux-server."
    ));
    Ok(t)
}

fn scenario7(w: &World<'_>, s: &Settings) -> anyhow::Result<Vec<Table>> {
    let meta = |id, title, unit| Meta {
        id,
        scenario: 7,
        title,
        profile: Profile::Wan,
        unit,
        higher_better: true,
    };
    Ok(vec![
        requests::pgbench(
            w,
            s,
            &Peer::TCP,
            meta(
                "s7-pgbench-wan",
                "pgbench (TPC-B like, 8 clients), PostgreSQL in the cluster",
                "TPS",
            ),
            None,
        ),
        requests::pgbench(
            w,
            s,
            &Peer::TCP,
            meta(
                "s7-pgbench-C-wan",
                "pgbench -C (new connection per transaction, 8 clients)",
                "TPS",
            ),
            Some("-C"),
        ),
        requests::redis(
            w,
            s,
            &Peer::TCP,
            meta(
                "s7-redis-get-wan",
                "redis-benchmark GET (50 clients)",
                "ops/s",
            ),
            "get",
            s.redis_requests,
        ),
        requests::redis(
            w,
            s,
            &Peer::TCP,
            meta(
                "s7-redis-set-wan",
                "redis-benchmark SET (50 clients)",
                "ops/s",
            ),
            "set",
            s.redis_requests,
        ),
    ])
}

pub(super) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

pub(super) fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}×"))
        .unwrap_or_else(|| "n/a".into())
}

fn best_ssh(t: &Table) -> Option<f64> {
    let a = t.median(Peer::SshDefault);
    let b = t.median(Peer::SshAes);
    match (a, b) {
        (Some(a), Some(b)) => Some(if t.higher_better { a.max(b) } else { a.min(b) }),
        (x, None) | (None, x) => x,
    }
}

/// The issue's targets, evaluated on a table.
fn verdicts(t: &Table) -> Vec<Verdict> {
    let nm = t.median(Peer::Netmux);
    match t.id.as_str() {
        "s10-udp-lan" => {
            let r = ratio(nm, t.median(Peer::Direct));
            vec![t.verdict(
                "UDP rows (issue 9): netmux delivers the offered rate like direct",
                format!("{} direct", fmt_ratio(r)),
                r.map(|r| r >= 0.9),
            )]
        }
        "s1-bulk-lan" => {
            let q = ratio(nm, t.median(Peer::Quinn));
            let s = ratio(nm, t.median(Peer::SshAes));
            vec![
                t.verdict(
                    "netmux ≥ 0.9× raw quinn (lan bulk)",
                    fmt_ratio(q),
                    q.map(|r| r >= 0.9),
                ),
                t.verdict(
                    "netmux ≥ 1.0× ssh -L aes128-gcm (lan bulk)",
                    fmt_ratio(s),
                    s.map(|r| r >= 1.0),
                ),
            ]
        }
        "s2-bulk-lossy" => {
            let r = ratio(nm, best_ssh(t));
            vec![t.verdict(
                "netmux ≥ 5× ssh -L (lossy bulk)",
                format!("{} the better ssh", fmt_ratio(r)),
                r.map(|r| r >= 5.0),
            )]
        }
        "s3-requests-lan" => {
            let best = t.best_alternative(true);
            let r = ratio(nm, best.map(|b| b.1));
            let who = best.map(|b| b.0.label()).unwrap_or("none");
            let s = ratio(nm, t.median(Peer::SshAes));
            vec![
                t.verdict(
                    "netmux ≥ 2× best encrypted peer (requests/s)",
                    format!("{} {who}", fmt_ratio(r)),
                    r.map(|r| r >= 2.0),
                ),
                t.verdict(
                    "wrk: netmux ≥ 1.3× ssh -L aes128-gcm (lan)",
                    fmt_ratio(s),
                    s.map(|r| r >= 1.3),
                ),
            ]
        }
        "s4-connect-wan" => {
            let rtt = t
                .notes
                .first()
                .and_then(|n| n.strip_prefix("Ping RTT "))
                .and_then(|n| n.split_whitespace().next()?.parse::<f64>().ok());
            let r = ratio(nm, rtt);
            vec![t.verdict(
                "new connection ≤ 1.1 RTT (wan)",
                format!(
                    "{} RTT",
                    r.map(|r| format!("{r:.2}")).unwrap_or("n/a".into())
                ),
                r.map(|r| r <= 1.1),
            )]
        }
        "s5-hol-lossy" => {
            let r = ratio(nm, best_ssh(t));
            vec![t.verdict(
                "p99 under bulk ≤ 1/3 of ssh -L's (lossy)",
                format!("{} the better ssh", fmt_ratio(r)),
                r.map(|r| r <= 1.0 / 3.0),
            )]
        }
        "s6-idle-scale" => {
            let row = t.row(Peer::Netmux);
            let server: Option<f64> = row.and_then(|r| r.extra.first()?.parse().ok());
            let usable = row
                .and_then(|r| r.extra.get(1))
                .cloned()
                .unwrap_or_default();
            let all = usable.split('/').next() == usable.split('/').nth(1);
            let met = match (nm, server) {
                (Some(d), Some(s)) => Some(d <= 32.0 && s <= 32.0 && all),
                _ => None,
            };
            vec![t.verdict(
                "idle connections usable, ≤ 32 KiB/conn in daemon and server",
                format!(
                    "daemon {} KiB, server {} KiB, usable {usable}",
                    nm.map(|x| format!("{x:.1}")).unwrap_or("n/a".into()),
                    server.map(|x| format!("{x:.1}")).unwrap_or("n/a".into())
                ),
                met,
            )]
        }
        "s7-pgbench-wan" | "s7-redis-get-wan" | "s7-redis-set-wan" => {
            let r = ratio(nm, t.median(Peer::Direct));
            vec![t.verdict(
                &format!("{} ≥ 0.95× direct (wan)", t.title),
                fmt_ratio(r),
                r.map(|r| r >= 0.95),
            )]
        }
        "s7-pgbench-C-wan" => {
            let r = ratio(nm, t.median(Peer::Direct));
            vec![t.verdict(
                "pgbench -C faster than direct (wan)",
                fmt_ratio(r),
                r.map(|r| r > 1.0),
            )]
        }
        "s8-ebpf-connect" => {
            let r = ratio(
                t.rows.first().and_then(Row::median),
                t.rows.get(1).and_then(Row::median),
            );
            vec![t.verdict(
                "eBPF redirect connect+close overhead ≤ 5%",
                r.map(|r| format!("{:+.1}%", (r - 1.0) * 100.0))
                    .unwrap_or("n/a".into()),
                r.map(|r| r <= 1.05),
            )]
        }
        "s9-cpu-per-gib" => {
            let r = ratio(nm, best_ssh(t));
            vec![
                t.verdict(
                    "netmux CPU/GiB below ssh -L's",
                    format!("{} the better ssh", fmt_ratio(r)),
                    r.map(|r| r < 1.0),
                ),
                t.verdict(
                    "netmux ≤ 2.0 CPU s/GiB, both tunnel processes (lan bulk)",
                    nm.map(|x| format!("{x:.2} s/GiB"))
                        .unwrap_or_else(|| "n/a".into()),
                    nm.map(|x| x <= 2.0),
                ),
            ]
        }
        _ => {
            let mut v = requests::verdicts(t);
            v.extend(udp_echo::verdicts(t));
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(id: &str, higher_better: bool, rows: &[(Peer, &[f64])]) -> Table {
        Table {
            id: id.into(),
            scenario: 0,
            title: id.into(),
            profile: "lan",
            unit: "",
            higher_better,
            rows: rows
                .iter()
                .map(|(peer, values)| Row {
                    peer: *peer,
                    label: None,
                    outcome: Outcome::Values(values.to_vec()),
                    extra: Vec::new(),
                })
                .collect(),
            extra_cols: Vec::new(),
            commands: Vec::new(),
            load: Default::default(),
            link_check: String::new(),
            notes: Vec::new(),
        }
    }

    fn verdict<'a>(v: &'a [Verdict], target: &str) -> &'a Verdict {
        v.iter()
            .find(|v| v.target.starts_with(target))
            .unwrap_or_else(|| panic!("no verdict {target:?} in {v:?}"))
    }

    #[test]
    fn issue_17_targets_have_their_own_rows() {
        let wrk = |netmux: f64| {
            let t = table(
                "s3-requests-lan",
                true,
                &[
                    (Peer::Netmux, &[netmux]),
                    (Peer::SshAes, &[40_000.0]),
                    (Peer::SshDefault, &[35_000.0]),
                ],
            );
            verdict(&verdicts(&t), "wrk: netmux ≥ 1.3×").met
        };
        assert_eq!(wrk(46_000.0), Some(false));
        assert_eq!(wrk(52_000.0), Some(true));

        let cpu = |netmux: f64| {
            let t = table(
                "s9-cpu-per-gib",
                false,
                &[(Peer::Netmux, &[netmux]), (Peer::SshAes, &[1.8])],
            );
            let v = verdicts(&t);
            let row = verdict(&v, "netmux ≤ 2.0 CPU s/GiB");
            (row.measured.clone(), row.met)
        };
        assert_eq!(cpu(2.12), ("2.12 s/GiB".into(), Some(false)));
        assert_eq!(cpu(1.95), ("1.95 s/GiB".into(), Some(true)));
    }
}
