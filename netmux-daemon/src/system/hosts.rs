//! The daemon's marked block in the hosts file.
//!
//! Everything outside the block is kept byte for byte. The file is replaced
//! atomically (temporary file + rename) so readers never see half a file;
//! where the hosts file is a mount point (containers, `ip netns exec`) rename
//! is impossible and the file is rewritten in place instead.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// First line of the block.
pub const BEGIN: &str = "# BEGIN netmux (managed by netmuxd, do not edit)";
/// Last line of the block.
pub const END: &str = "# END netmux";

/// One hosts line: an address and its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsEntry {
    /// Address the names resolve to.
    pub addr: IpAddr,
    /// Names (validated DNS names only).
    pub names: Vec<String>,
}

/// A hosts file the daemon manages a block in.
#[derive(Debug, Clone)]
pub struct HostsFile {
    path: PathBuf,
}

/// Returns `text` without the netmux block (and with a missing END, without
/// everything after BEGIN: a crashed writer never leaves half a block).
pub fn strip_block(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed == BEGIN {
            inside = true;
            continue;
        }
        if inside {
            if trimmed == END {
                inside = false;
            }
            continue;
        }
        out.push_str(line);
    }
    out
}

/// Renders `text` (without a block) followed by a block for `entries`.
pub fn with_block(text: &str, entries: &[HostsEntry]) -> String {
    let mut out = strip_block(text);
    if entries.is_empty() {
        return out;
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(BEGIN);
    out.push('\n');
    for e in entries {
        out.push_str(&e.addr.to_string());
        for n in &e.names {
            out.push(' ');
            out.push_str(n);
        }
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    out
}

impl HostsFile {
    /// Manages the block in `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        HostsFile { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the block with `entries` (removes it when empty).
    pub fn write(&self, entries: &[HostsEntry]) -> std::io::Result<()> {
        let current = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let next = with_block(&current, entries);
        if next == current {
            return Ok(());
        }
        self.replace(&next)
    }

    /// Removes the block.
    pub fn clear(&self) -> std::io::Result<()> {
        if !self.path.exists() {
            return Ok(());
        }
        self.write(&[])
    }

    fn replace(&self, contents: &str) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "hosts".into());
        let tmp = dir.join(format!(".{name}.netmux.tmp"));
        let perms = fs::metadata(&self.path).ok().map(|m| m.permissions());
        let atomic = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(contents.as_bytes())?;
            f.sync_all()?;
            if let Some(p) = &perms {
                fs::set_permissions(&tmp, p.clone())?;
            }
            fs::rename(&tmp, &self.path)
        })();
        match atomic {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                // EBUSY (a bind mount) or EXDEV: rewrite in place.
                tracing::debug!(path = %self.path.display(), error = %e, "atomic replace failed, writing in place");
                fs::write(&self.path, contents)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(a: &str, names: &[&str]) -> HostsEntry {
        HostsEntry {
            addr: a.parse().unwrap(),
            names: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn block_is_added_replaced_and_removed_leaving_the_rest_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let original = "127.0.0.1 localhost\n# user comment\n::1 ip6-localhost";
        fs::write(&path, original).unwrap();
        let h = HostsFile::new(&path);
        h.write(&[entry("127.77.0.1", &["web", "web.demo"])])
            .unwrap();
        let t = fs::read_to_string(&path).unwrap();
        assert!(t.contains("127.77.0.1 web web.demo\n"));
        assert!(t.starts_with("127.0.0.1 localhost\n# user comment\n::1 ip6-localhost\n"));
        h.write(&[entry("127.77.0.2", &["db"])]).unwrap();
        let t = fs::read_to_string(&path).unwrap();
        assert!(!t.contains("web") && t.contains("127.77.0.2 db"));
        h.clear().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), format!("{original}\n"));
    }

    #[test]
    fn a_half_written_block_is_removed() {
        let text = format!("a\n{BEGIN}\n1.2.3.4 x\n");
        assert_eq!(strip_block(&text), "a\n");
    }
}
