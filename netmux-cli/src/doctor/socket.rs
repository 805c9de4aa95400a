//! The control socket: mode, group, who may connect.

use std::path::PathBuf;

use super::Check;

/// What is known about the control socket and the user running doctor.
#[derive(Debug, Clone)]
pub(crate) struct SocketFacts {
    /// Socket path.
    pub(crate) path: PathBuf,
    /// `(is a socket, mode bits, gid)` if it exists.
    pub(crate) meta: Option<(bool, u32, u32)>,
    /// gid of the configured `socket_group`, if it exists.
    pub(crate) group_gid: Option<u32>,
    /// The configured `socket_group`.
    pub(crate) group: Option<String>,
    /// Running user.
    pub(crate) uid: u32,
    /// Running user's groups (primary and supplementary).
    pub(crate) gids: Vec<u32>,
    /// Whether connect() succeeded.
    pub(crate) connectable: bool,
}

/// Control socket: exists, mode 0660, the configured group, usable by us.
pub(crate) fn control_socket(f: &SocketFacts) -> Check {
    const NAME: &str = "control-socket";
    let p = f.path.display();
    if let Some(g) = &f.group {
        if f.group_gid.is_none() {
            return Check::fail(
                NAME,
                format!("socket_group {g:?} does not exist"),
                format!("create it (`netmux install` does, or groupadd --system {g})"),
            );
        }
    }
    let Some((is_socket, mode, gid)) = f.meta else {
        return Check::fail(
            NAME,
            format!("{p} does not exist: netmuxd is not running"),
            "start it: systemctl start netmuxd (see `netmux logs` if it fails)",
        );
    };
    if !is_socket {
        return Check::fail(
            NAME,
            format!("{p} is not a socket"),
            format!("remove it (rm {p}) and restart netmuxd"),
        );
    }
    if mode & 0o777 != 0o660 {
        return Check::fail(
            NAME,
            format!("{p} has mode {:o}, expected 660", mode & 0o777),
            "restart netmuxd (it sets 0660 on its socket)",
        );
    }
    if let (Some(want), Some(g)) = (f.group_gid, &f.group) {
        if gid != want {
            return Check::fail(
                NAME,
                format!("{p} belongs to gid {gid}, not {g} ({want})"),
                "restart netmuxd; its user must be a member of the socket group",
            );
        }
        if f.uid != 0 && !f.gids.contains(&want) {
            return Check::fail(
                NAME,
                format!("you (uid {}) are not in the {g} group", f.uid),
                format!("usermod -aG {g} $USER, then log in again"),
            );
        }
    }
    if !f.connectable {
        return Check::fail(
            NAME,
            format!("{p} exists but nobody answers (stale socket?)"),
            "restart netmuxd: systemctl restart netmuxd",
        );
    }
    Check::pass(NAME, format!("{p}: mode 660, you may use it"))
}
