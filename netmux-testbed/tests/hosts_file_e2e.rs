//! The workstation hosts file under netmuxd: the block is added next to the
//! existing lines, and disconnecting restores the file byte for byte.
//! Needs root and the built binaries; run with `--test-threads=1`.

use std::time::Duration;

use netmux_testbed::netmux::{Netmux, ServiceSpec, ENDPOINT};
use netmux_testbed::{wait_until, Sandbox};

const T: Duration = Duration::from_secs(20);

#[test]
fn block_is_added_beside_other_lines_and_removed_on_disconnect() {
    let sb = Sandbox::new().expect("creating a sandbox (needs root and iproute2)");
    let hosts = sb.ws_hosts_file();
    let before = std::fs::read_to_string(&hosts).unwrap();
    let svc = ServiceSpec::l2c("web", "10.96.0.20".parse().unwrap(), 80, 8080);
    let nm = Netmux::start(&sb, std::slice::from_ref(&svc)).expect("netmux starts");
    nm.cli(["connect", ENDPOINT])
        .unwrap()
        .ok()
        .expect("connect");
    nm.wait_for_status("EP", ENDPOINT, "connected", T).unwrap();
    nm.wait_for_ls("the catalog", T, |json| json.contains("web"))
        .unwrap();
    nm.cli(["start", ENDPOINT, "web"])
        .unwrap()
        .ok()
        .expect("start");
    wait_until("the hosts block", T, || nm.resolve(&svc.fqdn()).is_some()).unwrap();

    let during = std::fs::read_to_string(&hosts).unwrap();
    for line in before.lines() {
        assert!(
            during.lines().any(|l| l == line),
            "netmuxd dropped {line:?} from the hosts file:\n{during}"
        );
    }
    let ip = nm.resolve(&svc.fqdn()).unwrap();
    assert!(
        ip.is_loopback(),
        "{} -> {ip}: not a loopback address",
        svc.fqdn()
    );

    nm.cli(["disconnect", ENDPOINT])
        .unwrap()
        .ok()
        .expect("disconnect");
    let mut after = String::new();
    let restored = wait_until("the hosts block to go", T, || {
        after = std::fs::read_to_string(&hosts).unwrap_or_default();
        after == before
    });
    assert!(
        restored.is_ok(),
        "hosts file not restored after disconnect:\n--- before\n{before}--- after\n{after}"
    );
}
