//! Scenario 8: the eBPF connect redirect's cost. A sandbox of its own,
//! because netmuxd runs there with `redirect = "ebpf"` attached to a
//! private child cgroup (the bench's main deployment uses the loopback
//! backend). connect()+close is timed to the service's cluster address from
//! inside the cgroup (rewritten by the hook to netmuxd's listener) and to
//! that listener dialled directly from outside the cgroup (no hook), and,
//! for the cost of a lookup miss, to the listener from inside: paired per
//! round by one process (`nx-probe connect-paired`), with the paired
//! difference's bootstrap interval in the notes.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use netmux_testbed::cgroup::ChildCgroup;
use netmux_testbed::netmux::{Netmux, ServiceSpec, ENDPOINT, TOKEN};
use netmux_testbed::{bin, Sandbox, Side};

use super::{loadavg, Outcome, Peer, Row, Settings, Table};

const SERVICE: &str = "10.96.0.30";
const PORT: u16 = 9000;

/// Finds a 127.77.x.y address in `netmux ls` JSON (the service's listener).
fn find_listener(v: &serde_json::Value) -> Option<IpAddr> {
    match v {
        serde_json::Value::String(s) => s
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .find_map(|w| w.parse::<IpAddr>().ok())
            .filter(|ip| ip.to_string().starts_with("127.77.")),
        serde_json::Value::Array(a) => a.iter().find_map(find_listener),
        serde_json::Value::Object(o) => o.values().find_map(find_listener),
        _ => None,
    }
}

pub fn scenario8(s: &Settings) -> anyhow::Result<Table> {
    let load = loadavg();
    let sb = Sandbox::with_prefix("nxb8").context("sandbox")?;
    // 10,000 connect+close per figure, each also dialled onward by
    // netmux-server: without TIME_WAIT reuse the cluster side runs out of
    // ephemeral ports and later connects are reset (seen as "connection
    // reset" in the first full runs). Same settings on both sides.
    for side in [Side::Workstation, Side::Cluster] {
        for (key, value) in [
            ("net.ipv4.tcp_tw_reuse", "1"),
            ("net.ipv4.ip_local_port_range", "1024 65000"),
        ] {
            sb.exec(
                side,
                "sysctl",
                ["-q", "-w", &format!("{key}={value}")],
                Duration::from_secs(10),
            )
            .with_context(|| format!("sysctl {key}"))?;
        }
    }
    let echo = bin("nx-echo")?;
    let _backend = sb
        .process(Side::Cluster, "echo", &echo)
        .args(["tcp", "--listen", &format!("0.0.0.0:{PORT}")])
        .spawn()?;
    let cg = ChildCgroup::new(&format!("nxb8-cg-{}", std::process::id()))?;
    let extra = format!(
        "redirect = \"ebpf\"\ncgroup = \"{}\"\n",
        cg.path().display()
    );
    let svc: IpAddr = SERVICE.parse()?;
    let nm = Netmux::start_with(
        &sb,
        &[ServiceSpec::l2c("echo", svc, PORT, PORT)],
        TOKEN,
        &extra,
    )
    .context("netmux with redirect = \"ebpf\"")?;
    for args in [vec!["connect", ENDPOINT], vec!["start", ENDPOINT, "+"]] {
        let out = nm.cli(&args)?;
        if !out.success() {
            bail!("netmux {}: {}{}", args.join(" "), out.stdout, out.stderr);
        }
    }
    if !nm.daemon.log().to_lowercase().contains("ebpf") {
        bail!(
            "netmuxd did not report the eBPF backend:\n{}",
            nm.daemon.log()
        );
    }
    let ls = nm.ls()?;
    let listener = find_listener(&serde_json::Value::Array(ls.clone()))
        .with_context(|| format!("no 127.77.x.y listener in `netmux ls`: {ls:?}"))?;
    let listener = SocketAddr::new(listener, PORT);
    let service = SocketAddr::new(svc, PORT);
    sb.wait_for_tcp(Side::Workstation, listener, Duration::from_secs(10))?;
    let probe = bin("nx-probe")?.to_string_lossy().into_owned();
    let count = if s.quick { 2_000 } else { 10_000 };
    let outside = cg
        .path()
        .parent()
        .context("the child cgroup has a parent")?
        .to_path_buf();
    // One process times all three cases, paired per round in random order,
    // moving itself between the hooked cgroup and its parent: drift and
    // background load hit every case alike, and the difference of each
    // pair isolates the hook from the tunnel behind the listener.
    let run = |seed: usize| -> anyhow::Result<serde_json::Value> {
        let args = [
            "connect-paired".to_owned(),
            "--inside".into(),
            cg.path().display().to_string(),
            "--outside".into(),
            outside.display().to_string(),
            "--service".into(),
            service.to_string(),
            "--listener".into(),
            listener.to_string(),
            "--count".into(),
            count.to_string(),
            "--seed".into(),
            (seed + 1).to_string(),
        ];
        let out = sb.exec(Side::Workstation, &probe, &args, Duration::from_secs(300))?;
        Ok(serde_json::from_str(out.stdout.trim())?)
    };
    let cases: [(&'static str, &'static str); 3] = [
        ("redirected: cluster address, in cgroup", "redirected_us"),
        ("listener dialled directly, no hook", "direct_us"),
        ("listener from inside the cgroup (hook miss)", "miss_us"),
    ];
    let mut rows: Vec<Row> = cases
        .iter()
        .map(|(label, _)| Row {
            peer: Peer::Netmux,
            label: Some(label),
            outcome: Outcome::Values(Vec::new()),
            extra: Vec::new(),
        })
        .collect();
    let mut paired_notes = Vec::new();
    for rep in 0..s.reps.max(3) {
        match run(rep) {
            Ok(v) => {
                for (row, (_, key)) in rows.iter_mut().zip(cases) {
                    if let (Outcome::Values(vals), Some(x)) = (&mut row.outcome, v[key].as_f64()) {
                        vals.push(x);
                    }
                }
                let d = |k: &str, i: usize| v[k][i].as_f64().unwrap_or(f64::NAN);
                let base = v["direct_us"].as_f64().unwrap_or(f64::NAN);
                paired_notes.push(format!(
                    "rep {}: redirected − direct, paired median {:+.2} µs (95% CI {:+.2} … {:+.2} µs) = {:+.1}% of direct's {base:.1} µs (CI upper bound {:+.1}%); hook miss − direct {:+.2} µs (CI {:+.2} … {:+.2})",
                    rep + 1,
                    d("redirect_delta_us", 0),
                    d("redirect_delta_us", 1),
                    d("redirect_delta_us", 2),
                    d("redirect_delta_us", 0) / base * 100.0,
                    d("redirect_delta_us", 2) / base * 100.0,
                    d("miss_delta_us", 0),
                    d("miss_delta_us", 1),
                    d("miss_delta_us", 2),
                ));
            }
            Err(e) => {
                for row in &mut rows {
                    row.outcome = Outcome::Failed(format!("{e:#}").chars().take(300).collect());
                }
                break;
            }
        }
    }
    let base = rows[1].median();
    for r in &mut rows {
        if let (Some(m), Some(b)) = (r.median(), base) {
            r.extra.push(format!("{:+.1}%", (m / b - 1.0) * 100.0));
        }
    }
    let mut t = Table {
        id: "s8-ebpf-connect".into(),
        scenario: 8,
        title: "eBPF redirect: connect() + close(), per connection".into(),
        profile: "lan",
        unit: "µs per connect+close",
        higher_better: false,
        rows,
        extra_cols: vec!["vs listener dialled directly".into()],
        commands: vec![format!(
            "nx-probe connect-paired --inside CG --outside CG/.. --service {service} --listener {listener} --count {count} --seed REP"
        )],
        load: (load, loadavg()),
        link_check: "lan (bare veth; the connects stay in the workstation namespace)".into(),
        notes: vec![format!(
            "netmuxd with `redirect = \"ebpf\"` attached to a private child cgroup; service {service}, \
             listener {listener}. Each figure is the median of {count} connect()+close() of one rep; the three \
             cases are timed in random order within each round by one process that moves itself between the \
             hooked cgroup and its parent."
        )],
    };
    drop(nm);
    drop(cg);
    t.notes
        .push("Overhead = redirected vs listener dialled directly.".into());
    t.notes.extend(paired_notes);
    Ok(t)
}
