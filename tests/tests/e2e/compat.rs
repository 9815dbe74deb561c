//! Compatibility with what real Exosphere clients do (issue "Compatibility,
//! second pass"): each test reproduces a client that broke, against the
//! whole system.

use std::time::{Duration, Instant};

use exo_e2e::Stack;
use serde_json::{Value, json};

/// Registers `Echo` (one string field in and out) as an HTTP runtime's node.
async fn register_echo(stack: &Stack, ns: &str) -> anyhow::Result<()> {
    let schema = exo_runtime::string_object_schema("Inputs", &["text"]);
    let (status, body) = stack
        .put(
            &format!("/v0/namespace/{ns}/nodes/"),
            &json!({"runtime_name": "py", "nodes": [
                {"name": "Echo", "inputs_schema": schema, "outputs_schema": schema, "secrets": []}]}),
        )
        .await?;
    anyhow::ensure!(status == 200, "register: {status} {body}");
    Ok(())
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
