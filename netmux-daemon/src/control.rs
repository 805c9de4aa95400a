//! The control socket the `netmux` CLI talks to (the server side; the
//! request types and the client are in `netmux-api`).
//!
//! A unix socket (mode 0660, group `socket_group`); every peer's credentials
//! are checked with `SO_PEERCRED` and `SO_PEERGROUPS` (both captured by the
//! kernel at `connect()`, so neither a peer that exits nor a reused pid can
//! change them): root, the daemon's own user, and members of the group are
//! served, anyone else is refused with an explanation. A client has
//! [`REQUEST_TIMEOUT`] to send its request line, so an idle one cannot pin
//! a handler.

use std::os::fd::{AsFd, AsRawFd as _};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Gid, Group, Uid};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::api::{Request, Response};
use crate::daemon::Daemon;

/// Largest request line accepted.
const MAX_REQUEST: usize = 1024 * 1024;

/// How long a client has to send its request line.
pub(crate) const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Filesystem or socket problem.
    #[error("control socket {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The configured group does not exist.
    #[error(
        "socket_group {0:?} does not exist: create it (groupadd {0}) or remove `socket_group`"
    )]
    NoGroup(String),
}

/// The group given access when the config names none: `netmux`, if it
/// exists (`netmux install` creates it).
pub fn default_group(configured: Option<&str>) -> Option<String> {
    match configured {
        Some(g) => Some(g.to_owned()),
        None => Group::from_name("netmux").ok().flatten().map(|g| g.name),
    }
}

/// Binds the socket, replacing a stale one, with mode 0660 and the group.
pub fn bind(path: &Path, group: Option<&str>) -> Result<(UnixListener, Option<Gid>), ControlError> {
    let io = |source| ControlError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        // A live daemon answers; a stale socket from a crash is replaced.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another netmuxd is running (stop it with `netmux exit`)",
            )));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    let gid = match group {
        Some(name) => {
            let g = Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| ControlError::NoGroup(name.to_owned()))?;
            nix::unistd::chown(path, None, Some(g.gid)).map_err(|e| io(e.into()))?;
            Some(g.gid)
        }
        None => None,
    };
    Ok((listener, gid))
}

/// The peer's supplementary groups as the kernel recorded them when it
/// connected (`SO_PEERGROUPS`, Linux 4.13).
fn peer_groups(stream: &impl AsFd) -> std::io::Result<Vec<u32>> {
    let fd = stream.as_fd().as_raw_fd();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(std::mem::size_of_val(groups.as_slice()))
            .unwrap_or(libc::socklen_t::MAX);
        // SAFETY: `groups` is a live buffer of `len` bytes; the kernel writes
        // at most `len` bytes and stores the size it needs in `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65_536 {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}

/// Whether the peer of `stream` may drive the daemon: its uid if so.
fn authorized(stream: &impl AsFd, group: Option<Gid>) -> Result<u32, String> {
    let creds = getsockopt(stream, PeerCredentials).map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let uid = creds.uid();
    if uid == 0 || Uid::from_raw(uid) == Uid::effective() {
        return Ok(uid);
    }
    if let Some(g) = group {
        if creds.gid() == g.as_raw() {
            return Ok(uid);
        }
        let groups = peer_groups(stream).map_err(|e| format!("SO_PEERGROUPS: {e}"))?;
        if groups.contains(&g.as_raw()) {
            return Ok(uid);
        }
    }
    Err(format!(
        "uid {uid} may not use netmuxd: add the user to the netmux group (usermod -aG netmux USER) and log in again"
    ))
}

/// Serves CLI requests until aborted.
pub async fn serve(listener: UnixListener, group: Option<Gid>, daemon: Arc<Daemon>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, group, daemon, REQUEST_TIMEOUT).await {
                tracing::debug!(error = %e, "control client");
            }
        });
    }
}

async fn handle(
    stream: UnixStream,
    group: Option<Gid>,
    daemon: Arc<Daemon>,
    timeout: std::time::Duration,
) -> std::io::Result<()> {
    let auth = authorized(&stream, group);
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd.take(MAX_REQUEST as u64 + 1)).lines();
    let response: Response = match auth {
        Err(e) => {
            tracing::warn!(error = %e, "control client refused");
            Err(e).into()
        }
        Ok(uid) => match tokio::time::timeout(timeout, lines.next_line()).await {
            Err(_) => Err(format!(
                "no request within {}s: closing (send one JSON request line)",
                timeout.as_secs_f32()
            ))
            .into(),
            Ok(line) => match line? {
                None => return Ok(()),
                Some(line) if line.len() > MAX_REQUEST => {
                    Err("request too large".to_owned()).into()
                }
                Some(line) => match serde_json::from_str::<Request>(&line) {
                    Ok(req) => daemon.handle(req, uid).await.into(),
                    Err(e) => Err(format!(
                        "bad request: {e}; is the netmux CLI the same version as netmuxd?"
                    ))
                    .into(),
                },
            },
        },
    };
    let mut out =
        serde_json::to_vec(&response).unwrap_or_else(|_| b"{\"error\":\"encoding\"}".to_vec());
    out.push(b'\n');
    wr.write_all(&out).await?;
    wr.shutdown().await
}

use tokio::io::AsyncReadExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer in the socket group only through a supplementary group,
    /// which exits before the daemon looks at it: its groups come from the
    /// socket, not from `/proc/<pid>`, which is gone (or, with pid reuse,
    /// someone else's).
    #[test]
    fn supplementary_groups_come_from_the_socket_even_after_the_peer_exited() {
        if !Uid::effective().is_root() {
            netmux_testbed::prereq::require(
                "control::tests::supplementary_groups_come_from_the_socket_even_after_the_peer_exited",
                Some("needs root to give a child process other ids".to_owned()),
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // 0o777 so the child's uid may connect.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (uid, gid, group) = (54_321, 54_322, 54_323);
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: the child calls only async-signal-safe functions (setgroups,
        // setgid, setuid, socket, connect, _exit) and touches no lock.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                let groups = [group as libc::gid_t];
                let mut ok = libc::setgroups(1, groups.as_ptr()) == 0
                    && libc::setgid(gid) == 0
                    && libc::setuid(uid) == 0;
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let mut addr: libc::sockaddr_un = std::mem::zeroed();
                addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
                let bytes = c_path.as_bytes_with_nul();
                for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
                    *d = *s as libc::c_char;
                }
                ok = ok
                    && libc::connect(
                        fd,
                        std::ptr::addr_of!(addr).cast(),
                        std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                    ) == 0;
                libc::_exit(if ok { 0 } else { 1 })
            },
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(
                    status,
                    nix::sys::wait::WaitStatus::Exited(child, 0),
                    "child could not take its ids or connect"
                );
                assert!(!Path::new(&format!("/proc/{child}")).exists());
                let (stream, _) = listener.accept().unwrap();
                assert_eq!(peer_groups(&stream).unwrap(), [group]);
                assert_eq!(authorized(&stream, Some(Gid::from_raw(group))), Ok(uid));
                let e = authorized(&stream, Some(Gid::from_raw(group + 1))).unwrap_err();
                assert!(e.contains("uid 54321") && e.contains("usermod"), "{e}");
            }
        }
    }

    #[tokio::test]
    async fn an_idle_client_is_answered_and_dropped_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("hosts_file = \"{}/hosts\"\n", dir.path().display());
        let config = crate::config::Config::parse(&dir.path().join("c.toml"), &text).unwrap();
        let daemon = Daemon::new(config, crate::metrics::Metrics::new());
        let (client, server) = UnixStream::pair().unwrap();
        let timeout = std::time::Duration::from_millis(200);
        let handler = tokio::spawn(handle(server, None, daemon, timeout));
        // The client connects and says nothing.
        let mut reply = String::new();
        let read = async {
            let mut r = BufReader::new(client);
            r.read_line(&mut reply).await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, read)
            .await
            .expect("the handler still holds an idle client")
            .unwrap();
        assert!(reply.contains("no request within"), "{reply}");
        tokio::time::timeout(REQUEST_TIMEOUT, handler)
            .await
            .expect("handler ended")
            .unwrap()
            .unwrap();
    }
}
