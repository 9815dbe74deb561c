//! Document shapes, one struct per collection.
//!
//! Exosphere's fields keep their names and types; fields added by this
//! implementation carry `#[serde(default)]` so documents written by Exosphere
//! still load.

use std::collections::BTreeMap;

use exo_types::graph::{NodeTemplate, StoreConfig, Trigger};
use exo_types::names::{Namespace, NodeName, RunId};
use exo_types::retry::RetryPolicy;
use exo_types::status::{RunStatus, StateStatus};
use mongodb::bson::{DateTime, Document, oid::ObjectId};
use serde::{Deserialize, Serialize};

/// One attempt of one node in one run (collection `State`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateDoc {
    /// State id.
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// Registered node name (runtime routing key).
    pub node_name: NodeName,
    /// Namespace of the node template (where its runtime is registered).
    pub namespace_name: Namespace,
    /// Node identifier in the graph.
    pub identifier: String,
    /// Graph template name.
    pub graph_name: String,
    /// Run id.
    pub run_id: RunId,
    /// Status.
    pub status: StateStatus,
    /// Resolved inputs.
    #[serde(default)]
    pub inputs: Document,
    /// Outputs recorded by `executed`.
    #[serde(default)]
    pub outputs: Document,
    /// Prune data.
    #[serde(default)]
    pub data: Document,
    /// Error text.
    #[serde(default)]
    pub error: Option<String>,
    /// Lineage: identifier → state id, insertion-ordered, direct parent last.
    #[serde(default)]
    pub parents: Document,
    /// True for unite states.
    #[serde(default)]
    pub does_unites: bool,
    /// SHA-256 fingerprint of unite states, else empty.
    #[serde(default)]
    pub state_fingerprint: String,
    /// Earliest dispatch time, Unix ms.
    pub enqueue_after: i64,
    /// Automatic retry generation.
    #[serde(default)]
    pub retry_count: i64,
    /// Distinguishes fan-out siblings and manual retries.
    #[serde(default)]
    pub fanout_id: String,
    /// Set by manual retry; part of the fingerprint.
    #[serde(default)]
    pub manual_retry_fanout_id: String,
    /// Creation time.
    pub created_at: DateTime,
    /// Last full update.
    pub updated_at: DateTime,
    /// Namespace of the graph (ours; absent on Exosphere documents, where it
    /// equals `namespace_name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_namespace: Option<String>,
    /// Version of the template the run executes (ours; see `GraphVersions`).
    /// Absent on documents written before versions, which use the current
    /// template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_version: Option<String>,
    /// Dispatch attempt (ours): incremented on every CREATED → QUEUED, echoed
    /// by runtimes, and used to fence late results.
    #[serde(default)]
    pub attempt: i64,
    /// Number of re-queue cycles (ours); part of the hand-off dedup id.
    #[serde(default)]
    pub requeue_gen: i64,
    /// SHA-256 of the executed result applied to this state (ours): a
    /// redelivered result resumes its work, a different result for the same
    /// attempt (a runtime that ran twice) is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_digest: Option<String>,
    /// States per fan-out transaction used when this state's result was
    /// first applied (ours): every later delivery cuts the same chunk grid,
    /// whatever `EXO_FANOUT_CHUNK` the replica handling it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fanout_chunk: Option<i64>,
    /// Stream sequence of the `state.created` message whose delivery claimed
    /// this attempt (ours): only that message may dispatch it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_seq: Option<i64>,
    /// The message whose handler inserted this state already QUEUED (ours),
    /// as `<stream>:<sequence>` (e.g. `EXO_RESULTS:812`): a successor
    /// created by `completion` is dispatched by it directly, and only a
    /// redelivery of that very message may dispatch it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_by: Option<String>,
}

impl StateDoc {
    /// Namespace of the graph this state belongs to.
    pub fn graph_ns(&self) -> &str {
        self.graph_namespace
            .as_deref()
            .unwrap_or(&self.namespace_name)
    }

    /// Lineage as (identifier, state id) pairs in order.
    pub fn parent_pairs(&self) -> Vec<(String, ObjectId)> {
        self.parents
            .iter()
            .filter_map(|(k, v)| v.as_object_id().map(|id| (k.clone(), id)))
            .collect()
    }
}

/// A graph template (collection `GraphTemplate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphTemplateDoc {
    /// Document id.
    #[serde(rename = "_id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ObjectId>,
    /// Graph name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Node templates.
    pub nodes: Vec<NodeTemplate>,
    /// `VALID`, `INVALID`, `PENDING` or `ONGOING`.
    pub validation_status: String,
    /// Validation errors of the last validation.
    #[serde(default)]
    pub validation_errors: Vec<String>,
    /// Secret name → ciphertext.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Triggers.
    #[serde(default)]
    pub triggers: Vec<Trigger>,
    /// Retry policy.
    #[serde(default)]
    pub retry_policy: RetryPolicy,
    /// Store configuration.
    #[serde(default)]
    pub store_config: StoreConfig,
    /// Webhooks (ours).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<exo_types::graph::Webhook>,
    /// Creation time.
    pub created_at: DateTime,
    /// Last update.
    pub updated_at: DateTime,
}

impl GraphTemplateDoc {
    /// The definition this document stores, as the graph analysis takes it.
    pub fn spec(&self) -> exo_types::graph::GraphSpec {
        exo_types::graph::GraphSpec {
            nodes: self.nodes.clone(),
            secrets: self.secrets.clone(),
            retry_policy: self.retry_policy.clone(),
            store_config: self.store_config.clone(),
            triggers: self.triggers.clone(),
            webhooks: Some(self.webhooks.clone()),
        }
    }
}

/// A node registered by a runtime (collection `RegisteredNode`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredNodeDoc {
    /// Document id.
    #[serde(rename = "_id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ObjectId>,
    /// Node (class) name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Last registering runtime.
    #[serde(default)]
    pub runtime_name: String,
    /// Always equals `namespace`.
    #[serde(default)]
    pub runtime_namespace: String,
    /// JSON Schema of the inputs.
    #[serde(default)]
    pub inputs_schema: serde_json::Value,
    /// JSON Schema of the outputs.
    #[serde(default)]
    pub outputs_schema: serde_json::Value,
    /// Secret names the node needs.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Creation time.
    pub created_at: DateTime,
    /// Last full update.
    pub updated_at: DateTime,
}

/// One per-run store entry (collection `Store`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreDoc {
    /// Run id.
    pub run_id: RunId,
    /// Namespace.
    pub namespace: Namespace,
    /// Graph name.
    pub graph_name: String,
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
}

/// A run (collection `runs`). Exosphere stores only the first four fields;
/// status and counters are ours and are kept in the same transactions as the
/// state transitions they count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDoc {
    /// Document id.
    #[serde(rename = "_id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ObjectId>,
    /// Run id (UUID).
    pub run_id: RunId,
    /// Graph name.
    #[serde(default)]
    pub graph_name: String,
    /// Namespace.
    #[serde(default)]
    pub namespace_name: Namespace,
    /// Creation time.
    pub created_at: DateTime,
    /// `PENDING`, `SUCCESS` or `FAILED`; absent on Exosphere documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// All states of the run.
    #[serde(default)]
    pub total_count: i64,
    /// CREATED + QUEUED + EXECUTED.
    #[serde(default)]
    pub pending_count: i64,
    /// SUCCESS + PRUNED.
    #[serde(default)]
    pub success_count: i64,
    /// ERRORED + NEXT_CREATED_ERROR.
    #[serde(default)]
    pub errored_count: i64,
    /// RETRY_CREATED.
    #[serde(default)]
    pub retried_count: i64,
    /// States stopped by a cancellation (ours).
    #[serde(default)]
    pub cancelled_count: i64,
    /// Unite groups that closed with failures under ALL_SUCCESS.
    #[serde(default)]
    pub failed_unites: i64,
    /// When the run reached a terminal status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime>,
    /// Counters per graph node (ours, see [`crate::node_counts`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Document>,
}

impl RunDoc {
    /// A new PENDING run holding one pending state, `root`, as the trigger
    /// creates it.
    pub fn pending(
        run_id: RunId,
        graph_name: &str,
        namespace: Namespace,
        created_at: DateTime,
        root: &StateDoc,
    ) -> Self {
        let mut nodes = crate::node_counts::NodeDeltas::default();
        nodes.insert(root);
        Self {
            id: None,
            run_id,
            graph_name: graph_name.to_string(),
            namespace_name: namespace,
            created_at,
            status: Some(RunStatus::Pending.as_str().to_string()),
            total_count: 1,
            pending_count: 1,
            success_count: 0,
            errored_count: 0,
            retried_count: 0,
            cancelled_count: 0,
            failed_unites: 0,
            finished_at: None,
            nodes: Some(nodes.document(created_at.timestamp_millis())),
        }
    }
}

/// Bookkeeping of one unite group (collection `UniteGroup`, ours): the open
/// descendants of one target state instance for one unite node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UniteGroupDoc {
    /// `<target state id hex>:<unite node identifier>`.
    #[serde(rename = "_id")]
    pub id: String,
    /// Run id.
    pub run_id: RunId,
    /// Target state instance.
    pub target_id: ObjectId,
    /// Unite node identifier.
    pub unite_identifier: String,
    /// Descendants of the target not yet ended.
    #[serde(default)]
    pub open: i64,
    /// Descendants that ended ERRORED, PRUNED or NEXT_CREATED_ERROR.
    #[serde(default)]
    pub failed: i64,
    /// True once the group was decided (fired or failed).
    #[serde(default)]
    pub closed: bool,
    /// True if the unite state was created.
    #[serde(default)]
    pub fired: bool,
    /// Why a closed group did not fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Id of the unite group of `target` for unite node `identifier`.
pub fn unite_group_id(target: &ObjectId, identifier: &str) -> String {
    format!("{}:{identifier}", target.to_hex())
}

/// One scheduled occurrence of a CRON trigger (collection `DatabaseTriggers`,
/// Exosphere's shape plus `claimed_at`, `run_id` and `error`, ours).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerDoc {
    /// Document id.
    #[serde(rename = "_id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ObjectId>,
    /// Always `CRON`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Cron expression.
    pub expression: Option<String>,
    /// Graph name.
    pub graph_name: String,
    /// Namespace.
    pub namespace: Namespace,
    /// When this occurrence is due (UTC).
    pub trigger_time: DateTime,
    /// `PENDING`, `TRIGGERING`, `TRIGGERED` or `FAILED`.
    pub trigger_status: String,
    /// Retention anchor (TTL index for TRIGGERED and FAILED).
    #[serde(default)]
    pub expires_at: Option<DateTime>,
    /// When a trigger service claimed it (ours; a stale claim is retaken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<DateTime>,
    /// Run started by this occurrence (ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Why it failed (ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One status transition of a state: the data of its lifecycle event
/// (`exo.state.<status>`), kept in an [`OutboxDoc`] until published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateTransition {
    /// State id (24 hex digits).
    pub state_id: String,
    /// Run id.
    pub run_id: String,
    /// Namespace of the run's graph.
    pub namespace: String,
    /// Graph name.
    pub graph_name: String,
    /// Node name.
    pub node_name: String,
    /// Node identifier in the graph.
    pub identifier: String,
    /// The status before (absent when the state was created with `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<StateStatus>,
    /// The status after.
    pub status: StateStatus,
    /// The state's attempt.
    pub attempt: i64,
    /// How many times the state was re-queued (ReQueueAfter) before.
    pub generation: i64,
    /// When the state was created (Unix ms).
    pub created_at_ms: i64,
    /// When the transition was committed (Unix ms).
    pub at_ms: i64,
    /// The error the transition recorded, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set on the root state's first QUEUED: the run starts with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starts_run: bool,
}

/// Longest error text a [`StateTransition`] carries.
pub const TRANSITION_ERROR_LIMIT: usize = 1024;

impl StateTransition {
    /// `state` moving from `from` to `to` at `at_ms`.
    pub fn of(
        state: &StateDoc,
        from: Option<StateStatus>,
        to: StateStatus,
        error: Option<&str>,
        at_ms: i64,
    ) -> Self {
        // The root's first attempt (retries and copies have other ids).
        let starts_run = to == StateStatus::Queued
            && state.requeue_gen == 0
            && state.id.bytes() == exo_types::ids::root_state_id(&state.run_id);
        Self {
            state_id: state.id.to_hex(),
            run_id: state.run_id.to_string(),
            namespace: state.graph_ns().to_string(),
            graph_name: state.graph_name.clone(),
            node_name: state.node_name.to_string(),
            identifier: state.identifier.clone(),
            from,
            status: to,
            attempt: state.attempt,
            generation: state.requeue_gen,
            created_at_ms: state.created_at.timestamp_millis(),
            at_ms,
            error: error.map(|e| truncate(e, TRANSITION_ERROR_LIMIT)),
            starts_run,
        }
    }
}

/// `s` cut to at most `limit` bytes on a character boundary.
fn truncate(s: &str, limit: usize) -> String {
    let mut end = s.len().min(limit);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Transitions committed by one transaction and not yet known to be
/// published (collection `Outbox`, ours): written in the transaction,
/// removed once its events are published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxDoc {
    /// Document id.
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// When the transaction ran (Unix ms).
    pub at_ms: i64,
    /// The transitions, in the order they were made.
    pub events: Vec<StateTransition>,
    /// Set on a new run's document: the run's `created` event goes before
    /// its root's (so nothing of the run is told before its creation).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub creates_run: bool,
}

/// Most transitions in one outbox document.
pub const OUTBOX_DOC_EVENTS: usize = 1000;

impl OutboxDoc {
    /// The outbox documents of `events`, committed at `at_ms` (each event
    /// stamped with it), at most [`OUTBOX_DOC_EVENTS`] per document.
    pub fn batch(mut events: Vec<StateTransition>, at_ms: i64) -> Vec<Self> {
        events
            .chunks_mut(OUTBOX_DOC_EVENTS)
            .map(|chunk| {
                chunk.iter_mut().for_each(|e| e.at_ms = at_ms);
                Self {
                    id: ObjectId::new(),
                    at_ms,
                    events: chunk.to_vec(),
                    creates_run: false,
                }
            })
            .collect()
    }

    /// The outbox entry of a new run: the run's and its root's creation,
    /// under the root's id (so the service that created the run relays it
    /// without reading).
    pub fn created(root: &StateDoc) -> Self {
        let at_ms = root.created_at.timestamp_millis();
        Self {
            id: root.id,
            at_ms,
            events: vec![StateTransition::of(root, None, root.status, None, at_ms)],
            creates_run: true,
        }
    }
}
