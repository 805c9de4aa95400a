//! Who gets a connection at all: caps on QUIC connections in total, per
//! source address, and pending their hello (`[limits]` in the config).
//!
//! Every accepted connection holds a [`Ticket`] until it ends; the ticket
//! counts as pending until [`Ticket::hello_done`]. A refused connection is
//! never handed to [`crate::connection`]: the endpoint answers it with
//! `CONNECTION_REFUSED` before any state is kept for it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use netmux_common::sync::lock;

/// The caps, from `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Connections at once, authenticated or not.
    pub(crate) total: usize,
    /// Connections at once from one source address.
    pub(crate) per_source: usize,
    /// Connections at once whose hello has not succeeded yet.
    pub(crate) pending: usize,
}

/// Why a connection was refused (metric label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// [`Caps::total`] reached.
    Total,
    /// [`Caps::per_source`] reached for this address.
    PerSource,
    /// [`Caps::pending`] reached.
    Pending,
}

impl Refusal {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerSource => "max_connections_per_source",
            Refusal::Pending => "max_pending_hello",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    pending: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// The live counts against the caps.
#[derive(Debug)]
pub struct Admission {
    caps: Caps,
    counts: Mutex<Counts>,
}

impl Admission {
    /// No connections yet.
    pub fn new(caps: Caps) -> Arc<Self> {
        Arc::new(Admission {
            caps,
            counts: Mutex::default(),
        })
    }

    /// Admits a connection from `source`, pending its hello, or says which
    /// cap it would exceed.
    pub(crate) fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Ticket, Refusal> {
        let mut c = lock(&self.counts);
        if c.total >= self.caps.total {
            return Err(Refusal::Total);
        }
        if c.pending >= self.caps.pending {
            return Err(Refusal::Pending);
        }
        let from_source = c.per_source.entry(source).or_insert(0);
        if *from_source >= self.caps.per_source {
            return Err(Refusal::PerSource);
        }
        *from_source += 1;
        c.total += 1;
        c.pending += 1;
        Ok(Ticket {
            admission: self.clone(),
            source,
            pending: true,
        })
    }

    /// Whether half the pending places are taken: from then on only peers
    /// that proved their address (QUIC Retry) are admitted, so spoofed
    /// sources can hold at most half of them.
    pub(crate) fn under_pressure(&self) -> bool {
        lock(&self.counts).pending * 2 >= self.caps.pending
    }

    /// Connections now: `(total, pending)`.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (usize, usize) {
        let c = lock(&self.counts);
        (c.total, c.pending)
    }

    /// Source addresses with connections now (bounded by `total`).
    #[cfg(test)]
    pub(crate) fn sources(&self) -> usize {
        lock(&self.counts).per_source.len()
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    source: IpAddr,
    pending: bool,
}

impl Ticket {
    /// The hello succeeded: the connection no longer counts as pending.
    pub(crate) fn hello_done(&mut self) {
        if std::mem::take(&mut self.pending) {
            lock(&self.admission.counts).pending -= 1;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut c = lock(&self.admission.counts);
        c.total -= 1;
        if self.pending {
            c.pending -= 1;
        }
        if let Some(n) = c.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.per_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn each_cap_refuses_and_dropping_frees_the_place() {
        let a = Admission::new(Caps {
            total: 4,
            per_source: 2,
            pending: 3,
        });
        let t1 = a.admit(ip("10.0.0.1")).expect("first");
        let mut t2 = a.admit(ip("10.0.0.1")).expect("second from the source");
        assert_eq!(a.admit(ip("10.0.0.1")).unwrap_err(), Refusal::PerSource);
        let t3 = a.admit(ip("10.0.0.2")).expect("other source");
        assert!(a.under_pressure());
        assert_eq!(a.admit(ip("10.0.0.3")).unwrap_err(), Refusal::Pending);
        t2.hello_done();
        t2.hello_done(); // twice counts once
        assert_eq!(a.counts(), (3, 2));
        let t4 = a.admit(ip("10.0.0.3")).expect("a pending place is free");
        assert_eq!(a.admit(ip("10.0.0.4")).unwrap_err(), Refusal::Total);
        drop(t1);
        let t5 = a.admit(ip("10.0.0.1")).expect("t1's place is free");
        drop((t2, t3, t4, t5));
        assert_eq!(a.counts(), (0, 0));
        assert_eq!(a.sources(), 0, "no source entries left behind");
    }
}
