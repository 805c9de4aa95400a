//! Link profiles between the two namespaces. This kernel has no netem, so
//! `wan` and `lossy` route each side's traffic for the other side's veth
//! address into a TUN device, where `nx-delayline` holds every packet for
//! half the RTT (and drops at random for `lossy`) before sending it out of
//! the veth with an AF_PACKET socket. `lan` is the bare veth.

use std::time::Duration;

use anyhow::{bail, Context};
use netmux_testbed::{bin, Process, Sandbox, Side, CLUSTER_IF, WS_IF};

/// A link profile of the issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The veth as is.
    Lan,
    /// The veth with MTU 9000 on both ends (jumbo frames), no delay.
    Jumbo,
    /// 20 ms RTT.
    Wan,
    /// 20 ms RTT, 1% random loss in each direction.
    Lossy,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Lan => "lan",
            Profile::Jumbo => "jumbo",
            Profile::Wan => "wan",
            Profile::Lossy => "lossy",
        }
    }

    /// (one-way delay in ms, loss probability per packet and direction).
    fn shape(self) -> (f64, f64) {
        match self {
            Profile::Lan | Profile::Jumbo => (0.0, 0.0),
            Profile::Wan => (10.0, 0.0),
            Profile::Lossy => (10.0, 0.01),
        }
    }

    /// The veth's MTU (every profile but `jumbo` has Ethernet's).
    pub fn mtu(self) -> u16 {
        match self {
            Profile::Jumbo => 9000,
            _ => 1500,
        }
    }
}

/// The delay lines of the current profile.
#[derive(Debug, Default)]
pub struct Link {
    lines: Vec<Process>,
    current: Option<Profile>,
    /// What ping measured after the last switch.
    pub check: String,
    /// Average ping RTT in ms after the last switch.
    pub rtt_ms: f64,
}

const TUN_WS: &str = "nxdl-ws";
const TUN_CL: &str = "nxdl-cl";

fn mac(sb: &Sandbox, side: Side, ifname: &str) -> anyhow::Result<String> {
    let out = sb.netns(side).ip(["-o", "link", "show", "dev", ifname])?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("no MAC in {out:?}"))
}

impl Link {
    /// Kills the delay lines (their TUN devices and routes go with them).
    pub fn stop(&mut self) {
        for p in &mut self.lines {
            p.kill();
        }
        self.lines.clear();
    }

    /// The profile the link is set to.
    pub fn current(&self) -> Option<Profile> {
        self.current
    }

    /// Switches to `profile` and checks it with ping; whether it changed.
    pub fn set(&mut self, sb: &Sandbox, profile: Profile) -> anyhow::Result<bool> {
        if self.current == Some(profile) {
            return Ok(false);
        }
        self.stop();
        self.current = None;
        let (delay, loss) = profile.shape();
        let mtu = profile.mtu().to_string();
        sb.netns(Side::Workstation)
            .ip(["link", "set", WS_IF, "mtu", &mtu])?;
        sb.netns(Side::Cluster)
            .ip(["link", "set", CLUSTER_IF, "mtu", &mtu])?;
        if delay > 0.0 || loss > 0.0 {
            let delayline = bin("nx-delayline")?;
            for side in [Side::Workstation, Side::Cluster] {
                // Strict reverse-path filtering would drop packets that
                // arrive on the veth while the route back points at the TUN.
                sb.exec(
                    side,
                    "sysctl",
                    [
                        "-q",
                        "-w",
                        "net.ipv4.conf.all.rp_filter=0",
                        "net.ipv4.conf.default.rp_filter=0",
                    ],
                    Duration::from_secs(5),
                )?;
            }
            let sides = [
                (
                    Side::Workstation,
                    TUN_WS,
                    WS_IF,
                    mac(sb, Side::Cluster, CLUSTER_IF)?,
                    sb.cluster_addr(),
                    sb.ws_addr(),
                ),
                (
                    Side::Cluster,
                    TUN_CL,
                    CLUSTER_IF,
                    mac(sb, Side::Workstation, WS_IF)?,
                    sb.ws_addr(),
                    sb.cluster_addr(),
                ),
            ];
            for (side, tun, out_if, peer_mac, dst, src) in sides {
                let p = sb
                    .process(side, &format!("delayline-{tun}"), &delayline)
                    .args(["--tun", tun, "--out-if", out_if, "--peer-mac", &peer_mac])
                    .args([
                        "--delay-ms",
                        &delay.to_string(),
                        "--loss",
                        &loss.to_string(),
                    ])
                    .args(["--seconds", "3600"])
                    .spawn()?;
                self.lines.push(p);
                let ns = sb.netns(side);
                netmux_testbed::wait_until(
                    &format!("{tun} to appear"),
                    Duration::from_secs(5),
                    || ns.ip(["link", "show", "dev", tun]).is_ok(),
                )?;
                sb.exec(
                    side,
                    "sysctl",
                    ["-q", "-w", &format!("net.ipv4.conf.{out_if}.rp_filter=0")],
                    Duration::from_secs(5),
                )?;
                ns.ip(["link", "set", tun, "up", "mtu", "1500"])?;
                ns.ip([
                    "route",
                    "replace",
                    &format!("{dst}/32"),
                    "dev",
                    tun,
                    "src",
                    &src.to_string(),
                ])?;
            }
        }
        self.current = Some(profile);
        if profile == Profile::Jumbo {
            // The path carries a packet of the full MTU unfragmented (the
            // ping's payload: the MTU less the IPv4 and ICMP headers).
            let payload = (profile.mtu() - 28).to_string();
            sb.exec(
                Side::Workstation,
                "ping",
                [
                    "-q",
                    "-c",
                    "1",
                    "-W",
                    "2",
                    "-M",
                    "do",
                    "-s",
                    &payload,
                    &sb.cluster_addr().to_string(),
                ],
                Duration::from_secs(10),
            )
            .with_context(|| format!("a {}-byte ping across the jumbo veth", profile.mtu()))?;
        }
        self.ping(sb, profile)?;
        Ok(true)
    }

    fn ping(&mut self, sb: &Sandbox, profile: Profile) -> anyhow::Result<()> {
        let count = if profile == Profile::Lossy {
            "400"
        } else {
            "100"
        };
        let out = sb.exec(
            Side::Workstation,
            "ping",
            [
                "-q",
                "-c",
                count,
                "-i",
                "0.005",
                "-W",
                "2",
                &sb.cluster_addr().to_string(),
            ],
            Duration::from_secs(30),
        );
        // ping exits 1 when some replies were lost: that is the point of
        // `lossy`, so read its summary either way.
        let text = match out {
            Ok(o) => o.stdout,
            Err(netmux_testbed::Error::Command { stdout, .. }) => stdout,
            Err(e) => return Err(e).context("ping"),
        };
        let loss = text
            .split(',')
            .find(|s| s.contains("packet loss"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "? loss".into());
        let rtt = text
            .lines()
            .find(|l| l.starts_with("rtt") || l.starts_with("round-trip"))
            .and_then(|l| l.split('=').nth(1))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default();
        let avg: f64 = rtt
            .split('/')
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        self.rtt_ms = avg;
        self.check = format!("ping -c {count} -i 0.005: rtt min/avg/max/mdev {rtt}, {loss}");
        println!("==> bench: link {}: {}", profile.name(), self.check);
        let want = 2.0 * profile.shape().0;
        if !(avg.is_finite() && (avg - want).abs() < 5.0 + want * 0.25) {
            bail!("link {} not as configured: {}", profile.name(), self.check);
        }
        Ok(())
    }
}
