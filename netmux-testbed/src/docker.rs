//! A private Docker daemon inside a sandbox's network namespace.
//!
//! [`Dockerd::start`] runs Debian's `dockerd` (package `docker.io`) with its
//! own data root, exec root, pid file, config file and unix socket under a
//! temp dir, entered into a namespace with `nsenter --net=/run/netns/NAME`
//! (not `ip netns exec`, which remounts /sys and hides the cgroup mounts
//! dockerd needs). `--iptables=false` leaves the machine's firewall alone;
//! the bridges dockerd creates and every container address live inside that
//! namespace, so nothing a test sends leaves the namespaces it created.
//! No registry is reachable: images are built here from host files with
//! [`ImageSpec`] (`docker import` of a tarball) or loaded from a tarball
//! with [`Dockerd::load_image`].
//!
//! On drop, even while unwinding from a failed assertion: every container
//! is removed, every user-defined network deleted, dockerd and the
//! containerd it started stopped, leftover processes of its containers
//! killed (through their cgroup parent), its mounts detached, its cgroups
//! and its directory removed.
//!
//! ```no_run
//! use netmux_testbed::docker::{Dockerd, ImageSpec, RunSpec};
//! use netmux_testbed::{bin, Sandbox};
//!
//! let sb = Sandbox::new().unwrap();
//! let docker = Dockerd::start(sb.cluster(), sb.dir()).unwrap();
//! let image = ImageSpec::new("nx-echo:test")
//!     .binary(bin("nx-echo").unwrap(), "/nx-echo")
//!     .busybox();
//! docker.build_image(&image).unwrap();
//! let net = docker.create_network("apps", "172.31.5.0/24").unwrap();
//! let web = docker
//!     .run(&RunSpec::new("nx-echo:test").name("web").network(&net.name)
//!         .args(["/nx-echo", "http", "--listen", "0.0.0.0:8080"]))
//!     .unwrap();
//! let ip = docker.address(&web, &net.name).unwrap();
//! ```

mod image;
mod run;

pub use image::ImageSpec;
pub use run::RunSpec;

use std::ffi::OsStr;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::process::{Process, ProcessBuilder};
use crate::{prereq, Error, Output, Result};

/// How long dockerd may take to answer on its socket after start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one `docker` CLI call may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How long dockerd gets to stop its containers and exit on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(20);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Why docker tests cannot run here, or `None`: root, `dockerd` and the
/// `docker` CLI, `nsenter` and `tar`; see [`podman_missing`] for Podman.
pub fn missing() -> Option<String> {
    prereq::first([
        prereq::root(),
        prereq::tools(&["dockerd", "docker", "nsenter", "tar", "ldd"]),
    ])
}

/// Why Podman tests cannot run here, or `None`: as [`missing`], and
/// `podman` (Debian's `podman`).
pub fn podman_missing() -> Option<String> {
    prereq::first([missing(), prereq::tools(&["podman"])])
}

/// A private dockerd (or Podman API service, [`Dockerd::start_podman`]);
/// see the [module docs](self).
#[derive(Debug)]
pub struct Dockerd {
    process: Option<Process>,
    builder: ProcessBuilder,
    dir: PathBuf,
    socket: PathBuf,
    cgroup_parent: String,
    netns: String,
}

/// A user-defined bridge network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// Its name.
    pub name: String,
    /// The subnet given at creation.
    pub subnet: String,
    /// The bridge's address in the daemon's namespace: how containers reach
    /// processes running beside dockerd.
    pub gateway: IpAddr,
}

/// A container started by [`Dockerd::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Full id.
    pub id: String,
    /// Name (without the leading `/`).
    pub name: String,
}

impl Dockerd {
    /// Starts dockerd inside `netns`, its files under a new directory in
    /// `parent`; returns once it answers on its socket.
    pub fn start(netns: &Netns, parent: &Path) -> Result<Dockerd> {
        Dockerd::start_with(netns, parent, &[])
    }

    /// [`Dockerd::start`] with more dockerd flags, such as a TCP listener
    /// with TLS (`--host=tcp://ADDR:2376 --tlsverify --tlscacert=…`); the
    /// fixture itself keeps using the unix socket.
    pub fn start_with(netns: &Netns, parent: &Path, extra: &[String]) -> Result<Dockerd> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Short: the socket path must fit in sun_path (108 bytes).
        let dir = parent.join(format!("dockerd{n}"));
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let socket = dir.join("docker.sock");
        let config = dir.join("daemon.json");
        std::fs::write(&config, "{}\n")
            .map_err(Error::io(format!("writing {}", config.display())))?;
        let cgroup_parent = format!("nx-docker-{pid}-{n}");
        let nsenter = prereq::which("nsenter").unwrap_or_else(|| PathBuf::from("nsenter"));
        let dockerd = prereq::which("dockerd").unwrap_or_else(|| PathBuf::from("dockerd"));
        let builder =
            ProcessBuilder::new(&format!("dockerd{n}"), None, nsenter.as_os_str(), parent)
                .arg(format!("--net=/run/netns/{}", netns.name()))
                .arg(dockerd)
                .args([
                    "--iptables=false",
                    "--ip-masq=false",
                    "--userland-proxy=false",
                ])
                .args(["--storage-driver=vfs", "--log-level=info"])
                .arg(format!("--config-file={}", config.display()))
                .arg(format!("--data-root={}", dir.join("data").display()))
                .arg(format!("--exec-root={}", dir.join("exec").display()))
                .arg(format!("--pidfile={}", dir.join("docker.pid").display()))
                .arg(format!("--cgroup-parent=/{cgroup_parent}"))
                .arg(format!("--host=unix://{}", socket.display()))
                .args(extra);
        Dockerd::launched(netns, builder, dir, socket, cgroup_parent)
    }

    /// Starts Podman's Docker-compatible API service (`podman system
    /// service`) inside `netns` instead of dockerd, with private storage
    /// (vfs), run root, network config and events file under a new
    /// directory in `parent`; the rest of the API is the same. Rootful
    /// Podman cannot raise the sandbox's rlimits, so its containers get
    /// `nofile` and `nproc` of 1024 by default.
    pub fn start_podman(netns: &Netns, parent: &Path) -> Result<Dockerd> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let dir = parent.join(format!("podman{n}"));
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let socket = dir.join("docker.sock");
        let conf = dir.join("containers.conf");
        let cgroup_parent = format!("nx-podman-{pid}-{n}");
        std::fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{}\"\n",
                dir.join("events.log").display()
            ),
        )
        .map_err(Error::io(format!("writing {}", conf.display())))?;
        let nsenter = prereq::which("nsenter").unwrap_or_else(|| PathBuf::from("nsenter"));
        let podman = prereq::which("podman").unwrap_or_else(|| PathBuf::from("podman"));
        let builder = ProcessBuilder::new(&format!("podman{n}"), None, nsenter.as_os_str(), parent)
            .arg(format!("--net=/run/netns/{}", netns.name()))
            .arg(podman)
            .arg(format!("--root={}", dir.join("root").display()))
            .arg(format!("--runroot={}", dir.join("run").display()))
            .arg(format!("--tmpdir={}", dir.join("tmp").display()))
            .arg(format!(
                "--network-config-dir={}",
                dir.join("net").display()
            ))
            .args(["--storage-driver=vfs", "--cgroup-manager=cgroupfs"])
            .args(["--events-backend=file", "system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .env("CONTAINERS_CONF", &conf);
        Dockerd::launched(netns, builder, dir, socket, cgroup_parent)
    }

    /// Runs `builder` (the engine serving `socket`, its files in `dir`,
    /// its containers under `cgroup_parent`) until it answers; from the
    /// start on, dropping the fixture cleans up.
    fn launched(
        netns: &Netns,
        builder: ProcessBuilder,
        dir: PathBuf,
        socket: PathBuf,
        cgroup_parent: String,
    ) -> Result<Dockerd> {
        let mut d = Dockerd {
            process: None,
            builder,
            dir,
            socket,
            cgroup_parent,
            netns: netns.name().to_owned(),
        };
        d.launch()?;
        Ok(d)
    }

    fn launch(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(&self.socket);
        self.process = Some(self.builder.clone().spawn()?);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.socket.exists()
                && self
                    .cli(["version"], Duration::from_secs(10))
                    .is_ok_and(|o| o.success())
            {
                return Ok(());
            }
            let exited = self.process.as_mut().and_then(Process::try_status);
            if exited.is_some() || Instant::now() >= deadline {
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(Error::Check(format!(
                    "dockerd in {} did not answer on {} ({}); its log ends:\n{}",
                    self.netns,
                    self.socket.display(),
                    match exited {
                        Some(s) => format!("exited: {s}"),
                        None => format!("still silent after {START_TIMEOUT:?}"),
                    },
                    tail.join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `DOCKER_HOST` for this daemon: `unix:///…/docker.sock`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The directory holding the daemon's data, exec root and socket.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The name of the namespace dockerd runs in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Everything dockerd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.builder.log_path()).unwrap_or_default()
    }

    fn cli<I, S>(&self, args: I, timeout: Duration) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let docker = prereq::which("docker").unwrap_or_else(|| PathBuf::from("docker"));
        ProcessBuilder::new("docker", None, docker.as_os_str(), &self.dir)
            .arg("--host")
            .arg(self.host())
            .args(args)
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .run(timeout)
    }

    /// Runs `docker ARGS` against this daemon; fails unless it exits with 0.
    pub fn docker<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cli(args, CLI_TIMEOUT)?.ok()
    }

    /// Builds `spec` into an image (a tarball of its files, `docker
    /// import`ed with its `CMD`).
    pub fn build_image(&self, spec: &ImageSpec) -> Result<()> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let root = self.dir.join(format!("image{n}"));
        let result = (|| {
            spec.populate(&root)?;
            let tar = self.dir.join(format!("image{n}.tar"));
            ProcessBuilder::new("tar", None, OsStr::new("tar"), &self.dir)
                .arg("-C")
                .arg(&root)
                .args(["-cf"])
                .arg(&tar)
                .arg(".")
                .run(CLI_TIMEOUT)?
                .ok()?;
            let mut args: Vec<String> = vec!["import".into()];
            if !spec.default_cmd().is_empty() {
                let json = serde_json::to_string(spec.default_cmd())
                    .map_err(|e| Error::Check(e.to_string()))?;
                args.push("--change".into());
                args.push(format!("CMD {json}"));
            }
            args.push(tar.display().to_string());
            args.push(spec.tag().to_owned());
            let out = self.docker(&args);
            let _ = std::fs::remove_file(&tar);
            out.map(|_| ())
        })();
        let _ = std::fs::remove_dir_all(&root);
        result
    }

    /// `docker load` of an image tarball (as `docker save` writes it);
    /// returns what docker printed (`Loaded image: NAME:TAG`).
    pub fn load_image(&self, tarball: &Path) -> Result<String> {
        let out = self.docker([
            OsStr::new("load"),
            OsStr::new("--input"),
            tarball.as_os_str(),
        ])?;
        Ok(out.stdout.trim().to_owned())
    }

    /// Creates a bridge network `name` on `subnet` (a CIDR such as
    /// `172.31.5.0/24`, inside the daemon's private namespace).
    pub fn create_network(&self, name: &str, subnet: &str) -> Result<Network> {
        let gateway = first_host(subnet).ok_or_else(|| {
            Error::Check(format!(
                "network {name}: {subnet:?} is not an IPv4 CIDR such as 172.31.5.0/24"
            ))
        })?;
        self.docker([
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            subnet,
            "--gateway",
            &gateway.to_string(),
            name,
        ])?;
        Ok(Network {
            name: name.to_owned(),
            subnet: subnet.to_owned(),
            gateway: IpAddr::V4(gateway),
        })
    }

    /// `docker run --detach` of `spec`.
    pub fn run(&self, spec: &RunSpec) -> Result<Container> {
        let out = self.docker(spec.args_vec())?;
        let id = out.stdout.trim().to_owned();
        let name = self
            .docker(["inspect", "--format", "{{.Name}}", &id])?
            .stdout
            .trim()
            .trim_start_matches('/')
            .to_owned();
        Ok(Container { id, name })
    }

    /// The container's address on `network`.
    pub fn address(&self, c: &Container, network: &str) -> Result<IpAddr> {
        let format = format!("{{{{with index .NetworkSettings.Networks \"{network}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}");
        let out = self.docker(["inspect", "--format", &format, &c.id])?.stdout;
        out.trim().parse().map_err(|_| {
            Error::Check(format!(
                "container {} has no address on network {network} ({:?})",
                c.name,
                out.trim()
            ))
        })
    }

    /// `docker inspect --format FORMAT` of a container, network or image.
    pub fn inspect(&self, what: &str, format: &str) -> Result<String> {
        Ok(self
            .docker(["inspect", "--format", format, what])?
            .stdout
            .trim()
            .to_owned())
    }

    /// Stops a container (SIGTERM, then SIGKILL after `grace_secs`).
    pub fn stop(&self, c: &Container, grace_secs: u32) -> Result<()> {
        self.docker(["stop", "--time", &grace_secs.to_string(), &c.id])
            .map(|_| ())
    }

    /// Starts a stopped container again.
    pub fn start_container(&self, c: &Container) -> Result<()> {
        self.docker(["start", &c.id]).map(|_| ())
    }

    /// Removes a container, running or not.
    pub fn remove(&self, c: &Container) -> Result<()> {
        self.docker(["rm", "--force", &c.id]).map(|_| ())
    }

    /// Runs `argv` inside a running container and captures its output
    /// (whatever its exit status: see [`Output::ok`]).
    pub fn exec<I, S>(&self, c: &Container, argv: I, timeout: Duration) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut args: Vec<std::ffi::OsString> = vec!["exec".into(), c.id.clone().into()];
        args.extend(argv.into_iter().map(|a| a.as_ref().to_owned()));
        self.cli(args, timeout)
    }

    /// Stops dockerd (SIGTERM; containers stop with it unless they have a
    /// restart policy) and starts it again with the same flags.
    pub fn restart(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.terminate(STOP_GRACE);
        }
        self.kill_leftovers();
        self.launch()
    }

    /// Kills every process left by this daemon: its containerd and shims
    /// (their command lines name our directory) and its containers' (in
    /// our cgroup parent).
    fn kill_leftovers(&self) {
        let dir = self.dir.display().to_string();
        let parent = format!("/{}/", self.cgroup_parent);
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in procs.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cgroup = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
            let ours = String::from_utf8_lossy(&cmdline).contains(&dir) || cgroup.contains(&parent);
            if ours && pid != std::process::id() as i32 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    fn unmount_all(&self) {
        let dir = self.dir.display().to_string();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(unescape_mount_path)
            .filter(|p| p == &dir || p.starts_with(&format!("{dir}/")))
            .collect();
        // Deepest first.
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(Path::new(&p), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    /// Removes our cgroup parent's (now empty) cgroups; for Podman also its
    /// shared `libpod_parent`, which an rmdir leaves alone while another
    /// Podman still has processes in it.
    fn remove_cgroups(&self) {
        let root = Path::new("/sys/fs/cgroup");
        let mut parents = vec![self.cgroup_parent.as_str()];
        if self.cgroup_parent.starts_with("nx-podman") {
            parents.push("libpod_parent");
        }
        let mut tops = Vec::new();
        for parent in parents {
            tops.push(root.join(parent));
            if let Ok(controllers) = std::fs::read_dir(root) {
                tops.extend(controllers.flatten().map(|c| c.path().join(parent)));
            }
        }
        for top in tops.into_iter().filter(|t| t.is_dir()) {
            if let Ok(children) = std::fs::read_dir(&top) {
                for c in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
            let _ = std::fs::remove_dir(&top);
        }
    }
}

/// The first host address of an IPv4 CIDR (the bridge's own address).
fn first_host(cidr: &str) -> Option<std::net::Ipv4Addr> {
    let (addr, len) = cidr.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 30)?;
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    Some(std::net::Ipv4Addr::from((u32::from(addr) & mask) + 1))
}

/// `/proc/self/mountinfo` escapes space, tab, newline and backslash as
/// octal.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "----- dockerd in {} (last 40 lines) -----\n{}",
                self.netns,
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        if self.process.as_mut().is_some_and(Process::is_running) {
            let quick = Duration::from_secs(20);
            if let Ok(ids) = self.cli(["ps", "--all", "--quiet", "--no-trunc"], quick) {
                let ids: Vec<&str> = ids.stdout.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "--force", "--volumes"];
                    args.extend(ids);
                    let _ = self.cli(args, quick);
                }
            }
            if let Ok(nets) = self.cli(
                ["network", "ls", "--quiet", "--filter", "type=custom"],
                quick,
            ) {
                let ids: Vec<&str> = nets.stdout.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["network", "rm"];
                    args.extend(ids);
                    let _ = self.cli(args, quick);
                }
            }
        }
        if let Some(mut p) = self.process.take() {
            p.terminate(STOP_GRACE);
        }
        self.kill_leftovers();
        self.unmount_all();
        self.remove_cgroups();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if self.dir.exists() {
                eprintln!("netmux-testbed: removing {}: {e}", self.dir.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_is_the_first_host() {
        assert_eq!(first_host("172.31.5.0/24"), Some([172, 31, 5, 1].into()));
        assert_eq!(first_host("10.9.0.77/16"), Some([10, 9, 0, 1].into()));
        assert_eq!(first_host("fd00::/64"), None);
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_path("/tmp/plain"), "/tmp/plain");
    }
}
