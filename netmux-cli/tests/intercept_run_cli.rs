//! `netmux intercept … -- COMMAND` as a user's terminal or IDE drives it:
//! the real `netmux` binary against a stand-in for netmuxd (a unix socket
//! served by this test, answering the environment, intercept and leave
//! requests and recording them). The command gets the environment, and
//! the intercept ends after it whichever way it ends: by itself, on
//! Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or
//! on SIGTERM to netmux alone (an IDE's stop button), which netmux passes
//! on.
//!
//! No daemon, no root, no network.
//!
//! Run: `cargo test -p netmux-cli --test intercept_run_cli`

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// A stand-in netmuxd: answers each request line and records its `cmd`
/// (an intercept after `intercept_delay`).
fn fake_daemon(
    dir: &std::path::Path,
    intercept_delay: std::time::Duration,
) -> (std::path::PathBuf, Arc<Mutex<Vec<String>>>) {
    let path = dir.join("netmuxd.sock");
    let listener = UnixListener::bind(&path).expect("bind the socket");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut line = String::new();
            if BufReader::new(&conn).read_line(&mut line).is_err() {
                continue;
            }
            let req: serde_json::Value = serde_json::from_str(&line).expect("a JSON request");
            let cmd = req["cmd"].as_str().unwrap_or_default().to_owned();
            log.lock().expect("log").push(cmd.clone());
            if cmd == "intercept" {
                std::thread::sleep(intercept_delay);
            }
            let reply = match cmd.as_str() {
                "environment" => serde_json::json!({"ok": {"kind": "environment",
                    "service": "apps/web", "pod": "web-0", "container": "app",
                    "vars": [["GREETING", "hello"], ["KUBERNETES_SERVICE_HOST", "10.96.0.1"]],
                    // "port: 8080\n", written only for --mount.
                    "mounts": [{"path": "/etc/web", "volume": "files", "read_only": true,
                        "files": [{"path": "app.yaml", "mode": 420, "data": "cG9ydDogODA4MAo="}]}]}}),
                _ => serde_json::json!({"ok": {"kind": "done", "message": format!("{cmd} done")}}),
            };
            let _ = writeln!(conn, "{reply}");
        }
    });
    (path, seen)
}

/// Starts `netmux intercept ep web --to 8080 OPTIONS -- sh -c SCRIPT`
/// against `socket`, in a process group of its own (whose id is the
/// returned pid), its output piped.
fn intercept(socket: &std::path::Path, options: &str, script: &str) -> (Child, Pid) {
    let child = Command::new(env!("CARGO_BIN_EXE_netmux"))
        .arg("--socket")
        .arg(socket)
        .args("intercept ep web --to 8080".split(' '))
        .args(options.split_whitespace())
        .args(["--", "sh", "-c", script])
        .env_remove("NETMUX_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("running netmux");
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
    (child, pid)
}

/// Runs [`intercept`] with `--env-exclude KUBERNETES_+` and SCRIPT; once
/// the script printed `ready`, `signal` is applied. Returns (exit code,
/// stdout, requests).
fn run(script: &str, signal: impl FnOnce(Pid)) -> (Option<i32>, String, Vec<String>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (socket, seen) = fake_daemon(dir.path(), std::time::Duration::ZERO);
    let options = "--env-exclude KUBERNETES_+";
    let (mut child, pid) = intercept(&socket, options, script);
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("the command's first line");
    assert_eq!(first, "ready\n", "the command started");
    signal(pid);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("the rest");
    let status = child.wait().expect("netmux exits");
    let seen = seen.lock().expect("log").clone();
    (status.code(), rest, seen)
}

/// Ctrl-C while the intercept is being asked for: the command never
/// starts, the intercept is ended, and netmux exits as interrupted (130).
#[test]
fn ctrl_c_while_the_intercept_is_asked_for_ends_it_and_runs_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (socket, seen) = fake_daemon(dir.path(), std::time::Duration::from_millis(800));
    let (child, pid) = intercept(&socket, "", "echo ran");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !seen.lock().expect("log").iter().any(|c| c == "intercept") {
        assert!(
            std::time::Instant::now() < deadline,
            "the intercept was never asked for"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    killpg(pid, Signal::SIGINT).expect("SIGINT");
    let out = child.wait_with_output().expect("netmux exits");
    assert_eq!(out.status.code(), Some(130));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "the command never ran"
    );
    assert_eq!(
        *seen.lock().expect("log"),
        ["environment", "intercept", "leave"]
    );
}

/// Reports which signal came and exits; its `sleep` goes with it (it
/// holds the output pipe).
const TRAPS: &str = "trap 'kill $! 2>/dev/null; echo \"int $GREETING ${KUBERNETES_SERVICE_HOST:-none}\"; exit 3' INT; \
                     trap 'kill $! 2>/dev/null; echo \"term $GREETING\"; exit 4' TERM; \
                     sleep 20 & echo ready; wait";

#[test]
fn the_intercept_ends_with_the_command_however_it_ends() {
    // By itself: its status is netmux's.
    let (code, out, seen) = run("echo ready; echo \"$GREETING\"; exit 5", |_| {});
    assert_eq!((code, out.as_str()), (Some(5), "hello\n"));
    assert_eq!(seen, ["environment", "intercept", "leave"]);

    // Ctrl-C: the terminal signals the whole group; netmux waits for the
    // command, then leaves.
    let (code, out, seen) = run(TRAPS, |pid| killpg(pid, Signal::SIGINT).expect("SIGINT"));
    assert_eq!((code, out.as_str()), (Some(3), "int hello none\n"));
    assert_eq!(seen, ["environment", "intercept", "leave"]);

    // SIGTERM to netmux alone: passed on to the command.
    let (code, out, seen) = run(TRAPS, |pid| kill(pid, Signal::SIGTERM).expect("SIGTERM"));
    assert_eq!((code, out.as_str()), (Some(4), "term hello\n"));
    assert_eq!(seen, ["environment", "intercept", "leave"]);
}

/// `--mount DIR`: the command reads the volume files under
/// `$NETMUX_ROOT`; they go when it ends (here on Ctrl-C), with the
/// intercept.
#[test]
fn the_volume_files_go_with_the_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (socket, seen) = fake_daemon(dir.path(), std::time::Duration::ZERO);
    let root = dir.path().join("pod");
    let script = "trap 'kill $! 2>/dev/null; exit 3' INT; \
                  cat \"$NETMUX_ROOT/etc/web/app.yaml\"; sleep 20 & echo ready; wait";
    let options = format!("--mount {}", root.display());
    let (mut child, pid) = intercept(&socket, &options, script);
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let (mut file, mut ready) = (String::new(), String::new());
    out.read_line(&mut file).expect("the file's line");
    out.read_line(&mut ready).expect("ready");
    assert_eq!((file.as_str(), ready.as_str()), ("port: 8080\n", "ready\n"));
    assert!(root.join("etc/web/app.yaml").exists());
    killpg(pid, Signal::SIGINT).expect("SIGINT");
    let status = child.wait().expect("netmux exits");
    assert_eq!(status.code(), Some(3));
    assert!(!root.exists(), "the files go with the command");
    assert_eq!(
        *seen.lock().expect("log"),
        ["environment", "intercept", "leave"]
    );
}
