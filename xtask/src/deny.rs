//! Supply-chain policy, offline: `cargo deny check licenses bans sources`
//! with the policy in deny.toml. None of these three needs the advisory
//! database (`advisories` is not run: it needs RustSec's from the network).
//!
//! cargo-deny's own `cargo metadata` call resolves every platform and so
//! wants Windows and macOS crates downloaded, which a machine that only
//! built for Linux does not have. So the metadata is made here with
//! `cargo metadata --offline --filter-platform` for [`TARGETS`] (deny.toml's
//! `[graph] targets`) and handed over with `--metadata-path`; `--offline`
//! keeps cargo-deny itself off the network.

use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::util::{root, run, succeeds};

/// The checks run (all but `advisories`).
pub(crate) const CHECKS: &[&str] = &["licenses", "bans", "sources"];
/// The platforms checked: what dist builds (deny.toml lists the same).
pub(crate) const TARGETS: &[&str] = &[
    "x86_64-unknown-linux-gnu",
    "x86_64-unknown-linux-musl",
    "aarch64-unknown-linux-gnu",
];

/// Runs the checks; installs cargo-deny from crates.io first if missing
/// (the only step that needs the network).
pub(crate) fn check() -> Result<()> {
    if !succeeds(Command::new("cargo").args(["deny", "--version"])) {
        println!("==> installing cargo-deny (cargo install cargo-deny --locked)");
        run(Command::new("cargo").args(["install", "cargo-deny", "--locked"]))
            .context("installing cargo-deny")?;
    }
    let metadata = root().join("target/deny-metadata.json");
    let mut meta = Command::new("cargo");
    meta.current_dir(root()).args([
        "metadata",
        "--offline",
        "--locked",
        "--all-features",
        "--format-version",
        "1",
    ]);
    for t in TARGETS {
        meta.args(["--filter-platform", t]);
    }
    let out = meta.output().context("running cargo metadata")?;
    ensure!(
        out.status.success(),
        "cargo metadata --offline failed (run any cargo build once so the crates are in the local registry): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&metadata, &out.stdout)
        .with_context(|| format!("writing {}", metadata.display()))?;
    println!("==> cargo deny --offline check {}", CHECKS.join(" "));
    // cargo-deny first runs its own `cargo fetch` for every platform; on a
    // machine that never fetched Windows or macOS crates that fails offline
    // and is logged as an [ERROR], then the check goes on with the Linux
    // metadata above. Said here so the line is not taken for a failure.
    println!(
        "    (an \"[ERROR] failed to fetch crates\" line below for Windows or macOS crates is cargo-deny's own offline fetch; the check covers {} and its result is the last line)",
        TARGETS.join(", ")
    );
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .args(["deny", "--offline", "--locked", "--all-features"])
        .arg("--metadata-path")
        .arg(&metadata)
        .args(["--config", "deny.toml", "check", "--hide-inclusion-graph"])
        .args(CHECKS);
    run(&mut cmd)
        .context("cargo deny found a dependency outside deny.toml's policy (details above)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_toml_lists_the_targets_checked() {
        let text = std::fs::read_to_string(root().join("deny.toml")).expect("deny.toml");
        let graph = &text[text.find("[graph]").expect("[graph]")..];
        let graph = &graph[..graph.find("[licenses]").expect("[licenses]")];
        let listed: Vec<&str> = graph
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"'))
            .filter_map(|l| l.split('"').next())
            .collect();
        assert_eq!(listed, TARGETS);
    }
}
