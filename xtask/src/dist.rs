//! `cargo xtask dist`: what users install, built into `target/dist/`:
//!
//! * `netmux-x86_64-linux`, `netmuxd-x86_64-linux`, `netmux-server-x86_64-linux`:
//!   static binaries (musl; see [`TRIPLE`]), `netmuxd` with the real eBPF
//!   object (checked with `netmuxd --build-info`);
//! * `netmux_VERSION_amd64.deb` ([`deb`]);
//! * `netmux-server-VERSION-image.tar`: the server image, no base image
//!   pulled ([`oci`]), loadable with `docker load`;
//! * `install.sh` (packaging/install.sh) and `SHA256SUMS` over all of them.
//!
//! The dependencies are checked against deny.toml first ([`crate::deny`]).
//! `--check` then runs the tests of all this
//! (netmux-testbed/tests/dist_e2e.rs) against the fresh `target/dist`.

mod deb;
mod oci;
mod tar;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};

use crate::prereq::{self, EbpfBuild};
use crate::util::{bpf_linker_id, on_path, root, run};

/// musl, not glibc: glibc's static linking breaks NSS (getpwnam for the
/// socket group and `sudo` user resolution would silently find nothing
/// outside /etc/passwd) and warns on every getaddrinfo; musl links fully
/// static with none of that. Nothing netmux links needs glibc (rustls +
/// ring instead of OpenSSL, no C libraries but ring's own code).
pub(crate) const TRIPLE: &str = "x86_64-unknown-linux-musl";
/// Suffix of the binaries' names in `target/dist`.
const PLATFORM: &str = "x86_64-linux";
/// Debian's name for the architecture.
const DEB_ARCH: &str = "amd64";
/// The binaries, in the order they are listed.
const BINARIES: &[&str] = &["netmux", "netmuxd", "netmux-server"];

/// `cargo xtask dist` options.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Use the binaries already in target/x86_64-unknown-linux-musl/release.
    #[arg(long)]
    no_build: bool,
    /// Afterwards run the dist tests (netmux-testbed/tests/dist_e2e.rs:
    /// .deb with lintian and dpkg --root, image in dockerd, install.sh).
    #[arg(long)]
    check: bool,
}

/// Where dist puts its artifacts.
pub(crate) fn dist_dir() -> PathBuf {
    root().join("target/dist")
}

/// `cargo xtask dist`.
pub(crate) fn dist(opts: Options) -> Result<()> {
    let started = std::time::Instant::now();
    tools()?;
    // What is shipped is checked against the supply-chain policy first.
    crate::deny::check()?;
    let version = env!("CARGO_PKG_VERSION");
    let (revision, epoch) = revision()?;
    let release = root().join("target").join(TRIPLE).join("release");
    if !opts.no_build {
        build()?;
    }
    for b in BINARIES {
        let path = release.join(b);
        ensure!(
            is_static(&path)?,
            "{} is dynamically linked (it has an ELF interpreter); the {TRIPLE} build must be static",
            path.display()
        );
    }
    match prereq::check_daemon_ebpf(&format!("{TRIPLE}/release"))? {
        EbpfBuild::Real => {}
        EbpfBuild::Stub(why) => bail!(
            "{}/netmuxd embeds the eBPF stub ({why}): dist ships only the real object; \
             install bpf-linker and nightly rust-src (cargo xtask test installs them) and run again",
            release.display()
        ),
    }

    let dist = dist_dir();
    let work = root().join("target/dist-work");
    for d in [&dist, &work] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("emptying {}", d.display()))?;
        }
        fs::create_dir_all(d)?;
    }
    // Stripped copies: the .deb, the image and the plain binaries are the same bytes.
    let bindir = work.join("bin");
    fs::create_dir_all(&bindir)?;
    for b in BINARIES {
        let to = bindir.join(b);
        fs::copy(release.join(b), &to).with_context(|| format!("copying {b}"))?;
        run(Command::new("strip").arg(&to))?;
        fs::copy(&to, dist.join(format!("{b}-{PLATFORM}")))?;
    }

    let deb = deb::build(
        &deb::DebSpec {
            version,
            revision: &revision,
            arch: DEB_ARCH,
            bindir: &bindir,
            epoch,
            work: &work,
        },
        &dist,
    )?;
    let image_file = dist.join(image_file_name(version));
    let ca_bundle = PathBuf::from("/etc/ssl/certs/ca-certificates.crt");
    let image = oci::build(
        &oci::ImageSpec {
            version,
            revision: &revision,
            created: epoch,
            binary: &bindir.join("netmux-server"),
            ca_bundle: &ca_bundle,
        },
        &image_file,
    )?;
    fs::copy(root().join("packaging/install.sh"), dist.join("install.sh"))?;
    let sums = write_sums(&dist)?;

    println!("==> target/dist (commit {revision}, SOURCE_DATE_EPOCH={epoch}):");
    print!("{sums}");
    println!(
        "    image {} (manifest {}, id {})",
        image.reference, image.manifest_digest, image.config_digest
    );
    println!(
        "    deb {}; built in {:.0?}",
        deb.file_name().unwrap_or_default().to_string_lossy(),
        started.elapsed()
    );
    if opts.check {
        check(&dist)?;
    }
    Ok(())
}

/// File name of the image tarball.
pub(crate) fn image_file_name(version: &str) -> String {
    format!("netmux-server-{version}-image.tar")
}

/// Runs the dist tests against `dist`.
fn check(dist: &Path) -> Result<()> {
    println!("==> dist --check: cargo test -p netmux-testbed --test dist_e2e");
    let mut cmd = crate::util::cargo_command(&[
        "test",
        "-p",
        "netmux-testbed",
        "--test",
        "dist_e2e",
        "--",
        "--test-threads=1",
    ]);
    cmd.env("NETMUX_DIST_DIR", dist);
    run(&mut cmd)
}

/// The build tools dist needs; installs the musl target and the eBPF
/// toolchain when missing, names the Debian package of anything else.
fn tools() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup")?;
    if !String::from_utf8_lossy(&installed.stdout).contains(TRIPLE) {
        println!("==> rustup target add {TRIPLE}");
        run(Command::new("rustup").args(["target", "add", TRIPLE]))?;
    }
    if !prereq::ebpf_toolchain_present() {
        prereq::install()?;
    }
    let needed = [
        ("musl-gcc", "musl-tools"),
        ("dpkg-deb", "dpkg"),
        ("strip", "binutils"),
        ("gzip", "gzip"),
        ("sha256sum", "coreutils"),
        ("md5sum", "coreutils"),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        bail!(
            "cargo xtask dist needs: apt-get install {}",
            missing.join(" ")
        );
    }
    if !Path::new("/etc/ssl/certs/ca-certificates.crt").is_file() {
        bail!(
            "the image ships /etc/ssl/certs/ca-certificates.crt: apt-get install ca-certificates"
        );
    }
    Ok(())
}

/// `nice -n 10 cargo build --release --locked --target TRIPLE` of the three
/// binaries' packages.
fn build() -> Result<()> {
    let mut args: Vec<&str> = vec!["build", "--release", "--locked", "--target", TRIPLE];
    for p in ["netmux-daemon", "netmux-server"] {
        args.extend(["-p", p]);
    }
    // The CLI moved into its own crate; before that, netmux-daemon built it.
    if root().join("netmux-cli/Cargo.toml").is_file() {
        args.extend(["-p", "netmux-cli"]);
    }
    println!("==> nice -n 10 cargo {}", args.join(" "));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new("nice");
    cmd.arg("-n")
        .arg("10")
        .arg(cargo)
        .args(&args)
        .current_dir(root())
        .env("NETMUX_BPF_LINKER", bpf_linker_id().unwrap_or_default());
    run(&mut cmd)
}

/// The commit (with `-dirty` when the tree has changes) and the time every
/// artifact is stamped with: `$SOURCE_DATE_EPOCH`, else the commit's time.
fn revision() -> Result<(String, u64)> {
    let git = |args: &[&str]| -> Result<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(root())
            .output()
            .context("running git")?;
        ensure!(out.status.success(), "git {} failed", args.join(" "));
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let mut rev = git(&["rev-parse", "--short=12", "HEAD"])?;
    if !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty() {
        rev.push_str("-dirty");
    }
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
        Err(_) => git(&["log", "-1", "--format=%ct"])?
            .parse()
            .context("git log -1 --format=%ct")?,
    };
    Ok((rev, epoch))
}

/// Whether the ELF file at `path` has no program interpreter (PT_INTERP):
/// statically linked, also as static-pie.
fn is_static(path: &Path) -> Result<bool> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    elf_has_no_interpreter(&bytes).with_context(|| format!("{}: not an ELF64 file", path.display()))
}

fn elf_has_no_interpreter(b: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        if u32_at(phoff + i * phentsize)? == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

/// Writes `SHA256SUMS` (sha256sum's format) over every file in `dist`.
fn write_sums(dist: &Path) -> Result<String> {
    let mut names: Vec<String> = fs::read_dir(dist)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.retain(|n| n != "SHA256SUMS");
    names.sort();
    let mut sums = String::new();
    for n in &names {
        let bytes = fs::read(dist.join(n))?;
        sums.push_str(&format!("{}  {n}\n", sha256_hex(&bytes)?));
    }
    fs::write(dist.join("SHA256SUMS"), &sums)?;
    Ok(sums)
}

/// SHA-256 of `bytes`, in hex, by coreutils' `sha256sum`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running sha256sum")?;
    // sha256sum prints only after EOF: writing everything first cannot block.
    child
        .stdin
        .take()
        .context("sha256sum stdin")?
        .write_all(bytes)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "sha256sum failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or_default();
    ensure!(hex.len() == 64, "sha256sum printed {text:?}");
    Ok(hex.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_known_string() {
        assert_eq!(
            sha256_hex(b"abc").expect("sha256sum"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn interpreter_detection() {
        // This test binary is dynamically linked (glibc host target).
        let me = std::env::current_exe().expect("current exe");
        assert!(!is_static(&me).expect("elf"));
        assert!(elf_has_no_interpreter(b"not an elf").is_none());
        // A minimal ELF64 header with no program headers: static.
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        assert_eq!(elf_has_no_interpreter(&h), Some(true));
    }
}
