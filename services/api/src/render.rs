//! Rendering helpers shared by the handlers.

use axum::Json;
use exo_store::StateDoc;
use exo_store::mongodb::Collection;
use exo_store::mongodb::bson::{DateTime, Document, oid::ObjectId};
use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::error::ApiResult;

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

/// A stored document listed per namespace (graph templates, registered
/// nodes), answered as Exosphere does: its fields, with `_id` in hex (null
/// when absent) and `created_at` / `updated_at` in naive ISO.
pub trait NamedDoc: serde::Serialize + DeserializeOwned + Send + Sync {
    /// Its id and its creation and update times.
    fn meta(&self) -> (Option<ObjectId>, DateTime, DateTime);

    /// The answer's JSON object.
    fn to_json(&self) -> Value {
        let mut m = match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let (id, created_at, updated_at) = self.meta();
        m.insert("_id".into(), json!(id.map(|i| i.to_hex())));
        m.insert("created_at".into(), iso(created_at).into());
        m.insert("updated_at".into(), iso(updated_at).into());
        Value::Object(m)
    }
}

impl NamedDoc for exo_store::GraphTemplateDoc {
    fn meta(&self) -> (Option<ObjectId>, DateTime, DateTime) {
        (self.id, self.created_at, self.updated_at)
    }
}

impl NamedDoc for exo_store::RegisteredNodeDoc {
    fn meta(&self) -> (Option<ObjectId>, DateTime, DateTime) {
        (self.id, self.created_at, self.updated_at)
    }
}

/// `{"namespace", "count", <key>: [...]}`: every document of `coll` in
/// namespace `ns`.
pub async fn list_in_namespace<T: NamedDoc>(
    coll: Collection<T>,
    ns: String,
    key: &str,
) -> ApiResult<Json<Value>> {
    let mut cur = coll
        .find(exo_store::mongodb::bson::doc! {"namespace": &ns})
        .await?;
    let mut items = Vec::new();
    while let Some(d) = cur.try_next().await? {
        items.push(d.to_json());
    }
    Ok(Json(
        json!({"namespace": ns, "count": items.len(), key: items}),
    ))
}
