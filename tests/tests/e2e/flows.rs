//! Happy paths: chains, placeholders, fan-out with unites, replicas.

use std::sync::atomic::Ordering;
use std::time::Duration;

use exo_e2e::nodes::{Append, FanOut, Join, Picky, counter};
use exo_e2e::{Stack, assert_run_consistent};
use exo_types::status::StateStatus;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn node(
    name: &str,
    id: &str,
    ns: &str,
    inputs: serde_json::Value,
    next: &[&str],
) -> serde_json::Value {
    json!({"node_name": name, "identifier": id, "namespace": ns, "inputs": inputs, "next_nodes": next})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_resolves_placeholders_from_ancestors_and_store() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let ns = "chain";
    let (stop, _rt) = stack
        .start_runtime(
            stack
                .runtime(ns, "rt")
                .node(Append::new("AppendA", "a"))
                .node(Append::new("AppendB", "b"))
                .node(Join { name: "Join" }),
        )
        .await?;
    let graph = json!({
        "secrets": {},
        "store_config": {"required_keys": ["seed"], "default_values": {"tail": "T"}},
        "nodes": [
            node("AppendA", "a", ns, json!({"text": "${{ store.seed }}"}), &["b"]),
            node("AppendB", "b", ns, json!({"text": "${{ a.outputs.text }}"}), &["c"]),
            node("Join", "c", ns, json!({
                "a": "${{a.outputs.text}}",
                "b": "pre ${{ b.outputs.text }} mid ${{ store.seed }}${{ store.tail }} post"
            }), &[]),
        ]
    });
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    let run_id = stack
        .trigger(ns, "g", &json!({"store": {"seed": "S"}}))
        .await?;
    let run = stack.wait_run(&run_id, WAIT).await?;
    assert_eq!(run.status.as_deref(), Some("SUCCESS"));
    let states = assert_run_consistent(&stack, &run).await?;
    assert_eq!(states.len(), 3);
    let c = states
        .iter()
        .find(|s| s.identifier == "c")
        .expect("c state");
    assert_eq!(c.inputs.get_str("a")?, "S+a");
    assert_eq!(c.inputs.get_str("b")?, "pre S+a+b mid ST post");
    assert_eq!(c.outputs.get_str("text")?, "S+a|pre S+a+b mid ST post");
    // Lineage is ordered with the direct parent last.
    let keys: Vec<&String> = c.parents.keys().collect();
    assert_eq!(keys, vec!["a", "b"]);
    assert!(states.iter().all(|s| s.status == StateStatus::Success));
    // The API reports the same counters.
    let (status, body) = stack
        .get(&format!("/v0/namespace/{ns}/run/{run_id}"))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "SUCCESS");
    assert_eq!(body["success_count"], 3);
    assert_eq!(body["total_count"], 3);
    stop.cancel();
    Ok(())
}

fn fan_graph(ns: &str, strategy: &str, count: usize, max_retries: u32) -> serde_json::Value {
    json!({
        "secrets": {},
        "retry_policy": {"max_retries": max_retries, "strategy": "FIXED", "backoff_factor": 10},
        "nodes": [
            node("AppendA", "start", ns, json!({"text": "go"}), &["split"]),
            node("FanOut", "split", ns, json!({"count": count.to_string()}), &["work"]),
            node("Picky", "work", ns, json!({"text": "${{ split.outputs.text }}"}), &["merge"]),
            {"node_name": "Join", "identifier": "merge", "namespace": ns,
             "inputs": {"a": "${{ start.outputs.text }}", "b": "merged"},
             "next_nodes": [], "unites": {"identifier": "start", "strategy": strategy}},
        ]
    })
}

async fn fan_stack(
    ns: &str,
    fail: &'static str,
    prune: &'static str,
) -> anyhow::Result<(Stack, tokio_util::sync::CancellationToken)> {
    let stack = Stack::start().await?;
    let (stop, _rt) = stack
        .start_runtime(
            stack
                .runtime(ns, "rt")
                .concurrency(16)
                .node(Append::new("AppendA", "a"))
                .node(FanOut)
                .node(Picky {
                    fail_digits: fail,
                    prune_digits: prune,
                    delay: Duration::ZERO,
                    calls: counter(),
                })
                .node(Join { name: "Join" }),
        )
        .await?;
    Ok((stack, stop))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_of_100_unites_once_all_success() -> anyhow::Result<()> {
    let ns = "fan";
    let (stack, stop) = fan_stack(ns, "", "").await?;
    stack
        .upsert_valid_graph(ns, "g", &fan_graph(ns, "ALL_SUCCESS", 100, 0))
        .await?;
    let run_id = stack.trigger(ns, "g", &json!({})).await?;
    let run = stack.wait_run(&run_id, WAIT).await?;
    assert_eq!(run.status.as_deref(), Some("SUCCESS"));
    let states = assert_run_consistent(&stack, &run).await?;
    let count = |id: &str| states.iter().filter(|s| s.identifier == id).count();
    assert_eq!(
        (
            count("start"),
            count("split"),
            count("work"),
            count("merge")
        ),
        (1, 100, 100, 1)
    );
    assert_eq!(run.success_count, 202);
    let merge = states
        .iter()
        .find(|s| s.identifier == "merge")
        .expect("merge");
    assert!(merge.does_unites);
    assert_eq!(merge.inputs.get_str("a")?, "go+a");
    assert_eq!(merge.status, StateStatus::Success);
    // Each work state got a distinct fan-out item.
    let mut items: Vec<String> = states
        .iter()
        .filter(|s| s.identifier == "work")
        .map(|s| s.inputs.get_str("text").map(str::to_string))
        .collect::<Result<_, _>>()?;
    items.sort();
    items.dedup();
    assert_eq!(items.len(), 100);
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_done_unites_after_failures_and_prunes() -> anyhow::Result<()> {
    let ns = "done";
    // Items ending in 7 fail (no retries), items ending in 3 prune.
    let (stack, stop) = fan_stack(ns, "7", "3").await?;
    stack
        .upsert_valid_graph(ns, "g", &fan_graph(ns, "ALL_DONE", 100, 0))
        .await?;
    let run_id = stack.trigger(ns, "g", &json!({})).await?;
    let run = stack.wait_run(&run_id, WAIT).await?;
    let states = assert_run_consistent(&stack, &run).await?;
    let by = |id: &str, st: StateStatus| {
        states
            .iter()
            .filter(|s| s.identifier == id && s.status == st)
            .count()
    };
    assert_eq!(by("work", StateStatus::Errored), 10);
    assert_eq!(by("work", StateStatus::Pruned), 10);
    assert_eq!(by("work", StateStatus::Success), 80);
    assert_eq!(
        by("merge", StateStatus::Success),
        1,
        "ALL_DONE fires even when the last branches failed"
    );
    // Errored states make the run FAILED, as in Exosphere's run listing.
    assert_eq!(run.status.as_deref(), Some("FAILED"));
    assert_eq!(run.errored_count, 10);
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_success_with_a_failure_ends_the_run_failed_instead_of_hanging() -> anyhow::Result<()> {
    let ns = "succ";
    // Items ending in 3 prune: a pruned branch blocks ALL_SUCCESS.
    let (stack, stop) = fan_stack(ns, "", "3").await?;
    stack
        .upsert_valid_graph(ns, "g", &fan_graph(ns, "ALL_SUCCESS", 100, 0))
        .await?;
    let run_id = stack.trigger(ns, "g", &json!({})).await?;
    let run = stack.wait_run(&run_id, WAIT).await?;
    let states = assert_run_consistent(&stack, &run).await?;
    assert!(
        states.iter().all(|s| s.identifier != "merge"),
        "ALL_SUCCESS must not fire"
    );
    assert_eq!(run.status.as_deref(), Some("FAILED"));
    assert_eq!(run.failed_unites, 1);
    // The run endpoint says why: the unite group, with its reason.
    let (status, body) = stack
        .get(&format!("/v0/namespace/{ns}/run/{run_id}"))
        .await?;
    assert_eq!(status, 200, "{body}");
    let failures = body["failures"].as_array().expect("failures");
    assert_eq!(
        failures.len(),
        1,
        "pruned branches are not failures: {body}"
    );
    assert_eq!(failures[0]["status"], "UNITE_NOT_FIRED");
    assert_eq!(failures[0]["unite"], "merge");
    assert_eq!(
        failures[0]["error"], "10 descendant(s) of the unite target failed",
        "{body}"
    );
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_policy_then_succeed_or_error() -> anyhow::Result<()> {
    let ns = "retry";
    // Items ending in 7 always fail: each is tried 1 + 2 times, then ERRORED.
    let (stack, stop) = fan_stack(ns, "7", "").await?;
    stack
        .upsert_valid_graph(ns, "g", &fan_graph(ns, "ALL_DONE", 20, 2))
        .await?;
    let run_id = stack.trigger(ns, "g", &json!({})).await?;
    let run = stack.wait_run(&run_id, WAIT).await?;
    let states = assert_run_consistent(&stack, &run).await?;
    let failing: Vec<_> = states
        .iter()
        .filter(|s| {
            s.identifier == "work" && s.inputs.get_str("text").is_ok_and(|t| t.ends_with('7'))
        })
        .collect();
    // item-7 and item-17: attempts with retry_count 0, 1, 2.
    assert_eq!(failing.len(), 6);
    assert_eq!(
        failing
            .iter()
            .filter(|s| s.status == StateStatus::RetryCreated)
            .count(),
        4
    );
    assert_eq!(
        failing
            .iter()
            .filter(|s| s.status == StateStatus::Errored)
            .count(),
        2
    );
    assert!(failing.iter().all(|s| {
        s.error
            .as_deref()
            .is_some_and(|e| e.starts_with("refusing"))
    }));
    assert_eq!(run.retried_count, 4);
    assert_eq!(states.iter().filter(|s| s.identifier == "merge").count(), 1);
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtime_replicas_share_one_node_queue() -> anyhow::Result<()> {
    let ns = "repl";
    let stack = Stack::start().await?;
    let (c1, c2) = (counter(), counter());
    let base = |calls| {
        stack
            .runtime(ns, "rt")
            .concurrency(4)
            .node(Append::new("AppendA", "a"))
            .node(FanOut)
            .node(Picky {
                fail_digits: "",
                prune_digits: "",
                delay: Duration::from_millis(20),
                calls,
            })
            .node(Join { name: "Join" })
    };
    let (s1, _) = stack.start_runtime(base(c1.clone())).await?;
    let (s2, _) = stack.start_runtime(base(c2.clone())).await?;
    stack
        .upsert_valid_graph(ns, "g", &fan_graph(ns, "ALL_SUCCESS", 100, 0))
        .await?;
    let run_id = stack.trigger(ns, "g", &json!({})).await?;
    let run = stack.wait_run(&run_id, WAIT).await?;
    assert_eq!(run.status.as_deref(), Some("SUCCESS"));
    assert_run_consistent(&stack, &run).await?;
    let (a, b) = (c1.load(Ordering::SeqCst), c2.load(Ordering::SeqCst));
    assert_eq!(a + b, 100, "each work state executed exactly once");
    assert!(a > 0 && b > 0, "both replicas took work ({a}, {b})");
    s1.cancel();
    s2.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_long_execution_with_its_runtime() -> anyhow::Result<()> {
    let ns = "long";
    let stack = Stack::start().await?;
    let (c1, c2) = (counter(), counter());
    // ack_wait 1 s, execution 4 s: without heartbeats the dispatch would be
    // redelivered to the other replica several times.
    let rt = |calls| {
        stack
            .runtime(ns, "rt")
            .ack_wait(Duration::from_secs(1))
            .node(Picky {
                fail_digits: "",
                prune_digits: "",
                delay: Duration::from_secs(4),
                calls,
            })
    };
    let (s1, _) = stack.start_runtime(rt(c1.clone())).await?;
    let (s2, _) = stack.start_runtime(rt(c2.clone())).await?;
    let graph =
        json!({"secrets": {}, "nodes": [node("Picky", "p", ns, json!({"text": "slow"}), &[])]});
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    let run_id = stack.trigger(ns, "g", &json!({})).await?;
    let run = stack.wait_run(&run_id, WAIT).await?;
    assert_eq!(run.status.as_deref(), Some("SUCCESS"));
    assert_eq!(
        c1.load(Ordering::SeqCst) + c2.load(Ordering::SeqCst),
        1,
        "executed exactly once"
    );
    s1.cancel();
    s2.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_stops_dispatch_and_running_work() -> anyhow::Result<()> {
    let ns = "cancel";
    let stack = Stack::start().await?;
    let calls = counter();
    let (stop, _) = stack
        .start_runtime(
            stack
                .runtime(ns, "rt")
                .concurrency(4)
                .node(Append::new("AppendA", "a"))
                .node(FanOut)
                .node(Picky {
                    fail_digits: "",
                    prune_digits: "",
                    delay: Duration::from_secs(3),
                    calls: calls.clone(),
                })
                .node(Join { name: "Join" }),
        )
        .await?;
    stack
        .upsert_valid_graph(ns, "g", &fan_graph(ns, "ALL_DONE", 50, 0))
        .await?;
    let run_id = stack.trigger(ns, "g", &json!({})).await?;
    // Wait until work is running, then cancel.
    let deadline = std::time::Instant::now() + WAIT;
    while calls.load(Ordering::SeqCst) == 0 {
        anyhow::ensure!(std::time::Instant::now() < deadline, "work never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = stack
        .post(
            &format!("/v0/namespace/{ns}/run/{run_id}/cancel"),
            &json!({}),
        )
        .await?;
    assert_eq!(status, 202, "{body}");
    let run = stack.wait_run(&run_id, WAIT).await?;
    assert_eq!(run.status.as_deref(), Some("CANCELLED"));
    let started = calls.load(Ordering::SeqCst);
    assert!(
        started <= 8,
        "at most the in-flight executions started ({started})"
    );
    let states = assert_run_consistent(&stack, &run).await?;
    let cancelled = states
        .iter()
        .filter(|s| s.status == StateStatus::Cancelled)
        .count();
    assert!(cancelled >= 46, "pending work was cancelled ({cancelled})");
    assert!(states.iter().all(|s| s.identifier != "merge"));
    // Nothing more starts, and running executions were stopped without a result.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(calls.load(Ordering::SeqCst), started);
    let after = stack.store.run(&run_id).await?.expect("run");
    assert_eq!(after, run, "a cancelled run does not change");
    // A second cancel conflicts; an unknown run is not found.
    let (status, _) = stack
        .post(
            &format!("/v0/namespace/{ns}/run/{run_id}/cancel"),
            &json!({}),
        )
        .await?;
    assert_eq!(status, 409);
    let (status, _) = stack
        .post(&format!("/v0/namespace/{ns}/run/nope/cancel"), &json!({}))
        .await?;
    assert_eq!(status, 404);
    stop.cancel();
    Ok(())
}

/// Two completion replicas, each owning half of the result partitions
/// (`EXO_PARTITIONS=0/2`, `1/2`): runs on either half finish, each state
/// once; while one replica is down only the runs of its half wait, and they
/// finish when it returns (their results wait in its consumers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_replicas_split_the_result_partitions() -> anyhow::Result<()> {
    let ns = "share";
    let mut stack =
        Stack::start_with(&["exo-api", "exo-trigger", "exo-scheduler", "exo-retry"]).await?;
    stack
        .respawn_with("exo-completion", &[("EXO_PARTITIONS", "0/2")])
        .await?;
    let spawn_b = |stack: &Stack| {
        let mut env = stack.env(exo_test_support::free_port());
        env.push(("EXO_PARTITIONS".into(), "1/2".into()));
        async move { exo_test_support::ServiceProcess::spawn("exo-completion", &env).await }
    };
    let b = spawn_b(&stack).await?;
    stack.services.insert("exo-completion-b".into(), b);
    let (stop, _rt) = stack.start_append_runtime(ns).await?;
    let graph = json!({
        "secrets": {},
        "nodes": [
            node("AppendA", "a", ns, json!({"text": "x"}), &["b"]),
            node("AppendB", "b", ns, json!({"text": "${{ a.outputs.text }}"}), &[]),
        ]
    });
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    const RUNS: usize = 16;
    let mut first = Vec::new();
    for _ in 0..RUNS {
        first.push(stack.trigger(ns, "g", &json!({})).await?);
    }
    for id in &first {
        let run = stack.wait_run(id, WAIT).await?;
        assert_eq!(run.status.as_deref(), Some("SUCCESS"), "{id}");
        assert_run_consistent(&stack, &run).await?;
    }

    // Replica b down: the runs of its partitions wait, the others finish.
    if let Some(mut b) = stack.services.remove("exo-completion-b") {
        b.terminate(Duration::from_secs(5)).await;
    }
    let mut second = Vec::new();
    for _ in 0..RUNS {
        second.push(stack.trigger(ns, "g", &json!({})).await?);
    }
    let finished = |stack: &Stack, ids: Vec<String>| {
        let store = stack.store.clone();
        async move {
            let mut n = 0;
            for id in &ids {
                if let Some(run) = store.run(id).await?
                    && run.status.as_deref() == Some("SUCCESS")
                {
                    n += 1;
                }
            }
            anyhow::Ok(n)
        }
    };
    let deadline = std::time::Instant::now() + WAIT;
    while finished(&stack, second.clone()).await? == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for anything that could still finish without b to finish.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let without_b = finished(&stack, second.clone()).await?;
    assert!(
        without_b > 0 && without_b < RUNS,
        "{without_b} of {RUNS} runs finished without replica b: every run \
         hashed to one half (odds 1 in 32 768), or the shares are not honoured"
    );
    let b = spawn_b(&stack).await?;
    stack.services.insert("exo-completion-b".into(), b);
    for id in &second {
        let run = stack.wait_run(id, WAIT).await?;
        assert_eq!(run.status.as_deref(), Some("SUCCESS"), "{id}");
        assert_run_consistent(&stack, &run).await?;
    }
    stop.cancel();
    Ok(())
}
