//! Names of the objects a claim writes: valid DNS-1123 labels, distinct
//! for distinct claims, the same on every replica.

/// A valid DNS-1123 label `prefix-part-part...`: lower-cased, other
/// characters replaced by `-`; when that changed anything or the result
/// is longer than 63, shortened and suffixed with a hash of the parts, so
/// distinct inputs keep distinct names.
pub fn object_name(prefix: &str, parts: &[&str]) -> String {
    const MAX: usize = 63;
    let raw = std::iter::once(prefix)
        .chain(parts.iter().copied())
        .collect::<Vec<_>>()
        .join("-");
    let clean: String = raw
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let clean = clean.trim_matches('-').to_owned();
    if clean == raw && clean.len() <= MAX {
        return clean;
    }
    // FNV-1a: stable across builds and replicas, unlike std's hasher.
    let hash = raw.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let suffix = format!("-{:08x}", hash as u32);
    let keep = MAX - suffix.len();
    let head: String = clean.chars().take(keep).collect();
    format!("{}{suffix}", head.trim_end_matches('-'))
}

/// The Lease standing for catalog entry `namespace/name`.
pub fn lease_name(namespace: &str, name: &str) -> String {
    object_name("netmux-c2l", &[namespace, name])
}

/// The EndpointSlice (in the entry's namespace) routing entry `name`.
pub fn slice_name(name: &str) -> String {
    object_name("netmux-c2l", &[name])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels_and_distinct() {
        assert_eq!(lease_name("ns", "rev"), "netmux-c2l-ns-rev");
        let long = lease_name("a-namespace-with-a-long-name", &"x".repeat(60));
        assert!(long.len() <= 63, "{long}");
        assert_ne!(
            long,
            lease_name("a-namespace-with-a-long-name", &"x".repeat(61))
        );
        let dotted = slice_name("kafka.0");
        assert!(dotted.starts_with("netmux-c2l-kafka-0-"), "{dotted}");
        assert_ne!(dotted, slice_name("kafka-0"));
        for n in [long, dotted] {
            assert!(n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
            assert!(!n.starts_with('-') && !n.ends_with('-'));
        }
    }
}
