//! The control socket the `netmux` CLI talks to (the server side; the
//! request types and the client are in `netmux-api`).
//!
//! A unix socket (mode 0660, group `socket_group`); every peer's credentials
//! are checked with `SO_PEERCRED`: root, the daemon's own user, and members of
//! the group are served, anyone else is refused with an explanation.

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

fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Whether the peer of `stream` may drive the daemon.
fn authorized(stream: &UnixStream, group: Option<Gid>) -> Result<(), String> {
    let creds = getsockopt(stream, PeerCredentials).map_err(|e| format!("SO_PEERCRED: {e}"))?;
    let uid = creds.uid();
    if uid == 0 || Uid::from_raw(uid) == Uid::effective() {
        return Ok(());
    }
    if let Some(g) = group {
        if creds.gid() == g.as_raw() || supplementary_groups(creds.pid()).contains(&g.as_raw()) {
            return Ok(());
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
            if let Err(e) = handle(stream, group, daemon).await {
                tracing::debug!(error = %e, "control client");
            }
        });
    }
}

async fn handle(
    stream: UnixStream,
    group: Option<Gid>,
    daemon: Arc<Daemon>,
) -> std::io::Result<()> {
    let auth = authorized(&stream, group);
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd.take(MAX_REQUEST as u64 + 1)).lines();
    let response: Response = match auth {
        Err(e) => {
            tracing::warn!(error = %e, "control client refused");
            Err(e).into()
        }
        Ok(()) => match lines.next_line().await? {
            None => return Ok(()),
            Some(line) if line.len() > MAX_REQUEST => Err("request too large".to_owned()).into(),
            Some(line) => match serde_json::from_str::<Request>(&line) {
                Ok(req) => daemon.handle(req).await.into(),
                Err(e) => Err(format!(
                    "bad request: {e}; is the netmux CLI the same version as netmuxd?"
                ))
                .into(),
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
