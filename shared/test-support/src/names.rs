//! Unique names for per-test databases.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest name returned by [`unique_db_name`] (MongoDB allows 63 bytes; this leaves room).
const MAX_LEN: usize = 38;
/// Length of the random suffix.
const SUFFIX_LEN: usize = 12;

/// A database name that no other test (in this or another process) uses: the `prefix`, an
/// underscore and 12 random characters.
///
/// The result has at most 38 characters, all in `[a-z0-9_]`: the prefix is lowercased,
/// other characters become `_`, and it is shortened to fit.
pub fn unique_db_name(prefix: &str) -> String {
    let mut name: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .take(MAX_LEN - SUFFIX_LEN - 1)
        .collect();
    if !name.is_empty() {
        name.push('_');
    }
    name.push_str(&random_suffix());
    name
}

fn random_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    let mut bits = hasher.finish();
    let mut bits2 = RandomState::new().build_hasher().finish();
    (0..SUFFIX_LEN)
        .map(|i| {
            let src = if i < 6 { &mut bits } else { &mut bits2 };
            let idx = (*src % ALPHABET.len() as u64) as usize;
            *src /= ALPHABET.len() as u64;
            char::from(ALPHABET[idx])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_valid_and_unique() {
        let long = "A-Very/Long.Prefix With Spaces And More Than Forty Characters";
        let mut seen = HashSet::new();
        for prefix in ["e2e", "", long, "ünïcode"] {
            for _ in 0..200 {
                let n = unique_db_name(prefix);
                assert!(n.len() <= MAX_LEN, "{n}");
                assert!(
                    n.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                    "{n}"
                );
                assert!(seen.insert(n));
            }
        }
        assert!(unique_db_name("e2e").starts_with("e2e_"));
    }
}
