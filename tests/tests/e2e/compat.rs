//! Compatibility with what real Exosphere clients do (issue "Compatibility,
//! second pass"): each test reproduces a client that broke, against the
//! whole system.

use std::time::{Duration, Instant};

use exo_e2e::Stack;
use serde_json::{Value, json};

/// Registers `Echo` (one string field in and out) as an HTTP runtime's node.
async fn register_echo(stack: &Stack, ns: &str) -> anyhow::Result<()> {
    stack.register_http_node(ns, "Echo").await
}

/// Hands out one state of `Echo` over HTTP, waiting for it to be dispatched.
async fn take_one(stack: &Stack, ns: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = stack
            .post(
                &format!("/v0/namespace/{ns}/states/enqueue"),
                &json!({"nodes": ["Echo"], "batch_size": 1}),
            )
            .await?;
        anyhow::ensure!(status == 200, "enqueue: {status} {body}");
        if let Some(id) = body["states"][0]["state_id"].as_str() {
            return Ok(id.to_string());
        }
        anyhow::ensure!(Instant::now() < deadline, "nothing handed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The dashboard reads `next_nodes.length` of every node: a leaf node reads
/// back `[]`, whether the upsert sent `null` (as the SDK does) or left the
/// key out, in the upsert's answer and in a later GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_nodes_read_back_an_empty_next_nodes_list() -> anyhow::Result<()> {
    let ns = "leaf";
    let stack = Stack::start().await?;
    register_echo(&stack, ns).await?;
    let graph = json!({"secrets": {}, "nodes": [
        {"node_name": "Echo", "identifier": "a", "namespace": ns, "inputs": {"text": "x"}, "next_nodes": ["b", "c"]},
        {"node_name": "Echo", "identifier": "b", "namespace": ns, "inputs": {"text": "x"}, "next_nodes": null},
        {"node_name": "Echo", "identifier": "c", "namespace": ns, "inputs": {"text": "x"}},
    ]});
    let (status, put) = stack
        .put(&format!("/v0/namespace/{ns}/graph/g"), &graph)
        .await?;
    assert_eq!(status, 201, "{put}");
    let (status, got) = stack.get(&format!("/v0/namespace/{ns}/graph/g")).await?;
    assert_eq!(status, 200, "{got}");
    for body in [&put, &got] {
        let next: Vec<&Value> = body["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| &n["next_nodes"])
            .collect();
        assert_eq!(next, [&json!(["b", "c"]), &json!([]), &json!([])], "{body}");
    }
    Ok(())
}

/// A run can be read as soon as its trigger answered: the answer waits for
/// the trigger service to create it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggered_run_is_readable_as_soon_as_the_trigger_answered() -> anyhow::Result<()> {
    let ns = "ryw";
    let stack = Stack::start().await?;
    register_echo(&stack, ns).await?;
    let graph = json!({"secrets": {}, "nodes": [
        {"node_name": "Echo", "identifier": "a", "namespace": ns, "inputs": {"text": "x"}}]});
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    for _ in 0..20 {
        let run_id = stack.trigger(ns, "g", &json!({})).await?;
        let (status, body) = stack
            .get(&format!("/v0/namespace/{ns}/run/{run_id}"))
            .await?;
        assert_eq!(
            status, 200,
            "run {run_id} not readable right after its trigger: {body}"
        );
        let (status, list) = stack.get(&format!("/v0/namespace/{ns}/runs/1/100")).await?;
        assert_eq!(status, 200, "{list}");
        assert!(
            list.to_string().contains(&run_id),
            "run {run_id} not listed right after its trigger"
        );
    }
    Ok(())
}

/// `errored` after `executed` for the same hand-out is refused as upstream
/// does (400; "State is already executed" while the state is EXECUTED,
/// "State is not queued or executed" once it is SUCCESS), and no retry is
/// created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errored_after_executed_is_refused_and_creates_no_retry() -> anyhow::Result<()> {
    let ns = "exer";
    let stack = Stack::start().await?;
    register_echo(&stack, ns).await?;
    let graph = json!({"secrets": {}, "nodes": [
        {"node_name": "Echo", "identifier": "a", "namespace": ns, "inputs": {"text": "x"}}]});
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    for _ in 0..5 {
        let run_id = stack.trigger(ns, "g", &json!({})).await?;
        let id = take_one(&stack, ns).await?;
        let (status, body) = stack
            .post(
                &format!("/v0/namespace/{ns}/state/{id}/executed"),
                &json!({"outputs": [{"text": "done"}]}),
            )
            .await?;
        assert_eq!(status, 200, "{body}");
        let (status, body) = stack
            .post(
                &format!("/v0/namespace/{ns}/state/{id}/errored"),
                &json!({"error": "late"}),
            )
            .await?;
        assert_eq!(status, 400, "errored after executed: {body}");
        assert!(
            body["detail"] == "State is already executed"
                || body["detail"] == "State is not queued or executed",
            "{body}"
        );
        let run = stack.wait_run(&run_id, Duration::from_secs(20)).await?;
        assert_eq!(run.status.as_deref(), Some("SUCCESS"));
        let states = stack.states(&run_id).await?;
        assert_eq!(states.len(), 1, "no retry state: {states:?}");
    }
    Ok(())
}

/// `CORS_ORIGINS=*` allows every origin, as upstream does (the api used to
/// panic at start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_origins_star_allows_every_origin() -> anyhow::Result<()> {
    let mut stack = Stack::start_with(&[]).await?;
    stack
        .respawn_with("exo-api", &[("CORS_ORIGINS", "*")])
        .await?;
    let resp = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v0/namespaces", stack.api_url),
        )
        .header("Origin", "https://dash.example.com")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await?;
    assert!(resp.status().is_success(), "preflight: {}", resp.status());
    assert_eq!(
        resp.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap_or_default()),
        Some("https://dash.example.com")
    );
    Ok(())
}

/// On a stock nats-server (`max_payload` 1 MiB, as in these tests and the
/// Helm chart), results, dispatches and inputs larger than a message go
/// through the object store: a 10 MiB output over HTTP, and a 3 MiB one
/// through a NATS runtime (its dispatch and its result are both large),
/// reach their children whole and the runs end SUCCESS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_larger_than_max_payload_flow_whole() -> anyhow::Result<()> {
    let ns = "big";
    let mut stack = Stack::start().await?;
    stack.spawn_runtime_process(ns, &[]).await?;
    register_echo(&stack, ns).await?;
    let graph = json!({"secrets": {}, "nodes": [
        {"node_name": "Echo", "identifier": "a", "namespace": ns, "inputs": {"text": "x"}, "next_nodes": ["b"]},
        {"node_name": "AppendA", "identifier": "b", "namespace": ns, "inputs": {"text": "${{ a.outputs.text }}"}, "next_nodes": ["c"]},
        {"node_name": "Echo", "identifier": "c", "namespace": ns, "inputs": {"text": "${{ b.outputs.text }}"}},
    ]});
    stack.upsert_valid_graph(ns, "nats", &graph).await?;
    let graph = json!({"secrets": {}, "nodes": [
        {"node_name": "Echo", "identifier": "a", "namespace": ns, "inputs": {"text": "x"}, "next_nodes": ["c"]},
        {"node_name": "Echo", "identifier": "c", "namespace": ns, "inputs": {"text": "${{ a.outputs.text }}"}},
    ]});
    stack.upsert_valid_graph(ns, "http", &graph).await?;

    for (graph, size) in [("http", 10 << 20), ("nats", 3 << 20)] {
        let run_id = stack.trigger(ns, graph, &json!({})).await?;
        let big = "y".repeat(size);
        let a = take_one(&stack, ns).await?;
        let (status, body) = stack
            .post(
                &format!("/v0/namespace/{ns}/state/{a}/executed"),
                &json!({"outputs": [{"text": big}]}),
            )
            .await?;
        assert_eq!(
            status, 200,
            "{graph}: a {size}-byte result is accepted: {body}"
        );
        // `c` is handed out with its whole input, read from the state.
        let deadline = Instant::now() + Duration::from_secs(60);
        let (c, text) = loop {
            let (status, body) = stack
                .post(
                    &format!("/v0/namespace/{ns}/states/enqueue"),
                    &json!({"nodes": ["Echo"], "batch_size": 1}),
                )
                .await?;
            assert_eq!(status, 200);
            if let Some(s) = body["states"].get(0) {
                break (
                    s["state_id"].as_str().unwrap_or_default().to_string(),
                    s["inputs"]["text"].as_str().unwrap_or_default().to_string(),
                );
            }
            if Instant::now() > deadline {
                stack.print_problems();
                anyhow::bail!("{graph}: c never handed out");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let want = if graph == "nats" { size + 2 } else { size };
        assert_eq!(text.len(), want, "{graph}: c's input arrived whole");
        let (status, body) = stack
            .post(
                &format!("/v0/namespace/{ns}/state/{c}/executed"),
                &json!({"outputs": [{"text": "done"}]}),
            )
            .await?;
        assert_eq!(status, 200, "{body}");
        let run = stack.wait_run(&run_id, Duration::from_secs(30)).await?;
        assert_eq!(run.status.as_deref(), Some("SUCCESS"), "{graph}");
        exo_e2e::assert_run_consistent(&stack, &run).await?;
    }
    Ok(())
}

/// Outputs a state document cannot hold (MongoDB's 16 MiB) are refused with
/// a 400 naming the limit, instead of failing forever downstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_too_large_to_store_are_refused() -> anyhow::Result<()> {
    let ns = "huge";
    let stack = Stack::start().await?;
    register_echo(&stack, ns).await?;
    let graph = json!({"secrets": {}, "nodes": [
        {"node_name": "Echo", "identifier": "a", "namespace": ns, "inputs": {"text": "x"}}]});
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    stack.trigger(ns, "g", &json!({})).await?;
    let a = take_one(&stack, ns).await?;
    let part = "z".repeat(8 << 20);
    let (status, body) = stack
        .post(
            &format!("/v0/namespace/{ns}/state/{a}/executed"),
            &json!({"outputs": [{"text": part}, {"text": part}]}),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("too large to store"),
        "{body}"
    );
    Ok(())
}

/// `errored` on a state whose graph template was since replaced by an
/// INVALID one still retries under the run's own template version (as
/// upstream retries whatever the template's status).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errored_retries_after_the_template_became_invalid() -> anyhow::Result<()> {
    let ns = "inval";
    let stack = Stack::start().await?;
    register_echo(&stack, ns).await?;
    let graph = json!({"secrets": {}, "retry_policy": {"max_retries": 1, "strategy": "FIXED", "backoff_factor": 10},
        "nodes": [{"node_name": "Echo", "identifier": "a", "namespace": ns, "inputs": {"text": "x"}}]});
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    let run_id = stack.trigger(ns, "g", &json!({})).await?;
    let a = take_one(&stack, ns).await?;
    // The template now names a node nobody registered: INVALID.
    let broken = json!({"secrets": {}, "nodes": [
        {"node_name": "Ghost", "identifier": "a", "namespace": ns, "inputs": {"text": "x"}}]});
    let (status, body) = stack
        .put(&format!("/v0/namespace/{ns}/graph/g"), &broken)
        .await?;
    assert_eq!(status, 201, "{body}");
    let (_, got) = stack.get(&format!("/v0/namespace/{ns}/graph/g")).await?;
    assert_eq!(got["validation_status"], "INVALID", "{got}");
    let (status, body) = stack
        .post(
            &format!("/v0/namespace/{ns}/state/{a}/errored"),
            &json!({"error": "boom"}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["retry_created"], true, "{body}");
    let retry = take_one(&stack, ns).await?;
    assert_ne!(retry, a, "the retry is a new state");
    let states = stack.states(&run_id).await?;
    assert_eq!(states.len(), 2, "{states:?}");
    Ok(())
}

/// Why a run failed is visible through the API: a node returning a
/// non-string output that its successor's input schema refuses ends the
/// producing state NEXT_CREATED_ERROR with the reason, the run FAILED, and
/// `GET …/run/{run_id}` lists that state with its error; a failure with no
/// retry left is listed the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_endpoint_says_why_a_run_failed() -> anyhow::Result<()> {
    let ns = "why";
    let stack = Stack::start().await?;
    register_echo(&stack, ns).await?;
    let graph = json!({"secrets": {}, "nodes": [
        {"node_name": "Echo", "identifier": "a", "namespace": ns, "inputs": {"text": "x"}, "next_nodes": ["b"]},
        {"node_name": "Echo", "identifier": "b", "namespace": ns, "inputs": {"text": "${{ a.outputs.text }}"}},
    ], "retry_policy": {"max_retries": 0}});
    stack.upsert_valid_graph(ns, "g", &graph).await?;

    let run_id = stack.trigger(ns, "g", &json!({})).await?;
    let a = take_one(&stack, ns).await?;
    let (status, body) = stack
        .post(
            &format!("/v0/namespace/{ns}/state/{a}/executed"),
            &json!({"outputs": [{"text": 42}]}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let run = stack.wait_run(&run_id, Duration::from_secs(20)).await?;
    assert_eq!(run.status.as_deref(), Some("FAILED"));
    let (status, body) = stack
        .get(&format!("/v0/namespace/{ns}/run/{run_id}"))
        .await?;
    assert_eq!(status, 200, "{body}");
    let failures = body["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 1, "{body}");
    assert_eq!(failures[0]["state_id"], a.as_str());
    assert_eq!(failures[0]["identifier"], "a");
    assert_eq!(failures[0]["status"], "NEXT_CREATED_ERROR");
    let error = failures[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("text"),
        "the reason names the field: {error}"
    );

    let run_id = stack.trigger(ns, "g", &json!({})).await?;
    let a = take_one(&stack, ns).await?;
    let (status, body) = stack
        .post(
            &format!("/v0/namespace/{ns}/state/{a}/errored"),
            &json!({"error": "the disk is full"}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let run = stack.wait_run(&run_id, Duration::from_secs(20)).await?;
    assert_eq!(run.status.as_deref(), Some("FAILED"));
    let (_, body) = stack
        .get(&format!("/v0/namespace/{ns}/run/{run_id}"))
        .await?;
    assert_eq!(
        body["failures"],
        json!([{"state_id": a, "identifier": "a", "node_name": "Echo", "status": "ERRORED",
                "retry_count": 0, "error": "the disk is full"}]),
        "{body}"
    );
    Ok(())
}
