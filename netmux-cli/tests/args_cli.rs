//! Malformed arguments as users type them: the real `netmux` binary names
//! the flag, what is wrong and what is expected, with clap's exit status 2,
//! before it asks the daemon. The control socket named here is served by
//! nobody, so an argument that got through would fail with "cannot reach
//! netmuxd" instead, and the test would see that.
//!
//! No daemon, no root, no network.
//!
//! Run: `cargo test -p netmux-cli --test args_cli`

use std::process::Command;

/// `netmux ARGS` (words split at spaces) against a socket nobody serves:
/// exit code and stderr.
fn netmux(args: &str) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("netmux-args-cli-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_netmux"))
        .arg("--socket")
        .arg(dir.join("netmuxd.sock"))
        .args(args.split_whitespace())
        .env_remove("NETMUX_SOCKET")
        .env_remove("NETMUX_CONFIG")
        .output()
        .expect("running netmux");
    (
        out.status.code().expect("netmux exited by a signal"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_arguments_are_named_before_the_daemon_is_asked() {
    // (arguments, the flag named, what the error says)
    let cases = [
        (
            "expose demo dbg --local localhost --remote-port 80",
            "--local",
            "expected HOST:PORT or PORT",
        ),
        (
            "expose demo dbg --local ::1:8080 --remote-port 80",
            "--local",
            "needs brackets",
        ),
        (
            "expose demo dbg --local localhost:0 --remote-port 80",
            "--local",
            "is not 1-65535",
        ),
        (
            "expose demo dbg --local 127.0.0.1:80 --remote-port 0",
            "--remote-port",
            "not in 1..=65535",
        ),
        (
            "expose demo Debug.X --local 127.0.0.1:8080 --remote-port 8080",
            "<NAME>",
            "use lower-case letters, digits and '-'",
        ),
        (
            "intercept demo web --to nowhere",
            "--to",
            "expected HOST:PORT",
        ),
        (
            "intercept demo web --to 127.0.0.1:8080 --header alice",
            "--header",
            "expected NAME=VALUE",
        ),
        (
            "intercept demo web --to 127.0.0.1:8080 --port 0",
            "--port",
            "not in 1..=65535",
        ),
        ("leave demo web --port 0", "--port", "not in 1..=65535"),
        ("env demo web --port 0", "--port", "not in 1..=65535"),
        (
            "env demo web -o yaml",
            "--output",
            "possible values: dotenv, sh, json",
        ),
        // --mount: a directory that holds something already.
        (
            "env demo web --mount /etc",
            "--mount <DIR>",
            "exists and is not an empty directory",
        ),
        // --replace is global: the workload is stopped.
        (
            "intercept demo web --to 8080 --replace --header x-netmux-user=alice",
            "--header <HEADER>",
            "cannot be used with",
        ),
        (
            "intercept demo web --to 8080 --mirror --replace",
            "--replace",
            "cannot be used with",
        ),
        // Options of the environment, on an intercept that uses none.
        (
            "intercept demo web --to 8080 --container app",
            "--env-file <ENV_FILE>|--env-json <ENV_JSON>|--mount <DIR>|COMMAND",
            "required arguments were not provided",
        ),
        (
            "intercept demo web --to 8080 --env-exclude KUBERNETES_+",
            "--env-file <ENV_FILE>|--env-json <ENV_JSON>|--mount <DIR>|COMMAND",
            "required arguments were not provided",
        ),
    ];
    for (args, flag, says) in cases {
        let (code, err) = netmux(args);
        assert_eq!(code, 2, "netmux {args}: exit {code}, stderr: {err}");
        assert!(
            err.contains(flag) && err.contains(says) && !err.contains("cannot reach netmuxd"),
            "netmux {args}: expected {flag} and {says:?} in: {err}"
        );
    }
    // Well-formed arguments pass the check and go on to the daemon (here:
    // none), so the check does not reject what the daemon accepts.
    for args in [
        "expose demo dbg --local 127.0.0.1:8080 --remote-port 8080",
        "expose demo dbg --local [::1]:80 --remote-port 8080",
        "expose demo dbg --local localhost:80 --remote-port 8080",
        "expose demo dbg --local 8080 --remote-port 8080",
        "intercept demo web --to 127.0.0.1:8080 --header x-netmux-user=alice --port 80",
        "intercept demo web --to 8080 --env-file web.env --env-json web.json",
        "intercept demo web --to 8080 --replace --port 80",
        "env demo web -o sh --port 80",
        "env demo web -- sh -c true",
        "intercept demo web --to 8080 --container app --env-exclude K+ -- sh -c true",
    ] {
        let (code, err) = netmux(args);
        assert!(
            code == 1 && err.contains("cannot reach netmuxd"),
            "netmux {args}: exit {code}, stderr: {err}"
        );
    }
}
