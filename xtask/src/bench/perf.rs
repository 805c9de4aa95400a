//! `cargo xtask bench --profile`: `perf record` of netmuxd and
//! netmux-server while one netmux run of a scenario goes on (scenario 1's
//! bulk, scenario 13's redis GET). Call graphs are unwound from a copy of
//! each sample's stack with the binaries' debug info (`--call-graph dwarf`;
//! the release profile keeps debug info), so they need no frame-pointer
//! build and name inlined callers too. Writes
//! `perf-netmux-NAME.{data,symbols.txt,dso.txt,callers.txt}`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::world::World;

/// A `perf record` attached to both tunnel processes until [`Perf::finish`].
pub(super) struct Perf {
    child: Child,
    data: PathBuf,
    dir: PathBuf,
    name: &'static str,
}

impl Perf {
    /// Starts recording (999 Hz, DWARF call graphs from 16 KiB of stack per
    /// sample: deep enough for tokio's task stacks); `None`
    /// (with the reason printed) when perf or the processes are missing.
    pub(super) fn start(w: &World<'_>, dir: &Path, name: &'static str) -> Option<Perf> {
        let nm = w.netmux.as_ref()?;
        let pids = format!("{},{}", nm.daemon.pid()?, nm.server.pid()?);
        std::fs::create_dir_all(dir).ok()?;
        let data = dir.join(format!("perf-netmux-{name}.data"));
        let child = Command::new("perf")
            .args(["record", "-q", "-F", "999"])
            .args(["--call-graph", "dwarf,16384"])
            .arg("-o")
            .arg(&data)
            .args(["-p", &pids])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| println!("bench: perf record: {e}"))
            .ok()?;
        // perf needs a moment to attach to every thread.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Some(Perf {
            child,
            data,
            dir: dir.to_path_buf(),
            name,
        })
    }

    /// Stops the recording (SIGINT, so perf writes its file) and writes the
    /// reports: flat by symbol, by object, and the callers of each symbol
    /// above 2% (`-g caller`).
    pub(super) fn finish(mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let flat = ["--no-children", "-g", "none", "--percent-limit", "0.5"];
        for (what, args) in [
            ("symbols", vec!["--sort", "comm,dso,symbol"]),
            ("dso", vec!["--sort", "comm,dso"]),
        ] {
            let args: Vec<&str> = flat.iter().copied().chain(args).collect();
            self.report(what, &args);
        }
        self.report(
            "callers",
            &[
                "--no-children",
                "--sort",
                "comm,symbol",
                "-g",
                "caller,0.5,callee,function,percent",
                "--percent-limit",
                "2",
            ],
        );
    }

    fn report(&self, what: &str, args: &[&str]) {
        let out = self
            .dir
            .join(format!("perf-netmux-{}.{what}.txt", self.name));
        match Command::new("perf")
            .args(["report", "--stdio", "-i"])
            .arg(&self.data)
            .args(args)
            .output()
        {
            Ok(o) => {
                let _ = std::fs::write(&out, &o.stdout);
                println!("    profile: {}", out.display());
            }
            Err(e) => println!("bench: perf report: {e}"),
        }
    }
}
