//! Schemas of the per-node views of a run (ours: `/run/{run_id}/nodes`).

use std::collections::BTreeMap;

use serde::Deserialize;
use utoipa::ToSchema;

use exo_types::status::{RunStatus, StateStatus};

/// `GET /run/{run_id}/nodes`: a run's states summed per graph node.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunNodesResponse {
    /// Run id.
    pub run_id: String,
    /// Graph.
    pub graph_name: String,
    /// Run status.
    pub status: RunStatus,
    /// One entry per graph node with states in the run, in order of its
    /// first state's creation.
    pub nodes: Vec<RunNodeSummary>,
}

/// The states of one graph node in a run.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunNodeSummary {
    /// Identifier in the graph.
    pub identifier: String,
    /// Node name.
    pub node_name: String,
    /// Identifier of the node whose state created these (null for the root).
    pub parent: Option<String>,
    /// Its states, all attempts counted.
    pub total: u64,
    /// Status → states (statuses with none left out); CREATED, QUEUED and
    /// EXECUTED states count together as `PENDING`.
    pub counts: BTreeMap<String, u64>,
    /// Most attempts of one state (retries + 1).
    pub attempts: u64,
    /// When its first state was created, naive ISO time in UTC.
    pub first_created_at: Option<String>,
    /// When one of its states last changed status group (pending, ended),
    /// naive ISO time in UTC.
    pub last_updated_at: Option<String>,
}

/// `GET /run/{run_id}/nodes/{identifier}/states`: a page of one node's
/// states, in id order.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunNodeStatesResponse {
    /// Run id.
    pub run_id: String,
    /// Identifier in the graph.
    pub identifier: String,
    /// `states.len()`.
    pub count: u64,
    /// The page.
    pub states: Vec<RunNodeState>,
    /// Pass as `?after=` for the next page; null on the last one.
    pub next_after: Option<String>,
}

/// A state as a node's page lists it (inputs and outputs: read the state).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunNodeState {
    /// State id.
    pub id: String,
    /// Node name.
    pub node_name: String,
    /// Status.
    pub status: StateStatus,
    /// Error, if any.
    pub error: Option<String>,
    /// Retries before this attempt.
    pub retry_count: i64,
    /// Naive ISO time (UTC).
    pub created_at: String,
    /// Naive ISO time (UTC).
    pub updated_at: String,
}
