//! Redelivered and duplicated messages create nothing twice.

use std::sync::atomic::Ordering;
use std::time::Duration;

use exo_e2e::nodes::{Append, Join, counter};
use exo_e2e::{Stack, assert_run_consistent};
use exo_types::messages::{Executed, StateCreated, TriggerCommand};
use exo_types::subjects::{self, ResultKind};
use serde_json::json;

async fn publish<T: serde::Serialize>(
    stack: &Stack,
    subject: String,
    msg_id: &str,
    body: &T,
) -> anyhow::Result<()> {
    let bus = exo_bus::Bus::connect(&stack.servers.nats.url(), "e2e-test").await?;
    bus.publish(exo_bus::Outgoing::json(subject, msg_id.to_string(), body)?)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_results_hand_offs_and_triggers_create_nothing_twice() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let ns = "dup";
    let (calls_a, calls_b) = (counter(), counter());
    let (stop, _) = stack
        .start_runtime(
            stack
                .runtime(ns, "rt")
                .node(Append {
                    name: "AppendA",
                    suffix: "a",
                    calls: calls_a.clone(),
                })
                .node(Append {
                    name: "AppendB",
                    suffix: "b",
                    calls: calls_b.clone(),
                })
                .node(Join { name: "Join" }),
        )
        .await?;
    let graph = json!({"secrets": {}, "nodes": [
        {"node_name": "AppendA", "identifier": "a", "namespace": ns, "inputs": {"text": "x"}, "next_nodes": ["b"]},
        {"node_name": "AppendB", "identifier": "b", "namespace": ns, "inputs": {"text": "${{ a.outputs.text }}"}, "next_nodes": ["c"]},
        {"node_name": "Join", "identifier": "c", "namespace": ns, "inputs": {"a": "${{ a.outputs.text }}", "b": "${{ b.outputs.text }}"}},
    ]});
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    let run_id = stack.trigger(ns, "g", &json!({})).await?;
    let run = stack.wait_run(&run_id, Duration::from_secs(60)).await?;
    assert_eq!(run.status.as_deref(), Some("SUCCESS"));
    let before = assert_run_consistent(&stack, &run).await?;
    let a = before
        .iter()
        .find(|s| s.identifier == "a")
        .expect("a")
        .clone();
    let b = before
        .iter()
        .find(|s| s.identifier == "b")
        .expect("b")
        .clone();

    // 1. Executed results delivered again (new msg ids, so JetStream dedup
    //    does not hide them; only the engine's fencing can): the identical
    //    result (a true redelivery, which resumes and finds everything done)
    //    and a different result for the same attempt (a runtime that ran
    //    twice and fanned out differently, which must be ignored).
    let same_b = vec![serde_json::from_value(
        json!({"text": b.outputs.get_str("text")?}),
    )?];
    let two = |t: &str| -> anyhow::Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        Ok(vec![
            serde_json::from_value(json!({"text": t}))?,
            serde_json::from_value(json!({"text": "fan"}))?,
        ])
    };
    for (i, (st, outputs)) in [(&b, same_b), (&a, two("other")?), (&b, two("other")?)]
        .into_iter()
        .enumerate()
    {
        let msg = Executed {
            state_id: exo_types::ids::StateId::from_bytes(st.id.bytes()),
            attempt: st.attempt as u32,
            outputs,
        };
        publish(
            &stack,
            subjects::result(ns, ResultKind::Executed),
            &format!("replay-{i}"),
            &msg,
        )
        .await?;
    }
    // 2. The root's hand-off to the scheduler delivered again.
    let created = StateCreated {
        state_id: exo_types::ids::StateId::from_bytes(a.id.bytes()),
        run_id: exo_types::names::RunId::trusted(run_id.clone()),
        node_name: exo_types::names::NodeName::trusted("AppendA"),
        enqueue_after: 0,
        generation: 0,
    };
    publish(
        &stack,
        subjects::state_created(ns),
        "replay-created",
        &created,
    )
    .await?;
    // 3. The trigger command delivered again.
    let cmd = TriggerCommand {
        run_id: exo_types::names::RunId::trusted(run_id.clone()),
        run: exo_types::messages::RunRequest {
            graph_name: "g".into(),
            inputs: Default::default(),
            store: Default::default(),
            start_delay_ms: 0,
        },
        requested_at_ms: None,
    };
    publish(&stack, subjects::trigger(ns), "replay-trigger", &cmd).await?;

    // Give the services time to (not) act, then compare.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let run_after = stack.store.run(&run_id).await?.expect("run");
    let after = assert_run_consistent(&stack, &run_after).await?;
    assert_eq!(
        after.len(),
        before.len(),
        "no state was created by duplicates"
    );
    assert_eq!(run_after, run, "run document unchanged");
    for s in &before {
        let t = after.iter().find(|x| x.id == s.id).expect("same ids");
        assert_eq!(
            (t.status, &t.outputs, &t.inputs),
            (s.status, &s.outputs, &s.inputs)
        );
    }
    assert_eq!(
        calls_a.load(Ordering::SeqCst),
        1,
        "root not dispatched again"
    );
    assert_eq!(calls_b.load(Ordering::SeqCst), 1);
    let runs = stack
        .store
        .runs()
        .count_documents(exo_store::mongodb::bson::doc! {"run_id": &run_id})
        .await?;
    assert_eq!(runs, 1);
    stop.cancel();
    Ok(())
}

/// Whoever creates a node's dispatch consumer, a NATS runtime's crashed work
/// comes back within that runtime's own `ack_wait`: here the api creates
/// the consumer first (an HTTP `enqueue` for the node), then a runtime with
/// a 2 s `ack_wait` binds, takes the state, and is killed mid-execution; a
/// second runtime gets it seconds later, not after the api's lease (300 s)
/// or the default (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_nats_runtime_s_work_returns_within_its_own_ack_wait() -> anyhow::Result<()> {
    let ns = "ackwait";
    let mut stack = Stack::start().await?;
    let (status, body) = stack
        .post(
            &format!("/v0/namespace/{ns}/states/enqueue"),
            &json!({"nodes": ["Picky"], "batch_size": 1}),
        )
        .await?;
    assert_eq!((status, body["count"].as_u64()), (200, Some(0)), "{body}");
    stack
        .spawn_runtime_process(
            ns,
            &[
                ("EXO_TEST_ACK_WAIT_SECS", "2"),
                ("EXO_TEST_DELAY_MS", "600000"),
            ],
        )
        .await?;
    let graph = json!({"secrets": {}, "nodes": [
        {"node_name": "Picky", "identifier": "p", "namespace": ns, "inputs": {"text": "x"}}]});
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    let run_id = stack.trigger(ns, "g", &json!({})).await?;
    // The runtime holds the dispatch (heartbeating) well past 2 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = stack.states(&run_id).await?;
        if st
            .first()
            .is_some_and(|s| s.status == exo_types::status::StateStatus::Queued)
        {
            break;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "never dispatched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let st = stack.states(&run_id).await?;
    assert_eq!(
        st[0].status,
        exo_types::status::StateStatus::Queued,
        "still executing"
    );
    stack.service("exo-test-runtime").kill9();
    let killed = std::time::Instant::now();
    stack
        .spawn_runtime_process(ns, &[("EXO_TEST_ACK_WAIT_SECS", "2")])
        .await?;
    let run = stack.wait_run(&run_id, Duration::from_secs(60)).await?;
    let took = killed.elapsed();
    assert_eq!(run.status.as_deref(), Some("SUCCESS"), "{run:?}");
    assert!(
        took < Duration::from_secs(20),
        "redelivered after {took:?}: the runtime's 2 s ack_wait was not applied"
    );
    assert_run_consistent(&stack, &run).await?;
    Ok(())
}
