//! Network-namespace sandboxes for netmux's end-to-end tests and demo.
//!
//! A [`Sandbox`] is a "workstation" and a "cluster" network namespace joined
//! by a veth pair (`10.250.X.1/24` ↔ `10.250.X.2/24`), with loopback up and
//! **no default route**: nothing a test sends can leave the machine. Cluster
//! service addresses live on the cluster side's `lo` and are unroutable from
//! the workstation, so the only way to reach them is through netmux.
//!
//! Everything is torn down on drop, also while unwinding from a failed
//! assertion: processes ([`Process`] kills its process group), namespaces,
//! `/etc/netns/<name>/` and the sandbox's temp dir. [`cleanup_stale`]
//! removes what a crashed run (SIGKILL, power loss) left behind.
//!
//! ```no_run
//! use std::time::Duration;
//! use netmux_testbed::{bin, Sandbox, Side};
//!
//! let sb = Sandbox::new().expect("sandbox (needs root)");
//! sb.add_service_address("10.96.0.10".parse().unwrap()).unwrap();
//! let _http = sb
//!     .process(Side::Cluster, "http", bin("nx-echo").unwrap())
//!     .args(["http", "--listen", "10.96.0.10:8080"])
//!     .spawn()
//!     .unwrap();
//! sb.wait_for_tcp(Side::Cluster, "10.96.0.10:8080".parse().unwrap(), Duration::from_secs(5))
//!     .unwrap();
//! ```
//!
//! For Kubernetes-shaped tests, [`cluster::FakeCluster`] puts a fake API
//! server (with an EndpointSlice controller), a kube-proxy and pod
//! backends ([`backends`]) in the cluster namespace in one call.
//!
//! Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN) and `ip` from iproute2.

pub mod backends;
mod bins;
pub mod cgroup;
pub mod check;
mod cleanup;
pub mod cluster;
pub mod docker;
mod error;
mod kubeproxy;
pub mod netmux;
mod netns;
pub mod prereq;
mod process;
mod sandbox;
mod wait;

pub use bins::{bin, bin_dirs};
pub use cleanup::cleanup_stale;
pub use error::{Error, Result};
pub use netns::Netns;
pub use process::{Output, Process, ProcessBuilder};
pub use sandbox::{Sandbox, Side, Teardown, CLUSTER_IF, WS_IF};
pub use wait::{wait_for_file, wait_until};

/// Locks `m`, also when an earlier holder panicked (a test thread that
/// failed an assertion): the data behind every mutex here stay valid
/// between statements. (`netmux_common::sync::lock`, which the testbed's
/// library does not link.)
pub(crate) fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Prefix of every namespace, link and temp dir this crate creates, unless a
/// sandbox is given its own with [`Sandbox::with_prefix`].
pub const DEFAULT_PREFIX: &str = "nx";
