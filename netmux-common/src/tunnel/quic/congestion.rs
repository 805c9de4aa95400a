//! netmux's own congestion controller: quinn-proto 0.11's BBR, ported, with
//! a windowed minimum RTT and delivery-rate bandwidth samples.
//!
//! Why not quinn's `BbrConfig`: its BBR takes the minimum RTT from
//! `RttEstimator::min()`, the lowest sample of the connection's whole life.
//! A tunnel is long-lived and its path changes (Wi-Fi to tethering, VPN
//! up): once it has seen 0.05 ms, a 20 ms path gets a window of
//! `bandwidth × 0.05 ms` and never opens it (measured: 10.7 Mbit/s where a
//! fresh connection gets 728, BENCHMARKS.md History). Here the minimum is
//! BBRv1's 10 s windowed filter ([`MinRttFilter`]) fed with each ACK's own
//! RTT sample.
//!
//! Nor does quinn's BBR measure the bandwidth: it divides one packet by
//! the time since the previous acknowledged packet, and quinn reports all
//! packets of an ACK frame at one instant, so its estimate was 6.6 MB/s on
//! a path delivering 800 MB/s. Every acknowledged byte above that counted
//! as ACK aggregation, and the congestion window grew without bound (2.4 GB
//! after 5 s of bulk): no congestion control at all. Here the bandwidth
//! comes from delivery-rate samples (`bw_estimation`, as in Linux's
//! `tcp_rate.c`). The rest of the controller is quinn's, file by file, with
//! every change marked `netmux:` in [`bbr`](self::Bbr).
//!
//! Cubic is no alternative: it collapses at 1% random loss (14 Mbit/s in
//! the same bench).

mod bbr;
mod bw_estimation;
mod min_max;
mod min_rtt;

pub use bbr::{Bbr, BbrConfig};
pub use min_rtt::MinRttFilter;
