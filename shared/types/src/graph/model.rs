//! The upsert request model: templates, store config, triggers.

use crate::retry::RetryPolicy;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};

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
    /// A cron schedule: `value.expression` holds the expression; ours:
    /// `timezone`, `catch_up`, `max_catch_up` (see
    /// [`crate::cron::CronSpec::from_value`]), `inputs`, `store`.
    #[serde(rename = "CRON")]
    Cron,
    /// Messages on a NATS subject start runs (ours; see [`EventBinding`]).
    #[serde(rename = "EVENT")]
    Event,
}

/// A graph trigger, `{type: "CRON", value: {expression}}` or (ours)
/// `{type: "EVENT", value: {subject, inputs?, store?, idempotency_key?}}`.
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
            TriggerType::Event => None,
        }
    }

    /// The schedule of a CRON trigger whose value is valid (checked at
    /// upsert).
    pub fn cron_spec(&self) -> Option<crate::cron::CronSpec> {
        match self.kind {
            TriggerType::Cron => crate::cron::CronSpec::from_value(&self.value).ok(),
            TriggerType::Event => None,
        }
    }

    /// What an EVENT trigger binds, when it is one and its value has the
    /// documented shape (checked at upsert).
    pub fn event_binding(&self) -> Option<EventBinding> {
        match self.kind {
            TriggerType::Event => serde_json::from_value(Value::Object(self.value.clone())).ok(),
            TriggerType::Cron => None,
        }
    }
}

/// An EVENT trigger's value: every message on `subject` (a NATS subject,
/// `*` and `>` allowed, first token literal) starts a run of the graph.
///
/// The message body, when it is a JSON object, gives the root's inputs and
/// the run's store: `inputs` and `store` map a name to a JSON Pointer into
/// the body (`""`: the whole body as text); without a mapping, each root
/// input and each declared store key takes the body's top-level field of
/// the same name, when there is one (a string as it is, other JSON as its
/// text). The run id is derived from the idempotency key: the message's
/// `Nats-Msg-Id` header, else the field at the pointer `idempotency_key`,
/// else the message's place in the inbound stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBinding {
    /// The subject pattern bound.
    pub subject: String,
    /// Root input name → JSON Pointer into the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<BTreeMap<String, String>>,
    /// Store key → JSON Pointer into the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<BTreeMap<String, String>>,
    /// JSON Pointer of the idempotency key in the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
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
    /// Webhooks (ours): `None` keeps the stored ones (a client that does
    /// not know them, such as the dashboard, does not erase them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<Vec<Webhook>>,
}

/// Events a webhook can ask for: the lifecycle event types without their
/// `exo.` prefix.
pub const WEBHOOK_EVENTS: [&str; 5] = [
    "run.succeeded",
    "run.failed",
    "run.cancelled",
    "state.errored",
    "state.next_created_error",
];

/// A webhook of a graph (ours): every lifecycle event of the graph's runs
/// whose type is in `events` is POSTed to `url` as a CloudEvent (JSON,
/// structured mode), signed with HMAC-SHA256 under the graph secret named
/// `secret`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Webhook {
    /// `https://…` (or `http://…`) address.
    pub url: String,
    /// Event types, among [`WEBHOOK_EVENTS`]; default: the run's end
    /// (`run.succeeded`, `run.failed`).
    #[serde(default = "default_webhook_events")]
    pub events: Vec<String>,
    /// Name of the graph secret the signature key is (its value is
    /// encrypted at rest like every secret).
    pub secret: String,
}

fn default_webhook_events() -> Vec<String> {
    vec!["run.succeeded".into(), "run.failed".into()]
}

impl Webhook {
    /// Whether it asks for events of type `ce_type` (`exo.run.failed`).
    pub fn wants(&self, ce_type: &str) -> bool {
        let kind = ce_type.strip_prefix("exo.").unwrap_or(ce_type);
        self.events.iter().any(|e| e == kind)
    }
}

impl GraphSpec {
    /// Trims what upstream stores trimmed: node names, identifiers,
    /// `next_nodes` entries, unites identifiers, and store keys (required
    /// keys and default-value keys; on a collision after trimming the last
    /// key in sorted order wins, [`validate_fields`](super::validate_fields) reports the duplicate).
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

    /// The EVENT triggers' bindings, in order.
    pub fn event_bindings(&self) -> Vec<EventBinding> {
        self.triggers
            .iter()
            .filter_map(Trigger::event_binding)
            .collect()
    }

    /// The schedules of the CRON triggers, one per key (expression and
    /// zone; the first trigger of a key gives its policy), in order.
    pub fn cron_specs(&self) -> Vec<crate::cron::CronSpec> {
        let mut seen = HashSet::new();
        self.triggers
            .iter()
            .filter_map(Trigger::cron_spec)
            .filter(|s| seen.insert(s.key()))
            .collect()
    }
}

fn trim_in_place(s: &mut String) {
    let trimmed = s.trim();
    if trimmed.len() != s.len() {
        *s = trimmed.to_owned();
    }
}
