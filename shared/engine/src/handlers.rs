//! One handler per message kind. Each is idempotent under redelivery.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use exo_bus::Outgoing;
use exo_store::mongodb::bson::{self, Bson, DateTime, Document, doc, oid::ObjectId};
use exo_store::mongodb::options::ReturnDocument;
use exo_store::{RunDoc, StateDoc, StoreDoc, oid};
use exo_types::graph::NodeTemplate;
use exo_types::messages::{
    self as m, CancelCommand, Dispatch, Errored, Executed, Pruned, Requeue, RunEvent, StateCreated,
    TriggerCommand,
};
use exo_types::placeholder::{Dependency, DependentString};
use exo_types::status::{RunStatus, StateStatus};
use exo_types::{ids, subjects, time};
use futures::TryStreamExt;
use serde_json::{Map, Value};

use crate::effects::{self, Effects, Update};
use crate::graphs::{LoadedGraph, Unusable};
use crate::{Engine, Error, inputs};

/// States written per transaction when a result fans out (default of
/// `EXO_FANOUT_CHUNK`).
pub const CHUNK: usize = 256;

/// States written per fan-out transaction: `EXO_FANOUT_CHUNK` (at least 1),
/// else [`CHUNK`]. Tests use small chunks to cross chunk boundaries with few
/// states.
pub fn fanout_chunk() -> usize {
    static CHUNK_SIZE: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
        std::env::var("EXO_FANOUT_CHUNK")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n >= 1)
            .unwrap_or(CHUNK)
    });
    *CHUNK_SIZE
}
/// Pending states cancelled per transaction when a run is cancelled.
pub const CANCEL_BATCH: i64 = 1000;
/// Longest single delay the scheduler parks a message for.
pub const MAX_PARK: Duration = Duration::from_secs(3600);
/// Longest delay parked on the stream itself (nak with delay); longer delays
/// are parked in MongoDB so they never hold the consumer's ack-pending slots.
pub const NAK_PARK_LIMIT: Duration = Duration::from_secs(2);

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
        let raw = match cmd.inputs.get(key) {
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
        .filter(|k| !cmd.store.contains_key(*k))
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
        state_id: st.id.to_hex(),
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
        m::created_msg_id(&msg.state_id, st.requeue_gen),
        &msg,
    )?)
}

/// Converts a BSON document to a JSON object (relaxed extended JSON).
pub fn to_json_map(d: &Document) -> Map<String, Value> {
    match Bson::Document(d.clone()).into_relaxed_extjson() {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn json_to_doc(m: &Map<String, Value>) -> Result<Document, String> {
    bson::to_document(m).map_err(|e| format!("outputs cannot be stored: {e}"))
}

fn parse_id(s: &str) -> Option<ObjectId> {
    ids::parse_hex(s).map(ObjectId::from_bytes)
}

impl Engine {
    async fn publish_created(&self, states: &[StateDoc]) -> Result<(), Error> {
        let msgs: Vec<Outgoing> = states.iter().map(created_msg).collect::<Result<_, _>>()?;
        if !msgs.is_empty() {
            self.bus.publish_batch(msgs).await?;
        }
        Ok(())
    }

    async fn publish_finished(
        &self,
        ns: &str,
        run_id: &str,
        graph_name: &str,
        status: RunStatus,
    ) -> Result<(), Error> {
        let ev = RunEvent {
            run_id: run_id.to_string(),
            graph_name: graph_name.to_string(),
            status: status.as_str().to_string(),
            at_ms: time::now_ms(),
        };
        tracing::info!(exo.run_id = %run_id, exo.graph = %graph_name, status = status.as_str(), "Run finished.");
        self.bus
            .publish(Outgoing::json(
                subjects::event(ns, "run", "finished"),
                format!("run:{run_id}:finished"),
                &ev,
            )?)
            .await?;
        Ok(())
    }

    async fn after_apply(
        &self,
        st: &StateDoc,
        applied: Option<effects::Applied>,
    ) -> Result<(), Error> {
        if let Some(a) = applied {
            self.publish_created(&a.created).await?;
            if let Some(status) = a.finished {
                self.publish_finished(st.graph_ns(), &st.run_id, &st.graph_name, status)
                    .await?;
            }
        }
        Ok(())
    }

    /// After a fresh result lost the race for its state's first transition:
    /// the state moved on. If it was this very result that moved it (a
    /// concurrent delivery), the caller's work is done by that delivery or
    /// will be by a redelivery; anything else makes this result stale.
    async fn after_lost_race(&self, st: &StateDoc, digest: &str) -> Result<Outcome, Error> {
        let now = self.store.state(st.id).await?;
        Ok(match now {
            Some(cur)
                if cur.attempt == st.attempt && cur.result_digest.as_deref() == Some(digest) =>
            {
                // The same result is being applied by another delivery; ask for a
                // redelivery so that this one resumes whatever that one leaves.
                Outcome::Delay(Duration::from_secs(1))
            }
            Some(cur) => Outcome::Stale(format!("state is {}", cur.status)),
            None => Outcome::Reject(format!("state {} not found", st.id)),
        })
    }

    /// `trigger`: creates the run, its store and its root state, then hands the
    /// root to the scheduler.
    pub async fn on_trigger(&self, ns: &str, cmd: TriggerCommand) -> Result<Outcome, Error> {
        if let Err(e) = exo_types::names::validate_token("namespace", ns) {
            return Ok(Outcome::Reject(e.to_string()));
        }
        if cmd.run_id.is_empty() || cmd.run_id.len() > 128 {
            return Ok(Outcome::Reject(
                "run_id must have 1 to 128 characters".into(),
            ));
        }
        let lg = match self.graphs.get(ns, &cmd.graph_name).await? {
            Ok(g) => g,
            Err(u) => return Ok(Outcome::Reject(u.to_string())),
        };
        let root_inputs = match root_inputs(&lg, &cmd) {
            Ok(i) => i,
            Err(e) => return Ok(Outcome::Reject(e.to_string())),
        };
        // The run executes this version even if the template is replaced.
        self.graphs.pin(&lg).await?;
        let requested = cmd.requested_at_ms.unwrap_or_else(time::now_ms);
        let root_id = oid(ids::root_state_id(&cmd.run_id));
        let tmpl = lg.graph.root();
        let inputs_doc = match json_to_doc(&root_inputs) {
            Ok(d) => d,
            Err(e) => return Ok(Outcome::Reject(e)),
        };
        let mut root = inputs::new_state(
            root_id,
            tmpl,
            &inputs::Placement {
                graph_ns: ns,
                run_id: &cmd.run_id,
                graph_name: &cmd.graph_name,
                graph_version: Some(&lg.version),
            },
            inputs_doc,
            Document::new(),
            false,
            requested,
        );
        // The root takes the graph's namespace (spec §5.3).
        root.namespace_name = ns.to_string();
        root.enqueue_after =
            requested.saturating_add(cmd.start_delay_ms.min(i64::MAX as u64) as i64);
        let now = DateTime::from_millis(requested);
        let run = RunDoc {
            id: None,
            run_id: cmd.run_id.clone(),
            graph_name: cmd.graph_name.clone(),
            namespace_name: ns.to_string(),
            created_at: now,
            status: Some(RunStatus::Pending.as_str().to_string()),
            total_count: 1,
            pending_count: 1,
            success_count: 0,
            errored_count: 0,
            retried_count: 0,
            cancelled_count: 0,
            failed_unites: 0,
            finished_at: None,
        };
        let store_docs: Vec<StoreDoc> = cmd
            .store
            .iter()
            .map(|(k, v)| StoreDoc {
                run_id: cmd.run_id.clone(),
                namespace: ns.to_string(),
                graph_name: cmd.graph_name.clone(),
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        let ctx = (self.store.clone(), run, store_docs, root.clone());
        let result =
            exo_store::transaction(&self.store, &ctx, |s, (store, run, store_docs, root)| {
                Box::pin(async move {
                    store.runs().insert_one(run).session(&mut *s).await?;
                    if !store_docs.is_empty() {
                        store
                            .store_entries()
                            .insert_many(store_docs)
                            .session(&mut *s)
                            .await?;
                    }
                    store.states().insert_one(root).session(&mut *s).await?;
                    Ok(())
                })
            })
            .await;
        match result {
            Ok(()) => {
                tracing::debug!(exo.run_id = %cmd.run_id, exo.graph = %cmd.graph_name, "Run created.");
            }
            Err(e) if exo_store::is_duplicate_key(&e) => {
                // Created by an earlier delivery; fall through to re-publish.
                match self.store.state(root_id).await? {
                    Some(existing) => root = existing,
                    None => {
                        return Ok(Outcome::Reject(format!(
                            "run_id {} is already used",
                            cmd.run_id
                        )));
                    }
                }
                if root.status != StateStatus::Created {
                    return Ok(Outcome::Done);
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.publish_created(std::slice::from_ref(&root)).await?;
        Ok(Outcome::Done)
    }

    /// `trigger`: cancels a run. First the run alone is fenced (`cancelling`,
    /// one document): from then on every transaction of the run finds it
    /// fenced and aborts, so nothing more is created or counted. Then its
    /// pending states (CREATED, QUEUED, EXECUTED) become CANCELLED in batches
    /// of [`CANCEL_BATCH`], each batch with its counter change in one
    /// transaction, so a run of any width is cancelled within bounded
    /// transactions and its counters match its states after every batch;
    /// then the run reads CANCELLED. A crash in between is finished by the
    /// redelivery (the run is found fenced and still PENDING). Finally
    /// `exo.v1.<ns>.event.run.cancelled` tells runtimes to stop executions
    /// of the run.
    pub async fn on_cancel(&self, ns: &str, cmd: CancelCommand) -> Result<Outcome, Error> {
        let now = time::now_ms();
        let stamp = DateTime::from_millis(now);
        let fenced_now = self
            .store
            .runs()
            .find_one_and_update(
                doc! {"run_id": cmd.run_id.as_str(), "status": RunStatus::Pending.as_str(), "cancelling": {"$ne": true}},
                doc! {"$set": {"cancelling": true}},
            )
            .await
            .map_err(exo_store::Error::from)?
            .is_some();
        if fenced_now {
            exo_faults::point("store.write")?;
        }
        let run = self
            .store
            .runs_raw()
            .find_one(doc! {"run_id": cmd.run_id.as_str()})
            .await
            .map_err(exo_store::Error::from)?;
        let Some(run) = run else {
            return Ok(Outcome::Reject(format!("run {} not found", cmd.run_id)));
        };
        let status = run.get_str("status").unwrap_or_default().to_string();
        let cancelling = run.get_bool("cancelling").unwrap_or(false);
        if status != RunStatus::Pending.as_str() || !cancelling {
            if status == RunStatus::Cancelled.as_str() && cancelling {
                // Finished by an earlier delivery: tell runtimes again (deduplicated).
                self.publish_cancelled(ns, &cmd.run_id, now).await?;
                return Ok(Outcome::Done);
            }
            return Ok(Outcome::Stale(format!("run is {status}")));
        }
        let mut n = 0u64;
        loop {
            let swept = self.cancel_batch(&cmd.run_id, stamp).await?;
            n += swept;
            if swept == 0 {
                break;
            }
        }
        self.store
            .runs()
            .update_one(
                doc! {"run_id": cmd.run_id.as_str(), "status": RunStatus::Pending.as_str()},
                doc! {"$set": {"status": RunStatus::Cancelled.as_str(), "finished_at": stamp}},
            )
            .await
            .map_err(exo_store::Error::from)?;
        exo_faults::point("store.write")?;
        tracing::info!(exo.run_id = %cmd.run_id, states = n, "Run cancelled.");
        self.publish_cancelled(ns, &cmd.run_id, now).await?;
        Ok(Outcome::Done)
    }

    async fn publish_cancelled(&self, ns: &str, run_id: &str, now: i64) -> Result<(), Error> {
        let ev = RunEvent {
            run_id: run_id.to_string(),
            graph_name: String::new(),
            status: RunStatus::Cancelled.as_str().to_string(),
            at_ms: now,
        };
        self.bus
            .publish(Outgoing::json(
                subjects::event(ns, "run", "cancelled"),
                format!("run:{run_id}:cancelled"),
                &ev,
            )?)
            .await?;
        Ok(())
    }

    /// Cancels up to [`CANCEL_BATCH`] pending states of a cancelled run and
    /// moves its counters by as many, in one transaction. Returns how many.
    async fn cancel_batch(&self, run_id: &str, stamp: DateTime) -> Result<u64, Error> {
        let mut cur = self
            .store
            .states_raw()
            .find(doc! {"run_id": run_id, "status": {"$in": pending_statuses()}})
            .projection(doc! {"_id": 1})
            .limit(CANCEL_BATCH)
            .await
            .map_err(exo_store::Error::from)?;
        let mut ids = Vec::new();
        while let Some(d) = cur.try_next().await.map_err(exo_store::Error::from)? {
            if let Ok(id) = d.get_object_id("_id") {
                ids.push(id);
            }
        }
        if ids.is_empty() {
            return Ok(0);
        }
        let ctx = (self.store.clone(), run_id.to_string(), ids, stamp);
        let n = exo_store::transaction(&self.store, &ctx, |s, (store, run_id, ids, stamp)| {
            Box::pin(async move {
                let r = store
                    .states()
                    .update_many(
                        doc! {"_id": {"$in": ids.as_slice()}, "status": {"$in": pending_statuses()}},
                        doc! {"$set": {"status": StateStatus::Cancelled.as_str(), "error": "run cancelled", "updated_at": *stamp}},
                    )
                    .session(&mut *s)
                    .await?;
                let n = r.modified_count as i64;
                store
                    .runs()
                    .update_one(
                        doc! {"run_id": run_id.as_str()},
                        doc! {"$inc": {"pending_count": -n, "cancelled_count": n}},
                    )
                    .session(&mut *s)
                    .await?;
                Ok(n)
            })
        })
        .await?;
        Ok(u64::try_from(n).unwrap_or(0).max(1))
    }

    /// `scheduler`: moves a due CREATED state to QUEUED and publishes its
    /// dispatch. `seq` is the stream sequence of the `state.created` message
    /// being handled: the claim records it, and a state found QUEUED is
    /// dispatched again only by a redelivery of the very message that claimed
    /// it (which may have died before publishing). Any other copy (a
    /// reconciler announcement, a re-announcement by a resumed fan-out) finds
    /// the state QUEUED under another sequence and is stale, so a state that
    /// is executing is never dispatched twice.
    ///
    /// A state due within [`NAK_PARK_LIMIT`] is parked on the stream (nak
    /// with the remaining delay); a state due later is marked `parked` in
    /// MongoDB and the message acked, so delayed work never holds the
    /// consumer's ack-pending slots: [`Engine::announce_due`] announces it
    /// again when it falls due.
    pub async fn on_created(&self, msg: StateCreated, seq: u64) -> Result<Outcome, Error> {
        let Some(id) = parse_id(&msg.state_id) else {
            return Ok(Outcome::Reject(format!(
                "invalid state_id {:?}",
                msg.state_id
            )));
        };
        let now = time::now_ms();
        if msg.enqueue_after > now {
            return self.park(id, &msg, msg.enqueue_after - now).await;
        }
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let claimed = self
            .store
            .states()
            .find_one_and_update(
                doc! {"_id": id, "status": StateStatus::Created.as_str(), "enqueue_after": {"$lte": now}},
                doc! {"$set": {"status": StateStatus::Queued.as_str(), "claim_seq": seq},
                      "$unset": {"parked": ""},
                      "$inc": {"attempt": 1i64}},
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(exo_store::Error::from)?;
        if claimed.is_some() {
            exo_faults::point("store.write")?;
        }
        let st = match claimed {
            Some(st) => st,
            None => match self.store.state(id).await? {
                None => return Ok(Outcome::Reject(format!("state {} not found", msg.state_id))),
                Some(st) if st.status == StateStatus::Created && st.enqueue_after > now => {
                    return self.park(id, &msg, st.enqueue_after - now).await;
                }
                Some(st)
                    if st.status == StateStatus::Queued
                        && st.requeue_gen == msg.generation
                        && self.claimed_by(id, seq).await? =>
                {
                    // Claimed by an earlier delivery of this message, which may
                    // have died before publishing (the dispatch id deduplicates).
                    st
                }
                Some(st) => return Ok(Outcome::Stale(format!("state is {}", st.status))),
            },
        };
        self.publish_dispatch(&st).await?;
        Ok(Outcome::Done)
    }

    async fn claimed_by(&self, id: ObjectId, seq: i64) -> Result<bool, Error> {
        Ok(self
            .store
            .states_raw()
            .find_one(doc! {"_id": id, "claim_seq": seq})
            .projection(doc! {"_id": 1})
            .await
            .map_err(exo_store::Error::from)?
            .is_some())
    }

    /// Parks a state that is not due for `ms`: on the stream when short, in
    /// MongoDB (`parked: true`, announced by [`Engine::announce_due`]) when long.
    async fn park(&self, id: ObjectId, msg: &StateCreated, ms: i64) -> Result<Outcome, Error> {
        if ms <= NAK_PARK_LIMIT.as_millis() as i64 {
            return Ok(Outcome::Delay(park(ms)));
        }
        self.store
            .states()
            .update_one(
                doc! {"_id": id, "status": StateStatus::Created.as_str(), "requeue_gen": msg.generation},
                doc! {"$set": {"parked": true}},
            )
            .await
            .map_err(exo_store::Error::from)?;
        exo_faults::point("store.write")?;
        Ok(Outcome::Done)
    }

    /// `scheduler`: announces parked states that fell due (at most `limit`),
    /// with `Nats-Msg-Id = due:<state>:<generation>`. Returns how many.
    pub async fn announce_due(&self, limit: i64) -> Result<usize, Error> {
        let now = time::now_ms();
        let mut cur = self
            .store
            .states()
            .find(doc! {"status": StateStatus::Created.as_str(), "enqueue_after": {"$lte": now}, "parked": true})
            .limit(limit)
            .await
            .map_err(exo_store::Error::from)?;
        let mut out = Vec::new();
        while let Some(st) = cur.try_next().await.map_err(exo_store::Error::from)? {
            let msg = created_payload(&st);
            out.push(Outgoing::json(
                subjects::state_created(&st.namespace_name),
                m::due_msg_id(&msg.state_id, st.requeue_gen),
                &msg,
            )?);
        }
        let n = out.len();
        if n > 0 {
            self.bus.publish_batch(out).await?;
        }
        Ok(n)
    }

    /// Publishes the dispatch of a QUEUED state.
    pub async fn publish_dispatch(&self, st: &StateDoc) -> Result<(), Error> {
        let attempt = u32::try_from(st.attempt).unwrap_or(u32::MAX);
        let d = Dispatch {
            state_id: st.id.to_hex(),
            attempt,
            run_id: st.run_id.clone(),
            graph_name: st.graph_name.clone(),
            node_name: st.node_name.clone(),
            identifier: st.identifier.clone(),
            inputs: to_json_map(&st.inputs),
        };
        self.bus
            .publish(Outgoing::json(
                subjects::dispatch(&st.namespace_name, &st.node_name),
                m::dispatch_msg_id(&d.state_id, attempt),
                &d,
            )?)
            .await?;
        Ok(())
    }

    /// Loads the state a result is about and checks its attempt fence.
    /// Returns the state and whether it is still QUEUED for this attempt.
    async fn fenced(
        &self,
        state_id: &str,
        attempt: u32,
    ) -> Result<Result<(StateDoc, bool), Outcome>, Error> {
        let Some(id) = parse_id(state_id) else {
            return Ok(Err(Outcome::Reject(format!(
                "invalid state_id {state_id:?}"
            ))));
        };
        let Some(st) = self.store.state(id).await? else {
            return Ok(Err(Outcome::Reject(format!("state {state_id} not found"))));
        };
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

    /// `completion`: records outputs, fans out, creates successors, marks
    /// SUCCESS and lets unite groups close.
    pub async fn on_executed<P, F>(&self, msg: Executed, progress: P) -> Result<Outcome, Error>
    where
        P: Fn() -> F,
        F: std::future::Future<Output = ()>,
    {
        let (st, fresh) = match self.fenced(&msg.state_id, msg.attempt).await? {
            Ok(x) => x,
            Err(o) => return Ok(o),
        };
        // Between reading the state and the first write (tests widen it).
        exo_faults::point("completion.executed.loaded")?;
        if !fresh
            && !matches!(
                st.status,
                StateStatus::Executed | StateStatus::Success | StateStatus::NextCreatedError
            )
        {
            return Ok(Outcome::Stale(format!("state is {}", st.status)));
        }
        let digest = result_digest(&msg.outputs);
        if !fresh && st.result_digest.as_deref() != Some(digest.as_str()) {
            return Ok(Outcome::Stale(
                "a different result was already applied to this attempt".into(),
            ));
        }
        tracing::debug!(exo.state_id = %st.id, fresh, attempt = msg.attempt, "Applying an executed result.");
        let mut outputs = msg.outputs;
        if outputs.is_empty() {
            outputs.push(Map::new());
        }
        let mut out_docs = Vec::with_capacity(outputs.len());
        for o in &outputs {
            match json_to_doc(o) {
                Ok(d) => out_docs.push(d),
                Err(e) => return Ok(Outcome::Reject(e)),
            }
        }
        drop(outputs);
        let lg = match self.graph_for(&st).await? {
            Ok(g) => g,
            Err(u) => {
                if fresh {
                    self.fail_next_created(&st, &out_docs[0], &u.to_string())
                        .await?;
                }
                return Ok(Outcome::Done);
            }
        };
        let n = out_docs.len();
        let now = time::now_ms();
        let state_at = |j: usize| -> StateDoc {
            let mut s = st.clone();
            if j > 0 {
                s.id = oid(ids::fanout_sibling_id(&st.id.to_hex(), j));
                s.fanout_id = s.id.to_hex();
                s.retry_count = 0;
                s.does_unites = false;
                s.state_fingerprint = String::new();
                s.manual_retry_fanout_id = String::new();
                s.data = Document::new();
                s.enqueue_after = now;
                s.created_at = DateTime::from_millis(now);
                s.updated_at = s.created_at;
            }
            s.status = StateStatus::Executed;
            s.outputs = out_docs[j].clone();
            s.error = None;
            s
        };

        // Phase 1: S becomes EXECUTED and every sibling exists (EXECUTED), so
        // all of them are counted before any is counted out. The chunks lie on
        // a fixed grid, [c*chunk, (c+1)*chunk) with index 0 being S itself, so
        // every delivery of this result cuts the same chunks; each chunk is one
        // transaction, so it exists entirely or not at all, and a redelivery
        // skips exactly the chunks whose first state exists.
        let chunk = fanout_chunk();
        if fresh {
            let end = n.min(chunk);
            let mut fx = Effects::new(Some(lg.clone()), &st.run_id);
            fx.update(Update {
                filter: doc! {"_id": st.id, "status": "QUEUED", "attempt": st.attempt},
                update: doc! {"$set": {
                    "status": "EXECUTED",
                    "outputs": out_docs[0].clone(),
                    "result_digest": &digest,
                    "updated_at": DateTime::from_millis(now),
                }},
                expect: 1,
            });
            for j in 1..end {
                fx.insert(state_at(j));
            }
            let applied = effects::apply(&self.store, &fx, now).await?;
            if applied.is_none() {
                // Another delivery, an `errored` report of the same attempt or a
                // cancellation moved S first: continue only if it is this very
                // result that was applied.
                return self.after_lost_race(&st, &digest).await;
            }
            self.after_apply(&st, applied).await?;
            progress().await;
        }
        let mut j = chunk;
        while j < n {
            let end = n.min(j + chunk);
            let first = oid(ids::fanout_sibling_id(&st.id.to_hex(), j));
            if self.store.state(first).await?.is_none() {
                let mut fx = Effects::new(Some(lg.clone()), &st.run_id);
                // Fence: S still holds this attempt's result (not cancelled, not
                // replaced by a different result of a second execution).
                fx.update(Update {
                    filter: doc! {"_id": st.id, "status": "EXECUTED", "attempt": st.attempt,
                    "result_digest": &digest},
                    update: doc! {"$set": {"updated_at": DateTime::from_millis(now)}},
                    expect: 1,
                });
                for k in j..end {
                    fx.insert(state_at(k));
                }
                let applied = effects::apply(&self.store, &fx, now).await?;
                if applied.is_none() {
                    return Ok(Outcome::Stale(format!(
                        "fan-out of state {} stopped: it no longer holds this result",
                        st.id
                    )));
                }
                self.after_apply(&st, applied).await?;
                progress().await;
            }
            j = end;
        }

        // Phase 2: successors and SUCCESS, chunk by chunk.
        let next: Vec<&NodeTemplate> = lg
            .graph
            .next_nodes(&st.identifier)
            .iter()
            .filter_map(|id| lg.graph.node(id))
            .filter(|t| t.unites.is_none())
            .collect();
        let wanted = inputs::referenced_ancestors(next.iter().copied(), &st.identifier);
        let ancestor_ids: Vec<ObjectId> = wanted
            .iter()
            .filter_map(|i| st.parents.get(i).and_then(Bson::as_object_id))
            .collect();
        let mut ancestors = HashMap::new();
        if !ancestor_ids.is_empty() {
            let mut cur = self
                .store
                .states()
                .find(doc! {"_id": {"$in": ancestor_ids}})
                .await
                .map_err(exo_store::Error::from)?;
            while let Some(d) = cur.try_next().await.map_err(exo_store::Error::from)? {
                ancestors.insert(d.id, d);
            }
        }
        let store_values = effects::load_store_values(&self.store, None, &st)
            .await
            .map_err(exo_store::Error::from)?;
        let src = inputs::Sources {
            graph: &lg,
            store: &store_values,
            ancestors: &ancestors,
        };
        let mut finished = None;
        let mut j = 0;
        while j < n {
            let end = n.min(j + chunk);
            let chunk_ids: Vec<ObjectId> = (j..end)
                .map(|k| {
                    if k == 0 {
                        st.id
                    } else {
                        oid(ids::fanout_sibling_id(&st.id.to_hex(), k))
                    }
                })
                .collect();
            let mut still: HashSet<ObjectId> = HashSet::new();
            let mut cur = self
                .store
                .states_raw()
                .find(
                    doc! {"_id": {"$in": &chunk_ids}, "status": "EXECUTED", "attempt": st.attempt},
                )
                .projection(doc! {"_id": 1})
                .await
                .map_err(exo_store::Error::from)?;
            while let Some(d) = cur.try_next().await.map_err(exo_store::Error::from)? {
                if let Ok(id) = d.get_object_id("_id") {
                    still.insert(id);
                }
            }
            let mut fx = Effects::new(Some(lg.clone()), &st.run_id);
            let mut children: Vec<StateDoc> = Vec::new();
            let mut ok_ids = Vec::new();
            for k in j..end {
                let state = state_at(k);
                let mut kids = Vec::with_capacity(next.len());
                let mut failure = None;
                for t in &next {
                    match inputs::resolve_inputs(&src, t, &state) {
                        Ok(inp) => kids.push(inputs::new_state(
                            oid(ids::child_state_id(&state.id.to_hex(), &t.identifier)),
                            t,
                            &inputs::Placement::of(&st),
                            inp,
                            inputs::lineage(&state),
                            false,
                            now,
                        )),
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
                if !still.contains(&state.id) {
                    // Already advanced by an earlier delivery: re-announce its
                    // children (deduplicated by the bus and the scheduler).
                    if failure.is_none() {
                        children.extend(kids);
                    }
                    continue;
                }
                match failure {
                    None => {
                        ok_ids.push(state.id);
                        fx.count_transition(&state, StateStatus::Executed, StateStatus::Success);
                        for kid in kids {
                            fx.insert(kid);
                        }
                    }
                    Some(error) => {
                        fx.transition(
                            &state,
                            StateStatus::Executed,
                            StateStatus::NextCreatedError,
                            Update {
                                filter: doc! {"_id": state.id, "status": "EXECUTED"},
                                update: doc! {"$set": {"status": "NEXT_CREATED_ERROR", "error": error}},
                                expect: 1,
                            },
                        );
                    }
                }
            }
            let ok_ids_len = ok_ids.len();
            if !ok_ids.is_empty() {
                let count = ok_ids.len() as u64;
                fx.update(Update {
                    filter: doc! {"_id": {"$in": ok_ids}, "status": "EXECUTED"},
                    update: doc! {"$set": {"status": "SUCCESS"}},
                    expect: count,
                });
            }
            let applied = if fx.is_empty() {
                None
            } else {
                effects::apply(&self.store, &fx, now).await?
            };
            tracing::debug!(exo.state_id = %st.id, chunk = j, advanced = ok_ids_len, applied = applied.is_some(), "Phase 2 chunk done.");
            if let Some(a) = applied {
                if a.finished.is_some() {
                    finished = a.finished;
                }
                self.publish_created(&a.created).await?;
            }
            if !children.is_empty() {
                self.publish_created(&children).await?;
            }
            progress().await;
            j = end;
        }
        if let Some(status) = finished {
            self.publish_finished(st.graph_ns(), &st.run_id, &st.graph_name, status)
                .await?;
        }
        Ok(Outcome::Done)
    }

    async fn fail_next_created(
        &self,
        st: &StateDoc,
        outputs: &Document,
        error: &str,
    ) -> Result<(), Error> {
        // Without a usable template there are no unite groups to count.
        let mut fx = Effects::new(None, &st.run_id);
        fx.transition(
            st,
            StateStatus::Queued,
            StateStatus::NextCreatedError,
            Update {
                filter: doc! {"_id": st.id, "status": "QUEUED", "attempt": st.attempt},
                update: doc! {"$set": {"status": "NEXT_CREATED_ERROR", "outputs": outputs.clone(), "error": error}},
                expect: 1,
            },
        );
        let applied = effects::apply(&self.store, &fx, time::now_ms()).await?;
        self.after_apply(st, applied).await
    }

    /// `completion`: ends a branch with PRUNED.
    pub async fn on_pruned(&self, msg: Pruned) -> Result<Outcome, Error> {
        let (st, fresh) = match self.fenced(&msg.state_id, msg.attempt).await? {
            Ok(x) => x,
            Err(o) => return Ok(o),
        };
        if !fresh {
            return Ok(Outcome::Stale(format!("state is {}", st.status)));
        }
        let data = match json_to_doc(&msg.data) {
            Ok(d) => d,
            Err(e) => return Ok(Outcome::Reject(e)),
        };
        let lg = self.graph_for(&st).await?.ok();
        let mut fx = Effects::new(lg, &st.run_id);
        fx.transition(
            &st,
            StateStatus::Queued,
            StateStatus::Pruned,
            Update {
                filter: doc! {"_id": st.id, "status": "QUEUED", "attempt": st.attempt},
                update: doc! {"$set": {"status": "PRUNED", "data": data,
                "updated_at": DateTime::from_millis(time::now_ms())}},
                expect: 1,
            },
        );
        let applied = effects::apply(&self.store, &fx, time::now_ms()).await?;
        self.after_apply(&st, applied).await?;
        Ok(Outcome::Done)
    }

    /// `retry`: records a failure and creates the retry attempt the policy
    /// allows, or ends the state ERRORED.
    pub async fn on_errored(&self, msg: Errored) -> Result<Outcome, Error> {
        let (st, fresh) = match self.fenced(&msg.state_id, msg.attempt).await? {
            Ok(x) => x,
            Err(o) => return Ok(o),
        };
        let retry_id = oid(ids::retry_state_id(&st.id.to_hex()));
        if !fresh {
            if st.status == StateStatus::RetryCreated
                && let Some(r) = self.store.state(retry_id).await?
                && r.status == StateStatus::Created
            {
                self.publish_created(&[r]).await?;
                return Ok(Outcome::Done);
            }
            return Ok(Outcome::Stale(format!("state is {}", st.status)));
        }
        let graph = self.graph_for(&st).await?;
        let now = time::now_ms();
        let (lg, policy) = match graph {
            Ok(g) => {
                let p = g.graph.spec().retry_policy_for(&st.identifier).clone();
                (Some(g), Some(p))
            }
            Err(_) => (None, None),
        };
        let mut fx = Effects::new(lg, &st.run_id);
        let stamp = DateTime::from_millis(now);
        match policy.filter(|p| st.retry_count < p.max_retries) {
            Some(p) => {
                let mut r = st.clone();
                r.id = retry_id;
                r.status = StateStatus::Created;
                r.outputs = Document::new();
                r.data = Document::new();
                r.error = None;
                r.retry_count = st.retry_count + 1;
                let delay = p.delay_ms(r.retry_count, &mut rand::rng());
                r.enqueue_after = now.saturating_add(delay);
                r.attempt = 0;
                r.requeue_gen = 0;
                r.created_at = stamp;
                r.updated_at = stamp;
                if r.does_unites {
                    r.state_fingerprint = inputs::fingerprint(&r);
                }
                fx.transition(
                    &st,
                    StateStatus::Queued,
                    StateStatus::RetryCreated,
                    Update {
                        filter: doc! {"_id": st.id, "status": "QUEUED", "attempt": st.attempt},
                        update: doc! {"$set": {"status": "RETRY_CREATED", "error": &msg.error, "updated_at": stamp}},
                        expect: 1,
                    },
                );
                fx.insert(r);
            }
            None => fx.transition(
                &st,
                StateStatus::Queued,
                StateStatus::Errored,
                Update {
                    filter: doc! {"_id": st.id, "status": "QUEUED", "attempt": st.attempt},
                    update: doc! {"$set": {"status": "ERRORED", "error": &msg.error, "updated_at": stamp}},
                    expect: 1,
                },
            ),
        }
        let applied = effects::apply(&self.store, &fx, now).await?;
        self.after_apply(&st, applied).await?;
        Ok(Outcome::Done)
    }

    /// `retry`: puts a state back to CREATED to run again after a delay.
    pub async fn on_requeue(&self, msg: Requeue) -> Result<Outcome, Error> {
        if msg.delay_ms <= 0 {
            return Ok(Outcome::Reject(format!(
                "delay_ms must be > 0, got {}",
                msg.delay_ms
            )));
        }
        let (st, fresh) = match self.fenced(&msg.state_id, msg.attempt).await? {
            Ok(x) => x,
            Err(o) => return Ok(o),
        };
        if !fresh {
            if st.status == StateStatus::Created {
                self.publish_created(&[st]).await?;
                return Ok(Outcome::Done);
            }
            return Ok(Outcome::Stale(format!("state is {}", st.status)));
        }
        let now = time::now_ms();
        let after = self
            .store
            .states()
            .find_one_and_update(
                doc! {"_id": st.id, "status": "QUEUED", "attempt": st.attempt},
                doc! {"$set": {"status": "CREATED", "enqueue_after": now.saturating_add(msg.delay_ms),
                               "updated_at": DateTime::from_millis(now)},
                      "$inc": {"requeue_gen": 1i64}},
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(exo_store::Error::from)?;
        match after {
            Some(s) => {
                self.publish_created(&[s]).await?;
                Ok(Outcome::Done)
            }
            None => Ok(Outcome::Stale("state moved on".into())),
        }
    }
}

/// SHA-256 (hex) of an executed result's outputs.
fn result_digest(outputs: &[Map<String, Value>]) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(outputs).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// The statuses counted as pending, as stored.
fn pending_statuses() -> Vec<&'static str> {
    [
        StateStatus::Created,
        StateStatus::Queued,
        StateStatus::Executed,
    ]
    .iter()
    .map(|s| s.as_str())
    .collect()
}

fn park(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0)).min(MAX_PARK)
}
