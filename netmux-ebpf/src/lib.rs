#![no_std]
//! Library target so `netmux-daemon` can name this crate as a build
//! dependency (cargo then rebuilds the daemon when the programs change); the
//! programs themselves are the `netmux-ebpf` binary, built for
//! `bpfel-unknown-none` by `netmux-daemon/build.rs`.
