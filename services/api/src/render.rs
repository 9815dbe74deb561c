//! Rendering helpers shared by the handlers.

use exo_store::StateDoc;
use exo_store::mongodb::bson::{DateTime, Document, oid::ObjectId};
use serde_json::Value;

/// A stored datetime rendered as Exosphere does (naive ISO, spec §0).
pub fn iso(dt: DateTime) -> String {
    exo_types::time::format_naive_iso(exo_types::time::from_ms(dt.timestamp_millis()))
}

/// An optional stored datetime, `null` when absent.
pub fn iso_opt(dt: Option<DateTime>) -> Value {
    dt.map_or(Value::Null, |d| Value::String(iso(d)))
}

/// A BSON document as a JSON object (relaxed extended JSON).
pub fn doc_json(d: &Document) -> Value {
    Value::Object(exo_engine::common::to_json_map(d))
}

/// Parses a 24-hex state id.
pub fn parse_oid(s: &str) -> Option<ObjectId> {
    exo_types::ids::parse_hex(s).map(ObjectId::from_bytes)
}

/// Whether a state belongs to namespace `ns` (its node's namespace or its
/// graph's namespace).
pub fn in_namespace(st: &StateDoc, ns: &str) -> bool {
    st.namespace_name == ns || st.graph_ns() == ns
}

/// `parents` as identifier → id string.
pub fn parents_json(st: &StateDoc) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in &st.parents {
        let s = match v.as_object_id() {
            Some(o) => o.to_hex(),
            None => v.to_string(),
        };
        m.insert(k.clone(), Value::String(s));
    }
    Value::Object(m)
}
