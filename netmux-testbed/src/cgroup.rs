//! A child cgroup v2 of the test's own, under a private cgroup2 mount.
//!
//! `ip netns exec` remounts /sys, so the usual /sys/fs/cgroup path is not
//! visible from inside a namespace; a private mount under the temp dir is.
//! Tests attach eBPF programs only here, never to the machine's root
//! cgroup. On drop, the cgroup's processes are killed, the directory removed
//! and the mount detached.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// A private cgroup2 mount with one child cgroup in it.
#[derive(Debug)]
pub struct ChildCgroup {
    mount: PathBuf,
    path: PathBuf,
}

impl ChildCgroup {
    /// Mounts cgroup2 at a fresh temp dir and creates a child named `name`.
    pub fn new(name: &str) -> Result<ChildCgroup> {
        let mount = std::env::temp_dir().join(format!("{name}-cgroup2"));
        std::fs::create_dir_all(&mount)
            .map_err(Error::io(format!("creating {}", mount.display())))?;
        nix::mount::mount(
            Some("none"),
            &mount,
            Some("cgroup2"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| Error::Io {
            context: format!("mounting cgroup2 at {}", mount.display()),
            source: e.into(),
        })?;
        let path = mount.join(name);
        let cg = ChildCgroup { mount, path };
        std::fs::create_dir(&cg.path)
            .map_err(Error::io(format!("creating {}", cg.path.display())))?;
        Ok(cg)
    }

    /// The child cgroup's directory (attach programs here).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `sh -c` arguments that move the shell into this cgroup, then exec
    /// `program args…` (so the program and its children live in it).
    pub fn wrap(&self, program: &str, args: &[&str]) -> Vec<String> {
        let mut v = vec![
            "-c".to_owned(),
            format!(
                "echo $$ > '{}/cgroup.procs' && exec \"$@\"",
                self.path.display()
            ),
            "sh".to_owned(),
            program.to_owned(),
        ];
        v.extend(args.iter().map(|s| (*s).to_owned()));
        v
    }

    /// What removes this cgroup from a signal handler that exits the
    /// process (so drops do not run), as [`crate::Teardown`] does
    /// for the namespaces.
    pub fn teardown_handle(&self) -> CgroupTeardown {
        CgroupTeardown {
            mount: self.mount.clone(),
            path: self.path.clone(),
        }
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        self.teardown_handle().run();
    }
}

/// Kills a [`ChildCgroup`]'s processes, removes it and detaches its mount;
/// see [`ChildCgroup::teardown_handle`]. Idempotent.
#[derive(Debug, Clone)]
pub struct CgroupTeardown {
    mount: PathBuf,
    path: PathBuf,
}

impl CgroupTeardown {
    /// Tears down now; what is already gone is skipped.
    pub fn run(&self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.path.exists()
            && std::fs::remove_dir(&self.path).is_err()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::mount::umount2(&self.mount, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.mount);
    }
}
