//! The NATS-only path used by event-driven integrations: a trigger command
//! published on `exo.v1.<ns>.run.trigger` starts a run without the HTTP API.

use std::time::Duration;

use exo_e2e::nodes::Append;
use exo_e2e::{Stack, assert_run_consistent};
use exo_store::mongodb::bson::{DateTime, doc};
use exo_store::{GraphTemplateDoc, RegisteredNodeDoc};
use exo_types::graph::NodeTemplate;
use exo_types::messages::TriggerCommand;
use exo_types::subjects;

fn template(
    ns: &str,
    node: &str,
    id: &str,
    text: &str,
    next: &[&str],
) -> anyhow::Result<NodeTemplate> {
    Ok(serde_json::from_value(serde_json::json!({
        "node_name": node, "namespace": ns, "identifier": id,
        "inputs": {"text": text}, "next_nodes": next}))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_command_on_nats_runs_a_chain_without_the_api() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[
        "exo-trigger",
        "exo-scheduler",
        "exo-completion",
        "exo-retry",
    ])
    .await?;
    let ns = "events";
    let now = DateTime::now();
    // A graph written the way an operator's migration or another API replica would.
    let schema = exo_runtime::string_object_schema("Inputs", &["text"]);
    for name in ["AppendA", "AppendB"] {
        stack
            .store
            .registered_nodes()
            .insert_one(RegisteredNodeDoc {
                id: None,
                name: name.into(),
                namespace: ns.into(),
                runtime_name: "rt".into(),
                runtime_namespace: ns.into(),
                inputs_schema: schema.clone(),
                outputs_schema: schema.clone(),
                secrets: vec![],
                created_at: now,
                updated_at: now,
            })
            .await?;
    }
    stack
        .store
        .graph_templates()
        .insert_one(GraphTemplateDoc {
            id: None,
            name: "g".into(),
            namespace: ns.into(),
            nodes: vec![
                template(ns, "AppendA", "a", "${{ store.x }}", &["b"])?,
                template(ns, "AppendB", "b", "${{ a.outputs.text }}!", &[])?,
            ],
            validation_status: "VALID".into(),
            validation_errors: vec![],
            secrets: Default::default(),
            triggers: vec![],
            retry_policy: Default::default(),
            store_config: serde_json::from_value(serde_json::json!({"required_keys": ["x"]}))?,
            webhooks: vec![],
            created_at: now,
            updated_at: now,
        })
        .await?;
    let runtime = exo_runtime::Runtime::builder(ns, "rt")
        .nats_url(stack.servers.nats.url())
        .node(Append::new("AppendA", "a"))
        .node(Append::new("AppendB", "b"))
        .build();
    let stop = tokio_util::sync::CancellationToken::new();
    let s2 = stop.clone();
    let rt = tokio::spawn(async move { runtime.run(s2).await });

    let bus = exo_bus::Bus::connect(&stack.servers.nats.url(), "integration").await?;
    let cmd = TriggerCommand {
        run_id: exo_types::names::RunId::trusted("evt-1"),
        run: exo_types::messages::RunRequest {
            graph_name: "g".into(),
            inputs: Default::default(),
            store: [("x".to_string(), "X".to_string())].into(),
            start_delay_ms: 0,
        },
        requested_at_ms: None,
    };
    bus.publish(exo_bus::Outgoing::json(
        subjects::trigger(ns),
        exo_types::messages::trigger_msg_id("evt-1"),
        &cmd,
    )?)
    .await?;
    let run = stack.wait_run("evt-1", Duration::from_secs(30)).await?;
    assert_eq!(run.status.as_deref(), Some("SUCCESS"));
    let states = assert_run_consistent(&stack, &run).await?;
    let b = states.iter().find(|s| s.identifier == "b").expect("b");
    assert_eq!(b.outputs.get_str("text")?, "X+a!+b");
    assert_eq!(
        stack
            .store
            .store_entries()
            .count_documents(doc! {"run_id": "evt-1"})
            .await?,
        1
    );
    stop.cancel();
    rt.await??;
    Ok(())
}

/// A NATS runtime reads a state's secrets over NATS request/reply on
/// `exo.v1.<ns>.secrets.get`, with the API key in `Exo-Api-Key`: the same
/// answer and the same refusals as `GET …/state/{id}/secrets`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_served_over_nats_with_the_api_key() -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let ns = "natssecrets";
    let stack = exo_e2e::Stack::start().await?;
    stack.register_http_node(ns, "Echo").await?;
    let graph = serde_json::json!({"secrets": {"token": "s3cret", "user": "bob"}, "nodes": [
        {"node_name": "Echo", "identifier": "e", "namespace": ns, "inputs": {"text": "hi"}}]});
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    let run_id = stack.trigger(ns, "g", &serde_json::json!({})).await?;
    let state_id = stack.states(&run_id).await?[0].id.to_hex();
    let client = async_nats::connect(stack.servers.nats.url()).await?;
    let ask = |ns: &str, key: &str, body: serde_json::Value| {
        let mut h = async_nats::HeaderMap::new();
        h.insert(exo_types::messages::HEADER_API_KEY, key);
        let client = client.clone();
        let subject = exo_types::subjects::secrets(ns);
        async move {
            let r = client
                .request_with_headers(subject, h, body.to_string().into())
                .await?;
            anyhow::Ok(serde_json::from_slice::<serde_json::Value>(&r.payload)?)
        }
    };
    let body = serde_json::json!({ "state_id": state_id });
    let ok = ask(ns, exo_e2e::API_KEY, body.clone()).await?;
    assert_eq!(
        ok,
        serde_json::json!({"status": 200, "secrets": {"token": "s3cret", "user": "bob"}})
    );
    let (_, http) = stack
        .get(&format!("/v0/namespace/{ns}/state/{state_id}/secrets"))
        .await?;
    assert_eq!(
        ok["secrets"], http["secrets"],
        "the same answer as over HTTP"
    );
    assert_eq!(
        ask(ns, "wrong-key", body.clone()).await?,
        serde_json::json!({"status": 401, "detail": "Invalid API key"})
    );
    assert_eq!(
        ask("elsewhere", exo_e2e::API_KEY, body).await?,
        serde_json::json!({"status": 404, "detail": "State not found"})
    );
    assert_eq!(
        ask(ns, exo_e2e::API_KEY, serde_json::json!({"id": 1})).await?["status"],
        400
    );
    // Nothing of it is persisted: no stream holds the subject.
    let js = async_nats::jetstream::new(client.clone());
    let mut names = js.stream_names();
    while let Some(name) = names.next().await {
        let name = name?;
        let info = js.get_stream(&name).await?.info().await?.config.clone();
        for s in &info.subjects {
            assert!(
                !s.contains("secrets") && s != "exo.v1.>" && s != ">",
                "stream {name} would keep secrets: {s}"
            );
        }
    }
    Ok(())
}

/// The Rust SDK gives nodes their secrets (`Context::secrets`, over the
/// NATS request subject, with the key the runtime registers with).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_nodes_read_their_secrets() -> anyhow::Result<()> {
    let ns = "rustsecrets";
    let stack = Stack::start().await?;
    let (stop, _) = stack
        .start_runtime(stack.runtime(ns, "rt").node(exo_e2e::nodes::Reveal))
        .await?;
    let graph = serde_json::json!({"secrets": {"token": "s3cret"}, "nodes": [
        {"node_name": "Reveal", "identifier": "r", "namespace": ns, "inputs": {"text": "x"}}]});
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    let run_id = stack.trigger(ns, "g", &serde_json::json!({})).await?;
    let run = stack.wait_run(&run_id, Duration::from_secs(30)).await?;
    assert_eq!(run.status.as_deref(), Some("SUCCESS"), "{run:?}");
    let st = stack.states(&run_id).await?;
    assert_eq!(st[0].outputs.get_str("text")?, "x:s3cret");
    stop.cancel();
    Ok(())
}
