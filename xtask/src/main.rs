//! `cargo xtask <task>`: the project's tasks (alias in `.cargo/config.toml`).
//!
//! * `test`: installs missing prerequisites, builds everything, runs unit
//!   tests, then the namespace end-to-end tests one at a time.
//! * `demo`: netmux in a two-namespace sandbox, end to end, then cleans up.
//! * `run -- ARGS`: builds and runs `netmuxd ARGS`.
//! * `fuzz --seconds N`: runs every cargo-fuzz target for N seconds.
//! * `bench [--quick]`: netmux next to ssh -L, rathole, socat and raw quinn
//!   (issue 7); writes BENCHMARKS.md.

mod bench;
mod demo;
mod prereq;
mod util;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use util::{cargo, root, run};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "netmux project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install missing prerequisites, build, run unit and end-to-end tests.
    Test {
        /// Do not install anything (fail later if something is missing).
        #[arg(long)]
        no_install: bool,
        /// Skip the end-to-end (namespace) tests.
        #[arg(long)]
        unit_only: bool,
    },
    /// Run netmux in a two-namespace sandbox and show it working.
    Demo {
        /// Keep the sandbox running until Ctrl-C to try it by hand.
        #[arg(long)]
        wait: bool,
    },
    /// Build and run netmuxd with the given arguments.
    Run {
        /// Arguments for netmuxd (e.g. `-- --config PATH`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every fuzz target in fuzz/ for a while (nightly, cargo-fuzz).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Run only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Benchmarks against the alternatives; writes BENCHMARKS.md.
    Bench(bench::Options),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Test {
            no_install,
            unit_only,
        } => test(no_install, unit_only),
        Task::Demo { wait } => demo::demo(wait),
        Task::Run { args } => {
            // The eBPF programs are built into netmuxd: rust-src and
            // bpf-linker first (a fresh machine has neither).
            prereq::install()?;
            cargo(&["build", "-p", "netmux-daemon", "--bins"])?;
            let bin = root().join("target/debug/netmuxd");
            let mut cmd = std::process::Command::new(&bin);
            cmd.args(&args);
            run(&mut cmd)
        }
        Task::Fuzz { seconds, target } => fuzz(seconds, target.as_deref()),
        Task::Bench(opts) => bench::bench(opts),
    }
}

fn test(no_install: bool, unit_only: bool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    if !no_install {
        prereq::install()?;
    }
    let mut steps: Vec<(&str, Vec<&str>)> = vec![
        ("build", vec!["build", "--workspace", "--all-targets"]),
        (
            "unit tests",
            vec!["test", "--workspace", "--exclude", "netmux-testbed"],
        ),
    ];
    if !unit_only {
        steps.push((
            "end-to-end tests",
            vec!["test", "-p", "netmux-testbed", "--", "--test-threads=1"],
        ));
    }
    let total = steps.len();
    for (i, (name, args)) in steps.into_iter().enumerate() {
        println!(
            "==> xtask test: step {}/{total}: {name}: cargo {}",
            i + 1,
            args.join(" ")
        );
        if name == "end-to-end tests" {
            // Leftovers of crashed runs would only confuse the logs.
            let _ = netmux_testbed::cleanup_stale(netmux_testbed::DEFAULT_PREFIX);
        }
        if let Err(e) = cargo(&args) {
            println!(
                "xtask test: FAILED at step {}/{total} ({name}) after {:.0?}: {e:#}",
                i + 1,
                started.elapsed()
            );
            std::process::exit(1);
        }
    }
    println!(
        "xtask test: all {total} steps passed in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

fn fuzz(seconds: u64, only: Option<&str>) -> anyhow::Result<()> {
    let fuzz_dir = root().join("fuzz");
    if !util::succeeds(std::process::Command::new("cargo").args(["fuzz", "--version"])) {
        println!("==> installing cargo-fuzz");
        cargo(&["install", "cargo-fuzz", "--locked"])?;
    }
    let mut targets: Vec<String> = std::fs::read_dir(fuzz_dir.join("fuzz_targets"))
        .context("reading fuzz/fuzz_targets")?
        .filter_map(|e| e.ok())
        .map(|e| PathBuf::from(e.file_name()))
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    targets.sort();
    if let Some(t) = only {
        if !targets.iter().any(|x| x == t) {
            bail!("no fuzz target {t:?}; targets: {targets:?}");
        }
        targets.retain(|x| x == t);
    }
    let mut failed = Vec::new();
    for t in &targets {
        println!("==> fuzzing {t} for {seconds} s");
        let mut cmd = std::process::Command::new("cargo");
        cmd.current_dir(root())
            .args(["+nightly", "fuzz", "run", "--fuzz-dir"])
            .arg(&fuzz_dir)
            .arg(t)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"));
        if let Err(e) = run(&mut cmd) {
            println!("fuzz target {t} failed: {e:#}");
            failed.push(t.clone());
        }
    }
    if failed.is_empty() {
        println!(
            "xtask fuzz: {} targets ran {seconds} s each without a crash",
            targets.len()
        );
        Ok(())
    } else {
        bail!("fuzz targets failed: {failed:?} (crashes are in fuzz/artifacts/)")
    }
}
