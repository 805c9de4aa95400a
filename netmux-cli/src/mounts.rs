//! `--mount DIR` of `netmux env` and `netmux intercept`: a snapshot of the
//! files a container sees in its ConfigMap, Secret, downwardAPI and
//! projected volumes, written under DIR at their mount paths (the pod's
//! `/etc/app/config.yaml` is `DIR/etc/app/config.yaml`), as Telepresence's
//! `--mount` gives them under `$TELEPRESENCE_ROOT`. The command run with
//! the environment finds DIR in `NETMUX_ROOT`.
//!
//! Everything is created here, fresh, for this user only: DIR is new (or
//! empty) and becomes 0700, directories 0700, files 0600 (0700 when the
//! pod's mode makes them executable), each opened with `O_EXCL` and
//! `O_NOFOLLOW`; a path from the cluster that would leave its mount is
//! refused with a note, whatever the daemon sent. Under `sudo`, what is
//! created belongs to the user who ran sudo (as the credentials the files
//! were read with do), not to root.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use netmux_api::MountView;

/// The variable that names the snapshot's directory for the command.
pub const ROOT_VAR: &str = "NETMUX_ROOT";

/// Who what is created belongs to (uid, gid), when not this process's
/// user: the user behind `sudo`.
pub type Owner = Option<(u32, u32)>;

/// The user behind `sudo` when this process is root through it, else
/// `None` (what is created is this process's user's).
pub fn owner() -> Owner {
    crate::credentials::invoking_user().map(|u| (u.uid, u.gid))
}

/// Gives `path` (never following a link) to `owner`.
fn give(path: &Path, owner: Owner) -> std::io::Result<()> {
    match owner {
        Some((uid, gid)) => std::os::unix::fs::lchown(path, Some(uid), Some(gid)),
        None => Ok(()),
    }
}

/// A snapshot written under a directory.
#[derive(Debug)]
pub struct Snapshot {
    /// The directory (absolute).
    pub root: PathBuf,
    /// It was made here (else it was an empty directory already).
    created: bool,
    /// Files written.
    pub files: usize,
}

/// `rel` as a path that stays below where it is joined, or None (absolute,
/// or with an empty, `.` or `..` part).
fn below(rel: &str) -> Option<PathBuf> {
    let plain = rel.split('/').all(|part| !matches!(part, "" | "." | ".."));
    plain.then(|| PathBuf::from(rel))
}

/// The fix for a `--mount` directory that will not do.
const FIX: &str = "fix: name a new directory (or an empty one) for --mount";

/// `--mount DIR` as typed: a path that is new or an empty directory
/// (checked before anything is asked of netmuxd, and again when written).
pub fn dir_arg(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err(format!("an empty path; {FIX}"));
    }
    let path = PathBuf::from(text);
    usable(&path).map_err(|e| format!("{e}; {FIX}"))?;
    Ok(path)
}

/// Whether `path` may take a snapshot: Ok(false) when it does not exist,
/// Ok(true) when it is an empty directory (not a link to one); else why not.
fn usable(path: &Path) -> Result<bool, String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.to_string()),
        Ok(meta) if meta.is_dir() && is_empty(path) => Ok(true),
        Ok(_) => Err("exists and is not an empty directory".into()),
    }
}

/// Whether directory `dir` has no entries.
fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

/// Makes `root` ready: created 0700 (its parents as needed), or an empty
/// directory made 0700; what is created here is given to `owner`.
fn prepare(root: &Path, owner: Owner) -> Result<(PathBuf, bool), String> {
    let failed = |e: &dyn std::fmt::Display| format!("--mount {}: {e}; {FIX}", root.display());
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        let missing: Vec<PathBuf> = parent
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && std::fs::symlink_metadata(p).is_err())
            .map(Path::to_owned)
            .collect();
        std::fs::create_dir_all(parent).map_err(|e| failed(&e))?;
        for p in &missing {
            give(p, owner).map_err(|e| failed(&e))?;
        }
    }
    let created = match std::fs::DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => {
            give(root, owner).map_err(|e| failed(&e))?;
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            usable(root).map_err(|e| failed(&e))?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| failed(&e))?;
            false
        }
        Err(e) => return Err(failed(&e)),
    };
    let root = std::fs::canonicalize(root).map_err(|e| failed(&e))?;
    Ok((root, created))
}

/// Creates the directories from `base` down to `dir` (all below `base`),
/// 0700, given to `owner`; existing ones are kept when they are
/// directories.
fn make_dirs(base: &Path, rel: &Path, owner: Owner) -> std::io::Result<()> {
    let mut at = base.to_owned();
    for c in rel.components() {
        at.push(c);
        match std::fs::DirBuilder::new().mode(0o700).create(&at) {
            Ok(()) => give(&at, owner)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if !std::fs::symlink_metadata(&at)?.is_dir() {
                    return Err(std::io::Error::other(format!(
                        "{} is a file already",
                        at.display()
                    )));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes one new file, for this user (or `owner`) only.
fn write_file(path: &Path, mode: u32, data: &[u8], owner: Owner) -> std::io::Result<()> {
    let mode = match mode & 0o111 {
        0 => 0o600,
        _ => 0o700,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    f.write_all(data)
}

/// Writes `mounts` under `root`, what is created given to `owner`
/// ([`owner`]); returns the snapshot and a note for each file or mount
/// refused here.
pub fn write(
    root: &Path,
    mounts: &[MountView],
    owner: Owner,
) -> Result<(Snapshot, Vec<String>), String> {
    let (root, created) = prepare(root, owner)?;
    let mut notes = Vec::new();
    let mut files = 0;
    for m in mounts {
        let at = format!("{} (volume {})", m.path, m.volume);
        let Some(mount) = m.path.strip_prefix('/').and_then(below) else {
            notes.push(format!(
                "{at}: not written: the mount path is not a plain absolute path"
            ));
            continue;
        };
        for f in &m.files {
            let rel = match f.path.as_str() {
                "" => Some(mount.clone()),
                p => below(p).map(|p| mount.join(p)),
            };
            let Some(rel) = rel else {
                notes.push(format!(
                    "{at}: {:?} not written: it would leave the mount",
                    f.path
                ));
                continue;
            };
            let data = match base64::engine::general_purpose::STANDARD.decode(&f.data) {
                Ok(d) => d,
                Err(e) => {
                    notes.push(format!(
                        "{at}: {} not written: bad contents from netmuxd: {e}",
                        f.path
                    ));
                    continue;
                }
            };
            let parent = rel.parent().unwrap_or(Path::new(""));
            let done = make_dirs(&root, parent, owner)
                .and_then(|()| write_file(&root.join(&rel), f.mode, &data, owner));
            match done {
                Ok(()) => files += 1,
                Err(e) => notes.push(format!("{at}: {} not written: {e}", rel.display())),
            }
        }
    }
    Ok((
        Snapshot {
            root,
            created,
            files,
        },
        notes,
    ))
}

impl Snapshot {
    /// What was written, for stderr.
    pub fn describe(&self, mounts: usize) -> String {
        format!(
            "wrote {} file{} of {mounts} volume mount{} under {} (${ROOT_VAR})",
            self.files,
            if self.files == 1 { "" } else { "s" },
            if mounts == 1 { "" } else { "s" },
            self.root.display()
        )
    }

    /// Says that the files stay (no command to remove them after).
    pub fn kept(&self) {
        eprintln!(
            "the volume files stay until you remove them: rm -r {}",
            self.root.display()
        );
    }

    /// Removes the snapshot: the directory if it was made here, else what
    /// is in it.
    pub fn remove(&self) {
        let gone = match self.created {
            true => std::fs::remove_dir_all(&self.root),
            false => std::fs::read_dir(&self.root).and_then(|entries| {
                for e in entries {
                    let p = e?.path();
                    match std::fs::symlink_metadata(&p)?.is_dir() {
                        true => std::fs::remove_dir_all(&p)?,
                        false => std::fs::remove_file(&p)?,
                    }
                }
                Ok(())
            }),
        };
        match gone {
            Ok(()) => eprintln!("removed the volume files under {}", self.root.display()),
            Err(e) => eprintln!(
                "netmux: could not remove the volume files under {}: {e}; fix: rm -r {}",
                self.root.display(),
                self.root.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmux_api::FileView;
    use std::os::unix::fs::PermissionsExt as _;

    fn file(path: &str, mode: u32, data: &[u8]) -> FileView {
        FileView {
            path: path.into(),
            mode,
            data: base64::engine::general_purpose::STANDARD.encode(data),
        }
    }

    fn mount(path: &str, files: Vec<FileView>) -> MountView {
        MountView {
            path: path.into(),
            volume: "v".into(),
            read_only: true,
            files,
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_land_at_their_mount_paths_for_this_user_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pod");
        let mounts = [
            mount(
                "/etc/app",
                vec![
                    file("config.yaml", 0o644, b"a: 1\n"),
                    file("tls/ca.crt", 0o400, b"CA"),
                ],
            ),
            mount(
                "/usr/local/bin/start.sh",
                vec![file("", 0o755, b"#!/bin/sh\n")],
            ),
            // Refused: leaving the mount, a relative mount path, bad data.
            mount(
                "/etc/x",
                vec![file("../../escape", 0o644, b"x"), file("/abs", 0o644, b"x")],
            ),
            mount("etc/rel", vec![file("f", 0o644, b"x")]),
            mount(
                "/etc/y",
                vec![FileView {
                    path: "bad".into(),
                    mode: 0o644,
                    data: "!!".into(),
                }],
            ),
        ];
        let (snap, notes) = write(&root, &mounts, None).unwrap();
        assert_eq!(snap.files, 3, "{notes:?}");
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert!(notes
            .iter()
            .any(|n| n.contains("../../escape") && n.contains("leave the mount")));
        assert!(notes.iter().any(|n| n.starts_with("etc/rel (volume v)")));
        assert_eq!(
            std::fs::read(root.join("etc/app/config.yaml")).unwrap(),
            b"a: 1\n"
        );
        assert_eq!(
            std::fs::read(root.join("etc/app/tls/ca.crt")).unwrap(),
            b"CA"
        );
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("etc/app")), 0o700);
        assert_eq!(mode(&root.join("etc/app/config.yaml")), 0o600);
        assert_eq!(mode(&root.join("usr/local/bin/start.sh")), 0o700);
        assert!(!tmp.path().join("escape").exists() && !root.join("escape").exists());
        assert!(snap
            .describe(5)
            .starts_with("wrote 3 files of 5 volume mounts under /"));

        // Not twice into the same directory; an empty one is taken and
        // kept when the snapshot goes.
        let e = write(&root, &mounts, None).unwrap_err();
        assert!(
            e.contains("not an empty directory") && e.contains("fix:"),
            "{e}"
        );
        snap.remove();
        assert!(!root.exists());
        std::fs::create_dir(&root).unwrap();
        let (snap, _) = write(&root, &mounts[..1], None).unwrap();
        assert_eq!(snap.files, 2);
        snap.remove();
        assert!(root.exists() && std::fs::read_dir(&root).unwrap().next().is_none());
    }

    #[test]
    fn a_symlink_planted_in_an_empty_root_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pod");
        std::os::unix::fs::symlink(tmp.path(), &root).unwrap();
        let e = write(&root, &[], None).unwrap_err();
        assert!(e.contains("not an empty directory"), "{e}");
        let e = dir_arg(&root.display().to_string()).unwrap_err();
        assert!(
            e.contains("not an empty directory") && e.contains("fix:"),
            "{e}"
        );
    }

    #[test]
    fn the_directory_is_checked_as_typed_and_its_parents_made() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(dir_arg("").unwrap_err().contains("empty path"));
        let file = tmp.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(dir_arg(&file.display().to_string()).is_err());
        let deep = tmp.path().join("a/b/pod");
        assert_eq!(dir_arg(&deep.display().to_string()).unwrap(), deep);
        let (snap, _) = write(&deep, &[], None).unwrap();
        assert_eq!(mode(&deep), 0o700);
        snap.remove();
        assert!(!deep.exists() && tmp.path().join("a/b").exists());
    }

    #[test]
    fn under_sudo_what_is_made_belongs_to_the_invoking_user() {
        use std::os::unix::fs::MetadataExt as _;
        // As root (how the tests run): to nobody; else to this user, the
        // one chown a user may make.
        let me = nix::unistd::geteuid();
        let owner = match me.is_root() {
            true => (65534, 65534),
            false => (me.as_raw(), nix::unistd::getegid().as_raw()),
        };
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("made/by/sudo");
        let mounts = [mount(
            "/etc/app",
            vec![file("config.yaml", 0o644, b"a: 1\n")],
        )];
        let (snap, notes) = write(&root, &mounts, Some(owner)).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        for p in [
            "made",
            "made/by",
            "made/by/sudo",
            "made/by/sudo/etc",
            "made/by/sudo/etc/app",
            "made/by/sudo/etc/app/config.yaml",
        ] {
            let m = std::fs::symlink_metadata(tmp.path().join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), owner, "{p}");
        }
        snap.remove();
        assert!(!root.exists());
    }
}
