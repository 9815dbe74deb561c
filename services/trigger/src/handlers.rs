//! The `trigger` service's handlers: start a run (one transaction: run,
//! store, root state; shared with the runs created concurrently), cancel a
//! run (fence, then bounded batches), and fire due CRON occurrences.

use exo_engine::common::{json_to_doc, root_inputs};
use exo_engine::lifecycle::{Publication, RunTransition};
use exo_engine::{Engine, Error, Outcome, cron, inputs};
use exo_service::metrics;
use exo_store::mongodb::bson::{DateTime, Document, doc};
use exo_store::{OutboxDoc, RunDoc, StateDoc, StateTransition, StoreDoc, oid};
use exo_types::ids;
use exo_types::messages::{CancelCommand, TriggerCommand};
use exo_types::names::Namespace;
use exo_types::status::{RunStatus, StateStatus};
use futures::TryStreamExt;

/// Pending states cancelled per transaction when a run is cancelled.
pub const CANCEL_BATCH: i64 = 1000;

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

/// `trigger`: creates the run, its store and its root state, then
/// dispatches the root (inserted QUEUED under `queued_by`, the command's
/// `EXO_COMMANDS:<sequence>` or the CRON occurrence) or, when it has a
/// start delay, hands it to the scheduler. A repeated command dispatches
/// the root again only under the same `queued_by` (see
/// `Engine::hand_on_again`).
pub async fn on_trigger(
    engine: &Engine,
    ns: &str,
    cmd: TriggerCommand,
    queued_by: &str,
) -> Result<Outcome, Error> {
    let ns_name = match Namespace::parse(ns) {
        Ok(n) => n,
        Err(e) => return Ok(Outcome::Reject(e.to_string())),
    };
    if cmd.run_id.is_empty() || cmd.run_id.len() > 128 {
        return Ok(Outcome::Reject(
            "run_id must have 1 to 128 characters".into(),
        ));
    }
    let lg = match engine.graphs.get(ns, &cmd.run.graph_name).await? {
        Ok(g) => g,
        Err(u) => return Ok(Outcome::Reject(u.to_string())),
    };
    let root_inputs = match root_inputs(&lg, &cmd) {
        Ok(i) => i,
        Err(e) => return Ok(Outcome::Reject(e.to_string())),
    };
    let inputs_doc = match json_to_doc(&root_inputs) {
        Ok(d) => d,
        Err(e) => return Ok(Outcome::Reject(e)),
    };
    // The run executes this version even if the template is replaced.
    engine.graphs.pin(&lg).await?;
    let requested = cmd.requested_at_ms.unwrap_or_else(|| engine.now_ms());
    let root = root_state(&lg, ns, &cmd, inputs_doc, requested, queued_by);
    let root_id = root.id;
    let now = DateTime::from_millis(requested);
    let store_docs = store_docs(&cmd, &ns_name);
    let run = RunDoc::pending(cmd.run_id.clone(), &cmd.run.graph_name, ns_name, now, &root);
    // Shared with the other runs being created now (one transaction); a
    // redelivered trigger gets its duplicate key back.
    let result = engine
        .creations
        .create((run, store_docs, root.clone()))
        .await;
    match result {
        Ok(()) => {
            tracing::debug!(exo.run_id = %cmd.run_id, exo.graph = %cmd.run.graph_name, "Run created.");
            metrics::state_transitions(root.status.as_str(), 1);
        }
        Err(e) if exo_store::is_duplicate_key(&e) => {
            // Created by an earlier delivery, which may have died before
            // handing the root on.
            if engine.store.state(root_id).await?.is_none() {
                return Ok(Outcome::Reject(format!(
                    "run_id {} is already used",
                    cmd.run_id
                )));
            }
            // The run's `created` event, if the earlier delivery died
            // before relaying the root's outbox document (the scheduler
            // relays that document once it is stale; relaying it here could
            // show core subscribers a copy while that delivery still runs).
            let run = (cmd.run_id.as_str(), cmd.run.graph_name.as_str());
            engine
                .publish_run_transition(ns, run, (RunTransition::Created, Publication::Again))
                .await?;
            engine.hand_on_again(&[root_id], queued_by).await?;
            return Ok(Outcome::Done);
        }
        Err(e) => return Err(e.into()),
    }
    let mut applied = exo_engine::effects::Applied::inserted(std::slice::from_ref(&root));
    if exo_store::state_events() {
        // The run's `created` event, then its root's (relayed).
        applied.outbox.push(OutboxDoc::created(&root));
    } else {
        created_event(engine, ns, &cmd).await?;
    }
    engine.hand_on(&applied).await?;
    Ok(Outcome::Done)
}

/// The run's store entries, as the command gives them.
fn store_docs(cmd: &TriggerCommand, ns: &Namespace) -> Vec<StoreDoc> {
    let entry = |(k, v): (&String, &String)| StoreDoc {
        run_id: cmd.run_id.clone(),
        namespace: ns.clone(),
        graph_name: cmd.run.graph_name.clone(),
        key: k.clone(),
        value: v.clone(),
    };
    cmd.run.store.iter().map(entry).collect()
}

/// The run's `created` lifecycle event when state events are off (before
/// its root is handed on, so that it precedes every later event of the
/// run; with state events it rides in the root's outbox document).
async fn created_event(engine: &Engine, ns: &str, cmd: &TriggerCommand) -> Result<(), Error> {
    let run = (cmd.run_id.as_str(), cmd.run.graph_name.as_str());
    engine
        .publish_run_transition(ns, run, (RunTransition::Created, Publication::First))
        .await
}

/// The root state of a new run: due at `requested` plus the start delay;
/// without delay inserted QUEUED under `queued_by`, to be dispatched by
/// the trigger itself (no scheduler hop).
fn root_state(
    lg: &exo_engine::graphs::LoadedGraph,
    ns: &str,
    cmd: &TriggerCommand,
    inputs_doc: Document,
    requested: i64,
    queued_by: &str,
) -> exo_store::StateDoc {
    let mut root = inputs::new_state(
        oid(ids::root_state_id(&cmd.run_id)),
        lg.graph.root(),
        &inputs::Placement {
            graph_ns: ns,
            run_id: &cmd.run_id,
            graph_name: &cmd.run.graph_name,
            graph_version: Some(&lg.version),
        },
        inputs_doc,
        Document::new(),
        false,
        requested,
    );
    // The root takes the graph's namespace (spec §5.3).
    root.namespace_name = Namespace::trusted(ns);
    root.enqueue_after =
        requested.saturating_add(cmd.run.start_delay_ms.min(i64::MAX as u64) as i64);
    if cmd.run.start_delay_ms == 0 {
        root.status = StateStatus::Queued;
        root.attempt = 1;
        root.queued_by = Some(queued_by.to_string());
    }
    root
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
pub async fn on_cancel(engine: &Engine, ns: &str, cmd: CancelCommand) -> Result<Outcome, Error> {
    exo_engine::legacy::adopt(engine, &cmd.run_id).await?;
    let now = engine.now_ms();
    let stamp = DateTime::from_millis(now);
    let fenced_now = engine
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
    let run = engine
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
    let graph_name = run.get_str("graph_name").unwrap_or_default().to_string();
    if status != RunStatus::Pending.as_str() || !cancelling {
        if status == RunStatus::Cancelled.as_str() && cancelling {
            // Finished by an earlier delivery: tell runtimes again (deduplicated).
            announce_cancelled(engine, ns, &cmd.run_id, &graph_name, true).await?;
            return Ok(Outcome::Done);
        }
        return Ok(Outcome::Stale(format!("run is {status}")));
    }
    let mut n = 0u64;
    while let Some(swept) = cancel_batch(engine, &cmd.run_id, stamp).await? {
        n += swept;
    }
    engine
        .store
        .runs()
        .update_one(
            doc! {"run_id": cmd.run_id.as_str(), "status": RunStatus::Pending.as_str()},
            doc! {"$set": {"status": RunStatus::Cancelled.as_str(), "finished_at": stamp}},
        )
        .await
        .map_err(exo_store::Error::from)?;
    exo_faults::point("store.write")?;
    tracing::info!(exo.run_id = %cmd.run_id, states = n, "Run cancelled.");
    if let Ok(created) = run.get_datetime("created_at") {
        let ms = now.saturating_sub(created.timestamp_millis()).max(0);
        let duration = std::time::Duration::from_millis(ms as u64);
        metrics::run_finished(ns, &graph_name, RunStatus::Cancelled.as_str(), duration);
    }
    announce_cancelled(engine, ns, &cmd.run_id, &graph_name, false).await?;
    Ok(Outcome::Done)
}

/// Tells runtimes (and anyone listening) that the run is cancelled
/// (`event.run.cancelled`, deduplicated per run) and publishes the run's
/// `cancelled` lifecycle event (`again`: maybe published before).
async fn announce_cancelled(
    engine: &Engine,
    ns: &str,
    run_id: &str,
    graph_name: &str,
    again: bool,
) -> Result<(), Error> {
    let id = exo_types::messages::cancelled_event_msg_id(run_id);
    engine
        .publish_run_event(
            ns,
            (run_id, graph_name),
            RunStatus::Cancelled,
            "cancelled",
            id,
        )
        .await?;
    let publication = if again {
        Publication::Again
    } else {
        Publication::First
    };
    let t = (RunTransition::Cancelled, publication);
    engine
        .publish_run_transition(ns, (run_id, graph_name), t)
        .await
}

/// Cancels up to [`CANCEL_BATCH`] pending states of a cancelled run and
/// moves its counters by as many, in one transaction (which also writes
/// their transitions to the outbox; relayed after the commit). Returns how
/// many it cancelled, or `None` when the run has no pending state left.
async fn cancel_batch(
    engine: &Engine,
    run_id: &str,
    stamp: DateTime,
) -> Result<Option<u64>, Error> {
    let ctx = (engine.store.clone(), run_id.to_string(), stamp);
    let (n, outbox) = exo_store::transaction(&engine.store, &ctx, |s, (store, run_id, stamp)| {
        Box::pin(async move {
            // Read in the transaction: the update changes exactly these.
            let states: Vec<StateDoc> = store
                .states()
                .find(doc! {"run_id": run_id.as_str(), "status": {"$in": pending_statuses()}})
                .projection(doc! {"inputs": 0, "outputs": 0, "data": 0})
                .limit(CANCEL_BATCH)
                .session(&mut *s)
                .await?
                .stream(&mut *s)
                .try_collect()
                .await?;
            let ids: Vec<_> = states.iter().map(|st| st.id).collect();
            if ids.is_empty() {
                return Ok((0, Vec::new()));
            }
            let r = store
                .states()
                .update_many(
                    doc! {"_id": {"$in": &ids}, "status": {"$in": pending_statuses()}},
                    doc! {"$set": {"status": StateStatus::Cancelled.as_str(), "error": "run cancelled", "updated_at": *stamp}},
                )
                .session(&mut *s)
                .await?;
            let n = r.modified_count as i64;
            // The same per graph node (the states read are those updated).
            let mut nodes = exo_store::node_counts::NodeDeltas::default();
            for st in &states {
                nodes.moved(st, st.status, StateStatus::Cancelled);
            }
            let mut update = doc! {"$inc": {"pending_count": -n, "cancelled_count": n}};
            let ops = nodes.operators(stamp.timestamp_millis());
            exo_store::node_counts::add_operators(&mut update, ops);
            store
                .runs()
                .update_one(doc! {"run_id": run_id.as_str()}, update)
                .session(&mut *s)
                .await?;
            let outbox = cancelled_outbox(&states, stamp.timestamp_millis());
            if !outbox.is_empty() {
                store.outbox().insert_many(&outbox).session(&mut *s).await?;
            }
            Ok((n, outbox))
        })
    })
    .await?;
    if n == 0 {
        return Ok(None);
    }
    metrics::state_transitions(StateStatus::Cancelled.as_str(), n as u64);
    engine.relay(&outbox).await?;
    Ok(Some(u64::try_from(n).unwrap_or(0)))
}

/// The outbox document of states cancelled at `at_ms` (none when state
/// events are off).
fn cancelled_outbox(states: &[StateDoc], at_ms: i64) -> Vec<OutboxDoc> {
    if !exo_store::state_events() {
        return Vec::new();
    }
    let cancelled = StateStatus::Cancelled;
    let events = states
        .iter()
        .map(|st| StateTransition::of(st, Some(st.status), cancelled, Some("run cancelled"), at_ms))
        .collect();
    OutboxDoc::batch(events, at_ms)
}

/// Fires every due CRON occurrence ([`cron::fire_due`]), starting each run
/// with [`on_trigger`]; claims older than `claim_timeout` are taken over.
/// Returns how many fired.
pub async fn fire_due(engine: &Engine, claim_timeout: std::time::Duration) -> Result<usize, Error> {
    cron::fire_due(engine, claim_timeout, |ns, cmd| async move {
        let queued_by = format!("cron:{}", cmd.run_id);
        on_trigger(engine, &ns, cmd, &queued_by).await
    })
    .await
}
