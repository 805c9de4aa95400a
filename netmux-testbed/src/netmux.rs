//! netmux deployed in a [`Sandbox`]: `netmux-server` (static runtime) in
//! the cluster namespace, `netmuxd` in the workstation namespace, configs
//! generated under the sandbox dir, and the `netmux` CLI to drive it.
//!
//! Shared by the end-to-end tests and `cargo xtask demo`, so both exercise
//! the same configuration.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{bin, wait_for_file, Error, Output, Process, Result, Sandbox, Side};

/// Port `netmux-server` listens on (QUIC, UDP) on the cluster veth address.
pub const QUIC_PORT: u16 = 7443;
/// Port of the server's QUIC-over-TCP listener, when [`Layout::over_tcp`].
pub const STREAM_PORT: u16 = 7444;
/// Port of the server's health and metrics HTTP endpoint.
pub const HTTP_PORT: u16 = 7080;
/// The token the generated configs share.
pub const TOKEN: &str = "s3cret-token-of-at-least-16-chars";
/// Endpoint name in the daemon config.
pub const ENDPOINT: &str = "demo";
/// Default daemon setting for tests: the loopback redirect backend, so no
/// test attaches eBPF programs to the machine's root cgroup by accident.
pub const LOOPBACK: &str = "redirect = \"loopback\"\n";
/// How long processes get to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one CLI call may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(20);

/// One service of the static runtime's services file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Service name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Cluster address (put on the cluster side's `lo` by [`Netmux::start`]).
    pub address: IpAddr,
    /// Port clients dial.
    pub port: u16,
    /// Port the server dials on `address`.
    pub target_port: u16,
    /// `"L2C"` or `"C2L"`.
    pub direction: &'static str,
    /// `"tcp"`, `"udp"`, or `"tcp+udp"` (both, same port numbers: what
    /// `iperf3 -u` needs).
    pub protocol: &'static str,
}

impl ServiceSpec {
    /// An L2C TCP service in namespace `demo`.
    pub fn l2c(name: &str, address: IpAddr, port: u16, target_port: u16) -> Self {
        ServiceSpec {
            name: name.to_owned(),
            namespace: ENDPOINT.to_owned(),
            address,
            port,
            target_port,
            direction: "L2C",
            protocol: "tcp",
        }
    }

    /// `name.namespace.svc.cluster.local`.
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }

    /// Where the service's backend listens in the cluster namespace.
    pub fn target(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.target_port)
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_path(p: &Path) -> String {
    toml_str(&p.to_string_lossy())
}

/// The services file of the static runtime.
pub fn services_toml(services: &[ServiceSpec]) -> String {
    let mut s = String::new();
    for svc in services {
        let protocols: &[&str] = match svc.protocol {
            "tcp+udp" => &["tcp", "udp"],
            "udp" => &["udp"],
            _ => &["tcp"],
        };
        let ports: Vec<String> = protocols
            .iter()
            .map(|proto| {
                format!(
                    "{{ port = {}, target_port = {}, name = \"{}{}\", protocol = {} }}",
                    svc.port,
                    svc.target_port,
                    if *proto == "udp" { "u" } else { "p" },
                    svc.port,
                    toml_str(proto)
                )
            })
            .collect();
        let _ = write!(
            s,
            "[[service]]\nname = {}\nnamespace = {}\naddresses = [{}]\naliases = []\n\
             direction = {}\nports = [{}]\n\n",
            toml_str(&svc.name),
            toml_str(&svc.namespace),
            toml_str(&svc.address.to_string()),
            toml_str(svc.direction),
            ports.join(", "),
        );
    }
    s
}

fn write(path: &Path, content: &str) -> Result<()> {
    // Write then rename, so a reloading server never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).map_err(Error::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(Error::io(format!("renaming to {}", path.display())))
}

/// Paths and addresses of a deployment.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `netmux-server` config.
    pub server_config: PathBuf,
    /// Static runtime services file.
    pub services_file: PathBuf,
    /// Server state dir (CA).
    pub state_dir: PathBuf,
    /// `netmuxd` config.
    pub daemon_config: PathBuf,
    /// Daemon control socket.
    pub socket: PathBuf,
    /// Server QUIC address.
    pub quic: SocketAddr,
    /// Server health/metrics address.
    pub http: SocketAddr,
    /// Server QUIC-over-TCP address (`stream_listen`), used only when
    /// `over_tcp`.
    pub stream: SocketAddr,
    /// The daemon reaches the server over TCP (`transport = "tcp"`).
    pub over_tcp: bool,
    /// Extra `[runtime]` keys of `server.toml` (TOML lines), e.g.
    /// `allow_unsafe_targets` for a test that publishes such targets on
    /// purpose.
    pub runtime_extra: String,
    /// Tables appended to `server.toml` (TOML), e.g. `[limits]` for the
    /// bench's 10,000 idle connections.
    pub server_extra: String,
}

impl Layout {
    /// The layout for `sb`.
    pub fn new(sb: &Sandbox) -> Layout {
        let dir = sb.dir();
        let ip: IpAddr = sb.cluster_addr().into();
        Layout {
            server_config: dir.join("server.toml"),
            services_file: dir.join("services.toml"),
            state_dir: dir.join("server-state"),
            daemon_config: dir.join("daemon.toml"),
            socket: dir.join("netmuxd.sock"),
            quic: SocketAddr::new(ip, QUIC_PORT),
            http: SocketAddr::new(ip, HTTP_PORT),
            stream: SocketAddr::new(ip, STREAM_PORT),
            over_tcp: false,
            runtime_extra: String::new(),
            server_extra: String::new(),
        }
    }

    /// [`Self::new`] with the server also listening on TCP
    /// [`STREAM_PORT`] and the daemon's endpoint using it.
    pub fn over_tcp(sb: &Sandbox) -> Layout {
        Layout {
            over_tcp: true,
            ..Layout::new(sb)
        }
    }

    /// The CA certificate the server creates on first start.
    pub fn ca_file(&self) -> PathBuf {
        self.state_dir.join("ca.pem")
    }

    /// `server.toml` accepting [`TOKEN`], announcing the sandbox's
    /// cluster ranges (10.96.0.0/12, fd00:96::/64: where tests put
    /// services), which bound the daemon's eBPF redirect.
    pub fn server_toml(&self) -> String {
        let stream = if self.over_tcp {
            format!("stream_listen = {}\n", toml_str(&self.stream.to_string()))
        } else {
            String::new()
        };
        format!(
            "listen = {}\n{stream}http = {}\nstate_dir = {}\nserver_names = [\"netmux-server\"]\n\
             cluster_cidrs = [\"10.96.0.0/12\", \"fd00:96::/64\"]\nadhoc_namespace = \"default\"\n\n\
             [[token]]\nname = \"alice\"\ntoken = {}\n\n\
             [runtime]\nkind = \"static\"\nservices = {}\n{}\n{}",
            toml_str(&self.quic.to_string()),
            toml_str(&self.http.to_string()),
            toml_path(&self.state_dir),
            toml_str(TOKEN),
            toml_path(&self.services_file),
            self.runtime_extra,
            self.server_extra,
        )
    }

    /// `daemon.toml` with one endpoint [`ENDPOINT`] using `token`.
    ///
    /// `extra` holds top-level keys placed before the endpoint table (e.g.
    /// `redirect = "ebpf"`).
    pub fn daemon_toml(&self, hosts_file: &Path, token: &str, extra: &str) -> String {
        let (server, transport) = if self.over_tcp {
            (self.stream, "transport = \"tcp\"\n")
        } else {
            (self.quic, "")
        };
        format!(
            "{extra}socket = {}\nhosts_file = {}\naddress_range = \"127.77.0.0/16\"\n\
             metrics = \"127.0.0.1:9477\"\n\n\
             [[endpoint]]\nname = {}\nserver = {}\nserver_name = \"netmux-server\"\n\
             ca_file = {}\ntoken = {}\ncluster_domain = \"cluster.local\"\nautostart = false\n\
             {transport}",
            toml_path(&self.socket),
            toml_path(hosts_file),
            toml_str(ENDPOINT),
            toml_str(&server.to_string()),
            toml_path(&self.ca_file()),
            toml_str(token),
        )
    }
}

/// Starts `netmux-server --config layout.server_config` in the cluster
/// namespace and waits until its CA exists and its HTTP port accepts.
pub fn start_server(sb: &Sandbox, layout: &Layout) -> Result<Process> {
    start_server_with_env(sb, layout, &[])
}

/// [`start_server`] with more environment variables (`env`, after the
/// log filter: `DOCKER_HOST` and the like).
pub fn start_server_with_env(
    sb: &Sandbox,
    layout: &Layout,
    env: &[(&str, String)],
) -> Result<Process> {
    let mut builder = sb
        .process(Side::Cluster, "netmux-server", bin("netmux-server")?)
        .arg("--config")
        .arg(&layout.server_config)
        .env("RUST_LOG", log_filter());
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    let server = builder.spawn()?;
    let started = wait_for_file(&layout.ca_file(), START_TIMEOUT)
        .and_then(|()| sb.wait_for_tcp(Side::Cluster, layout.http, START_TIMEOUT));
    if let Err(e) = started {
        return Err(Error::Check(format!(
            "netmux-server did not start: {e}\n{}",
            server.log()
        )));
    }
    Ok(server)
}

/// A running netmux deployment in a sandbox. Processes are killed on drop.
#[derive(Debug)]
pub struct Netmux<'a> {
    sb: &'a Sandbox,
    /// Paths and addresses.
    pub layout: Layout,
    /// `netmux-server` in the cluster namespace.
    pub server: Process,
    /// `netmuxd` in the workstation namespace.
    pub daemon: Process,
}

impl<'a> Netmux<'a> {
    /// Adds the services' addresses to the cluster side, writes the configs,
    /// starts the server, waits for its CA and ports, starts the daemon and
    /// waits for its socket. Backends of the services are the caller's.
    pub fn start(sb: &'a Sandbox, services: &[ServiceSpec]) -> Result<Netmux<'a>> {
        Netmux::start_with_token(sb, services, TOKEN)
    }

    /// [`Self::start`] with the daemon presenting `token` (for refusal tests).
    pub fn start_with_token(
        sb: &'a Sandbox,
        services: &[ServiceSpec],
        token: &str,
    ) -> Result<Netmux<'a>> {
        Netmux::start_with(sb, services, token, LOOPBACK)
    }

    /// [`Self::start_with_token`] with extra top-level daemon settings
    /// (`daemon_extra`, TOML) instead of [`LOOPBACK`].
    pub fn start_with(
        sb: &'a Sandbox,
        services: &[ServiceSpec],
        token: &str,
        daemon_extra: &str,
    ) -> Result<Netmux<'a>> {
        Netmux::start_layout(sb, Layout::new(sb), services, token, daemon_extra)
    }

    /// [`Self::start_with`] with a given layout (e.g. [`Layout::over_tcp`]).
    pub fn start_layout(
        sb: &'a Sandbox,
        layout: Layout,
        services: &[ServiceSpec],
        token: &str,
        daemon_extra: &str,
    ) -> Result<Netmux<'a>> {
        let mut addrs: Vec<IpAddr> = services.iter().map(|s| s.address).collect();
        addrs.sort();
        addrs.dedup();
        for a in addrs {
            sb.add_service_address(a)?;
        }
        write(&layout.services_file, &services_toml(services))?;
        write(&layout.server_config, &layout.server_toml())?;
        write(
            &layout.daemon_config,
            &layout.daemon_toml(&sb.ws_hosts_file(), token, daemon_extra),
        )?;
        let server = start_server(sb, &layout)?;
        let daemon = sb
            .process(Side::Workstation, "netmuxd", bin("netmuxd")?)
            .arg("--config")
            .arg(&layout.daemon_config)
            .env("RUST_LOG", log_filter())
            .spawn()?;
        if let Err(e) =
            crate::wait_until("netmuxd's socket", START_TIMEOUT, || layout.socket.exists())
        {
            return Err(Error::Check(format!(
                "netmuxd did not start: {e}\n{}",
                daemon.log()
            )));
        }
        Ok(Netmux {
            sb,
            layout,
            server,
            daemon,
        })
    }

    /// Runs `netmux --socket S ARGS` in the workstation namespace; returns
    /// its output whatever the exit status (see [`Output::ok`]).
    pub fn cli<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.sb
            .process(Side::Workstation, "netmux-cli", bin("netmux")?)
            .arg("--socket")
            .arg(&self.layout.socket)
            .args(args)
            .run(CLI_TIMEOUT)
    }

    /// Replaces the services file (the server reloads it).
    pub fn set_services(&self, services: &[ServiceSpec]) -> Result<()> {
        for s in services {
            // Already present is fine.
            let _ = self.sb.add_service_address(s.address);
        }
        write(&self.layout.services_file, &services_toml(services))
    }

    /// Polls `netmux ls --output json` until `pred` holds on its stdout.
    pub fn wait_for_ls(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let mut last = String::new();
        let r = crate::wait_until(what, timeout, || {
            match self.cli(["ls", "--output", "json"]) {
                Ok(out) => {
                    let ok = out.success() && pred(&out.stdout);
                    last = format!("{}{}", out.stdout, out.stderr);
                    ok
                }
                Err(e) => {
                    last = e.to_string();
                    false
                }
            }
        });
        r.map_err(|e| Error::Check(format!("{e}; last `netmux ls`: {last}")))
    }
}

impl Netmux<'_> {
    /// The rows of `netmux ls --output json` (objects with `kind`, `name`,
    /// `parent`, `description`, `status`).
    pub fn ls(&self) -> Result<Vec<serde_json::Value>> {
        let out = self.cli(["ls", "--output", "json"])?.ok()?;
        let v: serde_json::Value = serde_json::from_str(&out.stdout)
            .map_err(|e| Error::Check(format!("`netmux ls --output json`: {e}: {}", out.stdout)))?;
        let rows = match v {
            serde_json::Value::Array(rows) => rows,
            serde_json::Value::Object(mut o) => match o.remove("rows") {
                Some(serde_json::Value::Array(rows)) => rows,
                _ => return Err(Error::Check(format!("unexpected ls JSON: {}", out.stdout))),
            },
            _ => return Err(Error::Check(format!("unexpected ls JSON: {}", out.stdout))),
        };
        Ok(rows)
    }

    /// Status column of the row of kind `kind` (`EP`/`SVC`) named `name`.
    pub fn status_of(&self, kind: &str, name: &str) -> Result<Option<String>> {
        Ok(self.ls()?.iter().find_map(|r| {
            (r["kind"] == kind && r["name"] == name)
                .then(|| r["status"].as_str().unwrap_or_default().to_owned())
        }))
    }

    /// Waits until row `kind`/`name` has status `status`.
    pub fn wait_for_status(
        &self,
        kind: &str,
        name: &str,
        status: &str,
        timeout: Duration,
    ) -> Result<()> {
        let mut last = None;
        let r = crate::wait_until(&format!("{kind} {name} to be {status}"), timeout, || {
            last = self.status_of(kind, name).ok().flatten();
            last.as_deref() == Some(status)
        });
        r.map_err(|e| Error::Check(format!("{e}; last status {last:?}")))
    }

    /// The address the workstation's hosts file gives `name`.
    pub fn resolve(&self, name: &str) -> Option<IpAddr> {
        let hosts = std::fs::read_to_string(self.sb.ws_hosts_file()).ok()?;
        hosts.lines().find_map(|line| {
            let line = line.split('#').next().unwrap_or_default();
            let mut words = line.split_whitespace();
            let ip: IpAddr = words.next()?.parse().ok()?;
            words.any(|w| w == name).then_some(ip)
        })
    }
}

/// `RUST_LOG` for the netmux processes: `$NETMUX_TEST_LOG` or `info`.
fn log_filter() -> String {
    std::env::var("NETMUX_TEST_LOG").unwrap_or_else(|_| "info".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }

    #[test]
    fn services_file_lists_every_service() {
        let s = services_toml(&[
            ServiceSpec::l2c("http-echo", "10.96.0.10".parse().unwrap(), 80, 8080),
            ServiceSpec::l2c("tcp-echo", "10.96.0.11".parse().unwrap(), 9000, 9000),
        ]);
        assert_eq!(s.matches("[[service]]").count(), 2);
        assert!(s.contains("addresses = [\"10.96.0.10\"]"));
        assert!(s.contains("ports = [{ port = 80, target_port = 8080"));
    }
}
