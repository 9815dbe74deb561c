//! Building successor states: lineage, input resolution and schema checks.
//!
//! Errors are plain strings: they are deterministic for the given template and
//! data, and become the `error` of a NEXT_CREATED_ERROR state.

use exo_types::names::{Namespace, NodeName, RunId};
use std::collections::HashMap;

use exo_store::StateDoc;
use exo_store::mongodb::bson::{self, Bson, DateTime, Document, oid::ObjectId};
use exo_types::graph::NodeTemplate;
use exo_types::placeholder::{Dependency, DependentString};

use crate::graphs::LoadedGraph;

/// What input resolution may read.
pub struct Sources<'a> {
    /// The analysed template and its registered nodes.
    pub graph: &'a LoadedGraph,
    /// The run's store entries.
    pub store: &'a HashMap<String, String>,
    /// Ancestor states by id (only those referenced need to be present).
    pub ancestors: &'a HashMap<ObjectId, StateDoc>,
}

/// Identifiers of ancestors whose outputs the templates `next` read, other
/// than `current` itself.
pub fn referenced_ancestors<'t>(
    templates: impl IntoIterator<Item = &'t NodeTemplate>,
    current: &str,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in templates {
        for v in t.inputs.values() {
            let Some(s) = v.as_str() else { continue };
            let Ok(ds) = DependentString::parse(s) else {
                continue;
            };
            for d in ds.dependencies() {
                if let Dependency::Output { identifier, .. } = d
                    && identifier != current
                    && !out.contains(identifier)
                {
                    out.push(identifier.clone());
                }
            }
        }
    }
    out
}

/// Whether any input of the templates `next` reads the run's store (so
/// that the store is loaded only when a successor needs it).
pub fn reads_store<'t>(templates: impl IntoIterator<Item = &'t NodeTemplate>) -> bool {
    templates.into_iter().any(|t| {
        t.inputs.values().any(|v| {
            v.as_str()
                .and_then(|s| DependentString::parse(s).ok())
                .is_some_and(|ds| {
                    ds.dependencies()
                        .any(|d| matches!(d, Dependency::Store { .. }))
                })
        })
    })
}

fn output_string(doc: &Document, field: &str, owner: &str) -> Result<String, String> {
    match doc.get(field) {
        Some(Bson::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "Output field '{field}' on state '{owner}' is not a string (got {})",
            other.element_type() as u8
        )),
        None => Err(format!(
            "Output field '{field}' not found on state '{owner}'"
        )),
    }
}

/// Resolves the inputs of template `tmpl` for a successor of `current`.
pub fn resolve_inputs(
    src: &Sources<'_>,
    tmpl: &NodeTemplate,
    current: &StateDoc,
) -> Result<Document, String> {
    let key = (tmpl.namespace.clone(), tmpl.node_name.clone());
    let Some(schema) = src.graph.nodes.get(&key) else {
        return Err(format!(
            "Registered node not found for node {} in namespace {}",
            tmpl.node_name, tmpl.namespace
        ));
    };
    let mut inputs = serde_json::Map::new();
    for field in &schema.input_fields {
        let Some(raw) = tmpl.inputs.get(field) else {
            return Err(format!(
                "Field '{field}' not found in inputs for template '{}'",
                tmpl.identifier
            ));
        };
        let Some(raw) = raw.as_str() else {
            return Err(format!(
                "Input {field} of '{}' is not a string",
                tmpl.identifier
            ));
        };
        let ds = DependentString::parse(raw).map_err(|e| e.to_string())?;
        let mut failure = None;
        let value = ds.render(|dep| match dep {
            Dependency::Store { key } => match src.store.get(key) {
                Some(v) => Some(v.clone()),
                None => match src.graph.doc.store_config.default_values.get(key) {
                    Some(v) => Some(v.clone()),
                    None => {
                        failure = Some(format!("Store value not found for field '{key}'"));
                        None
                    }
                },
            },
            Dependency::Output { identifier, field } => {
                let r = if identifier == &current.identifier {
                    output_string(&current.outputs, field, identifier)
                } else {
                    match current.parents.get(identifier).and_then(Bson::as_object_id) {
                        None => Err(format!("Identifier '{identifier}' not found in parents")),
                        Some(id) => match src.ancestors.get(&id) {
                            None => Err(format!("Parent state '{identifier}' ({id}) not found")),
                            Some(p) => output_string(&p.outputs, field, identifier),
                        },
                    }
                };
                match r {
                    Ok(v) => Some(v),
                    Err(e) => {
                        failure = Some(e);
                        None
                    }
                }
            }
        });
        let value = match (value, failure) {
            (_, Some(f)) => return Err(f),
            (Err(e), None) => return Err(e.to_string()),
            (Ok(v), None) => v,
        };
        inputs.insert(field.clone(), serde_json::Value::String(value));
    }
    let instance = serde_json::Value::Object(inputs);
    if let Some(v) = &schema.validator
        && let Some(err) = v.iter_errors(&instance).next()
    {
        return Err(format!(
            "Inputs of '{}' do not match the inputs schema of {}: {err}",
            tmpl.identifier, tmpl.node_name
        ));
    }
    bson::to_document(&instance).map_err(|e| e.to_string())
}

/// Lineage of a successor of `current`: its parents plus itself, last.
pub fn lineage(current: &StateDoc) -> Document {
    let mut parents = current.parents.clone();
    parents.remove(&current.identifier);
    parents.insert(current.identifier.clone(), current.id);
    parents
}

/// Where a new state lives: its graph's namespace and name, and its run.
pub struct Placement<'a> {
    /// Namespace of the graph.
    pub graph_ns: &'a str,
    /// Run id.
    pub run_id: &'a RunId,
    /// Graph name.
    pub graph_name: &'a str,
    /// Template version the run executes.
    pub graph_version: Option<&'a str>,
}

impl<'a> Placement<'a> {
    /// The placement of `state` (its successors live in the same run).
    pub fn of(state: &'a StateDoc) -> Self {
        Self {
            graph_ns: state.graph_ns(),
            run_id: &state.run_id,
            graph_name: &state.graph_name,
            graph_version: state.graph_version.as_deref(),
        }
    }
}

/// A new CREATED state for `tmpl` with the given id, inputs and lineage.
pub fn new_state(
    id: ObjectId,
    tmpl: &NodeTemplate,
    place: &Placement<'_>,
    inputs: Document,
    parents: Document,
    does_unites: bool,
    now_ms: i64,
) -> StateDoc {
    let now = DateTime::from_millis(now_ms);
    let mut s = StateDoc {
        id,
        node_name: NodeName::trusted(&tmpl.node_name),
        namespace_name: Namespace::trusted(&tmpl.namespace),
        identifier: tmpl.identifier.clone(),
        graph_name: place.graph_name.to_string(),
        run_id: place.run_id.clone(),
        status: exo_types::status::StateStatus::Created,
        inputs,
        outputs: Document::new(),
        data: Document::new(),
        error: None,
        parents,
        does_unites,
        state_fingerprint: String::new(),
        enqueue_after: now_ms,
        retry_count: 0,
        fanout_id: id.to_hex(),
        manual_retry_fanout_id: String::new(),
        created_at: now,
        updated_at: now,
        graph_namespace: Some(place.graph_ns.to_string()),
        graph_version: place.graph_version.map(str::to_string),
        attempt: 0,
        requeue_gen: 0,
        result_digest: None,
        fanout_chunk: None,
        claim_seq: None,
        queued_by: None,
    };
    if does_unites {
        s.state_fingerprint = fingerprint(&s);
    }
    s
}

/// The unites fingerprint of a state (spec §5.6).
pub fn fingerprint(s: &StateDoc) -> String {
    let parents: Vec<(String, String)> = s
        .parents
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_object_id().map(|o| o.to_hex()).unwrap_or_default(),
            )
        })
        .collect();
    exo_types::graph::unites_fingerprint(
        &s.node_name,
        &s.namespace_name,
        &s.identifier,
        &s.graph_name,
        &s.run_id,
        s.retry_count,
        &parents,
        &s.manual_retry_fanout_id,
    )
}
