//! CSI names to Kubernetes object names.
//!
//! A CSI name is any UTF-8 string of up to 128 bytes; an object name must be
//! a DNS-1123 subdomain (lowercase alphanumerics, '-', '.', at most 253
//! characters, alphanumeric at both ends). Names that already are valid
//! (the sidecars' `pvc-<uuid>`, `snapshot-<uuid>`) are kept as they are; any
//! other name becomes its sanitized form plus a hash of the original, so two
//! different CSI names never share an object by accident. The object keeps
//! the original in `spec.csiName`, which callers compare on a name hit.

const MAX: usize = 253;

/// The object name for a CSI name.
pub fn object_name(csi_name: &str) -> String {
    if is_subdomain(csi_name) {
        return csi_name.to_string();
    }
    let mut stem: String = csi_name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' })
        .collect();
    stem.truncate(200);
    let stem = stem.trim_matches('-');
    let hash = fnv1a64(csi_name.as_bytes());
    if stem.is_empty() {
        format!("x-{hash:016x}")
    } else {
        format!("{stem}-{hash:016x}")
    }
}

fn is_subdomain(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= MAX
        && s.chars().all(|c| alnum(c) || c == '-' || c == '.')
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.split('.').all(|label| !label.is_empty() && label.starts_with(alnum) && label.ends_with(alnum))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_are_kept() {
        assert_eq!(object_name("pvc-0b5e0e39-6f7a-4f3b-9a1e-2f6d8c1b7e20"), "pvc-0b5e0e39-6f7a-4f3b-9a1e-2f6d8c1b7e20");
        assert_eq!(object_name("snapshot-1.a"), "snapshot-1.a");
    }

    #[test]
    fn other_names_become_valid_and_distinct() {
        let names = ["Vol_1", "vol-1-", "vol 1", "VOL-1", "", "-", "..", "a..b", &"x".repeat(300), "ünïcode"];
        let mut seen = std::collections::BTreeSet::new();
        for n in names {
            let o = object_name(n);
            assert!(is_subdomain(&o), "{n:?} -> {o:?}");
            assert!(seen.insert(o.clone()), "{n:?} -> {o:?} collides");
            assert_eq!(object_name(n), o, "stable");
        }
    }
}
