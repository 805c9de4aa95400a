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
mod demo_docker;
mod deny;
mod dist;
mod fuzz;
mod prereq;
mod testrun;
mod util;

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
        /// The server's runtime: `static` (a services file) or `docker`
        /// (a private dockerd with compose-like containers).
        #[arg(long, default_value = "static", value_parser = ["static", "docker"])]
        runtime: String,
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
    /// Static binaries, .deb, server image, install.sh and SHA256SUMS in target/dist.
    Dist(dist::Options),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Test {
            no_install,
            unit_only,
        } => testrun::test(no_install, unit_only),
        Task::Demo { wait, runtime } if runtime == "docker" => {
            prereq::install()?;
            demo_docker::demo_docker(wait)
        }
        Task::Demo { wait, .. } => demo::demo(wait),
        Task::Run { args } => {
            // The eBPF programs are built into netmuxd: rust-src and
            // bpf-linker first (a fresh machine has neither).
            prereq::install()?;
            cargo(&["build", "-p", "netmux-daemon", "--bins"])?;
            if let prereq::EbpfBuild::Stub(why) = prereq::check_daemon_ebpf("debug")? {
                println!("xtask run: netmuxd has no eBPF programs ({why}); it will use the loopback redirect");
            }
            let bin = root().join("target/debug/netmuxd");
            let mut cmd = std::process::Command::new(&bin);
            cmd.args(&args);
            run(&mut cmd)
        }
        Task::Fuzz { seconds, target } => fuzz::run(seconds, target.as_deref()),
        Task::Bench(opts) => bench::bench(opts),
        Task::Dist(opts) => dist::dist(opts),
    }
}
