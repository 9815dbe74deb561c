//! Deterministic identifiers.
//!
//! Every document a handler creates gets an id derived from what caused it, so
//! that a redelivered message recreates the *same* ids and unique indexes turn
//! the second write into a no-op. State ids stay 12-byte ObjectIds (24 hex
//! characters on the wire) for compatibility with Exosphere clients.

use sha2::{Digest, Sha256};

/// Derives a 12-byte ObjectId value from a domain tag and ordered parts.
///
/// Parts are length-prefixed before hashing, so `("ab", "c")` and `("a", "bc")`
/// give different ids.
pub fn derive_object_id(tag: &str, parts: &[&str]) -> [u8; 12] {
    let digest = digest(std::iter::once(tag).chain(parts.iter().copied()));
    let mut out = [0u8; 12];
    out.copy_from_slice(&digest[..12]);
    out
}

/// SHA-256 of the parts, each prefixed by its length (so that no two
/// sequences of parts feed the same bytes).
fn digest<'a>(parts: impl IntoIterator<Item = &'a str>) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

/// Id of the root state of a run.
pub fn root_state_id(run_id: &str) -> [u8; 12] {
    derive_object_id("root", &[run_id])
}

/// Id of fan-out sibling `index` (1-based; index 0 is the executed state itself)
/// created when `state_id` reported several outputs.
pub fn fanout_sibling_id(state_id: &str, index: usize) -> [u8; 12] {
    derive_object_id("fanout", &[state_id, &index.to_string()])
}

/// Id of the child of `parent_id` for the next node `identifier`.
pub fn child_state_id(parent_id: &str, identifier: &str) -> [u8; 12] {
    derive_object_id("child", &[parent_id, identifier])
}

/// Id of the unite state `identifier` for the group opened by `target_id`.
pub fn unite_state_id(target_id: &str, identifier: &str) -> [u8; 12] {
    derive_object_id("unite", &[target_id, identifier])
}

/// Id of the automatic retry of `state_id`.
pub fn retry_state_id(state_id: &str) -> [u8; 12] {
    derive_object_id("retry", &[state_id])
}

/// A run id derived from ordered parts (length-prefixed, hashed), in UUID
/// form (version-8 layout: the hash, with the version and variant bits
/// set), so that the same cause (a CRON occurrence, an idempotency key)
/// always names the same run.
pub fn derived_run_id(parts: &[&str]) -> crate::names::RunId {
    let d = digest(parts.iter().copied());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    crate::names::RunId::trusted(format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    ))
}

/// The run started by the idempotency key `key` for graph `graph` of
/// namespace `ns`, whoever sends it and however often.
pub fn idempotent_run_id(ns: &str, graph: &str, key: &str) -> crate::names::RunId {
    derived_run_id(&["idempotency-key", "v1", ns, graph, key])
}

/// Hex form of a 12-byte id.
pub fn to_hex(id: &[u8; 12]) -> String {
    hex::encode(id)
}

/// Parses a 24-hex-character id.
pub fn parse_hex(s: &str) -> Option<[u8; 12]> {
    if s.len() != 24 {
        return None;
    }
    let mut out = [0u8; 12];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// A state's id as messages carry it: 12 bytes, written as 24 lowercase hex
/// digits on the wire (serialised as that string, so the wire does not
/// change). A message whose state id is not 24 hex digits does not decode.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateId([u8; 12]);

/// A string that is not a state id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid state_id {0:?}: expected 24 hex digits")]
pub struct InvalidStateId(pub String);

impl StateId {
    /// The id with these bytes.
    pub const fn from_bytes(bytes: [u8; 12]) -> Self {
        Self(bytes)
    }

    /// Parses 24 hex digits.
    pub fn parse(s: &str) -> Result<Self, InvalidStateId> {
        parse_hex(s)
            .map(Self)
            .ok_or_else(|| InvalidStateId(s.to_string()))
    }

    /// The 12 bytes (an ObjectId's).
    pub const fn bytes(&self) -> [u8; 12] {
        self.0
    }

    /// The 24-hex form.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }
}

impl std::str::FromStr for StateId {
    type Err = InvalidStateId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl std::fmt::Display for StateId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for StateId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateId({self})")
    }
}

impl serde::Serialize for StateId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for StateId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_ids_are_24_hex_digits_on_the_wire() {
        let id = StateId::from_bytes(root_state_id("r"));
        let wire = serde_json::to_string(&id).unwrap();
        assert_eq!(wire, format!("\"{}\"", to_hex(&root_state_id("r"))));
        assert_eq!(serde_json::from_str::<StateId>(&wire).unwrap(), id);
        assert_eq!(id.to_string().parse::<StateId>(), Ok(id));
        for bad in ["\"\"", "\"abc\"", "\"zzzzzzzzzzzzzzzzzzzzzzzz\"", "7"] {
            let e = serde_json::from_str::<StateId>(bad).expect_err(bad);
            assert!(
                bad == "7" || e.to_string().contains("24 hex digits"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(child_state_id("a", "b"), child_state_id("a", "b"));
        assert_ne!(child_state_id("a", "b"), child_state_id("a", "c"));
        assert_ne!(
            derive_object_id("t", &["ab", "c"]),
            derive_object_id("t", &["a", "bc"])
        );
        assert_ne!(child_state_id("a", "b"), unite_state_id("a", "b"));
    }

    /// Ids stored by earlier versions must be derived again identically
    /// (a redelivered message recreates the same documents): the values
    /// are pinned, computed independently (SHA-256 of length-prefixed
    /// parts).
    #[test]
    fn derivations_are_pinned() {
        assert_eq!(to_hex(&root_state_id("r")), "c685b53c698293d1f460df2b");
        assert_eq!(
            derived_run_id(&["ns", "g", "* * * * *", "60000"]).as_str(),
            "25c3f390-3479-817e-b6c1-36991f044d16"
        );
    }

    #[test]
    fn hex_round_trip() {
        let id = retry_state_id("x");
        assert_eq!(parse_hex(&to_hex(&id)), Some(id));
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex("zzzzzzzzzzzzzzzzzzzzzzzz"), None);
    }
}
