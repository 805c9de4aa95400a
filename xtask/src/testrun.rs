//! `cargo xtask test`: prerequisites, build, then each test step with its
//! passed/failed/skipped counts, and a total line CI logs can be read by.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::prereq::{self, EbpfBuild};
use crate::util::{cargo, cargo_command};

/// What one step counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub passed: u64,
    pub failed: u64,
    /// Tests that reported a skip (`NETMUX_ALLOW_SKIP=1`) plus ignored ones.
    pub skipped: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.skipped += o.skipped;
    }
}

/// Parses libtest's `test result: ok. 3 passed; 1 failed; 2 ignored; ...`.
pub(crate) fn parse_result_line(line: &str) -> Option<Counts> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_, rest) = rest.split_once(". ")?;
    let mut c = Counts::default();
    for part in rest.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => c.passed += n,
            "failed" => c.failed += n,
            "ignored" => c.skipped += n,
            _ => {}
        }
    }
    Some(c)
}

/// Runs `cargo args`, echoing its stdout, and sums libtest's result lines.
/// Skips reported through [`netmux_testbed::prereq`] are counted from the
/// step's skip log and moved from "passed" to "skipped".
fn run_tests(args: &[&str], skip_log: &PathBuf) -> anyhow::Result<(Counts, bool)> {
    let _ = std::fs::remove_file(skip_log);
    let mut cmd = cargo_command(args);
    cmd.env(netmux_testbed::prereq::SKIP_LOG_ENV, skip_log)
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut counts = Counts::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's output")?;
        println!("{line}");
        if let Some(c) = parse_result_line(&line) {
            counts.add(c);
        }
    }
    let ok = child.wait().context("waiting for cargo")?.success();
    let skipped = std::fs::read_to_string(skip_log)
        .map(|s| s.lines().filter(|l| !l.trim().is_empty()).count() as u64)
        .unwrap_or(0);
    counts.passed = counts.passed.saturating_sub(skipped);
    counts.skipped += skipped;
    if !ok && counts.failed == 0 {
        // A build error or a crashed test binary: count the step as failed.
        counts.failed = 1;
    }
    Ok((counts, ok))
}

/// `cargo xtask test`.
pub(crate) fn test(no_install: bool, unit_only: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    if !no_install {
        prereq::install()?;
    }
    let mut summary: Vec<String> = Vec::new();
    let t = Instant::now();
    println!("==> xtask test: build: cargo build --workspace --all-targets");
    if let Err(e) = cargo(&["build", "--workspace", "--all-targets"]) {
        println!("xtask test: build FAILED after {:.0?}: {e:#}", t.elapsed());
        std::process::exit(1);
    }
    match prereq::check_daemon_ebpf("debug")? {
        EbpfBuild::Real => summary.push(format!(
            "build: ok, netmuxd embeds the real eBPF programs ({})",
            secs(t.elapsed())
        )),
        EbpfBuild::Stub(why) => summary.push(format!(
            "build: ok, but netmuxd embeds the eBPF STUB ({why}): the eBPF tests will fail \
             ({})",
            secs(t.elapsed())
        )),
    }

    let t = Instant::now();
    println!("==> xtask test: supply chain: cargo deny check licenses bans sources (offline)");
    let deny = crate::deny::check();
    summary.push(format!(
        "supply chain (cargo deny): {} ({})",
        match &deny {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("FAILED: {e:#}"),
        },
        secs(t.elapsed())
    ));
    let mut failed_steps = u64::from(deny.is_err());

    let mut steps: Vec<(&str, Vec<&str>)> = vec![(
        "unit tests",
        vec![
            "test",
            "--workspace",
            "--exclude",
            "netmux-testbed",
            "--no-fail-fast",
        ],
    )];
    // The vendored quinn and quinn-proto are not workspace members but
    // workspaces of their own, so that upstream's tests, with their
    // dev-dependencies, run against netmux's changes (and netmux's own tests
    // of them; vendor/*/README.netmux.md). Upstream's ignored stress tests
    // of quinn run too.
    for (name, manifest) in [
        (
            "vendored quinn tests (upstream's and netmux's)",
            "vendor/quinn/Cargo.toml",
        ),
        (
            "vendored quinn-proto tests (upstream's and netmux's)",
            "vendor/quinn-proto/Cargo.toml",
        ),
    ] {
        steps.push((
            name,
            vec![
                "test",
                "--manifest-path",
                manifest,
                "--target-dir",
                "target/vendor",
                "--lib",
                "--no-fail-fast",
                "--",
                "--include-ignored",
            ],
        ));
    }
    if !unit_only {
        steps.push((
            "end-to-end tests",
            vec![
                "test",
                "-p",
                "netmux-testbed",
                "--no-fail-fast",
                "--",
                "--test-threads=1",
            ],
        ));
    }
    let mut total = Counts::default();
    let skip_log = std::env::temp_dir().join(format!("netmux-skips-{}", std::process::id()));
    for (name, args) in steps {
        println!("==> xtask test: {name}: cargo {}", args.join(" "));
        if name == "end-to-end tests" {
            // Leftovers of crashed runs would only confuse the logs.
            let _ = netmux_testbed::cleanup_stale(netmux_testbed::DEFAULT_PREFIX);
        }
        let t = Instant::now();
        let (c, ok) = run_tests(&args, &skip_log)?;
        total.add(c);
        summary.push(format!(
            "{name}: passed {}, failed {}, skipped {}{} ({})",
            c.passed,
            c.failed,
            c.skipped,
            if ok { "" } else { " FAILED" },
            secs(t.elapsed())
        ));
    }
    let _ = std::fs::remove_file(&skip_log);
    if !unit_only {
        let t = Instant::now();
        println!("==> xtask test: fuzz smoke: every cargo-fuzz target for a few seconds");
        let fuzz = crate::fuzz::smoke();
        summary.push(format!(
            "fuzz smoke: {} ({})",
            match &fuzz {
                Ok(()) => "ok, no crash".to_owned(),
                Err(e) => format!("FAILED: {e:#}"),
            },
            secs(t.elapsed())
        ));
        failed_steps += u64::from(fuzz.is_err());
    }
    println!();
    for line in &summary {
        println!("xtask test: {line}");
    }
    println!(
        "xtask test: total: passed {}, failed {}, skipped {} in {}",
        total.passed,
        total.failed,
        total.skipped,
        secs(started.elapsed())
    );
    if total.failed > 0 || failed_steps > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.0} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_counted() {
        let c = parse_result_line(
            "test result: FAILED. 12 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 3.21s",
        )
        .unwrap();
        assert_eq!(
            c,
            Counts {
                passed: 12,
                failed: 2,
                skipped: 1
            }
        );
        assert_eq!(parse_result_line("running 3 tests"), None);
        assert_eq!(
            parse_result_line("test result: ok. 0 passed; 0 failed; 0 ignored"),
            Some(Counts::default())
        );
    }
}
