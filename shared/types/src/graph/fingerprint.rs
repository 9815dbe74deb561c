//! The unites fingerprint (spec §5.6) and the canonical JSON it hashes.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// The `state_fingerprint` of a unites state: SHA-256 hex of the canonical
/// JSON (sorted keys, compact separators, `ensure_ascii`) of
/// `{node_name, namespace_name, identifier, graph_name, run_id, retry_count,
/// parents, manual_retry_fanout_id}`. `parents` maps identifier → state id
/// hex (a repeated identifier keeps its last value, like a Python dict).
#[allow(clippy::too_many_arguments)]
pub fn unites_fingerprint(
    node_name: &str,
    namespace_name: &str,
    identifier: &str,
    graph_name: &str,
    run_id: &str,
    retry_count: i64,
    parents: &[(String, String)],
    manual_retry_fanout_id: &str,
) -> String {
    let parents: Map<String, Value> = parents
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let object = serde_json::json!({
        "node_name": node_name,
        "namespace_name": namespace_name,
        "identifier": identifier,
        "graph_name": graph_name,
        "run_id": run_id,
        "retry_count": retry_count,
        "parents": parents,
        "manual_retry_fanout_id": manual_retry_fanout_id,
    });
    let digest = Sha256::digest(canonical_json(&object).as_bytes());
    hex::encode(digest)
}

/// Python `json.dumps(v, sort_keys=True, separators=(",", ":"),
/// ensure_ascii=True)`.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_ascii_json_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_ascii_json_string(k, out);
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
    }
}

fn write_ascii_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}
