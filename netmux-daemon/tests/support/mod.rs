//! Fixtures shared by the integration tests: network namespaces, a
//! private cgroup2 mount with a child cgroup, child-process guards, bpftool,
//! prerequisite lookups.
#![allow(dead_code, reason = "each test file uses a subset")]

use std::ffi::CString;
use std::io::Read as _;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::{ffi::OsStrExt as _, process::CommandExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use netmux_daemon::redirect::ebpf;

/// Longest a helper child process may run.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// `name` on PATH, or in /usr/sbin and /sbin.
pub fn which(name: &str) -> Option<PathBuf> {
    netmux_testbed::prereq::which(name)
}

/// The first of `tools` not installed or of the workspace's `binaries` not
/// built, as a reason (for [`netmux_testbed::prereq::require`]).
pub fn missing_tools(tools: &[&str], binaries: &[&str]) -> Option<String> {
    netmux_testbed::prereq::first([
        netmux_testbed::prereq::tools(tools),
        netmux_testbed::prereq::binaries(binaries),
    ])
}

pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn run_with_timeout(mut cmd: Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().expect("spawn client"));
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "client timed out: {cmd:?}");
        std::thread::sleep(Duration::from_millis(5));
    };
    // The outputs are small: they fit in the pipes until the child exits.
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Kills and reaps the child on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?}: {out:?}");
}

/// A test's own network namespace (netmux_testbed's, deleted on drop) with
/// a file descriptor for `setns`.
pub struct NetNs {
    // Field order is drop order: the fd before the namespace.
    pub fd: OwnedFd,
    pub ns: netmux_testbed::Netns,
}

impl NetNs {
    pub fn new(name: &str) -> Self {
        let ns = netmux_testbed::Netns::new(name).expect("network namespace");
        let fd = ns.open().expect("namespace fd");
        NetNs { fd, ns }
    }
}

/// Names of the programs attached directly to `cgroup`, per bpftool.
pub fn attached(cgroup: &Path) -> Vec<String> {
    // Debian puts it in /usr/sbin, which is not always on PATH.
    let bpftool = ["/usr/sbin/bpftool", "/sbin/bpftool"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("bpftool");
    let out = Command::new(bpftool)
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool: {out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    json.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn assert_attached(cgroup: &Path, n: usize) {
    // Link release on close/exit is synchronous, but allow a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let names = attached(cgroup);
        if names.len() == n {
            if n > 0 {
                let expected = ebpf::SOCK_ADDR_PROGRAMS
                    .into_iter()
                    .chain([ebpf::SOCK_RELEASE_PROGRAM]);
                for p in expected {
                    assert!(names.iter().any(|n| n == p), "{p} not in {names:?}");
                }
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} programs on {}, bpftool shows {names:?}",
            cgroup.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Why the eBPF tests cannot run here, or `None`: root and the real eBPF
/// programs built into the daemon.
pub fn ebpf_skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        Some("not root".into())
    } else if !ebpf::programs_built() {
        Some("netmux-daemon was built with the stub eBPF object (no bpf-linker or NETMUX_SKIP_EBPF=1)".into())
    } else {
        None
    }
}

/// Where a helper process runs.
#[derive(Clone, Copy, Debug)]
pub enum Place {
    /// In the test namespace and the child cgroup the programs are attached to.
    Inside,
    /// In the test namespace only.
    Outside,
}

/// Makes `cmd` start in `netns` and, for [`Place::Inside`], in `cgroup`.
pub fn place(
    cmd: &mut Command,
    netns: &NetNs,
    cgroup: &netmux_testbed::cgroup::ChildCgroup,
    place: Place,
) {
    let procs = match place {
        Place::Inside => {
            Some(CString::new(cgroup.path().join("cgroup.procs").as_os_str().as_bytes()).unwrap())
        }
        Place::Outside => None,
    };
    let netns = netns.fd.as_raw_fd();
    // SAFETY: the closure runs between fork and exec and only makes raw
    // syscalls (open, write, close, setns) on data prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                // Writing "0" moves the writing process itself.
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
            if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `f` on a thread inside `netns`: a socket belongs to the namespace
/// it was created in and can then be used from anywhere.
pub fn in_netns<T: Send>(netns: &NetNs, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns.fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("setns");
            f()
        })
        .join()
        .unwrap()
    })
}
