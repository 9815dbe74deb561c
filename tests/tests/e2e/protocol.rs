//! The NATS protocol document (`docs/asyncapi.json`) says what the services
//! actually publish: every message seen on `exo.v1.>` and `exo.dlq.v1.>`
//! during runs that exercise every kind (fan-out, retry, prune, re-queue,
//! unite, cancellation, a rejected result, a request with a reply) is
//! validated, headers and payload, against the schema of its channel.

use std::collections::BTreeMap;
use std::time::Duration;

use exo_e2e::Stack;
use exo_e2e::nodes::{Append, FanOut, Join, Picky, Requeuer, counter};
use exo_e2e::schema::{check, validator};
use futures::StreamExt;
use serde_json::{Value, json};

/// The AsyncAPI document.
fn asyncapi() -> anyhow::Result<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/asyncapi.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

/// The component message a channel address template matches `subject`.
fn message_of(doc: &Value, subject: &str) -> Option<String> {
    let tokens: Vec<&str> = subject.split('.').collect();
    for ch in doc["channels"].as_object()?.values() {
        let Some(addr) = ch["address"].as_str() else {
            continue;
        };
        let pattern: Vec<&str> = addr.split('.').collect();
        let matches = pattern.len() == tokens.len()
            && pattern
                .iter()
                .zip(&tokens)
                .all(|(p, t)| p.starts_with('{') || p == t);
        if matches {
            let (name, _) = ch["messages"].as_object()?.iter().next()?;
            return Some(name.clone());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_the_services_publish_matches_the_asyncapi_document() -> anyhow::Result<()> {
    let doc = asyncapi()?;
    assert_eq!(doc["asyncapi"], "3.0.0");
    let ns = "proto";
    let stack = Stack::start().await?;
    let client = async_nats::connect(stack.servers.nats.url()).await?;
    let mut subs = futures::stream::select(
        client.subscribe("exo.v1.>").await?,
        client.subscribe("exo.dlq.v1.>").await?,
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<async_nats::Message>::new()));
    let collector = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(m) = subs.next().await {
                seen.lock().expect("lock").push(m);
            }
        })
    };
    client.flush().await?;
    let (stop, _) = stack
        .start_runtime(
            stack
                .runtime(ns, "rt")
                .node(Append::new("AppendA", "a"))
                .node(FanOut)
                .node(Picky {
                    fail_digits: "7",
                    prune_digits: "3",
                    delay: Duration::ZERO,
                    calls: counter(),
                })
                .node(Join { name: "Join" })
                .node(Requeuer {
                    delay: Duration::from_millis(50),
                }),
        )
        .await?;
    let node = |name: &str, id: &str, inputs: Value, next: &[&str]| json!({"node_name": name, "identifier": id, "namespace": ns, "inputs": inputs, "next_nodes": next});
    let fan = json!({"secrets": {}, "retry_policy": {"max_retries": 1, "strategy": "FIXED", "backoff_factor": 10},
    "nodes": [
        node("AppendA", "start", json!({"text": "go"}), &["split"]),
        node("FanOut", "split", json!({"count": "10"}), &["work"]),
        node("Picky", "work", json!({"text": "${{ split.outputs.text }}"}), &["merge"]),
        {"node_name": "Join", "identifier": "merge", "namespace": ns,
         "inputs": {"a": "${{ start.outputs.text }}", "b": "m"}, "next_nodes": [],
         "unites": {"identifier": "start", "strategy": "ALL_DONE"}},
        ]});
    stack.upsert_valid_graph(ns, "fan", &fan).await?;
    let wait = json!({"secrets": {}, "nodes": [
        node("Requeuer", "r", json!({"text": "x"}), &[])]});
    stack.upsert_valid_graph(ns, "wait", &wait).await?;

    let fan_run = stack.trigger(ns, "fan", &json!({})).await?;
    let wait_run = stack.trigger(ns, "wait", &json!({})).await?;
    for run in [&fan_run, &wait_run] {
        let r = stack.wait_run(run, Duration::from_secs(60)).await?;
        assert_eq!(
            r.status.as_deref(),
            Some("FAILED")
                .filter(|_| run == &fan_run)
                .or(Some("SUCCESS"))
        );
    }
    // A run cancelled while its root waits out a start delay.
    let late = stack
        .trigger(ns, "wait", &json!({"start_delay": 600_000}))
        .await?;
    let (status, body) = stack
        .post(&format!("/v0/namespace/{ns}/run/{late}/cancel"), &json!({}))
        .await?;
    assert_eq!(status, 202, "{body}");
    stack.wait_run(&late, Duration::from_secs(30)).await?;
    // A result the completion service rejects goes to the dead-letter stream.
    let bus = exo_bus::Bus::connect(&stack.servers.nats.url(), "protocol-test").await?;
    bus.publish(exo_bus::Outgoing::json(
        exo_types::subjects::result(ns, exo_types::subjects::ResultKind::Executed),
        exo_types::messages::result_msg_id("executed", "000000000000000000000000", 1),
        &json!({"state_id": "000000000000000000000000", "attempt": 1, "outputs": []}),
    )?)
    .await?;
    // A trigger command with a reply subject, as any client may publish it.
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "trg:proto-reply-run");
    headers.insert("Exo-Protocol", "1");
    headers.insert("Exo-Reply-To", inbox.as_str());
    let js = async_nats::jetstream::new(client.clone());
    js.publish_with_headers(
        exo_types::subjects::trigger(ns),
        headers,
        serde_json::to_vec(&json!({"run_id": "proto-reply-run", "graph_name": "wait"}))?.into(),
    )
    .await?
    .await?;
    let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
        .await?
        .expect("a reply");
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    let reply_schema = doc["components"]["messages"]["Reply"]["payload"].clone();
    check(&validator(&doc, &reply_schema)?, &reply, "Reply")?;
    assert_eq!(reply["outcome"], "done");
    stack
        .wait_run("proto-reply-run", Duration::from_secs(30))
        .await?;

    // Let the dead letter and the last events arrive, then validate.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let dlq = seen
            .lock()
            .expect("lock")
            .iter()
            .any(|m| m.subject.starts_with("exo.dlq.v1."));
        if dlq {
            break;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "no dead letter seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    collector.abort();
    let messages = std::mem::take(&mut *seen.lock().expect("lock"));
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for m in &messages {
        let name = message_of(&doc, &m.subject)
            .ok_or_else(|| anyhow::anyhow!("no channel of the document matches {}", m.subject))?;
        let spec = &doc["components"]["messages"][&name];
        let h = m.headers.clone().unwrap_or_default();
        let header_json: serde_json::Map<String, Value> = h
            .iter()
            .filter_map(|(k, v)| {
                v.first()
                    .map(|v| (k.to_string(), Value::String(v.as_str().to_string())))
            })
            .collect();
        check(
            &validator(&doc, &spec["headers"])?,
            &Value::Object(header_json),
            &format!("{name} headers on {}", m.subject),
        )?;
        if h.get("Exo-Payload-Ref").is_none() {
            let payload: Value = serde_json::from_slice(&m.payload)?;
            check(
                &validator(&doc, &spec["payload"])?,
                &payload,
                &format!("{name} on {}", m.subject),
            )?;
        }
        *kinds.entry(name).or_default() += 1;
    }
    let expected = [
        "TriggerCommand",
        "CancelCommand",
        "StateCreated",
        "Dispatch",
        "Executed",
        "Errored",
        "Pruned",
        "Requeue",
        "RunFinished",
        "RunCancelled",
        "DeadLetter",
    ];
    for k in expected {
        assert!(kinds.contains_key(k), "no {k} seen: {kinds:?}");
    }
    let cancelled = messages
        .iter()
        .find(|m| m.subject.ends_with(".event.run.cancelled"))
        .expect("a run.cancelled event");
    let ev: Value = serde_json::from_slice(&cancelled.payload)?;
    assert_eq!(ev["run_id"], late.as_str());
    assert_eq!(ev["graph_name"], "wait", "the event names the run's graph");
    Ok(())
}

/// `docs/asyncapi.json` is a valid AsyncAPI 3.0.0 document (the official
/// JSON Schema, vendored under `tests/schemas/`).
#[test]
fn the_asyncapi_document_is_valid_asyncapi_3() -> anyhow::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/asyncapi-3.0.0.json");
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let v = jsonschema::validator_for(&meta).map_err(|e| anyhow::anyhow!("{e}"))?;
    let doc = asyncapi()?;
    check(&v, &doc, "docs/asyncapi.json")?;
    let mut broken = doc.clone();
    broken["channels"]["dispatch"]["address"] = json!(42);
    assert!(
        !v.is_valid(&broken),
        "the meta-schema must catch a broken document"
    );
    Ok(())
}
