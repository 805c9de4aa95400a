//! The syntax of the request fields that the CLI takes from the user's
//! arguments: one check for both sides, so that `netmux` rejects a
//! malformed argument before it asks the daemon (and when no daemon runs),
//! and the daemon gives any other client of its socket the same answer.
//!
//! Errors say what is wrong and what is expected, without naming the flag:
//! clap names it on the CLI (`invalid value 'x' for '--local <LOCAL>'`), the
//! daemon prefixes it (`--local "x": …`).

use netmux_common::proto::catalog::valid_dns_name;
use netmux_common::proto::control::{valid_header_name, valid_header_value};

/// `NAME=VALUE` (or `NAME: VALUE`) of `--header`: the name lower-cased.
pub fn header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(['=', ':'])
        .ok_or("expected NAME=VALUE, e.g. x-netmux-user=alice")?;
    let name = name.trim().to_ascii_lowercase();
    let value = value.trim().to_owned();
    if !valid_header_name(&name) {
        return Err(format!(
            "{name:?} is not an HTTP header name (letters, digits, '-'); expected NAME=VALUE, \
             e.g. x-netmux-user=alice"
        ));
    }
    if !valid_header_value(&value) {
        return Err("the value must be 1-256 visible ASCII characters".into());
    }
    Ok((name, value))
}

/// `HOST:PORT` of `--local` and `--to`: the host (an IPv6 address without
/// its brackets) and a port of 1-65535; a port alone means 127.0.0.1 (as
/// Telepresence's and mirrord's local ports do). The host is resolved by
/// the daemon.
pub fn host_port(text: &str) -> Result<(String, u16), String> {
    const EXPECTED: &str = "expected HOST:PORT or PORT, e.g. 127.0.0.1:8080, [::1]:8080 or 8080";
    let (host, port) = match text.rsplit_once(':') {
        Some(split) => split,
        None if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => ("127.0.0.1", text),
        None => return Err(format!("no port; {EXPECTED}")),
    };
    let host = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .ok_or_else(|| format!("unclosed '['; {EXPECTED}"))?,
        // A bare IPv6 address (`::1:80`) is ambiguous: which colon
        // starts the port?
        None if host.contains(':') => {
            return Err(format!("an IPv6 address needs brackets; {EXPECTED}"))
        }
        None => host,
    };
    if host.is_empty() {
        return Err(format!("no host; {EXPECTED}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host.to_owned(), p)),
        _ => Err(format!("port {port:?} is not 1-65535; {EXPECTED}")),
    }
}

/// The name `expose` gives a service in the cluster: one DNS label.
pub fn service_name(text: &str) -> Result<(), String> {
    if valid_dns_name(text) && !text.contains('.') {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is not a valid service name: use lower-case letters, digits and '-' \
             (at most 63, not starting or ending with '-')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_bad_ones_are_named() {
        assert_eq!(
            header("X-Netmux-User=alice"),
            Ok(("x-netmux-user".into(), "alice".into()))
        );
        assert_eq!(header("x-user: bob"), Ok(("x-user".into(), "bob".into())));
        for bad in ["novalue", "bad name=x", "x=", "x=\u{7f}"] {
            assert!(header(bad).is_err(), "{bad}");
        }
        assert!(header("novalue").unwrap_err().contains("NAME=VALUE"));
    }

    #[test]
    fn host_port_takes_names_and_addresses_and_names_the_mistake() {
        let ok = |s: &str| host_port(s).unwrap();
        assert_eq!(ok("127.0.0.1:8080"), ("127.0.0.1".into(), 8080));
        assert_eq!(ok("localhost:80"), ("localhost".into(), 80));
        assert_eq!(ok("[::1]:5432"), ("::1".into(), 5432));
        assert_eq!(ok("8080"), ("127.0.0.1".into(), 8080));
        for (bad, says) in [
            ("", "no port"),
            ("localhost", "no port"),
            ("127.0.0.1", "no port"),
            ("0", "not 1-65535"),
            ("99999", "not 1-65535"),
            (":8080", "no host"),
            ("[]:80", "no host"),
            ("[::1:80", "unclosed"),
            ("::1:80", "brackets"),
            ("localhost:0", "not 1-65535"),
            ("localhost:99999", "not 1-65535"),
            ("localhost:http", "not 1-65535"),
            ("localhost:", "not 1-65535"),
        ] {
            let e = host_port(bad).unwrap_err();
            assert!(e.contains(says) && e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn service_names_are_one_dns_label() {
        assert_eq!(service_name("debug-1"), Ok(()));
        for bad in ["", "Debug", "a.b", "bad name", "-x", "x-", &"a".repeat(64)] {
            let e = service_name(bad).unwrap_err();
            assert!(e.contains("not a valid service name"), "{bad}: {e}");
        }
    }
}
