//! Graph templates: the upsert request model, field-level (422) validation,
//! model-level analysis (400) and registry verification (spec §2.9, §5.2,
//! §5.6, §9, §10, §11, §12).
//!
//! # Deliberate differences from upstream Exosphere
//!
//! Upstream computes each node's "static parents" with a DFS whose result
//! depends on the order of `next_nodes` (spec §5.2). This module fixes those
//! defects on purpose:
//!
//! 1. **Order-independent ancestors.** For a plain edge `X → Y`, `Y` may
//!    reference what is guaranteed to be in *every* runtime lineage that
//!    reaches `Y`: `ancestors(Y) = ⋂ over incoming edges X of (ancestors(X) ∪
//!    {X})`, computed over a topological order. For the diamond `a → b → d`,
//!    `a → c → d` this gives `{a}` (upstream: `{a, b, c}`, although each
//!    runtime copy of `d` has only one of `b`/`c` in its lineage), and `d`'s
//!    children consistently get `{a, d}` (upstream: `{a, b, d}`, missing `c`).
//! 2. **Unites lineage.** A unites node `N` (target `U`) is created with the
//!    lineage of `U` plus `U`, so `ancestors(N) = ancestors(U) ∪ {U}` whichever
//!    node lists `N` in `next_nodes` and in whatever order. Children of `N`
//!    are always analysed (upstream never traversed them when `N` was seen
//!    before `U`, reporting them as "not connected to the root node") and see
//!    `ancestors(N) ∪ {N}` (upstream omitted `N` itself).
//! 3. **Unites nodes outside their target's subtree are accepted.** A
//!    unites node may be listed in `next_nodes` by its own target (`U → N`,
//!    `N unites U`) or by a node whose lineage does not contain `U`
//!    (`n1 → [n2, n3]`, `n3 unites n2`, a verified example of spec §5.2).
//!    Both pass validation, as upstream; upstream then always fails at
//!    runtime with "Unit identifier not found in parents", whereas the
//!    re-implementation's runtime is expected to evaluate unites by target
//!    (see [`Graph::unites_targeting`]).
//! 4. **Connectivity** is plain reachability from the root along
//!    `next_nodes` edges. Upstream's "Error building dependency graph: Graph
//!    is disconnected at: {...}" (parked unites nodes) can no longer happen.
//! 5. **Acyclicity** is checked on `next_nodes` edges plus `target → unites
//!    node` edges; every node on a cycle gets "Node X is not acyclic", also
//!    when the cycle leaves no root (upstream then only reports "found 0 nodes
//!    with zero in-degree").
//! 6. **All errors are reported.** [`Graph::analyse`] runs every rule and
//!    returns every message, instead of stopping at the first failing rule
//!    or, within the input rule, at the first bad input.
//! 7. **Registry verification uses the new definition only** (upstream's
//!    stale caches on the update path, spec §12.2, are not reproduced), and
//!    its error order is deterministic (first appearance) instead of
//!    Python's set order.

use crate::cron;
use crate::placeholder::{Dependency, DependentString};
use crate::retry::RetryPolicy;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;

/// The identifier no node may use: it designates the per-run store in
/// placeholders.
pub const RESERVED_IDENTIFIER: &str = crate::placeholder::STORE_IDENTIFIER;

// ---------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------

/// When a unites node fires (spec §5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum UnitesStrategy {
    /// Fire when every state of the group is SUCCESS or RETRY_CREATED.
    #[default]
    #[serde(rename = "ALL_SUCCESS")]
    AllSuccess,
    /// Fire when no state of the group is CREATED, QUEUED or EXECUTED.
    #[serde(rename = "ALL_DONE")]
    AllDone,
}

/// The `unites` clause of a node template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unites {
    /// Identifier of the node whose descendants are awaited.
    pub identifier: String,
    /// Completion rule, `ALL_SUCCESS` by default.
    #[serde(default)]
    pub strategy: UnitesStrategy,
}

/// One node of a graph template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeTemplate {
    /// Registered node name (trimmed, non-empty).
    pub node_name: String,
    /// Namespace of the registered node (not validated).
    pub namespace: String,
    /// Identifier of the node in this graph (trimmed, non-empty, not `store`).
    pub identifier: String,
    /// Input values, in request order; they must be strings.
    pub inputs: Map<String, Value>,
    /// Identifiers of the children, or `null`; written back as `[]` when
    /// null or absent, as upstream answers (the dashboard reads
    /// `next_nodes.length` of every node).
    #[serde(default, serialize_with = "null_as_empty")]
    pub next_nodes: Option<Vec<String>>,
    /// Synchronisation clause, or `null`.
    #[serde(default)]
    pub unites: Option<Unites>,
    /// Retry policy of this node, overriding the graph's (an extension:
    /// Exosphere has only the per-graph policy). Omitted when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
}

fn null_as_empty<S: serde::Serializer>(v: &Option<Vec<String>>, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(v.as_deref().unwrap_or(&[]), s)
}

impl NodeTemplate {
    /// The children identifiers (empty when `next_nodes` is null).
    pub fn next(&self) -> &[String] {
        self.next_nodes.as_deref().unwrap_or(&[])
    }
}

/// Per-run store configuration (spec §9).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// Keys the trigger request must provide.
    pub required_keys: Vec<String>,
    /// Values used when the run's store lacks a key.
    pub default_values: BTreeMap<String, String>,
}

impl StoreConfig {
    /// Whether `key` is a required key or has a default value.
    pub fn declares(&self, key: &str) -> bool {
        self.required_keys.iter().any(|k| k == key) || self.default_values.contains_key(key)
    }
}

/// Kind of a graph trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TriggerType {
    /// A cron schedule; `value.expression` holds the expression.
    #[serde(rename = "CRON")]
    Cron,
}

/// A graph trigger, `{type: "CRON", value: {expression}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// Trigger kind.
    #[serde(rename = "type")]
    pub kind: TriggerType,
    /// Kind-specific settings; other keys are ignored.
    #[serde(default)]
    pub value: Map<String, Value>,
}

impl Trigger {
    /// The cron expression of a CRON trigger, when present and a string.
    pub fn cron_expression(&self) -> Option<&str> {
        match self.kind {
            TriggerType::Cron => self.value.get("expression").and_then(Value::as_str),
        }
    }
}

/// The body of `PUT /graph/{name}`: `secrets` and `nodes` are required, the
/// rest defaults. Secrets are plaintext here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphSpec {
    /// Node templates, in request order.
    pub nodes: Vec<NodeTemplate>,
    /// Secret name → plaintext value.
    pub secrets: BTreeMap<String, String>,
    /// Retry policy for every node of the graph.
    #[serde(default)]
    pub retry_policy: RetryPolicy,
    /// Store configuration.
    #[serde(default)]
    pub store_config: StoreConfig,
    /// Triggers.
    #[serde(default)]
    pub triggers: Vec<Trigger>,
}

impl GraphSpec {
    /// Trims what upstream stores trimmed: node names, identifiers,
    /// `next_nodes` entries, unites identifiers, and store keys (required
    /// keys and default-value keys; on a collision after trimming the last
    /// key in sorted order wins, [`validate_fields`] reports the duplicate).
    pub fn normalize(&mut self) {
        for node in &mut self.nodes {
            trim_in_place(&mut node.node_name);
            trim_in_place(&mut node.identifier);
            if let Some(next) = &mut node.next_nodes {
                next.iter_mut().for_each(trim_in_place);
            }
            if let Some(unites) = &mut node.unites {
                trim_in_place(&mut unites.identifier);
            }
        }
        self.store_config
            .required_keys
            .iter_mut()
            .for_each(trim_in_place);
        let defaults = std::mem::take(&mut self.store_config.default_values);
        self.store_config.default_values = defaults
            .into_iter()
            .map(|(k, v)| (k.trim().to_owned(), v))
            .collect();
    }

    /// The retry policy of node `identifier`: its own, else the graph's.
    pub fn retry_policy_for(&self, identifier: &str) -> &RetryPolicy {
        self.nodes
            .iter()
            .find(|n| n.identifier == identifier)
            .and_then(|n| n.retry_policy.as_ref())
            .unwrap_or(&self.retry_policy)
    }

    /// The distinct cron expressions of the CRON triggers, in order.
    pub fn cron_expressions(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.triggers
            .iter()
            .filter_map(Trigger::cron_expression)
            .filter(|e| seen.insert(*e))
            .collect()
    }
}

fn trim_in_place(s: &mut String) {
    let trimmed = s.trim();
    if trimmed.len() != s.len() {
        *s = trimmed.to_owned();
    }
}

// ---------------------------------------------------------------------------
// Field-level (422) validation
// ---------------------------------------------------------------------------

/// One element of a validation error location.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LocPart {
    /// An object key (serialised as a JSON string).
    Key(String),
    /// A list index (serialised as a JSON integer).
    Index(usize),
}

impl From<&str> for LocPart {
    fn from(s: &str) -> Self {
        LocPart::Key(s.to_owned())
    }
}

impl From<String> for LocPart {
    fn from(s: String) -> Self {
        LocPart::Key(s)
    }
}

impl From<usize> for LocPart {
    fn from(i: usize) -> Self {
        LocPart::Index(i)
    }
}

/// A field-level validation problem. The HTTP layer renders it as a FastAPI
/// 422 item, prefixing `loc` with `"body"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Location inside the request body (without the leading `"body"`).
    pub loc: Vec<LocPart>,
    /// Pydantic-style message, e.g. `"Value error, Invalid cron expression"`.
    pub msg: String,
}

impl FieldError {
    /// Builds an error from location parts and a message.
    pub fn new(loc: impl IntoIterator<Item = LocPart>, msg: impl Into<String>) -> Self {
        FieldError {
            loc: loc.into_iter().collect(),
            msg: msg.into(),
        }
    }

    /// A pydantic `value_error`: the message gets the `"Value error, "` prefix.
    pub fn value_error(loc: impl IntoIterator<Item = LocPart>, msg: &str) -> Self {
        FieldError::new(loc, format!("Value error, {msg}"))
    }

    /// The same error with `prefix` prepended to its location.
    pub fn prefixed(mut self, prefix: impl IntoIterator<Item = LocPart>) -> Self {
        let mut loc: Vec<LocPart> = prefix.into_iter().collect();
        loc.append(&mut self.loc);
        self.loc = loc;
        self
    }

    /// The pydantic error `type` matching the message (`value_error`,
    /// `missing`, `greater_than`, `greater_than_equal`, `string_type`).
    pub fn error_type(&self) -> &'static str {
        let m = self.msg.as_str();
        if m == "Field required" {
            "missing"
        } else if m.starts_with("Input should be greater than or equal to") {
            "greater_than_equal"
        } else if m.starts_with("Input should be greater than") {
            "greater_than"
        } else if m == "Input should be a valid string" {
            "string_type"
        } else {
            "value_error"
        }
    }

    /// The pydantic `ctx` object FastAPI renders for this error, if any
    /// (`{"error": {}}` for value errors, `{"gt": 0}` / `{"ge": 0}` for
    /// bounds).
    pub fn ctx(&self) -> Option<Value> {
        match self.error_type() {
            "value_error" => Some(serde_json::json!({ "error": {} })),
            "greater_than" => Some(serde_json::json!({ "gt": 0 })),
            "greater_than_equal" => Some(serde_json::json!({ "ge": 0 })),
            _ => None,
        }
    }
}

fn loc<const N: usize>(parts: [LocPart; N]) -> Vec<LocPart> {
    parts.into()
}

/// All field-level (HTTP 422) problems of an upsert body, all reported, in
/// the order nodes, retry policy, store config, triggers. Values are checked
/// trimmed, so this gives the same answer before and after
/// [`GraphSpec::normalize`].
pub fn validate_fields(spec: &GraphSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, node) in spec.nodes.iter().enumerate() {
        let at = |field: &str| loc(["nodes".into(), i.into(), field.into()]);
        if node.node_name.trim().is_empty() {
            errors.push(FieldError::value_error(
                at("node_name"),
                "Node name cannot be empty",
            ));
        }
        let identifier = node.identifier.trim();
        if identifier.is_empty() {
            errors.push(FieldError::value_error(
                at("identifier"),
                "Node identifier cannot be empty",
            ));
        } else if identifier == RESERVED_IDENTIFIER {
            errors.push(FieldError::value_error(
                at("identifier"),
                "Node identifier cannot be reserved word 'store'",
            ));
        }
        if let Some(next) = &node.next_nodes {
            let mut seen = HashSet::new();
            let mut problems = Vec::new();
            for entry in next {
                let entry = entry.trim();
                if entry.is_empty() {
                    problems.push("Next node identifier cannot be empty".to_owned());
                } else if !seen.insert(entry) {
                    problems.push(format!("Next node identifier {entry} is not unique"));
                }
            }
            if !problems.is_empty() {
                errors.push(FieldError::value_error(
                    at("next_nodes"),
                    &problems.join("\n"),
                ));
            }
        }
        if let Some(unites) = &node.unites
            && unites.identifier.trim().is_empty()
        {
            errors.push(FieldError::value_error(
                at("unites"),
                "Unites identifier cannot be empty",
            ));
        }
    }

    errors.extend(
        spec.retry_policy
            .validate()
            .into_iter()
            .map(|e| e.prefixed(["retry_policy".into()])),
    );
    for (i, node) in spec.nodes.iter().enumerate() {
        if let Some(p) = &node.retry_policy {
            errors.extend(p.validate().into_iter().map(|e| {
                e.prefixed([
                    LocPart::Key("nodes".into()),
                    LocPart::Index(i),
                    LocPart::Key("retry_policy".into()),
                ])
            }));
        }
    }

    let required = store_key_problems(spec.store_config.required_keys.iter().map(String::as_str));
    if !required.is_empty() {
        errors.push(FieldError::value_error(
            loc(["store_config".into(), "required_keys".into()]),
            &required.join("\n"),
        ));
    }
    let defaults = store_key_problems(spec.store_config.default_values.keys().map(String::as_str));
    if !defaults.is_empty() {
        errors.push(FieldError::value_error(
            loc(["store_config".into(), "default_values".into()]),
            &defaults.join("\n"),
        ));
    }

    for (i, trigger) in spec.triggers.iter().enumerate() {
        let mut value_ok = true;
        // Only the keys the trigger type reads are checked; upstream ignores
        // the others, whatever their type.
        for (key, value) in trigger.value.iter().filter(|(k, _)| *k == "expression") {
            if !value.is_string() {
                value_ok = false;
                errors.push(FieldError::new(
                    loc([
                        "triggers".into(),
                        i.into(),
                        "value".into(),
                        key.as_str().into(),
                    ]),
                    "Input should be a valid string",
                ));
            }
        }
        if !value_ok {
            continue;
        }
        let at = loc(["triggers".into(), i.into(), "expression".into()]);
        match trigger.kind {
            TriggerType::Cron => match trigger.cron_expression() {
                None => errors.push(FieldError::new(at, "Field required")),
                Some(expr) if !cron::is_valid(expr) => {
                    errors.push(FieldError::value_error(at, "Invalid cron expression"));
                }
                Some(_) => {}
            },
        }
    }
    errors
}

/// The store key rules of spec §9, applied to trimmed keys.
fn store_key_problems<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut problems = Vec::new();
    for key in keys {
        let key = key.trim();
        if key.is_empty() {
            problems.push("Key cannot be empty or contain only whitespace".to_owned());
        } else if key.contains('.') {
            problems.push(format!("Key '{key}' cannot contain '.' character"));
        } else if !seen.insert(key) {
            problems.push(format!("Key '{key}' is duplicated"));
        }
    }
    problems
}

// ---------------------------------------------------------------------------
// Model-level (400) analysis
// ---------------------------------------------------------------------------

static EMPTY_SET: BTreeSet<String> = BTreeSet::new();

/// An analysed, valid graph template: unique identifiers, one root, every
/// node reachable, acyclic, and every input placeholder resolvable.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    spec: GraphSpec,
    index: HashMap<String, usize>,
    root: usize,
    unites_targeting: HashMap<String, Vec<String>>,
    ancestors: HashMap<String, BTreeSet<String>>,
}

impl Graph {
    /// Runs the model-level rules of spec §12.1 on a normalised copy of
    /// `spec` (see [`GraphSpec::normalize`]) and returns every error found,
    /// each worded as upstream words it (plus the additions listed in the
    /// module docs).
    pub fn analyse(spec: &GraphSpec) -> Result<Graph, Vec<String>> {
        let mut spec = spec.clone();
        spec.normalize();
        let analysis = analyse_nodes(&spec);
        match analysis {
            Ok((index, root, ancestors)) => {
                let mut unites_targeting: HashMap<String, Vec<String>> = HashMap::new();
                for node in &spec.nodes {
                    if let Some(u) = &node.unites {
                        unites_targeting
                            .entry(u.identifier.clone())
                            .or_default()
                            .push(node.identifier.clone());
                    }
                }
                Ok(Graph {
                    spec,
                    index,
                    root,
                    unites_targeting,
                    ancestors,
                })
            }
            Err(errors) => Err(errors),
        }
    }

    /// The (normalised) template this graph was built from.
    pub fn spec(&self) -> &GraphSpec {
        &self.spec
    }

    /// All nodes, in template order.
    pub fn nodes(&self) -> &[NodeTemplate] {
        &self.spec.nodes
    }

    /// The root node (the only node with zero in-degree).
    pub fn root(&self) -> &NodeTemplate {
        &self.spec.nodes[self.root]
    }

    /// The node with this identifier.
    pub fn node(&self, identifier: &str) -> Option<&NodeTemplate> {
        self.index.get(identifier).map(|&i| &self.spec.nodes[i])
    }

    /// The `next_nodes` of `identifier` (empty for unknown identifiers).
    pub fn next_nodes(&self, identifier: &str) -> &[String] {
        self.node(identifier).map(NodeTemplate::next).unwrap_or(&[])
    }

    /// Identifiers of the unites nodes whose `unites.identifier` is
    /// `target_identifier`, in template order.
    pub fn unites_targeting(&self, target_identifier: &str) -> &[String] {
        self.unites_targeting
            .get(target_identifier)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The static ancestors of `identifier`: the nodes guaranteed to be in
    /// the lineage of every state of that node, i.e. those whose outputs its
    /// inputs may reference (empty for the root and unknown identifiers).
    pub fn ancestors(&self, identifier: &str) -> &BTreeSet<String> {
        self.ancestors.get(identifier).unwrap_or(&EMPTY_SET)
    }
}

type Analysis = (
    HashMap<String, usize>,
    usize,
    HashMap<String, BTreeSet<String>>,
);

fn analyse_nodes(spec: &GraphSpec) -> Result<Analysis, Vec<String>> {
    let nodes = &spec.nodes;
    let n = nodes.len();
    let mut errors = Vec::new();

    // Secrets: names must be non-empty.
    if spec.secrets.keys().any(String::is_empty) {
        errors.push("Secrets cannot be empty".to_owned());
    }

    // Unique identifiers (the first occurrence owns the identifier).
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut reported = HashSet::new();
    for (i, node) in nodes.iter().enumerate() {
        if index.contains_key(&node.identifier) {
            if reported.insert(node.identifier.as_str()) {
                errors.push(format!("Node identifier {} is not unique", node.identifier));
            }
        } else {
            index.insert(node.identifier.clone(), i);
        }
    }

    // next_nodes entries exist.
    for node in nodes {
        for next in node.next() {
            if !index.contains_key(next) {
                errors.push(format!(
                    "Node identifier {next} does not exist in the graph"
                ));
            }
        }
    }

    // Unites targets exist and are not the node itself.
    let mut unites_target: Vec<Option<Option<usize>>> = vec![None; n];
    for (i, node) in nodes.iter().enumerate() {
        if let Some(u) = &node.unites {
            let target = if u.identifier == node.identifier {
                errors.push(format!(
                    "Node {0} has an unites target {0} that is the same as the node itself",
                    node.identifier
                ));
                None
            } else if let Some(&t) = index.get(&u.identifier) {
                Some(t)
            } else {
                errors.push(format!(
                    "Node {} has an unites target {} that does not exist",
                    node.identifier, u.identifier
                ));
                None
            };
            unites_target[i] = Some(target);
        }
    }

    // Edges by position.
    let next_edges: Vec<Vec<usize>> = nodes
        .iter()
        .map(|node| {
            node.next()
                .iter()
                .filter_map(|id| index.get(id).copied())
                .collect()
        })
        .collect();

    // Exactly one root; a unites node counts its target as a virtual parent.
    let mut in_degree = vec![0usize; n];
    for edges in &next_edges {
        for &t in edges {
            in_degree[t] += 1;
        }
    }
    for (i, target) in unites_target.iter().enumerate() {
        if target.is_some() {
            in_degree[i] += 1;
        }
    }
    let roots: Vec<usize> = (0..n).filter(|&i| in_degree[i] == 0).collect();
    let root = match roots.as_slice() {
        [r] => Some(*r),
        _ => {
            let names: Vec<String> = roots
                .iter()
                .map(|&i| py_repr_str(&nodes[i].identifier))
                .collect();
            errors.push(format!(
                "There should be exactly one root node in the graph but found {} nodes with zero in-degree: [{}]",
                roots.len(),
                names.join(", ")
            ));
            None
        }
    };

    // Connectivity: reachability from the root along next_nodes edges.
    if let Some(root) = root {
        let mut reached = vec![false; n];
        reached[root] = true;
        let mut queue = VecDeque::from([root]);
        while let Some(v) = queue.pop_front() {
            for &w in &next_edges[v] {
                if !reached[w] {
                    reached[w] = true;
                    queue.push_back(w);
                }
            }
        }
        for (i, node) in nodes.iter().enumerate() {
            if !reached[i] {
                errors.push(format!(
                    "Node {} is not connected to the root node",
                    node.identifier
                ));
            }
        }
    }

    // Acyclicity over next_nodes edges plus target → unites-node edges.
    let mut all_edges = next_edges.clone();
    for (i, target) in unites_target.iter().enumerate() {
        if let Some(Some(t)) = target {
            all_edges[*t].push(i);
        }
    }
    let cyclic = nodes_on_cycles(&all_edges);
    for (i, node) in nodes.iter().enumerate() {
        if cyclic[i] {
            errors.push(format!("Node {} is not acyclic", node.identifier));
        }
    }

    // Static ancestors (None where they cannot be known).
    let ancestors = lineage_ancestors(nodes, &next_edges, &unites_target);

    // Input dependencies.
    for (i, node) in nodes.iter().enumerate() {
        for value in node.inputs.values() {
            let Some(s) = value.as_str() else {
                errors.push(format!("Input {} is not a string", py_str(value)));
                continue;
            };
            let parsed = match DependentString::parse(s) {
                Ok(p) => p,
                Err(e) => {
                    errors.push(format!(
                        "Error creating dependent string for input {s} check syntax string: {e}"
                    ));
                    continue;
                }
            };
            let mut seen = HashSet::new();
            for dependency in parsed.dependencies() {
                match dependency {
                    Dependency::Output { identifier, .. } => {
                        if !seen.insert(("o", identifier.as_str())) {
                            continue;
                        }
                        if let Some(anc) = &ancestors[i]
                            && !anc.contains(identifier)
                        {
                            errors.push(format!(
                                "Input {s} depends on {identifier} but {identifier} is not a parent of {}",
                                node.identifier
                            ));
                        }
                    }
                    Dependency::Store { key } => {
                        if !seen.insert(("s", key.as_str())) {
                            continue;
                        }
                        if !spec.store_config.declares(key) {
                            errors.push(format!(
                                "Input {s} depends on {key} but {key} is not a required key or a default value"
                            ));
                        }
                    }
                }
            }
        }
    }

    match root {
        Some(root) if errors.is_empty() => {
            let ancestors = nodes
                .iter()
                .zip(ancestors)
                .map(|(node, anc)| (node.identifier.clone(), anc.unwrap_or_default()))
                .collect();
            Ok((index, root, ancestors))
        }
        _ => Err(errors),
    }
}

/// Computes static ancestors over a topological order of the lineage graph:
/// a plain node's lineage parents are the nodes listing it in `next_nodes`;
/// a unites node's only lineage parent is its target. `None` marks nodes
/// whose ancestors cannot be known (on or after a cycle, invalid unites).
fn lineage_ancestors(
    nodes: &[NodeTemplate],
    next_edges: &[Vec<usize>],
    unites_target: &[Option<Option<usize>>],
) -> Vec<Option<BTreeSet<String>>> {
    let n = nodes.len();
    let mut parents: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    let mut unknown = vec![false; n];
    for (i, target) in unites_target.iter().enumerate() {
        match target {
            Some(Some(t)) => {
                parents[i].insert(*t);
            }
            Some(None) => unknown[i] = true,
            None => {}
        }
    }
    for (x, edges) in next_edges.iter().enumerate() {
        for &t in edges {
            if unites_target[t].is_none() {
                parents[t].insert(x);
            }
        }
    }
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut remaining: Vec<usize> = parents.iter().map(BTreeSet::len).collect();
    for (i, ps) in parents.iter().enumerate() {
        for &p in ps {
            children[p].push(i);
        }
    }
    let mut result: Vec<Option<BTreeSet<String>>> = vec![None; n];
    let mut queue: VecDeque<usize> = (0..n).filter(|&i| remaining[i] == 0).collect();
    while let Some(v) = queue.pop_front() {
        if !unknown[v] {
            let mut acc: Option<BTreeSet<String>> = None;
            let mut known = true;
            for &p in &parents[v] {
                let Some(anc_p) = &result[p] else {
                    known = false;
                    break;
                };
                let mut with_p = anc_p.clone();
                with_p.insert(nodes[p].identifier.clone());
                acc = Some(match acc {
                    None => with_p,
                    Some(a) => a.intersection(&with_p).cloned().collect(),
                });
            }
            if known {
                result[v] = Some(acc.unwrap_or_default());
            }
        }
        for &c in &children[v] {
            remaining[c] -= 1;
            if remaining[c] == 0 {
                queue.push_back(c);
            }
        }
    }
    result
}

/// Marks the vertices that lie on a cycle (a strongly connected component
/// with more than one vertex, or a self-loop), using an iterative Tarjan.
fn nodes_on_cycles(succ: &[Vec<usize>]) -> Vec<bool> {
    const UNVISITED: usize = usize::MAX;
    let n = succ.len();
    let mut index = vec![UNVISITED; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut cyclic = vec![false; n];
    let mut counter = 0usize;
    for start in 0..n {
        if index[start] != UNVISITED {
            continue;
        }
        index[start] = counter;
        low[start] = counter;
        counter += 1;
        stack.push(start);
        on_stack[start] = true;
        let mut calls: Vec<(usize, usize)> = vec![(start, 0)];
        while let Some(top) = calls.last_mut() {
            let v = top.0;
            if let Some(&w) = succ[v].get(top.1) {
                top.1 += 1;
                if index[w] == UNVISITED {
                    index[w] = counter;
                    low[w] = counter;
                    counter += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    calls.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(parent, _)) = calls.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 || succ[v].contains(&v) {
                    for w in component {
                        cyclic[w] = true;
                    }
                }
            }
        }
    }
    cyclic
}

// ---------------------------------------------------------------------------
// Registry verification (background, spec §12.2)
// ---------------------------------------------------------------------------

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

    // 2. verify_secrets
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

    // 3. verify_inputs
    for (node, schema) in nodes.iter().zip(&node_schema) {
        let (name, ns) = (&node.node_name, &node.namespace);
        let Some(schema) = schema else {
            errors.push(format!("Node {name} in namespace {ns} does not exist"));
            continue;
        };
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
        let mut seen = HashSet::new();
        for value in node.inputs.values() {
            let Some(parsed) = value.as_str().and_then(|s| DependentString::parse(s).ok()) else {
                continue;
            };
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
                let source = &nodes[position];
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
    errors
}

// ---------------------------------------------------------------------------
// Unites fingerprint (spec §5.6)
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Python-style rendering for error messages
// ---------------------------------------------------------------------------

/// Python `repr()` of a string.
fn py_repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python `str()` of a JSON-decoded value (`None`, `True`, `{'a': 1}`).
fn py_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

/// Python `repr()` of a JSON-decoded value.
fn py_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (None, Some(u), _) => u.to_string(),
            (None, None, Some(f)) => py_float_repr(f),
            _ => n.to_string(),
        },
        Value::String(s) => py_repr_str(s),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(py_repr).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", py_repr_str(k), py_repr(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
    }
}

/// Python `repr()` of a float: shortest round-trip digits, positional
/// notation for exponents in [-4, 16), scientific (`1e+16`) otherwise.
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    // `{:e}` gives the shortest round-trip digits, e.g. "-1.25e3".
    let sci = format!("{f:e}");
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return sci;
    };
    let Ok(exp) = exp.parse::<i32>() else {
        return sci;
    };
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // position of the decimal point within `digits`
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat(point.unsigned_abs() as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        let mant = if rest.is_empty() {
            first.to_owned()
        } else {
            format!("{first}.{rest}")
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mant}e{exp_sign}{:02}", exp.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: Value) -> GraphSpec {
        serde_json::from_value(value).unwrap()
    }

    /// A node `id` with children `next`, no inputs.
    fn n(id: &str, next: &[&str]) -> Value {
        json!({
            "node_name": format!("N{id}"),
            "namespace": "ns",
            "identifier": id,
            "inputs": {},
            "next_nodes": if next.is_empty() { Value::Null } else { json!(next) },
        })
    }

    /// A unites node `id` targeting `target`, with children `next`.
    fn u(id: &str, target: &str, next: &[&str]) -> Value {
        let mut v = n(id, next);
        v["unites"] = json!({ "identifier": target });
        v
    }

    fn with_inputs(mut node: Value, inputs: Value) -> Value {
        node["inputs"] = inputs;
        node
    }

    fn graph(nodes: Vec<Value>) -> GraphSpec {
        spec(json!({ "secrets": {}, "nodes": nodes }))
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn errors_of(s: &GraphSpec) -> Vec<String> {
        Graph::analyse(s).unwrap_err()
    }

    // ----- models ---------------------------------------------------------

    #[test]
    fn upsert_body_defaults_and_required_fields() {
        let s = spec(json!({
            "secrets": {},
            "nodes": [{"node_name": "A", "namespace": "ns", "identifier": "a", "inputs": {"z": "1", "a": "2"}}],
        }));
        assert_eq!(s.retry_policy, RetryPolicy::default());
        assert_eq!(s.store_config, StoreConfig::default());
        assert!(s.triggers.is_empty());
        let node = &s.nodes[0];
        assert_eq!(node.next_nodes, None);
        assert_eq!(node.unites, None);
        // Input order is the request order.
        assert_eq!(node.inputs.keys().collect::<Vec<_>>(), ["z", "a"]);
        let back = serde_json::to_value(&s).unwrap();
        assert_eq!(
            back["nodes"][0]["next_nodes"],
            json!([]),
            "null written back as []"
        );
        assert_eq!(back["nodes"][0]["unites"], Value::Null);
        assert_eq!(
            back["store_config"],
            json!({"required_keys": [], "default_values": {}})
        );

        assert!(serde_json::from_value::<GraphSpec>(json!({"nodes": []})).is_err());
        assert!(serde_json::from_value::<GraphSpec>(json!({"secrets": {}})).is_err());
    }

    #[test]
    fn unites_and_trigger_models() {
        let un: Unites = serde_json::from_value(json!({"identifier": "x"})).unwrap();
        assert_eq!(un.strategy, UnitesStrategy::AllSuccess);
        let un: Unites =
            serde_json::from_value(json!({"identifier": "x", "strategy": "ALL_DONE"})).unwrap();
        assert_eq!(un.strategy, UnitesStrategy::AllDone);
        assert!(
            serde_json::from_value::<Unites>(json!({"identifier": "x", "strategy": "ANY"}))
                .is_err()
        );

        let t: Trigger =
            serde_json::from_value(json!({"type": "CRON", "value": {"expression": "* * * * *"}}))
                .unwrap();
        assert_eq!(t.kind, TriggerType::Cron);
        assert_eq!(t.cron_expression(), Some("* * * * *"));
        let t: Trigger = serde_json::from_value(json!({"type": "CRON"})).unwrap();
        assert_eq!(t.cron_expression(), None);
        assert!(serde_json::from_value::<Trigger>(json!({"type": "WEBHOOK"})).is_err());
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            json!({"type": "CRON", "value": {}})
        );

        let s = spec(json!({
            "secrets": {}, "nodes": [],
            "triggers": [
                {"type": "CRON", "value": {"expression": "@daily"}},
                {"type": "CRON", "value": {"expression": "@hourly"}},
                {"type": "CRON", "value": {"expression": "@daily"}},
            ]
        }));
        assert_eq!(s.cron_expressions(), ["@daily", "@hourly"]);
    }

    #[test]
    fn normalize_trims_names_identifiers_and_keys() {
        let mut s = spec(json!({
            "secrets": {},
            "nodes": [{
                "node_name": " A ", "namespace": " ns ", "identifier": " a\t",
                "inputs": {}, "next_nodes": [" b "], "unites": {"identifier": " c "}
            }],
            "store_config": {"required_keys": [" k "], "default_values": {" d ": "v"}}
        }));
        s.normalize();
        let node = &s.nodes[0];
        assert_eq!(node.node_name, "A");
        assert_eq!(node.namespace, " ns ", "namespace is not trimmed");
        assert_eq!(node.identifier, "a");
        assert_eq!(node.next(), ["b"]);
        assert_eq!(node.unites.as_ref().unwrap().identifier, "c");
        assert_eq!(s.store_config.required_keys, ["k"]);
        assert_eq!(
            s.store_config.default_values.get("d").map(String::as_str),
            Some("v")
        );
    }

    // ----- field validation ----------------------------------------------

    fn field_errors(s: &GraphSpec) -> Vec<(Value, String)> {
        validate_fields(s)
            .into_iter()
            .map(|e| (serde_json::to_value(&e.loc).unwrap(), e.msg))
            .collect()
    }

    #[test]
    fn valid_body_has_no_field_errors() {
        let s = spec(json!({
            "secrets": {"k": ""},
            "nodes": [n("a", &["b"]), n("b", &[])],
            "store_config": {"required_keys": ["x"], "default_values": {"y": "1"}},
            "triggers": [{"type": "CRON", "value": {"expression": "0 0 31 2 *"}}],
        }));
        assert!(validate_fields(&s).is_empty());
    }

    #[test]
    fn node_field_errors() {
        let mut bad = n("store", &["x", " ", "x", "y", " y"]);
        bad["node_name"] = json!("  ");
        let mut empty_id = u(" ", "  ", &[]);
        empty_id["identifier"] = json!("");
        let s = graph(vec![bad, empty_id, n(" store ", &[])]);
        assert_eq!(
            field_errors(&s),
            vec![
                (json!(["nodes", 0, "node_name"]), "Value error, Node name cannot be empty".to_owned()),
                (
                    json!(["nodes", 0, "identifier"]),
                    "Value error, Node identifier cannot be reserved word 'store'".to_owned()
                ),
                (
                    json!(["nodes", 0, "next_nodes"]),
                    "Value error, Next node identifier cannot be empty\nNext node identifier x is not unique\nNext node identifier y is not unique".to_owned()
                ),
                (json!(["nodes", 1, "identifier"]), "Value error, Node identifier cannot be empty".to_owned()),
                (json!(["nodes", 1, "unites"]), "Value error, Unites identifier cannot be empty".to_owned()),
                (
                    json!(["nodes", 2, "identifier"]),
                    "Value error, Node identifier cannot be reserved word 'store'".to_owned()
                ),
            ]
        );
        let first = &validate_fields(&s)[0];
        assert_eq!(first.error_type(), "value_error");
        assert_eq!(first.ctx(), Some(json!({"error": {}})));
    }

    #[test]
    fn node_retry_policy_overrides_the_graph_policy() {
        let spec: GraphSpec = serde_json::from_value(json!({
            "secrets": {},
            "retry_policy": {"max_retries": 1},
            "nodes": [
                {"node_name": "A", "namespace": "ns", "identifier": "a", "inputs": {}, "next_nodes": ["b"],
                 "retry_policy": {"max_retries": 7, "strategy": "LINEAR"}},
                {"node_name": "B", "namespace": "ns", "identifier": "b", "inputs": {},
                 "retry_policy": {"max_retries": -2}},
            ]
        }))
        .unwrap();
        assert_eq!(spec.retry_policy_for("a").max_retries, 7);
        assert_eq!(spec.retry_policy_for("zz").max_retries, 1);
        let errs = validate_fields(&spec);
        let locs: Vec<_> = errs
            .iter()
            .map(|e| serde_json::to_value(&e.loc).unwrap())
            .collect();
        assert!(
            locs.contains(&json!(["nodes", 1, "retry_policy", "max_retries"])),
            "{locs:?}"
        );
        // Unset node policies are not serialised (the upstream node shape).
        let v = serde_json::to_value(&spec.nodes[1]).unwrap();
        assert!(v.get("retry_policy").is_some());
        let mut plain = spec.nodes[1].clone();
        plain.retry_policy = None;
        assert!(
            serde_json::to_value(&plain)
                .unwrap()
                .get("retry_policy")
                .is_none()
        );
    }

    #[test]
    fn retry_policy_field_errors_are_prefixed() {
        let s = spec(json!({
            "secrets": {}, "nodes": [],
            "retry_policy": {"max_retries": -1, "backoff_factor": 0, "exponent": -3, "max_delay": 0}
        }));
        let errs = validate_fields(&s);
        let locs: Vec<Value> = errs
            .iter()
            .map(|e| serde_json::to_value(&e.loc).unwrap())
            .collect();
        assert_eq!(
            locs,
            vec![
                json!(["retry_policy", "max_retries"]),
                json!(["retry_policy", "backoff_factor"]),
                json!(["retry_policy", "exponent"]),
                json!(["retry_policy", "max_delay"]),
            ]
        );
        assert_eq!(errs[0].error_type(), "greater_than_equal");
        assert_eq!(errs[0].ctx(), Some(json!({"ge": 0})));
        assert_eq!(errs[1].error_type(), "greater_than");
        assert_eq!(errs[1].msg, "Input should be greater than 0");
    }

    #[test]
    fn store_config_field_errors() {
        let s = spec(json!({
            "secrets": {}, "nodes": [],
            "store_config": {
                "required_keys": ["a", " ", "b.c", " a ", "d"],
                "default_values": {"x": "1", " x": "2", "": "3", "p.q": "4"}
            }
        }));
        assert_eq!(
            field_errors(&s),
            vec![
                (
                    json!(["store_config", "required_keys"]),
                    "Value error, Key cannot be empty or contain only whitespace\nKey 'b.c' cannot contain '.' character\nKey 'a' is duplicated".to_owned()
                ),
                (
                    json!(["store_config", "default_values"]),
                    // BTreeMap order: "", " x", "p.q", "x"
                    "Value error, Key cannot be empty or contain only whitespace\nKey 'p.q' cannot contain '.' character\nKey 'x' is duplicated".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn trigger_field_errors() {
        let s = spec(json!({
            "secrets": {}, "nodes": [],
            "triggers": [
                {"type": "CRON", "value": {"expression": "not a cron"}},
                {"type": "CRON", "value": {}},
                {"type": "CRON", "value": {"expression": 5}},
                {"type": "CRON", "value": {"expression": "@daily", "other": "x", "tz": 1, "n": null}},
                {"type": "CRON", "value": {"expression": "H * * * *"}},
            ]
        }));
        let errs = validate_fields(&s);
        assert_eq!(
            field_errors(&s),
            vec![
                (
                    json!(["triggers", 0, "expression"]),
                    "Value error, Invalid cron expression".to_owned()
                ),
                (
                    json!(["triggers", 1, "expression"]),
                    "Field required".to_owned()
                ),
                (
                    json!(["triggers", 2, "value", "expression"]),
                    "Input should be a valid string".to_owned()
                ),
                (
                    json!(["triggers", 4, "expression"]),
                    "Value error, Invalid cron expression".to_owned()
                ),
            ]
        );
        assert_eq!(errs[1].error_type(), "missing");
        assert_eq!(errs[1].ctx(), None);
        assert_eq!(errs[2].error_type(), "string_type");
    }

    #[test]
    fn field_error_helpers() {
        let e = FieldError::new(["x".into()], "m").prefixed(["a".into(), 3usize.into()]);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"loc": ["a", 3, "x"], "msg": "m"})
        );
        let back: FieldError =
            serde_json::from_value(json!({"loc": ["a", 3], "msg": "m"})).unwrap();
        assert_eq!(back.loc, vec![LocPart::Key("a".into()), LocPart::Index(3)]);
    }

    // ----- analysis: valid graphs ------------------------------------------

    #[test]
    fn simple_chain_is_valid() {
        let s = graph(vec![
            with_inputs(n("a", &["b"]), json!({"x": "literal"})),
            with_inputs(n("b", &["c"]), json!({"x": "${{ a.outputs.o }}"})),
            with_inputs(
                n("c", &[]),
                json!({"x": "${{ a.outputs.o }}-${{ b.outputs.p }}"}),
            ),
        ]);
        let g = Graph::analyse(&s).unwrap();
        assert_eq!(g.root().identifier, "a");
        assert_eq!(g.nodes().len(), 3);
        assert_eq!(g.node("b").unwrap().node_name, "Nb");
        assert!(g.node("zz").is_none());
        assert_eq!(g.next_nodes("a"), ["b"]);
        assert!(g.next_nodes("c").is_empty());
        assert!(g.next_nodes("zz").is_empty());
        assert_eq!(g.ancestors("a"), &set(&[]));
        assert_eq!(g.ancestors("b"), &set(&["a"]));
        assert_eq!(g.ancestors("c"), &set(&["a", "b"]));
        assert!(g.ancestors("zz").is_empty());
        assert!(g.unites_targeting("a").is_empty());
        assert_eq!(g.spec(), &s);
    }

    #[test]
    fn analyse_stores_the_normalised_spec() {
        let mut root = n(" a ", &[" b"]);
        root["node_name"] = json!(" A ");
        let s = graph(vec![root, n("b", &[])]);
        let g = Graph::analyse(&s).unwrap();
        assert_eq!(g.root().identifier, "a");
        assert_eq!(g.root().node_name, "A");
        assert_eq!(g.next_nodes("a"), ["b"]);
    }

    #[test]
    fn unites_target_that_is_not_a_direct_parent() {
        // n1 → n2 → n3 (unites n1): ancestors(n3) = {n1}; n2 is not one.
        let s = graph(vec![n("n1", &["n2"]), n("n2", &["n3"]), u("n3", "n1", &[])]);
        let g = Graph::analyse(&s).unwrap();
        assert_eq!(g.ancestors("n3"), &set(&["n1"]));
        assert_eq!(g.unites_targeting("n1"), ["n3"]);
    }

    #[test]
    fn unites_on_a_sibling() {
        // n1 → [n2, n3], n3 unites n2: ancestors(n3) = {n1, n2}.
        let s = graph(vec![
            n("n1", &["n2", "n3"]),
            n("n2", &[]),
            u("n3", "n2", &[]),
        ]);
        let g = Graph::analyse(&s).unwrap();
        assert_eq!(g.ancestors("n3"), &set(&["n1", "n2"]));
    }

    #[test]
    fn unites_children_are_analysed_regardless_of_next_nodes_order() {
        for order in [["n3", "n2"], ["n2", "n3"]] {
            let s = graph(vec![
                n("n1", &order),
                n("n2", &[]),
                u("n3", "n2", &["n4"]),
                with_inputs(
                    n("n4", &[]),
                    json!({"x": "${{ n3.outputs.a }}${{ n2.outputs.b }}"}),
                ),
            ]);
            let g = Graph::analyse(&s).unwrap_or_else(|e| panic!("{order:?}: {e:?}"));
            assert_eq!(g.ancestors("n4"), &set(&["n1", "n2", "n3"]));
        }
    }

    #[test]
    fn children_of_unites_nodes_see_the_unites_node() {
        // n1 → n2 → n3 (unites n1) → n4: upstream gave {n1}; the lineage has n3 too.
        let s = graph(vec![
            n("n1", &["n2"]),
            n("n2", &["n3"]),
            u("n3", "n1", &["n4"]),
            with_inputs(n("n4", &[]), json!({"x": "${{ n3.outputs.r }}"})),
        ]);
        let g = Graph::analyse(&s).unwrap();
        assert_eq!(g.ancestors("n4"), &set(&["n1", "n3"]));
    }

    #[test]
    fn diamond_ancestors_are_the_intersection() {
        let s = graph(vec![
            n("a", &["b", "c"]),
            n("b", &["d"]),
            n("c", &["d"]),
            n("d", &["e"]),
            n("e", &[]),
        ]);
        let g = Graph::analyse(&s).unwrap();
        assert_eq!(g.ancestors("d"), &set(&["a"]));
        assert_eq!(g.ancestors("e"), &set(&["a", "d"]));
        // Referencing one branch from the join is rejected.
        let s = graph(vec![
            n("a", &["b", "c"]),
            n("b", &["d"]),
            n("c", &["d"]),
            with_inputs(
                n("d", &[]),
                json!({"x": "${{ b.outputs.o }}", "y": "${{ a.outputs.o }}"}),
            ),
        ]);
        assert_eq!(
            errors_of(&s),
            ["Input ${{ b.outputs.o }} depends on b but b is not a parent of d"]
        );
    }

    #[test]
    fn unites_node_as_direct_child_of_its_target_is_allowed() {
        let s = graph(vec![n("a", &["b", "m"]), n("b", &["m"]), u("m", "a", &[])]);
        let g = Graph::analyse(&s).unwrap();
        assert_eq!(g.ancestors("m"), &set(&["a"]));
        assert_eq!(g.unites_targeting("a"), ["m"]);
    }

    #[test]
    fn store_dependencies_need_declared_keys() {
        let s = spec(json!({
            "secrets": {},
            "nodes": [with_inputs(n("a", &[]), json!({"x": "${{ store.k }}", "y": "${{ store.outputs.d }}"}))],
            "store_config": {"required_keys": ["k"], "default_values": {"d": "1"}},
        }));
        assert!(Graph::analyse(&s).is_ok());
        let s = graph(vec![with_inputs(
            n("a", &[]),
            json!({"x": "${{ store.k }}"}),
        )]);
        assert_eq!(
            errors_of(&s),
            ["Input ${{ store.k }} depends on k but k is not a required key or a default value"]
        );
    }

    // ----- analysis: errors -------------------------------------------------

    #[test]
    fn structural_errors_are_all_reported() {
        let mut s = graph(vec![
            n("a", &["b", "ghost"]),
            n("b", &[]),
            n("b", &[]),
            u("s", "s", &[]),
            u("t", "missing", &[]),
        ]);
        s.secrets.insert(String::new(), "v".into());
        let errs = errors_of(&s);
        assert_eq!(
            errs,
            vec![
                "Secrets cannot be empty",
                "Node identifier b is not unique",
                "Node identifier ghost does not exist in the graph",
                "Node s has an unites target s that is the same as the node itself",
                "Node t has an unites target missing that does not exist",
                "There should be exactly one root node in the graph but found 2 nodes with zero in-degree: ['a', 'b']",
            ]
        );
    }

    #[test]
    fn root_count_errors() {
        assert_eq!(
            errors_of(&graph(vec![])),
            [
                "There should be exactly one root node in the graph but found 0 nodes with zero in-degree: []"
            ]
        );
        // A cycle with no root: root error plus every node of the cycle.
        assert_eq!(
            errors_of(&graph(vec![n("a", &["b"]), n("b", &["a"])])),
            [
                "There should be exactly one root node in the graph but found 0 nodes with zero in-degree: []",
                "Node a is not acyclic",
                "Node b is not acyclic",
            ]
        );
        // A unites node counts as having a parent; a root with unites is not a root.
        assert_eq!(
            errors_of(&graph(vec![u("a", "b", &["b"]), n("b", &[])])),
            [
                "There should be exactly one root node in the graph but found 0 nodes with zero in-degree: []",
                "Node a is not acyclic",
                "Node b is not acyclic",
            ]
        );
        let errs = errors_of(&graph(vec![n("it's", &[]), n("x", &[])]));
        assert_eq!(
            errs,
            [
                r#"There should be exactly one root node in the graph but found 2 nodes with zero in-degree: ["it's", 'x']"#
            ]
        );
    }

    #[test]
    fn connectivity_and_cycles() {
        let s = graph(vec![
            n("a", &["b"]),
            n("b", &["b2"]),
            n("b2", &["b"]),
            n("x", &["y"]),
            n("y", &["x"]),
            u("lonely", "a", &[]),
        ]);
        assert_eq!(
            errors_of(&s),
            [
                "Node x is not connected to the root node",
                "Node y is not connected to the root node",
                "Node lonely is not connected to the root node",
                "Node b is not acyclic",
                "Node b2 is not acyclic",
                "Node x is not acyclic",
                "Node y is not acyclic",
            ]
        );
        // Self loop.
        assert_eq!(
            errors_of(&graph(vec![n("a", &["b"]), n("b", &["b"])])),
            ["Node b is not acyclic"]
        );
        // Cycle through a unites edge: b unites c, c is b's child.
        assert_eq!(
            errors_of(&graph(vec![
                n("a", &["b"]),
                u("b", "c", &["c"]),
                n("c", &[])
            ])),
            ["Node b is not acyclic", "Node c is not acyclic"]
        );
    }

    #[test]
    fn input_errors_are_all_reported() {
        let s = graph(vec![
            with_inputs(
                n("a", &["b"]),
                json!({
                    "num": 5,
                    "obj": {"k": [1, true, null, 1.5, "s"]},
                    "bad": "${{ a.inputs.x }}",
                    "open": "x ${{ a.outputs.y",
                    "self": "${{ a.outputs.o }}",
                }),
            ),
            with_inputs(
                n("b", &[]),
                json!({
                    "fine": "${{ a.outputs.o }}",
                    "ghost": "${{ zz.outputs.o }}${{ zz.outputs.p }}${{ b.outputs.q }}",
                }),
            ),
        ]);
        assert_eq!(
            errors_of(&s),
            [
                "Input 5 is not a string",
                "Input {'k': [1, True, None, 1.5, 's']} is not a string",
                "Error creating dependent string for input ${{ a.inputs.x }} check syntax string: Invalid syntax string placeholder  a.inputs.x  for: ${{ a.inputs.x }}",
                "Error creating dependent string for input x ${{ a.outputs.y check syntax string: Invalid syntax string placeholder  a.outputs.y for: x ${{ a.outputs.y '${{' not closed",
                "Input ${{ a.outputs.o }} depends on a but a is not a parent of a",
                "Input ${{ zz.outputs.o }}${{ zz.outputs.p }}${{ b.outputs.q }} depends on zz but zz is not a parent of b",
                "Input ${{ zz.outputs.o }}${{ zz.outputs.p }}${{ b.outputs.q }} depends on b but b is not a parent of b",
            ]
        );
    }

    #[test]
    fn python_rendering_helpers() {
        assert_eq!(py_float_repr(1.0), "1.0");
        assert_eq!(py_float_repr(-2.5), "-2.5");
        assert_eq!(py_float_repr(0.1), "0.1");
        assert_eq!(py_float_repr(0.0001), "0.0001");
        assert_eq!(py_float_repr(0.00001), "1e-05");
        assert_eq!(py_float_repr(1e16), "1e+16");
        assert_eq!(py_float_repr(1.5e16), "1.5e+16");
        assert_eq!(py_float_repr(1234567890123456.0), "1234567890123456.0");
        assert_eq!(py_float_repr(100.0), "100.0");
        assert_eq!(py_repr_str("a\nb\\"), r"'a\nb\\'");
        assert_eq!(py_repr_str("it's \"q\""), r#"'it\'s "q"'"#);
        assert_eq!(py_str(&json!(u64::MAX)), "18446744073709551615");
        assert_eq!(py_str(&json!([])), "[]");
        assert_eq!(py_str(&json!({})), "{}");
    }

    // ----- registry verification ---------------------------------------------

    fn schema(props: Value) -> Value {
        json!({"type": "object", "properties": props})
    }

    fn registry(namespace: &str, name: &str) -> Option<RegisteredNodeSchema> {
        let s = |v: Value| schema(v);
        let (inputs, outputs, secrets) = match name {
            "Na" => (
                s(json!({"x": {"type": "string", "title": "X"}})),
                s(json!({"o": {"type": "string"}, "n": {"type": "integer"}})),
                vec!["api_key"],
            ),
            "Nb" => (
                s(json!({
                    "x": {"type": "string", "default": "d"},
                    "y": {"type": "integer"},
                    "z": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                    "w": {"type": "string"},
                })),
                s(json!({})),
                vec!["api_key", "db"],
            ),
            _ => return None,
        };
        (namespace == "ns").then(|| RegisteredNodeSchema {
            name: name.into(),
            namespace: namespace.into(),
            inputs_schema: inputs,
            outputs_schema: outputs,
            secrets: secrets.into_iter().map(String::from).collect(),
        })
    }

    #[test]
    fn registry_verification_reports_the_three_checks() {
        let mut ghost = n("c", &["b"]);
        ghost["node_name"] = json!("Ghost");
        let s = spec(json!({
            "secrets": {"api_key": "v"},
            "nodes": [
                with_inputs(n("a", &["c"]), json!({"x": "lit", "extra": "ignored"})),
                with_inputs(n("b", &[]), json!({
                    "x": "${{ a.outputs.o }}",
                    "y": "${{ a.outputs.n }}",
                    "z": "${{ a.outputs.missing }}${{ store.k }}",
                    "v": "${{ c.outputs.q }}",
                })),
                ghost,
            ],
            "store_config": {"required_keys": ["k"]},
        }));
        let g = Graph::analyse(&s).unwrap();
        let calls = std::cell::Cell::new(0);
        let errs = verify_against_registry(&g, |ns, name| {
            calls.set(calls.get() + 1);
            registry(ns, name)
        });
        assert_eq!(calls.get(), 3);
        assert_eq!(
            errs,
            [
                "Node Ghost in namespace ns does not exist.",
                "Secret db is required but not present in the graph template",
                "Input y in node Nb in namespace ns is not a string",
                "Input z in node Nb in namespace ns is not a string",
                "Input w in node Nb in namespace ns is not present in the graph template",
                "Field n in node Na in namespace ns is not a string",
                "Field missing in node Na in namespace ns does not exist",
                "Node Ghost in namespace ns does not exist",
                "Node Ghost in namespace ns does not exist",
            ]
        );
    }

    #[test]
    fn registry_verification_passes_for_a_consistent_graph() {
        let s = spec(json!({
            "secrets": {"api_key": "v"},
            "nodes": [
                with_inputs(n("a", &[]), json!({"x": "${{ store.k }}"})),
            ],
            "store_config": {"default_values": {"k": "1"}},
        }));
        let g = Graph::analyse(&s).unwrap();
        assert!(verify_against_registry(&g, registry).is_empty());
    }

    #[test]
    fn input_fields_and_string_properties() {
        let s = schema(json!({"b": {"type": "string"}, "a": {"type": "string"}, "c": {}}));
        assert_eq!(input_fields(&s), ["b", "a", "c"]);
        assert!(input_fields(&json!({"type": "object"})).is_empty());
        assert!(input_fields(&json!("nope")).is_empty());
        assert!(is_string_property(
            &json!({"type": "string", "default": "x", "title": "T"})
        ));
        assert!(!is_string_property(&json!({"type": "integer"})));
        assert!(!is_string_property(
            &json!({"type": "string", "enum": ["a"]})
        ));
        assert!(!is_string_property(
            &json!({"type": "string", "format": "date-time"})
        ));
        assert!(!is_string_property(
            &json!({"anyOf": [{"type": "string"}, {"type": "null"}]})
        ));
    }

    // ----- fingerprint ------------------------------------------------------

    #[test]
    fn fingerprint_matches_the_spec_test_vector() {
        let parents = vec![
            ("split".to_owned(), "507f1f77bcf86cd799439012".to_owned()),
            ("root".to_owned(), "507f1f77bcf86cd799439011".to_owned()),
        ];
        let fp = unites_fingerprint("Merger", "ns", "merger", "g", "r-1", 0, &parents, "");
        assert_eq!(
            fp,
            "8be7e2250243ee2098538bb7476bce6d170c6e4f806293174bdade2d6a0cf045"
        );
        let other = unites_fingerprint("Merger", "ns", "merger", "g", "r-1", 1, &parents, "");
        assert_ne!(fp, other);
        let manual = unites_fingerprint("Merger", "ns", "merger", "g", "r-1", 0, &parents, "f");
        assert_ne!(fp, manual);
    }

    #[test]
    fn canonical_json_is_sorted_compact_and_ascii() {
        let v = json!({
            "b": [1, -2, true, null, 1.5],
            "a": {"z": "é😀\"\\\n\u{1}\u{7f}", "y": "~ "},
        });
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"y":"~ ","z":"\u00e9\ud83d\ude00\"\\\n\u0001\u007f"},"b":[1,-2,true,null,1.5]}"#
        );
    }
}
