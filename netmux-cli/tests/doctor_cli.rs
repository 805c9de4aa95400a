//! `netmux doctor` as users run it: the real binary, `--config` pointing at
//! a good, a broken and a missing file. The `config` check passes or fails
//! accordingly, and the exit status is 1 exactly when a check fails.
//!
//! No daemon, no root, no network: the configs name a control socket in a
//! temporary directory that nobody serves, and no endpoints.
//!
//! Run: `cargo test -p netmux-daemon --test doctor_cli`

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// What `netmux --config CONFIG doctor ARGS` printed and its exit code.
struct Doctor {
    code: i32,
    stdout: String,
    stderr: String,
}

fn doctor(config: &Path, args: &[&str]) -> Doctor {
    let mut child = Command::new(env!("CARGO_BIN_EXE_netmux"))
        .arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(config.with_file_name("netmuxd.sock"))
        .arg("doctor")
        .args(args)
        .env_remove("NETMUX_CONFIG")
        .env_remove("NETMUX_SOCKET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running netmux doctor");
    // No endpoints, so nothing waits on the network; still bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("netmux doctor did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    Doctor {
        code: out.status.code().expect("exited, not killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The `--json` report as (name, status, the whole check).
fn checks(d: &Doctor) -> Vec<(String, String, Value)> {
    let v: Value = serde_json::from_str(&d.stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}):\n{}", d.stdout));
    v.as_array()
        .expect("an array of checks")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["status"].as_str().unwrap_or_default().to_owned(),
                c.clone(),
            )
        })
        .collect()
}

#[test]
fn a_broken_config_fails_the_config_check_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    // Line 3 has a key the daemon does not know.
    std::fs::write(
        &path,
        "socket = \"/run/netmux/netmuxd.sock\"\nredirect = \"loopback\"\nredriect = \"ebpf\"\n",
    )
    .expect("write config");

    let text = doctor(&path, &[]);
    assert_eq!(text.code, 1, "{}{}", text.stdout, text.stderr);
    let first = text.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("[FAIL] config: {}:3:", path.display()))
            && first.contains("redriect"),
        "the error names file, line and key: {}",
        text.stdout
    );
    assert!(
        text.stdout.contains(&format!(
            "fix: fix {} (the error names the line)",
            path.display()
        )),
        "{}",
        text.stdout
    );

    let json = doctor(&path, &["--json"]);
    assert_eq!(json.code, 1, "{}{}", json.stdout, json.stderr);
    let c = checks(&json);
    // Nothing else is checked against a config that does not load.
    assert_eq!(c.len(), 1, "{}", json.stdout);
    assert_eq!((c[0].0.as_str(), c[0].1.as_str()), ("config", "fail"));
    assert!(c[0].2["fix"].as_str().is_some(), "{}", json.stdout);

    // A file that is not there fails the same check, with another fix.
    let missing = dir.path().join("missing.toml");
    let d = doctor(&missing, &["--json"]);
    assert_eq!(d.code, 1, "{}{}", d.stdout, d.stderr);
    let c = checks(&d);
    assert_eq!(c.len(), 1, "{}", d.stdout);
    assert_eq!(c[0].1, "fail");
    let fix = c[0].2["fix"].as_str().unwrap_or_default();
    assert!(fix.contains("netmux install"), "{fix}");
}

#[test]
fn a_good_config_passes_the_config_check_and_the_exit_status_follows_the_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    let socket = dir.path().join("netmuxd.sock");
    std::fs::write(
        &path,
        format!(
            "socket = {:?}\nredirect = \"loopback\"\n",
            socket.display().to_string()
        ),
    )
    .expect("write config");

    let d = doctor(&path, &["--json"]);
    let c = checks(&d);
    assert_eq!(
        (c[0].0.as_str(), c[0].1.as_str()),
        ("config", "pass"),
        "{}",
        d.stdout
    );
    assert_eq!(
        c[0].2["detail"].as_str(),
        Some(format!("{} is valid", path.display()).as_str())
    );
    assert!(c.len() > 1, "the other checks run: {}", d.stdout);
    // Nobody serves the socket here, so that check fails, and the exit
    // status says so.
    let sock = c
        .iter()
        .find(|(n, ..)| n == "control-socket")
        .expect("control-socket checked");
    assert_eq!(sock.1, "fail", "{}", d.stdout);
    let any_fail = c.iter().any(|(_, s, _)| s == "fail");
    assert_eq!(d.code, i32::from(any_fail), "{}{}", d.stdout, d.stderr);

    // The text report has the same checks, one line each. (Their outcome
    // may differ between the two runs: a netmuxd started meanwhile by
    // someone else changes the capabilities check, never to a failure
    // with the loopback backend.)
    let t = doctor(&path, &[]);
    assert_eq!(t.code, d.code, "{}", t.stdout);
    let names: Vec<&str> = t
        .stdout
        .lines()
        .filter(|l| l.starts_with('['))
        .filter_map(|l| l.get(7..)?.split(": ").next())
        .collect();
    let want: Vec<&str> = c.iter().map(|(n, ..)| n.as_str()).collect();
    assert_eq!(names, want, "{}", t.stdout);
    assert!(
        t.stdout
            .starts_with(&format!("[PASS] config: {} is valid\n", path.display())),
        "{}",
        t.stdout
    );
}
