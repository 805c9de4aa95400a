//! How local connections reach the daemon's listeners.
//!
//! * loopback (everywhere): each started service gets its own 127.x address
//!   from [`alloc`], and its names go into the hosts file;
//! * eBPF (Linux): cgroup connect hooks rewrite connections to the real
//!   cluster address into the listener.

pub mod alloc;
#[cfg(target_os = "linux")]
pub mod ebpf;
