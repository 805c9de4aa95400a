//! eBPF redirect backend: loads the `netmux-ebpf` cgroup `sock_addr`
//! programs, attaches them to one cgroup v2 directory and fills their
//! `SERVICES` map (published service address → local listener).
//!
//! * `connect4`/`connect6` rewrite a connect() to a published TCP service to
//!   the daemon's listener and remember the original destination per socket
//!   cookie; `getpeername4`/`getpeername6` report that original destination,
//!   so the application sees the address it dialled; `sock_release` forgets
//!   it when the socket is closed. Connected UDP sockets take the same path
//!   when their service is published for UDP ([`EbpfRedirect::insert_udp`]).
//! * `sendmsg4`/`sendmsg6` rewrite each datagram an unconnected UDP socket
//!   sends to a published UDP service; `recvmsg4`/`recvmsg6` report
//!   datagrams from a UDP listener as coming from its service, found in the
//!   `SERVICE_BY_LISTENER` map that [`EbpfRedirect::insert_udp`] fills
//!   (hence one listener per UDP service).
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
    ListenerKey, ListenerTarget, OriginalDst, RedirectConfig, ServiceKey, CONFIG_INDEX, PROTO_TCP,
    PROTO_UDP,
};
use tracing::level_filters::LevelFilter;

/// The eBPF object built by `build.rs`; empty when it was built without the
/// eBPF toolchain (or with `NETMUX_SKIP_EBPF=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netmux-ebpf"));

/// The `sock_addr` programs; each is named after the hook it implements.
pub const SOCK_ADDR_PROGRAMS: [&str; 8] = [
    "connect4",
    "connect6",
    "getpeername4",
    "getpeername6",
    "sendmsg4",
    "sendmsg6",
    "recvmsg4",
    "recvmsg6",
];
/// The `sock` program that forgets a released socket's original destination.
pub const SOCK_RELEASE_PROGRAM: &str = "sock_release";

const SERVICES_MAP: &str = "SERVICES";
const ORIGINAL_DST_MAP: &str = "ORIGINAL_DST";
const SERVICE_BY_LISTENER_MAP: &str = "SERVICE_BY_LISTENER";
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
        "permission denied {what}: netmuxd needs root or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON \
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
         (connect: Linux 4.17, sendmsg: 4.18, recvmsg: 5.2, getpeername: 5.8), \
         sock_release (5.9) and cgroup BPF links (5.7)"
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
    /// The UDP listener already stands for another UDP service: replies
    /// from it could not be attributed to one service.
    #[error("UDP listener {listener} is already used by service {other}")]
    ListenerShared {
        /// The listener address.
        listener: SocketAddr,
        /// The service it already belongs to.
        other: SocketAddr,
    },
    /// A map operation failed.
    #[error("eBPF map {map}: {source}")]
    Map {
        /// Name of the map.
        map: &'static str,
        /// The underlying error.
        source: MapError,
    },
    /// An IPv4 service was given an IPv6 listener, which IPv4 sockets
    /// cannot be redirected to; or a UDP service and its listener differ in
    /// family (the kernel refuses to send an IPv6 socket's datagram to a
    /// v4-mapped address a program wrote).
    #[error("service {service} and listener {listener} are of different address families")]
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

/// Transport protocol of a redirect entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP: connect() redirected.
    Tcp,
    /// UDP: connect() and sendmsg() redirected, recvmsg() sources translated.
    Udp,
}

impl Proto {
    /// The protocol of an IP protocol number as stored in the map keys.
    fn from_number(n: u8) -> Option<Self> {
        match n {
            PROTO_TCP => Some(Proto::Tcp),
            PROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// True if this daemon was built with the real eBPF object, not the stub.
pub fn programs_built() -> bool {
    !OBJECT.is_empty()
}

/// How build.rs built the eBPF object: `real`, or `stub: <why>`.
pub const BUILD: &str = env!("NETMUX_EBPF_BUILD");

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
    // Boxed: aya map handles are large, and the daemon keeps this in an
    // enum next to a data-less variant.
    maps: Box<Maps>,
    exclude_mark: u32,
    exclude_tgid: u32,
    // Owns the programs and their BPF links: dropping it detaches them.
    _ebpf: Ebpf,
    _logs: Option<LogForwarder>,
}

/// The programs' maps, taken out of the [`Ebpf`] object.
struct Maps {
    services: HashMap<MapData, ServiceKey, ListenerTarget>,
    original_dst: HashMap<MapData, u64, OriginalDst>,
    service_by_listener: HashMap<MapData, ListenerKey, OriginalDst>,
    config: Array<MapData, RedirectConfig>,
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
    /// Loads the programs and attaches the [`SOCK_ADDR_PROGRAMS`] and
    /// [`SOCK_RELEASE_PROGRAM`] to the cgroup v2 directory `cgroup` (they
    /// then apply to every process in it and its descendants). The
    /// exclusion mark starts as [`DEFAULT_EXCLUDE_MARK`]; the maps start
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
        let services = HashMap::try_from(services).map_err(map_error(SERVICES_MAP))?;
        let original_dst = take_map(&mut ebpf, ORIGINAL_DST_MAP)?;
        let original_dst = HashMap::try_from(original_dst).map_err(map_error(ORIGINAL_DST_MAP))?;
        let service_by_listener = take_map(&mut ebpf, SERVICE_BY_LISTENER_MAP)?;
        let service_by_listener =
            HashMap::try_from(service_by_listener).map_err(map_error(SERVICE_BY_LISTENER_MAP))?;
        let config = take_map(&mut ebpf, CONFIG_MAP)?;
        let config = Array::try_from(config).map_err(map_error(CONFIG_MAP))?;
        let mut redirect = Self {
            cgroup: cgroup.to_owned(),
            maps: Box::new(Maps {
                services,
                original_dst,
                service_by_listener,
                config,
            }),
            exclude_mark: 0,
            exclude_tgid: 0,
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
        let service_v4 = service.ip().to_canonical().is_ipv4();
        if service_v4 && !listener.ip().to_canonical().is_ipv4() {
            return Err(EbpfError::ListenerFamily { service, listener });
        }
        self.insert_service(ServiceKey::new(service, PROTO_TCP), listener)
    }

    /// Stops redirecting TCP connects to `service`. Removing an address that
    /// is not there is not an error. Connections already redirected stay up.
    pub fn remove(&mut self, service: SocketAddr) -> Result<(), EbpfError> {
        self.remove_service(ServiceKey::new(service, PROTO_TCP))
            .map(drop)
    }

    /// Redirects UDP to `service` to `listener` from now on: connect() of
    /// UDP sockets and each datagram unconnected sockets send there, while
    /// datagrams from `listener` are reported as coming from `service`
    /// (recvfrom/recvmsg source, getpeername of connected sockets).
    /// Replaces any previous listener of `service`.
    ///
    /// `listener` must be of the same family as `service` (IPv4 and
    /// v4-mapped count as one) and must not stand for another UDP service
    /// ([`EbpfError::ListenerShared`]): replies are attributed to a service
    /// by their source alone.
    pub fn insert_udp(
        &mut self,
        service: SocketAddr,
        listener: SocketAddr,
    ) -> Result<(), EbpfError> {
        let service_v4 = service.ip().to_canonical().is_ipv4();
        if service_v4 != listener.ip().to_canonical().is_ipv4() {
            return Err(EbpfError::ListenerFamily { service, listener });
        }
        let key = ServiceKey::new(service, PROTO_UDP);
        let listener_key = ListenerKey::new(listener, PROTO_UDP);
        if let Some(other) = self.listener_owner(&listener_key)? {
            if other != key && self.listener_of(&other)? == Some(listener_key) {
                return Err(EbpfError::ListenerShared {
                    listener,
                    other: other.socket_addr(),
                });
            }
        }
        let previous = self.listener_of(&key)?;
        // Reverse first: once a datagram is redirected, its reply is
        // translated.
        self.maps
            .service_by_listener
            .insert(listener_key, original_dst(&key), 0)
            .map_err(map_error(SERVICE_BY_LISTENER_MAP))?;
        self.insert_service(key, listener)?;
        if let Some(previous) = previous.filter(|p| *p != listener_key) {
            self.forget_listener(&previous, &key)?;
        }
        Ok(())
    }

    /// Stops redirecting UDP to `service` and translating its listener's
    /// replies. Removing an address that is not there is not an error.
    pub fn remove_udp(&mut self, service: SocketAddr) -> Result<(), EbpfError> {
        let key = ServiceKey::new(service, PROTO_UDP);
        if let Some(listener) = self.remove_service(key)? {
            self.forget_listener(&listener, &key)?;
        }
        Ok(())
    }

    /// The TCP redirects in the map, `(service, listener)`, sorted.
    /// IPv4 addresses come back as IPv4, not v4-mapped.
    pub fn entries(&self) -> Result<Vec<(SocketAddr, SocketAddr)>, EbpfError> {
        Ok(self
            .entries_with_proto()?
            .into_iter()
            .filter(|(proto, _, _)| *proto == Proto::Tcp)
            .map(|(_, service, listener)| (service, listener))
            .collect())
    }

    /// Every redirect in the map, `(protocol, service, listener)`, sorted
    /// (TCP first). IPv4 addresses come back as IPv4, not v4-mapped.
    pub fn entries_with_proto(&self) -> Result<Vec<(Proto, SocketAddr, SocketAddr)>, EbpfError> {
        let mut out = Vec::new();
        for entry in self.maps.services.iter() {
            let (key, target) = entry.map_err(map_error(SERVICES_MAP))?;
            // Only the daemon writes the map, with TCP or UDP keys.
            if let Some(proto) = Proto::from_number(key.proto) {
                out.push((proto, key.socket_addr(), SocketAddr::from(target)));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The UDP listeners whose replies are translated, `(listener,
    /// service)`, sorted; for consistency checks (every UDP entry has
    /// exactly one).
    pub fn udp_reply_sources(&self) -> Result<Vec<(SocketAddr, SocketAddr)>, EbpfError> {
        let mut out = Vec::new();
        for entry in self.maps.service_by_listener.iter() {
            let (listener, service) = entry.map_err(map_error(SERVICE_BY_LISTENER_MAP))?;
            out.push((listener.socket_addr(), SocketAddr::from(service)));
        }
        out.sort();
        Ok(out)
    }

    fn insert_service(&mut self, key: ServiceKey, listener: SocketAddr) -> Result<(), EbpfError> {
        self.maps
            .services
            .insert(key, ListenerTarget::from(listener), 0)
            .map_err(map_error(SERVICES_MAP))
    }

    /// Removes `key` from `SERVICES`, returning the listener it had (as a
    /// UDP listener key) if it was there.
    fn remove_service(&mut self, key: ServiceKey) -> Result<Option<ListenerKey>, EbpfError> {
        let previous = self.listener_of(&key)?;
        let removed = found(self.maps.services.remove(&key), SERVICES_MAP)?;
        Ok(removed.and(previous))
    }

    /// The listener `key` is redirected to, as a UDP listener key.
    fn listener_of(&self, key: &ServiceKey) -> Result<Option<ListenerKey>, EbpfError> {
        let target = found(self.maps.services.get(key, 0), SERVICES_MAP)?;
        Ok(target.map(|t| ListenerKey::new(SocketAddr::from(t), PROTO_UDP)))
    }

    /// The UDP service key `listener`'s replies are translated to.
    fn listener_owner(&self, listener: &ListenerKey) -> Result<Option<ServiceKey>, EbpfError> {
        let service = found(
            self.maps.service_by_listener.get(listener, 0),
            SERVICE_BY_LISTENER_MAP,
        )?;
        Ok(service.map(|s| ServiceKey::new(SocketAddr::from(s), PROTO_UDP)))
    }

    /// Deletes `listener`'s reverse entry if it still points at `service`.
    fn forget_listener(
        &mut self,
        listener: &ListenerKey,
        service: &ServiceKey,
    ) -> Result<(), EbpfError> {
        if self.listener_owner(listener)? != Some(*service) {
            return Ok(());
        }
        found(
            self.maps.service_by_listener.remove(listener),
            SERVICE_BY_LISTENER_MAP,
        )?;
        Ok(())
    }

    /// How many redirected sockets are open (their original destination is
    /// remembered for getpeername()); for metrics and leak checks.
    pub fn redirected_sockets(&self) -> Result<usize, EbpfError> {
        let mut n = 0;
        for key in self.maps.original_dst.keys() {
            key.map_err(map_error(ORIGINAL_DST_MAP))?;
            n += 1;
        }
        Ok(n)
    }

    /// The `SO_MARK` that exempts a socket from redirection.
    pub fn exclude_mark(&self) -> u32 {
        self.exclude_mark
    }

    /// Changes the exempting `SO_MARK`; 0 turns the exemption off.
    pub(crate) fn set_exclude_mark(&mut self, mark: u32) -> Result<(), EbpfError> {
        self.write_config(RedirectConfig {
            exclude_mark: mark,
            exclude_tgid: self.exclude_tgid,
        })?;
        self.exclude_mark = mark;
        Ok(())
    }

    /// Never redirects connections of process `tgid` (0: none): netmuxd
    /// exempts itself, so that sockets it cannot mark (the Kubernetes
    /// client's) are never sent back into its own listeners.
    pub(crate) fn set_exclude_tgid(&mut self, tgid: u32) -> Result<(), EbpfError> {
        self.write_config(RedirectConfig {
            exclude_mark: self.exclude_mark,
            exclude_tgid: tgid,
        })?;
        self.exclude_tgid = tgid;
        Ok(())
    }

    fn write_config(&mut self, config: RedirectConfig) -> Result<(), EbpfError> {
        self.maps
            .config
            .set(CONFIG_INDEX, config, 0)
            .map_err(map_error(CONFIG_MAP))
    }
}

/// The `SERVICE_BY_LISTENER` value for a service key.
fn original_dst(key: &ServiceKey) -> OriginalDst {
    OriginalDst {
        addr: key.addr,
        port: key.port,
        _pad: [0; 2],
    }
}

/// A map error of `map`.
fn map_error(map: &'static str) -> impl FnOnce(MapError) -> EbpfError {
    move |source| EbpfError::Map { map, source }
}

/// `r`, with "no such key" as `None`; any other error is a map error of
/// `map`.
fn found<T>(r: Result<T, MapError>, map: &'static str) -> Result<Option<T>, EbpfError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(source) => Err(EbpfError::Map { map, source }),
    }
}

/// True for a map error meaning "no such key".
fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        // The kernel reports a missing key as ENOENT from the syscall.
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
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
mod tests;
