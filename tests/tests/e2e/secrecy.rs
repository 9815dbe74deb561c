//! What must never reach a log: every service at `RUST_LOG=trace` runs a
//! graph whose node reads a secret (over NATS) and one handed out over
//! HTTP that reads it too, with marked inputs, store values and outputs;
//! then every service's log is searched for each of those values, the API
//! key, a scoped key, the secrets encryption key and the connection
//! strings.

use std::time::Duration;

use exo_e2e::{API_KEY, Stack};
use serde_json::json;

const NS: &str = "secrecy";
const SECRET: &str = "sekrit-VALUE-91f3";
const INPUT: &str = "input-MARKER-5d2a";
const STORE: &str = "store-MARKER-77c1";
const ENCRYPTION_KEY: &str = "YTzpUlBGLSwm-3yKJRJTZnb0_aQuQQHyz64s8qAERVU=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_values_and_connection_strings_never_reach_a_log() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    for s in exo_e2e::SERVICES {
        stack.respawn_with(s, &[("RUST_LOG", "trace")]).await?;
    }
    let (stop, _rt) = stack
        .start_runtime(stack.runtime(NS, "rt").node(exo_e2e::nodes::Reveal))
        .await?;
    stack.register_http_node(NS, "Echo").await?;
    let graph = json!({
        "secrets": {"token": SECRET},
        "store_config": {"required_keys": ["seed"]},
        "nodes": [
            {"node_name": "Reveal", "identifier": "r", "namespace": NS,
             "inputs": {"text": format!("{INPUT} ${{{{ store.seed }}}}")}, "next_nodes": ["e"]},
            {"node_name": "Echo", "identifier": "e", "namespace": NS,
             "inputs": {"text": "${{ r.outputs.text }}"}, "next_nodes": []},
        ]
    });
    stack.upsert_valid_graph(NS, "g", &graph).await?;
    let (status, created) = stack
        .post(
            "/v0/keys",
            &json!({"name": "rt", "namespaces": [NS], "scope": "runtime"}),
        )
        .await?;
    assert_eq!(status, 201, "{created}");
    let scoped = created["key"].as_str().unwrap_or_default().to_string();
    let run = stack
        .trigger(NS, "g", &json!({"store": {"seed": STORE}}))
        .await?;
    // The HTTP runtime's part, with the scoped key: take the state, read
    // the secrets, report an output carrying everything.
    let rt = exo_test_support::ApiClient::new(stack.api_url.clone(), scoped.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let state = loop {
        let (status, got) = rt
            .post(
                &format!("/v0/namespace/{NS}/states/enqueue"),
                &json!({"nodes": ["Echo"], "batch_size": 1}),
            )
            .await?;
        assert_eq!(status, 200, "{got}");
        if let Some(s) = got["states"].as_array().and_then(|a| a.first()).cloned() {
            break s;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no state handed out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let id = state["state_id"].as_str().unwrap_or_default().to_string();
    let text = state["inputs"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        text.contains(SECRET) && text.contains(INPUT) && text.contains(STORE),
        "{text}"
    );
    let (status, secrets) = rt
        .get(&format!("/v0/namespace/{NS}/state/{id}/secrets"))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(secrets["secrets"]["token"], SECRET);
    let (status, _) = rt
        .post(
            &format!("/v0/namespace/{NS}/state/{id}/executed"),
            &json!({"outputs": [{"text": format!("{text}!")}]}),
        )
        .await?;
    assert_eq!(status, 200);
    let done = stack.wait_run(&run, Duration::from_secs(30)).await?;
    assert_eq!(done.status.as_deref(), Some("SUCCESS"));
    stop.cancel();

    let mongo_uri = stack.servers.mongo.uri();
    let forbidden = [
        ("a secret value", SECRET.to_string()),
        ("an input", INPUT.to_string()),
        ("a store value", STORE.to_string()),
        ("the API key", API_KEY.to_string()),
        ("a scoped key's secret", scoped[17..].to_string()),
        ("the secrets encryption key", ENCRYPTION_KEY.to_string()),
        ("the MongoDB connection string", mongo_uri.clone()),
    ];
    let mut lines = 0;
    for s in exo_e2e::SERVICES {
        let log = stack.service(s).log_contents();
        lines += log.lines().count();
        assert!(
            log.lines().any(|l| l.contains("DEBUG")),
            "{s} logged nothing below info: the check would prove nothing"
        );
        for (what, value) in &forbidden {
            if let Some(line) = log.lines().find(|l| l.contains(value.as_str())) {
                panic!("{s} logged {what}: {line}");
            }
        }
    }
    assert!(lines > 100, "only {lines} log lines");
    Ok(())
}
