//! What every handler shares: how a handled message is settled
//! ([`Outcome`]), the root's inputs (the `api` checks them synchronously,
//! the `trigger` service uses them), the hand-off and event messages, and the
//! fence every result goes through. The handlers themselves live in their
//! service crates (`exo-trigger`, `exo-scheduler`, `exo-completion`,
//! `exo-retry`).

use exo_types::names::RunId;
use std::sync::Arc;
use std::time::Duration;

use exo_bus::Outgoing;
use exo_store::StateDoc;
use exo_store::mongodb::bson::{self, Bson, Document, doc, oid::ObjectId};
use exo_types::ids::StateId;
use exo_types::messages::{self as m, Dispatch, RunEvent, StateCreated, TriggerCommand};
use exo_types::placeholder::{Dependency, DependentString};
use exo_types::status::{RunStatus, StateStatus};
use exo_types::{ids, subjects};
use futures::TryStreamExt;
use serde_json::{Map, Value};

use crate::effects::{self};
use crate::graphs::{LoadedGraph, Unusable};
use crate::{Engine, Error};

/// How a handled message should be settled.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Effects applied (or found already applied): ack.
    Done,
    /// Not due yet: redeliver after the delay.
    Delay(Duration),
    /// A duplicate or late message for work that moved on: ack, nothing to do.
    Stale(String),
    /// The message can never be handled: dead-letter it with this reason.
    Reject(String),
}

/// Why a trigger cannot start a run (the API maps these to HTTP 400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RootError {
    /// A root input placeholder cannot be resolved.
    #[error("Invalid input: {0}")]
    InvalidInput(String),
    /// Required store keys are absent.
    #[error("Missing store keys: {0:?}")]
    MissingStoreKeys(Vec<String>),
}

/// Builds the root state's inputs for a trigger (spec §5.3): template inputs
/// overridden by the request's, placeholders resolved from the request store
/// then the store defaults, then the required keys checked.
pub fn root_inputs(
    lg: &LoadedGraph,
    cmd: &TriggerCommand,
) -> Result<Map<String, Value>, RootError> {
    let root = lg.graph.root();
    let mut out = Map::new();
    for (key, tvalue) in &root.inputs {
        let raw = match cmd.run.inputs.get(key) {
            Some(v) => v.clone(),
            None => match tvalue.as_str() {
                Some(s) => s.to_string(),
                None => {
                    return Err(RootError::InvalidInput(format!(
                        "Input {key} is not a string"
                    )));
                }
            },
        };
        let ds =
            DependentString::parse(&raw).map_err(|e| RootError::InvalidInput(e.to_string()))?;
        let mut failure = None;
        let rendered = ds.render(|d| match d {
            Dependency::Store { key: k } => cmd
                .run
                .store
                .get(k)
                .or_else(|| lg.doc.store_config.default_values.get(k))
                .cloned()
                .or_else(|| {
                    failure.get_or_insert(format!(
                        "Dependent {k} not found in store for root node {}",
                        root.identifier
                    ));
                    None
                }),
            Dependency::Output { identifier, .. } => {
                failure.get_or_insert(format!(
                    "400: Root node can have only store identifier as dependent but got {identifier}"
                ));
                None
            }
        });
        match (rendered, failure) {
            (_, Some(f)) => return Err(RootError::InvalidInput(f)),
            (Err(e), None) => return Err(RootError::InvalidInput(e.to_string())),
            (Ok(v), None) => {
                out.insert(key.clone(), Value::String(v));
            }
        }
    }
    let mut missing: Vec<String> = lg
        .doc
        .store_config
        .required_keys
        .iter()
        .filter(|k| !cmd.run.store.contains_key(*k))
        .cloned()
        .collect();
    missing.sort();
    if !missing.is_empty() {
        return Err(RootError::MissingStoreKeys(missing));
    }
    Ok(out)
}

/// The `state.created` announcement of a state.
pub fn created_payload(st: &StateDoc) -> StateCreated {
    StateCreated {
        state_id: StateId::from_bytes(st.id.bytes()),
        run_id: st.run_id.clone(),
        node_name: st.node_name.clone(),
        enqueue_after: st.enqueue_after,
        generation: st.requeue_gen,
    }
}

/// The `state.created` message of a state (`crt:<state>:<generation>`).
pub fn created_msg(st: &StateDoc) -> Result<Outgoing, Error> {
    let msg = created_payload(st);
    Ok(Outgoing::json(
        subjects::state_created(&st.namespace_name),
        m::created_msg_id(&msg.state_id.to_hex(), st.requeue_gen),
        &msg,
    )?)
}

/// The dispatch message of a QUEUED state (`dsp:<state>:<attempt>`).
pub fn dispatch_msg(st: &StateDoc) -> Result<Outgoing, Error> {
    let attempt = u32::try_from(st.attempt).unwrap_or(u32::MAX);
    let d = Dispatch {
        state_id: StateId::from_bytes(st.id.bytes()),
        attempt,
        run_id: st.run_id.clone(),
        graph_name: st.graph_name.clone(),
        node_name: st.node_name.clone(),
        identifier: st.identifier.clone(),
        inputs: to_json_map(&st.inputs),
        created_at_ms: Some(st.created_at.timestamp_millis()),
    };
    Ok(Outgoing::json(
        subjects::dispatch(&st.namespace_name, &st.node_name),
        m::dispatch_msg_id(&d.state_id.to_hex(), attempt),
        &d,
    )?)
}

/// Converts a BSON document to a JSON object (relaxed extended JSON).
pub fn to_json_map(d: &Document) -> Map<String, Value> {
    match Bson::Document(d.clone()).into_relaxed_extjson() {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Converts a JSON object to a BSON document, or says why it cannot be stored.
pub fn json_to_doc(m: &Map<String, Value>) -> Result<Document, String> {
    bson::to_document(m).map_err(|e| format!("outputs cannot be stored: {e}"))
}

/// Parses a 24-hex state id.
pub fn parse_id(s: &str) -> Option<ObjectId> {
    ids::parse_hex(s).map(ObjectId::from_bytes)
}

impl Engine {
    /// Hands new CREATED states to the scheduler (`crt:` ids).
    pub async fn publish_created(&self, states: &[StateDoc]) -> Result<(), Error> {
        let msgs: Vec<Outgoing> = states.iter().map(created_msg).collect::<Result<_, _>>()?;
        if !msgs.is_empty() {
            self.bus.publish_batch(msgs).await?;
        }
        Ok(())
    }

    /// Publishes `event.run.finished` for a run that just ended.
    pub async fn publish_finished(
        &self,
        ns: &str,
        run_id: &str,
        graph_name: &str,
        status: RunStatus,
    ) -> Result<(), Error> {
        tracing::info!(exo.run_id = %run_id, exo.graph = %graph_name, status = status.as_str(), "Run finished.");
        let id = m::finished_event_msg_id(run_id);
        self.publish_run_event(ns, (run_id, graph_name), status, "finished", id)
            .await?;
        match crate::lifecycle::RunTransition::ending(status) {
            Some(t) => {
                let first = crate::lifecycle::Publication::First;
                self.publish_run_transition(ns, (run_id, graph_name), (t, first))
                    .await
            }
            None => Ok(()),
        }
    }

    /// On a path that may follow a handler that ended `st`'s run and died
    /// before telling it (a redelivered result that finds its work done):
    /// when the run has ended (SUCCESS or FAILED) and the events stream
    /// does not hold its ending lifecycle event, publishes its end again
    /// (`run.finished`, then the lifecycle event; both deduplicated by id).
    pub async fn publish_finished_again(&self, st: &StateDoc) -> Result<(), Error> {
        let Some(run) = self.store.run(&st.run_id).await? else {
            return Ok(());
        };
        let status = match run.status.as_deref() {
            Some("SUCCESS") => RunStatus::Success,
            Some("FAILED") => RunStatus::Failed,
            _ => return Ok(()),
        };
        let ns = st.graph_ns();
        if let (Some(prefix), Some(t)) = (
            crate::lifecycle::run_prefix(ns, &st.run_id),
            crate::lifecycle::RunTransition::ending(status),
        ) && self
            .bus
            .holds_event(&format!("{prefix}.run.{}", t.name()))
            .await?
        {
            return Ok(());
        }
        self.publish_finished(ns, &st.run_id, &st.graph_name, status)
            .await
    }

    /// Publishes `event.run.<name>` for run (`run_id`, `graph_name`) with
    /// `status`, under message id `msg_id`.
    pub async fn publish_run_event(
        &self,
        ns: &str,
        (run_id, graph_name): (&str, &str),
        status: RunStatus,
        name: &str,
        msg_id: String,
    ) -> Result<(), Error> {
        let ev = RunEvent {
            run_id: RunId::trusted(run_id),
            graph_name: graph_name.to_string(),
            status: status.as_str().to_string(),
            at_ms: self.now_ms(),
        };
        self.bus
            .publish(Outgoing::json(
                subjects::event(ns, "run", name),
                msg_id,
                &ev,
            )?)
            .await?;
        Ok(())
    }

    /// Publishes what a committed transaction produced: its new states
    /// and, when it ended the run, the run's end.
    pub async fn after_apply(
        &self,
        st: &StateDoc,
        applied: Option<effects::Applied>,
    ) -> Result<(), Error> {
        if let Some(a) = applied {
            self.hand_on(&a).await?;
            if let Some(status) = a.finished {
                self.publish_finished(st.graph_ns(), &st.run_id, &st.graph_name, status)
                    .await?;
            }
        }
        Ok(())
    }

    /// Publishes the dispatch of a QUEUED state.
    pub async fn publish_dispatch(&self, st: &StateDoc) -> Result<(), Error> {
        self.bus.publish(dispatch_msg(st)?).await?;
        Ok(())
    }

    /// Hands on what a write committed: its state transitions as lifecycle
    /// events ([`Engine::relay`]), then dispatches for the states inserted
    /// QUEUED and `state.created` for those inserted CREATED.
    pub async fn hand_on(&self, a: &effects::Applied) -> Result<(), Error> {
        let relaying = self.start_relay(&a.outbox).await?;
        self.publish_queued(&a.queued).await?;
        self.publish_created(&a.created).await?;
        relaying.finish(self).await
    }

    /// Publishes the dispatches of states inserted QUEUED.
    async fn publish_queued(&self, states: &[StateDoc]) -> Result<(), Error> {
        let msgs: Vec<Outgoing> = states.iter().map(dispatch_msg).collect::<Result<_, _>>()?;
        if !msgs.is_empty() {
            self.bus.publish_batch(msgs).await?;
        }
        Ok(())
    }

    /// Hands on again the states `ids` that a redelivered message
    /// `queued_by` may have created before its handler died: a state still
    /// CREATED is announced to the scheduler again, a state it inserted
    /// QUEUED and still in its first attempt is dispatched again (the
    /// dispatch id deduplicates a dispatch that did go out); anything else
    /// has moved on and is left alone.
    pub async fn hand_on_again(&self, ids: &[ObjectId], queued_by: &str) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut cur = self
            .store
            .states()
            .find(doc! {"_id": {"$in": ids}, "status": {"$in": [StateStatus::Created.as_str(), StateStatus::Queued.as_str()]}})
            .await
            .map_err(exo_store::Error::from)?;
        let mut pending = Vec::new();
        while let Some(st) = cur.try_next().await.map_err(exo_store::Error::from)? {
            if st.status == StateStatus::Created
                || (st.attempt == 1 && st.queued_by.as_deref() == Some(queued_by))
            {
                pending.push(st);
            }
        }
        self.hand_on(&effects::Applied::inserted(&pending)).await
    }

    /// Loads the state a result is about and checks its fences (the
    /// namespace of the subject it came on, see [`RESULT_NAMESPACE`], and
    /// its attempt):
    /// `Ok(Ok((state, fresh)))` where fresh means still QUEUED for this
    /// attempt; `Ok(Err(outcome))` for results that are stale or about no
    /// state.
    pub async fn fenced(
        &self,
        state_id: StateId,
        attempt: u32,
    ) -> Result<Result<(StateDoc, bool), Outcome>, Error> {
        let Some(st) = self.states.get(exo_store::oid(state_id.bytes())).await? else {
            return Ok(Err(Outcome::Reject(format!("state {state_id} not found"))));
        };
        let elsewhere = RESULT_NAMESPACE
            .try_with(|ns| (ns != st.namespace_name.as_str()).then(|| ns.clone()))
            .ok()
            .flatten();
        if let Some(ns) = elsewhere {
            return Ok(Err(Outcome::Reject(format!(
                "state {state_id} is not in namespace {ns}"
            ))));
        }
        if st.attempt != i64::from(attempt) {
            return Ok(Err(Outcome::Stale(format!(
                "attempt {attempt} is not the current attempt {}",
                st.attempt
            ))));
        }
        let fresh = st.status == StateStatus::Queued;
        Ok(Ok((st, fresh)))
    }

    /// The template version `st`'s run executes (the current template for
    /// states written before versions).
    pub async fn graph_for(
        &self,
        st: &StateDoc,
    ) -> Result<Result<Arc<LoadedGraph>, Unusable>, Error> {
        Ok(match st.graph_version.as_deref() {
            Some(v) => {
                self.graphs
                    .get_version(st.graph_ns(), &st.graph_name, v)
                    .await?
            }
            None => self.graphs.get(st.graph_ns(), &st.graph_name).await?,
        })
    }
}

tokio::task_local! {
    /// The namespace of the subject the result being handled arrived on
    /// (`exo.v1.<ns>.result.…`), set by the services that apply results
    /// around each handler ([`in_namespace_of`]): [`Engine::fenced`]
    /// rejects a result about a state of another namespace, so a runtime
    /// whose NATS permissions allow only its namespace's result subjects
    /// cannot touch another tenant's states. Unset (handlers called
    /// directly), no namespace is checked.
    pub static RESULT_NAMESPACE: String;
}

/// Runs `handle` with [`RESULT_NAMESPACE`] set to the namespace of
/// `subject` (when it names one).
pub async fn in_namespace_of<F: std::future::Future>(subject: &str, handle: F) -> F::Output {
    match exo_types::subjects::namespace_of(subject) {
        Some(ns) => RESULT_NAMESPACE.scope(ns.to_string(), handle).await,
        None => handle.await,
    }
}
