//! The two-namespace sandbox: a workstation and a cluster joined by a veth.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::netns::Netns;
use crate::process::ProcessBuilder;
use crate::{Error, Result, DEFAULT_PREFIX};

/// Name of the veth end inside the workstation namespace.
pub const WS_IF: &str = "nx-ws0";
/// Name of the veth end inside the cluster namespace.
pub const CLUSTER_IF: &str = "nx-cl0";

/// Which namespace of a [`Sandbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Where `netmuxd`, the CLI and client apps run.
    Workstation,
    /// Where `netmux-server` and the sample services run.
    Cluster,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A workstation and a cluster namespace joined by a veth pair, with no
/// route out. See the [crate docs](crate).
#[derive(Debug)]
pub struct Sandbox {
    // Field order is drop order: namespaces (and their processes) go first,
    // then the directory holding their logs.
    ws: Netns,
    cluster: Netns,
    subnet: u8,
    ws_addr: Mutex<Ipv4Addr>,
    dir: PathBuf,
    keep_dir: bool,
}

impl Sandbox {
    /// Creates a sandbox named after [`DEFAULT_PREFIX`].
    pub fn new() -> Result<Sandbox> {
        Sandbox::with_prefix(DEFAULT_PREFIX)
    }

    /// Creates a sandbox whose namespaces are `<prefix>-ws-<pid>-<n>` and
    /// `<prefix>-cl-<pid>-<n>`. Leftovers of dead runs with the same prefix
    /// are removed first (see [`crate::cleanup_stale`]).
    pub fn with_prefix(prefix: &str) -> Result<Sandbox> {
        let _ = crate::cleanup_stale(prefix);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // The subnet only has to differ between sandboxes of this process
        // for readable logs: each pair of namespaces is its own network.
        let subnet = u8::try_from(n % 250 + 1).unwrap_or(1);
        let dir = std::env::temp_dir().join(format!("{prefix}-sb-{pid}-{n}"));
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let keep_dir = std::env::var_os("NETMUX_KEEP_SANDBOX").is_some();
        let ws = Netns::create(&format!("{prefix}-ws-{pid}-{n}"), &dir);
        let cluster = Netns::create(&format!("{prefix}-cl-{pid}-{n}"), &dir);
        let (ws, cluster) = match (ws, cluster) {
            (Ok(w), Ok(c)) => (w, c),
            (Err(e), _) | (_, Err(e)) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let ws_addr = Ipv4Addr::new(10, 250, subnet, 1);
        let sb = Sandbox {
            ws,
            cluster,
            subnet,
            ws_addr: Mutex::new(ws_addr),
            dir,
            keep_dir,
        };
        sb.wire()?;
        Ok(sb)
    }

    fn wire(&self) -> Result<()> {
        crate::netns::ip([
            "link",
            "add",
            WS_IF,
            "netns",
            self.ws.name(),
            "mtu",
            "1500",
            "type",
            "veth",
            "peer",
            "name",
            CLUSTER_IF,
            "netns",
            self.cluster.name(),
            "mtu",
            "1500",
        ])?;
        let ws_cidr = format!("{}/24", self.ws_addr());
        let cl_cidr = format!("{}/24", self.cluster_addr());
        self.ws.ip(["addr", "add", &ws_cidr, "dev", WS_IF])?;
        self.cluster
            .ip(["addr", "add", &cl_cidr, "dev", CLUSTER_IF])?;
        self.ws.ip(["link", "set", WS_IF, "up"])?;
        self.cluster.ip(["link", "set", CLUSTER_IF, "up"])?;
        Ok(())
    }

    /// The namespace of `side`.
    pub fn netns(&self, side: Side) -> &Netns {
        match side {
            Side::Workstation => &self.ws,
            Side::Cluster => &self.cluster,
        }
    }

    /// The workstation namespace.
    pub fn ws(&self) -> &Netns {
        &self.ws
    }

    /// The cluster namespace.
    pub fn cluster(&self) -> &Netns {
        &self.cluster
    }

    /// The `X` of this sandbox's `10.250.X.0/24`.
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    /// The workstation's current veth address (changes with
    /// [`Self::set_ws_address`]).
    pub fn ws_addr(&self) -> Ipv4Addr {
        *crate::lock(&self.ws_addr)
    }

    /// The cluster's veth address, `10.250.X.2`, where `netmux-server`
    /// listens.
    pub fn cluster_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.subnet, 2)
    }

    /// Another host address in the veth subnet, for [`Self::set_ws_address`]
    /// (`host` 1 and 2 are taken).
    pub fn subnet_addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.subnet, host)
    }

    /// The sandbox's temp dir (configs, state, logs); removed on drop unless
    /// `NETMUX_KEEP_SANDBOX` is set.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The hosts file processes in the workstation namespace see as
    /// `/etc/hosts`: give it to `netmuxd` as `hosts_file`.
    pub fn ws_hosts_file(&self) -> PathBuf {
        self.ws.hosts_file()
    }

    /// Adds a cluster service address (a /32 or /128 on the cluster side's
    /// `lo`); adding one already there is a no-op. The workstation has no
    /// route to it.
    pub fn add_service_address(&self, addr: IpAddr) -> Result<()> {
        let cidr = match addr {
            IpAddr::V4(a) => format!("{a}/32"),
            IpAddr::V6(a) => format!("{a}/128"),
        };
        let present = self
            .cluster
            .ip(["-o", "addr", "show", "dev", "lo", "to", &cidr])?;
        if present.trim().is_empty() {
            self.cluster.ip(["addr", "add", &cidr, "dev", "lo"])?;
        }
        Ok(())
    }

    /// Moves the workstation's veth address to `new` (same /24): the old
    /// address is deleted, then the new one added, as when a laptop changes
    /// networks. Connections bound to the old address break; QUIC migrates.
    pub fn set_ws_address(&self, new: Ipv4Addr) -> Result<()> {
        let mut cur = crate::lock(&self.ws_addr);
        if new.octets()[..3] != [10, 250, self.subnet] || new == self.cluster_addr() {
            return Err(Error::Check(format!(
                "{new} is not a free host of 10.250.{}.0/24",
                self.subnet
            )));
        }
        self.ws
            .ip(["addr", "del", &format!("{}/24", *cur), "dev", WS_IF])?;
        self.ws
            .ip(["addr", "add", &format!("{new}/24"), "dev", WS_IF])?;
        *cur = new;
        Ok(())
    }

    /// Takes the veth link down (`false`) or up (`true`) on the workstation
    /// side: a network outage that leaves every process running.
    pub fn set_link(&self, up: bool) -> Result<()> {
        self.ws
            .ip(["link", "set", WS_IF, if up { "up" } else { "down" }])?;
        Ok(())
    }

    /// A process to run in `side`'s namespace; `label` names its log file
    /// (`<dir>/<label>.log`), printed if the test panics.
    pub fn process(&self, side: Side, label: &str, program: impl AsRef<OsStr>) -> ProcessBuilder {
        self.netns(side).process(label, program)
    }

    /// Runs `program ARGS` in `side`'s namespace to completion (killed after
    /// `timeout`), capturing its output; fails unless it exits with 0.
    pub fn exec<I, S>(
        &self,
        side: Side,
        program: impl AsRef<OsStr>,
        args: I,
        timeout: Duration,
    ) -> Result<crate::Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let label = Path::new(program.as_ref())
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.process(side, &label, program)
            .args(args)
            .run(timeout)?
            .ok()
    }

    /// Waits until a TCP connect to `addr` from `side` succeeds.
    pub fn wait_for_tcp(&self, side: Side, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let ns = self.netns(side);
        ns.run(|| {
            crate::wait_until(
                &format!("{addr} to accept in {}", ns.name()),
                timeout,
                || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
            )
        })?
    }

    /// Starts `nx-echo MODE --listen ADDR` (`http`, `tcp`...) on `side` and
    /// waits up to `timeout` until it accepts; the error carries its log.
    pub fn nx_echo(
        &self,
        side: Side,
        label: &str,
        mode: &str,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<crate::Process> {
        let p = self
            .process(side, label, crate::bin("nx-echo")?)
            .args([mode, "--listen", &addr.to_string()])
            .spawn()?;
        match self.wait_for_tcp(side, addr, timeout) {
            Ok(()) => Ok(p),
            Err(e) => Err(Error::Check(format!(
                "nx-echo {mode} on {addr}: {e}\n{}",
                p.log()
            ))),
        }
    }

    /// Every `*.log` in the sandbox dir with its content (last `max_lines`
    /// lines each).
    pub fn logs(&self, max_lines: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        paths.sort();
        for p in paths {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(max_lines)..].join("\n");
            let name = p
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((name, tail));
        }
        out
    }

    /// A handle that tears this sandbox down from another thread, for a
    /// Ctrl-C handler that then exits the process (Drop never runs then).
    pub fn teardown_handle(&self) -> Teardown {
        Teardown {
            namespaces: vec![self.ws.name().to_owned(), self.cluster.name().to_owned()],
            dir: if self.keep_dir {
                None
            } else {
                Some(self.dir.clone())
            },
        }
    }

    /// Prints [`Self::logs`] to stderr.
    pub fn dump_logs(&self, max_lines: usize) {
        for (name, tail) in self.logs(max_lines) {
            eprintln!("----- {name} (last {max_lines} lines) -----\n{tail}");
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "netmux-testbed: test failed; logs of sandbox {} / {}:",
                self.ws.name(),
                self.cluster.name()
            );
            self.dump_logs(80);
        }
        // The namespaces (and the processes in them) are dropped right after
        // this body; their open log files survive the unlink.
        if self.keep_dir {
            eprintln!("netmux-testbed: keeping {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes a sandbox's namespaces (killing what runs inside) and temp dir;
/// see [`Sandbox::teardown_handle`]. Idempotent.
#[derive(Debug, Clone)]
pub struct Teardown {
    namespaces: Vec<String>,
    dir: Option<PathBuf>,
}

impl Teardown {
    /// Tears down now; errors are printed, not returned.
    pub fn run(&self) {
        for ns in &self.namespaces {
            if Path::new("/run/netns").join(ns).exists() {
                if let Err(e) = crate::netns::destroy(ns) {
                    eprintln!("netmux-testbed: removing namespace {ns}: {e}");
                }
            }
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
