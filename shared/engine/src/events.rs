//! Event triggers: graphs started by messages on subjects their EVENT
//! triggers bind (see [`EventBinding`]).
//!
//! The inbound stream (`EXO_INBOUND`, a work queue) captures the union of
//! every VALID template's bound subjects; the `api` brings it up to date
//! when it stores a template, and every `trigger` replica does so at start
//! and every few seconds (which also heals a race between two upserts).
//! The `trigger` replicas share one durable consumer on it: each message is
//! matched against the bindings and starts one run per bound graph, its
//! run id derived from the message's idempotency key (or its place in the
//! stream), so a redelivery, a second replica or a repeated key starts
//! nothing twice, forever.

use exo_store::Store;
use exo_store::mongodb::bson::doc;
use exo_types::graph::EventBinding;
use exo_types::ids;
use exo_types::messages::{RunRequest, TriggerCommand};
use exo_types::names::RunId;
use exo_types::subject_pattern;
use futures::TryStreamExt;
use serde_json::Value;
use std::collections::BTreeMap;

use crate::graphs::LoadedGraph;
use crate::{Engine, Error};

/// One EVENT trigger of one graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Bound {
    /// The graph's namespace.
    pub ns: String,
    /// The graph's name.
    pub graph: String,
    /// What it binds.
    pub binding: EventBinding,
}

/// Every binding of the VALID templates.
pub async fn bindings(store: &Store) -> Result<Vec<Bound>, Error> {
    let valid = exo_types::status::ValidationStatus::Valid.as_str();
    let filter = doc! {"validation_status": valid, "triggers.type": "EVENT"};
    let mut cur = store.graph_templates().find(filter).await?;
    let mut out = Vec::new();
    while let Some(t) = cur.try_next().await? {
        for binding in t.spec().event_bindings() {
            out.push(Bound {
                ns: t.namespace.clone(),
                graph: t.name.clone(),
                binding,
            });
        }
    }
    Ok(out)
}

/// Makes the inbound stream capture every bound subject; answers the
/// bindings.
pub async fn sync_inbound(engine: &Engine) -> Result<Vec<Bound>, Error> {
    let bound = bindings(&engine.store).await?;
    let subjects =
        subject_pattern::stream_subjects(bound.iter().map(|b| b.binding.subject.as_str()));
    engine.bus.ensure_inbound(&subjects).await?;
    Ok(bound)
}

/// One message of the inbound stream.
#[derive(Debug, Clone)]
pub struct Inbound<'a> {
    /// Its subject.
    pub subject: &'a str,
    /// Its body.
    pub payload: &'a [u8],
    /// Its `Nats-Msg-Id` header.
    pub msg_id: Option<&'a str>,
    /// Where it is in the stream: the stream's creation time and the
    /// message's sequence (a recreated stream numbers from 1 again).
    pub place: (i64, u64),
}

/// The trigger command that starts `bound`'s graph (`lg`) for `msg`, or
/// why the message cannot start it.
pub fn command(
    bound: &Bound,
    lg: &LoadedGraph,
    msg: &Inbound<'_>,
    now_ms: i64,
) -> Result<TriggerCommand, String> {
    let body: Option<Value> = serde_json::from_slice(msg.payload).ok();
    let text = String::from_utf8_lossy(msg.payload);
    let at = |pointer: &str| -> Option<String> {
        if pointer.is_empty() {
            return Some(text.to_string());
        }
        body.as_ref()?.pointer(pointer).map(as_text)
    };
    let b = &bound.binding;
    let wants_body = [b.inputs.as_ref(), b.store.as_ref()]
        .into_iter()
        .flatten()
        .flat_map(|m| m.values())
        .chain(b.idempotency_key.iter())
        .any(|p| !p.is_empty());
    if wants_body && !body.as_ref().is_some_and(Value::is_object) {
        return Err(format!("the event on {} is not a JSON object", msg.subject));
    }
    let root_inputs = lg.graph.root().inputs.keys().cloned().collect::<Vec<_>>();
    let store_keys = lg
        .doc
        .store_config
        .required_keys
        .iter()
        .chain(lg.doc.store_config.default_values.keys())
        .cloned()
        .collect::<Vec<_>>();
    let inputs = mapped(b.inputs.as_ref(), &root_inputs, &at);
    let store = mapped(b.store.as_ref(), &store_keys, &at);
    let key = match (msg.msg_id, &b.idempotency_key) {
        (Some(id), _) => Some(id.to_string()),
        (None, Some(p)) => {
            Some(at(p).ok_or_else(|| format!("the event has no idempotency key at {p:?}"))?)
        }
        (None, None) => None,
    };
    Ok(TriggerCommand {
        run_id: run_id(bound, key.as_deref(), msg.place),
        run: RunRequest {
            graph_name: bound.graph.clone(),
            inputs,
            store,
            start_delay_ms: 0,
        },
        requested_at_ms: Some(now_ms),
    })
}

/// The values of an explicit `mapping` (name → pointer, absent values
/// left out), or of each of `names` taken from the body's field of the same
/// name.
fn mapped(
    mapping: Option<&BTreeMap<String, String>>,
    names: &[String],
    at: &dyn Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    match mapping {
        Some(m) => m
            .iter()
            .filter_map(|(k, p)| Some((k.clone(), at(p)?)))
            .collect(),
        None => names
            .iter()
            .filter_map(|k| Some((k.clone(), at(&format!("/{}", escape(k)))?)))
            .collect(),
    }
}

/// A JSON Pointer token for `key` (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A string as it is; other JSON as its text.
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The run a message starts for a bound graph: from its idempotency key,
/// else from its place in the stream.
pub fn run_id(bound: &Bound, key: Option<&str>, (created, seq): (i64, u64)) -> RunId {
    match key {
        Some(k) => ids::idempotent_run_id(&bound.ns, &bound.graph, k),
        None => ids::derived_run_id(&[
            "inbound",
            "v1",
            &bound.ns,
            &bound.graph,
            &created.to_string(),
            &seq.to_string(),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use exo_store::GraphTemplateDoc;
    use exo_store::mongodb::bson::DateTime;
    use exo_types::graph::{Graph, GraphSpec};
    use serde_json::json;
    use std::collections::HashMap;

    /// A graph whose root reads inputs `text` and `raw`, with store keys
    /// `who` (required) and `tail` (default).
    fn loaded() -> LoadedGraph {
        let spec: GraphSpec = serde_json::from_value(json!({
            "secrets": {},
            "store_config": {"required_keys": ["who"], "default_values": {"tail": "!"}},
            "nodes": [{"node_name": "A", "namespace": "ns", "identifier": "a",
                       "inputs": {"text": "x", "raw": "y"}}]
        }))
        .expect("spec");
        let graph = Graph::analyse(&spec).expect("valid graph");
        let now = DateTime::now();
        LoadedGraph {
            doc: GraphTemplateDoc {
                id: None,
                name: "g".into(),
                namespace: "ns".into(),
                nodes: spec.nodes.clone(),
                validation_status: "VALID".into(),
                validation_errors: vec![],
                secrets: Default::default(),
                triggers: vec![],
                retry_policy: Default::default(),
                store_config: spec.store_config.clone(),
                webhooks: vec![],
                created_at: now,
                updated_at: now,
            },
            graph,
            nodes: HashMap::new(),
            version: "v".into(),
        }
    }

    fn bound(value: Value) -> Bound {
        Bound {
            ns: "ns".into(),
            graph: "g".into(),
            binding: serde_json::from_value(value).expect("binding"),
        }
    }

    fn inbound<'a>(payload: &'a str, msg_id: Option<&'a str>, seq: u64) -> Inbound<'a> {
        Inbound {
            subject: "orders.created",
            payload: payload.as_bytes(),
            msg_id,
            place: (7, seq),
        }
    }

    #[test]
    fn without_mappings_fields_of_the_same_name_fill_inputs_and_store() {
        let b = bound(json!({"subject": "orders.*"}));
        let body = r#"{"text": "hi", "who": "ann", "tail": 3, "other": true}"#;
        let cmd = command(&b, &loaded(), &inbound(body, None, 1), 0).expect("command");
        assert_eq!(
            cmd.run.inputs,
            BTreeMap::from([("text".into(), "hi".into())])
        );
        let store = BTreeMap::from([("who".into(), "ann".into()), ("tail".into(), "3".into())]);
        assert_eq!(cmd.run.store, store);
        assert_eq!(cmd.run.graph_name, "g");
    }

    #[test]
    fn mappings_read_pointers_and_the_whole_body() {
        let b = bound(json!({"subject": "orders.*",
            "inputs": {"text": "/order/name", "raw": ""}, "store": {"who": "/customer"}}));
        let body = r#"{"order": {"name": "book"}, "customer": "bo", "text": "unused"}"#;
        let cmd = command(&b, &loaded(), &inbound(body, None, 1), 0).expect("command");
        assert_eq!(cmd.run.inputs["text"], "book");
        assert_eq!(cmd.run.inputs["raw"], body);
        assert_eq!(cmd.run.store, BTreeMap::from([("who".into(), "bo".into())]));
        // Not JSON: only the whole body can be read.
        assert!(command(&b, &loaded(), &inbound("plain text", None, 1), 0).is_err());
        let raw_only = bound(json!({"subject": "orders.*", "inputs": {"raw": ""}}));
        let cmd = command(&raw_only, &loaded(), &inbound("plain text", None, 1), 0).expect("raw");
        assert_eq!(cmd.run.inputs["raw"], "plain text");
    }

    #[test]
    fn run_ids_follow_the_key_then_the_place_in_the_stream() {
        let keyed = bound(json!({"subject": "o", "idempotency_key": "/id"}));
        let g = loaded();
        let run = |b: &Bound, body: &str, msg_id, seq| {
            command(b, &g, &inbound(body, msg_id, seq), 0).map(|c| c.run_id)
        };
        let a = run(&keyed, r#"{"id": "k1"}"#, None, 1);
        assert_eq!(a, run(&keyed, r#"{"id": "k1", "x": 1}"#, None, 2));
        assert_eq!(a, Ok(ids::idempotent_run_id("ns", "g", "k1")));
        // The header wins over the field.
        assert_eq!(
            run(&keyed, r#"{"id": "k1"}"#, Some("h"), 3),
            Ok(ids::idempotent_run_id("ns", "g", "h"))
        );
        assert!(
            run(&keyed, r#"{"no": "id"}"#, None, 4)
                .unwrap_err()
                .contains("no idempotency key")
        );
        let plain = bound(json!({"subject": "o"}));
        assert_eq!(run(&plain, "{}", None, 5), run(&plain, "{}", None, 5));
        assert_ne!(run(&plain, "{}", None, 5), run(&plain, "{}", None, 6));
    }
}
