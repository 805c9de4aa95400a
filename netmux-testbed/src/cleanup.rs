//! Removing what crashed runs left behind.

use std::path::Path;

use crate::netns::{destroy, ip};
use crate::Result;

/// Whether process `pid` exists.
fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// The owning pid of a name `<prefix>-<kind>-<pid>-<n>`, if it is one of ours.
fn owner(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let mut parts = rest.split('-');
    let kind = parts.next()?;
    if !matches!(kind, "ws" | "cl" | "sb") {
        return None;
    }
    let pid = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u32>().ok()?;
    parts.next().is_none().then_some(pid)
}

/// Removes namespaces (`<prefix>-ws-<pid>-<n>`, `<prefix>-cl-<pid>-<n>`),
/// their `/etc/netns` dirs and temp dirs (`<tmp>/<prefix>-sb-<pid>-<n>`)
/// whose creating process is gone, killing any process left inside.
/// Returns what was removed. Sandboxes of live processes are left alone, so
/// this is safe to call while other test runs are going on.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let list = ip(["netns", "list"])?;
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if owner(name, prefix).is_some_and(|pid| !alive(pid)) {
            destroy(name)?;
            removed.push(name.to_owned());
        }
    }
    // /etc/netns dirs whose namespace is already gone.
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner(&name, prefix).is_some_and(|pid| !alive(pid)) {
                let _ = std::fs::remove_dir_all(e.path());
                removed.push(e.path().display().to_string());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner(&name, prefix).is_some_and(|pid| !alive(pid)) {
                let _ = std::fs::remove_dir_all(e.path());
                removed.push(e.path().display().to_string());
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::owner;

    #[test]
    fn only_our_names_are_matched() {
        assert_eq!(owner("nx-ws-123-0", "nx"), Some(123));
        assert_eq!(owner("nx-cl-123-17", "nx"), Some(123));
        assert_eq!(owner("nx-sb-9-1", "nx"), Some(9));
        assert_eq!(owner("nx-ws-123", "nx"), None);
        assert_eq!(owner("nx-ws-123-0-x", "nx"), None);
        assert_eq!(owner("nxt-ws-123-0", "nx"), None);
        assert_eq!(owner("other", "nx"), None);
        assert_eq!(owner("nx-foo-1-2", "nx"), None);
    }
}
