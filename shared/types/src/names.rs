//! Validation of user-chosen names used in NATS subjects and Mongo keys.
//!
//! Namespaces, graph names and node names end up as NATS subject tokens
//! (`exo.v1.<ns>.dispatch.<node>`), so they are restricted to a small,
//! subject-safe alphabet: ASCII letters, digits, `_` and `-`, 1 to 64
//! characters long.

/// Longest accepted name, in characters.
pub const MAX_TOKEN_LEN: usize = 64;

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The name is empty, too long or contains a character outside
    /// `[A-Za-z0-9_-]`.
    #[error(
        "{kind} '{value}' is invalid: only letters, digits, '_' and '-' are allowed (1 to 64 characters)"
    )]
    Invalid {
        /// What the name names, e.g. `"namespace"` or `"node name"`.
        kind: String,
        /// The rejected value, verbatim.
        value: String,
    },
}

/// Returns `true` when `s` matches `[A-Za-z0-9_-]{1,64}`.
pub fn is_valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TOKEN_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks that `s` matches `[A-Za-z0-9_-]{1,64}`.
///
/// `kind` names the thing being checked (`"namespace"`, `"node name"`,
/// `"graph name"`) and is used in the error message.
pub fn validate_token(kind: &str, s: &str) -> Result<(), Error> {
    if is_valid_token(s) {
        Ok(())
    } else {
        Err(Error::Invalid {
            kind: kind.to_owned(),
            value: s.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_subject_safe_names() {
        for ok in ["a", "A-b_c", "0", "node_1", &"x".repeat(64)] {
            assert!(validate_token("namespace", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in ["", "a.b", "a b", "a*", "a>", "é", "a/b", &"x".repeat(65)] {
            assert!(
                matches!(validate_token("namespace", bad), Err(Error::Invalid { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn error_message_names_kind_and_value() {
        let err = validate_token("namespace", "a.b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "namespace 'a.b' is invalid: only letters, digits, '_' and '-' are allowed (1 to 64 characters)"
        );
        let err = validate_token("node name", "").unwrap_err();
        assert!(err.to_string().starts_with("node name '' is invalid"));
    }
}
