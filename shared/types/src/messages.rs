//! Wire messages exchanged over NATS (runtime protocol version 1).
//!
//! All messages are JSON objects. Unknown fields are ignored so that newer
//! publishers can add fields without breaking older consumers. The protocol is
//! described for runtime authors in `docs/runtime-protocol.md`.

use crate::ids::StateId;
use crate::names::{NodeName, RunId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Protocol version carried in the `Exo-Protocol` header.
pub const PROTOCOL_VERSION: &str = "1";
/// Header carrying [`PROTOCOL_VERSION`].
pub const HEADER_PROTOCOL: &str = "Exo-Protocol";
/// Header naming the object, in the `EXO_PAYLOADS` JetStream object store,
/// that holds the payload of a message too large for the server's
/// `max_payload`; the message body is then empty.
pub const HEADER_PAYLOAD_REF: &str = "Exo-Payload-Ref";
/// Header naming a core NATS subject that wants to know how the message was
/// handled: the consuming service publishes a [`Reply`] there once the
/// message's effects are committed (or it was found stale or rejected).
/// Optional; without it nothing is replied.
pub const HEADER_REPLY_TO: &str = "Exo-Reply-To";

/// Header carrying the API key on a secrets request (the same key as the
/// HTTP API's `x-api-key`).
pub const HEADER_API_KEY: &str = "Exo-Api-Key";

/// How a service handled a message that asked for a reply
/// ([`HEADER_REPLY_TO`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// What happened.
    pub outcome: ReplyOutcome,
    /// Why, for `stale` and `rejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The outcome carried by a [`Reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyOutcome {
    /// The effects are committed.
    Done,
    /// Nothing to do: the message no longer applies (the state moved on, a
    /// copy was applied first).
    Stale,
    /// The message can never be handled (dead-lettered with the reason).
    Rejected,
}

/// What a run is started with, shared by [`TriggerCommand`] and
/// [`StartRun`] (flattened into them: the same JSON fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    /// Graph template name.
    pub graph_name: String,
    /// Values for the root node's inputs (they replace the template's).
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// Initial per-run store.
    #[serde(default)]
    pub store: BTreeMap<String, String>,
    /// Delay before the root state may run, in milliseconds.
    #[serde(default)]
    pub start_delay_ms: u64,
}

impl RunRequest {
    /// A request for graph `graph_name` with nothing else.
    pub fn of(graph_name: impl Into<String>) -> Self {
        Self {
            graph_name: graph_name.into(),
            inputs: BTreeMap::new(),
            store: BTreeMap::new(),
            start_delay_ms: 0,
        }
    }
}

/// Command that starts a run (`exo.v1.<ns>.run.trigger`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerCommand {
    /// Run id chosen by the publisher (a UUID); it is also the dedup key.
    pub run_id: RunId,
    /// The graph, inputs, store and delay.
    #[serde(flatten)]
    pub run: RunRequest,
    /// When the command was issued (Unix ms); the root's `enqueue_after` is
    /// computed from it so that a redelivery does not move the schedule.
    #[serde(default)]
    pub requested_at_ms: Option<i64>,
}

/// A request to start a run, from any client, on `exo.v1.<ns>.start`
/// (core NATS; see docs/events.md). With a reply subject the answer is a
/// [`StartReply`]; without one, a request that cannot start a run is
/// recorded on the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartRun {
    /// The graph, inputs, store and delay.
    #[serde(flatten)]
    pub run: RunRequest,
    /// At most one run per key and graph, forever: the run id is derived
    /// from it (the `Nats-Msg-Id` header serves when this is absent).
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// The answer to a [`StartRun`]: `{"status": 200, "run_id": ...}`, or the
/// HTTP status the same request gets from the api (400, 404) with a
/// `detail`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartReply {
    /// 200, 400 or 404 (500 for a failure of this system).
    pub status: u16,
    /// The run (on 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    /// Why no run was started (otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl StartReply {
    /// The run was started (or had been, under the same key).
    pub fn started(run_id: RunId) -> Self {
        Self {
            status: 200,
            run_id: Some(run_id),
            detail: None,
        }
    }

    /// No run was started, with the api's status for the same request.
    pub fn refused(status: u16, detail: impl Into<String>) -> Self {
        Self {
            status,
            run_id: None,
            detail: Some(detail.into()),
        }
    }
}

/// Command that cancels a run (`exo.v1.<ns>.run.cancel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelCommand {
    /// Run to cancel.
    pub run_id: RunId,
}

/// Hand-off from a writer to the scheduler: a state now exists in CREATED
/// (`exo.v1.<ns>.state.created`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateCreated {
    /// State id (24 hex).
    pub state_id: StateId,
    /// Run id.
    pub run_id: RunId,
    /// Registered node name.
    pub node_name: NodeName,
    /// Earliest dispatch time, Unix ms.
    pub enqueue_after: i64,
    /// Re-queue cycle of the state this hand-off belongs to.
    #[serde(default)]
    pub generation: i64,
}

/// Work handed to a runtime (`exo.v1.<ns>.dispatch.<node>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dispatch {
    /// State id (24 hex).
    pub state_id: StateId,
    /// Dispatch attempt; results must echo it.
    pub attempt: u32,
    /// Run id.
    pub run_id: RunId,
    /// Graph template name.
    pub graph_name: String,
    /// Registered node name.
    pub node_name: NodeName,
    /// Node identifier in the graph.
    pub identifier: String,
    /// Resolved inputs.
    pub inputs: Map<String, Value>,
    /// When the state was created (Unix ms), so an HTTP hand-out can answer
    /// without reading the state. Absent in dispatches of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at_ms: Option<i64>,
}

/// A node finished (`exo.v1.<ns>.result.executed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Executed {
    /// State id.
    pub state_id: StateId,
    /// Attempt from the dispatch.
    pub attempt: u32,
    /// One object per output; more than one fans out.
    pub outputs: Vec<Map<String, Value>>,
}

/// A node failed (`exo.v1.<ns>.result.errored`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Errored {
    /// State id.
    pub state_id: StateId,
    /// Attempt from the dispatch.
    pub attempt: u32,
    /// Error text.
    pub error: String,
}

/// A node ended its branch (`exo.v1.<ns>.result.pruned`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pruned {
    /// State id.
    pub state_id: StateId,
    /// Attempt from the dispatch.
    pub attempt: u32,
    /// Free-form prune data.
    #[serde(default)]
    pub data: Map<String, Value>,
}

/// A node asked to run again later (`exo.v1.<ns>.result.requeue`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Requeue {
    /// State id.
    pub state_id: StateId,
    /// Attempt from the dispatch.
    pub attempt: u32,
    /// Delay in milliseconds (> 0).
    pub delay_ms: i64,
}

/// A lifecycle event published on `exo.v1.<ns>.event.run.<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEvent {
    /// Run id.
    pub run_id: RunId,
    /// Graph template name.
    pub graph_name: String,
    /// `PENDING`, `SUCCESS` or `FAILED`.
    pub status: String,
    /// Unix ms when the event was produced.
    pub at_ms: i64,
}

/// A message that could not be handled, copied to `exo.dlq.v1.<stream>.<consumer>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Subject the message arrived on.
    pub subject: String,
    /// Why it was rejected.
    pub reason: String,
    /// The raw payload, as lossy UTF-8.
    pub payload: String,
    /// Unix ms of rejection.
    pub at_ms: i64,
}

/// Nats-Msg-Id of a trigger command.
pub fn trigger_msg_id(run_id: &str) -> String {
    format!("trg:{run_id}")
}

/// Nats-Msg-Id of a state-created hand-off; `generation` distinguishes
/// re-queue cycles of the same state.
pub fn created_msg_id(state_id: &str, generation: i64) -> String {
    format!("crt:{state_id}:{generation}")
}

/// Nats-Msg-Id of the announcement of a parked state that fell due.
pub fn due_msg_id(state_id: &str, generation: i64) -> String {
    format!("due:{state_id}:{generation}")
}

/// Nats-Msg-Id of a dispatch.
pub fn dispatch_msg_id(state_id: &str, attempt: u32) -> String {
    format!("dsp:{state_id}:{attempt}")
}

/// Nats-Msg-Id of a cancel command.
pub fn cancel_msg_id(run_id: &str) -> String {
    format!("cancel:{run_id}")
}

/// Nats-Msg-Id of the `run.finished` event.
pub fn finished_event_msg_id(run_id: &str) -> String {
    format!("run:{run_id}:finished")
}

/// Nats-Msg-Id of the `run.cancelled` event.
pub fn cancelled_event_msg_id(run_id: &str) -> String {
    format!("run:{run_id}:cancelled")
}

/// Nats-Msg-Id of a dead letter: the consumer and the stream sequence of the
/// rejected message.
pub fn dead_letter_msg_id(consumer: &str, stream_sequence: u64) -> String {
    format!("dlq:{consumer}:{stream_sequence}")
}

/// Nats-Msg-Id of a runtime result.
pub fn result_msg_id(kind: &str, state_id: &str, attempt: u32) -> String {
    format!("res:{kind}:{state_id}:{attempt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_ignored_and_defaults_apply() {
        let t: TriggerCommand =
            serde_json::from_str(r#"{"run_id":"r","graph_name":"g","extra":1}"#).unwrap();
        assert!(t.run.inputs.is_empty() && t.run.store.is_empty());
        assert_eq!(t.run.start_delay_ms, 0);
        // The request is flattened: the wire keeps its fields at the top.
        let wire = serde_json::to_value(&t).unwrap();
        assert_eq!(wire["graph_name"], "g");
        assert!(wire.get("run").is_none());
        let p: Pruned =
            serde_json::from_str(r#"{"state_id":"0123456789abcdef01234567","attempt":1}"#).unwrap();
        assert!(p.data.is_empty());
        let bad = serde_json::from_str::<Pruned>(r#"{"state_id":"s","attempt":1}"#);
        assert!(
            bad.is_err(),
            "a state id that is not 24 hex digits does not decode"
        );
    }
}
