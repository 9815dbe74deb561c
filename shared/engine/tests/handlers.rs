//! Handler-level regression tests against a real nats-server and a real
//! MongoDB-wire server: each reproduces a crash-safety finding by calling the
//! handlers directly, with fail points to cut a handler at a boundary or to
//! widen a race window.
//!
//! Every test runs in its own process (nextest), so fail point
//! configuration does not leak between tests.

use std::collections::BTreeMap;
use std::time::Duration;

use exo_bus::Bus;
use exo_engine::effects::{self, Effects, Update};
use exo_engine::{Engine, Outcome};
use exo_store::mongodb::bson::{DateTime, doc};
use exo_store::{GraphTemplateDoc, RegisteredNodeDoc, Store};
use exo_test_support::invariants::check_run;
use exo_test_support::{Servers, unique_db_name};
use exo_types::graph::GraphSpec;
use exo_types::messages::{Errored, Executed, StateCreated, TriggerCommand};
use exo_types::status::StateStatus;
use exo_types::{ids, time};
use serde_json::{Map, Value, json};

const NS: &str = "h";

struct Env {
    _servers: Servers,
    engine: Engine,
}

async fn env(nodes: Value) -> anyhow::Result<Env> {
    env_with(nodes, json!({})).await
}

async fn env_with(nodes: Value, retry_policy: Value) -> anyhow::Result<Env> {
    exo_test_support::init_test_tracing();
    let servers = Servers::start().await?;
    let store = Store::connect(&servers.mongo.uri(), &unique_db_name("h"), "handlers").await?;
    store.ensure_indexes().await?;
    let bus = Bus::connect(&servers.nats.url(), "handlers").await?;
    bus.provision().await?;
    let spec: GraphSpec = serde_json::from_value(json!({"secrets": {}, "nodes": nodes}))?;
    let now = DateTime::now();
    store
        .graph_templates()
        .insert_one(GraphTemplateDoc {
            id: None,
            name: "g".into(),
            namespace: NS.into(),
            nodes: spec.nodes,
            validation_status: "VALID".into(),
            validation_errors: vec![],
            secrets: Default::default(),
            triggers: vec![],
            retry_policy: serde_json::from_value(retry_policy)?,
            store_config: Default::default(),
            created_at: now,
            updated_at: now,
        })
        .await?;
    for (name, fields) in [("Split", vec![]), ("Work", vec!["x"])] {
        let props: serde_json::Map<String, Value> = fields
            .iter()
            .map(|f| (f.to_string(), json!({"type": "string"})))
            .collect();
        store
            .registered_nodes()
            .insert_one(RegisteredNodeDoc {
                id: None,
                name: name.into(),
                namespace: NS.into(),
                runtime_name: "rt".into(),
                runtime_namespace: NS.into(),
                inputs_schema: json!({"type": "object", "properties": props, "required": fields}),
                outputs_schema: json!({"type": "object"}),
                secrets: vec![],
                created_at: now,
                updated_at: now,
            })
            .await?;
    }
    Ok(Env {
        _servers: servers,
        engine: Engine::new(store, bus),
    })
}

fn split_work() -> Value {
    json!([
        {"node_name": "Split", "identifier": "split", "namespace": NS, "inputs": {}, "next_nodes": ["work"]},
        {"node_name": "Work", "identifier": "work", "namespace": NS, "inputs": {"x": "${{ split.outputs.x }}"}},
    ])
}

impl Env {
    /// Triggers a run and claims its root: returns the root's id (QUEUED, attempt 1).
    async fn queued_root(&self, run_id: &str) -> anyhow::Result<String> {
        let cmd = TriggerCommand {
            run_id: run_id.into(),
            graph_name: "g".into(),
            inputs: BTreeMap::new(),
            store: BTreeMap::new(),
            start_delay_ms: 0,
            requested_at_ms: None,
        };
        assert_eq!(self.engine.on_trigger(NS, cmd).await?, Outcome::Done);
        let root = hex(ids::root_state_id(run_id));
        assert_eq!(
            self.engine.on_created(self.created(&root, 0), 1).await?,
            Outcome::Done
        );
        Ok(root)
    }

    fn created(&self, state_id: &str, enqueue_after: i64) -> StateCreated {
        StateCreated {
            state_id: state_id.into(),
            run_id: String::new(),
            node_name: "Split".into(),
            enqueue_after,
            generation: 0,
        }
    }

    async fn count(&self, run_id: &str, identifier: &str) -> anyhow::Result<u64> {
        Ok(self
            .engine
            .store
            .states()
            .count_documents(doc! {"run_id": run_id, "identifier": identifier})
            .await?)
    }

    async fn status(&self, state_id: &str) -> anyhow::Result<StateStatus> {
        let id = exo_store::oid(ids::parse_hex(state_id).expect("hex id"));
        Ok(self.engine.store.state(id).await?.expect("state").status)
    }
}

fn hex(bytes: [u8; 12]) -> String {
    exo_store::oid(bytes).to_hex()
}

fn outputs(n: usize) -> Vec<Map<String, Value>> {
    (0..n)
        .map(|i| {
            let mut m = Map::new();
            m.insert("x".into(), Value::String(format!("item-{i}")));
            m
        })
        .collect()
}

/// Finding 0: a crash between two fan-out chunks, then a redelivery, must
/// leave every output as exactly one state. The first delivery committed
/// chunks [0,256) and [256,512); the redelivery used to walk a grid shifted
/// by one and never insert sibling 512.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_redelivery_after_a_crash_between_chunks_loses_nothing() -> anyhow::Result<()> {
    let e = env(split_work()).await?;
    let root = e.queued_root("r1").await?;
    let msg = Executed {
        state_id: root.clone(),
        attempt: 1,
        outputs: outputs(600),
    };
    // The second commit of this delivery (chunk [256,512)) commits, then the
    // handler fails as if the process died right after it.
    exo_faults::configure("store.commit", "1*off->return(error)").map_err(anyhow::Error::msg)?;
    let first = e.engine.on_executed(msg.clone(), || async {}).await;
    assert!(
        first.is_err(),
        "the injected failure stops the first delivery"
    );
    exo_faults::clear("store.commit");
    assert_eq!(e.count("r1", "split").await?, 512);
    assert_eq!(e.engine.on_executed(msg, || async {}).await?, Outcome::Done);
    assert_eq!(
        e.count("r1", "split").await?,
        600,
        "every output is a state"
    );
    assert_eq!(
        e.count("r1", "work").await?,
        600,
        "every output has its successor"
    );
    let sibling = hex(ids::fanout_sibling_id(&root, 512));
    assert_eq!(e.status(&sibling).await?, StateStatus::Success);
    Ok(())
}

/// Finding 1: the same attempt reported `errored` by one copy and
/// `executed` with many outputs by another, racing. Whichever wins the first
/// transition, the state must not both retry and fan out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executed_losing_to_errored_does_not_fan_out() -> anyhow::Result<()> {
    let e = env(split_work()).await?;
    let root = e.queued_root("r2").await?;
    // Hold the executed handler after it read the state QUEUED.
    exo_faults::configure("completion.executed.loaded", "1*sleep(1500)")
        .map_err(anyhow::Error::msg)?;
    let engine = e.engine.clone();
    let msg = Executed {
        state_id: root.clone(),
        attempt: 1,
        outputs: outputs(600),
    };
    let executed = tokio::spawn(async move { engine.on_executed(msg, || async {}).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let errored = e
        .engine
        .on_errored(Errored {
            state_id: root.clone(),
            attempt: 1,
            error: "boom".into(),
        })
        .await?;
    assert_eq!(errored, Outcome::Done);
    let outcome = executed.await??;
    let status = e.status(&root).await?;
    let retry = exo_store::oid(ids::retry_state_id(&root));
    let retried = e.engine.store.state(retry).await?.is_some();
    let sibling = exo_store::oid(ids::fanout_sibling_id(&root, 300));
    let fanned = e.engine.store.state(sibling).await?.is_some();
    if matches!(outcome, Outcome::Stale(_)) {
        // The intended order: errored won the first transition.
        assert!(matches!(
            status,
            StateStatus::RetryCreated | StateStatus::Errored
        ));
        for j in [1, 255, 256, 300, 599] {
            let sibling = exo_store::oid(ids::fanout_sibling_id(&root, j));
            assert!(
                e.engine.store.state(sibling).await?.is_none(),
                "no fan-out sibling {j} of an errored attempt"
            );
        }
        assert_eq!(e.count("r2", "work").await?, 0);
    } else {
        // A slow machine let executed commit first: then nothing may retry.
        assert_eq!(outcome, Outcome::Done);
        assert_eq!(status, StateStatus::Success);
        assert!(fanned && !retried, "fanned out {fanned}, retried {retried}");
        return Ok(());
    }
    assert!(
        !(fanned && retried),
        "an attempt both fanned out and retried"
    );
    Ok(())
}

/// Finding 4: a late `state.created` copy (a reconciler announcement, a
/// resumed fan-out re-announcing a child) must not dispatch a state that is
/// already QUEUED; only a redelivery of the message that claimed it may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_announcement_does_not_dispatch_a_queued_state_again() -> anyhow::Result<()> {
    let e = env(split_work()).await?;
    let root = e.queued_root("r3").await?; // claimed by the message with sequence 1
    let late = e.engine.on_created(e.created(&root, 0), 77).await?;
    assert!(
        matches!(late, Outcome::Stale(_)),
        "a copy with another sequence is stale: {late:?}"
    );
    let redelivery = e.engine.on_created(e.created(&root, 0), 1).await?;
    assert_eq!(
        redelivery,
        Outcome::Done,
        "the claiming message may publish again"
    );
    let st = e
        .engine
        .store
        .state(exo_store::oid(ids::root_state_id("r3")))
        .await?
        .expect("root");
    assert_eq!((st.status, st.attempt), (StateStatus::Queued, 1));
    Ok(())
}

/// Finding 3: a long delay is parked in MongoDB, not on the consumer, and is
/// announced once due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_delays_are_parked_in_mongodb_and_announced_when_due() -> anyhow::Result<()> {
    let e = env(split_work()).await?;
    let cmd = TriggerCommand {
        run_id: "r4".into(),
        graph_name: "g".into(),
        inputs: BTreeMap::new(),
        store: BTreeMap::new(),
        start_delay_ms: 600_000,
        requested_at_ms: None,
    };
    assert_eq!(e.engine.on_trigger(NS, cmd).await?, Outcome::Done);
    let root = hex(ids::root_state_id("r4"));
    let due = time::now_ms() + 600_000;
    let outcome = e.engine.on_created(e.created(&root, due), 1).await?;
    assert_eq!(outcome, Outcome::Done, "acked, not held on the consumer");
    let raw = e
        .engine
        .store
        .states_raw()
        .find_one(doc! {"run_id": "r4"})
        .await?
        .expect("root");
    assert_eq!(raw.get_bool("parked").ok(), Some(true));
    assert_eq!(e.engine.announce_due(100).await?, 0, "not due yet");
    e.engine
        .store
        .states()
        .update_one(
            doc! {"run_id": "r4"},
            doc! {"$set": {"enqueue_after": time::now_ms() - 1}},
        )
        .await?;
    assert_eq!(e.engine.announce_due(100).await?, 1, "announced once due");
    // A short delay still waits on the stream.
    let short = e
        .engine
        .on_created(e.created(&root, time::now_ms() + 1_000), 2)
        .await?;
    assert!(matches!(short, Outcome::Delay(_)), "{short:?}");
    Ok(())
}

/// Finding 8: cancelling a wide run works in bounded batches, and a crash
/// between two batches is finished by the redelivery of the cancel command,
/// with counters equal to the states after every batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_wide_run_resumes_after_a_crash_between_batches() -> anyhow::Result<()> {
    let e = env(split_work()).await?;
    let root = e.queued_root("r8").await?;
    let msg = Executed {
        state_id: root,
        attempt: 1,
        outputs: outputs(2500),
    };
    assert_eq!(e.engine.on_executed(msg, || async {}).await?, Outcome::Done);
    assert_eq!(e.count("r8", "work").await?, 2500);
    let cmd = exo_types::messages::CancelCommand {
        run_id: "r8".into(),
    };
    // The second batch commits, then the handler dies.
    exo_faults::configure("store.commit", "1*off->return(error)").map_err(anyhow::Error::msg)?;
    assert!(e.engine.on_cancel(NS, cmd.clone()).await.is_err());
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
    assert_eq!(e.engine.on_cancel(NS, cmd.clone()).await?, Outcome::Done);
    let c = check_run(&e.engine.store, "r8").await?;
    assert_eq!(c.status(), "CANCELLED");
    assert_eq!(c.run.cancelled_count, 2500);
    // A later delivery changes nothing.
    assert_eq!(e.engine.on_cancel(NS, cmd).await?, Outcome::Done);
    assert_eq!(check_run(&e.engine.store, "r8").await?.run, c.run);
    Ok(())
}

/// Finding 7: a manual retry reopens a finished run in the same transaction
/// that creates the retry state (so completion cannot finish the copy while
/// the run still reads FAILED and leave it PENDING forever), and a cancelled
/// run stays cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_retry_reopens_the_run_in_its_transaction() -> anyhow::Result<()> {
    let e = env_with(split_work(), json!({"max_retries": 0})).await?;
    let root = e.queued_root("r7").await?;
    let errored = Errored {
        state_id: root.clone(),
        attempt: 1,
        error: "boom".into(),
    };
    assert_eq!(e.engine.on_errored(errored).await?, Outcome::Done);
    assert_eq!(check_run(&e.engine.store, "r7").await?.status(), "FAILED");
    let original = e
        .engine
        .store
        .state(exo_store::oid(ids::root_state_id("r7")))
        .await?
        .expect("root");
    let retry = |st: &exo_store::StateDoc| {
        let mut copy = st.clone();
        copy.id = exo_store::mongodb::bson::oid::ObjectId::new();
        copy.status = StateStatus::Created;
        copy.attempt = 0;
        copy.manual_retry_fanout_id = "m1".into();
        copy.fanout_id = "m1".into();
        copy
    };
    let lg = e.engine.graph_for(&original).await?.ok();
    let mut fx = Effects::new(lg.clone(), "r7");
    fx.reopen_run();
    fx.insert(retry(&original));
    fx.transition(
        &original,
        StateStatus::Errored,
        StateStatus::RetryCreated,
        Update {
            filter: doc! {"_id": original.id, "status": "ERRORED"},
            update: doc! {"$set": {"status": "RETRY_CREATED"}},
            expect: 1,
        },
    );
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
        run_id: "r7".into(),
    };
    assert_eq!(e.engine.on_cancel(NS, cmd).await?, Outcome::Done);
    let copy_doc = e
        .engine
        .store
        .states()
        .find_one(doc! {"run_id": "r7", "manual_retry_fanout_id": "m1"})
        .await?
        .expect("copy");
    let mut fx = Effects::new(lg, "r7");
    fx.reopen_run();
    let mut again = retry(&copy_doc);
    again.manual_retry_fanout_id = "m2".into();
    again.fanout_id = "m2".into();
    fx.insert(again);
    fx.transition(
        &copy_doc,
        StateStatus::Cancelled,
        StateStatus::RetryCreated,
        Update {
            filter: doc! {"_id": copy_doc.id, "status": "CANCELLED"},
            update: doc! {"$set": {"status": "RETRY_CREATED"}},
            expect: 1,
        },
    );
    assert!(
        effects::apply(&e.engine.store, &fx, time::now_ms())
            .await?
            .is_none()
    );
    let c = check_run(&e.engine.store, "r7").await?;
    assert_eq!(c.status(), "CANCELLED");
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
    let e = env(split_work()).await?;
    let due = DateTime::from_millis(time::now_ms() - 1_000);
    e.engine
        .store
        .triggers()
        .insert_one(exo_store::TriggerDoc {
            id: None,
            kind: "CRON".into(),
            expression: Some("* * * * *".into()),
            graph_name: "g".into(),
            namespace: NS.into(),
            trigger_time: due,
            trigger_status: "PENDING".into(),
            expires_at: None,
            claimed_at: None,
            run_id: None,
            error: None,
        })
        .await?;
    assert_eq!(exo_engine::cron::fire_due(&e.engine).await?, 1);
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
    assert_eq!(exo_engine::cron::fire_due(&e.engine).await?, 1);
    let pending = e
        .engine
        .store
        .triggers()
        .count_documents(doc! {"trigger_status": "PENDING"})
        .await?;
    assert_eq!(pending, 1, "a declared expression keeps its schedule");
    Ok(())
}
