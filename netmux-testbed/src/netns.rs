//! One named network namespace (`ip netns`), and running code inside it.

use std::ffi::OsStr;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use crate::process::ProcessBuilder;
use crate::{Error, Result};

/// How long an `ip` configuration command may take.
pub(crate) const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// A named network namespace created by this crate. Deleted (with every
/// process still in it and its `/etc/netns/<name>` dir) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    log_dir: PathBuf,
}

/// Runs `ip ARGS` in the root namespace and fails on a non-zero exit.
pub(crate) fn ip<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = ProcessBuilder::new("ip", None, OsStr::new("ip"), Path::new("/"))
        .args(args)
        .run(IP_TIMEOUT)?
        .ok()?;
    Ok(out.stdout)
}

impl Netns {
    /// Creates namespace `name` with `lo` up, and `/etc/netns/<name>/hosts`
    /// and `resolv.conf`, which `ip netns exec` bind-mounts over `/etc`.
    pub(crate) fn create(name: &str, log_dir: &Path) -> Result<Netns> {
        ip(["netns", "add", name])?;
        // From here on, drop cleans up.
        let ns = Netns {
            name: name.to_owned(),
            log_dir: log_dir.to_owned(),
        };
        ip(["-n", name, "link", "set", "lo", "up"])?;
        let etc = ns.etc_dir();
        std::fs::create_dir_all(&etc).map_err(Error::io(format!("creating {}", etc.display())))?;
        let hosts = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n";
        write(&etc.join("hosts"), hosts)?;
        // No resolver: names resolve from the hosts file or not at all.
        write(
            &etc.join("resolv.conf"),
            "nameserver 127.0.0.53\noptions timeout:1 attempts:1\n",
        )?;
        Ok(ns)
    }

    /// Creates namespace `name` on its own, outside a [`crate::Sandbox`]
    /// (for tests that enter it with `setns` themselves); process logs go
    /// to the temp dir.
    pub fn new(name: &str) -> Result<Netns> {
        Netns::create(name, &std::env::temp_dir())
    }

    /// A file descriptor of the namespace, for `setns(2)`.
    pub fn open(&self) -> Result<std::os::fd::OwnedFd> {
        let path = format!("/run/netns/{}", self.name);
        std::fs::File::open(&path)
            .map(Into::into)
            .map_err(Error::io(format!("opening {path}")))
    }

    /// The namespace's name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/etc/netns/<name>`.
    pub fn etc_dir(&self) -> PathBuf {
        etc_dir(&self.name)
    }

    /// The hosts file processes in this namespace see as `/etc/hosts`.
    pub fn hosts_file(&self) -> PathBuf {
        self.etc_dir().join("hosts")
    }

    /// Runs `ip -n <name> ARGS`.
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec!["-n".into(), self.name.clone().into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        ip(all)
    }

    /// A process to run inside this namespace (`ip netns exec`), with its
    /// log under the sandbox's dir.
    pub fn process(&self, label: &str, program: impl AsRef<OsStr>) -> ProcessBuilder {
        ProcessBuilder::new(label, Some(&self.name), program.as_ref(), &self.log_dir)
    }

    /// Ids of the processes in this namespace.
    pub fn pids(&self) -> Vec<i32> {
        pids(&self.name)
    }

    /// Runs `f` on a new thread that has entered this namespace; sockets
    /// created there belong to the namespace. Panics in `f` propagate.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = Path::new("/run/netns").join(&self.name);
        std::thread::scope(|s| {
            let handle = s.spawn(move || -> Result<R> {
                let file = std::fs::File::open(&path)
                    .map_err(Error::io(format!("opening {}", path.display())))?;
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Io {
                    context: format!("entering network namespace {}", path.display()),
                    source: e.into(),
                })?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Runs the future made by `make` to completion on a current-thread
    /// tokio runtime inside this namespace (a namespace holds per thread,
    /// so the runtime must not have other worker threads).
    pub fn block_on<F, Fut>(&self, make: F) -> Result<Fut::Output>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future,
        Fut::Output: Send,
    {
        self.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::io("building a tokio runtime"))?;
            Ok(rt.block_on(make()))
        })?
    }
}

/// Moves the calling thread into namespace `name` and builds a
/// current-thread tokio runtime for it: for threads that serve from
/// inside a namespace for a test's lifetime.
pub(crate) fn runtime_in(name: &str) -> Result<tokio::runtime::Runtime> {
    let path = Path::new("/run/netns").join(name);
    let file =
        std::fs::File::open(&path).map_err(Error::io(format!("opening {}", path.display())))?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Io {
        context: format!("entering network namespace {}", path.display()),
        source: e.into(),
    })?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::io("building a tokio runtime"))
}

fn write(path: &Path, content: &str) -> Result<()> {
    std::fs::write(path, content).map_err(Error::io(format!("writing {}", path.display())))
}

pub(crate) fn etc_dir(name: &str) -> PathBuf {
    Path::new("/etc/netns").join(name)
}

pub(crate) fn pids(name: &str) -> Vec<i32> {
    ip(["netns", "pids", name])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every process in namespace `name`, deletes it and its
/// `/etc/netns/<name>` dir. Best effort: reports the first failure.
pub(crate) fn destroy(name: &str) -> Result<()> {
    for _ in 0..3 {
        let pids = pids(name);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = ip(["netns", "del", name]).map(|_| ());
    let etc = etc_dir(name);
    if etc.exists() {
        let _ = std::fs::remove_dir_all(&etc);
    }
    result
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = destroy(&self.name) {
            eprintln!("netmux-testbed: removing namespace {}: {e}", self.name);
        }
    }
}
