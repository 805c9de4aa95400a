//! Doctor's blackout check: an endpoint whose server has stopped answering
//! (`degraded`) keeps its session and connections up to `survive_blackout`;
//! say for how long it has lasted and what happens at the bound.

use netmux_api::StatusView;

use super::Check;

/// One check per degraded endpoint of the running daemon; none when every
/// endpoint answers or the daemon did not answer.
pub(super) fn checks(status: Option<&StatusView>) -> Vec<Check> {
    let Some(status) = status else {
        return Vec::new();
    };
    status
        .endpoints
        .iter()
        .filter(|e| e.state == "degraded")
        .map(|e| {
            Check::warn(
                format!("blackout {}", e.name),
                e.error
                    .clone()
                    .unwrap_or_else(|| "no answer from the server for a few seconds".into()),
                "nothing to do if the network is coming back (sleep, Wi-Fi or VPN change): \
                 connections carry on when it does; otherwise check the route to the server \
                 (VPN up? `ip route get SERVER`); `survive_blackout` in the daemon's and the \
                 server's config sets the bound",
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmux_api::EndpointView;

    /// Through the wire form, so fields added to the view keep defaults.
    fn view(state: &str, error: Option<&str>) -> EndpointView {
        serde_json::from_value(serde_json::json!({
            "name": "dev",
            "server": "quic 10.0.0.2:7443",
            "state": state,
            "error": error,
            "services": 3,
            "started": 1,
        }))
        .expect("endpoint view")
    }

    #[test]
    fn a_degraded_endpoint_warns_with_the_blackout_and_the_bound() {
        let line = "no answer from the server for 42s; the session and its open connections are kept 9m18s more, then reset (survive_blackout 10m00s)";
        let status = StatusView {
            version: "0".into(),
            redirect: "loopback".into(),
            hosts_file: "/etc/hosts".into(),
            dns: String::new(),
            endpoints: vec![view("degraded", Some(line)), view("connected", None)],
            intercepts: vec![],
        };
        let checks = checks(Some(&status));
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!(checks[0].name, "blackout dev");
        assert_eq!(checks[0].status, super::super::Status::Warn);
        assert!(checks[0].detail.contains("for 42s") && checks[0].detail.contains("then reset"));
        assert!(checks[0]
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("survive_blackout")));
        assert!(super::checks(None).is_empty());
    }
}
