//! Bad input gets a clear error or a dead-letter record, never a crash loop
//! or a half-written run.

use std::time::Duration;

use exo_e2e::nodes::Append;
use exo_e2e::{SERVICES, Stack};
use exo_store::mongodb::bson::doc;
use exo_types::messages::{DeadLetter, TriggerCommand};
use exo_types::subjects::{self, ResultKind};
use serde_json::json;

async fn last_dead_letter(
    stack: &Stack,
    stream: &str,
    consumer: &str,
) -> anyhow::Result<Option<DeadLetter>> {
    let client = async_nats::connect(stack.servers.nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let s = js.get_stream(subjects::STREAM_DLQ).await?;
    match s
        .get_last_raw_message_by_subject(&subjects::dead_letter(stream, consumer))
        .await
    {
        Ok(m) => Ok(Some(serde_json::from_slice(&m.payload)?)),
        Err(_) => Ok(None),
    }
}

async fn wait_dead_letter(
    stack: &Stack,
    stream: &str,
    consumer: &str,
    needle: &str,
) -> anyhow::Result<DeadLetter> {
    for _ in 0..100 {
        if let Some(d) = last_dead_letter(stack, stream, consumer).await?
            && d.reason.contains(needle)
        {
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no dead letter containing {needle:?} on {stream}/{consumer}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_poison_messages() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let ns = "bad";
    let (stop, _) = stack
        .start_runtime(stack.runtime(ns, "rt").node(Append::new("AppendA", "a")))
        .await?;

    // Unknown graph.
    let (status, body) = stack
        .post(
            &format!("/v0/namespace/{ns}/graph/nope/trigger"),
            &json!({}),
        )
        .await?;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        body["detail"],
        format!("Graph template not found for namespace {ns} and graph nope")
    );

    // Field-level error: 422 naming the field.
    let bad_field = json!({"secrets": {}, "nodes": [
        {"node_name": "AppendA", "identifier": "store", "namespace": ns, "inputs": {"text": "x"}}]});
    let (status, body) = stack
        .put(&format!("/v0/namespace/{ns}/graph/g1"), &bad_field)
        .await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["detail"][0]["loc"],
        json!(["body", "nodes", 0, "identifier"])
    );

    // Graph-level errors: 400 listing every problem.
    let bad_graph = json!({"secrets": {}, "nodes": [
        {"node_name": "AppendA", "identifier": "a", "namespace": ns, "inputs": {"text": "${{ zz.outputs.x }}"}, "next_nodes": ["missing"]},
    ]});
    let (status, body) = stack
        .put(&format!("/v0/namespace/{ns}/graph/g2"), &bad_graph)
        .await?;
    assert_eq!(status, 400, "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("Error validating graph template"),
        "{detail}"
    );
    assert!(detail.contains("missing"), "{detail}");

    // Missing store keys: 400 and no run written.
    let graph = json!({"secrets": {}, "store_config": {"required_keys": ["k1", "k2"]}, "nodes": [
        {"node_name": "AppendA", "identifier": "a", "namespace": ns, "inputs": {"text": "x"}}]});
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    let (status, body) = stack
        .post(
            &format!("/v0/namespace/{ns}/graph/g/trigger"),
            &json!({"store": {"k2": "v"}}),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["detail"], "Missing store keys: {'k1'}");
    assert_eq!(stack.store.runs().count_documents(doc! {}).await?, 0);

    // A trigger command for an unknown graph published straight on NATS:
    // dead-lettered with the reason, no run written.
    let bus = exo_bus::Bus::connect(&stack.servers.nats.url(), "e2e").await?;
    let cmd = TriggerCommand {
        run_id: exo_types::names::RunId::trusted("run-for-nothing"),
        run: exo_types::messages::RunRequest {
            graph_name: "ghost".into(),
            inputs: Default::default(),
            store: Default::default(),
            start_delay_ms: 0,
        },
        requested_at_ms: None,
    };
    bus.publish(exo_bus::Outgoing::json(
        subjects::trigger(ns),
        "t1".into(),
        &cmd,
    )?)
    .await?;
    let d = wait_dead_letter(
        &stack,
        subjects::STREAM_COMMANDS,
        subjects::CONSUMER_TRIGGER,
        "Graph template not found",
    )
    .await?;
    assert_eq!(d.subject, subjects::trigger(ns));
    assert!(stack.store.run("run-for-nothing").await?.is_none());

    // Malformed payloads on the result subjects: dead-lettered, services stay up.
    for (kind, consumer) in [
        (ResultKind::Executed, "completion"),
        (ResultKind::Errored, "retry"),
    ] {
        let client = async_nats::connect(stack.servers.nats.url()).await?;
        let js = async_nats::jetstream::new(client);
        js.publish(subjects::result(ns, kind), "{not json".into())
            .await?
            .await?;
        let d = wait_dead_letter(&stack, subjects::STREAM_RESULTS, consumer, "malformed").await?;
        assert_eq!(d.payload, "{not json");
    }
    // A result for a state that does not exist.
    let ghost = json!({"state_id": "0123456789abcdef01234567", "attempt": 1, "outputs": []});
    bus.publish(exo_bus::Outgoing::json(
        subjects::result(ns, ResultKind::Executed),
        "g1".into(),
        &ghost,
    )?)
    .await?;
    wait_dead_letter(&stack, subjects::STREAM_RESULTS, "completion", "not found").await?;

    // Every service is still alive and serving; a good run still completes.
    for s in SERVICES {
        assert!(stack.service(s).is_running(), "{s} exited");
    }
    let run_id = stack
        .trigger(ns, "g", &json!({"store": {"k1": "a", "k2": "b"}}))
        .await?;
    let run = stack.wait_run(&run_id, Duration::from_secs(30)).await?;
    assert_eq!(run.status.as_deref(), Some("SUCCESS"));

    // Results about this namespace's state published on another
    // namespace's subjects (what a runtime allowed only those subjects can
    // do): refused before anything is read further, the state untouched.
    let st = stack.states(&run_id).await?.remove(0);
    for (kind, consumer, body) in [
        (
            ResultKind::Executed,
            "completion",
            json!({"state_id": st.id.to_hex(), "attempt": st.attempt, "outputs": [{"text": "forged"}]}),
        ),
        (
            ResultKind::Errored,
            "retry",
            json!({"state_id": st.id.to_hex(), "attempt": st.attempt, "error": "forged"}),
        ),
    ] {
        bus.publish(exo_bus::Outgoing::json(
            subjects::result("other", kind),
            format!("forged-{}", kind.token()),
            &body,
        )?)
        .await?;
        let d = wait_dead_letter(
            &stack,
            subjects::STREAM_RESULTS,
            consumer,
            "is not in namespace other",
        )
        .await?;
        assert_eq!(d.subject, subjects::result("other", kind));
    }
    let after = stack.states(&run_id).await?.remove(0);
    assert_eq!(
        (after.status, after.outputs.clone()),
        (st.status, st.outputs.clone())
    );
    stop.cancel();
    Ok(())
}
