//! One rule for tests whose prerequisites are missing (root, a tool, a built
//! binary, the real eBPF object): such a test **fails** with the reason,
//! unless `NETMUX_ALLOW_SKIP=1` is set. With it, the skip is written straight
//! to the process's stderr (libtest captures only `print!`/`eprint!`, so the
//! line is seen even for a passing test) and appended to the file named by
//! `NETMUX_SKIP_LOG`, from which `cargo xtask test` counts skips.
//!
//! ```no_run
//! use netmux_testbed::prereq;
//! if !prereq::require("ebpf_e2e::curl", prereq::root()) {
//!     return; // only with NETMUX_ALLOW_SKIP=1
//! }
//! ```

use std::fmt::Display;
use std::io::Write as _;
use std::path::PathBuf;

/// Variable that turns a missing prerequisite from a failure into a skip.
pub const ALLOW_SKIP_ENV: &str = "NETMUX_ALLOW_SKIP";
/// File to which each skip is appended as one line (`test<TAB>reason`).
pub const SKIP_LOG_ENV: &str = "NETMUX_SKIP_LOG";

/// Whether skipping is allowed (`NETMUX_ALLOW_SKIP=1` or `true`).
pub fn skips_allowed() -> bool {
    std::env::var(ALLOW_SKIP_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// `true` when `missing` is `None`. Otherwise panics with the reason and the
/// way to skip, or, with `NETMUX_ALLOW_SKIP=1`, reports the skip where the
/// user sees it and returns `false`: the caller then returns at once.
#[track_caller]
pub fn require(test: &str, missing: Option<impl Display>) -> bool {
    let Some(why) = missing else {
        return true;
    };
    if !skips_allowed() {
        panic!(
            "{test}: prerequisite missing: {why}\n(install it, e.g. with `cargo xtask test`, \
             which installs what is missing; or set {ALLOW_SKIP_ENV}=1 to skip this test)"
        );
    }
    let line = format!("SKIPPED {test}: {why} ({ALLOW_SKIP_ENV}=1)\n");
    // Not eprint!: libtest would swallow it for a passing test.
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(log) = std::env::var_os(SKIP_LOG_ENV).map(PathBuf::from) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
        {
            let _ = writeln!(f, "{test}\t{why}");
        }
    }
    false
}

/// Combines several checks: the first reason found.
pub fn first(checks: impl IntoIterator<Item = Option<String>>) -> Option<String> {
    checks.into_iter().flatten().next()
}

/// Why the tests cannot run as this user: `None` when root.
pub fn root() -> Option<String> {
    (!nix::unistd::geteuid().is_root())
        .then(|| "needs root (network namespaces, cgroups, mounts); run as root".to_owned())
}

/// `name` on PATH, or in /usr/sbin and /sbin (not always on root's PATH
/// under sudo or cargo).
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The first of `tools` not installed, as a reason.
pub fn tools(tools: &[&str]) -> Option<String> {
    tools
        .iter()
        .find(|t| which(t).is_none())
        .map(|t| format!("{t} not installed (cargo xtask test installs it)"))
}

/// The first of the workspace's `binaries` not built, as a reason.
pub fn binaries(binaries: &[&str]) -> Option<String> {
    binaries
        .iter()
        .find_map(|b| crate::bin(b).err())
        .map(|e| format!("{e} (cargo build --workspace)"))
}

/// Why the built `netmuxd` cannot run the eBPF redirect: `None` when
/// `netmuxd --build-info` says it embeds the real programs.
pub fn ebpf_daemon() -> Option<String> {
    let bin = match crate::bin("netmuxd") {
        Ok(b) => b,
        Err(e) => return Some(format!("{e} (cargo build --workspace)")),
    };
    let out = match std::process::Command::new(&bin)
        .arg("--build-info")
        .output()
    {
        Ok(o) => o,
        Err(e) => return Some(format!("running {} --build-info: {e}", bin.display())),
    };
    let info = String::from_utf8_lossy(&out.stdout);
    if info.contains("ebpf=real") {
        return None;
    }
    Some(format!(
        "{} was built without the eBPF programs ({}); install bpf-linker and nightly \
         rust-src (cargo xtask test does) and rebuild",
        bin.display(),
        info.trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn met_prerequisites_run() {
        assert!(require("t", None::<String>));
    }

    #[test]
    fn first_reason_wins() {
        assert_eq!(
            first([None, Some("a".into()), Some("b".into())]).as_deref(),
            Some("a")
        );
        assert_eq!(first([None, None]), None);
    }

    #[test]
    fn missing_tool_is_named() {
        let why = tools(&["netmux-no-such-tool-xyz"]).unwrap();
        assert!(why.contains("netmux-no-such-tool-xyz"), "{why}");
        assert_eq!(tools(&["sh"]), None);
    }
}
