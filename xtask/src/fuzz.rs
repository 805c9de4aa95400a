//! Fuzzing the wire decoders and sessions (`fuzz/`, cargo-fuzz on nightly).
//!
//! * [`run`]: `cargo xtask fuzz --seconds N [--target T]`, the long runs
//!   recorded in docs/fuzzing.md;
//! * [`smoke`]: the short run of every target that `cargo xtask test` (CI)
//!   does, so a target that no longer builds or crashes at once fails CI.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

use crate::util::{cargo, root};

/// Seconds each target runs in the CI smoke.
pub(crate) const SMOKE_SECONDS: u64 = 10;

/// The targets in `fuzz/fuzz_targets`, sorted.
pub(crate) fn targets() -> anyhow::Result<Vec<String>> {
    let dir = root().join("fuzz/fuzz_targets");
    let mut targets: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| PathBuf::from(e.file_name()))
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    targets.sort();
    Ok(targets)
}

/// Installs cargo-fuzz if it is missing.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    if !crate::util::succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        println!("==> installing cargo-fuzz");
        cargo(&["install", "cargo-fuzz", "--locked"])?;
    }
    Ok(())
}

/// Runs target `t` for `seconds`; the executions libFuzzer reports.
fn run_target(t: &str, seconds: u64) -> anyhow::Result<u64> {
    let fuzz_dir = root().join("fuzz");
    let output = Command::new("cargo")
        .current_dir(root())
        .args(["+nightly", "fuzz", "run", "--fuzz-dir"])
        .arg(&fuzz_dir)
        .arg(t)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .output()
        .context("running cargo +nightly fuzz (is the nightly toolchain installed?)")?;
    let log = String::from_utf8_lossy(&output.stderr);
    let runs = executions(&log);
    if !output.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "fuzz target {t} failed ({}); last lines:\n{}\n(crash inputs are in fuzz/artifacts/{t}/)",
            output.status,
            tail.join("\n")
        );
    }
    runs.with_context(|| format!("fuzz target {t}: no \"Done N runs\" line in its output"))
}

/// `N` of libFuzzer's closing `Done N runs in S second(s)`.
fn executions(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        l.strip_prefix("Done ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// `cargo xtask fuzz`: each target (or only `only`) for `seconds`.
pub(crate) fn run(seconds: u64, only: Option<&str>) -> anyhow::Result<()> {
    ensure_cargo_fuzz()?;
    let mut targets = targets()?;
    if let Some(t) = only {
        if !targets.iter().any(|x| x == t) {
            bail!("no fuzz target {t:?}; targets: {targets:?}");
        }
        targets.retain(|x| x == t);
    }
    let mut failed = Vec::new();
    let mut total = 0;
    for t in &targets {
        println!("==> fuzzing {t} for {seconds} s");
        match run_target(t, seconds) {
            Ok(runs) => {
                println!("{t}: {runs} executions, no crash");
                total += runs;
            }
            Err(e) => {
                println!("{e:#}");
                failed.push(t.clone());
            }
        }
    }
    if failed.is_empty() {
        println!(
            "xtask fuzz: {} targets ran {seconds} s each without a crash: {total} executions in total",
            targets.len()
        );
        Ok(())
    } else {
        bail!("fuzz targets failed: {failed:?} (crashes are in fuzz/artifacts/)")
    }
}

/// The CI step: every target for [`SMOKE_SECONDS`]; fails on a crash or a
/// target that does not build.
pub(crate) fn smoke() -> anyhow::Result<()> {
    ensure_cargo_fuzz()?;
    let targets = targets()?;
    for t in &targets {
        let runs = run_target(t, SMOKE_SECONDS)?;
        println!("fuzz smoke: {t}: {runs} executions in {SMOKE_SECONDS} s, no crash");
    }
    println!("fuzz smoke: {} targets without a crash", targets.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_come_from_the_done_line() {
        let log = "#2\tINITED cov: 3\n#1000\tpulse\nDone 25206371 runs in 271 second(s)\n";
        assert_eq!(executions(log), Some(25_206_371));
        assert_eq!(executions("crash\n"), None);
    }

    #[test]
    fn every_target_is_found() {
        let t = targets().expect("fuzz targets");
        assert!(t.contains(&"frame".to_owned()), "{t:?}");
        assert!(t.contains(&"session".to_owned()), "{t:?}");
    }
}
