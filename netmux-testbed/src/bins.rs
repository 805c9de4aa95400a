//! Finding the workspace's built binaries from any crate's tests.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Directories searched by [`bin`], in order: `$NETMUX_BIN_DIR` if set
/// (and nothing else), else `<target>/debug` then `<target>/release`, where
/// `<target>` is `$CARGO_TARGET_DIR` or the workspace's `target/`.
pub fn bin_dirs() -> Vec<PathBuf> {
    if let Some(dir) = std::env::var_os("NETMUX_BIN_DIR") {
        return vec![PathBuf::from(dir)];
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")))
                .join("target")
        });
    vec![target.join("debug"), target.join("release")]
}

/// Path of the built binary `name` (e.g. `"netmuxd"`, `"nx-echo"`).
pub fn bin(name: &str) -> Result<PathBuf> {
    let searched = bin_dirs();
    searched
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::BinaryNotFound {
            name: name.to_owned(),
            searched,
        })
}
