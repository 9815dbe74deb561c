//! Handler-level tests of the `trigger` service against a real nats-server
//! and a real MongoDB-wire server: each reproduces a crash-safety finding
//! by calling the handlers directly, with fail points to cut a handler at a
//! boundary or to widen a race window. Every test runs in its own process
//! (nextest), so fail point configuration does not leak between tests.

use exo_completion::handlers::on_executed;
use exo_engine::Outcome;
use exo_store::mongodb::bson::{DateTime, doc};
use exo_test_support::handlers::{HandlerEnv, NS, outputs, split_work};
use exo_test_support::invariants::check_run;
use exo_trigger::handlers::{fire_due, on_cancel};
use exo_types::messages::Executed;
use exo_types::status::StateStatus;
use exo_types::time;

/// Finding 8: cancelling a wide run works in bounded batches, and a crash
/// between two batches is finished by the redelivery of the cancel command,
/// with counters equal to the states after every batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_wide_run_resumes_after_a_crash_between_batches() -> anyhow::Result<()> {
    let e = HandlerEnv::start(split_work()).await?;
    let root = e.seed_root("r8", StateStatus::Queued, 0).await?;
    let msg = Executed {
        state_id: root.parse()?,
        attempt: 1,
        outputs: outputs(2500),
    };
    assert_eq!(on_executed(&e.engine, msg, 1).await?, Outcome::Done);
    assert_eq!(e.count("r8", "work").await?, 2500);
    let cmd = exo_types::messages::CancelCommand {
        run_id: exo_types::names::RunId::trusted("r8"),
    };
    // The second batch commits, then the handler dies.
    exo_faults::configure("store.commit", "1*off->return(error)").map_err(anyhow::Error::msg)?;
    assert!(on_cancel(&e.engine, NS, cmd.clone()).await.is_err());
    exo_faults::clear("store.commit");
    let run = e.engine.store.run("r8").await?.expect("run");
    assert_eq!(
        (
            run.status.as_deref(),
            run.cancelled_count,
            run.pending_count
        ),
        (Some("PENDING"), 2000, 500),
        "fenced, two batches applied with their counters, still PENDING"
    );
    assert_eq!(on_cancel(&e.engine, NS, cmd.clone()).await?, Outcome::Done);
    let c = check_run(&e.engine.store, "r8").await?;
    assert_eq!(c.status(), "CANCELLED");
    assert_eq!(c.run.cancelled_count, 2500);
    // A later delivery changes nothing.
    assert_eq!(on_cancel(&e.engine, NS, cmd).await?, Outcome::Done);
    assert_eq!(check_run(&e.engine.store, "r8").await?.run, c.run);
    Ok(())
}

/// Finding 9 (CRON claims racing a graph upsert): an occurrence fired while
/// an upsert removes its expression must not schedule the expression again.
/// Here the template no longer declares the expression (the upsert wrote it)
/// but the due occurrence was not yet deleted (the upsert's reschedule had
/// not run): firing starts the run and leaves no next occurrence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_occurrence_fired_during_an_upsert_that_removed_it_is_not_rescheduled()
-> anyhow::Result<()> {
    let e = HandlerEnv::start(split_work()).await?;
    let due = DateTime::from_millis(time::now_ms() - 1_000);
    e.engine
        .store
        .triggers()
        .insert_one(exo_store::TriggerDoc {
            id: None,
            kind: "CRON".into(),
            expression: Some("* * * * *".into()),
            graph_name: "g".into(),
            namespace: exo_types::names::Namespace::trusted(NS),
            trigger_time: due,
            trigger_status: "PENDING".into(),
            expires_at: None,
            claimed_at: None,
            run_id: None,
            error: None,
        })
        .await?;
    assert_eq!(fire_due(&e.engine, exo_engine::cron::STALE_CLAIM).await?, 1);
    let pending = e
        .engine
        .store
        .triggers()
        .count_documents(doc! {"trigger_status": "PENDING"})
        .await?;
    assert_eq!(pending, 0, "the removed expression is not scheduled again");
    let fired = e
        .engine
        .store
        .triggers()
        .find_one(doc! {"trigger_status": "TRIGGERED"})
        .await?
        .expect("the due occurrence fired");
    assert!(
        e.engine
            .store
            .run(&fired.run_id.expect("run id"))
            .await?
            .is_some()
    );
    // With the expression still declared, the next occurrence is scheduled.
    e.engine
        .store
        .graph_templates()
        .update_one(
            doc! {"name": "g", "namespace": NS},
            doc! {"$set": {"triggers": [{"type": "CRON", "value": {"expression": "* * * * *"}}]}},
        )
        .await?;
    e.engine
        .store
        .triggers()
        .update_one(
            doc! {"trigger_status": "TRIGGERED"},
            doc! {"$set": {"trigger_status": "PENDING", "trigger_time": DateTime::from_millis(time::now_ms() - 500)}},
        )
        .await?;
    assert_eq!(fire_due(&e.engine, exo_engine::cron::STALE_CLAIM).await?, 1);
    let pending = e
        .engine
        .store
        .triggers()
        .count_documents(doc! {"trigger_status": "PENDING"})
        .await?;
    assert_eq!(pending, 1, "a declared expression keeps its schedule");
    Ok(())
}

/// Runs triggered concurrently share transactions; a redelivered trigger
/// among them (its run exists) gets its own duplicate answer and re-publishes
/// its root, and every other run is created once, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_triggers_share_transactions_and_a_redelivery_among_them_is_harmless()
-> anyhow::Result<()> {
    let e = HandlerEnv::start(split_work()).await?;
    let cmd = |i: usize| exo_types::messages::TriggerCommand {
        run_id: exo_types::names::RunId::trusted(format!("t{i}")),
        run: exo_types::messages::RunRequest {
            graph_name: "g".into(),
            inputs: Default::default(),
            store: [("k".to_string(), format!("v{i}"))].into_iter().collect(),
            start_delay_ms: 0,
        },
        requested_at_ms: None,
    };
    assert_eq!(
        exo_trigger::handlers::on_trigger(&e.engine, NS, cmd(0), "EXO_COMMANDS:0").await?,
        Outcome::Done
    );
    let mut tasks = Vec::new();
    for i in 0..60 {
        // t0 again: a redelivery of a trigger whose run exists.
        let engine = e.engine.clone();
        let c = cmd(i);
        tasks.push(tokio::spawn(async move {
            exo_trigger::handlers::on_trigger(&engine, NS, c, &format!("EXO_COMMANDS:{i}")).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await??, Outcome::Done);
    }
    let store = &e.engine.store;
    assert_eq!(store.runs().count_documents(doc! {}).await?, 60);
    assert_eq!(
        store
            .states()
            .count_documents(doc! {"identifier": "split"})
            .await?,
        60
    );
    assert_eq!(store.store_entries().count_documents(doc! {}).await?, 60);
    // Every root went out once, straight to its runtime: the repeated t0
    // dispatched it again under the same message id.
    assert_eq!(e.dispatched("Split").await?, 60);
    assert_eq!(
        store
            .states()
            .count_documents(doc! {"identifier": "split", "status": "QUEUED", "attempt": 1i64})
            .await?,
        60
    );
    assert!(
        e.engine.creations.batches() < 61,
        "61 triggers ran {} creation batches",
        e.engine.creations.batches()
    );
    Ok(())
}
