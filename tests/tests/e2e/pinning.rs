//! A run executes the template version it was started with: a graph
//! upserted mid-run changes neither its successors nor its unite groups
//! (issue finding 6: membership recomputed from the current template could
//! strand a group or close it early).

use std::time::{Duration, Instant};

use exo_e2e::Stack;
use exo_test_support::invariants::check_run;
use serde_json::{Value, json};

const WIDTH: usize = 60;

fn graph(ns: &str, with_merge: bool) -> Value {
    let mut nodes = vec![
        json!({"node_name": "AppendA", "identifier": "start", "namespace": ns, "inputs": {"text": "go"}, "next_nodes": ["split"]}),
        json!({"node_name": "FanOut", "identifier": "split", "namespace": ns, "inputs": {"count": WIDTH.to_string()}, "next_nodes": ["work"]}),
    ];
    if with_merge {
        nodes.push(json!({"node_name": "Picky", "identifier": "work", "namespace": ns, "inputs": {"text": "${{ split.outputs.text }}"}, "next_nodes": ["merge"]}));
        nodes.push(
            json!({"node_name": "Join", "identifier": "merge", "namespace": ns,
            "inputs": {"a": "${{ start.outputs.text }}", "b": "merged"},
            "unites": {"identifier": "start", "strategy": "ALL_SUCCESS"}}),
        );
    } else {
        nodes.push(json!({"node_name": "Picky", "identifier": "work", "namespace": ns, "inputs": {"text": "${{ split.outputs.text }}"}}));
    }
    json!({"secrets": {}, "nodes": nodes})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_upserted_mid_run_does_not_change_the_running_run() -> anyhow::Result<()> {
    let ns = "pin";
    let mut stack = Stack::start().await?;
    stack
        .spawn_runtime_process(
            ns,
            &[("EXO_TEST_DELAY_MS", "50"), ("EXO_TEST_CONCURRENCY", "2")],
        )
        .await?;
    stack.upsert_valid_graph(ns, "g", &graph(ns, true)).await?;
    let run_id = stack.trigger(ns, "g", &json!({})).await?;
    // Replace the template while the fan-out is being worked through.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = stack
            .states(&run_id)
            .await?
            .iter()
            .filter(|s| s.identifier == "work" && s.status.as_str() == "SUCCESS")
            .count();
        if done >= 3 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the fan-out never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.upsert_valid_graph(ns, "g", &graph(ns, false)).await?;
    let pending_at_upsert = stack.store.run(&run_id).await?.map(|r| r.pending_count);
    stack.wait_run(&run_id, Duration::from_secs(120)).await?;
    let c = check_run(&stack.store, &run_id).await?;
    assert!(
        pending_at_upsert.unwrap_or(0) > 0,
        "the upsert happened mid-run"
    );
    assert_eq!(c.status(), "SUCCESS");
    assert_eq!(c.with_identifier("work").len(), WIDTH);
    assert_eq!(
        c.with_identifier("merge").len(),
        1,
        "the run keeps the unite of the version it started with"
    );
    // A run started after the upsert executes the new version.
    let next = stack.trigger(ns, "g", &json!({})).await?;
    stack.wait_run(&next, Duration::from_secs(120)).await?;
    let c2 = check_run(&stack.store, &next).await?;
    assert_eq!(c2.with_identifier("work").len(), WIDTH);
    assert_eq!(c2.with_identifier("merge").len(), 0);
    Ok(())
}
