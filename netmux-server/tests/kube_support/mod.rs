//! The fake Kubernetes API server shared by the kube tests (crate
//! `netmux-fakekube`).
#![allow(unused_imports)]
pub use netmux_fakekube::*;
