//! netmuxd never runs a kubeconfig's credential plugin: the code that does
//! (`netmux-cli/src/credentials.rs`, reached through the CLI's hidden
//! `__kube-credentials` subcommand) is not linked into it.
//!
//! Two checks, so that either way of bringing it back fails here:
//! * the daemon's normal and build dependencies do not include
//!   `netmux-cli` (`cargo tree`);
//! * the built `netmuxd` holds no symbol, panic location or string of the
//!   CLI crate, and not the plugin runner's subcommand name (catches the
//!   code being copied back into this crate).
//!
//! Run: `cargo test -p netmux-daemon --test daemon_links_no_cli`

use std::process::Command;

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn daemon_dependency_tree_has_no_cli() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "netmux-daemon",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // The tree is the real one: the daemon and the shared API are in it.
    assert!(crates.contains(&"netmux-daemon"), "{tree}");
    assert!(crates.contains(&"netmux-api"), "{tree}");
    assert!(
        !crates.contains(&"netmux-cli"),
        "netmux-daemon depends on netmux-cli, which runs kubeconfig credential plugins; \
         share what both need through netmux-api instead:\n{tree}"
    );
}

#[test]
fn netmuxd_binary_holds_no_plugin_runner() {
    let path = env!("CARGO_BIN_EXE_netmuxd");
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    // The binary is the daemon (its own crate's symbols are there), so an
    // absent marker means absent code, not a stripped file.
    assert!(
        contains(&bytes, "netmux_daemon"),
        "{path} has no netmux_daemon symbol: stripped? build it in debug"
    );
    for marker in ["netmux_cli", "netmux-cli/src", "__kube-credentials"] {
        assert!(
            !contains(&bytes, marker),
            "{path} contains {marker:?}: the CLI's credential plugin runner is linked into netmuxd"
        );
    }
}
