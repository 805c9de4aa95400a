//! `cargo xtask bench [--quick]` (issue 7): netmux next to the tools a user
//! would pick instead, same traffic, same run, same machine.
//!
//! One [`Sandbox`](netmux_testbed::Sandbox) carries everything: backends
//! (iperf3, nx-echo, redis, PostgreSQL) in the cluster namespace, one
//! instance of every peer (netmux, two `ssh -L`, rathole, socat, raw quinn)
//! set up once, and the link profile switched under them by [`link`]
//! (a user-space delay/loss line, checked with ping). Each scenario in
//! [`scenarios`] returns [`Table`]s; [`report`] writes them as Markdown with
//! PNG charts. Nothing here asserts: the bench reports, the lead judges.

mod bulk;
mod callgrind;
mod chart;
mod ebpf;
mod link;
mod perf;
mod report;
mod requests;
mod scenarios;
mod tools;
mod udp_echo;
mod world;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::util::{cargo, root};

/// Command-line options of `cargo xtask bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Short runs, one repetition, 2,000 idle connections: a few minutes.
    /// Writes to target/bench/ instead of BENCHMARKS.md.
    #[arg(long)]
    pub quick: bool,
    /// Only these scenarios (1-13, repeatable; 10 is UDP throughput, 11 UDP
    /// echo latency, 12 small requests on lan, 13 cost per request);
    /// default all.
    #[arg(long = "scenario", value_name = "N")]
    pub scenarios: Vec<u8>,
    /// Do not install missing tools (they are reported as skipped).
    #[arg(long)]
    pub no_install: bool,
    /// Record a perf profile with call graphs (unwound with DWARF debug
    /// info, see bench/perf.rs) of netmuxd and netmux-server during the
    /// first netmux run of scenario 1's bulk and scenario 13's redis GET
    /// (target/bench/perf-netmux-{bulk,requests}.*). Figures of a profiled
    /// run include perf's own cost.
    #[arg(long)]
    pub profile: bool,
    /// Run netmuxd and netmux-server under valgrind's callgrind: scenario
    /// 13 then reports user-space instructions per GiB and per request
    /// (load-independent; dumps in target/bench/callgrind/). Use with
    /// `--scenario 13` only: everything through netmux is ~50× slower.
    #[arg(long)]
    pub callgrind: bool,
    /// Use the release binaries already built (e.g. while someone's edit
    /// breaks the build); the report notes it.
    #[arg(long)]
    pub no_build: bool,
    /// Write the report here (default: BENCHMARKS.md for a full run,
    /// target/bench/BENCHMARKS.quick.md for --quick).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Durations and counts of one run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    /// Where `--profile` writes, if given.
    pub profile: Option<PathBuf>,
    /// `--callgrind`: where the callgrind dumps go.
    pub callgrind: Option<PathBuf>,
    /// `--no-build`: the binaries measured may predate the commit.
    pub no_build: bool,
    /// Repetitions per figure (median, min, max).
    pub reps: usize,
    pub bulk_secs: u64,
    pub lossy_bulk_secs: u64,
    pub wrk_secs: u64,
    pub connect_samples: usize,
    pub reqlat_secs: u64,
    pub idle_conns: usize,
    pub pgbench_secs: u64,
    pub redis_requests: usize,
    /// redis-benchmark requests on lan (scenarios 12, 13): a few seconds.
    pub lan_redis_requests: usize,
}

impl Settings {
    fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                quick,
                profile: None,
                callgrind: None,
                no_build: false,
                reps: 1,
                bulk_secs: 3,
                lossy_bulk_secs: 5,
                wrk_secs: 3,
                connect_samples: 10,
                reqlat_secs: 5,
                idle_conns: 2_000,
                pgbench_secs: 4,
                redis_requests: 2_000,
                lan_redis_requests: 20_000,
            }
        } else {
            Settings {
                quick,
                profile: None,
                callgrind: None,
                no_build: false,
                reps: 3,
                bulk_secs: 8,
                lossy_bulk_secs: 10,
                wrk_secs: 5,
                connect_samples: 30,
                reqlat_secs: 10,
                idle_conns: 10_000,
                pgbench_secs: 6,
                redis_requests: 10_000,
                lan_redis_requests: 100_000,
            }
        }
    }
}

/// The tunnels (and the no-tunnel ceiling) every scenario compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// No tunnel: the workstation dials the cluster veth address.
    Direct,
    /// netmuxd + netmux-server over QUIC.
    Netmux,
    /// `ssh -L` with OpenSSH's default cipher.
    SshDefault,
    /// `ssh -L -c aes128-gcm@openssh.com`.
    SshAes,
    /// rathole with the noise transport.
    Rathole,
    /// A plain `socat` TCP relay in the cluster (no encryption).
    Socat,
    /// Two plain `socat` relays in a row, one in each namespace: the
    /// shape of a tunnel with a process at each end, without encryption
    /// or multiplexing (lan request scenarios only).
    SocatPair,
    /// nx-quicperf: raw quinn, one stream, no relay (bulk only).
    Quinn,
}

impl Peer {
    /// Peers that relay TCP (all but raw quinn and the pair of relays).
    pub const TCP: [Peer; 6] = [
        Peer::Direct,
        Peer::Netmux,
        Peer::SshDefault,
        Peer::SshAes,
        Peer::Rathole,
        Peer::Socat,
    ];

    /// Peers of bulk (scenarios 1, 2, 9), in table order: the TCP peers and
    /// raw quinn.
    pub const ALL: [Peer; 7] = Self::tcp_and(Peer::Quinn);

    /// Peers of the lan request scenarios (3 and 12): the TCP peers and
    /// the pair of relays, which shows what two hops cost by themselves.
    pub const LAN_REQUESTS: [Peer; 7] = Self::tcp_and(Peer::SocatPair);

    /// [`Peer::TCP`] followed by `last`.
    const fn tcp_and(last: Peer) -> [Peer; 7] {
        let t = Self::TCP;
        [t[0], t[1], t[2], t[3], t[4], t[5], last]
    }

    /// Name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Netmux => "netmux",
            Peer::SshDefault => "ssh -L (default cipher)",
            Peer::SshAes => "ssh -L aes128-gcm",
            Peer::Rathole => "rathole (noise)",
            Peer::Socat => "socat relay",
            Peer::SocatPair => "socat → socat (two relays)",
            Peer::Quinn => "raw quinn (1 stream)",
        }
    }

    /// The alternatives a user would pick: "best peer" is the best of these.
    pub fn is_alternative(self) -> bool {
        matches!(
            self,
            Peer::SshDefault | Peer::SshAes | Peer::Rathole | Peer::Socat
        )
    }

    /// Encrypted alternatives.
    pub fn is_encrypted_alternative(self) -> bool {
        matches!(self, Peer::SshDefault | Peer::SshAes | Peer::Rathole)
    }
}

/// How one peer's figure came out.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// One value per repetition.
    Values(Vec<f64>),
    /// Not measured, and why (tool missing, not applicable).
    Skipped(String),
    /// The measurement failed.
    Failed(String),
}

/// One peer's row of a [`Table`].
#[derive(Debug, Clone)]
pub struct Row {
    pub peer: Peer,
    /// Shown instead of the peer's label (rows that are variants of one
    /// peer, as in scenario 8).
    pub label: Option<&'static str>,
    pub outcome: Outcome,
    /// Values for [`Table::extra_cols`].
    pub extra: Vec<String>,
}

impl Row {
    pub fn name(&self) -> &'static str {
        self.label.unwrap_or_else(|| self.peer.label())
    }

    pub fn median(&self) -> Option<f64> {
        match &self.outcome {
            Outcome::Values(v) if !v.is_empty() => {
                let mut v = v.clone();
                v.sort_by(f64::total_cmp);
                let n = v.len();
                Some(if n % 2 == 1 {
                    v[n / 2]
                } else {
                    (v[n / 2 - 1] + v[n / 2]) / 2.0
                })
            }
            _ => None,
        }
    }

    pub fn min_max(&self) -> Option<(f64, f64)> {
        match &self.outcome {
            Outcome::Values(v) if !v.is_empty() => Some((
                v.iter().copied().fold(f64::INFINITY, f64::min),
                v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            )),
            _ => None,
        }
    }
}

/// One measured figure for every peer.
#[derive(Debug, Clone)]
pub struct Table {
    /// Short id, also the chart's file name (`s1-bulk-lan`).
    pub id: String,
    pub scenario: u8,
    pub title: String,
    /// `lan`, `wan` or `lossy`.
    pub profile: &'static str,
    pub unit: &'static str,
    pub higher_better: bool,
    pub rows: Vec<Row>,
    pub extra_cols: Vec<String>,
    /// Command lines, with `ADDR`/`PORT` standing for each peer's address.
    pub commands: Vec<String>,
    /// /proc/loadavg before and after.
    pub load: (String, String),
    /// The link as ping measured it before the run.
    pub link_check: String,
    pub notes: Vec<String>,
}

impl Table {
    /// A verdict on one of this table's targets.
    pub fn verdict(&self, target: &str, measured: String, met: Option<bool>) -> Verdict {
        Verdict {
            scenario: self.scenario,
            target: target.to_owned(),
            measured,
            met,
        }
    }

    pub fn row(&self, peer: Peer) -> Option<&Row> {
        self.rows.iter().find(|r| r.peer == peer)
    }

    pub fn median(&self, peer: Peer) -> Option<f64> {
        self.row(peer).and_then(Row::median)
    }

    /// The best alternative (ssh, rathole, socat) by median.
    pub fn best_alternative(&self, encrypted_only: bool) -> Option<(Peer, f64)> {
        self.rows
            .iter()
            .filter(|r| {
                if encrypted_only {
                    r.peer.is_encrypted_alternative()
                } else {
                    r.peer.is_alternative()
                }
            })
            .filter_map(|r| r.median().map(|m| (r.peer, m)))
            .reduce(|a, b| {
                let b_better = if self.higher_better {
                    b.1 > a.1
                } else {
                    b.1 < a.1
                };
                if b_better {
                    b
                } else {
                    a
                }
            })
    }
}

/// A target of the issue and how this run did against it.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub scenario: u8,
    pub target: String,
    pub measured: String,
    /// `Some(true)` met, `Some(false)` missed, `None` not measured.
    pub met: Option<bool>,
}

/// Everything a run produced.
#[derive(Debug, Default)]
pub struct Results {
    pub tables: Vec<Table>,
    pub verdicts: Vec<Verdict>,
    /// Scenarios not run, and why.
    pub pending: Vec<(u8, String)>,
    /// (peer, how it was started) for the report.
    pub setup: Vec<(String, String)>,
}

/// /proc/loadavg, trimmed.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// How busy the machine's CPUs were over a run (issue 17): where a peer
/// leaves CPUs idle while its requests circulate, its rate is bound by
/// waiting, not by work. Reads the `cpu` line of /proc/stat at the start
/// and at [`Busy::percent`].
pub struct Busy(Option<String>);

impl Busy {
    pub fn start() -> Busy {
        Busy(std::fs::read_to_string("/proc/stat").ok())
    }

    /// "83%", or "?" when /proc/stat could not be read.
    pub fn percent(&self) -> String {
        let after = std::fs::read_to_string("/proc/stat").ok();
        match (&self.0, after) {
            (Some(a), Some(b)) => {
                busy_share(a, &b).map_or("?".into(), |f| format!("{:.0}%", f * 100.0))
            }
            _ => "?".into(),
        }
    }
}

/// Share of CPU time not idle (idle and iowait) between two readings of
/// /proc/stat's first (`cpu`) line.
pub fn busy_share(before: &str, after: &str) -> Option<f64> {
    fn fields(stat: &str) -> Option<Vec<u64>> {
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        line.split_whitespace().map(|v| v.parse().ok()).collect()
    }
    let (a, b) = (fields(before)?, fields(after)?);
    if a.len() < 5 || a.len() != b.len() {
        return None;
    }
    let d: Vec<u64> = b
        .iter()
        .zip(&a)
        .map(|(x, y)| x.saturating_sub(*y))
        .collect();
    // guest and guest_nice (fields 9 and 10) are already inside user and nice.
    let total: u64 = d.iter().take(8).sum();
    let idle = d[3] + d[4];
    (total > 0).then(|| (total - idle) as f64 / total as f64)
}

fn build() -> anyhow::Result<()> {
    cargo(&[
        "build",
        "--release",
        "-p",
        "netmux-server",
        "-p",
        "netmux-daemon",
        "-p",
        "netmux-cli",
        "-p",
        "sample-apps",
        "-p",
        "bench-tools",
        "--bins",
    ])
}

/// Entry point of `cargo xtask bench`.
pub fn bench(opts: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut settings = Settings::new(opts.quick);
    settings.no_build = opts.no_build;
    let wanted = |n: u8| opts.scenarios.is_empty() || opts.scenarios.contains(&n);
    if opts.no_build {
        println!("==> bench: --no-build: using the release binaries as they are");
    } else {
        println!("==> bench: building release binaries");
        build()?;
    }
    // Scenario 8 measures the eBPF redirect: never with a stale stub.
    if let crate::prereq::EbpfBuild::Stub(why) = crate::prereq::check_daemon_ebpf("release")? {
        println!("==> bench: netmuxd has no eBPF programs ({why}): scenario 8 cannot run");
    }

    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    if opts.profile {
        settings.profile = Some(target_dir.join("bench"));
    }
    // The testbed's `bin()` looks here only: benchmarks use release builds.
    let release = target_dir.join("release");
    let bench_bins = std::env::var_os("NETMUX_BENCH_BIN_DIR").map(PathBuf::from);
    if opts.callgrind {
        let dir = target_dir.join("bench/callgrind");
        // NETMUX_BENCH_BIN_DIR: binaries or symlinks (callgrind does not
        // follow a wrapper script's exec).
        let wrapped = callgrind::prepare(bench_bins.as_deref().unwrap_or(&release), &dir)?;
        println!(
            "==> bench: --callgrind: netmuxd and netmux-server run under callgrind ({})",
            dir.display()
        );
        std::env::set_var("NETMUX_BIN_DIR", wrapped);
        settings.callgrind = Some(dir);
    } else if let Some(dir) = bench_bins {
        // Experiments: a directory of wrappers (e.g. one binary with other
        // environment) and symlinks standing in for target/release.
        println!("==> bench: binaries from NETMUX_BENCH_BIN_DIR={dir:?}");
        std::env::set_var("NETMUX_BIN_DIR", dir);
    } else {
        std::env::set_var("NETMUX_BIN_DIR", &release);
    }
    let tools = tools::prepare(!opts.no_install);
    let load_start = loadavg();
    let mut results = Results::default();
    {
        let sb = netmux_testbed::Sandbox::with_prefix("nxb").context("creating the sandbox")?;
        let teardown = sb.teardown_handle();
        let _ = ctrlc::set_handler(move || {
            eprintln!("bench: interrupted, tearing the sandbox down");
            teardown.run();
            std::process::exit(130);
        });
        let mut world = world::World::start(&sb, &tools, &settings)?;
        results.setup = world.setup_commands.clone();
        for (peer, why) in &world.unavailable {
            println!("bench: {} is skipped: {why}", peer.label());
        }
        let run = scenarios::run_all(&mut world, &settings, &wanted, &mut results);
        if let Err(e) = &run {
            eprintln!("bench: stopped early: {e:#}");
            sb.dump_logs(30);
        }
        world.stop();
        run?;
    }
    let elapsed = started.elapsed();
    let out = opts.out.clone().unwrap_or_else(|| {
        if opts.quick {
            target_dir.join("bench/BENCHMARKS.quick.md")
        } else {
            root().join("BENCHMARKS.md")
        }
    });
    let charts = if opts.quick {
        target_dir.join("bench/charts")
    } else {
        root().join("docs/bench")
    };
    report::write(
        &out,
        &charts,
        &results,
        &tools,
        &settings,
        &load_start,
        elapsed,
    )?;
    println!(
        "==> bench: done in {:.0?}; report {} (charts in {})",
        Duration::from_secs(elapsed.as_secs()),
        out.display(),
        charts.display()
    );
    for v in &results.verdicts {
        let mark = match v.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "n/a",
        };
        println!("  {}: {} -> {} [{mark}]", v.scenario, v.target, v.measured);
    }
    Ok(())
}
