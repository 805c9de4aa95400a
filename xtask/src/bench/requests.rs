//! Small requests through each peer: wrk (scenario 3), database clients
//! (scenarios 7 and 12) and what one request costs the tunnel (scenario
//! 13, issue 17).
//!
//! * 3 (lan): wrk, 256 connections to an HTTP backend, with the tunnel's
//!   CPU µs per request and how busy the CPUs were.
//! * 7 (wan): pgbench TPC-B like and `-C`, redis-benchmark GET/SET.
//! * 12 (lan, issue 17): `pgbench -S` (select only, 8 clients) and
//!   redis-benchmark GET/SET (50 clients): small requests on a fast link,
//!   where the relay's own cost per request is what shows.
//! * 13 (lan): CPU µs per request of the tunnel's processes (both ends) and
//!   their syscalls per request (`strace -c -f` on a short run), so a
//!   change shows where it acts.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::link::Profile;
use super::perf::Perf;
use super::scenarios::{fmt_ratio, host_port, measure, ratio, table, ws_exec, Meta};
use super::world::{Target, World};
use super::{loadavg, Busy, Outcome, Peer, Settings, Table, Verdict};

/// pgbench with 8 clients for `s.pgbench_secs` through each of `peers`;
/// `flag` is `-C` (connect per transaction), `-S` (select only) or none.
pub fn pgbench(
    w: &World<'_>,
    s: &Settings,
    peers: &[Peer],
    meta: Meta,
    flag: Option<&'static str>,
) -> Table {
    let secs = s.pgbench_secs.to_string();
    let load = loadavg();
    let rows = measure(w, peers, Target::Postgres, s.reps, |w, peer| {
        let (h, p) = host_port(w.addr(peer, Target::Postgres));
        let mut args: Vec<String> = [
            "-h", &h, "-p", &p, "-U", "postgres", "-n", "-c", "8", "-j", "2", "-T", &secs,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if let Some(f) = flag {
            args.push(f.into());
        }
        args.push("postgres".into());
        let busy = Busy::start();
        let out = ws_exec(
            w,
            "pgbench",
            &args,
            Duration::from_secs(s.pgbench_secs + 60),
        )?;
        let tps: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no tps in pgbench output: {out}"))?;
        Ok((tps, vec![busy.percent()]))
    });
    let cmd = format!(
        "pgbench -h ADDR -p PORT -U postgres -n -c 8 -j 2 -T {secs}{} postgres (scale 1)",
        flag.map(|f| format!(" {f}")).unwrap_or_default()
    );
    table(meta, w, load, rows, &[BUSY_COLUMN], vec![cmd])
}

/// 3: wrk, 256 connections, through every lan peer: requests/s, the
/// tunnel processes' CPU µs per request and how busy the CPUs were.
pub fn scenario3(w: &World<'_>, s: &Settings) -> anyhow::Result<Table> {
    if let Some(why) = w.tools.missing("wrk") {
        bail!("{why}");
    }
    let load = loadavg();
    let secs = s.wrk_secs;
    let rows = measure(w, &Peer::LAN_REQUESTS, Target::Http, s.reps, |w, peer| {
        let names = World::cpu_names(peer);
        let before = w.cpu_seconds(names);
        let busy = Busy::start();
        let out = wrk(w, peer, secs)?;
        let busy = busy.percent();
        let used = w.cpu_seconds(names) - before;
        let rps: f64 = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no Requests/sec in wrk output: {out}"))?;
        let errors = out
            .lines()
            .find(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
            .map(|l| l.trim().to_owned())
            .unwrap_or_else(|| "none".into());
        Ok((rps, vec![cpu_per_request(&out, names, used), busy, errors]))
    });
    Ok(table(
        Meta {
            id: "s3-requests-lan",
            scenario: 3,
            title: "Small HTTP requests, 256 concurrent connections (wrk, nx-echo http)",
            profile: Profile::Lan,
            unit: "requests/s",
            higher_better: true,
        },
        w,
        load,
        rows,
        &[
            "tunnel CPU µs/request (last rep)",
            BUSY_COLUMN,
            "errors (last rep)",
        ],
        vec![format!(
            "wrk -t2 -c256 -d{secs}s --timeout 5s http://ADDR:PORT/"
        )],
    ))
}

/// `wrk -t2 -c256 -dSECSs` through `peer` (scenario 3): its output.
fn wrk(w: &World<'_>, peer: Peer, secs: u64) -> anyhow::Result<String> {
    let url = format!("http://{}/", w.addr(peer, Target::Http));
    let args: Vec<String> = [
        "-t2",
        "-c256",
        &format!("-d{secs}s"),
        "--timeout",
        "5s",
        &url,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    ws_exec(w, "wrk", &args, Duration::from_secs(secs + 30))
}

/// The requests a wrk run completed ("233456 requests in 5.00s, …");
/// `None` when it printed no count or completed none.
fn wrk_requests(out: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(' ')?;
            rest.starts_with("requests in")
                .then(|| n.parse::<f64>().ok())?
        })
        .filter(|n| *n > 0.0)
}

/// CPU µs per request of the tunnel processes `names` (both ends) during a
/// wrk run that printed `out` and used `cpu` seconds of them; empty for
/// direct (no tunnel) or when wrk completed no request.
fn cpu_per_request(out: &str, names: &[&str], cpu: f64) -> String {
    match wrk_requests(out) {
        Some(n) if !names.is_empty() => format!("{:.1}", cpu / n * 1e6),
        _ => String::new(),
    }
}

/// Extra column of the request tables: CPUs busy during the last repetition.
const BUSY_COLUMN: &str = "CPUs busy (last rep)";

/// `redis-benchmark -c clients -n n -t test` through `peer`: requests/s.
fn redis_run(
    w: &World<'_>,
    peer: Peer,
    test: &str,
    clients: usize,
    n: usize,
) -> anyhow::Result<f64> {
    let (h, p) = host_port(w.addr(peer, Target::Redis));
    let args: Vec<String> = [
        "-h",
        &h,
        "-p",
        &p,
        "-c",
        &clients.to_string(),
        "-n",
        &n.to_string(),
        "-t",
        test,
        "--csv",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let out = ws_exec(w, "redis-benchmark", &args, Duration::from_secs(180))?;
    let want = format!("\"{}\"", test.to_uppercase());
    out.lines()
        .find(|l| l.starts_with(&want))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|v| v.trim_matches('"').parse().ok())
        .with_context(|| format!("no {want} line in redis-benchmark output: {out}"))
}

/// redis-benchmark `test` (get, set) with 50 clients, `n` requests, through
/// each of `peers`.
pub fn redis(
    w: &World<'_>,
    s: &Settings,
    peers: &[Peer],
    meta: Meta,
    test: &'static str,
    n: usize,
) -> Table {
    let load = loadavg();
    let rows = measure(w, peers, Target::Redis, s.reps, |w, peer| {
        let busy = Busy::start();
        let rate = redis_run(w, peer, test, 50, n)?;
        Ok((rate, vec![busy.percent()]))
    });
    table(
        meta,
        w,
        load,
        rows,
        &[BUSY_COLUMN],
        vec![format!(
            "redis-benchmark -h ADDR -p PORT -c 50 -n {n} -t {test} --csv"
        )],
    )
}

/// Peers of scenario 12: netmux, the relays a user would compare it with
/// on a fast link, and the pair of plain relays.
const LAN_PEERS: [Peer; 7] = Peer::LAN_REQUESTS;

/// 12: small requests on lan.
pub fn scenario12(w: &World<'_>, s: &Settings) -> anyhow::Result<Vec<Table>> {
    if let Some(why) = w.tools.missing("redis-benchmark") {
        println!("bench: redis-benchmark: {why}");
    }
    let meta = |id, title, unit| Meta {
        id,
        scenario: 12,
        title,
        profile: Profile::Lan,
        unit,
        higher_better: true,
    };
    Ok(vec![
        pgbench(
            w,
            s,
            &LAN_PEERS,
            meta(
                "s12-pgbench-S-lan",
                "pgbench -S (select only, 8 clients), PostgreSQL in the cluster",
                "TPS",
            ),
            Some("-S"),
        ),
        redis(
            w,
            s,
            &LAN_PEERS,
            meta(
                "s12-redis-get-lan",
                "redis-benchmark GET (50 clients)",
                "requests/s",
            ),
            "get",
            s.lan_redis_requests,
        ),
        redis(
            w,
            s,
            &LAN_PEERS,
            meta(
                "s12-redis-set-lan",
                "redis-benchmark SET (50 clients)",
                "requests/s",
            ),
            "set",
            s.lan_redis_requests,
        ),
    ])
}

/// Requests of the short run `strace` watches (it slows the traced
/// processes several times over; the counts per request are what matter).
const STRACE_REQUESTS: usize = 5_000;

/// What `strace -c` counted: total calls and the most frequent syscalls.
#[derive(Debug, Clone, PartialEq)]
pub struct SyscallCount {
    pub total: u64,
    /// (syscall, calls), most calls first.
    pub top: Vec<(String, u64)>,
}

/// Parses `strace -c` output (the summary table).
pub fn parse_strace_summary(text: &str) -> Option<SyscallCount> {
    let mut top = Vec::new();
    let mut total = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors], syscall
        if f.len() < 5 || f[0].parse::<f64>().is_err() {
            continue;
        }
        let Ok(calls) = f[3].parse::<u64>() else {
            continue;
        };
        let name = f[f.len() - 1];
        if name == "total" {
            total = Some(calls);
        } else {
            top.push((name.to_owned(), calls));
        }
    }
    top.sort_by_key(|t| std::cmp::Reverse(t.1));
    Some(SyscallCount { total: total?, top })
}

/// Runs `work` while `strace -c -f` follows every thread of `peer`'s
/// processes; returns what it counted.
fn strace_run(
    w: &World<'_>,
    peer: Peer,
    dir: &Path,
    tag: &str,
    work: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<SyscallCount> {
    let pids = w.pids_named(World::cpu_names(peer));
    if pids.is_empty() {
        bail!("no {} process found", peer.label());
    }
    let out = dir.join(format!(
        "strace-{tag}-{}.txt",
        peer.label().replace([' ', '(', ')'], "_")
    ));
    let mut cmd = Command::new("strace");
    cmd.args(["-c", "-f", "-q", "-o"]).arg(&out);
    for p in &pids {
        cmd.args(["-p", &p.to_string()]);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting strace")?;
    // Attaching to every thread takes a moment; idle processes make few
    // syscalls meanwhile (timers), which are counted as overhead.
    std::thread::sleep(Duration::from_millis(1000));
    let run = work();
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    run?;
    let text = std::fs::read_to_string(&out).context("reading strace's summary")?;
    parse_strace_summary(&text).with_context(|| format!("no total in strace output: {text}"))
}

/// "total, top five" per unit of work, for a table's extra columns.
fn per_unit(c: &SyscallCount, units: f64) -> Vec<String> {
    let top: Vec<String> = c
        .top
        .iter()
        .take(5)
        .map(|(name, calls)| format!("{name} {:.2}", *calls as f64 / units))
        .collect();
    vec![format!("{:.2}", c.total as f64 / units), top.join(", ")]
}

/// Bytes of the bulk run strace watches (scenario 13).
const STRACE_BULK: &str = "256M";

/// 13: CPU µs and syscalls per request (redis GET, 50 clients, lan); with
/// `--callgrind`, instructions per GiB and per request instead.
pub fn scenario13(w: &World<'_>, s: &Settings) -> anyhow::Result<Vec<Table>> {
    if let Some(why) = w.tools.missing("redis-benchmark") {
        bail!("{why}");
    }
    if let Some(dir) = &s.callgrind {
        return instructions(w, s, dir);
    }
    let load = loadavg();
    let n = s.lan_redis_requests;
    let peers = [Peer::Netmux, Peer::SshAes, Peer::Socat];
    let mut profiled = false;
    let mut rows = measure(w, &peers, Target::Redis, s.reps, |w, peer| {
        let names = World::cpu_names(peer);
        let before = w.cpu_seconds(names);
        let perf = match (&s.profile, peer) {
            (Some(dir), Peer::Netmux) if !profiled => {
                profiled = true;
                Perf::start(w, dir, "requests")
            }
            _ => None,
        };
        redis_run(w, peer, "get", 50, n)?;
        let used = w.cpu_seconds(names) - before;
        if let Some(p) = perf {
            p.finish();
        }
        Ok((used / n as f64 * 1e6, Vec::new()))
    });
    let dir = w.sb.dir().join("strace");
    std::fs::create_dir_all(&dir)?;
    let have_strace = w.tools.missing("strace").map(str::to_owned);
    let mut bulk_rows = Vec::new();
    for r in &mut rows {
        let (extra, bulk) = match (&r.outcome, &have_strace) {
            (Outcome::Values(_), None) => {
                let req = strace_run(w, r.peer, &dir, "get", || {
                    redis_run(w, r.peer, "get", 50, STRACE_REQUESTS).map(|_| ())
                });
                let mut mib = 0.0;
                let bulk = strace_run(w, r.peer, &dir, "bulk", || {
                    mib = iperf_bytes(w, r.peer, STRACE_BULK)? / f64::from(1u32 << 20);
                    Ok(())
                });
                (
                    match req {
                        Ok(c) => per_unit(&c, STRACE_REQUESTS as f64),
                        Err(e) => vec![format!("failed: {e:#}"), String::new()],
                    },
                    match bulk {
                        Ok(c) => {
                            let v = per_unit(&c, mib);
                            let calls = c.total as f64 / mib;
                            (Outcome::Values(vec![calls]), vec![v[1].clone()])
                        }
                        Err(e) => (Outcome::Failed(format!("{e:#}")), Vec::new()),
                    },
                )
            }
            (_, Some(why)) => (
                vec![format!("no strace: {why}"), String::new()],
                (Outcome::Skipped(why.clone()), Vec::new()),
            ),
            _ => (
                vec![String::new(), String::new()],
                (Outcome::Skipped("not measured".into()), Vec::new()),
            ),
        };
        r.extra = extra;
        bulk_rows.push(super::Row {
            peer: r.peer,
            label: None,
            outcome: bulk.0,
            extra: bulk.1,
        });
    }
    let mut t = table(
        Meta {
            id: "s13-per-request-lan",
            scenario: 13,
            title: "Cost per request: CPU µs of the tunnel processes (both ends) and their syscalls, redis GET, 50 clients",
            profile: Profile::Lan,
            unit: "CPU µs/request",
            higher_better: false,
        },
        w,
        load,
        rows,
        &["syscalls/request", "top syscalls per request"],
        vec![
            format!("redis-benchmark -h ADDR -p PORT -c 50 -n {n} -t get --csv (CPU: user + system time of the processes named in scenario 9, from /proc)"),
            format!("strace -c -f -p PID... (every process of the peer, all threads) during redis-benchmark -c 50 -n {STRACE_REQUESTS} -t get"),
        ],
    );
    t.notes.push(format!(
        "CPU µs per request counts both tunnel ends (netmuxd + netmux-server; ssh + sshd; socat), not \
         redis or its client. Syscalls come from a separate run of {STRACE_REQUESTS} requests under \
         strace, which slows the traced processes: batching differs from the untraced run, so \
         compare these counts between builds, not with the CPU column. The 1 s attach window's \
         idle syscalls (timers) are included."
    ));
    let t2 = table(
        Meta {
            id: "s13-syscalls-bulk-lan",
            scenario: 13,
            title: "Syscalls per MiB moved, bulk (tunnel processes, both ends; under strace)",
            profile: Profile::Lan,
            unit: "syscalls/MiB",
            higher_better: false,
        },
        w,
        loadavg(),
        bulk_rows,
        &["top syscalls per MiB"],
        vec![format!(
            "strace -c -f -p PID... during iperf3 -c ADDR -p PORT -n {STRACE_BULK} -J"
        )],
    );
    Ok(vec![t, t2])
}

/// `iperf3 -n bytes` through `peer`: bytes received.
fn iperf_bytes(w: &World<'_>, peer: Peer, bytes: &str) -> anyhow::Result<f64> {
    let (h, p) = host_port(w.addr(peer, Target::Iperf));
    let args: Vec<String> = ["-c", &h, "-p", &p, "-n", bytes, "-J"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let out = ws_exec(w, "iperf3", &args, Duration::from_secs(900))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bytes"]
        .as_f64()
        .context("no bytes in iperf3's JSON")
}

/// Bytes of the bounded bulk run under callgrind.
const CALLGRIND_BULK: &str = "64M";
/// Requests of each bounded request run under callgrind.
const CALLGRIND_REQUESTS: usize = 4_000;
/// Seconds of the wrk run under callgrind (scenario 3's load, 256
/// connections; callgrind's pace sets how many requests that is).
const CALLGRIND_WRK_SECS: u64 = 3;

/// Instructions of netmuxd and netmux-server during `run`:
/// (daemon, server).
fn counted(
    w: &World<'_>,
    dir: &Path,
    run: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(u64, u64)> {
    let nm = w.netmux.as_ref().context("netmux is not running")?;
    let d = nm.daemon.pid().context("netmuxd pid")?;
    let sv = nm.server.pid().context("netmux-server pid")?;
    super::callgrind::zero(d)?;
    super::callgrind::zero(sv)?;
    run()?;
    let (di, dp) = super::callgrind::dump(dir, "netmuxd", d)?;
    let (si, sp) = super::callgrind::dump(dir, "netmux-server", sv)?;
    println!("    callgrind dumps: {} {}", dp.display(), sp.display());
    Ok((di, si))
}

/// A request load counted under callgrind.
enum Load {
    /// redis-benchmark GET with this many clients, `CALLGRIND_REQUESTS` in all.
    Redis(usize),
    /// Scenario 3's wrk, for `CALLGRIND_WRK_SECS`.
    Wrk,
}

/// 13 under `--callgrind`: user-space instructions of both netmux processes
/// per GiB (bounded iperf3) and per request (redis GET, 50 and 1 clients;
/// wrk, 256 connections).
fn instructions(w: &World<'_>, s: &Settings, dir: &Path) -> anyhow::Result<Vec<Table>> {
    if let Some(why) = w.tools.missing("wrk") {
        bail!("{why}");
    }
    let load = loadavg();
    let mut bulk = Vec::new();
    let mut reqs: Vec<(&'static str, Load, Vec<f64>, Vec<String>)> = vec![
        (
            "redis GET, 50 clients",
            Load::Redis(50),
            Vec::new(),
            Vec::new(),
        ),
        (
            "redis GET, 1 client",
            Load::Redis(1),
            Vec::new(),
            Vec::new(),
        ),
        ("wrk, 256 connections", Load::Wrk, Vec::new(), Vec::new()),
    ];
    let mut bulk_extra = Vec::new();
    for rep in 0..s.reps {
        let mut bytes = 0.0;
        let (d, sv) = counted(w, dir, || {
            bytes = iperf_bytes(w, Peer::Netmux, CALLGRIND_BULK)?;
            Ok(())
        })?;
        let gib = bytes / f64::from(1u32 << 30);
        let per = |x: u64| x as f64 / gib / 1e9;
        println!(
            "    bulk rep {}: {:.2} G instructions/GiB",
            rep + 1,
            per(d + sv)
        );
        bulk.push(per(d + sv));
        bulk_extra = vec![format!("{:.2}", per(d)), format!("{:.2}", per(sv))];
        for (label, load, values, extra) in &mut reqs {
            let mut n = 0.0;
            let (d, sv) = counted(w, dir, || {
                n = match load {
                    Load::Redis(c) => {
                        redis_run(w, Peer::Netmux, "get", *c, CALLGRIND_REQUESTS)?;
                        CALLGRIND_REQUESTS as f64
                    }
                    Load::Wrk => {
                        let out = wrk(w, Peer::Netmux, CALLGRIND_WRK_SECS)?;
                        wrk_requests(&out)
                            .with_context(|| format!("no request completed in wrk output: {out}"))?
                    }
                };
                Ok(())
            })?;
            let per = |x: u64| x as f64 / n / 1e3;
            println!(
                "    {label} rep {}: {:.1} k instructions/request",
                rep + 1,
                per(d + sv)
            );
            values.push(per(d + sv));
            *extra = vec![format!("{:.1}", per(d)), format!("{:.1}", per(sv))];
        }
    }
    let row = |label, values, extra| super::Row {
        peer: Peer::Netmux,
        label: Some(label),
        outcome: Outcome::Values(values),
        extra,
    };
    let cols = ["netmuxd", "netmux-server"];
    let note = "User-space instructions counted by valgrind's callgrind in netmuxd and \
                netmux-server (both ends, all threads), zeroed before and dumped after each \
                bounded run. Independent of machine load, unlike the CPU-time figures; the \
                kernel's share (syscalls, copies, wakeups) is not in it. Under callgrind \
                each process runs one thread at a time, so batching and wakeups differ \
                from a native run.";
    let mut t1 = table(
        Meta {
            id: "s13-instructions-bulk-lan",
            scenario: 13,
            title: "Instructions per GiB, bulk through netmux (callgrind)",
            profile: Profile::Lan,
            unit: "G instructions/GiB",
            higher_better: false,
        },
        w,
        load.clone(),
        vec![row("netmux, iperf3 one stream", bulk, bulk_extra)],
        &cols,
        vec![format!("iperf3 -c ADDR -p PORT -n {CALLGRIND_BULK} -J")],
    );
    t1.notes.push(note.into());
    let mut t2 = table(
        Meta {
            id: "s13-instructions-request-lan",
            scenario: 13,
            title: "Instructions per request through netmux (callgrind)",
            profile: Profile::Lan,
            unit: "k instructions/request",
            higher_better: false,
        },
        w,
        load,
        reqs.into_iter()
            .map(|(label, _, values, extra)| row(label, values, extra))
            .collect(),
        &cols,
        vec![
            format!("redis-benchmark -h ADDR -p PORT -c 50|1 -n {CALLGRIND_REQUESTS} -t get --csv"),
            format!("wrk -t2 -c256 -d{CALLGRIND_WRK_SECS}s --timeout 5s http://ADDR:PORT/"),
        ],
    );
    t2.notes.push(note.into());
    Ok(vec![t1, t2])
}

/// Targets of scenario 12: ≥ 0.5× direct.
pub fn verdicts(t: &Table) -> Vec<Verdict> {
    let nm = t.median(Peer::Netmux);
    match t.id.as_str() {
        "s12-pgbench-S-lan" | "s12-redis-get-lan" | "s12-redis-set-lan" => {
            let r = ratio(nm, t.median(Peer::Direct));
            let ssh = ratio(nm, t.median(Peer::SshAes));
            vec![Verdict {
                scenario: t.scenario,
                target: format!("{} ≥ 0.5× direct (lan)", t.title),
                measured: format!("{} ({} ssh -L aes128-gcm)", fmt_ratio(r), fmt_ratio(ssh)),
                met: r.map(|r| r >= 0.5),
            }]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_share_counts_everything_but_idle_and_iowait() {
        let before = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        // +60 user, +20 system, +10 softirq, +100 idle, +10 iowait.
        let after = "cpu  160 0 70 900 60 0 10 0 0 0\ncpu0 1 2 3\n";
        let share = super::super::busy_share(before, after).expect("share");
        assert!((share - 0.45).abs() < 1e-9, "{share}");
        assert!(super::super::busy_share(before, before).is_none());
        assert!(super::super::busy_share("intr 1 2", after).is_none());
    }

    #[test]
    fn strace_summary_is_parsed_with_and_without_errors() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 40.00    0.004000           2      2000           sendmsg
 30.00    0.003000           1      3000       500 recvfrom
 30.00    0.003000           3      1000           epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    0.010000           1      6000       500 total
";
        let c = parse_strace_summary(text).expect("parsed");
        assert_eq!(c.total, 6000);
        assert_eq!(
            c.top,
            vec![
                ("recvfrom".to_owned(), 3000),
                ("sendmsg".to_owned(), 2000),
                ("epoll_wait".to_owned(), 1000)
            ]
        );
        assert!(parse_strace_summary("strace: nothing").is_none());
    }

    #[test]
    fn wrk_cpu_per_request_counts_the_tunnel_processes() {
        let out = "Running 5s test @ http://10.0.0.1:8080/\n  2 threads and 256 connections\n  \
                   233456 requests in 5.00s, 20.04MB read\nRequests/sec:  46691.20\n";
        let ends = ["netmuxd", "netmux-server"];
        assert_eq!(cpu_per_request(out, &ends, 4.669), "20.0");
        assert_eq!(cpu_per_request(out, &[], 4.669), "", "direct has no tunnel");
        assert_eq!(cpu_per_request("Requests/sec: 1\n", &ends, 1.0), "");
        let none = "  0 requests in 5.00s, 0.00B read\nRequests/sec: 0.00\n";
        assert_eq!(
            cpu_per_request(none, &ends, 1.0),
            "",
            "no request, no quotient"
        );
    }
}
