//! eBPF redirect backend: loads the `netmux-ebpf` cgroup `sock_addr`
//! programs, attaches them to one cgroup v2 directory and fills their
//! `SERVICES` map (published service address → local listener).
//!
//! * `connect4`/`connect6` rewrite a connect() to a published TCP service to
//!   the daemon's listener and remember the original destination per socket
//!   cookie; `getpeername4`/`getpeername6` report that original destination,
//!   so the application sees the address it dialled; `sock_release` forgets
//!   it when the socket is closed.
//! * The programs fail open: a miss or any error leaves the connect alone.
//! * Own sockets: the daemon's sockets carrying `SO_MARK ==`
//!   [`EbpfRedirect::exclude_mark`] (default [`DEFAULT_EXCLUDE_MARK`]) are
//!   never redirected; mark them with [`mark_socket`] before `connect()`.
//!   A mark, unlike a pid or cgroup id, holds across pid namespaces and
//!   whatever cgroup the daemon runs in, and is per socket. If the daemon is
//!   outside the attached cgroup its sockets are not hooked at all.
//! * Nothing outlives the daemon: programs are attached with BPF links owned
//!   by [`EbpfRedirect`] and nothing is pinned, so dropping it, or the
//!   process dying even by SIGKILL, closes the link fds and the kernel
//!   detaches the programs and frees the maps. `netmux cleanup` has nothing
//!   eBPF-related to remove (see `docs/ebpf.md`).
//! * Logs of the programs (aya-log) are forwarded to `tracing` with target
//!   `netmux_ebpf` by a small thread; the programs only log at the level
//!   `tracing` has enabled when [`EbpfRedirect::load`] runs.

use std::{
    fs::File,
    io,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    thread::JoinHandle,
};

use aya::{
    maps::{Array, HashMap, MapData, MapError},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError},
    Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
pub use netmux_common::redirect::DEFAULT_EXCLUDE_MARK;
use netmux_common::redirect::{
    ListenerTarget, OriginalDst, RedirectConfig, ServiceKey, CONFIG_INDEX, PROTO_TCP,
};
use tracing::level_filters::LevelFilter;

/// The eBPF object built by `build.rs`; empty when it was built without the
/// eBPF toolchain (or with `NETMUX_SKIP_EBPF=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netmux-ebpf"));

/// The `sock_addr` programs; each is named after the hook it implements.
const SOCK_ADDR_PROGRAMS: [&str; 4] = ["connect4", "connect6", "getpeername4", "getpeername6"];
/// The `sock` program that forgets a released socket's original destination.
const SOCK_RELEASE_PROGRAM: &str = "sock_release";

const SERVICES_MAP: &str = "SERVICES";
const ORIGINAL_DST_MAP: &str = "ORIGINAL_DST";
const CONFIG_MAP: &str = "CONFIG";

/// What can go wrong loading or driving the eBPF redirect.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The daemon was compiled with the empty stub object.
    #[error(
        "daemon built without eBPF programs; rebuild with bpf-linker installed \
         (`cargo install bpf-linker`, nightly with rust-src) and NETMUX_SKIP_EBPF unset, \
         or use the loopback redirect backend"
    )]
    StubBuild,
    /// The cgroup directory could not be opened.
    #[error("cannot open cgroup {}: {source}", path.display())]
    CgroupOpen {
        /// The directory given to [`EbpfRedirect::load`].
        path: PathBuf,
        /// Why it could not be opened.
        source: io::Error,
    },
    /// The directory is not in a cgroup v2 (unified) hierarchy.
    #[error(
        "{} is not a cgroup v2 directory; the eBPF redirect needs the unified hierarchy \
         mounted (e.g. `mount -t cgroup2 none /sys/fs/cgroup`) and a directory inside it",
        path.display()
    )]
    NotCgroup2 {
        /// The directory given to [`EbpfRedirect::load`].
        path: PathBuf,
    },
    /// The kernel refused for lack of privileges.
    #[error(
        "permission denied {what}: netmuxd needs root or CAP_BPF + CAP_NET_ADMIN \
         (CAP_SYS_ADMIN before Linux 5.8): {source}"
    )]
    PermissionDenied {
        /// The step that failed.
        what: String,
        /// The underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Creating the maps or parsing the object failed.
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    /// A program failed to load (verifier) or attach.
    #[error(
        "eBPF program {program}: {source}; the kernel needs cgroup sock_addr hooks \
         (connect: Linux 4.17, getpeername: 5.8), sock_release (5.9) and cgroup BPF \
         links (5.7)"
    )]
    Program {
        /// Name of the program (its hook).
        program: &'static str,
        /// The underlying error.
        source: ProgramError,
    },
    /// The object lacks something the loader expects: a stale build.
    #[error("the eBPF object has no {0}; rebuild netmux-daemon")]
    Missing(&'static str),
    /// A map operation failed.
    #[error("eBPF map {map}: {source}")]
    Map {
        /// Name of the map.
        map: &'static str,
        /// The underlying error.
        source: MapError,
    },
    /// An IPv4 service was given an IPv6 listener, which IPv4 sockets
    /// cannot be redirected to.
    #[error("service {service} is IPv4 but listener {listener} is IPv6")]
    ListenerFamily {
        /// The service address.
        service: SocketAddr,
        /// The listener address.
        listener: SocketAddr,
    },
}

/// Maps `e` to [`EbpfError::PermissionDenied`] if an `EPERM`/`EACCES` is
/// anywhere in its source chain, else to `other(e)`.
fn classify<E>(what: &str, e: E, other: impl FnOnce(E) -> EbpfError) -> EbpfError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut denied = false;
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                denied = true;
                break;
            }
        }
        cur = err.source();
    }
    if denied {
        EbpfError::PermissionDenied {
            what: what.to_owned(),
            source: Box::new(e),
        }
    } else {
        other(e)
    }
}

/// True if this daemon was built with the real eBPF object, not the stub.
pub fn programs_built() -> bool {
    !OBJECT.is_empty()
}

/// Sets `SO_MARK` on `socket` (needs CAP_NET_ADMIN). Mark the daemon's own
/// sockets with [`EbpfRedirect::exclude_mark`] before `connect()` so the
/// redirect leaves them alone.
pub fn mark_socket(socket: &impl AsFd, mark: u32) -> io::Result<()> {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::Mark, &mark)
        .map_err(io::Error::from)
}

/// The loaded and attached redirect programs and their maps.
///
/// Dropping it detaches the programs from the cgroup and frees the maps.
pub struct EbpfRedirect {
    cgroup: PathBuf,
    services: HashMap<MapData, ServiceKey, ListenerTarget>,
    original_dst: HashMap<MapData, u64, OriginalDst>,
    config: Array<MapData, RedirectConfig>,
    exclude_mark: u32,
    // Owns the programs and their BPF links: dropping it detaches them.
    _ebpf: Ebpf,
    _logs: Option<LogForwarder>,
}

impl std::fmt::Debug for EbpfRedirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfRedirect")
            .field("cgroup", &self.cgroup)
            .field("exclude_mark", &self.exclude_mark)
            .finish_non_exhaustive()
    }
}

impl EbpfRedirect {
    /// Loads the programs and attaches `connect4`, `connect6`,
    /// `getpeername4`, `getpeername6` and `sock_release` to the cgroup v2
    /// directory `cgroup` (they then apply to every process in it and its
    /// descendants). The
    /// exclusion mark starts as [`DEFAULT_EXCLUDE_MARK`]; the map starts
    /// empty.
    pub fn load(cgroup: &Path) -> Result<Self, EbpfError> {
        if !programs_built() {
            return Err(EbpfError::StubBuild);
        }
        let cgroup_dir = File::open(cgroup).map_err(|source| EbpfError::CgroupOpen {
            path: cgroup.to_owned(),
            source,
        })?;
        let fs = nix::sys::statfs::fstatfs(&cgroup_dir).map_err(|e| EbpfError::CgroupOpen {
            path: cgroup.to_owned(),
            source: e.into(),
        })?;
        if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
            return Err(EbpfError::NotCgroup2 {
                path: cgroup.to_owned(),
            });
        }

        let level = aya_log_level(LevelFilter::current());
        let mut ebpf = EbpfLoader::new()
            .override_global("AYA_LOG_LEVEL", &level, false)
            .load(OBJECT)
            .map_err(|e| classify("loading the eBPF maps", e, EbpfError::Load))?;

        let logs = match EbpfLogger::init_with_logger(&mut ebpf, TracingLog) {
            Ok(logger) => match LogForwarder::spawn(logger) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!("eBPF log forwarding disabled: {e}");
                    None
                }
            },
            Err(e) => {
                tracing::warn!("eBPF log forwarding disabled: {e}");
                None
            }
        };

        // Links are always multi-attach in the kernel; `Single` just means
        // "no extra attach flags", as BPF_LINK_CREATE requires.
        let mode = CgroupAttachMode::Single;
        for name in SOCK_ADDR_PROGRAMS {
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(EbpfError::Missing(name))?
                .try_into()
                .map_err(|_| EbpfError::Missing(name))?;
            let step = Step { name, cgroup };
            program.load().map_err(|e| step.load_error(e))?;
            program
                .attach(&cgroup_dir, mode)
                .map_err(|e| step.attach_error(e))?;
        }
        let name = SOCK_RELEASE_PROGRAM;
        let program: &mut CgroupSock = ebpf
            .program_mut(name)
            .ok_or(EbpfError::Missing(name))?
            .try_into()
            .map_err(|_| EbpfError::Missing(name))?;
        let step = Step { name, cgroup };
        program.load().map_err(|e| step.load_error(e))?;
        program
            .attach(&cgroup_dir, mode)
            .map_err(|e| step.attach_error(e))?;

        let services = take_map(&mut ebpf, SERVICES_MAP)?;
        let services = HashMap::try_from(services).map_err(|source| EbpfError::Map {
            map: SERVICES_MAP,
            source,
        })?;
        let original_dst = take_map(&mut ebpf, ORIGINAL_DST_MAP)?;
        let original_dst = HashMap::try_from(original_dst).map_err(|source| EbpfError::Map {
            map: ORIGINAL_DST_MAP,
            source,
        })?;
        let config = take_map(&mut ebpf, CONFIG_MAP)?;
        let config = Array::try_from(config).map_err(|source| EbpfError::Map {
            map: CONFIG_MAP,
            source,
        })?;
        let mut redirect = Self {
            cgroup: cgroup.to_owned(),
            services,
            original_dst,
            config,
            exclude_mark: 0,
            _ebpf: ebpf,
            _logs: logs,
        };
        redirect.set_exclude_mark(DEFAULT_EXCLUDE_MARK)?;
        tracing::info!(cgroup = %cgroup.display(), "eBPF connect redirect attached");
        Ok(redirect)
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Redirects TCP connects to `service` to `listener` from now on
    /// (replacing any previous listener). An IPv4 service needs an IPv4
    /// listener; an IPv6 service may use either (an IPv4 listener is reached
    /// v4-mapped, so not from `IPV6_V6ONLY` sockets).
    pub fn insert(&mut self, service: SocketAddr, listener: SocketAddr) -> Result<(), EbpfError> {
        let key = ServiceKey::new(service, PROTO_TCP);
        let target = ListenerTarget::from(listener);
        let service_v4 = service.ip().to_canonical().is_ipv4();
        if service_v4 && !listener.ip().to_canonical().is_ipv4() {
            return Err(EbpfError::ListenerFamily { service, listener });
        }
        self.services
            .insert(key, target, 0)
            .map_err(|source| EbpfError::Map {
                map: SERVICES_MAP,
                source,
            })
    }

    /// Stops redirecting TCP connects to `service`. Removing an address that
    /// is not there is not an error. Connections already redirected stay up.
    pub fn remove(&mut self, service: SocketAddr) -> Result<(), EbpfError> {
        let key = ServiceKey::new(service, PROTO_TCP);
        match self.services.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            // The kernel reports a missing key as ENOENT from the syscall.
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(source) => Err(EbpfError::Map {
                map: SERVICES_MAP,
                source,
            }),
        }
    }

    /// The TCP redirects in the map, `(service, listener)`, sorted.
    /// IPv4 addresses come back as IPv4, not v4-mapped.
    pub fn entries(&self) -> Result<Vec<(SocketAddr, SocketAddr)>, EbpfError> {
        let mut out = Vec::new();
        for entry in self.services.iter() {
            let (key, target) = entry.map_err(|source| EbpfError::Map {
                map: SERVICES_MAP,
                source,
            })?;
            if key.proto == PROTO_TCP {
                out.push((key.socket_addr(), SocketAddr::from(target)));
            }
        }
        out.sort();
        Ok(out)
    }

    /// How many redirected sockets are open (their original destination is
    /// remembered for getpeername()); for metrics and leak checks.
    pub fn redirected_sockets(&self) -> Result<usize, EbpfError> {
        let mut n = 0;
        for key in self.original_dst.keys() {
            key.map_err(|source| EbpfError::Map {
                map: ORIGINAL_DST_MAP,
                source,
            })?;
            n += 1;
        }
        Ok(n)
    }

    /// The `SO_MARK` that exempts a socket from redirection.
    pub fn exclude_mark(&self) -> u32 {
        self.exclude_mark
    }

    /// Changes the exempting `SO_MARK`; 0 turns the exemption off.
    pub fn set_exclude_mark(&mut self, mark: u32) -> Result<(), EbpfError> {
        let config = RedirectConfig { exclude_mark: mark };
        self.config
            .set(CONFIG_INDEX, config, 0)
            .map_err(|source| EbpfError::Map {
                map: CONFIG_MAP,
                source,
            })?;
        self.exclude_mark = mark;
        Ok(())
    }
}

/// Names a program load/attach step in errors.
struct Step<'a> {
    name: &'static str,
    cgroup: &'a Path,
}

impl Step<'_> {
    fn load_error(&self, e: ProgramError) -> EbpfError {
        let program = self.name;
        classify(&format!("loading {program}"), e, |source| {
            EbpfError::Program { program, source }
        })
    }

    fn attach_error(&self, e: ProgramError) -> EbpfError {
        let program = self.name;
        let what = format!("attaching {program} to {}", self.cgroup.display());
        classify(&what, e, |source| EbpfError::Program { program, source })
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, EbpfError> {
    ebpf.take_map(name).ok_or(EbpfError::Missing(name))
}

/// `AYA_LOG_LEVEL` for the programs (aya-log-common `Level`: 1 = error ..
/// 5 = trace, 0 = off) from the level `tracing` currently enables.
fn aya_log_level(filter: LevelFilter) -> u8 {
    match filter.into_level() {
        None => 0,
        Some(tracing::Level::ERROR) => 1,
        Some(tracing::Level::WARN) => 2,
        Some(tracing::Level::INFO) => 3,
        Some(tracing::Level::DEBUG) => 4,
        Some(tracing::Level::TRACE) => 5,
    }
}

/// `log` → `tracing` bridge for the records aya-log decodes.
struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        // aya-log sets the record's target to the program's module path,
        // which is always `netmux_ebpf`; use that as the tracing target.
        match r.level() {
            log::Level::Error => tracing::error!(target: "netmux_ebpf", "{}", r.args()),
            log::Level::Warn => tracing::warn!(target: "netmux_ebpf", "{}", r.args()),
            log::Level::Info => tracing::info!(target: "netmux_ebpf", "{}", r.args()),
            log::Level::Debug => tracing::debug!(target: "netmux_ebpf", "{}", r.args()),
            log::Level::Trace => tracing::trace!(target: "netmux_ebpf", "{}", r.args()),
        }
    }

    fn flush(&self) {}
}

/// A thread draining the programs' log ring buffer into `tracing`; it wakes
/// on the ring buffer's fd and stops when its pipe closes (on drop).
struct LogForwarder {
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl LogForwarder {
    fn spawn(mut logger: EbpfLogger<TracingLog>) -> io::Result<Self> {
        let (stop_rx, stop_tx) = nix::unistd::pipe().map_err(io::Error::from)?;
        let thread = std::thread::Builder::new()
            .name("netmux-ebpf-log".into())
            .spawn(move || loop {
                let readable = wait_readable(logger.as_fd(), stop_rx.as_fd());
                logger.flush();
                match readable {
                    Ok(false) => {}
                    Ok(true) => break,
                    Err(e) => {
                        tracing::warn!("eBPF log forwarding stopped: {e}");
                        break;
                    }
                }
            })?;
        Ok(Self {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

/// Blocks until `logs` or `stop` is readable; `Ok(true)` once `stop` is
/// (its write end was closed).
fn wait_readable(logs: BorrowedFd<'_>, stop: BorrowedFd<'_>) -> io::Result<bool> {
    let mut fds = [
        libc::pollfd {
            fd: logs.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfds for the duration of
        // the call, and both fds are borrowed, so open.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n >= 0 {
            return Ok(fds[1].revents != 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Drop for LogForwarder {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<EbpfRedirect>();
    }

    #[test]
    fn log_levels_match_aya_log_common() {
        assert_eq!(aya_log_level(LevelFilter::OFF), 0);
        assert_eq!(aya_log_level(LevelFilter::ERROR), 1);
        assert_eq!(aya_log_level(LevelFilter::TRACE), 5);
    }

    #[test]
    fn stub_build_is_reported_or_object_is_elf() {
        if programs_built() {
            assert_eq!(&OBJECT[..4], b"\x7fELF");
        } else {
            let e = EbpfRedirect::load(Path::new("/nonexistent")).unwrap_err();
            assert!(matches!(e, EbpfError::StubBuild));
            assert!(e.to_string().contains("bpf-linker"));
        }
    }

    #[test]
    fn missing_cgroup_is_named() {
        if !programs_built() {
            return;
        }
        let e = EbpfRedirect::load(Path::new("/nonexistent/cgroup")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cgroup"), "{e}");
    }
}
