//! systemd readiness notification (`sd_notify(3)`), written by hand: one
//! datagram to `$NOTIFY_SOCKET`. A no-op when not started by systemd with
//! `Type=notify` (no `NOTIFY_SOCKET`).

use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// A state change to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Startup finished: the control socket accepts and autostart ran.
    Ready,
    /// Re-reading the configuration (`ExecReload`, SIGHUP).
    Reloading,
    /// Shutting down.
    Stopping,
}

impl State {
    /// The `sd_notify` message. `RELOADING=1` carries `MONOTONIC_USEC` as
    /// `Type=notify-reload` requires; harmless for `Type=notify`.
    pub(crate) fn message(self) -> String {
        match self {
            State::Ready => "READY=1".into(),
            State::Reloading => format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()),
            State::Stopping => "STOPPING=1".into(),
        }
    }
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, exclusively borrowed timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000
}

/// Sends `state` (plus `STATUS=status` if given) to `$NOTIFY_SOCKET`.
/// Returns whether a notification was sent.
pub fn notify(state: State, status: Option<&str>) -> std::io::Result<bool> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let mut msg = state.message();
    if let Some(s) = status {
        msg.push_str("\nSTATUS=");
        msg.push_str(&s.replace('\n', " "));
    }
    send(Path::new(&socket), &msg)?;
    Ok(true)
}

/// Sends `msg` to the notify socket `path` (`@name` is an abstract socket).
pub(crate) fn send(path: &Path, msg: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let raw = path.as_os_str().as_encoded_bytes();
    if let Some(name) = raw.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg.as_bytes(), &addr)?;
            return Ok(());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "abstract notify sockets exist only on Linux",
            ));
        }
    }
    sock.send_to(msg.as_bytes(), path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reaches_the_socket() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("notify");
        let rx = UnixDatagram::bind(&p).expect("bind");
        send(&p, &State::Ready.message()).expect("send");
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        assert!(State::Reloading
            .message()
            .starts_with("RELOADING=1\nMONOTONIC_USEC="));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("netmux-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract addr");
        let rx = UnixDatagram::bind_addr(&addr).expect("bind");
        send(Path::new(&format!("@{name}")), "STOPPING=1").expect("send");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
