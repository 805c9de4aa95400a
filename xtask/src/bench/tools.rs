//! The peer and client tools: installed when missing (apt-get, cargo
//! install), otherwise reported as skipped; their versions go in the report.

use std::path::PathBuf;
use std::process::Command;

use crate::util::{on_path, run};

/// Commands the bench runs, with the Debian package providing each.
const APT: &[(&str, &str)] = &[
    ("iperf3", "iperf3"),
    ("socat", "socat"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("sshd", "openssh-server"),
    ("wrk", "wrk"),
    ("redis-server", "redis-server"),
    ("redis-benchmark", "redis-tools"),
    ("pgbench", "postgresql-contrib"),
    ("ping", "iputils-ping"),
    ("runuser", "util-linux"),
    ("perf", "linux-perf"),
    ("strace", "strace"),
    ("valgrind", "valgrind"),
];

/// What is available for this run.
#[derive(Debug, Default)]
pub struct Tools {
    /// Command -> why it is unavailable.
    pub missing: Vec<(String, String)>,
    /// rathole's binary, if any.
    pub rathole: Option<PathBuf>,
    /// Directory with PostgreSQL's `postgres` and `initdb`.
    pub pg_bin: Option<PathBuf>,
    /// (tool, version line) for the report.
    pub versions: Vec<(String, String)>,
}

impl Tools {
    /// Why `cmd` cannot be used, if it cannot.
    pub fn missing(&self, cmd: &str) -> Option<&str> {
        self.missing
            .iter()
            .find(|(c, _)| c == cmd)
            .map(|(_, why)| why.as_str())
    }
}

fn found(cmd: &str) -> bool {
    on_path(cmd)
        || ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(cmd).is_file())
}

/// `cmd ARGS` output (stdout then stderr), first non-empty line.
fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("?")
                .to_owned()
        })
        .unwrap_or_else(|e| format!("not runnable: {e}"))
}

fn cargo_home_bin(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let p = home.join("bin").join(name);
    p.is_file().then_some(p)
}

fn find_rathole() -> Option<PathBuf> {
    if on_path("rathole") {
        return Some(PathBuf::from("rathole"));
    }
    cargo_home_bin("rathole")
}

fn find_pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("postgres").is_file() && d.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// Installs what is missing (if `install`) and records what is there.
pub fn prepare(install: bool) -> Tools {
    let mut tools = Tools::default();
    let mut pkgs: Vec<&str> = APT
        .iter()
        .filter(|(c, _)| !found(c))
        .map(|(_, p)| *p)
        .collect();
    if find_pg_bin().is_none() {
        pkgs.push("postgresql");
    }
    pkgs.sort();
    pkgs.dedup();
    if install && !pkgs.is_empty() {
        println!("==> bench: apt-get install {}", pkgs.join(" "));
        let ok = run(Command::new("apt-get").arg("update")).is_ok()
            && run(Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&pkgs)
                .env("DEBIAN_FRONTEND", "noninteractive"))
            .is_ok();
        if !ok {
            println!("bench: apt-get failed; the tools still missing are skipped");
        }
    }
    for (cmd, pkg) in APT {
        if !found(cmd) {
            let why = if install {
                format!("`{cmd}` missing after apt-get install {pkg}")
            } else {
                format!("`{cmd}` not installed (package {pkg}; --no-install)")
            };
            tools.missing.push(((*cmd).to_owned(), why));
        }
    }
    tools.pg_bin = find_pg_bin();
    if tools.pg_bin.is_none() {
        tools
            .missing
            .push(("postgres".into(), "PostgreSQL server not installed".into()));
    }
    tools.rathole = find_rathole();
    if tools.rathole.is_none() && install {
        // Not --locked: rathole 0.5.0's lock file pins `time` 0.3.29, which
        // current rustc rejects (E0282); the resolver picks a fixed `time`.
        println!("==> bench: cargo install rathole (noise transport only)");
        let _ = run(Command::new("cargo").args([
            "install",
            "rathole",
            "--no-default-features",
            "--features",
            "server,client,noise",
        ]));
        tools.rathole = find_rathole();
    }
    if tools.rathole.is_none() {
        tools.missing.push((
            "rathole".into(),
            "rathole not installed (cargo install rathole failed or --no-install)".into(),
        ));
    }
    let mut v = |name: &str, line: String| tools.versions.push((name.to_owned(), line));
    v("rustc", first_line("rustc", &["--version"]));
    v("quinn", lock_version("quinn"));
    v("rustls", lock_version("rustls"));
    v("iperf3", first_line("iperf3", &["--version"]));
    v("OpenSSH", first_line("ssh", &["-V"]));
    v("socat", {
        let out = Command::new("socat").arg("-V").output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.contains("socat version"))
                .unwrap_or("?")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|_| "?".into())
    });
    if let Some(r) = &tools.rathole {
        let line = first_line(&r.to_string_lossy(), &["--version"]);
        v("rathole", line);
    }
    v("wrk", first_line("wrk", &["-v"]));
    v("redis-server", first_line("redis-server", &["--version"]));
    v("pgbench", first_line("pgbench", &["--version"]));
    if let Some(pg) = &tools.pg_bin {
        v(
            "postgres",
            first_line(&pg.join("postgres").to_string_lossy(), &["--version"]),
        );
    }
    v("kernel", first_line("uname", &["-r"]));
    tools
}

/// `name`'s version in Cargo.lock (first entry).
fn lock_version(name: &str) -> String {
    let lock = std::fs::read_to_string(crate::util::root().join("Cargo.lock")).unwrap_or_default();
    let needle = format!("name = \"{name}\"\nversion = \"");
    lock.find(&needle)
        .and_then(|i| {
            let rest = &lock[i + needle.len()..];
            rest.find('"').map(|j| rest[..j].to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// The machine, for the report.
pub fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "?".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    vec![
        ("CPU".into(), model),
        ("vCPUs".into(), cpus),
        ("memory".into(), mem),
    ]
}
