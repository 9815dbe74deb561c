//! Registry verification (background, spec §12.2): templates against
//! the nodes their runtimes registered.

use super::analysis::Graph;
use super::model::NodeTemplate;
use crate::placeholder::{Dependency, DependentString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// What the registry knows about a node (spec §13).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredNodeSchema {
    /// Node name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// JSON Schema of the inputs; its `properties` are the input fields.
    pub inputs_schema: Value,
    /// JSON Schema of the outputs.
    pub outputs_schema: Value,
    /// Names of the secrets the node needs.
    pub secrets: Vec<String>,
}

/// The `properties` keys of a JSON schema, in order (empty when absent).
pub fn input_fields(schema: &Value) -> Vec<String> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|props| props.keys().cloned().collect())
        .unwrap_or_default()
}

/// Whether a property schema describes exactly a string: `"type": "string"`
/// (annotations such as `title`, `description` or a `default` allowed), and
/// no `enum`, `const` or `format`, which upstream's converter maps to
/// non-`str` types.
pub fn is_string_property(property: &Value) -> bool {
    property.get("type").and_then(Value::as_str) == Some("string")
        && ["enum", "const", "format"]
            .iter()
            .all(|k| property.get(*k).is_none())
}

fn property<'a>(schema: &'a Value, field: &str) -> Option<&'a Value> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .and_then(|props| props.get(field))
}

/// The three checks of spec §12.2 (node existence, secrets, inputs) against
/// the registry, with upstream's messages, in first-appearance order.
/// `lookup(namespace, node_name)` is called at most once per pair.
pub fn verify_against_registry(
    graph: &Graph,
    lookup: impl Fn(&str, &str) -> Option<RegisteredNodeSchema>,
) -> Vec<String> {
    let nodes = graph.nodes();
    let mut pair_index: HashMap<(&str, &str), usize> = HashMap::new();
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    let mut schemas: Vec<Option<RegisteredNodeSchema>> = Vec::new();
    let mut node_pair: Vec<usize> = Vec::with_capacity(nodes.len());
    for node in nodes {
        let key = (node.namespace.as_str(), node.node_name.as_str());
        let at = *pair_index.entry(key).or_insert_with(|| {
            pairs.push(key);
            schemas.push(lookup(key.0, key.1));
            pairs.len() - 1
        });
        node_pair.push(at);
    }
    let node_schema: Vec<Option<&RegisteredNodeSchema>> = node_pair
        .iter()
        .map(|&at| schemas.get(at).and_then(Option::as_ref))
        .collect();

    let mut errors = Vec::new();
    // 1. verify_node_exists
    for ((ns, name), schema) in pairs.iter().zip(&schemas) {
        if schema.is_none() {
            errors.push(format!("Node {name} in namespace {ns} does not exist."));
        }
    }
    verify_secrets(graph, &schemas, &mut errors);
    // 3. verify_inputs
    for (node, schema) in nodes.iter().zip(&node_schema) {
        let Some(schema) = schema else {
            errors.push(format!(
                "Node {} in namespace {} does not exist",
                node.node_name, node.namespace
            ));
            continue;
        };
        verify_declared_inputs(node, schema, &mut errors);
        verify_referenced_outputs(graph, node, &node_schema, &mut errors);
    }
    errors
}

/// 2. verify_secrets: every secret a registered node needs is in the graph.
fn verify_secrets(
    graph: &Graph,
    schemas: &[Option<RegisteredNodeSchema>],
    errors: &mut Vec<String>,
) {
    let mut required_secrets: Vec<&str> = Vec::new();
    for schema in schemas.iter().flatten() {
        for secret in &schema.secrets {
            if !required_secrets.contains(&secret.as_str()) {
                required_secrets.push(secret);
            }
        }
    }
    for secret in required_secrets {
        if !graph.spec().secrets.contains_key(secret) {
            errors.push(format!(
                "Secret {secret} is required but not present in the graph template"
            ));
        }
    }
}

/// Every input the node's schema declares is a string and is given.
fn verify_declared_inputs(
    node: &NodeTemplate,
    schema: &RegisteredNodeSchema,
    errors: &mut Vec<String>,
) {
    let (name, ns) = (&node.node_name, &node.namespace);
    for field in input_fields(&schema.inputs_schema) {
        let is_string = property(&schema.inputs_schema, &field).is_some_and(is_string_property);
        if !is_string {
            errors.push(format!(
                "Input {field} in node {name} in namespace {ns} is not a string"
            ));
        }
        if !node.inputs.contains_key(&field) {
            errors.push(format!(
                "Input {field} in node {name} in namespace {ns} is not present in the graph template"
            ));
        }
    }
}

/// Every output an input references exists in its node's output schema
/// and is a string (each reference checked once).
fn verify_referenced_outputs(
    graph: &Graph,
    node: &NodeTemplate,
    node_schema: &[Option<&RegisteredNodeSchema>],
    errors: &mut Vec<String>,
) {
    let mut seen = HashSet::new();
    let references = node
        .inputs
        .values()
        .filter_map(|v| v.as_str().and_then(|s| DependentString::parse(s).ok()));
    for parsed in references {
        for dependency in parsed.dependencies() {
            let Dependency::Output { identifier, field } = dependency else {
                continue;
            };
            if !seen.insert((identifier.clone(), field.clone())) {
                continue;
            }
            let Some(&position) = graph.index.get(identifier) else {
                errors.push(format!(
                    "Node {identifier} does not exist in the graph template"
                ));
                continue;
            };
            let source = &graph.nodes()[position];
            let (src_name, src_ns) = (&source.node_name, &source.namespace);
            let Some(source_schema) = node_schema.get(position).copied().flatten() else {
                errors.push(format!(
                    "Node {src_name} in namespace {src_ns} does not exist"
                ));
                continue;
            };
            match property(&source_schema.outputs_schema, field) {
                None => errors.push(format!(
                    "Field {field} in node {src_name} in namespace {src_ns} does not exist"
                )),
                Some(p) if !is_string_property(p) => errors.push(format!(
                    "Field {field} in node {src_name} in namespace {src_ns} is not a string"
                )),
                Some(_) => {}
            }
        }
    }
}
