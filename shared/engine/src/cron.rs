//! CRON triggers (spec §10): occurrences are documents in
//! `DatabaseTriggers`, one PENDING document per (graph, expression) holding
//! the next fire time.
//!
//! - [`reschedule`] runs when a graph is upserted: it drops the graph's
//!   PENDING occurrences and, when the graph is VALID, inserts the next
//!   occurrence of each distinct schedule (the unique index
//!   `uniq_graph_type_expr_time` dedups concurrent upserts). A schedule is
//!   stored under its key (`CronSpec::key`): the expression in UTC, as
//!   Exosphere stores it, `CRON_TZ=<zone> <expression>` in another zone.
//! - [`fire_due`] runs in the `trigger` service every second (which passes
//!   its run-starting handler): it claims one
//!   due occurrence at a time (PENDING → TRIGGERING, or a TRIGGERING claim
//!   older than [`STALE_CLAIM`] left by a crashed service), starts the run
//!   with a run id derived from the occurrence (so a re-fire after a crash
//!   starts the same run, not a second one), marks it TRIGGERED, FAILED or
//!   SKIPPED and inserts the schedule's next occurrence, as its catch-up
//!   policy says (`CronSpec::firing`).
//!
//! Deviations from upstream: the namespace is part of every filter (upstream
//! deleted same-named graphs' triggers in other namespaces); after downtime a
//! schedule does what its `catch_up` says (default `ONCE`: one run for the
//! missed time, then it continues from now; upstream fired every missed
//! occurrence, without bound); time zones; a crash mid-fire no longer stops
//! the schedule.

use exo_types::names::{Namespace, RunId};
use std::time::Duration;

use exo_store::mongodb::bson::{DateTime, doc};
use exo_store::mongodb::options::ReturnDocument;
use exo_store::{Store, TriggerDoc};
use exo_types::cron::CronSpec;
use exo_types::graph::Trigger;
use exo_types::messages::{RunRequest, TriggerCommand};
use exo_types::status::{TriggerStatus, ValidationStatus};

use crate::{Engine, Error, Outcome};

/// By default, a TRIGGERING claim older than this is taken over (the
/// `trigger` service's `EXO_CRON_CLAIM_TIMEOUT_SECS`).
pub const STALE_CLAIM: Duration = Duration::from_secs(60);
/// How long TRIGGERED and FAILED occurrences are kept (Exosphere's
/// `TRIGGER_RETENTION_HOURS` default, 720 h).
pub const RETENTION: Duration = Duration::from_secs(720 * 3600);

fn to_bson_time(t: chrono::DateTime<chrono::Utc>) -> DateTime {
    DateTime::from_millis(t.timestamp_millis())
}

/// The PENDING occurrence of schedule `key` of `ns`/`graph` at `next`.
fn next_doc(ns: &str, graph: &str, key: &str, next: chrono::DateTime<chrono::Utc>) -> TriggerDoc {
    TriggerDoc {
        id: None,
        kind: "CRON".into(),
        expression: Some(key.to_string()),
        graph_name: graph.to_string(),
        namespace: Namespace::trusted(ns),
        trigger_time: to_bson_time(next),
        trigger_status: TriggerStatus::Pending.as_str().into(),
        expires_at: None,
        claimed_at: None,
        run_id: None,
        error: None,
    }
}

async fn insert_ignoring_duplicates(store: &Store, doc: TriggerDoc) -> Result<(), Error> {
    match store.triggers().insert_one(doc).await {
        Ok(_) => Ok(()),
        Err(e) if exo_store::is_duplicate_key(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Replaces the PENDING occurrences of graph `ns`/`graph` by the next
/// occurrence of each schedule (none when the graph is not `valid`),
/// counted from the engine's clock.
pub async fn reschedule(
    engine: &Engine,
    ns: &str,
    graph: &str,
    schedules: &[CronSpec],
    valid: bool,
) -> Result<(), Error> {
    let store = &engine.store;
    store
        .triggers()
        .delete_many(doc! {"namespace": ns, "graph_name": graph, "type": "CRON", "trigger_status": TriggerStatus::Pending.as_str()})
        .await
        .map_err(exo_store::Error::from)?;
    if !valid {
        return Ok(());
    }
    let now = exo_types::time::from_ms(engine.now_ms());
    for spec in schedules {
        if let Some(next) = spec.next_after(now) {
            insert_ignoring_duplicates(store, next_doc(ns, graph, &spec.key(), next)).await?;
        }
    }
    Ok(())
}

/// The CRON trigger of schedule `key` that the current template of
/// `ns`/`graph` declares, when the template is VALID.
async fn declared(
    store: &Store,
    ns: &str,
    graph: &str,
    key: &str,
) -> Result<Option<Trigger>, Error> {
    let template = store.graph_template(ns, graph).await?;
    Ok(template
        .filter(|g| g.validation_status == ValidationStatus::Valid.as_str())
        .and_then(|g| {
            g.triggers
                .into_iter()
                .find(|t| t.cron_spec().is_some_and(|s| s.key() == key))
        }))
}

/// The run id of an occurrence: a UUID (version 8, name-based) derived from
/// the namespace, graph, expression and fire time.
pub fn occurrence_run_id(t: &TriggerDoc) -> RunId {
    let time = t.trigger_time.timestamp_millis().to_string();
    exo_types::ids::derived_run_id(&[
        t.namespace.as_str(),
        t.graph_name.as_str(),
        t.expression.as_deref().unwrap_or_default(),
        &time,
    ])
}

/// Inserts the occurrence of `t`'s schedule at `next`, unless an upsert
/// removed the schedule meanwhile.
async fn schedule_next(
    engine: &Engine,
    t: &TriggerDoc,
    next: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(), Error> {
    let (Some(expr), Some(next)) = (&t.expression, next) else {
        return Ok(());
    };
    let d = next_doc(&t.namespace, &t.graph_name, expr, next);
    let next_time = d.trigger_time;
    insert_ignoring_duplicates(&engine.store, d).await?;
    exo_faults::point("store.write")?;
    // An upsert writes the template, then replaces the PENDING occurrences.
    // If it removed this schedule meanwhile, the occurrence just inserted
    // may have missed its delete: read the template after the insert and
    // withdraw the occurrence.
    if declared(&engine.store, &t.namespace, &t.graph_name, expr)
        .await?
        .is_some()
    {
        return Ok(());
    }
    engine
        .store
        .triggers()
        .delete_one(
            doc! {"namespace": &t.namespace, "graph_name": &t.graph_name,
            "type": "CRON", "expression": expr.as_str(),
            "trigger_time": next_time, "trigger_status": TriggerStatus::Pending.as_str()},
        )
        .await
        .map_err(exo_store::Error::from)?;
    exo_faults::point("store.write")?;
    tracing::info!(exo.namespace = %t.namespace, exo.graph = %t.graph_name, expression = %expr,
        "Cron expression removed by an upsert; not scheduled again.");
    Ok(())
}

/// What an occurrence starts: its graph, with the root inputs and store
/// values of `trigger` (the template's CRON trigger of its schedule, as the
/// template is now; ours: upstream's CRON runs start with neither).
fn occurrence_request(t: &TriggerDoc, trigger: Option<&Trigger>) -> RunRequest {
    let mut request = RunRequest::of(t.graph_name.clone());
    if let Some(tr) = trigger {
        let strings = |key: &str| {
            tr.value
                .get(key)
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default()
        };
        request.inputs = strings("inputs");
        request.store = strings("store");
    }
    request
}

/// Fires every due occurrence, one claim at a time; a claim older than
/// `stale_claim` (its holder crashed) is taken over. Returns how many were
/// claimed (fired or skipped).
pub async fn fire_due<S, Fut>(
    engine: &Engine,
    stale_claim: Duration,
    start: S,
) -> Result<usize, Error>
where
    S: Fn(String, TriggerCommand) -> Fut,
    Fut: std::future::Future<Output = Result<Outcome, Error>>,
{
    let mut fired = 0;
    loop {
        let now = exo_types::time::from_ms(engine.now_ms());
        let Some(t) = claim_due(engine, now, stale_claim).await? else {
            return Ok(fired);
        };
        exo_faults::point("store.write")?;
        let key = t.expression.clone().unwrap_or_default();
        let trigger = declared(&engine.store, &t.namespace, &t.graph_name, &key).await?;
        let Some(spec) = trigger
            .as_ref()
            .and_then(Trigger::cron_spec)
            .or_else(|| CronSpec::from_key(&key))
        else {
            finish(
                engine,
                &t,
                now,
                (
                    TriggerStatus::Failed,
                    None,
                    Some(format!("invalid schedule {key:?}")),
                ),
            )
            .await?;
            fired += 1;
            continue;
        };
        let at = exo_types::time::from_ms(t.trigger_time.timestamp_millis());
        let firing = spec.firing(at, now);
        let run_id = occurrence_run_id(&t);
        // A claim taken over from a replica that died after starting the
        // run is late too: the run it started stands.
        let skip = match &firing.skipped {
            Some(reason) if engine.store.run(&run_id).await?.is_none() => Some(reason.clone()),
            _ => None,
        };
        let (status, error) = match skip {
            Some(reason) => (TriggerStatus::Skipped, Some(reason)),
            None => {
                let cmd = TriggerCommand {
                    run_id: run_id.clone(),
                    run: occurrence_request(&t, trigger.as_ref()),
                    requested_at_ms: Some(t.trigger_time.timestamp_millis()),
                };
                match start(t.namespace.to_string(), cmd).await? {
                    Outcome::Done => (TriggerStatus::Triggered, None),
                    Outcome::Reject(reason) | Outcome::Stale(reason) => {
                        (TriggerStatus::Failed, Some(reason))
                    }
                    Outcome::Delay(_) => {
                        (TriggerStatus::Failed, Some("unexpected delay".to_string()))
                    }
                }
            }
        };
        tracing::info!(exo.namespace = %t.namespace, exo.graph = %t.graph_name, exo.run_id = %run_id,
            status = status.as_str(), error = error.as_deref().unwrap_or(""), "Cron trigger fired.");
        record_firing(status, (now - at).to_std().unwrap_or_default());
        // The next occurrence first, so a crash after it cannot stop the schedule.
        schedule_next(engine, &t, firing.next).await?;
        let started = (status != TriggerStatus::Skipped).then_some(run_id);
        finish(engine, &t, now, (status, started, error)).await?;
        fired += 1;
    }
}

/// Counts an occurrence's end in the metrics: skipped, or fired `late`.
fn record_firing(status: TriggerStatus, late: Duration) {
    match status {
        TriggerStatus::Skipped => exo_service::metrics::cron_skipped(1),
        TriggerStatus::Triggered => exo_service::metrics::cron_fired(late),
        _ => {}
    }
}

/// Claims the oldest due occurrence (PENDING → TRIGGERING), or one whose
/// claim is older than `stale_claim`.
async fn claim_due(
    engine: &Engine,
    now: chrono::DateTime<chrono::Utc>,
    stale_claim: Duration,
) -> Result<Option<TriggerDoc>, Error> {
    let now_b = to_bson_time(now);
    let stale = DateTime::from_millis(now.timestamp_millis() - stale_claim.as_millis() as i64);
    Ok(engine
        .store
        .triggers()
        .find_one_and_update(
            doc! {"trigger_time": {"$lte": now_b}, "$or": [
                {"trigger_status": TriggerStatus::Pending.as_str()},
                {"trigger_status": TriggerStatus::Triggering.as_str(), "claimed_at": {"$lte": stale}},
            ]},
            doc! {"$set": {"trigger_status": TriggerStatus::Triggering.as_str(), "claimed_at": now_b}},
        )
        .sort(doc! {"trigger_time": 1})
        .return_document(ReturnDocument::After)
        .await
        .map_err(exo_store::Error::from)?)
}

/// Records how occurrence `t` ended: its status, the run it started and
/// why it failed or was skipped; kept for [`RETENTION`].
async fn finish(
    engine: &Engine,
    t: &TriggerDoc,
    now: chrono::DateTime<chrono::Utc>,
    (status, run_id, error): (TriggerStatus, Option<RunId>, Option<String>),
) -> Result<(), Error> {
    let expires = DateTime::from_millis(now.timestamp_millis() + RETENTION.as_millis() as i64);
    engine
        .store
        .triggers()
        .update_one(
            doc! {"_id": t.id},
            doc! {"$set": {"trigger_status": status.as_str(), "expires_at": expires, "run_id": run_id, "error": error}},
        )
        .await
        .map_err(exo_store::Error::from)?;
    exo_faults::point("store.write")?;
    Ok(())
}
