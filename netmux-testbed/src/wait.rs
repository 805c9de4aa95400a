//! Bounded polling for conditions outside our control (a process binding a
//! port, a file appearing). Logic under test never sleeps; only the harness
//! waits for external processes, and always with a deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Interval between polls.
const POLL: Duration = Duration::from_millis(25);

/// Polls `cond` until it returns true or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::WaitTimeout {
                what: what.to_owned(),
                timeout,
            });
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until `path` exists and is not empty.
pub fn wait_for_file(path: &Path, timeout: Duration) -> Result<()> {
    wait_until(&format!("file {}", path.display()), timeout, || {
        std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
    })
}
