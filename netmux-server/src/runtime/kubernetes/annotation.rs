//! The `nx` Service annotation of the original netmux, parsed strictly.
//!
//! ```yaml
//! metadata:
//!   annotations:
//!     nx: |-
//!       - name: kafka
//!       - name: kafka-0
//!         localAddr: kafka-0.kafka.netmux.svc.cluster.local
//!         containerAddr: kafka-0.kafka.netmux.svc.cluster.local
//! ```
//!
//! A YAML list of bridges with the keys `name`, `localAddr`, `localPort`,
//! `containerAddr`, `containerPort`, `direction` (`L2C` | `C2L`) and
//! `family` (`tcp` | `udp`). As in the original, a missing or empty value
//! takes its default (filled in by the catalog builder, which knows the
//! Service) and ports may be written as numbers or strings. Unlike the
//! original, an unknown key or an invalid value rejects the annotation: the
//! original silently ignored them, which hid typos such as `localport`.

use netmux_common::proto::catalog::{Direction, Protocol};
use serde::Deserialize;

/// The annotation key, as in the original tool.
pub(crate) const KEY: &str = "nx";

/// One bridge of the annotation, values checked, defaults still open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bridge {
    /// Catalog name; default: the Service's name.
    pub(crate) name: Option<String>,
    /// The name the workstation uses; default: `name`.
    pub(crate) local_addr: Option<String>,
    /// The port the workstation uses; default: the Service's port.
    pub(crate) local_port: Option<u16>,
    /// What the server dials (or, for C2L, where it listens); default: the
    /// Service's cluster IP.
    pub(crate) container_addr: Option<String>,
    /// The port dialled in the cluster; default: the Service's port.
    pub(crate) container_port: Option<u16>,
    /// Default L2C.
    pub(crate) direction: Direction,
    /// Default TCP.
    pub(crate) family: Protocol,
}

/// Why an annotation is rejected; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AnnotationError {
    /// Not YAML, not a list of mappings, or an unknown key.
    #[error("annotation `nx` is not a list of bridges: {0}; fix: write a YAML list of mappings with the keys name, localAddr, localPort, containerAddr, containerPort, direction, family")]
    Syntax(String),
    /// A value is out of range or misspelt.
    #[error("annotation `nx` entry {index}{}: `{key}`: {message}", name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default())]
    Invalid {
        /// 0-based position in the list.
        index: usize,
        /// The entry's `name`, when it has one.
        name: Option<String>,
        /// The offending key.
        key: &'static str,
        /// What is wrong and the fix.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBridge {
    name: Option<String>,
    local_addr: Option<String>,
    local_port: Option<RawPort>,
    container_addr: Option<String>,
    container_port: Option<RawPort>,
    direction: Option<String>,
    family: Option<String>,
}

/// Ports were strings in the original (`localPort: "8082"`); numbers are
/// accepted too.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    Number(i64),
    Text(String),
}

/// Whether `value` carries bridges at all: the original treated an empty
/// annotation as absent.
pub(crate) fn is_present(value: Option<&String>) -> bool {
    value.is_some_and(|v| !v.trim().is_empty())
}

/// Parses the annotation's value.
pub(crate) fn parse(value: &str) -> Result<Vec<Bridge>, AnnotationError> {
    let raw: Vec<RawBridge> =
        serde_yaml::from_str(value).map_err(|e| AnnotationError::Syntax(e.to_string()))?;
    raw.into_iter()
        .enumerate()
        .map(|(index, r)| bridge(index, r))
        .collect()
}

fn nonempty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn bridge(index: usize, raw: RawBridge) -> Result<Bridge, AnnotationError> {
    let name = nonempty(raw.name);
    let invalid = |key: &'static str, message: String| AnnotationError::Invalid {
        index,
        name: name.clone(),
        key,
        message,
    };
    let port = |key: &'static str, p: Option<RawPort>| -> Result<Option<u16>, AnnotationError> {
        let n = match p {
            None => return Ok(None),
            Some(RawPort::Number(n)) => n,
            Some(RawPort::Text(t)) if t.trim().is_empty() => return Ok(None),
            Some(RawPort::Text(t)) => t.trim().parse::<i64>().map_err(|_| {
                invalid(
                    key,
                    format!("{t:?} is not a port number; fix: use a number from 1 to 65535"),
                )
            })?,
        };
        match u16::try_from(n) {
            Ok(p) if p != 0 => Ok(Some(p)),
            _ => Err(invalid(
                key,
                format!("{n} is not a port; fix: use a number from 1 to 65535"),
            )),
        }
    };
    let local_port = port("localPort", raw.local_port)?;
    let container_port = port("containerPort", raw.container_port)?;
    let direction = match nonempty(raw.direction).as_deref() {
        None | Some("L2C") => Direction::L2C,
        Some("C2L") => Direction::C2L,
        Some(other) => {
            return Err(invalid(
                "direction",
                format!("{other:?} is not a direction; fix: use L2C (workstation reaches the cluster) or C2L (cluster reaches the workstation), upper case"),
            ))
        }
    };
    let family = match nonempty(raw.family).as_deref() {
        None | Some("tcp") => Protocol::Tcp,
        Some("udp") => Protocol::Udp,
        Some(other) => {
            return Err(invalid(
                "family",
                format!("{other:?} is not a family; fix: use tcp or udp"),
            ))
        }
    };
    Ok(Bridge {
        local_addr: nonempty(raw.local_addr),
        container_addr: nonempty(raw.container_addr),
        name,
        local_port,
        container_port,
        direction,
        family,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_kafka_example_parses_with_open_defaults() {
        let v = "- name: kafka\n- name: kafka-0\n  localAddr: kafka-0.kafka.netmux.svc.cluster.local\n  containerAddr: kafka-0.kafka.netmux.svc.cluster.local\n";
        let b = parse(v).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].name.as_deref(), Some("kafka"));
        assert_eq!(b[0].local_addr, None);
        assert_eq!(b[0].direction, Direction::L2C);
        assert_eq!(b[0].family, Protocol::Tcp);
        assert_eq!(
            b[1].container_addr.as_deref(),
            Some("kafka-0.kafka.netmux.svc.cluster.local")
        );
    }

    #[test]
    fn ports_as_strings_or_numbers() {
        let b = parse("- localPort: \"8082\"\n  containerPort: 9000\n  direction: C2L\n").unwrap();
        assert_eq!(b[0].local_port, Some(8082));
        assert_eq!(b[0].container_port, Some(9000));
        assert_eq!(b[0].direction, Direction::C2L);
    }

    #[test]
    fn empty_values_take_defaults_as_in_the_original() {
        let b = parse("- name: ''\n  direction: ''\n  localPort: ''\n").unwrap();
        assert_eq!(b[0].name, None);
        assert_eq!(b[0].local_port, None);
        assert_eq!(b[0].direction, Direction::L2C);
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let e = parse("- name: a\n  localport: 80\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `localport`"), "{e}");
        assert!(e.contains("localPort"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_entry_key_and_fix() {
        let e = parse("- name: a\n- name: b\n  direction: l2c\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("entry 1 (b)") && e.contains("`direction`") && e.contains("fix:"),
            "{e}"
        );
        let e = parse("- localPort: 70000\n").unwrap_err().to_string();
        assert!(e.contains("entry 0") && e.contains("`localPort`"), "{e}");
        let e = parse("- containerPort: http\n").unwrap_err().to_string();
        assert!(
            e.contains("`containerPort`") && e.contains("\"http\""),
            "{e}"
        );
        let e = parse("- family: upd\n").unwrap_err().to_string();
        assert!(e.contains("`family`"), "{e}");
        let e = parse("name: a\n").unwrap_err().to_string();
        assert!(e.contains("not a list"), "{e}");
    }

    #[test]
    fn presence_follows_the_original() {
        assert!(!is_present(None));
        assert!(!is_present(Some(&"  ".to_owned())));
        assert!(is_present(Some(&"- name: a".to_owned())));
    }
}
