//! `netmux install` / `netmux uninstall`: binaries, the service definition
//! (systemd unit or launchd plist), the daemon's system user and the
//! control-socket group, a default configuration, and enabling the service.
//!
//! Every path is under [`Layout::root`] (`/` normally, a temporary directory
//! in tests), and every external command (`systemctl`, `useradd`, ...) goes
//! through [`Commands`], which tests point at a stub. Install writes a
//! manifest of what it created; uninstall removes exactly that, so that
//! install followed by uninstall leaves the tree as it was. Install is
//! idempotent: running it again over an installation is the upgrade (new
//! binaries and unit, same config, service restarted).

use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The systemd unit template (`@BINDIR@`, `@CONFIG@`, `@USER@`, `@GROUP@`,
/// `@CAPS@`, `@HOSTS@`, `@SOCKET@`).
pub(crate) const UNIT_TEMPLATE: &str = include_str!("../../packaging/netmuxd.service.in");
/// The launchd plist template (`@BINDIR@`, `@CONFIG@`, `@LOG@`).
pub(crate) const PLIST_TEMPLATE: &str = include_str!("../../packaging/dev.netmux.netmuxd.plist.in");
/// The configuration written when none exists.
pub(crate) const DEFAULT_CONFIG_TOML: &str = include_str!("../../packaging/config.toml");

/// Name of the systemd unit.
pub(crate) const UNIT_NAME: &str = "netmuxd.service";
/// launchd label.
pub(crate) const LAUNCHD_LABEL: &str = "dev.netmux.netmuxd";
/// The daemon's system user.
pub const DAEMON_USER: &str = "netmuxd";
/// The group allowed to use the control socket.
pub const SOCKET_GROUP: &str = "netmux";
/// Ambient capabilities of the daemon (and its bounding set); the need for
/// each is in the unit template and docs/install.md, measured by
/// `tests/capabilities_e2e.rs`, which runs netmuxd with exactly these as a
/// system user and then without each one.
pub(crate) const CAPABILITIES: &[&str] = &[
    "CAP_BPF",
    "CAP_NET_ADMIN",
    "CAP_PERFMON",
    "CAP_NET_BIND_SERVICE",
    "CAP_DAC_OVERRIDE",
];
/// Binaries installed.
pub(crate) const BINARIES: &[&str] = &["netmux", "netmuxd"];

/// Why install or uninstall failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InstallError {
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A binary to install is missing.
    #[error("{} not found: build it first (cargo build --release) or pass --from DIR", path.display())]
    MissingBinary {
        /// Expected path.
        path: PathBuf,
    },
    /// An external command failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status and stderr.
        detail: String,
    },
    /// The manifest is unreadable.
    #[error("{}: {message}; remove the files listed in docs/install.md by hand or reinstall first", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Install/uninstall into `/` needs root.
    #[error("{0} needs root: run it with sudo (or pass --root DIR to stage into a directory)")]
    NotRoot(&'static str),
}

type Result<T, E = InstallError> = std::result::Result<T, E>;

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Service manager the daemon is installed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// A systemd unit (Linux).
    Systemd,
    /// A launchd daemon plist (macOS).
    Launchd,
}

impl Init {
    /// The service manager of the OS this was built for.
    pub(crate) fn native() -> Self {
        if cfg!(target_os = "macos") {
            Init::Launchd
        } else {
            Init::Systemd
        }
    }
}

/// Where things go. All absolute paths below are joined under `root`.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The filesystem root (`/`, or a staging directory).
    pub(crate) root: PathBuf,
    /// Installation prefix for binaries, man pages and completions.
    pub(crate) prefix: PathBuf,
    /// Service manager.
    pub(crate) init: Init,
}

impl Layout {
    /// The usual layout: `/`, `/usr/local`.
    pub fn new(root: impl Into<PathBuf>, prefix: impl Into<PathBuf>, init: Init) -> Self {
        Layout {
            root: root.into(),
            prefix: prefix.into(),
            init,
        }
    }

    /// `abs` (an absolute path on the target system) under the root.
    pub(crate) fn host(&self, abs: &Path) -> PathBuf {
        self.root.join(abs.strip_prefix("/").unwrap_or(abs))
    }

    /// Whether this installs into the running system.
    pub(crate) fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Binaries directory on the target system.
    pub(crate) fn bindir(&self) -> PathBuf {
        self.prefix.join("bin")
    }

    /// The configuration file on the target system.
    pub(crate) fn config(&self) -> PathBuf {
        PathBuf::from(netmux_daemon::config::DEFAULT_CONFIG)
    }

    /// The manifest of an installation on the target system.
    pub(crate) fn manifest(&self) -> PathBuf {
        PathBuf::from("/etc/netmux/install-manifest.json")
    }

    /// The service definition on the target system.
    pub(crate) fn service_file(&self) -> PathBuf {
        match self.init {
            Init::Systemd => PathBuf::from("/etc/systemd/system").join(UNIT_NAME),
            Init::Launchd => PathBuf::from(format!("/Library/LaunchDaemons/{LAUNCHD_LABEL}.plist")),
        }
    }

    /// The log file launchd writes (macOS has no journald).
    pub(crate) fn launchd_log(&self) -> PathBuf {
        PathBuf::from("/var/log/netmuxd.log")
    }

    /// Renders the systemd unit; `hosts_file` and `socket` come from the
    /// configuration.
    pub fn unit(&self, hosts_file: &Path, socket: &Path) -> String {
        UNIT_TEMPLATE
            .replace("@BINDIR@", &self.bindir().display().to_string())
            .replace("@CONFIG@", &self.config().display().to_string())
            .replace("@USER@", DAEMON_USER)
            .replace("@GROUP@", SOCKET_GROUP)
            .replace("@CAPS@", &CAPABILITIES.join(" "))
            .replace("@HOSTS@", &hosts_file.display().to_string())
            .replace("@SOCKET@", &socket.display().to_string())
    }

    /// Renders the launchd plist.
    pub(crate) fn plist(&self) -> String {
        PLIST_TEMPLATE
            .replace("@BINDIR@", &self.bindir().display().to_string())
            .replace("@CONFIG@", &self.config().display().to_string())
            .replace("@LOG@", &self.launchd_log().display().to_string())
    }
}

/// A generated file to install besides the binaries (man page, completion).
#[derive(Debug, Clone)]
pub(crate) struct Artifact {
    /// Path relative to the prefix, e.g. `share/man/man1/netmux.1`.
    pub(crate) rel: PathBuf,
    /// Contents.
    pub(crate) contents: Vec<u8>,
}

/// Runs external commands; tests point `NETMUX_INSTALL_EXEC` at a stub that
/// receives the command line as its arguments.
#[derive(Debug, Clone, Default)]
pub(crate) struct Commands {
    /// Wrapper every command is run through, if any.
    pub(crate) wrapper: Option<PathBuf>,
    /// Print instead of running.
    pub(crate) dry_run: bool,
}

impl Commands {
    /// From the environment (`NETMUX_INSTALL_EXEC`).
    pub(crate) fn from_env() -> Self {
        Commands {
            wrapper: std::env::var_os("NETMUX_INSTALL_EXEC").map(PathBuf::from),
            dry_run: false,
        }
    }

    /// Runs `argv`; an error names the command and its stderr.
    pub(crate) fn run(&self, argv: &[&str]) -> Result<()> {
        let line = argv.join(" ");
        if self.dry_run {
            println!("would run: {line}");
            return Ok(());
        }
        let (program, args): (OsString, Vec<OsString>) = match &self.wrapper {
            Some(w) => (w.into(), argv.iter().map(OsString::from).collect()),
            None => match argv.split_first() {
                Some((p, rest)) => (p.into(), rest.iter().map(OsString::from).collect()),
                None => return Ok(()),
            },
        };
        let out =
            Command::new(&program)
                .args(&args)
                .output()
                .map_err(|e| InstallError::Command {
                    command: line.clone(),
                    detail: format!("cannot run {}: {e}", program.to_string_lossy()),
                })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(InstallError::Command {
                command: line,
                detail: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            })
        }
    }
}

/// What an installation created, so uninstall removes exactly that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// netmux version that wrote it.
    pub(crate) version: String,
    /// Service manager.
    pub(crate) init: Option<Init>,
    /// Files written (absolute target paths), besides the config.
    pub(crate) files: Vec<PathBuf>,
    /// Directories created, parents first.
    pub(crate) dirs: Vec<PathBuf>,
    /// The config was written by install (removed on uninstall while it
    /// still equals the default).
    pub(crate) config_created: bool,
    /// The socket group was created by install.
    pub(crate) group_created: bool,
    /// The daemon user was created by install.
    pub(crate) user_created: bool,
    /// The service was enabled by install.
    pub(crate) enabled: bool,
}

/// Install options.
#[derive(Debug, Clone)]
pub(crate) struct InstallOptions {
    /// Where `netmux` and `netmuxd` are copied from.
    pub(crate) from: PathBuf,
    /// Man pages and completions.
    pub(crate) artifacts: Vec<Artifact>,
    /// Enable and start the service.
    pub(crate) enable: bool,
}

/// Uninstall options.
#[derive(Debug, Clone, Default)]
pub(crate) struct UninstallOptions {
    /// Also remove a configuration that was edited (or not created by us).
    pub(crate) purge: bool,
}

/// Whether `name` is in the `group`/`passwd`-style file at `path`.
pub fn db_has(path: &Path, name: &str) -> bool {
    fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .any(|l| l.split(':').next() == Some(name) && !l.starts_with('#'))
        })
        .unwrap_or(false)
}

/// The hosts file (for the unit's `ReadWritePaths`) and control socket (for
/// `ExecReload`) the configuration at `layout.config()` names; the defaults
/// if it does not load.
fn config_paths(layout: &Layout) -> (PathBuf, PathBuf) {
    netmux_daemon::config::Config::load(&layout.host(&layout.config()))
        .map(|c| (c.hosts_file, c.socket))
        .unwrap_or_else(|_| {
            (
                PathBuf::from("/etc/hosts"),
                PathBuf::from(netmux_daemon::config::DEFAULT_SOCKET),
            )
        })
}

/// Installs; returns what was done, one line each.
pub(crate) fn install(
    layout: &Layout,
    opts: &InstallOptions,
    cmd: &Commands,
) -> Result<Vec<String>> {
    if layout.is_live() && !nix::unistd::Uid::effective().is_root() {
        return Err(InstallError::NotRoot("netmux install"));
    }
    let mut done = Vec::new();
    let previous = read_manifest(layout)?;
    let upgrade = previous.is_some();
    let mut m = previous.unwrap_or_default();
    m.version = env!("CARGO_PKG_VERSION").into();
    m.init = Some(layout.init);

    // Binaries, then generated files: checked before anything is written.
    let sources: Vec<PathBuf> = BINARIES.iter().map(|b| opts.from.join(b)).collect();
    for s in &sources {
        if !s.is_file() {
            return Err(InstallError::MissingBinary { path: s.clone() });
        }
    }
    for (name, src) in BINARIES.iter().zip(&sources) {
        let target = layout.bindir().join(name);
        let bytes = fs::read(src).map_err(io("reading", src))?;
        put(layout, &mut m, &target, &bytes, 0o755)?;
        done.push(format!("installed {}", target.display()));
    }
    for a in &opts.artifacts {
        let target = layout.prefix.join(&a.rel);
        put(layout, &mut m, &target, &a.contents, 0o644)?;
        done.push(format!("installed {}", target.display()));
    }

    // The configuration: never overwritten.
    let config = layout.config();
    let host_config = layout.host(&config);
    if host_config.exists() {
        done.push(format!("kept existing {}", config.display()));
    } else {
        mkdirs(layout, &mut m, config.parent().unwrap_or(Path::new("/")))?;
        write_atomic(&host_config, DEFAULT_CONFIG_TOML.as_bytes(), 0o644)?;
        m.config_created = true;
        done.push(format!("wrote default {}", config.display()));
    }

    // The service definition.
    let service = layout.service_file();
    let contents = match layout.init {
        Init::Systemd => {
            let (hosts, socket) = config_paths(layout);
            layout.unit(&hosts, &socket)
        }
        Init::Launchd => layout.plist(),
    };
    put(layout, &mut m, &service, contents.as_bytes(), 0o644)?;
    done.push(format!("installed {}", service.display()));
    write_manifest(layout, &mut m)?;

    // Users and groups (Linux; launchd runs the daemon as root).
    if layout.init == Init::Systemd {
        let prefix_args: Vec<String> = if layout.is_live() {
            vec![]
        } else {
            vec!["--prefix".into(), layout.root.display().to_string()]
        };
        let pa: Vec<&str> = prefix_args.iter().map(String::as_str).collect();
        if !db_has(&layout.host(Path::new("/etc/group")), SOCKET_GROUP) {
            cmd.run(&[&["groupadd", "--system"], &pa[..], &[SOCKET_GROUP]].concat())?;
            m.group_created = true;
            write_manifest(layout, &mut m)?;
            done.push(format!("created group {SOCKET_GROUP}"));
        }
        if !db_has(&layout.host(Path::new("/etc/passwd")), DAEMON_USER) {
            let argv = [
                &[
                    "useradd",
                    "--system",
                    "--user-group",
                    "--groups",
                    SOCKET_GROUP,
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    "--comment",
                    "netmux daemon",
                ],
                &pa[..],
                &[DAEMON_USER],
            ]
            .concat();
            cmd.run(&argv)?;
            m.user_created = true;
            write_manifest(layout, &mut m)?;
            done.push(format!("created system user {DAEMON_USER}"));
        }
    }

    // Enable (and on upgrade, restart) the service.
    if opts.enable {
        match (layout.init, layout.is_live()) {
            (Init::Systemd, true) => {
                cmd.run(&["systemctl", "daemon-reload"])?;
                cmd.run(&["systemctl", "enable", "--now", UNIT_NAME])?;
                if upgrade {
                    cmd.run(&["systemctl", "try-restart", UNIT_NAME])?;
                }
            }
            (Init::Systemd, false) => {
                let root = format!("--root={}", layout.root.display());
                cmd.run(&["systemctl", &root, "enable", UNIT_NAME])?;
            }
            (Init::Launchd, _) => {
                let plist = layout.host(&service).display().to_string();
                if upgrade {
                    // Not loaded is fine: bootout fails, bootstrap follows.
                    let _ = cmd.run(&["launchctl", "bootout", &format!("system/{LAUNCHD_LABEL}")]);
                }
                cmd.run(&["launchctl", "bootstrap", "system", &plist])?;
            }
        }
        m.enabled = true;
        write_manifest(layout, &mut m)?;
        done.push(format!("enabled {}", service.display()));
    }
    if layout.init == Init::Systemd {
        done.push(format!(
            "add users who may run `netmux` to the {SOCKET_GROUP} group: usermod -aG {SOCKET_GROUP} USER"
        ));
    }
    Ok(done)
}

/// Uninstalls what the manifest lists. The caller runs `netmux cleanup`
/// first (the daemon's hosts block and redirects).
pub(crate) fn uninstall(
    layout: &Layout,
    opts: &UninstallOptions,
    cmd: &Commands,
) -> Result<Vec<String>> {
    if layout.is_live() && !nix::unistd::Uid::effective().is_root() {
        return Err(InstallError::NotRoot("netmux uninstall"));
    }
    let Some(m) = read_manifest(layout)? else {
        return Ok(vec![format!(
            "nothing to do: no {} (netmux was not installed with `netmux install`)",
            layout.manifest().display()
        )]);
    };
    let mut done = Vec::new();
    let init = m.init.unwrap_or(layout.init);
    if m.enabled {
        match (init, layout.is_live()) {
            (Init::Systemd, true) => cmd.run(&["systemctl", "disable", "--now", UNIT_NAME])?,
            (Init::Systemd, false) => {
                let root = format!("--root={}", layout.root.display());
                cmd.run(&["systemctl", &root, "disable", UNIT_NAME])?
            }
            (Init::Launchd, _) => {
                let _ = cmd.run(&["launchctl", "bootout", &format!("system/{LAUNCHD_LABEL}")]);
            }
        }
        done.push("stopped and disabled the service".to_owned());
    }
    for f in &m.files {
        let host = layout.host(f);
        match fs::remove_file(&host) {
            Ok(()) => done.push(format!("removed {}", f.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", f)(e)),
        }
    }
    if init == Init::Systemd && layout.is_live() && m.enabled {
        cmd.run(&["systemctl", "daemon-reload"])?;
    }
    let config = layout.config();
    let host_config = layout.host(&config);
    if host_config.exists() {
        let unchanged = fs::read_to_string(&host_config)
            .map(|t| t == DEFAULT_CONFIG_TOML)
            .unwrap_or(false);
        if (m.config_created && unchanged) || opts.purge {
            fs::remove_file(&host_config).map_err(io("removing", &config))?;
            done.push(format!("removed {}", config.display()));
        } else {
            done.push(format!(
                "kept {} (edited or not ours; `netmux uninstall --purge` removes it)",
                config.display()
            ));
        }
    }
    let prefix_args: Vec<String> = if layout.is_live() {
        vec![]
    } else {
        vec!["--prefix".into(), layout.root.display().to_string()]
    };
    let pa: Vec<&str> = prefix_args.iter().map(String::as_str).collect();
    if m.user_created {
        cmd.run(&[&["userdel"], &pa[..], &[DAEMON_USER]].concat())?;
        done.push(format!("removed system user {DAEMON_USER}"));
    }
    if m.group_created {
        cmd.run(&[&["groupdel"], &pa[..], &[SOCKET_GROUP]].concat())?;
        done.push(format!("removed group {SOCKET_GROUP}"));
    }
    let manifest = layout.host(&layout.manifest());
    fs::remove_file(&manifest).map_err(io("removing", &manifest))?;
    for d in m.dirs.iter().rev() {
        // Only directories we created, and only when nothing else is left.
        match fs::remove_dir(layout.host(d)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => done.push(format!("kept {} (not empty)", d.display())),
        }
    }
    Ok(done)
}

/// Reads the manifest, if there is one.
pub(crate) fn read_manifest(layout: &Layout) -> Result<Option<Manifest>> {
    let path = layout.host(&layout.manifest());
    match fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| InstallError::Manifest {
                path,
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading", &path)(e)),
    }
}

fn write_manifest(layout: &Layout, m: &mut Manifest) -> Result<()> {
    let path = layout.manifest();
    mkdirs(layout, m, path.parent().unwrap_or(Path::new("/")))?;
    let json = serde_json::to_vec_pretty(m).map_err(|e| InstallError::Manifest {
        path: path.clone(),
        message: e.to_string(),
    })?;
    write_atomic(&layout.host(&path), &json, 0o644)
}

/// Creates `dir` and its missing parents, recording each one created.
fn mkdirs(layout: &Layout, m: &mut Manifest, dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d {
        if layout.host(p).is_dir() {
            break;
        }
        missing.push(p.to_owned());
        d = p.parent();
    }
    for p in missing.into_iter().rev() {
        let host = layout.host(&p);
        fs::create_dir(&host).map_err(io("creating directory", &host))?;
        fs::set_permissions(&host, fs::Permissions::from_mode(0o755))
            .map_err(io("setting mode of", &host))?;
        if !m.dirs.contains(&p) {
            m.dirs.push(p);
        }
    }
    Ok(())
}

/// Writes `target` (recording it) and its directories.
fn put(layout: &Layout, m: &mut Manifest, target: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    mkdirs(layout, m, target.parent().unwrap_or(Path::new("/")))?;
    write_atomic(&layout.host(target), bytes, mode)?;
    if !m.files.iter().any(|f| f == target) {
        m.files.push(target.to_owned());
    }
    Ok(())
}

/// Temporary file + rename: a running `netmuxd` being upgraded keeps its
/// old inode (no ETXTBSY), and nobody sees half a file.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.netmux-install"));
    let r = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.map_err(io("writing", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_has_no_placeholders_and_the_default_config_parses() {
        let l = Layout::new("/", "/usr/local", Init::Systemd);
        let unit = l.unit(
            Path::new("/etc/hosts"),
            Path::new("/run/netmux/netmuxd.sock"),
        );
        assert!(!unit.contains('@'), "{unit}");
        assert!(unit.contains("ExecStart=/usr/local/bin/netmuxd --config /etc/netmux/config.toml"));
        assert!(unit.contains("AmbientCapabilities=CAP_BPF CAP_NET_ADMIN"));
        assert!(!l.plist().contains('@'));
        let c = netmux_daemon::config::Config::parse(
            Path::new("/etc/netmux/config.toml"),
            DEFAULT_CONFIG_TOML,
        )
        .expect("the shipped default config parses");
        assert_eq!(c.socket_group.as_deref(), Some(SOCKET_GROUP));
    }

    #[test]
    fn host_paths_stay_under_the_root() {
        let l = Layout::new("/tmp/r", "/usr/local", Init::Systemd);
        assert_eq!(l.host(Path::new("/etc/x")), PathBuf::from("/tmp/r/etc/x"));
        assert!(!l.is_live());
    }

    #[test]
    fn db_lookup() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("group");
        fs::write(&p, "root:x:0:\n#netmux:x:1:\nnetmuxer:x:2:\n").expect("write");
        assert!(db_has(&p, "root"));
        assert!(!db_has(&p, "netmux"));
        fs::write(&p, "netmux:x:999:alice\n").expect("write");
        assert!(db_has(&p, "netmux"));
        assert!(!db_has(&d.path().join("missing"), "netmux"));
    }
}
