//! Event-driven integrations as an outside client sees them: a plain
//! `async-nats` client (no type of this workspace on its side: JSON text
//! in, JSON text out) starts runs on `exo.v1.<ns>.start` with
//! request/reply, repeats idempotency keys across a `trigger` restart, gets
//! clear errors that write nothing, and finds the dead-letter record of a
//! bad request sent without a reply subject (docs/events.md).

use std::time::Duration;

use exo_e2e::{Stack, assert_run_consistent};
use exo_store::mongodb::bson::doc;
use exo_test_support::lifecycle::{self, Event};
use futures::StreamExt;
use serde_json::{Value, json};

const NS: &str = "evt";

/// `a` (`${{ store.x }}`) → `b` (`${{ a.outputs.text }}`), run by an
/// in-process runtime; `x` is a required store key.
async fn stack_with_graph() -> anyhow::Result<(Stack, tokio_util::sync::CancellationToken)> {
    let stack = Stack::start().await?;
    let (stop, _task) = stack.start_append_runtime(NS).await?;
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

/// Waits until the inbound stream (a work queue) holds nothing: every
/// event was handled.
async fn all_events_handled(js: &async_nats::jetstream::Context) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while js
        .get_stream("EXO_INBOUND")
        .await?
        .info()
        .await?
        .state
        .messages
        > 0
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "events left unhandled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
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
        (
            r#"{"graph_name": "g"}"#,
            400,
            "Dependent x not found in store",
        ),
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

/// `g` of [`stack_with_graph`] with an EVENT trigger on `orders.created`:
/// store `x` from the body's `name`, idempotency key at `/id`.
async fn bind_orders(stack: &Stack) -> anyhow::Result<()> {
    let graph = json!({
        "secrets": {},
        "store_config": {"required_keys": ["x"]},
        "triggers": [{"type": "EVENT", "value": {
            "subject": "orders.created", "store": {"x": "/name"}, "idempotency_key": "/id"}}],
        "nodes": [
            {"node_name": "AppendA", "namespace": NS, "identifier": "a",
             "inputs": {"text": "${{ store.x }}"}, "next_nodes": ["b"]},
            {"node_name": "AppendB", "namespace": NS, "identifier": "b",
             "inputs": {"text": "${{ a.outputs.text }}"}},
        ]
    });
    stack.upsert_valid_graph(NS, "g", &graph).await
}

/// The text the run's `b` state produced.
async fn output_of(stack: &Stack, run_id: &str) -> anyhow::Result<String> {
    let run = stack.wait_run(run_id, Duration::from_secs(30)).await?;
    anyhow::ensure!(run.status.as_deref() == Some("SUCCESS"), "{run:?}");
    let states = assert_run_consistent(stack, &run).await?;
    Ok(states
        .iter()
        .find(|s| s.identifier == "b")
        .and_then(|s| s.outputs.get_str("text").ok())
        .unwrap_or_default()
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_a_bound_subject_start_one_run_per_key_across_restarts() -> anyhow::Result<()> {
    let (mut stack, stop) = stack_with_graph().await?;
    bind_orders(&stack).await?;
    // A plain client: JetStream publishes, with and without Nats-Msg-Id.
    let nc = async_nats::connect(stack.servers.nats.url()).await?;
    let js = async_nats::jetstream::new(nc.clone());
    // An operator shortens the inbound stream's duplicate window; the
    // services keep it (they only ever change the stream's subjects).
    let mut cfg = js
        .get_stream("EXO_INBOUND")
        .await?
        .info()
        .await?
        .config
        .clone();
    cfg.duplicate_window = Duration::from_secs(1);
    js.update_stream(&cfg).await?;
    let publish = |body: &'static str, msg_id: Option<&'static str>| {
        let js = js.clone();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            if let Some(id) = msg_id {
                headers.insert("Nats-Msg-Id", id);
            }
            js.publish_with_headers("orders.created", headers, body.into())
                .await?
                .await?;
            anyhow::Ok(())
        }
    };
    publish(r#"{"id": "o-1", "name": "ann"}"#, None).await?;
    publish(r#"{"id": "ignored", "name": "bo"}"#, Some("m-2")).await?;
    // The trigger service dies; events keep arriving, one repeating a key.
    stack.service("exo-trigger").kill9();
    publish(r#"{"id": "o-3", "name": "cy"}"#, None).await?;
    publish(r#"{"id": "o-1", "name": "again"}"#, None).await?;
    stack.service("exo-trigger").restart().await?;
    let run = |key: &str| exo_types::ids::idempotent_run_id(NS, "g", key).to_string();
    // Two events under one key handled at once: either may be the one
    // that starts the run (the key promises one run, not which payload).
    let o1 = output_of(&stack, &run("o-1")).await?;
    assert!(o1 == "ann+a+b" || o1 == "again+a+b", "{o1}");
    assert_eq!(output_of(&stack, &run("m-2")).await?, "bo+a+b");
    assert_eq!(output_of(&stack, &run("o-3")).await?, "cy+a+b");
    // Past the duplicate windows (the lifecycle stream's shortened too),
    // JetStream takes a repeated Nats-Msg-Id as new; the derived run id
    // still starts nothing new, and publishes no event again.
    let mut events_cfg = js
        .get_stream("EXO_EVENTS")
        .await?
        .info()
        .await?
        .config
        .clone();
    events_cfg.duplicate_window = Duration::from_secs(1);
    js.update_stream(&events_cfg).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publish(r#"{"id": "ignored", "name": "bo-again"}"#, Some("m-2")).await?;
    publish(r#"{"id": "o-1", "name": "late"}"#, None).await?;
    // Every event handled (the stream is a work queue: nothing left).
    all_events_handled(&js).await?;
    assert_eq!(run_count(&stack).await?, 3, "one run per key");
    // Each run's lifecycle events: one per transition of the run and of
    // each of its states, across the restart and the late repeats.
    for key in ["o-1", "m-2", "o-3"] {
        check_lifecycle(&stack, &js, &run(key), false).await?;
    }

    // An event without its idempotency key starts nothing and is
    // dead-lettered with the reason.
    let mut dlq = nc.subscribe("exo.dlq.v1.EXO_INBOUND.>").await?;
    nc.flush().await?;
    publish(r#"{"name": "no id"}"#, None).await?;
    let letter = tokio::time::timeout(Duration::from_secs(10), dlq.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no dead letter"))?;
    let v: Value = serde_json::from_slice(&letter.payload)?;
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no idempotency key"), "{v}");
    assert_eq!(v["subject"], "orders.created");
    assert_eq!(run_count(&stack).await?, 3);
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_trigger_replicas_start_one_run_per_key() -> anyhow::Result<()> {
    let (mut stack, stop) = stack_with_graph().await?;
    let env = stack.env(exo_test_support::free_port());
    let second = exo_test_support::ServiceProcess::spawn("exo-trigger", &env).await?;
    stack.services.insert("exo-trigger-b".into(), second);
    bind_orders(&stack).await?;
    let nc = async_nats::connect(stack.servers.nats.url()).await?;
    let js = async_nats::jetstream::new(nc.clone());
    // 60 events under 40 keys: 20 keys arrive twice, with other bodies.
    const KEYS: usize = 40;
    for i in 0..60 {
        let body = json!({"id": format!("k{}", i % KEYS), "name": format!("n{i}")});
        js.publish("orders.created", body.to_string().into())
            .await?
            .await?;
    }
    for k in 0..KEYS {
        let run_id = exo_types::ids::idempotent_run_id(NS, "g", &format!("k{k}")).to_string();
        let text = output_of(&stack, &run_id).await?;
        let first = format!("n{k}+a+b");
        let second = format!("n{}+a+b", k + KEYS);
        assert!(text == first || text == second, "k{k}: {text}");
    }
    all_events_handled(&js).await?;
    assert_eq!(run_count(&stack).await? as usize, KEYS);
    stop.cancel();
    Ok(())
}

/// Checks run `run_id`'s lifecycle events in the stream against its
/// documents (the oracle of `exo_test_support::lifecycle`); returns them.
async fn check_lifecycle(
    stack: &Stack,
    js: &async_nats::jetstream::Context,
    run_id: &str,
    strict: bool,
) -> anyhow::Result<Vec<Event>> {
    let run = stack.wait_run(run_id, Duration::from_secs(30)).await?;
    let states = stack.states(run_id).await?;
    let events = lifecycle::stored_events(js, NS, run_id).await?;
    lifecycle::check_run_events(&run, &states, &events, strict)?;
    Ok(events)
}

/// The `ce-*` headers of a message, by name.
fn ce(msg: &async_nats::Message, name: &str) -> String {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_are_cloudevents_one_per_transition() -> anyhow::Result<()> {
    let (stack, stop) = stack_with_graph().await?;
    let nc = async_nats::connect(stack.servers.nats.url()).await?;
    let mut live = nc
        .subscribe(format!("exo.v1.{NS}.event.lifecycle.>"))
        .await?;
    nc.flush().await?;
    // A run that succeeds, started twice under one key.
    let body = r#"{"graph_name": "g", "store": {"x": "hi"}, "idempotency_key": "life-1"}"#;
    let ok = request(&nc, body).await?["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    request(&nc, body).await?;
    stack.wait_run(&ok, Duration::from_secs(30)).await?;
    // A run that is cancelled while its root waits out a start delay.
    let late = request(
        &nc,
        r#"{"graph_name": "g", "store": {"x": "z"}, "start_delay_ms": 600000}"#,
    )
    .await?["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (status, _) = stack
        .post(&format!("/v0/namespace/{NS}/run/{late}/cancel"), &json!({}))
        .await?;
    assert_eq!(status, 202);
    stack.wait_run(&late, Duration::from_secs(30)).await?;

    // The stream holds one event per transition, in order, as the oracle
    // checks them against the documents; and exactly this story.
    let js = async_nats::jetstream::new(nc.clone());
    let story = |events: &[Event]| -> Vec<String> {
        events
            .iter()
            .map(|e| match e.data["identifier"].as_str() {
                Some(node) => format!("{node}:{}", e.field("status")),
                None => e.ce_type.clone(),
            })
            .collect()
    };
    let ok_events = check_lifecycle(&stack, &js, &ok, true).await?;
    assert_eq!(
        story(&ok_events),
        [
            "exo.run.created",
            "a:QUEUED",
            "exo.run.started",
            "a:EXECUTED",
            "a:SUCCESS",
            "b:QUEUED",
            "b:EXECUTED",
            "b:SUCCESS",
            "exo.run.succeeded",
        ]
    );
    let late_events = check_lifecycle(&stack, &js, &late, true).await?;
    assert_eq!(
        story(&late_events),
        [
            "exo.run.created",
            "a:CREATED",
            "a:CANCELLED",
            "exo.run.cancelled"
        ]
    );
    let a = &ok_events[1].data;
    assert_eq!(a["attempt"], 1);
    assert_eq!(a["graph_name"], "g");
    assert_eq!(a["node_name"], "AppendA");
    assert!(a["created_at_ms"].as_i64() <= a["at_ms"].as_i64(), "{a}");
    assert!(
        a.get("inputs").is_none() && a.get("outputs").is_none(),
        "{a}"
    );
    assert_eq!(late_events[2].data["error"], "run cancelled");

    // Core subscribers see the same events once each, as CloudEvents.
    let mut seen = Vec::new();
    while seen.len() < ok_events.len() + late_events.len() {
        let msg = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("events ended"))?;
        assert_eq!(ce(&msg, "content-type"), "application/json");
        assert_eq!(
            ce(&msg, "ce-source"),
            format!("/exo/namespaces/{NS}/graphs/g")
        );
        assert!(ce(&msg, "ce-time").ends_with('Z'), "{:?}", msg.headers);
        let e = Event::of(&msg)?;
        let subject = match e.data["state_id"].as_str() {
            Some(state) => format!("runs/{}/states/{state}", e.field("run_id")),
            None => format!("runs/{}", e.field("run_id")),
        };
        assert_eq!(ce(&msg, "ce-subject"), subject);
        assert_eq!(
            msg.subject.as_str(),
            format!(
                "exo.v1.{NS}.event.lifecycle.{}.{}",
                e.field("run_id"),
                e.ce_type.trim_start_matches("exo.")
            )
        );
        seen.push(e.id);
    }
    let stored: Vec<String> = ok_events
        .iter()
        .chain(&late_events)
        .map(|e| e.id.clone())
        .collect();
    let mut sorted = seen.clone();
    sorted.sort();
    let mut expected = stored.clone();
    expected.sort();
    assert_eq!(sorted, expected);
    let extra = tokio::time::timeout(Duration::from_millis(500), live.next()).await;
    assert!(extra.is_err(), "one event per transition: {extra:?}");

    // The same story as server-sent events, ending with the run.
    let r = stack
        .http
        .get(format!(
            "{}/v0/namespace/{NS}/run/{ok}/events",
            stack.api_url
        ))
        .header("x-api-key", exo_e2e::API_KEY)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = tokio::time::timeout(Duration::from_secs(10), r.text()).await??;
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    let want: Vec<&str> = ok_events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, want, "{text}");
    assert!(text.contains(&format!("id: ce:run:{ok}:created")), "{text}");
    stop.cancel();
    Ok(())
}
