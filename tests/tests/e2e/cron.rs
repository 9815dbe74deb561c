//! CRON triggers fire runs from the `trigger` service.

use std::time::{Duration, Instant};

use exo_e2e::Stack;
use exo_e2e::nodes::Append;
use exo_store::mongodb::bson::doc;
use futures::TryStreamExt;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_triggers_start_runs_until_removed() -> anyhow::Result<()> {
    let ns = "cron";
    let stack = Stack::start().await?;
    let (stop, _) = stack
        .start_runtime(stack.runtime(ns, "rt").node(Append::new("AppendA", "a")))
        .await?;
    let node = json!({"node_name": "AppendA", "identifier": "a", "namespace": ns, "inputs": {"text": "tick"}});
    // Six fields, croniter style: the sixth is seconds, so this fires every second.
    let graph = json!({"secrets": {}, "nodes": [node], "triggers": [{"type": "CRON", "value": {"expression": "* * * * * *"}}]});
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = stack
            .store
            .runs()
            .count_documents(doc! {"namespace_name": ns, "status": "SUCCESS"})
            .await?;
        if done >= 2 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "cron runs did not complete ({done})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fired: Vec<exo_store::TriggerDoc> = stack
        .store
        .triggers()
        .find(doc! {"namespace": ns, "trigger_status": "TRIGGERED"})
        .await?
        .try_collect()
        .await?;
    assert!(fired.len() >= 2);
    for t in &fired {
        let run_id = t.run_id.as_deref().expect("fired occurrence names its run");
        assert!(
            stack.store.run(run_id).await?.is_some(),
            "run {run_id} exists"
        );
    }
    let pending = stack
        .store
        .triggers()
        .count_documents(doc! {"namespace": ns, "trigger_status": "PENDING"})
        .await?;
    assert_eq!(pending, 1, "exactly one next occurrence is scheduled");

    // Removing the trigger stops the schedule.
    let graph = json!({"secrets": {}, "nodes": [node]});
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = stack
        .store
        .runs()
        .count_documents(doc! {"namespace_name": ns})
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = stack
        .store
        .runs()
        .count_documents(doc! {"namespace_name": ns})
        .await?;
    assert_eq!(before, after, "no run after the trigger was removed");
    assert_eq!(
        stack
            .store
            .triggers()
            .count_documents(doc! {"namespace": ns, "trigger_status": "PENDING"})
            .await?,
        0
    );
    stop.cancel();
    Ok(())
}

/// A CRON trigger's `store` and `inputs` (ours) start its runs: a graph
/// with a required store key runs on schedule (upstream's CRON runs carry
/// no store, so such a graph always fails there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_runs_carry_the_trigger_s_inputs_and_store() -> anyhow::Result<()> {
    let ns = "cronstore";
    let stack = Stack::start().await?;
    let (stop, _) = stack.start_append_runtime(ns).await?;
    let graph = json!({
        "secrets": {},
        "store_config": {"required_keys": ["who"]},
        "triggers": [{"type": "CRON", "value": {"expression": "* * * * * *",
            "inputs": {"text": "hello ${{ store.who }}"}, "store": {"who": "cron"}}}],
        "nodes": [
            {"node_name": "AppendA", "identifier": "a", "namespace": ns,
             "inputs": {"text": "template input"}, "next_nodes": ["b"]},
            {"node_name": "AppendB", "identifier": "b", "namespace": ns,
             "inputs": {"text": "${{ a.outputs.text }} ${{ store.who }}"}},
        ]
    });
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let run = loop {
        let done = stack
            .store
            .runs()
            .find_one(doc! {"namespace_name": ns, "status": {"$in": ["SUCCESS", "FAILED"]}})
            .await?;
        if let Some(run) = done {
            break run;
        }
        anyhow::ensure!(Instant::now() < deadline, "no cron run finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(run.status.as_deref(), Some("SUCCESS"), "{run:?}");
    let states = exo_e2e::assert_run_consistent(&stack, &run).await?;
    let b = states.iter().find(|s| s.identifier == "b");
    assert_eq!(
        b.and_then(|s| s.outputs.get_str("text").ok()),
        Some("hello cron+a cron+b")
    );
    stop.cancel();
    Ok(())
}
