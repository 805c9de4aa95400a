//! The daemon's marked block in the hosts file.
//!
//! Everything outside the block is kept byte for byte. The file is replaced
//! atomically (temporary file + rename) where the directory allows it. Where
//! it does not — the hardened unit makes only the file itself writable
//! (`ReadWritePaths=/etc/hosts` is a bind mount: rename onto it is EBUSY and
//! `/etc` is read-only), and so do containers and `ip netns exec` — the file
//! is changed in place without ever truncating what precedes the block:
//! only the bytes from the first difference on are written, a shorter block
//! is padded (trailing spaces on the BEGIN line) instead of shrinking the
//! file, and removing the block is a single `ftruncate` to the user's part.
//! So a concurrent reader, or a file left by a crash, always has the user's
//! lines (`localhost` ...) intact.
//!
//! Names come from [`entries`]: the same rule as the embedded DNS server,
//! names inside the endpoint's cluster domain only (plus the short forms
//! `SVC` and `SVC.NS.svc`, which name nothing outside the cluster).

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::dns::NameRecord;

/// First line of the block.
pub const BEGIN: &str = "# BEGIN netmux (managed by netmuxd, do not edit)";
/// Last line of the block.
pub const END: &str = "# END netmux";

/// One hosts line: an address and its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostsEntry {
    /// Address the names resolve to.
    pub(crate) addr: IpAddr,
    /// Names (validated DNS names only).
    pub(crate) names: Vec<String>,
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

/// Whether `name` is `domain` or inside it.
fn inside(name: &str, domain: &str) -> bool {
    name == domain
        || name
            .strip_suffix(domain)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
}

/// The hosts lines for `records`, with the embedded DNS server's rules
/// (`dns::zone`): names inside the record's cluster domain only, so a
/// catalog alias such as `github.com` or `localhost` is never written;
/// every endpoint gets its qualified `SVC.NS.svc.EP.D` (and qualified
/// in-domain aliases; not for endpoints called `svc` or `pod`); the plain
/// names, and the short forms `SVC` and `SVC.NS.svc`, go to the endpoint
/// connected first. `SVC.NS` is not written: it would be any two-label
/// name (a service `github` in a namespace `com`); it resolves through
/// search domains with a DNS integration.
pub(crate) fn entries(records: &[NameRecord]) -> Vec<HostsEntry> {
    let sorted = NameRecord::by_precedence(records);
    let mut taken: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for r in sorted {
        let domain = r.domain.trim_end_matches('.').to_ascii_lowercase();
        let svc = &r.service;
        let base = format!("{}.{}.svc", svc.name, svc.namespace);
        // Heads relative to the domain: the service's own, then aliases
        // inside the domain.
        let mut heads = vec![base.clone()];
        for alias in &svc.aliases {
            let alias = alias.trim_end_matches('.').to_ascii_lowercase();
            if inside(&alias, &domain) && alias != domain {
                let head = alias[..alias.len() - domain.len() - 1].to_owned();
                if !heads.contains(&head) {
                    heads.push(head);
                }
            } else {
                tracing::debug!(endpoint = %r.endpoint, service = %svc.key(), %alias, %domain, "alias outside the cluster domain: not written to the hosts file");
            }
        }
        let mut plain: Vec<String> = Vec::new();
        if svc.name != "localhost" {
            plain.push(svc.name.clone());
        }
        plain.push(base.clone());
        plain.extend(heads.iter().map(|h| format!("{h}.{domain}")));
        let mut names = Vec::new();
        for n in plain {
            let owner = taken.entry(n.clone()).or_insert(r.endpoint.as_str());
            if *owner == r.endpoint && !names.contains(&n) {
                names.push(n);
            }
        }
        if !matches!(r.endpoint.as_str(), "svc" | "pod") {
            for h in &heads {
                let n = format!("{h}.{}.{domain}", r.endpoint);
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        for addr in &r.addrs {
            out.push(HostsEntry {
                addr: *addr,
                names: names.clone(),
            });
        }
    }
    out
}

/// Renders `text` (without a block) followed by a block for `entries`.
pub(crate) fn with_block(text: &str, entries: &[HostsEntry]) -> String {
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
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the block with `entries` (removes it when empty).
    pub(crate) fn write(&self, entries: &[HostsEntry]) -> std::io::Result<()> {
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
                if !fs::symlink_metadata(&tmp).is_ok_and(|m| m.is_dir()) {
                    let _ = fs::remove_file(&tmp);
                }
                // EROFS (the hardened unit's read-only /etc), EBUSY (a bind
                // mount) or EXDEV: change the file in place.
                tracing::debug!(path = %self.path.display(), error = %e, "atomic replace failed, writing in place");
                write_in_place(&self.path, contents)
            }
        }
    }
}

/// Turns the file at `path` into `contents` without truncating it first:
/// see the module doc. `contents` is `with_block(current, ..)`, so the
/// user's part is a prefix of both the old and the new text.
fn write_in_place(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let mut old = Vec::new();
    f.read_to_end(&mut old)?;
    let new = contents.as_bytes();
    if new.len() < old.len() && old.starts_with(new) {
        // The block goes (or gets shorter at its very end): one truncate.
        f.set_len(new.len() as u64)?;
        return f.sync_all();
    }
    let mut padded;
    let mut new = new;
    if new.len() < old.len() {
        // Keep the length: pad the BEGIN line (`strip_block` compares it
        // with trailing whitespace trimmed). The file shrinks again when
        // the block goes.
        let text = contents;
        let Some(pos) = text.find(&format!("{BEGIN}\n")) else {
            // No block in the new text but not a prefix either (the user
            // part changed meanwhile): nothing safe but a plain rewrite.
            f.seek(SeekFrom::Start(0))?;
            f.write_all(new)?;
            f.set_len(new.len() as u64)?;
            return f.sync_all();
        };
        let at = pos + BEGIN.len();
        padded = Vec::with_capacity(old.len());
        padded.extend_from_slice(&new[..at]);
        padded.resize(at + (old.len() - new.len()), b' ');
        padded.extend_from_slice(&new[at..]);
        new = &padded;
    }
    let same = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    if same == new.len() && new.len() == old.len() {
        return Ok(());
    }
    f.seek(SeekFrom::Start(same as u64))?;
    f.write_all(&new[same..])?;
    f.sync_all()
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

    fn record(ep: &str, connected: u64, name: &str, aliases: &[&str], addr: &str) -> NameRecord {
        NameRecord {
            endpoint: ep.into(),
            domain: "cluster.local".into(),
            connected,
            service: netmux_common::proto::catalog::Service {
                id: netmux_common::proto::catalog::ServiceId(1),
                name: name.into(),
                namespace: "demo".into(),
                aliases: aliases.iter().map(|s| s.to_string()).collect(),
                addresses: vec![addr.parse().unwrap()],
                ports: vec![netmux_common::proto::catalog::ServicePort {
                    name: None,
                    port: 80,
                    target_port: 80,
                    protocol: netmux_common::proto::catalog::Protocol::Tcp,
                }],
                direction: netmux_common::proto::catalog::Direction::L2C,
            },
            addrs: vec![addr.parse().unwrap()],
        }
    }

    #[test]
    fn names_stay_inside_the_cluster_domain() {
        let r = record(
            "demo",
            1,
            "web",
            &[
                "github.com",
                "localhost",
                "web-0.web.demo.svc.cluster.local",
                "cluster.local",
                "evilcluster.local",
            ],
            "127.77.0.1",
        );
        let e = entries(&[r]);
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].names,
            [
                "web",
                "web.demo.svc",
                "web.demo.svc.cluster.local",
                "web-0.web.demo.svc.cluster.local",
                "web.demo.svc.demo.cluster.local",
                "web-0.web.demo.svc.demo.cluster.local",
            ]
        );
        // A service called localhost never shadows localhost.
        let e = entries(&[record("demo", 1, "localhost", &[], "127.77.0.2")]);
        assert!(
            !e[0].names.iter().any(|n| n == "localhost"),
            "{:?}",
            e[0].names
        );
        let text = with_block("127.0.0.1 localhost\n", &e);
        assert!(!text
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().skip(1).any(|n| n == "localhost")));
    }

    #[test]
    fn first_connected_endpoint_owns_the_plain_names() {
        let a = record("alpha", 1, "web", &[], "10.96.0.10");
        let b = record("beta", 2, "web", &[], "10.96.0.10");
        let e = entries(&[b, a]);
        assert_eq!(
            e[0].names[..3],
            ["web", "web.demo.svc", "web.demo.svc.cluster.local"]
        );
        assert_eq!(e[0].names[3], "web.demo.svc.alpha.cluster.local");
        assert_eq!(e[1].names, ["web.demo.svc.beta.cluster.local"]);
    }

    #[test]
    fn in_place_rewrites_never_hide_the_users_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let original = "127.0.0.1 localhost\n::1 ip6-localhost\n";
        fs::write(&path, original).unwrap();
        // A directory where the temporary file would go: rename is
        // impossible, as under the hardened unit, so every write below
        // takes the in-place path.
        fs::create_dir(dir.path().join(".hosts.netmux.tmp")).unwrap();
        let h = HostsFile::new(&path);
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (path, done) = (path.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = fs::read_to_string(&path).unwrap();
                    assert!(t.contains("localhost"), "read {reads}: {t:?}");
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..1000u32 {
            // Growing, shrinking and vanishing blocks.
            let n = (i * 7) % 13;
            let list: Vec<HostsEntry> = (0..n)
                .map(|k| {
                    entry(
                        &format!("127.77.0.{}", k + 1),
                        &[&format!("svc{k}-{}", "x".repeat((i % 5) as usize))],
                    )
                })
                .collect();
            h.write(&list).unwrap();
            let t = fs::read_to_string(&path).unwrap();
            assert!(t.starts_with(original), "{t:?}");
            assert_eq!(strip_block(&t), original);
            for e in &list {
                assert!(t.contains(&format!("{} {}", e.addr, e.names[0])), "{t:?}");
            }
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = reader.join().expect("reader saw a file without localhost");
        assert!(reads > 0);
        h.clear().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), original);
    }

    #[test]
    fn a_half_written_block_is_removed() {
        let text = format!("a\n{BEGIN}\n1.2.3.4 x\n");
        assert_eq!(strip_block(&text), "a\n");
    }
}
