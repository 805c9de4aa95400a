//! Builds the eBPF connect-redirect programs (`netmux-ebpf`) for
//! `bpfel-unknown-none` with `aya_build` (nightly, `-Z build-std=core`,
//! bpf-linker) into `$OUT_DIR/netmux-ebpf`, which `src/redirect/ebpf.rs`
//! embeds with `include_bytes_aligned!`.
//!
//! Without the eBPF toolchain, or with `NETMUX_SKIP_EBPF=1`, an empty stub
//! object is written instead (as aya's own integration tests do), so
//! `cargo check`, `cargo clippy` and the rest of the daemon build anywhere;
//! loading the stub at run time fails with a message saying how to rebuild.
//! When the toolchain is present, an eBPF build failure fails the build.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

const EBPF_PACKAGE: &str = "netmux-ebpf";
const SKIP_ENV: &str = "NETMUX_SKIP_EBPF";
const NIGHTLY: &str = "nightly";
/// Set by `cargo xtask` to bpf-linker's path and version, so a toolchain
/// installed or upgraded after a stub build makes this script run again.
const LINKER_ENV: &str = "NETMUX_BPF_LINKER";

fn main() -> Result<()> {
    println!("cargo:rerun-if-env-changed={SKIP_ENV}");
    println!("cargo:rerun-if-env-changed={LINKER_ENV}");
    watch_toolchain();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join(EBPF_PACKAGE);

    if let Some(why) = skip_reason() {
        println!("cargo:warning=netmux-daemon: eBPF redirect not built ({why}); the daemon gets an empty stub object and needs the loopback redirect backend");
        println!("cargo:rustc-env=NETMUX_EBPF_BUILD=stub: {why}");
        fs::write(&object, []).with_context(|| format!("writing stub {}", object.display()))?;
        return Ok(());
    }
    println!("cargo:rustc-env=NETMUX_EBPF_BUILD=real");

    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let root_dir = manifest_dir
        .parent()
        .context("netmux-daemon has no parent directory")?
        .join(EBPF_PACKAGE);
    let root_dir = root_dir.to_str().context("non-UTF-8 path to netmux-ebpf")?;
    // aya_build turns every stderr line of the nested cargo into a
    // `cargo:warning`; keep the "Compiling ..." lines out of everyone's build
    // output. Compiler diagnostics still come through (JSON on stdout).
    // Single-threaded here, so setting the variable is sound.
    env::set_var("CARGO_TERM_QUIET", "true");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF programs (set NETMUX_SKIP_EBPF=1 to build without them)")?;
    anyhow::ensure!(
        object.is_file(),
        "aya_build did not produce {}",
        object.display()
    );
    Ok(())
}

/// Makes cargo run this script again when bpf-linker appears or changes,
/// even without `cargo xtask` (which also sets [`LINKER_ENV`]): a stub built
/// before `cargo install bpf-linker` must never stay cached.
fn watch_toolchain() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => {
            // Where `cargo install` puts it; a directory is scanned for any
            // changed file.
            let cargo_home = env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
            if let Some(bin) = cargo_home.map(|h| h.join("bin")).filter(|b| b.is_dir()) {
                println!("cargo:rerun-if-changed={}", bin.display());
            }
        }
    }
}

/// Why the eBPF object cannot or should not be built, if so.
fn skip_reason() -> Option<String> {
    if let Some(v) = env::var_os(SKIP_ENV) {
        if v == "1" || v.eq_ignore_ascii_case("true") {
            return Some(format!("{SKIP_ENV}={}", v.to_string_lossy()));
        }
    }
    if which::which("bpf-linker").is_err() {
        return Some("bpf-linker not found on PATH; `cargo install bpf-linker`".into());
    }
    if which::which("rustup").is_err() {
        return Some("rustup not found; a nightly toolchain with rust-src is needed".into());
    }
    let sysroot = Command::new("rustup")
        .args(["run", NIGHTLY, "rustc", "--print", "sysroot"])
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output();
    let sysroot = match sysroot {
        Ok(out) if out.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
        _ => {
            return Some(
                "no nightly toolchain; `rustup toolchain install nightly --component rust-src`"
                    .into(),
            )
        }
    };
    if !has_rust_src(&sysroot) {
        return Some(
            "nightly has no rust-src; `rustup component add rust-src --toolchain nightly`".into(),
        );
    }
    None
}

fn has_rust_src(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
}
