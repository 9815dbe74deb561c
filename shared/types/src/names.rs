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

/// Declares a name newtype: a `String` on the wire and in the database
/// (serde-transparent: what was stored or sent is read back as it is,
/// including the values of older versions), built from outside input only
/// through the validating [`parse`](RunId::parse).
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// What it names, in error messages.
            pub const KIND: &'static str = $kind;

            /// Checks `s` (`[A-Za-z0-9_-]{1,64}`: it becomes a NATS subject
            /// token).
            pub fn parse(s: impl Into<String>) -> Result<Self, Error> {
                let s = s.into();
                validate_token($kind, &s)?;
                Ok(Self(s))
            }

            /// A value read from a trusted place (a stored document, a
            /// message this system published) taken as it is.
            pub fn trusted(s: impl Into<String>) -> Self {
                Self(s.into())
            }

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The name, owned.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        #[cfg(feature = "bson")]
        impl From<$name> for bson::Bson {
            fn from(n: $name) -> Self {
                bson::Bson::String(n.0)
            }
        }
    };
}

name_type! {
    /// A run's id (a UUID when this system makes it).
    RunId, "run id"
}

name_type! {
    /// A namespace.
    Namespace, "namespace"
}

name_type! {
    /// A registered node's name (the dispatch subject's last token).
    NodeName, "node name"
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

    #[test]
    fn names_parse_validate_and_stay_strings_on_the_wire() {
        let ns = Namespace::parse("team-a").unwrap();
        assert_eq!(ns, "team-a");
        assert_eq!(serde_json::to_string(&ns).unwrap(), "\"team-a\"");
        let e = NodeName::parse("a.b").unwrap_err();
        assert!(
            e.to_string().starts_with("node name 'a.b' is invalid"),
            "{e}"
        );
        assert!("".parse::<RunId>().is_err());
        // Stored values of older versions are read as they are.
        let legacy: RunId = serde_json::from_str("\"not a token\"").unwrap();
        assert_eq!(legacy.as_str(), "not a token");
        assert_eq!(RunId::trusted("r-1").to_string(), "r-1");
    }
}
