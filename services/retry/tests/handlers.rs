//! Handler-level tests of the `retry` service against a real nats-server
//! and a real MongoDB-wire server: each reproduces a crash-safety finding
//! by calling the handlers directly, with fail points to cut a handler at a
//! boundary or to widen a race window. Every test runs in its own process
//! (nextest), so fail point configuration does not leak between tests.

use exo_engine::effects;
use exo_engine::{Outcome, attempts};
use exo_retry::handlers::on_errored;
use exo_store::mongodb::bson::doc;
use exo_test_support::handlers::{HandlerEnv, NS, split_work};
use exo_test_support::invariants::check_run;
use exo_trigger::handlers::on_cancel;
use exo_types::messages::Errored;
use exo_types::status::StateStatus;
use exo_types::{ids, time};
use serde_json::json;

/// Finding 7: a manual retry reopens a finished run in the same transaction
/// that creates the retry state (so completion cannot finish the copy while
/// the run still reads FAILED and leave it PENDING forever), and a cancelled
/// run stays cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_retry_reopens_the_run_in_its_transaction() -> anyhow::Result<()> {
    let e = HandlerEnv::start_with(split_work(), json!({"max_retries": 0})).await?;
    let root = e.seed_root("r7", StateStatus::Queued, 0).await?;
    let errored = Errored {
        state_id: root.parse()?,
        attempt: 1,
        error: "boom".into(),
    };
    assert_eq!(on_errored(&e.engine, errored).await?, Outcome::Done);
    assert_eq!(check_run(&e.engine.store, "r7").await?.status(), "FAILED");
    let original = e
        .engine
        .store
        .state(exo_store::oid(ids::root_state_id("r7")))
        .await?
        .expect("root");
    let lg = e.engine.graph_for(&original).await?.ok();
    let (_, fx) = attempts::manual_retry(&original, "m1", lg.clone(), time::now_ms());
    let applied = effects::apply(&e.engine.store, &fx, time::now_ms()).await?;
    assert!(applied.is_some());
    let run = e.engine.store.run("r7").await?.expect("run");
    assert_eq!(
        (run.status.as_deref(), run.pending_count, run.finished_at),
        (Some("PENDING"), 1, None),
        "reopened by the same commit"
    );
    // Cancelled now: a further manual retry is not applied.
    let cmd = exo_types::messages::CancelCommand {
        run_id: exo_types::names::RunId::trusted("r7"),
    };
    assert_eq!(on_cancel(&e.engine, NS, cmd).await?, Outcome::Done);
    let copy_doc = e
        .engine
        .store
        .states()
        .find_one(doc! {"run_id": "r7", "manual_retry_fanout_id": "m1"})
        .await?
        .expect("copy");
    let (_, fx) = attempts::manual_retry(&copy_doc, "m2", lg, time::now_ms());
    assert!(
        effects::apply(&e.engine.store, &fx, time::now_ms())
            .await?
            .is_none()
    );
    let c = check_run(&e.engine.store, "r7").await?;
    assert_eq!(c.status(), "CANCELLED");
    Ok(())
}

/// With the engine's clock held still, an errored attempt's retry is due
/// exactly the policy's delay after the failure (FIXED, no jitter): the
/// schedule is computed from the injected clock, not the system's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_is_due_the_policy_delay_after_the_clock() -> anyhow::Result<()> {
    use std::sync::Arc;
    let mut e = HandlerEnv::start_with(
        split_work(),
        json!({"max_retries": 2, "strategy": "FIXED", "backoff_factor": 7000}),
    )
    .await?;
    let clock = Arc::new(time::ManualClock::at(1_000_000_000_000));
    e.engine = e.engine.clone().with_clock(clock.clone());
    let root = e.seed_root("r8", StateStatus::Queued, 0).await?;
    clock.advance(42);
    let errored = Errored {
        state_id: root.parse()?,
        attempt: 1,
        error: "boom".into(),
    };
    assert_eq!(on_errored(&e.engine, errored).await?, Outcome::Done);
    let retry = e
        .engine
        .store
        .states()
        .find_one(doc! {"run_id": "r8", "retry_count": 1})
        .await?
        .expect("the retry state");
    assert_eq!(retry.status, StateStatus::Created);
    assert_eq!(retry.enqueue_after, 1_000_000_000_042 + 7000);
    assert_eq!(retry.created_at.timestamp_millis(), 1_000_000_000_042);
    Ok(())
}
