//! `cargo xtask bench --callgrind` (issue 17): netmuxd and netmux-server
//! run under valgrind's callgrind, and scenario 13 reports user-space
//! instructions per GiB and per request instead of CPU time.
//!
//! Instruction counts do not depend on what else runs on the machine, so
//! they decide CPU questions on a loaded 2-vCPU box where wall-clock and
//! CPU-time figures swing by tens of percent. They miss the kernel's share
//! (syscalls, copies, wakeups: scenario 13's strace column counts those),
//! and callgrind runs the threads of a process one at a time, so batching
//! and wakeups differ from a native run.
//!
//! How: the harness points the testbed's binary lookup at a directory where
//! `netmuxd` and `netmux-server` are scripts that `exec valgrind
//! --tool=callgrind` on the real binaries (everything else is a symlink).
//! Around a bounded run it zeroes the counters (`callgrind_control -z`) and
//! dumps them (`callgrind_control -d`); the dump's `totals:` line is the
//! count of that run. The dumps stay in `target/bench/callgrind/` for
//! `callgrind_annotate --inclusive=yes` (callers of memmove, wakeups).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The wrapped binaries.
const WRAPPED: [&str; 2] = ["netmuxd", "netmux-server"];

/// Builds the wrapper directory in `out` for the binaries in `release`;
/// returns it (to be used as `NETMUX_BIN_DIR`).
pub fn prepare(release: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let bin = out.join("bin");
    if bin.exists() {
        std::fs::remove_dir_all(&bin).with_context(|| format!("clearing {}", bin.display()))?;
    }
    std::fs::create_dir_all(&bin)?;
    for entry in std::fs::read_dir(release)? {
        let entry = entry?;
        let name = entry.file_name();
        let path = entry.path();
        if !path.is_file() || WRAPPED.iter().any(|w| name == *w) {
            continue;
        }
        std::os::unix::fs::symlink(&path, bin.join(&name))?;
    }
    for name in WRAPPED {
        let real = release.join(name);
        if !real.is_file() {
            bail!("{} is not built", real.display());
        }
        let script = format!(
            "#!/bin/sh\nexec valgrind -q --tool=callgrind --callgrind-out-file={}/callgrind.{name}.%p {} \"$@\"\n",
            out.display(),
            real.display()
        );
        let p = bin.join(name);
        std::fs::write(&p, script)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(bin)
}

fn control(arg: &str, pid: u32) -> anyhow::Result<()> {
    let out = Command::new("callgrind_control")
        .args([arg, &pid.to_string()])
        .output()
        .context("running callgrind_control (valgrind installed?)")?;
    if !out.status.success() || String::from_utf8_lossy(&out.stdout).contains("not detected") {
        bail!(
            "callgrind_control {arg} {pid}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Zeroes the counters of the callgrind run `pid`.
pub fn zero(pid: u32) -> anyhow::Result<()> {
    control("-z", pid)
}

/// Dumps the counters of `pid` (callgrind files under `out`, wrapped binary
/// `name`) and returns the instructions since the last zero or dump, with
/// the dump's path.
pub fn dump(out: &Path, name: &str, pid: u32) -> anyhow::Result<(u64, PathBuf)> {
    let base = format!("callgrind.{name}.{pid}.");
    let parts = |dir: &Path| -> Vec<u32> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| {
                    let n = e.ok()?.file_name().to_string_lossy().into_owned();
                    n.strip_prefix(&base)?.parse().ok()
                })
                .collect()
            })
            .unwrap_or_default()
    };
    let before = parts(out).into_iter().max().unwrap_or(0);
    control("-d", pid)?;
    let want = out.join(format!("{base}{}", before + 1));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(text) = std::fs::read_to_string(&want) {
            if let Some(n) = text
                .lines()
                .find_map(|l| l.strip_prefix("totals:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
            {
                return Ok((n, want));
            }
        }
        if Instant::now() > deadline {
            bail!("callgrind wrote no {} within 120 s", want.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
