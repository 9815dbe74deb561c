//! Size limits on what clients send, each with its documented answer and a
//! message naming the limit and the setting that changes it (see
//! `docs/security.md`):
//!
//! | limit | setting | default | answer |
//! |---|---|---|---|
//! | request body | `EXO_API__MAX_BODY_BYTES` | 32 MiB | 413 |
//! | nodes per graph | `EXO_API__MAX_GRAPH_NODES` | 10 000 | 422 at `["body","nodes"]` |
//! | outputs per result (fan-out width) | `EXO_API__MAX_OUTPUTS` | 1 000 000 | 422 at `["body","outputs"]` |
//! | store of a run (keys + values, bytes) | `EXO_API__MAX_STORE_BYTES` | 16 MiB | 422 at `["body","store"]` |
//!
//! Names that become subject tokens (namespaces, node names) are
//! `[A-Za-z0-9_-]{1,64}` everywhere (400 / 422 naming the field).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::ApiConfig;
use crate::error::ApiError;

/// The limits of one `api` process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, bytes (413).
    pub max_body_bytes: usize,
    /// Most nodes per graph template (422).
    pub max_graph_nodes: usize,
    /// Most outputs per result: the widest fan-out of one state (422).
    pub max_outputs: usize,
    /// Largest store of a run, bytes of keys and values (422).
    pub max_store_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self::of(&ApiConfig::default())
    }
}

impl Limits {
    /// The limits of the `api` section.
    pub fn of(api: &ApiConfig) -> Self {
        Self {
            max_body_bytes: api.max_body_bytes.max(1024),
            max_graph_nodes: api.max_graph_nodes.max(1),
            max_outputs: api.max_outputs.max(1),
            max_store_bytes: api.max_store_bytes,
        }
    }

    /// A graph of `n` nodes.
    pub fn graph_nodes(&self, n: usize) -> Result<(), ApiError> {
        too_many("nodes", n, self.max_graph_nodes, "EXO_API__MAX_GRAPH_NODES")
    }

    /// A result of `n` outputs.
    pub fn outputs(&self, n: usize) -> Result<(), ApiError> {
        too_many("outputs", n, self.max_outputs, "EXO_API__MAX_OUTPUTS")
    }

    /// A run's initial store.
    pub fn store(&self, store: &BTreeMap<String, String>) -> Result<(), ApiError> {
        let bytes: usize = store.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes <= self.max_store_bytes {
            return Ok(());
        }
        let max = self.max_store_bytes;
        Err(ApiError::Validation(vec![json!({
            "type": "too_long", "loc": ["body", "store"],
            "msg": format!("The store holds {bytes} bytes of keys and values; the limit is {max} (EXO_API__MAX_STORE_BYTES)"),
            "input": Value::Null, "ctx": {"max_bytes": max, "actual_bytes": bytes},
        })]))
    }
}

/// pydantic's `too_long` for list `field` of `n` items over `max`, naming
/// `setting`.
fn too_many(field: &str, n: usize, max: usize, setting: &str) -> Result<(), ApiError> {
    if n <= max {
        return Ok(());
    }
    Err(ApiError::Validation(vec![json!({
        "type": "too_long", "loc": ["body", field],
        "msg": format!("List should have at most {max} items after validation, not {n} ({setting})"),
        "input": Value::Null, "ctx": {"field_type": "List", "max_length": max, "actual_length": n},
    })]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(r: Result<(), ApiError>) -> Value {
        match r {
            Err(ApiError::Validation(items)) => items[0].clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_limit_names_itself_at_the_boundary() {
        let l = Limits {
            max_body_bytes: 1024,
            max_graph_nodes: 3,
            max_outputs: 5,
            max_store_bytes: 10,
        };
        assert!(l.graph_nodes(3).is_ok());
        let d = detail(l.graph_nodes(4));
        assert_eq!(d["loc"], json!(["body", "nodes"]));
        assert!(
            d["msg"]
                .as_str()
                .is_some_and(|m| m.contains("at most 3 items")
                    && m.contains("not 4")
                    && m.contains("EXO_API__MAX_GRAPH_NODES"))
        );
        assert!(l.outputs(5).is_ok());
        let d = detail(l.outputs(6));
        assert_eq!(d["loc"], json!(["body", "outputs"]));
        assert!(
            d["msg"]
                .as_str()
                .is_some_and(|m| m.contains("EXO_API__MAX_OUTPUTS"))
        );
        let mut store = BTreeMap::new();
        store.insert("k".to_string(), "123456789".to_string());
        assert!(l.store(&store).is_ok(), "10 bytes is the limit");
        store.insert("x".to_string(), String::new());
        let d = detail(l.store(&store));
        assert_eq!(d["loc"], json!(["body", "store"]));
        assert_eq!(d["ctx"]["actual_bytes"], 11);
    }
}
