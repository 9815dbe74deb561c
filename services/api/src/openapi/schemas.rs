//! The schema types of the OpenAPI document: what each endpoint takes and
//! answers, described for clients (the handlers use their own models).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use exo_types::graph::{TriggerType, UnitesStrategy};
use exo_types::retry::RetryStrategy;
use exo_types::status::{RunStatus, StateStatus, ValidationStatus};

/// Declares the schema of a document listed per namespace: `_id`,
/// `created_at`, `updated_at`, `name` and `namespace`, then its own fields.
macro_rules! named_document {
    ($(#[$meta:meta])* $name:ident { $($(#[$doc:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Deserialize, ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Document id.
            #[serde(rename = "_id")]
            pub id: Option<String>,
            /// Naive ISO time (UTC).
            pub created_at: String,
            /// Naive ISO time (UTC).
            pub updated_at: String,
            /// Its name.
            pub name: String,
            /// Its namespace.
            pub namespace: String,
            $($(#[$doc])* pub $field: $ty,)*
        }
    };
}

// ---------------------------------------------------------------------------
// Shared shapes.

/// `{"detail": "..."}`: FastAPI's HTTPException body (400, 401, 404, 409).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// What went wrong.
    pub detail: String,
}

/// `{"detail": [...]}`: FastAPI's 422 body, one item per invalid field.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidationErrors {
    /// The errors, in pydantic's format.
    pub detail: Vec<ValidationErrorItem>,
}

/// One pydantic validation error.
#[derive(Deserialize, ToSchema)]
pub struct ValidationErrorItem {
    /// Error type (`missing`, `string_type`, `int_parsing`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Where: `["body", "nodes", 0, "identifier"]`, `["path", "page"]`, ...
    pub loc: Vec<LocPart>,
    /// Human message.
    pub msg: String,
    /// The offending input.
    #[serde(default)]
    pub input: Option<Value>,
    /// Context of the rule (`{"ge": 1}`, ...).
    #[serde(default)]
    pub ctx: Option<BTreeMap<String, Value>>,
}

/// A part of a validation error location: a field name or a list index.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum LocPart {
    /// Field name.
    Field(String),
    /// List index.
    Index(i64),
}

/// A 500 body: the generic one (`success: false`) or a named server-side
/// misconfiguration (only `detail`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerError {
    /// False in the generic answer.
    #[serde(default)]
    pub success: Option<bool>,
    /// What went wrong.
    pub detail: String,
}

// ---------------------------------------------------------------------------
// Graph templates.

/// `PUT /graph/{graph_name}`: a graph template.
#[derive(Deserialize, ToSchema)]
pub struct UpsertGraphTemplateRequest {
    /// Secret name → plaintext value (stored encrypted; `{}` when none).
    pub secrets: BTreeMap<String, String>,
    /// The nodes; the root is the one no other node names as a successor.
    pub nodes: Vec<NodeTemplate>,
    /// The graph's retry policy (defaults below).
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
    /// Required store keys and defaults.
    #[serde(default)]
    pub store_config: Option<StoreConfig>,
    /// CRON triggers (replace the stored ones).
    #[serde(default)]
    pub triggers: Option<Vec<Trigger>>,
    /// Webhooks (ours): each `{url, events?, secret}` POSTs the graph's
    /// lifecycle events of those types, signed under the named graph
    /// secret. Absent: the stored ones are kept; `[]` removes them.
    #[serde(default)]
    pub webhooks: Option<Vec<exo_types::graph::Webhook>>,
}

/// One node of a graph template.
#[derive(Deserialize, ToSchema)]
pub struct NodeTemplate {
    /// Registered node name.
    pub node_name: String,
    /// Namespace the node is registered in.
    pub namespace: String,
    /// Unique id of the node in this graph (used in `${{ id.outputs.x }}`).
    pub identifier: String,
    /// Input name → value: a literal string or references such as
    /// `${{ parent.outputs.x }}` and `${{ store.key }}`.
    pub inputs: BTreeMap<String, Value>,
    /// Identifiers of the successors (`[]` or `null` for a leaf).
    #[serde(default)]
    pub next_nodes: Option<Vec<String>>,
    /// Fan-in: run once after every state descended from `identifier`
    /// ended.
    #[serde(default)]
    pub unites: Option<Unites>,
    /// A retry policy for this node only (exo extension).
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
}

/// A node's fan-in.
#[derive(Deserialize, ToSchema)]
pub struct Unites {
    /// The identifier whose descendants are waited for.
    pub identifier: String,
    /// ALL_SUCCESS (default) fires only when none failed; ALL_DONE fires
    /// when all ended.
    #[serde(default)]
    pub strategy: Option<UnitesStrategy>,
}

/// How a failed state is retried (delays in milliseconds).
#[derive(Deserialize, ToSchema)]
pub struct RetryPolicy {
    /// Retries after the first attempt (default 3, ≥ 0).
    #[serde(default)]
    pub max_retries: Option<i64>,
    /// Delay formula (default EXPONENTIAL).
    #[serde(default)]
    pub strategy: Option<RetryStrategy>,
    /// Base delay in ms (default 2000, > 0).
    #[serde(default)]
    pub backoff_factor: Option<i64>,
    /// Exponent base of the exponential strategies (default 2, > 0).
    #[serde(default)]
    pub exponent: Option<i64>,
    /// Upper bound of a delay in ms (none by default).
    #[serde(default)]
    pub max_delay: Option<i64>,
}

/// The run store's required keys and defaults.
#[derive(Deserialize, ToSchema)]
pub struct StoreConfig {
    /// Keys every trigger must provide.
    #[serde(default)]
    pub required_keys: Option<Vec<String>>,
    /// Key → value used when a trigger leaves the key out.
    #[serde(default)]
    pub default_values: Option<BTreeMap<String, String>>,
}

/// A trigger that starts runs of the graph.
#[derive(Deserialize, ToSchema)]
pub struct Trigger {
    /// The only kind: CRON.
    #[serde(rename = "type")]
    pub kind: TriggerType,
    /// `{"expression": "*/5 * * * *", "timezone": "UTC"}`.
    pub value: BTreeMap<String, Value>,
}

/// The upsert and get answer (`UpsertGraphTemplateResponse`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GraphTemplateResponse {
    /// The nodes as stored.
    pub nodes: Vec<NodeTemplate>,
    /// Secret name → true (values are never returned).
    pub secrets: BTreeMap<String, bool>,
    /// The graph's retry policy.
    pub retry_policy: RetryPolicy,
    /// Store keys and defaults.
    pub store_config: StoreConfig,
    /// Triggers.
    pub triggers: Vec<Trigger>,
    /// Webhooks (ours; only when the graph has some).
    pub webhooks: Option<Vec<exo_types::graph::Webhook>>,
    /// Naive ISO time (UTC), e.g. `2026-01-01T12:00:00.123000`.
    pub created_at: String,
    /// Naive ISO time (UTC).
    pub updated_at: String,
    /// VALID when runs can start.
    pub validation_status: ValidationStatus,
    /// Why it is INVALID.
    pub validation_errors: Vec<String>,
}

/// `GET /graphs/`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListGraphTemplatesResponse {
    /// The namespace.
    pub namespace: String,
    /// Number of templates.
    pub count: u64,
    /// The templates.
    pub templates: Vec<GraphTemplateEntry>,
}

named_document! {
    /// A stored graph template (secrets as stored: encrypted).
    GraphTemplateEntry {
        /// Nodes.
        nodes: Vec<NodeTemplate>,
        /// Validation status.
        validation_status: ValidationStatus,
        /// Validation errors.
        validation_errors: Vec<String>,
        /// Secret name → encrypted value.
        secrets: BTreeMap<String, String>,
        /// Triggers.
        triggers: Vec<Trigger>,
        /// Retry policy.
        retry_policy: RetryPolicy,
        /// Store configuration.
        store_config: StoreConfig,
    }
}

// ---------------------------------------------------------------------------
// Nodes.

/// `PUT /nodes/`: a runtime registers its nodes.
#[derive(Deserialize, ToSchema)]
pub struct RegisterNodesRequest {
    /// The runtime's name.
    pub runtime_name: String,
    /// Its nodes.
    pub nodes: Vec<NodeRegistration>,
}

/// One registered node.
#[derive(Deserialize, ToSchema)]
pub struct NodeRegistration {
    /// Node name.
    pub name: String,
    /// JSON Schema of its inputs (string fields).
    pub inputs_schema: BTreeMap<String, Value>,
    /// JSON Schema of its outputs (string fields).
    pub outputs_schema: BTreeMap<String, Value>,
    /// Secret names it needs.
    pub secrets: Vec<String>,
}

/// `PUT /nodes/` answer.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterNodesResponse {
    /// The runtime's name.
    pub runtime_name: String,
    /// What was registered.
    pub registered_nodes: Vec<NodeRegistration>,
}

/// `GET /nodes/`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListRegisteredNodesResponse {
    /// The namespace.
    pub namespace: String,
    /// Number of nodes.
    pub count: u64,
    /// The nodes.
    pub nodes: Vec<RegisteredNode>,
}

named_document! {
    /// A registered node as stored.
    RegisteredNode {
        /// Runtime that registered it.
        runtime_name: String,
        /// That runtime's namespace.
        runtime_namespace: String,
        /// Inputs schema.
        inputs_schema: BTreeMap<String, Value>,
        /// Outputs schema.
        outputs_schema: BTreeMap<String, Value>,
        /// Secret names.
        secrets: Vec<String>,
    }
}

/// `GET /v0/namespaces`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespacesResponse {
    /// Namespaces with registered nodes, sorted.
    pub namespaces: Vec<String>,
    /// How many.
    pub count: u64,
}

/// `GET /health`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthResponse {
    /// `OK`.
    pub message: String,
}

// ---------------------------------------------------------------------------
// Runs.

/// `POST /graph/{graph_name}/trigger`.
#[derive(Deserialize, ToSchema)]
pub struct TriggerGraphRequest {
    /// The run's initial store (merged over the graph's defaults).
    #[serde(default)]
    pub store: Option<BTreeMap<String, String>>,
    /// Overrides of the root node's inputs.
    #[serde(default)]
    pub inputs: Option<BTreeMap<String, String>>,
    /// Milliseconds before the root may run (≥ 0).
    #[serde(default)]
    pub start_delay: Option<i64>,
}

/// `POST /graph/{graph_name}/trigger` answer.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerGraphResponse {
    /// CREATED.
    pub status: StateStatus,
    /// The new run's id.
    pub run_id: String,
}

/// `GET /runs/{page}/{size}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunsResponse {
    /// The namespace.
    pub namespace: String,
    /// Runs in the namespace.
    pub total: u64,
    /// Page (from 1).
    pub page: u64,
    /// Page size.
    pub size: u64,
    /// The page, newest first.
    pub runs: Vec<RunListItem>,
}

/// A run in a list.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunListItem {
    /// Run id.
    pub run_id: String,
    /// Graph.
    pub graph_name: String,
    /// States SUCCESS or PRUNED.
    pub success_count: u64,
    /// States CREATED, QUEUED or EXECUTED.
    pub pending_count: u64,
    /// States ERRORED, NEXT_CREATED_ERROR or CANCELLED.
    pub errored_count: u64,
    /// States RETRY_CREATED.
    pub retried_count: u64,
    /// All states.
    pub total_count: u64,
    /// Run status.
    pub status: RunStatus,
    /// Naive ISO time (UTC).
    pub created_at: String,
}

/// `GET /run/{run_id}` (exo extension): one run, and why it failed.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunDetails {
    /// Run id.
    pub run_id: String,
    /// Graph.
    pub graph_name: String,
    /// Run status.
    pub status: RunStatus,
    /// All states.
    pub total_count: u64,
    /// States still pending.
    pub pending_count: u64,
    /// States that succeeded (or were pruned).
    pub success_count: u64,
    /// States that failed.
    pub errored_count: u64,
    /// States replaced by a retry.
    pub retried_count: u64,
    /// States stopped by a cancellation.
    pub cancelled_count: u64,
    /// Naive ISO time (UTC).
    pub created_at: String,
    /// When the run ended, naive ISO (UTC), or null.
    pub finished_at: Option<String>,
    /// Why it failed: failed states and unite groups that did not fire (at
    /// most 20 states).
    pub failures: Vec<RunFailure>,
}

/// A reason a run failed.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RunFailure {
    /// A state that ended ERRORED (no retry left) or NEXT_CREATED_ERROR.
    State(StateFailure),
    /// A unite group that closed without firing.
    Unite(UniteFailure),
}

/// A failed state.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateFailure {
    /// State id.
    pub state_id: String,
    /// Node identifier in the graph.
    pub identifier: String,
    /// Node name.
    pub node_name: String,
    /// ERRORED or NEXT_CREATED_ERROR.
    pub status: StateStatus,
    /// Retry generation.
    pub retry_count: i64,
    /// The error.
    pub error: Option<String>,
}

/// A unite group that closed without firing.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UniteFailure {
    /// Identifier of the uniting node.
    pub unite: String,
    /// Id of the state it waited under.
    pub target_state_id: String,
    /// UNITE_NOT_FIRED.
    pub status: String,
    /// Why.
    pub error: Option<String>,
}

/// `POST /run/{run_id}/cancel` answer.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRunResponse {
    /// The run.
    pub run_id: String,
    /// CANCELLING.
    pub status: String,
}

/// `GET /states/run/{run_id}/graph`: the run's states as a graph.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GraphStructureResponse {
    /// States without a parent.
    pub root_states: Vec<GraphNode>,
    /// Graph name (empty for an unknown run).
    pub graph_name: String,
    /// Every state.
    pub nodes: Vec<GraphNode>,
    /// Parent → child.
    pub edges: Vec<GraphEdge>,
    /// `nodes.len()`.
    pub node_count: u64,
    /// `edges.len()`.
    pub edge_count: u64,
    /// State status → count.
    pub execution_summary: BTreeMap<String, u64>,
}

/// A state in a run graph.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GraphNode {
    /// State id.
    pub id: String,
    /// Node name.
    pub node_name: String,
    /// Identifier in the graph.
    pub identifier: String,
    /// Status.
    pub status: StateStatus,
    /// Error, if any.
    pub error: Option<String>,
    /// Retries before this attempt (exo extension, as the next two).
    #[serde(default)]
    pub retry_count: Option<i64>,
    /// When the state was created, naive ISO time in UTC (exo extension).
    #[serde(default)]
    pub created_at: Option<String>,
    /// When the state last changed, naive ISO time in UTC (exo extension).
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// An edge of a run graph.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GraphEdge {
    /// Parent state id.
    pub source: String,
    /// Child state id.
    pub target: String,
}

/// `GET /graph/{graph_name}/run/{run_id}/node/{node_id}`: one state.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeRunDetails {
    /// State id.
    pub id: String,
    /// Node name.
    pub node_name: String,
    /// Identifier in the graph.
    pub identifier: String,
    /// Graph.
    pub graph_name: String,
    /// Run.
    pub run_id: String,
    /// Status.
    pub status: StateStatus,
    /// Resolved inputs.
    pub inputs: BTreeMap<String, Value>,
    /// Outputs (empty until executed).
    pub outputs: BTreeMap<String, Value>,
    /// Error, if any.
    pub error: Option<String>,
    /// Ancestor identifier → state id.
    pub parents: BTreeMap<String, String>,
    /// Naive ISO time (UTC).
    pub created_at: String,
    /// Naive ISO time (UTC).
    pub updated_at: String,
}

// ---------------------------------------------------------------------------
// States (the runtime side).

/// `POST /states/enqueue`: take up to `batch_size` states of these nodes.
#[derive(Deserialize, ToSchema)]
pub struct EnqueueRequest {
    /// Node names to take work for.
    pub nodes: Vec<String>,
    /// Most states to take (≥ 1).
    pub batch_size: i64,
}

/// `POST /states/enqueue` answer: the states handed out (leased to the
/// caller).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueResponse {
    /// How many.
    pub count: u64,
    /// The namespace.
    pub namespace: String,
    /// QUEUED.
    pub status: StateStatus,
    /// The states.
    pub states: Vec<EnqueuedState>,
}

/// A state handed out to a runtime.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueuedState {
    /// State id: report its result with it.
    pub state_id: String,
    /// Node to run.
    pub node_name: String,
    /// Identifier in the graph.
    pub identifier: String,
    /// Resolved inputs.
    pub inputs: BTreeMap<String, Value>,
    /// Naive ISO time (UTC).
    pub created_at: String,
}

/// `POST /state/{state_id}/executed`: the outputs (one object per
/// successor fan-out item; `[]` for none).
#[derive(Deserialize, ToSchema)]
pub struct ExecutedRequest {
    /// Output objects (string values).
    pub outputs: Vec<BTreeMap<String, Value>>,
}

/// `{"status": ...}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusResponse {
    /// The state's new status.
    pub status: StateStatus,
}

/// `POST /state/{state_id}/errored`.
#[derive(Deserialize, ToSchema)]
pub struct ErroredRequest {
    /// The error message.
    pub error: String,
}

/// `POST /state/{state_id}/errored` answer.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErroredResponse {
    /// ERRORED.
    pub status: StateStatus,
    /// Whether a retry was scheduled.
    pub retry_created: bool,
}

/// `POST /state/{state_id}/prune`.
#[derive(Deserialize, ToSchema)]
pub struct PruneRequest {
    /// Why (stored with the state).
    pub data: BTreeMap<String, Value>,
}

/// `POST /state/{state_id}/re-enqueue-after`.
#[derive(Deserialize, ToSchema)]
pub struct ReEnqueueAfterRequest {
    /// Delay in milliseconds (> 0).
    pub enqueue_after: i64,
}

/// Prune and re-enqueue answers.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueAfterResponse {
    /// Epoch ms when the state may run again (prune: the stored value).
    pub enqueue_after: i64,
    /// PRUNED or CREATED.
    pub status: StateStatus,
}

/// `POST /state/{state_id}/manual-retry`.
#[derive(Deserialize, ToSchema)]
pub struct ManualRetryRequest {
    /// Client-chosen id of the retry (idempotency).
    pub fanout_id: String,
}

/// `POST /state/{state_id}/manual-retry` answer.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualRetryResponse {
    /// Id of the new state.
    pub id: String,
    /// CREATED.
    pub status: StateStatus,
}

/// `GET /state/{state_id}/secrets`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretsResponse {
    /// Secret name → plaintext value (every secret of the state's graph).
    pub secrets: BTreeMap<String, String>,
}

/// `GET /graph/{graph}/triggers` (ours).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GraphTriggersResponse {
    /// The namespace.
    pub namespace: String,
    /// The graph.
    pub graph_name: String,
    /// CRON schedules fire only while this is VALID.
    pub validation_status: ValidationStatus,
    /// The template's triggers, in order.
    pub triggers: Vec<TriggerState>,
}

/// One trigger; CRON triggers with their schedule.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerState {
    /// CRON or EVENT.
    #[serde(rename = "type")]
    pub kind: TriggerType,
    /// The trigger's value as declared.
    pub value: serde_json::Map<String, Value>,
    /// CRON: the key occurrences are stored under (the expression, or
    /// `CRON_TZ=<zone> <expression>`).
    pub key: Option<String>,
    /// CRON: the IANA zone whose wall clock the expression reads.
    pub timezone: Option<String>,
    /// CRON: `SKIP`, `ONCE` or `ALL`.
    pub catch_up: Option<String>,
    /// CRON: most runs `ALL` starts after one downtime.
    pub max_catch_up: Option<u32>,
    /// CRON: the next fire times after now (RFC 3339, UTC).
    pub next_fire_times: Option<Vec<String>>,
    /// CRON: the stored occurrence that fires next, if any.
    pub scheduled: Option<String>,
    /// CRON: the latest occurrences fired or skipped, newest first.
    pub recent: Option<Vec<Occurrence>>,
}

/// A CRON occurrence that fired, failed or was skipped.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Occurrence {
    /// Its time (RFC 3339, UTC).
    pub trigger_time: String,
    /// TRIGGERING, TRIGGERED, FAILED or SKIPPED.
    pub status: String,
    /// The run it started.
    pub run_id: Option<String>,
    /// Why it failed or was skipped.
    pub error: Option<String>,
}

/// `GET /graph/{graph}/webhooks/deliveries` (ours).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookDeliveriesResponse {
    /// The namespace.
    pub namespace: String,
    /// The graph.
    pub graph_name: String,
    /// Number of deliveries listed.
    pub count: u64,
    /// Newest first.
    pub deliveries: Vec<WebhookDelivery>,
}

/// One lifecycle event's delivery to one webhook.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookDelivery {
    /// `<event id>@<hash of the url>` (the `X-Exo-Delivery` header).
    pub id: String,
    /// The webhook's address.
    pub url: String,
    /// The event's `ce-id`.
    pub event_id: String,
    /// The event's `ce-type`.
    pub event_type: String,
    /// DELIVERED (a 2xx answer), RETRYING or FAILED (no attempt left).
    pub status: String,
    /// First attempt (Unix ms).
    pub created_at_ms: Option<i64>,
    /// Last attempt (Unix ms).
    pub updated_at_ms: Option<i64>,
    /// Every attempt, oldest first.
    pub attempts: Vec<WebhookAttempt>,
}

/// One attempt of a webhook delivery.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookAttempt {
    /// When (Unix ms).
    pub at_ms: Option<i64>,
    /// The receiver's HTTP status.
    pub status_code: Option<i64>,
    /// Why there is no status (connection refused, timeout, no key).
    pub error: Option<String>,
    /// How long the attempt took.
    pub duration_ms: Option<i64>,
}
