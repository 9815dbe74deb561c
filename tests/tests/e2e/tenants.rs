//! Tenant isolation with scoped API keys, rate limits and size limits,
//! over HTTP and the NATS secrets subject, against the running services.

use std::time::Duration;

use exo_e2e::{API_KEY, Stack};
use exo_test_support::ApiClient;
use reqwest::Method;
use serde_json::{Value, json};

/// Creates a key with the configured (master) key; returns the key.
async fn create_key(stack: &Stack, body: Value) -> anyhow::Result<(String, String)> {
    let (status, created) = stack.post("/v0/keys", &body).await?;
    anyhow::ensure!(status == 201, "create key: {status} {created}");
    let key = created["key"].as_str().unwrap_or_default().to_string();
    let id = created["id"].as_str().unwrap_or_default().to_string();
    anyhow::ensure!(key.starts_with(&format!("exo_{id}_")), "{created}");
    Ok((id, key))
}

fn graph(ns: &str) -> Value {
    json!({"secrets": {"token": format!("secret-of-{ns}")}, "nodes": [
        {"node_name": "Echo", "identifier": "e", "namespace": ns, "inputs": {"text": "hi"}}]})
}

/// One namespace with a graph, a run and a QUEUED state; returns the run
/// id and the state id.
async fn tenant(stack: &Stack, ns: &str) -> anyhow::Result<(String, String)> {
    stack.register_http_node(ns, "Echo").await?;
    stack.upsert_valid_graph(ns, "g", &graph(ns)).await?;
    let run = stack.trigger(ns, "g", &json!({})).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let states = stack.states(&run).await?;
        if let Some(st) = states.first()
            && st.status == exo_types::status::StateStatus::Queued
        {
            return Ok((run, st.id.to_hex()));
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no QUEUED state");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn nats_secrets(stack: &Stack, ns: &str, key: &str, state: &str) -> anyhow::Result<Value> {
    let client = async_nats::connect(stack.servers.nats.url()).await?;
    let mut h = async_nats::HeaderMap::new();
    h.insert(exo_types::messages::HEADER_API_KEY, key);
    let body = json!({ "state_id": state }).to_string();
    let r = client
        .request_with_headers(exo_types::subjects::secrets(ns), h, body.into())
        .await?;
    Ok(serde_json::from_slice(&r.payload)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_s_key_cannot_reach_another_namespace() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (alpha_run, alpha_state) = tenant(&stack, "alpha").await?;
    let (_, beta_state) = tenant(&stack, "beta").await?;
    let (_, alpha_admin) = create_key(
        &stack,
        json!({"name": "alpha ops", "namespaces": ["alpha"]}),
    )
    .await?;
    let (_, alpha_rt) = create_key(
        &stack,
        json!({"name": "alpha runtime", "namespaces": ["alpha"], "scope": "runtime"}),
    )
    .await?;
    let (beta_id, beta) =
        create_key(&stack, json!({"name": "beta", "namespaces": ["beta"]})).await?;
    let as_key = |key: &str| ApiClient::new(stack.api_url.clone(), key);

    // Beta's admin key, on everything of alpha's: 403 naming the namespace.
    let b = as_key(&beta);
    let a = "/v0/namespace/alpha";
    let attempts: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("{a}/graph/g"), None),
        (Method::PUT, format!("{a}/graph/g"), Some(graph("alpha"))),
        (Method::GET, format!("{a}/graphs/"), None),
        (Method::GET, format!("{a}/runs/1/10"), None),
        (Method::GET, format!("{a}/run/{alpha_run}"), None),
        (
            Method::POST,
            format!("{a}/graph/g/trigger"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("{a}/run/{alpha_run}/cancel"),
            Some(json!({})),
        ),
        (Method::GET, format!("{a}/nodes/"), None),
        (
            Method::PUT,
            format!("{a}/nodes/"),
            Some(json!({"runtime_name": "x", "nodes": []})),
        ),
        (
            Method::POST,
            format!("{a}/states/enqueue"),
            Some(json!({"nodes": ["Echo"], "batch_size": 1})),
        ),
        (
            Method::POST,
            format!("{a}/state/{alpha_state}/executed"),
            Some(json!({"outputs": [{}]})),
        ),
        (
            Method::POST,
            format!("{a}/state/{alpha_state}/errored"),
            Some(json!({"error": "x"})),
        ),
        (
            Method::GET,
            format!("{a}/state/{alpha_state}/secrets"),
            None,
        ),
        (
            Method::POST,
            format!("{a}/state/{alpha_state}/manual-retry"),
            Some(json!({"fanout_id": "f"})),
        ),
        (
            Method::GET,
            format!("{a}/states/run/{alpha_run}/graph"),
            None,
        ),
        (Method::GET, format!("{a}/run/{alpha_run}/events"), None),
        (Method::GET, format!("{a}/graph/g/triggers"), None),
        (
            Method::GET,
            format!("{a}/graph/g/webhooks/deliveries"),
            None,
        ),
    ];
    for (method, path, body) in &attempts {
        let (status, answer) = b.send(method.clone(), path, body.as_ref()).await?;
        assert_eq!(status, 403, "{method} {path}: {answer}");
        let detail = answer["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("cannot access namespace 'alpha'"),
            "{detail}"
        );
    }
    // Nothing changed in alpha: still one run, its state still QUEUED.
    let states = stack.states(&alpha_run).await?;
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].status, exo_types::status::StateStatus::Queued);
    assert_eq!(
        stack
            .store
            .runs()
            .count_documents(exo_store::mongodb::bson::doc! {"namespace_name": "alpha"})
            .await?,
        1
    );
    // Beta's key works in beta, and lists only beta.
    let (status, _) = b.get("/v0/namespace/beta/graph/g").await?;
    assert_eq!(status, 200);
    let (status, listed) = b.get("/v0/namespaces").await?;
    assert_eq!(status, 200);
    assert_eq!(listed["namespaces"], json!(["beta"]), "{listed}");
    let (_, all) = stack.get("/v0/namespaces").await?;
    assert_eq!(all["namespaces"], json!(["alpha", "beta"]));
    // Over NATS too.
    let refused = nats_secrets(&stack, "alpha", &beta, &alpha_state).await?;
    assert_eq!(refused["status"], 403, "{refused}");
    let own = nats_secrets(&stack, "beta", &beta, &beta_state).await?;
    assert_eq!(own["secrets"]["token"], "secret-of-beta", "{own}");

    // A runtime key: a runtime's operations in its namespace, nothing else.
    let rt = as_key(&alpha_rt);
    let (status, body) = rt
        .post(
            &format!("{a}/states/enqueue"),
            &json!({"nodes": ["Nothing"], "batch_size": 1}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let (status, body) = rt.get(&format!("{a}/state/{alpha_state}/secrets")).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["secrets"]["token"], "secret-of-alpha");
    for (method, path) in [
        (Method::POST, format!("{a}/graph/g/trigger")),
        (Method::GET, format!("{a}/run/{alpha_run}")),
        (Method::GET, format!("{a}/graph/g")),
    ] {
        let (status, body) = rt.send(method.clone(), &path, Some(&json!({}))).await?;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("runtime key"),
            "{body}"
        );
    }
    let ok = nats_secrets(&stack, "alpha", &alpha_rt, &alpha_state).await?;
    assert_eq!(ok["status"], 200, "{ok}");

    // Alpha's admin key triggers in alpha but cannot manage keys.
    let ad = as_key(&alpha_admin);
    let (status, _) = ad.post(&format!("{a}/graph/g/trigger"), &json!({})).await?;
    assert_eq!(status, 200);
    for (method, path) in [
        (Method::GET, "/v0/keys"),
        (Method::DELETE, "/v0/keys/000000000000"),
    ] {
        let (status, body) = ad.send(method, path, None).await?;
        assert_eq!(status, 403, "{body}");
    }
    let (status, _) = ad
        .post(
            "/v0/keys",
            &json!({"name": "escalate", "namespaces": ["*"]}),
        )
        .await?;
    assert_eq!(status, 403, "a scoped key cannot mint a wider one");

    // Listing shows no secret; revoking closes the key at once.
    let (_, keys) = stack.get("/v0/keys").await?;
    assert_eq!(keys["count"], 3);
    assert!(
        !keys.to_string().contains(&beta[17..]),
        "the secret is not listed"
    );
    assert!(
        keys["keys"]
            .as_array()
            .is_some_and(|k| k.iter().all(|k| k.get("hash").is_none()))
    );
    let (status, revoked) = stack
        .api
        .send(Method::DELETE, &format!("/v0/keys/{beta_id}"), None)
        .await?;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at_ms"].as_i64().is_some());
    let (status, _) = b.get("/v0/namespace/beta/graph/g").await?;
    assert_eq!(status, 401, "a revoked key opens nothing");
    let (status, _) = stack
        .api
        .send(Method::DELETE, "/v0/keys/ffffffffffff", None)
        .await?;
    assert_eq!(status, 404);
    // Wrong secrets and malformed keys are just invalid.
    let last = if alpha_admin.ends_with('0') { "1" } else { "0" };
    let forged = format!("{}{last}", &alpha_admin[..alpha_admin.len() - 1]);
    for key in [forged.as_str(), "exo_", "exo_zz_zz", ""] {
        let (status, _) = as_key(key).get("/v0/namespace/alpha/graph/g").await?;
        assert_eq!(status, 401, "{key:?}");
    }
    // The configured key still reaches everything (Exosphere's one key).
    let (status, _) = ApiClient::new(stack.api_url.clone(), API_KEY)
        .get("/v0/namespace/alpha/graph/g")
        .await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_limits_answer_with_their_documented_errors() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack
        .respawn_with(
            "exo-api",
            &[
                ("EXO_API__MAX_GRAPH_NODES", "2"),
                ("EXO_API__MAX_OUTPUTS", "3"),
                ("EXO_API__MAX_STORE_BYTES", "16"),
                ("EXO_API__MAX_BODY_BYTES", "4096"),
            ],
        )
        .await?;
    let (_, state) = tenant(&stack, "lim").await?;
    let ns = "/v0/namespace/lim";
    let expect = |(status, body): (u16, Value), want: u16, text: &str| {
        assert_eq!(status, want, "{body}");
        assert!(body.to_string().contains(text), "{text} not in {body}");
    };
    // Nodes per graph.
    let node = |id: &str| json!({"node_name": "Echo", "identifier": id, "namespace": "lim", "inputs": {"text": "x"}});
    let wide = json!({"secrets": {}, "nodes": [node("a"), node("b"), node("c")]});
    let answer = stack.put(&format!("{ns}/graph/wide"), &wide).await?;
    expect(
        answer.clone(),
        422,
        "at most 2 items after validation, not 3 (EXO_API__MAX_GRAPH_NODES)",
    );
    assert_eq!(answer.1["detail"][0]["loc"], json!(["body", "nodes"]));
    let (status, _) = stack.get(&format!("{ns}/graph/wide")).await?;
    assert_eq!(status, 404, "nothing stored");
    // Outputs per result (fan-out width): refused, the state untouched.
    let outputs: Vec<Value> = (0..4).map(|i| json!({"text": i.to_string()})).collect();
    let answer = stack
        .post(
            &format!("{ns}/state/{state}/executed"),
            &json!({"outputs": outputs}),
        )
        .await?;
    expect(answer, 422, "not 4 (EXO_API__MAX_OUTPUTS)");
    let id = exo_store::mongodb::bson::oid::ObjectId::parse_str(&state)?;
    let st = stack.store.state(id).await?.expect("state");
    assert_eq!(st.status, exo_types::status::StateStatus::Queued);
    let three: Vec<Value> = (0..3).map(|i| json!({"text": i.to_string()})).collect();
    let (status, body) = stack
        .post(
            &format!("{ns}/state/{state}/executed"),
            &json!({"outputs": three}),
        )
        .await?;
    assert_eq!(status, 200, "at the limit: {body}");
    // Store bytes.
    let answer = stack
        .post(
            &format!("{ns}/graph/g/trigger"),
            &json!({"store": {"key": "0123456789abcdef"}}),
        )
        .await?;
    expect(answer, 422, "the limit is 16 (EXO_API__MAX_STORE_BYTES)");
    let (status, _) = stack
        .post(
            &format!("{ns}/graph/g/trigger"),
            &json!({"store": {"k": "0123456789abcde"}}),
        )
        .await?;
    assert_eq!(status, 200, "16 bytes is the limit");
    // Body size.
    let big = json!({"store": {"k": "x".repeat(5000)}});
    let answer = stack.post(&format!("{ns}/graph/g/trigger"), &big).await?;
    expect(answer, 413, "EXO_API__MAX_BODY_BYTES");
    // Names that become subject tokens.
    let answer = stack
        .put(
            "/v0/namespace/bad.ns/graph/g",
            &json!({"secrets": {}, "nodes": [node("a")]}),
        )
        .await?;
    assert_eq!(answer.0, 400, "{}", answer.1);
    // Key requests are checked like every body.
    let answer = stack
        .post(
            "/v0/keys",
            &json!({"name": "", "namespaces": ["ok", "no.dots"]}),
        )
        .await?;
    expect(answer.clone(), 422, "1 to 128 characters");
    let locs: Vec<Value> = answer.1["detail"]
        .as_array()
        .map(|a| a.iter().map(|e| e["loc"].clone()).collect())
        .unwrap_or_default();
    assert!(locs.contains(&json!(["body", "namespaces", 1])), "{locs:?}");
    let answer = stack
        .post(
            "/v0/keys",
            &json!({"name": "x", "namespaces": ["a"], "scope": "root"}),
        )
        .await?;
    expect(answer, 422, "'admin' or 'runtime'");

    // Requests per second per key: a key of 2 per second gets 2, then 429.
    let (_, slow) = create_key(
        &stack,
        json!({"name": "slow", "namespaces": ["lim"], "rate_limit_per_sec": 2}),
    )
    .await?;
    let client = stack.http.clone();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    let mut detail = Value::Null;
    for _ in 0..4 {
        let r = client
            .get(format!("{}{ns}/graph/g", stack.api_url))
            .header("x-api-key", &slow)
            .send()
            .await?;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or("").to_string());
            detail = r.json().await?;
        }
    }
    assert_eq!(&statuses[..2], &[200, 200], "{statuses:?}");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(
        detail["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("at most 2 requests per second"),
        "{detail}"
    );
    // The configured key has no limit by default.
    for _ in 0..20 {
        let (status, _) = stack.get(&format!("{ns}/graph/g")).await?;
        assert_eq!(status, 200);
    }
    Ok(())
}

/// nats-server users for [`a_runtime_limited_to_its_namespace_s_subjects`]:
/// the services, and a runtime of `alpha` with exactly the permissions
/// docs/security.md lists for a runtime (its dispatch consumers named one
/// by one: a subject wildcard is a whole token, and `dsp-<ns>-<node>` is one).
fn permissions() -> String {
    let consumers: Vec<String> = ["AppendA", "FanOut", "Picky", "Join", "Requeuer"]
        .iter()
        .map(|n| exo_types::subjects::dispatch_consumer("alpha", n))
        .collect();
    let mut allow = vec![
        "exo.v1.alpha.result.>".to_string(),
        "exo.v1.alpha.secrets.get".to_string(),
        "$JS.API.INFO".to_string(),
        "$JS.API.STREAM.INFO.EXO_DISPATCH".to_string(),
    ];
    for c in &consumers {
        for api in [
            "CONSUMER.INFO",
            "CONSUMER.CREATE",
            "CONSUMER.DURABLE.CREATE",
            "CONSUMER.MSG.NEXT",
        ] {
            allow.push(format!("$JS.API.{api}.EXO_DISPATCH.{c}"));
        }
        allow.push(format!("$JS.API.CONSUMER.CREATE.EXO_DISPATCH.{c}.>"));
        allow.push(format!("$JS.ACK.EXO_DISPATCH.{c}.>"));
    }
    let quoted: Vec<String> = allow.iter().map(|s| format!("{s:?}")).collect();
    format!(
        r#"authorization {{
  users = [
    {{user: "exo", password: "svc-pw"}}
    {{user: "alpha-rt", password: "alpha-pw", permissions: {{
      publish: {{allow: [{}]}}
      subscribe: {{allow: ["_INBOX.>", "exo.v1.alpha.event.run.cancelled"]}}
    }}}}
  ]
}}
"#,
        quoted.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_limited_to_its_namespace_s_subjects() -> anyhow::Result<()> {
    let nats = exo_test_support::NatsServer::start_with(&permissions()).await?;
    let mongo = exo_test_support::MongoServer::start().await?;
    let servers = exo_test_support::Servers { nats, mongo };
    let mut stack = Stack::start_on(servers, &[]).await?;
    stack.extra_env = vec![
        ("EXO_NATS__USER".into(), "exo".into()),
        ("EXO_NATS__PASSWORD".into(), "svc-pw".into()),
    ];
    for s in exo_e2e::SERVICES {
        stack.spawn(s).await?;
    }
    // The runtime process, with the restricted user: it serves alpha.
    stack
        .spawn_runtime_process(
            "alpha",
            &[
                ("EXO_NATS__USER", "alpha-rt"),
                ("EXO_NATS__PASSWORD", "alpha-pw"),
            ],
        )
        .await?;
    let graph = json!({"secrets": {}, "nodes": [
        {"node_name": "AppendA", "identifier": "a", "namespace": "alpha",
         "inputs": {"text": "go"}, "next_nodes": ["b"]},
        {"node_name": "Picky", "identifier": "b", "namespace": "alpha",
         "inputs": {"text": "${{ a.outputs.text }}"}, "next_nodes": []}]});
    stack.upsert_valid_graph("alpha", "g", &graph).await?;
    let run = stack.trigger("alpha", "g", &json!({})).await?;
    let done = stack.wait_run(&run, Duration::from_secs(60)).await?;
    assert_eq!(
        done.status.as_deref(),
        Some("SUCCESS"),
        "the restricted runtime works"
    );

    // The same user, as any client: nothing outside alpha's runtime subjects.
    let client =
        async_nats::ConnectOptions::with_user_and_password("alpha-rt".into(), "alpha-pw".into())
            .request_timeout(Some(Duration::from_secs(2)))
            .connect(stack.servers.nats.url())
            .await?;
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));
    let body = json!({"state_id": "0123456789abcdef01234567", "attempt": 1, "outputs": []});
    for subject in [
        "exo.v1.beta.result.executed",
        "exo.v1.alpha.run.trigger",
        "exo.v1.alpha.state.created",
    ] {
        let acked = match js.publish(subject, body.to_string().into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        assert!(!acked, "alpha's runtime published on {subject}");
    }
    let other = exo_types::subjects::dispatch_consumer("beta", "AppendA");
    let stream = js.get_stream("EXO_DISPATCH").await?;
    let cfg = async_nats::jetstream::consumer::pull::Config {
        durable_name: Some(other.clone()),
        filter_subject: "exo.v1.beta.dispatch.AppendA".into(),
        ..Default::default()
    };
    assert!(
        stream.create_consumer(cfg).await.is_err(),
        "alpha's runtime created beta's dispatch consumer {other}"
    );
    // Its own results still go through.
    let ack = js
        .publish("exo.v1.alpha.result.executed", body.to_string().into())
        .await?
        .await;
    assert!(ack.is_ok(), "{ack:?}");
    // Without credentials, nothing at all.
    assert!(async_nats::connect(stack.servers.nats.url()).await.is_err());
    Ok(())
}

/// The fan-out limit holds for NATS runtimes too: `completion` ends a
/// state whose result is wider than `EXO_MAX_OUTPUTS` NEXT_CREATED_ERROR,
/// naming the limit, and creates none of its children; at the limit, the
/// fan-out goes ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_over_the_limit_fails_its_state_with_the_limit_named() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack
        .respawn_with("exo-completion", &[("EXO_MAX_OUTPUTS", "3")])
        .await?;
    let (stop, _rt) = stack
        .start_runtime(
            stack
                .runtime("wide", "rt")
                .node(exo_e2e::nodes::FanOut)
                .node(exo_e2e::nodes::Append::new("AppendA", "a")),
        )
        .await?;
    let graph = |count: &str| {
        json!({"secrets": {}, "nodes": [
            {"node_name": "FanOut", "identifier": "split", "namespace": "wide",
             "inputs": {"count": count}, "next_nodes": ["w"]},
            {"node_name": "AppendA", "identifier": "w", "namespace": "wide",
             "inputs": {"text": "${{ split.outputs.text }}"}, "next_nodes": []}]})
    };
    stack
        .upsert_valid_graph("wide", "over", &graph("4"))
        .await?;
    stack.upsert_valid_graph("wide", "at", &graph("3")).await?;
    let over = stack.trigger("wide", "over", &json!({})).await?;
    let at = stack.trigger("wide", "at", &json!({})).await?;
    let run = stack.wait_run(&over, Duration::from_secs(30)).await?;
    assert_eq!(run.status.as_deref(), Some("FAILED"));
    let states = stack.states(&over).await?;
    assert_eq!(states.len(), 1, "no child was created");
    assert_eq!(
        states[0].status,
        exo_types::status::StateStatus::NextCreatedError
    );
    let error = states[0].error.clone().unwrap_or_default();
    assert_eq!(
        error,
        "the result has 4 outputs; at most 3 per state (EXO_MAX_OUTPUTS)"
    );
    let run = stack.wait_run(&at, Duration::from_secs(30)).await?;
    assert_eq!(run.status.as_deref(), Some("SUCCESS"));
    assert_eq!(
        stack.states(&at).await?.len(),
        6,
        "3 fan-out states and 3 children"
    );
    stop.cancel();
    Ok(())
}
