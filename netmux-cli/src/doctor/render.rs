//! The report: exit status and text.

use super::{Check, Status};

/// The exit status of `netmux doctor`: 1 when any check failed, 0 when
/// every check passed or only warned.
pub(crate) fn exit_status(checks: &[Check]) -> u8 {
    u8::from(checks.iter().any(|c| c.status == Status::Fail))
}

/// Renders the report; one block per check.
pub(crate) fn render(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let tag = match c.status {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        s.push_str(&format!("[{tag}] {}: {}\n", c.name, c.detail));
        if let Some(f) = &c.fix {
            s.push_str(&format!("       fix: {f}\n"));
        }
    }
    s
}
