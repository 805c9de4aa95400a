//! Measures `connect()` + `close()` latency to one TCP address, N times.
//!
//! ```text
//! connect_bench ADDR [N=1000]
//! ```
//!
//! Prints one line of microsecond statistics, e.g.
//! `addr=10.96.0.10:80 n=1000 errors=0 min_us=21.3 p50_us=25.0 p90_us=31.2 p99_us=60.4 max_us=140.9 mean_us=27.1`.
//! Run it inside and outside the redirected cgroup (or against the listener
//! directly) to see what the eBPF hook adds to a connect. Failed connects are
//! counted in `errors`, not timed; it exits non-zero if none succeeded.

use std::{
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    time::{Duration, Instant},
};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(addr), n) = (args.next(), args.next()) else {
        eprintln!("usage: connect_bench ADDR [N=1000]");
        return ExitCode::from(2);
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bad address {addr:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let n: usize = match n.as_deref().map(str::parse).unwrap_or(Ok(1000)) {
        Ok(n) if n > 0 => n,
        _ => {
            eprintln!("N must be a positive integer");
            return ExitCode::from(2);
        }
    };

    let (mut samples, errors) = measure(addr, n);
    if samples.is_empty() {
        eprintln!("addr={addr}: all {n} connects failed");
        return ExitCode::FAILURE;
    }
    println!(
        "addr={addr} n={n} errors={errors} {}",
        summary(&mut samples)
    );
    ExitCode::SUCCESS
}

/// Times `n` connect+close rounds to `addr`; returns the successful
/// durations and the number of failed connects.
pub fn measure(addr: SocketAddr, n: usize) -> (Vec<Duration>, usize) {
    let mut samples = Vec::with_capacity(n);
    let mut errors = 0;
    for _ in 0..n {
        let start = Instant::now();
        match TcpStream::connect(addr) {
            Ok(s) => {
                drop(s);
                samples.push(start.elapsed());
            }
            Err(_) => errors += 1,
        }
    }
    (samples, errors)
}

/// `min_us=.. p50_us=.. p90_us=.. p99_us=.. max_us=.. mean_us=..`; sorts
/// `samples`, which must not be empty.
fn summary(samples: &mut [Duration]) -> String {
    samples.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let pct = |p: f64| {
        let i = ((samples.len() - 1) as f64 * p).round() as usize;
        us(samples[i])
    };
    let mean = samples.iter().map(|d| us(*d)).sum::<f64>() / samples.len() as f64;
    format!(
        "min_us={:.1} p50_us={:.1} p90_us={:.1} p99_us={:.1} max_us={:.1} mean_us={:.1}",
        us(samples[0]),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        us(samples[samples.len() - 1]),
        mean
    )
}
