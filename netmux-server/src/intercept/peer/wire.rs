//! The replica-to-replica intercept protocol, sans IO: netmux-common's
//! [`proto::replica`](netmux_common::proto::replica) (where the fuzz
//! target `replica_wire` reaches it), plus the conversions between its
//! [`WireMode`] and the router's [`Mode`].

pub use netmux_common::proto::replica::*;

use super::super::route::Mode;

impl From<&Mode> for WireMode {
    fn from(m: &Mode) -> Self {
        match m.clone() {
            Mode::Global => WireMode::Global,
            Mode::Personal { name, value } => WireMode::Personal { name, value },
            Mode::Mirror { header } => WireMode::Mirror { header },
            Mode::Replace => WireMode::Replace,
        }
    }
}

impl From<WireMode> for Mode {
    fn from(m: WireMode) -> Self {
        match m {
            WireMode::Global => Mode::Global,
            WireMode::Personal { name, value } => Mode::Personal {
                name: name.to_ascii_lowercase(),
                value,
            },
            WireMode::Mirror { header } => Mode::Mirror {
                header: header.map(|(n, v)| (n.to_ascii_lowercase(), v)),
            },
            WireMode::Replace => Mode::Replace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_survive_the_wire_and_headers_are_lower_cased() {
        for m in [
            Mode::Global,
            Mode::Personal {
                name: "x-netmux-user".into(),
                value: "Alice".into(),
            },
            Mode::Mirror { header: None },
            Mode::Mirror {
                header: Some(("x-a".into(), "b".into())),
            },
            Mode::Replace,
        ] {
            let b = to_bytes(&WireMode::from(&m)).unwrap();
            let mut r = Reader::new();
            r.push(&b);
            let back: WireMode = r.message().unwrap().unwrap();
            assert_eq!(Mode::from(back), m);
        }
        let shouted = WireMode::Personal {
            name: "X-Netmux-User".into(),
            value: "Bob".into(),
        };
        assert_eq!(
            Mode::from(shouted),
            Mode::Personal {
                name: "x-netmux-user".into(),
                value: "Bob".into()
            }
        );
    }
}
