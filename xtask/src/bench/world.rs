//! The sandbox's contents: backends in the cluster namespace and one
//! instance of every peer, started once and used by every scenario.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use netmux_testbed::netmux::{Layout, Netmux, ServiceSpec, ENDPOINT, LOOPBACK, TOKEN};
use netmux_testbed::{bin, Process, Sandbox, Side};

use super::link::Link;
use super::tools::Tools;
use super::{Peer, Settings};

const START: Duration = Duration::from_secs(20);

/// What the cluster serves, one backend each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Iperf,
    Http,
    Echo,
    Redis,
    Postgres,
}

impl Target {
    pub const ALL: [Target; 5] = [
        Target::Iperf,
        Target::Http,
        Target::Echo,
        Target::Redis,
        Target::Postgres,
    ];

    /// Port the backend listens on (all addresses of the cluster side).
    pub fn port(self) -> u16 {
        match self {
            Target::Iperf => 5201,
            Target::Http => 8080,
            Target::Echo => 9000,
            Target::Redis => 6379,
            Target::Postgres => 5432,
        }
    }

    fn index(self) -> u16 {
        match self {
            Target::Iperf => 0,
            Target::Http => 1,
            Target::Echo => 2,
            Target::Redis => 3,
            Target::Postgres => 4,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Target::Iperf => "iperf",
            Target::Http => "http",
            Target::Echo => "echo",
            Target::Redis => "redis",
            Target::Postgres => "postgres",
        }
    }
}

/// UDP port of the raw quinn receiver.
pub const QUINN_PORT: u16 = 7600;
/// UDP echo backend (`nx-echo udp`, scenario 11): carried by netmux as a
/// UDP service; the TCP-only peers have no UDP to offer.
pub const UDP_ECHO_PORT: u16 = 9001;
/// The UDP echo service's cluster address in netmux's catalog.
const UDP_ECHO_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 26);
/// sshd's port in the cluster namespace.
const SSH_PORT: u16 = 2222;
/// rathole server's control port in the workstation namespace.
const RATHOLE_PORT: u16 = 2333;

/// Backends and peers running in a sandbox.
pub struct World<'a> {
    pub sb: &'a Sandbox,
    pub tools: &'a Tools,
    pub netmux: Option<Netmux<'a>>,
    netmux_local: BTreeMap<Target, SocketAddr>,
    /// netmux's local address of the UDP echo service.
    netmux_udp_echo: Option<SocketAddr>,
    procs: Vec<Process>,
    /// Peer -> why it is unavailable.
    pub unavailable: BTreeMap<Peer, String>,
    /// Target -> why its backend is not running.
    pub no_backend: BTreeMap<Target, String>,
    /// How each peer was started, for the report.
    pub setup_commands: Vec<(String, String)>,
    pub quinn_cert: PathBuf,
    pub link: Link,
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

impl<'a> World<'a> {
    /// Starts backends, then peers; a peer that cannot start is recorded as
    /// unavailable, not fatal.
    pub fn start(
        sb: &'a Sandbox,
        tools: &'a Tools,
        _settings: &Settings,
    ) -> anyhow::Result<World<'a>> {
        let mut w = World {
            sb,
            tools,
            netmux: None,
            netmux_local: BTreeMap::new(),
            netmux_udp_echo: None,
            procs: Vec::new(),
            unavailable: BTreeMap::new(),
            no_backend: BTreeMap::new(),
            setup_commands: Vec::new(),
            quinn_cert: sb.dir().join("quinn-cert.der"),
            link: Link::default(),
        };
        println!("==> bench: starting backends");
        w.start_backends()?;
        println!("==> bench: starting peers");
        type Start<'w> = fn(&mut World<'w>) -> anyhow::Result<()>;
        let peers: [(Peer, Start<'a>); 7] = [
            (Peer::Netmux, World::start_netmux),
            (Peer::SshDefault, |w| w.start_ssh(Peer::SshDefault)),
            (Peer::SshAes, |w| w.start_ssh(Peer::SshAes)),
            (Peer::Rathole, World::start_rathole),
            (Peer::Socat, World::start_socat),
            (Peer::SocatPair, World::start_socat_pair),
            (Peer::Quinn, World::start_quinn),
        ];
        for (peer, start) in peers {
            if let Err(e) = start(&mut w) {
                println!("bench: {} unavailable: {e:#}", peer.label());
                w.unavailable.insert(peer, format!("{e:#}"));
            }
        }
        Ok(w)
    }

    /// Stops every process (also done on drop).
    pub fn stop(&mut self) {
        self.link.stop();
        self.netmux = None;
        for p in &mut self.procs {
            p.kill();
        }
        self.procs.clear();
    }

    fn spawn(
        &mut self,
        side: Side,
        label: &str,
        program: &str,
        args: &[String],
    ) -> anyhow::Result<()> {
        let p = self
            .sb
            .process(side, label, program)
            .args(args)
            .spawn()
            .with_context(|| format!("starting {label}"))?;
        self.procs.push(p);
        Ok(())
    }

    fn last_log(&self) -> String {
        self.procs.last().map(Process::log).unwrap_or_default()
    }

    fn wait(&self, side: Side, addr: SocketAddr, what: &str) -> anyhow::Result<()> {
        self.sb
            .wait_for_tcp(side, addr, START)
            .with_context(|| format!("{what} did not come up: {}", self.last_log()))
    }

    fn cluster_ip(&self) -> IpAddr {
        self.sb.cluster_addr().into()
    }

    /// Where a client in the workstation namespace dials `target` through
    /// `peer` (for [`Peer::Quinn`], the UDP receiver).
    pub fn addr(&self, peer: Peer, target: Target) -> SocketAddr {
        let local = |base: u16| SocketAddr::new(ip("127.0.0.1"), base + target.index());
        match peer {
            Peer::Direct => SocketAddr::new(self.cluster_ip(), target.port()),
            Peer::Netmux => self
                .netmux_local
                .get(&target)
                .copied()
                .unwrap_or_else(|| SocketAddr::new(ip("127.0.0.1"), 1)),
            Peer::SshDefault => local(21_000),
            Peer::SshAes => local(22_000),
            Peer::Rathole => local(23_000),
            Peer::Socat => SocketAddr::new(self.cluster_ip(), target.port() + 10_000),
            Peer::SocatPair => local(24_000),
            Peer::Quinn => SocketAddr::new(self.cluster_ip(), QUINN_PORT),
        }
    }

    /// Where a client in the workstation namespace sends datagrams for the
    /// UDP echo backend through `peer`; `None` for peers without UDP.
    pub fn udp_echo_addr(&self, peer: Peer) -> Option<SocketAddr> {
        match peer {
            Peer::Direct => Some(SocketAddr::new(self.cluster_ip(), UDP_ECHO_PORT)),
            Peer::Netmux => self.netmux_udp_echo,
            _ => None,
        }
    }

    /// Whether `peer` can carry traffic to `target`, or why not.
    pub fn usable(&self, peer: Peer, target: Target) -> Result<(), String> {
        if let Some(why) = self.no_backend.get(&target) {
            return Err(format!("no {} backend: {why}", target.name()));
        }
        match self.unavailable.get(&peer) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// Process names whose CPU time counts as `peer`'s.
    pub fn cpu_names(peer: Peer) -> &'static [&'static str] {
        match peer {
            Peer::Direct => &[],
            Peer::Netmux => &["netmuxd", "netmux-server"],
            Peer::SshDefault | Peer::SshAes => &["ssh", "sshd", "sshd-session"],
            Peer::Rathole => &["rathole"],
            Peer::Socat | Peer::SocatPair => &["socat"],
            Peer::Quinn => &["nx-quicperf"],
        }
    }

    /// Ids of the processes named `names` in both namespaces.
    pub fn pids_named(&self, names: &[&str]) -> Vec<i32> {
        self.sb
            .ws()
            .pids()
            .into_iter()
            .chain(self.sb.cluster().pids())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| names.contains(&c.trim_end()))
            })
            .collect()
    }

    /// CPU seconds (user + system, own and reaped children) of the
    /// processes named `names` in both namespaces.
    pub fn cpu_seconds(&self, names: &[&str]) -> f64 {
        let mut ticks: u64 = 0;
        for pid in self
            .sb
            .ws()
            .pids()
            .into_iter()
            .chain(self.sb.cluster().pids())
        {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = &stat[open + 1..close];
            if !names.contains(&comm) {
                continue;
            }
            let f: Vec<u64> = stat[close + 1..]
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            // Fields 14-17 of proc(5): utime, stime, cutime, cstime.
            ticks += f.get(11..15).map(|s| s.iter().sum()).unwrap_or(0);
        }
        ticks as f64 / 100.0
    }

    fn start_backends(&mut self) -> anyhow::Result<()> {
        let any = |p: u16| format!("0.0.0.0:{p}");
        let echo = bin("nx-echo")?.to_string_lossy().into_owned();
        // iperf3
        if let Some(why) = self.tools.missing("iperf3") {
            self.no_backend.insert(Target::Iperf, why.to_owned());
        } else {
            self.spawn(
                Side::Cluster,
                "iperf3-server",
                "iperf3",
                &["-s".into(), "-p".into(), "5201".into()],
            )?;
        }
        self.spawn(
            Side::Cluster,
            "http",
            &echo,
            &[
                "http".into(),
                "--listen".into(),
                any(8080),
                "--max-connections".into(),
                "20000".into(),
            ],
        )?;
        self.wait(
            Side::Cluster,
            SocketAddr::new(self.cluster_ip(), 8080),
            "nx-echo http",
        )?;
        self.spawn(
            Side::Cluster,
            "echo",
            &echo,
            &[
                "tcp".into(),
                "--listen".into(),
                any(9000),
                "--max-connections".into(),
                "20000".into(),
            ],
        )?;
        self.wait(
            Side::Cluster,
            SocketAddr::new(self.cluster_ip(), 9000),
            "nx-echo tcp",
        )?;
        self.spawn(
            Side::Cluster,
            "udp-echo",
            &echo,
            &["udp".into(), "--listen".into(), any(UDP_ECHO_PORT)],
        )?;
        if let Some(why) = self.tools.missing("redis-server") {
            self.no_backend.insert(Target::Redis, why.to_owned());
        } else {
            let args: Vec<String> = [
                "--port",
                "6379",
                "--bind",
                "0.0.0.0",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                "10000",
                "--daemonize",
                "no",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            self.spawn(Side::Cluster, "redis", "redis-server", &args)?;
            if let Err(e) = self.wait(
                Side::Cluster,
                SocketAddr::new(self.cluster_ip(), 6379),
                "redis",
            ) {
                self.no_backend.insert(Target::Redis, format!("{e:#}"));
            }
        }
        if let Err(e) = self.start_postgres() {
            println!("bench: PostgreSQL unavailable: {e:#}");
            self.no_backend.insert(Target::Postgres, format!("{e:#}"));
        }
        Ok(())
    }

    fn start_postgres(&mut self) -> anyhow::Result<()> {
        let Some(pg) = self.tools.pg_bin.clone() else {
            bail!("PostgreSQL not installed");
        };
        if let Some(why) = self.tools.missing("pgbench") {
            bail!("{why}");
        }
        let data = self.sb.dir().join("pgdata");
        std::fs::create_dir_all(&data)?;
        crate::util::run(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data),
        )?;
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let hba = data.join("pg_hba.conf");
        let mut conf = std::fs::read_to_string(&hba)?;
        conf.push_str("host all all 0.0.0.0/0 trust\n");
        std::fs::write(&hba, conf)?;
        let d = data.to_string_lossy().into_owned();
        let args: Vec<String> = vec![
            "-u".into(),
            "postgres".into(),
            "--".into(),
            pg.join("postgres").to_string_lossy().into_owned(),
            "-D".into(),
            d.clone(),
            "-c".into(),
            "listen_addresses=*".into(),
            "-c".into(),
            "port=5432".into(),
            "-c".into(),
            format!("unix_socket_directories={d}"),
            "-c".into(),
            "max_connections=300".into(),
            "-c".into(),
            "fsync=off".into(),
            "-c".into(),
            "synchronous_commit=off".into(),
        ];
        self.spawn(Side::Cluster, "postgres", "runuser", &args)?;
        self.wait(
            Side::Cluster,
            SocketAddr::new(self.cluster_ip(), 5432),
            "postgres",
        )?;
        self.sb
            .exec(
                Side::Cluster,
                "pgbench",
                [
                    "-i",
                    "-s",
                    "1",
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "postgres",
                ],
                Duration::from_secs(120),
            )
            .context("pgbench -i")?;
        Ok(())
    }

    fn start_netmux(&mut self) -> anyhow::Result<()> {
        let mut specs: Vec<ServiceSpec> = Target::ALL
            .iter()
            .map(|t| {
                let addr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20 + t.index() as u8));
                let spec = ServiceSpec::l2c(t.name(), addr, t.port(), t.port());
                if *t == Target::Iperf {
                    // iperf3 -u: TCP control and UDP data on one port.
                    ServiceSpec {
                        protocol: "tcp+udp",
                        ..spec
                    }
                } else {
                    spec
                }
            })
            .collect();
        specs.push(ServiceSpec {
            protocol: "udp",
            ..ServiceSpec::l2c(
                "udpecho",
                IpAddr::V4(UDP_ECHO_SERVICE),
                UDP_ECHO_PORT,
                UDP_ECHO_PORT,
            )
        });
        // Scenario 6 holds 10,000 connections on one session: above the
        // server's default cap (4,096), as a user with that many sets it.
        let layout = Layout {
            server_extra: "[limits]\nmax_streams_per_session = 16384\n".into(),
            ..Layout::new(self.sb)
        };
        let nm = Netmux::start_layout(self.sb, layout, &specs, TOKEN, LOOPBACK)
            .context("netmux start")?;
        connect_and_start(&nm)?;
        let hosts = std::fs::read_to_string(self.sb.ws_hosts_file())?;
        for t in Target::ALL {
            let fqdn = format!("{}.{ENDPOINT}.svc.cluster.local", t.name());
            let addr = hosts_address(&hosts, &fqdn)
                .with_context(|| format!("{fqdn} not in the hosts file"))?;
            self.netmux_local.insert(t, SocketAddr::new(addr, t.port()));
        }
        let udp_fqdn = format!("udpecho.{ENDPOINT}.svc.cluster.local");
        self.netmux_udp_echo =
            hosts_address(&hosts, &udp_fqdn).map(|a| SocketAddr::new(a, UDP_ECHO_PORT));
        self.setup_commands.push((
            "netmux".into(),
            "netmux-server --config server.toml (cluster), netmuxd --config daemon.toml \
             (workstation), `netmux connect demo`, `netmux start demo +`; server `[limits] max_streams_per_session = 16384` (scenario 6 holds 10,000 connections); configs from \
             netmux_testbed::netmux (release build, QUIC settings of netmux-common)"
                .into(),
        ));
        self.netmux = Some(nm);
        self.wait(
            Side::Workstation,
            self.addr(Peer::Netmux, Target::Echo),
            "netmux echo service",
        )
    }

    /// `netmux disconnect` + `connect`: a new QUIC connection.
    pub fn reconnect_netmux(&self) -> anyhow::Result<()> {
        let Some(nm) = &self.netmux else {
            return Ok(());
        };
        let _ = nm.cli(["disconnect", ENDPOINT])?;
        connect_and_start(nm)?;
        self.wait(
            Side::Workstation,
            self.addr(Peer::Netmux, Target::Echo),
            "netmux echo service after reconnect",
        )
    }

    fn start_ssh(&mut self, peer: Peer) -> anyhow::Result<()> {
        for cmd in ["ssh", "sshd", "ssh-keygen"] {
            if let Some(why) = self.tools.missing(cmd) {
                bail!("{why}");
            }
        }
        let dir = self.sb.dir().join("ssh");
        let host_key = dir.join("host_ed25519");
        let user_key = dir.join("user_ed25519");
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
            std::fs::create_dir_all("/run/sshd")?;
            for key in [&host_key, &user_key] {
                crate::util::run(
                    Command::new("ssh-keygen")
                        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                        .arg(key),
                )?;
            }
            std::fs::copy(user_key.with_extension("pub"), dir.join("authorized_keys"))?;
            let config = format!(
                "Port {SSH_PORT}\nListenAddress {}\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
                 AllowTcpForwarding yes\nMaxStartups 1000\nMaxSessions 1000\nPidFile {}\n",
                self.sb.cluster_addr(),
                host_key.display(),
                dir.join("authorized_keys").display(),
                dir.join("sshd.pid").display(),
            );
            std::fs::write(dir.join("sshd_config"), config)?;
            let sshd = "/usr/sbin/sshd".to_owned();
            let args = vec![
                "-D".into(),
                "-e".into(),
                "-f".into(),
                dir.join("sshd_config").to_string_lossy().into_owned(),
            ];
            self.spawn(Side::Cluster, "sshd", &sshd, &args)?;
            self.wait(
                Side::Cluster,
                SocketAddr::new(self.cluster_ip(), SSH_PORT),
                "sshd",
            )?;
            self.setup_commands.push((
                "sshd".into(),
                format!("/usr/sbin/sshd -D -e -f sshd_config (cluster; ed25519 host key, port {SSH_PORT})"),
            ));
        }
        let mut args: Vec<String> = [
            "-F",
            "/dev/null",
            "-N",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-p",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.push(SSH_PORT.to_string());
        args.push("-i".into());
        args.push(user_key.to_string_lossy().into_owned());
        if peer == Peer::SshAes {
            args.push("-c".into());
            args.push("aes128-gcm@openssh.com".into());
        }
        for t in Target::ALL {
            let l = self.addr(peer, t);
            args.push("-L".into());
            args.push(format!("{}:{}:127.0.0.1:{}", l.ip(), l.port(), t.port()));
        }
        args.push(format!("root@{}", self.sb.cluster_addr()));
        let label = if peer == Peer::SshAes {
            "ssh-aes"
        } else {
            "ssh-default"
        };
        self.setup_commands
            .push((peer.label().into(), format!("ssh {}", args.join(" "))));
        self.spawn(Side::Workstation, label, "ssh", &args)?;
        self.wait(Side::Workstation, self.addr(peer, Target::Echo), label)
    }

    fn start_rathole(&mut self) -> anyhow::Result<()> {
        let Some(rathole) = self.tools.rathole.clone() else {
            bail!(
                "{}",
                self.tools
                    .missing("rathole")
                    .unwrap_or("rathole not installed")
            );
        };
        let rathole = rathole.to_string_lossy().into_owned();
        let out = Command::new(&rathole).arg("--genkey").output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let after = |label: &str| -> Option<String> {
            let mut lines = text.lines().skip_while(|l| !l.contains(label));
            lines.next()?;
            lines
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_owned)
        };
        let (Some(private), Some(public)) = (after("Private Key"), after("Public Key")) else {
            bail!("could not parse `rathole --genkey`: {text}");
        };
        let token = "bench-rathole-token";
        let mut server = format!(
            "[server]\nbind_addr = \"{}:{RATHOLE_PORT}\"\n\n[server.transport]\ntype = \"noise\"\n\n\
             [server.transport.noise]\nlocal_private_key = \"{private}\"\n\n",
            self.sb.ws_addr()
        );
        let mut client = format!(
            "[client]\nremote_addr = \"{}:{RATHOLE_PORT}\"\n\n[client.transport]\ntype = \"noise\"\n\n\
             [client.transport.noise]\nremote_public_key = \"{public}\"\n\n",
            self.sb.ws_addr()
        );
        for t in Target::ALL {
            server.push_str(&format!(
                "[server.services.{}]\ntoken = \"{token}\"\nbind_addr = \"{}\"\n\n",
                t.name(),
                self.addr(Peer::Rathole, t)
            ));
            client.push_str(&format!(
                "[client.services.{}]\ntoken = \"{token}\"\nlocal_addr = \"127.0.0.1:{}\"\n\n",
                t.name(),
                t.port()
            ));
        }
        let sp = self.sb.dir().join("rathole-server.toml");
        let cp = self.sb.dir().join("rathole-client.toml");
        std::fs::write(&sp, server)?;
        std::fs::write(&cp, client)?;
        self.spawn(
            Side::Workstation,
            "rathole-server",
            &rathole,
            &["--server".into(), sp.to_string_lossy().into_owned()],
        )?;
        self.spawn(
            Side::Cluster,
            "rathole-client",
            &rathole,
            &["--client".into(), cp.to_string_lossy().into_owned()],
        )?;
        self.setup_commands.push((
            peer_label(Peer::Rathole),
            "rathole --server server.toml (workstation: binds the local ports), rathole --client \
             client.toml (cluster: dials the server, forwards to 127.0.0.1:PORT); transport \
             noise (keys from `rathole --genkey`)"
                .into(),
        ));
        // The server binds its service ports once the client has registered.
        self.wait(
            Side::Workstation,
            self.addr(Peer::Rathole, Target::Echo),
            "rathole",
        )
    }

    fn start_socat(&mut self) -> anyhow::Result<()> {
        if let Some(why) = self.tools.missing("socat") {
            bail!("{why}");
        }
        for t in Target::ALL {
            let args = vec![
                format!(
                    "TCP-LISTEN:{},fork,reuseaddr,backlog=1024",
                    t.port() + 10_000
                ),
                format!("TCP:127.0.0.1:{}", t.port()),
            ];
            if t == Target::Iperf {
                self.setup_commands.push((
                    peer_label(Peer::Socat),
                    format!("socat {} (cluster, one per port)", args.join(" ")),
                ));
            }
            self.spawn(
                Side::Cluster,
                &format!("socat-{}", t.name()),
                "socat",
                &args,
            )?;
        }
        self.wait(
            Side::Workstation,
            self.addr(Peer::Socat, Target::Echo),
            "socat",
        )
    }

    /// A socat in the workstation namespace that relays to the cluster's
    /// socat ([`World::start_socat`], so it starts after it), with the
    /// same options.
    fn start_socat_pair(&mut self) -> anyhow::Result<()> {
        if let Some(why) = self.unavailable.get(&Peer::Socat) {
            bail!("needs the cluster's socat relay: {why}");
        }
        for t in Target::ALL {
            let local = self.addr(Peer::SocatPair, t);
            let args = vec![
                format!(
                    "TCP-LISTEN:{},bind={},fork,reuseaddr,backlog=1024",
                    local.port(),
                    local.ip()
                ),
                format!("TCP:{}", self.addr(Peer::Socat, t)),
            ];
            if t == Target::Iperf {
                self.setup_commands.push((
                    peer_label(Peer::SocatPair),
                    format!(
                        "socat {} (workstation, one per port) to the socat relay above",
                        args.join(" ")
                    ),
                ));
            }
            self.spawn(
                Side::Workstation,
                &format!("socat-pair-{}", t.name()),
                "socat",
                &args,
            )?;
        }
        self.wait(
            Side::Workstation,
            self.addr(Peer::SocatPair, Target::Echo),
            "the workstation's socat",
        )
    }

    fn start_quinn(&mut self) -> anyhow::Result<()> {
        let qp = bin("nx-quicperf")?.to_string_lossy().into_owned();
        let args = vec![
            "server".into(),
            "--listen".into(),
            format!("{}:{QUINN_PORT}", self.sb.cluster_addr()),
            "--cert-out".into(),
            self.quinn_cert.to_string_lossy().into_owned(),
        ];
        self.setup_commands.push((
            peer_label(Peer::Quinn),
            format!("nx-quicperf {} (cluster)", args.join(" ")),
        ));
        self.spawn(Side::Cluster, "quicperf-server", &qp, &args)?;
        netmux_testbed::wait_for_file(&self.quinn_cert, START).context("nx-quicperf server")?;
        Ok(())
    }
}

fn peer_label(p: Peer) -> String {
    p.label().to_owned()
}

/// `netmux connect` and `netmux start ENDPOINT +`: a new connection and
/// every service started.
fn connect_and_start(nm: &Netmux<'_>) -> anyhow::Result<()> {
    let out = nm.cli(["connect", ENDPOINT])?;
    if !out.success() {
        bail!("netmux connect: {}{}", out.stdout, out.stderr);
    }
    let out = nm.cli(["start", ENDPOINT, "+"])?;
    if !out.success() {
        bail!("netmux start: {}{}", out.stdout, out.stderr);
    }
    Ok(())
}

/// The address the hosts file text `hosts` gives `fqdn`.
fn hosts_address(hosts: &str, fqdn: &str) -> Option<IpAddr> {
    hosts
        .lines()
        .find(|l| l.split_whitespace().skip(1).any(|n| n == fqdn))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
}

impl Drop for World<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}
