//! How local connections reach the daemon's listeners.
//!
//! Every started service gets listeners on its own 127.x address from
//! [`alloc`]. Two backends bring applications there:
//! * [`Backend::Loopback`] (everywhere): the service's names go into the
//!   hosts file pointing at the 127.x address;
//! * [`Backend::Ebpf`] (Linux): cgroup connect hooks rewrite connections to
//!   the real cluster addresses into the listeners, and names point at the
//!   real addresses — static binaries and hard-coded IPs work too.

pub(crate) mod alloc;
pub(crate) mod bounds;
#[cfg(target_os = "linux")]
pub mod ebpf;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;

#[cfg(target_os = "linux")]
use netmux_common::sync::lock;

use crate::config::RedirectMode;

/// The redirect backend in use, chosen once at start.
pub enum Backend {
    /// Hosts-file names to per-service loopback addresses.
    Loopback,
    /// eBPF cgroup connect hooks.
    #[cfg(target_os = "linux")]
    Ebpf(Mutex<ebpf::EbpfRedirect>),
}

impl Backend {
    /// Chooses the backend for `mode`; returns it and why it was chosen.
    /// Only a forced `ebpf` that cannot load is an error.
    pub fn choose(mode: RedirectMode, cgroup: &Path) -> Result<(Backend, String), String> {
        match mode {
            RedirectMode::Loopback => Ok((Backend::Loopback, "loopback (forced by config)".into())),
            #[cfg(target_os = "linux")]
            RedirectMode::Ebpf | RedirectMode::Auto => match ebpf::EbpfRedirect::load(cgroup) {
                Ok(r) => Ok((
                    {
                        let _ = OWN_MARK.set(r.exclude_mark());
                        Backend::Ebpf(Mutex::new(r))
                    },
                    format!("ebpf (cgroup connect hooks on {})", cgroup.display()),
                )),
                Err(e) if mode == RedirectMode::Ebpf => Err(format!(
                    "redirect = \"ebpf\" but the programs cannot be loaded on {}: {e}",
                    cgroup.display()
                )),
                Err(e) => Ok((
                    Backend::Loopback,
                    format!("loopback (eBPF unavailable: {e})"),
                )),
            },
            #[cfg(not(target_os = "linux"))]
            RedirectMode::Ebpf => Err("redirect = \"ebpf\" needs Linux".into()),
            #[cfg(not(target_os = "linux"))]
            RedirectMode::Auto => Ok((Backend::Loopback, "loopback (no eBPF on this OS)".into())),
        }
    }

    /// Exempts this process from the redirect (eBPF): every connection the
    /// daemon makes goes where it was aimed, marked or not.
    pub fn exempt_this_process(&self) -> Result<(), String> {
        match self {
            #[cfg(target_os = "linux")]
            Backend::Ebpf(r) => match r.lock() {
                Ok(mut r) => r
                    .set_exclude_tgid(std::process::id())
                    .map_err(|e| e.to_string()),
                Err(_) => Err("redirect state poisoned".into()),
            },
            _ => Ok(()),
        }
    }

    /// Whether names should point at the real cluster addresses.
    pub(crate) fn uses_cluster_addresses(&self) -> bool {
        !matches!(self, Backend::Loopback)
    }

    /// Sends connects to `service` to `listener`.
    pub(crate) fn insert(&self, service: SocketAddr, listener: SocketAddr) -> Result<(), String> {
        match self {
            Backend::Loopback => Ok(()),
            #[cfg(target_os = "linux")]
            Backend::Ebpf(r) => lock(r)
                .insert(service, listener)
                .map_err(|e| format!("redirect {service} -> {listener}: {e}")),
        }
    }

    /// Sends UDP datagrams to `service` to `listener` (and reports replies
    /// from `listener` as coming from `service`).
    pub(crate) fn insert_udp(
        &self,
        service: SocketAddr,
        listener: SocketAddr,
    ) -> Result<(), String> {
        match self {
            Backend::Loopback => Ok(()),
            #[cfg(target_os = "linux")]
            Backend::Ebpf(r) => lock(r)
                .insert_udp(service, listener)
                .map_err(|e| format!("redirect udp {service} -> {listener}: {e}")),
        }
    }

    /// Stops redirecting `service` (TCP, or UDP when `udp`).
    pub(crate) fn remove(&self, service: SocketAddr, udp: bool) {
        #[cfg(target_os = "linux")]
        if let Backend::Ebpf(r) = self {
            let mut r = lock(r);
            let result = if udp {
                r.remove_udp(service)
            } else {
                r.remove(service)
            };
            if let Err(e) = result {
                tracing::error!(%service, udp, error = %e, "cannot remove redirect");
            }
        }
        let _ = (service, udp);
    }
}

/// The mark of the daemon's own sockets, once the eBPF backend is loaded.
static OWN_MARK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Marks a TCP socket the daemon dials itself (before `connect`) so the
/// hooks never send it back to the daemon. A no-op without eBPF.
pub(crate) fn exempt(socket: &impl std::os::fd::AsFd) {
    #[cfg(target_os = "linux")]
    if let Some(mark) = OWN_MARK.get() {
        if let Err(e) = ebpf::mark_socket(socket, *mark) {
            tracing::warn!(error = %e, "cannot mark own socket (needs CAP_NET_ADMIN)");
        }
    }
    let _ = socket;
}
