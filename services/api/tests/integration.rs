//! The API against a real nats-server and MongoDB-wire server, with the
//! engine handlers standing in for the trigger, scheduler, completion and
//! retry services (a "pump" drains their streams in-process).

use std::time::Duration;

use async_nats::jetstream::AckKind;
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use exo_api::{AppState, Settings};
use exo_engine::{Engine, Outcome};
use exo_service::admin::Readiness;
use exo_service::config::CommonConfig;
use exo_test_support::{Servers, unique_db_name};
use exo_types::messages::{Errored, Executed, Pruned, Requeue, StateCreated, TriggerCommand};
use exo_types::subjects::{self, ResultKind};
use futures::StreamExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const KEY: &str = "integration-key";
const SECRETS_KEY: &str = "YTzpUlBGLSwm-3yKJRJTZnb0_aQuQQHyz64s8qAERVU=";

struct Env {
    _servers: Servers,
    app: Router,
    engine: Engine,
}

async fn setup() -> Env {
    exo_test_support::init_test_tracing();
    let servers = Servers::start().await.expect("start servers");
    let mut common = CommonConfig::default();
    common.nats.url = servers.nats.url();
    common.mongo.uri = servers.mongo.uri();
    common.mongo.database = unique_db_name("api");
    let engine = exo_engine::worker::connect(&common, "exo-api-test")
        .await
        .expect("connect");
    let api = exo_api::ApiConfig {
        key: KEY.into(),
        secrets_encryption_key: Some(SECRETS_KEY.into()),
        lease_secs: 30,
        ..Default::default()
    };
    let state = AppState::new(
        engine.clone(),
        Settings::from_config(&api).unwrap(),
        Readiness::default(),
    );
    Env {
        _servers: servers,
        app: exo_api::app(state),
        engine,
    }
}

impl Env {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let b = Request::builder()
            .method(method)
            .uri(path)
            .header("x-api-key", KEY);
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = to_bytes(res.into_body(), usize::MAX).await.unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, v)
    }

    /// Drains the command, state and result streams through the engine
    /// handlers until nothing is left to do now.
    async fn pump(&self) {
        let specs = [
            (
                subjects::STREAM_COMMANDS,
                "t-trigger",
                &[subjects::COMMANDS_SUBJECTS][..],
            ),
            (
                subjects::STREAM_STATES,
                "t-scheduler",
                &[subjects::STATES_SUBJECTS][..],
            ),
            (
                subjects::STREAM_RESULTS,
                "t-results",
                &subjects::RESULTS_SUBJECTS[..],
            ),
        ];
        loop {
            let mut handled = 0;
            for (stream, durable, filters) in specs {
                let consumer = self
                    .engine
                    .bus
                    .service_consumer(stream, durable, filters)
                    .await
                    .unwrap();
                let mut batch = consumer
                    .fetch()
                    .max_messages(100)
                    .expires(Duration::from_millis(50))
                    .messages()
                    .await
                    .unwrap();
                while let Some(Ok(msg)) = batch.next().await {
                    handled += 1;
                    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                    let outcome = self.handle(&msg.subject, &msg.payload, seq).await;
                    match outcome {
                        Outcome::Delay(d) => msg.ack_with(AckKind::Nak(Some(d))).await.unwrap(),
                        Outcome::Reject(r) => panic!("rejected {}: {r}", msg.subject),
                        _ => msg.double_ack().await.unwrap(),
                    }
                }
            }
            if handled == 0 {
                return;
            }
        }
    }

    async fn handle(&self, subject: &str, payload: &[u8], seq: u64) -> Outcome {
        let e = &self.engine;
        let r = if subject.ends_with(".run.trigger") {
            let ns = subjects::namespace_of(subject).unwrap().to_string();
            let cmd: TriggerCommand = serde_json::from_slice(payload).unwrap();
            exo_trigger::handlers::on_trigger(e, &ns, cmd, &format!("EXO_COMMANDS:{seq}")).await
        } else if subject.ends_with(".state.created") {
            exo_scheduler::handlers::on_created(
                e,
                serde_json::from_slice::<StateCreated>(payload).unwrap(),
                seq,
            )
            .await
        } else {
            match subjects::result_kind_of(subject).unwrap() {
                ResultKind::Executed => {
                    let m: Executed = serde_json::from_slice(payload).unwrap();
                    exo_completion::handlers::on_executed(e, m, seq).await
                }
                ResultKind::Pruned => {
                    exo_completion::handlers::on_pruned(
                        e,
                        serde_json::from_slice::<Pruned>(payload).unwrap(),
                    )
                    .await
                }
                ResultKind::Errored => {
                    exo_retry::handlers::on_errored(
                        e,
                        serde_json::from_slice::<Errored>(payload).unwrap(),
                    )
                    .await
                }
                ResultKind::Requeue => {
                    exo_retry::handlers::on_requeue(
                        e,
                        serde_json::from_slice::<Requeue>(payload).unwrap(),
                    )
                    .await
                }
            }
        };
        r.expect("handler")
    }

    async fn enqueue(&self, nodes: &[&str], batch: i64) -> Vec<Value> {
        let (s, v) = self
            .call(
                "POST",
                "/v0/namespace/ns/states/enqueue",
                Some(json!({"nodes": nodes, "batch_size": batch})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["namespace"], "ns");
        assert_eq!(v["status"], "QUEUED");
        assert_eq!(
            v["count"].as_u64().unwrap() as usize,
            v["states"].as_array().unwrap().len()
        );
        v["states"].as_array().unwrap().clone()
    }

    async fn run(&self, run_id: &str) -> Value {
        let (s, v) = self
            .call("GET", &format!("/v0/namespace/ns/run/{run_id}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }
}

fn schema(fields: &[&str]) -> Value {
    let props: serde_json::Map<String, Value> = fields
        .iter()
        .map(|f| (f.to_string(), json!({"type": "string", "title": f})))
        .collect();
    json!({"type": "object", "properties": props})
}

async fn register(env: &Env) {
    let body = json!({
        "runtime_name": "rt",
        "runtime_namespace": "ns",
        "nodes": [
            {"name": "Hello", "namespace": "ns", "inputs_schema": schema(&["name"]),
             "outputs_schema": schema(&["greeting"]), "secrets": ["api_key"]},
            {"name": "Print", "inputs_schema": schema(&["message"]),
             "outputs_schema": schema(&[]), "secrets": []},
        ],
    });
    let (s, v) = env.call("PUT", "/v0/namespace/ns/nodes/", Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["runtime_name"], "rt");
    assert_eq!(v["registered_nodes"][0]["name"], "Hello");
    assert_eq!(v["registered_nodes"][1]["secrets"], json!([]));
}

fn two_step_graph() -> Value {
    json!({
        "secrets": {"api_key": "s3cret"},
        "nodes": [
            {"node_name": "Hello", "namespace": "ns", "identifier": "hello",
             "inputs": {"name": "${{ store.who }}"}, "next_nodes": ["print"]},
            {"node_name": "Print", "namespace": "ns", "identifier": "print",
             "inputs": {"message": "${{ hello.outputs.greeting }}!"}},
        ],
        "retry_policy": {"max_retries": 1, "strategy": "FIXED", "backoff_factor": 1},
        "store_config": {"required_keys": ["who"], "default_values": {"lang": "en"}},
        "triggers": [{"type": "CRON", "value": {"expression": "0 * * * *"}}],
    })
}

#[tokio::test]
async fn graphs_nodes_and_namespaces() {
    let env = setup().await;
    register(&env).await;
    // Re-registration is an update.
    register(&env).await;
    let (s, v) = env.call("GET", "/v0/namespace/ns/nodes/", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["count"], 2);
    let n = &v["nodes"][0];
    for k in [
        "_id",
        "created_at",
        "updated_at",
        "name",
        "namespace",
        "runtime_name",
        "runtime_namespace",
        "inputs_schema",
        "outputs_schema",
        "secrets",
    ] {
        assert!(n.get(k).is_some(), "{k} missing in {n}");
    }
    assert_eq!(n["runtime_namespace"], "ns");
    let (_, v) = env.call("GET", "/v0/namespaces", None).await;
    assert_eq!(v, json!({"namespaces": ["ns"], "count": 1}));

    let (s, v) = env
        .call("PUT", "/v0/namespace/ns/graph/g", Some(two_step_graph()))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["validation_status"], "PENDING");
    assert_eq!(v["validation_errors"], json!([]));
    assert_eq!(v["secrets"], json!({"api_key": true}));
    assert!(v.get("name").is_none() && v.get("namespace").is_none());
    let created_at = v["created_at"].clone();

    let (s, v) = env.call("GET", "/v0/namespace/ns/graph/g", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["validation_status"], "VALID", "{v}");
    assert_eq!(v["retry_policy"]["max_retries"], 1);
    assert_eq!(v["retry_policy"]["strategy"], "FIXED");
    assert_eq!(v["store_config"]["required_keys"], json!(["who"]));
    assert_eq!(v["triggers"][0]["value"]["expression"], "0 * * * *");
    assert_eq!(v["created_at"], created_at);

    // An update keeps created_at.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (s, v) = env
        .call("PUT", "/v0/namespace/ns/graph/g", Some(two_step_graph()))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["created_at"], created_at);
    assert_ne!(v["updated_at"], created_at);

    let (_, v) = env.call("GET", "/v0/namespace/ns/graphs/", None).await;
    assert_eq!(v["count"], 1);
    let ct = v["templates"][0]["secrets"]["api_key"].as_str().unwrap();
    let cipher = exo_api::crypto::SecretCipher::from_key(SECRETS_KEY).unwrap();
    assert_eq!(cipher.decrypt(ct).unwrap(), "s3cret");

    // Registry problems make the graph INVALID (reported by GET).
    let bad = json!({"secrets": {}, "nodes": [
        {"node_name": "Missing", "namespace": "ns", "identifier": "m", "inputs": {}},
    ]});
    let (s, _) = env
        .call("PUT", "/v0/namespace/ns/graph/bad", Some(bad))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, v) = env.call("GET", "/v0/namespace/ns/graph/bad", None).await;
    assert_eq!(v["validation_status"], "INVALID");
    assert_eq!(
        v["validation_errors"][0],
        "Node Missing in namespace ns does not exist."
    );

    let (s, v) = env.call("GET", "/v0/namespace/ns/graph/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["detail"], "Graph template nope not found in namespace ns");

    // Trigger preconditions.
    let (s, v) = env
        .call(
            "POST",
            "/v0/namespace/ns/graph/bad/trigger",
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (s, v["detail"].as_str()),
        (StatusCode::BAD_REQUEST, Some("Graph template is not valid"))
    );
    let (s, v) = env
        .call(
            "POST",
            "/v0/namespace/ns/graph/nope/trigger",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        v["detail"],
        "Graph template not found for namespace ns and graph nope"
    );
    let (s, v) = env
        .call("POST", "/v0/namespace/ns/graph/g/trigger", Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["detail"],
        "Invalid input: Dependent who not found in store for root node hello"
    );
    let (s, v) = env
        .call(
            "POST",
            "/v0/namespace/ns/graph/g/trigger",
            Some(json!({"inputs": {"name": "x"}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["detail"], "Missing store keys: {'who'}");
}

#[tokio::test]
async fn a_run_through_the_http_runtime_endpoints() {
    let env = setup().await;
    register(&env).await;
    let (s, _) = env
        .call("PUT", "/v0/namespace/ns/graph/g", Some(two_step_graph()))
        .await;
    assert_eq!(s, StatusCode::CREATED);

    let (s, v) = env
        .call(
            "POST",
            "/v0/namespace/ns/graph/g/trigger",
            Some(json!({"store": {"who": "bob"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "CREATED");
    let run_id = v["run_id"].as_str().unwrap().to_string();

    // Nothing is handed out before the trigger service ran.
    assert!(env.enqueue(&["Hello"], 5).await.is_empty());
    env.pump().await;
    let states = env.enqueue(&["Hello", "Print"], 5).await;
    assert_eq!(states.len(), 1, "{states:?}");
    let hello = &states[0];
    assert_eq!(hello["node_name"], "Hello");
    assert_eq!(hello["identifier"], "hello");
    assert_eq!(hello["inputs"], json!({"name": "bob"}));
    let hid = hello["state_id"].as_str().unwrap().to_string();
    // Handed out once.
    assert!(env.enqueue(&["Hello"], 5).await.is_empty());

    let (s, v) = env
        .call(
            "GET",
            &format!("/v0/namespace/ns/state/{hid}/secrets"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!({"secrets": {"api_key": "s3cret"}}));
    let (s, _) = env
        .call(
            "GET",
            &format!("/v0/namespace/other/state/{hid}/secrets"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let path = format!("/v0/namespace/ns/state/{hid}/executed");
    let (s, v) = env
        .call("POST", &path, Some(json!({"outputs": [{"n": u64::MAX}]})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = env
        .call(
            "POST",
            &path,
            Some(json!({"outputs": [{"greeting": "hi bob"}]})),
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"status": "EXECUTED"})));
    let (s, _) = env
        .call(
            "POST",
            &format!("/v0/namespace/other/state/{hid}/executed"),
            Some(json!({"outputs": []})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    env.pump().await;
    let (s, v) = env.call("POST", &path, Some(json!({"outputs": []}))).await;
    assert_eq!(
        (s, v["detail"].as_str()),
        (StatusCode::BAD_REQUEST, Some("State is not queued"))
    );

    let states = env.enqueue(&["Print"], 5).await;
    assert_eq!(states.len(), 1);
    assert_eq!(states[0]["inputs"], json!({"message": "hi bob!"}));
    let pid = states[0]["state_id"].as_str().unwrap().to_string();

    // errored with a retry left, then the retry is pruned.
    let (s, v) = env
        .call(
            "POST",
            &format!("/v0/namespace/ns/state/{pid}/errored"),
            Some(json!({"error": "boom"})),
        )
        .await;
    assert_eq!(
        (s, v),
        (
            StatusCode::OK,
            json!({"status": "ERRORED", "retry_created": true})
        )
    );
    env.pump().await;
    let (_, v) = env
        .call(
            "POST",
            &format!("/v0/namespace/ns/state/{pid}/errored"),
            Some(json!({"error": "x"})),
        )
        .await;
    assert_eq!(v["detail"], "State is not queued or executed");
    let mut retry = Vec::new();
    for _ in 0..50 {
        retry = env.enqueue(&["Print"], 5).await;
        if !retry.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        env.pump().await;
    }
    assert_eq!(retry.len(), 1);
    let rid = retry[0]["state_id"].as_str().unwrap().to_string();
    assert_ne!(rid, pid);

    // re-enqueue-after puts it back with a delay.
    let (s, v) = env
        .call(
            "POST",
            &format!("/v0/namespace/ns/state/{rid}/re-enqueue-after"),
            Some(json!({"enqueue_after": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "CREATED");
    assert!(v["enqueue_after"].as_i64().unwrap() > 1_700_000_000_000);
    env.pump().await;
    let mut again = Vec::new();
    for _ in 0..50 {
        again = env.enqueue(&["Print"], 5).await;
        if !again.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        env.pump().await;
    }
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["state_id"], rid.as_str());

    let (s, v) = env
        .call(
            "POST",
            &format!("/v0/namespace/ns/state/{rid}/prune"),
            Some(json!({"data": {"why": "done"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "PRUNED");
    env.pump().await;

    let run = env.run(&run_id).await;
    assert_eq!(run["status"], "SUCCESS", "{run}");
    assert_eq!(run["total_count"], 3);
    assert_eq!(run["success_count"], 2);
    assert_eq!(run["retried_count"], 1);
    assert_eq!(run["pending_count"], 0);
    assert!(run["finished_at"].is_string());

    let (_, v) = env.call("GET", "/v0/namespace/ns/runs/1/10", None).await;
    assert_eq!(v["total"], 1);
    assert_eq!(v["page"], 1);
    assert_eq!(v["runs"][0]["run_id"], run_id.as_str());
    assert_eq!(v["runs"][0]["status"], "SUCCESS");
    assert_eq!(v["runs"][0]["graph_name"], "g");
    let (_, v) = env.call("GET", "/v0/namespace/ns/runs/2/10", None).await;
    assert_eq!(v["runs"], json!([]));

    let (_, v) = env
        .call(
            "GET",
            &format!("/v0/namespace/ns/states/run/{run_id}/graph"),
            None,
        )
        .await;
    assert_eq!(v["graph_name"], "g");
    assert_eq!(v["node_count"], 3);
    assert_eq!(v["edge_count"], 2);
    assert_eq!(v["root_states"][0]["identifier"], "hello");
    assert_eq!(v["execution_summary"]["PRUNED"], 1);
    assert_eq!(v["execution_summary"]["CREATED"], 0);

    let (s, v) = env
        .call(
            "GET",
            &format!("/v0/namespace/ns/graph/g/run/{run_id}/node/{pid}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "RETRY_CREATED");
    assert_eq!(v["error"], "boom");
    assert_eq!(v["parents"], json!({"hello": hid}));
    let (s, _) = env
        .call(
            "GET",
            &format!("/v0/namespace/ns/graph/other/run/{run_id}/node/{pid}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Manual retry revives the run.
    let (s, v) = env
        .call(
            "POST",
            &format!("/v0/namespace/ns/state/{rid}/manual-retry"),
            Some(json!({"fanout_id": "f1"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "CREATED");
    let (s, v) = env
        .call(
            "POST",
            &format!("/v0/namespace/ns/state/{rid}/manual-retry"),
            Some(json!({"fanout_id": "f1"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(v["detail"], "Duplicate retry state detected");
    let run = env.run(&run_id).await;
    assert_eq!(run["status"], "PENDING", "{run}");
    env.pump().await;
    let states = env.enqueue(&["Print"], 5).await;
    assert_eq!(states.len(), 1);
    let mid = states[0]["state_id"].as_str().unwrap().to_string();
    let (s, _) = env
        .call(
            "POST",
            &format!("/v0/namespace/ns/state/{mid}/executed"),
            Some(json!({"outputs": [{}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    env.pump().await;
    let run = env.run(&run_id).await;
    assert_eq!(run["status"], "SUCCESS", "{run}");
    assert_eq!(run["total_count"], 4);
    assert_eq!(run["retried_count"], 2);
    assert_eq!(run["success_count"], 2);

    let (s, v) = env.call("GET", "/v0/namespace/ns/run/unknown", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}
