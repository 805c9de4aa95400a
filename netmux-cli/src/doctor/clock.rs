//! Clock synchronisation.

use super::Check;

/// The kernel's NTP state (`adjtimex`): `Some(synchronized)`, `maxerror` µs.
pub(crate) fn ntp_state() -> Option<(bool, i64)> {
    // SAFETY: a zeroed timex with modes = 0 only reads the state.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: tx is a valid, exclusively borrowed timex.
    let r = unsafe { libc::adjtimex(&mut tx) };
    if r < 0 {
        return None;
    }
    Some((r != libc::TIME_ERROR, tx.maxerror as i64))
}

/// Clock: synchronized (NTP) with a small error bound. Certificates are
/// checked against this clock, so skew shows up as "not yet valid".
pub(crate) fn clock(state: Option<(bool, i64)>) -> Check {
    const NAME: &str = "clock";
    let fix = "enable time synchronisation: timedatectl set-ntp true (or chrony/ntpd)";
    match state {
        None => Check::warn(NAME, "cannot read the kernel's clock state", fix),
        Some((false, _)) => Check::fail(
            NAME,
            "the clock is not synchronised (NTP): skew breaks certificate checks",
            fix,
        ),
        Some((true, maxerr)) if maxerr > 1_000_000 => Check::warn(
            NAME,
            format!("synchronised, but the error bound is {} ms", maxerr / 1000),
            fix,
        ),
        Some((true, maxerr)) => Check::pass(
            NAME,
            format!("synchronised (error bound {} ms)", maxerr / 1000),
        ),
    }
}
