//! Event-driven integrations as an outside client sees them: a plain
//! `async-nats` client (no type of this workspace on its side: JSON text
//! in, JSON text out) starts runs on `exo.v1.<ns>.start` with
//! request/reply, repeats idempotency keys across a `trigger` restart, gets
//! clear errors that write nothing, and finds the dead-letter record of a
//! bad request sent without a reply subject (docs/events.md).

use std::time::Duration;

use exo_e2e::nodes::Append;
use exo_e2e::{Stack, assert_run_consistent};
use exo_store::mongodb::bson::doc;
use futures::StreamExt;
use serde_json::{Value, json};

const NS: &str = "evt";

/// `a` (`${{ store.x }}`) → `b` (`${{ a.outputs.text }}`), run by an
/// in-process runtime; `x` is a required store key.
async fn stack_with_graph() -> anyhow::Result<(Stack, tokio_util::sync::CancellationToken)> {
    let stack = Stack::start().await?;
    let rt = stack
        .runtime(NS, "rt")
        .node(Append::new("AppendA", "a"))
        .node(Append::new("AppendB", "b"));
    let (stop, _task) = stack.start_runtime(rt).await?;
    let graph = json!({
        "secrets": {},
        "store_config": {"required_keys": ["x"]},
        "nodes": [
            {"node_name": "AppendA", "namespace": NS, "identifier": "a",
             "inputs": {"text": "${{ store.x }}"}, "next_nodes": ["b"]},
            {"node_name": "AppendB", "namespace": NS, "identifier": "b",
             "inputs": {"text": "${{ a.outputs.text }}"}},
        ]
    });
    stack.upsert_valid_graph(NS, "g", &graph).await?;
    Ok((stack, stop))
}

/// A request/reply on `exo.v1.<ns>.start`, as text.
async fn request(nc: &async_nats::Client, body: &str) -> anyhow::Result<Value> {
    let subject = format!("exo.v1.{NS}.start");
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        nc.request(subject, body.to_string().into()),
    )
    .await??;
    Ok(serde_json::from_slice(&reply.payload)?)
}

async fn run_count(stack: &Stack) -> anyhow::Result<u64> {
    Ok(stack.store.runs().count_documents(doc! {}).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_nats_client_starts_runs_with_request_reply() -> anyhow::Result<()> {
    let (mut stack, stop) = stack_with_graph().await?;
    let nc = async_nats::connect(stack.servers.nats.url()).await?;

    // A run, answered with its id; it runs to SUCCESS.
    let a = request(&nc, r#"{"graph_name": "g", "store": {"x": "hi"}}"#).await?;
    assert_eq!(a["status"], 200, "{a}");
    let first = a["run_id"].as_str().unwrap_or_default().to_string();
    let run = stack.wait_run(&first, Duration::from_secs(30)).await?;
    assert_eq!(run.status.as_deref(), Some("SUCCESS"));
    let states = assert_run_consistent(&stack, &run).await?;
    let b = states.iter().find(|s| s.identifier == "b");
    assert_eq!(
        b.and_then(|s| s.outputs.get_str("text").ok()),
        Some("hi+a+b")
    );

    // An idempotency key: the same run however often it is sent, also
    // after the trigger service was killed and restarted.
    let keyed = r#"{"graph_name": "g", "store": {"x": "k"}, "idempotency_key": "order-17"}"#;
    let k1 = request(&nc, keyed).await?;
    assert_eq!(k1["status"], 200, "{k1}");
    let k2 = request(&nc, keyed).await?;
    assert_eq!(k2["run_id"], k1["run_id"]);
    stack.service("exo-trigger").restart().await?;
    let k3 = request(&nc, keyed).await?;
    assert_eq!(k3["run_id"], k1["run_id"]);
    let keyed_run = k1["run_id"].as_str().unwrap_or_default();
    let run = stack.wait_run(keyed_run, Duration::from_secs(30)).await?;
    assert_eq!(run.status.as_deref(), Some("SUCCESS"));
    // The key may also come as the Nats-Msg-Id header.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "order-18");
    let body = r#"{"graph_name": "g", "store": {"x": "h"}}"#;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = nc
            .request_with_headers(format!("exo.v1.{NS}.start"), headers.clone(), body.into())
            .await?;
        let v: Value = serde_json::from_slice(&r.payload)?;
        assert_eq!(v["status"], 200, "{v}");
        ids.push(v["run_id"].clone());
    }
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[0], k1["run_id"]);
    assert_eq!(run_count(&stack).await?, 3, "one run per request or key");

    // Clear errors, and nothing written for them.
    for (body, status, detail) in [
        (r#"{"graph_name": "nope"}"#, 404, "Graph template not found"),
        (r#"{"graph_name": "g"}"#, 400, "Dependent x not found in store"),
        (
            r#"{"graph_name": "g", "store": {"x": 1}}"#,
            400,
            "not a start request",
        ),
        (r#"{"graph": "g"}"#, 400, "not a start request"),
        ("not json", 400, "not a start request"),
    ] {
        let a = request(&nc, body).await?;
        assert_eq!(a["status"], status, "{body}: {a}");
        let d = a["detail"].as_str().unwrap_or_default();
        assert!(d.contains(detail), "{body}: {a}");
        assert!(a.get("run_id").is_none(), "{body}: {a}");
    }
    assert_eq!(run_count(&stack).await?, 3);
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_start_without_reply_subject_is_dead_lettered() -> anyhow::Result<()> {
    let (stack, stop) = stack_with_graph().await?;
    let nc = async_nats::connect(stack.servers.nats.url()).await?;
    let mut dlq = nc.subscribe("exo.dlq.v1.START.>").await?;
    nc.publish(
        format!("exo.v1.{NS}.start"),
        r#"{"graph_name": "g"}"#.into(),
    )
    .await?;
    nc.flush().await?;
    let letter = tokio::time::timeout(Duration::from_secs(10), dlq.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no dead letter"))?;
    let v: Value = serde_json::from_slice(&letter.payload)?;
    assert_eq!(v["subject"], format!("exo.v1.{NS}.start"));
    assert!(
        v["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("Dependent x not found in store"),
        "{v}"
    );
    assert_eq!(v["payload"], r#"{"graph_name": "g"}"#);
    // A good one without a reply subject starts its run all the same.
    nc.publish(
        format!("exo.v1.{NS}.start"),
        r#"{"graph_name": "g", "store": {"x": "q"}, "idempotency_key": "fire-and-forget"}"#.into(),
    )
    .await?;
    nc.flush().await?;
    let run_id = exo_types::ids::idempotent_run_id(NS, "g", "fire-and-forget");
    let run = stack.wait_run(&run_id, Duration::from_secs(30)).await?;
    assert_eq!(run.status.as_deref(), Some("SUCCESS"));
    assert_eq!(run_count(&stack).await?, 1);
    stop.cancel();
    Ok(())
}
