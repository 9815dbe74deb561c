//! The HTTP API says what it does: the OpenAPI document served at
//! `/openapi.json` is valid OpenAPI 3.1, and a session that calls every
//! operation (successes and the common errors) gets only documented
//! status codes, with bodies that validate against the documented
//! schemas (response schemas forbid unknown fields, so a field added to a
//! handler and not to the document fails here). Every 2xx answer's request
//! body validates too, so the document is never stricter than the server.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use exo_e2e::schema::{check, validator};
use exo_e2e::{API_KEY, Stack};
use serde_json::{Value, json};

const NS: &str = "oapi";

/// An HTTP client that checks every exchange against the document.
struct Checked<'a> {
    stack: &'a Stack,
    doc: Value,
    /// (operationId, status) of every exchange.
    seen: Mutex<BTreeSet<(String, u16)>>,
}

impl<'a> Checked<'a> {
    async fn new(stack: &'a Stack) -> anyhow::Result<Self> {
        let doc: Value = stack
            .http
            .get(format!("{}/openapi.json", stack.api_url))
            .send()
            .await?
            .json()
            .await?;
        Ok(Self {
            stack,
            doc,
            seen: Mutex::default(),
        })
    }

    /// The documented (path template, operation) that `path` matches, the
    /// template with the most literal segments first.
    fn operation(&self, method: &str, path: &str) -> anyhow::Result<(&str, &Value)> {
        let path = path.split('?').next().unwrap_or_default();
        let segs: Vec<&str> = path.split('/').collect();
        let mut best: Option<(usize, &str, &Value)> = None;
        for (template, item) in self.doc["paths"].as_object().into_iter().flatten() {
            let t: Vec<&str> = template.split('/').collect();
            if t.len() != segs.len() {
                continue;
            }
            let matches = t
                .iter()
                .zip(&segs)
                .all(|(p, s)| p.starts_with('{') || p == s);
            let literal = t.iter().filter(|p| !p.starts_with('{')).count();
            if matches && best.is_none_or(|(l, ..)| literal > l) {
                best = Some((literal, template, item));
            }
        }
        let (_, template, item) =
            best.ok_or_else(|| anyhow::anyhow!("{method} {path}: no documented path"))?;
        let op = &item[method.to_lowercase()];
        anyhow::ensure!(op.is_object(), "{method} {template}: not documented");
        Ok((template, op))
    }

    /// Sends the request (with the API key unless `key` is false) and checks
    /// the exchange; returns status and body.
    async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        key: bool,
    ) -> anyhow::Result<(u16, Value)> {
        let (template, op) = self.operation(method, path)?;
        let mut req = self
            .stack
            .http
            .request(method.parse()?, format!("{}{path}", self.stack.api_url));
        if key {
            req = req.header("x-api-key", API_KEY);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let json_answer = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/json"));
        let text = resp.text().await?;
        let answer: Value = if json_answer {
            serde_json::from_str(&text)?
        } else {
            Value::String(text)
        };
        let what = format!("{method} {template} → {status}");
        let documented = &op["responses"][status.to_string()];
        anyhow::ensure!(
            documented.is_object(),
            "{what}: status not documented ({answer})"
        );
        let content = documented["content"]
            .as_object()
            .and_then(|c| c.iter().next())
            .ok_or_else(|| anyhow::anyhow!("{what}: no documented content"))?;
        anyhow::ensure!(
            json_answer == (content.0 == "application/json"),
            "{what}: answered {} but documents {}",
            if json_answer { "JSON" } else { "text" },
            content.0
        );
        check(
            &validator(&self.doc, &content.1["schema"])?,
            &answer,
            &format!("{what} response"),
        )?;
        if (200..300).contains(&status)
            && let Some(b) = body
        {
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            anyhow::ensure!(
                schema.is_object(),
                "{what}: a body was sent, none documented"
            );
            check(
                &validator(&self.doc, schema)?,
                b,
                &format!("{what} request"),
            )?;
        }
        let id = op["operationId"].as_str().unwrap_or(template).to_string();
        self.seen.lock().expect("lock").insert((id, status));
        Ok((status, answer))
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        self.call_with(method, path, body, true).await
    }

    /// Calls and requires `expected`.
    async fn expect(
        &self,
        expected: u16,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, answer) = self.call(method, path, body).await?;
        anyhow::ensure!(
            status == expected,
            "{method} {path}: {status} {answer}, expected {expected}"
        );
        Ok(answer)
    }

    /// Takes `n` states of `node` over HTTP (polling until they are there).
    async fn take(&self, node: &str, n: usize) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        while got.len() < n {
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {n} {node} states handed out",
                got.len()
            );
            let body = json!({"nodes": [node], "batch_size": n - got.len()});
            let v = self
                .expect(
                    200,
                    "POST",
                    &format!("/v0/namespace/{NS}/states/enqueue"),
                    Some(&body),
                )
                .await?;
            got.extend(v["states"].as_array().cloned().unwrap_or_default());
            if got.len() < n {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(got)
    }
}

fn id(state: &Value) -> String {
    state["state_id"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_as_the_openapi_document_says() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let api = Checked::new(&stack).await?;
    let ns = format!("/v0/namespace/{NS}");

    // Probes and the document's own checks.
    api.call_with("GET", "/health", None, false).await?;
    api.call_with("GET", "/livez", None, false).await?;
    api.call_with("GET", "/readyz", None, false).await?;
    let (s, _) = api.call_with("GET", "/v0/namespaces", None, false).await?;
    assert_eq!(s, 401);

    // Nodes.
    let schema = exo_runtime::string_object_schema("Text", &["text"]);
    let reg = json!({"runtime_name": "rt", "nodes": [
        {"name": "Echo", "inputs_schema": schema, "outputs_schema": schema, "secrets": ["token"]}]});
    api.expect(200, "PUT", &format!("{ns}/nodes/"), Some(&reg))
        .await?;
    api.expect(
        422,
        "PUT",
        &format!("{ns}/nodes/"),
        Some(&json!({"nodes": 3})),
    )
    .await?;
    let nodes = api
        .expect(200, "GET", &format!("{ns}/nodes/"), None)
        .await?;
    assert_eq!(nodes["count"], 1);
    let namespaces = api.expect(200, "GET", "/v0/namespaces", None).await?;
    assert!(
        namespaces["namespaces"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(NS)))
    );

    // Graphs: a root whose outputs fan out to `b`, then a unite.
    let node = |id: &str, inputs: Value, next: Value| json!({"node_name": "Echo", "namespace": NS, "identifier": id, "inputs": inputs, "next_nodes": next});
    let graph = json!({
        "secrets": {"token": "t0k"},
        "retry_policy": {"max_retries": 0, "strategy": "EXPONENTIAL_FULL_JITTER", "backoff_factor": 100, "exponent": 2, "max_delay": 1000},
        "store_config": {"required_keys": ["who"], "default_values": {"greeting": "hi"}},
        "triggers": [{"type": "CRON", "value": {"expression": "0 0 1 1 *", "timezone": "UTC"}}],
        "nodes": [
            node("a", json!({"text": "${{ store.who }}"}), json!(["b"])),
            node("b", json!({"text": "${{ a.outputs.text }}"}), json!(["c"])),
            {"node_name": "Echo", "namespace": NS, "identifier": "c", "inputs": {"text": "${{ a.outputs.text }}"},
             "next_nodes": null, "unites": {"identifier": "a", "strategy": "ALL_DONE"}},
        ]
    });
    api.expect(201, "PUT", &format!("{ns}/graph/g"), Some(&graph))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let g = api
            .expect(200, "GET", &format!("{ns}/graph/g"), None)
            .await?;
        if g["validation_status"] == "VALID" {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "never VALID: {g}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api.expect(404, "GET", &format!("{ns}/graph/nope"), None)
        .await?;
    let triggers = api
        .expect(200, "GET", &format!("{ns}/graph/g/triggers"), None)
        .await?;
    assert_eq!(
        triggers["triggers"][0]["next_fire_times"]
            .as_array()
            .map(Vec::len),
        Some(5)
    );
    api.expect(404, "GET", &format!("{ns}/graph/nope/triggers"), None)
        .await?;
    let deliveries = api
        .expect(
            200,
            "GET",
            &format!("{ns}/graph/g/webhooks/deliveries"),
            None,
        )
        .await?;
    assert_eq!(deliveries["count"], 0);
    api.expect(
        400,
        "GET",
        &format!("{ns}/graph/g/webhooks/deliveries?limit=0"),
        None,
    )
    .await?;
    api.expect(
        404,
        "GET",
        &format!("{ns}/graph/nope/webhooks/deliveries"),
        None,
    )
    .await?;
    let listed = api
        .expect(200, "GET", &format!("{ns}/graphs/"), None)
        .await?;
    assert_eq!(listed["count"], 1);
    let cyclic = json!({"secrets": {}, "nodes": [
        node("x", json!({"text": "1"}), json!(["y"])), node("y", json!({"text": "1"}), json!(["x"]))]});
    api.expect(400, "PUT", &format!("{ns}/graph/bad"), Some(&cyclic))
        .await?;
    api.expect(
        422,
        "PUT",
        &format!("{ns}/graph/bad"),
        Some(&json!({"nodes": []})),
    )
    .await?;

    // Runs: trigger, errors of trigger.
    let trig = format!("{ns}/graph/g/trigger");
    let run = api
        .expect(200, "POST", &trig, Some(&json!({"store": {"who": "ann"}})))
        .await?;
    let run_id = run["run_id"].as_str().unwrap_or_default().to_string();
    api.expect(400, "POST", &trig, Some(&json!({}))).await?; // missing store key
    api.expect(
        404,
        "POST",
        &format!("{ns}/graph/nope/trigger"),
        Some(&json!({})),
    )
    .await?;
    api.expect(422, "POST", &trig, Some(&json!({"start_delay": "soon"})))
        .await?;

    // The runtime side: take the root, read its secrets, fan out to three.
    let root = api.take("Echo", 1).await?;
    let rid = id(&root[0]);
    let secrets = api
        .expect(200, "GET", &format!("{ns}/state/{rid}/secrets"), None)
        .await?;
    assert_eq!(secrets["secrets"]["token"], "t0k");
    api.expect(
        422,
        "POST",
        &format!("{ns}/state/{rid}/executed"),
        Some(&json!({})),
    )
    .await?;
    let outs = json!({"outputs": [{"text": "1"}, {"text": "2"}, {"text": "3"}]});
    api.expect(
        200,
        "POST",
        &format!("{ns}/state/{rid}/executed"),
        Some(&outs),
    )
    .await?;
    api.expect(
        400,
        "POST",
        &format!("{ns}/state/{rid}/executed"),
        Some(&outs),
    )
    .await?;
    api.expect(
        404,
        "POST",
        &format!("{ns}/state/{}/executed", "0".repeat(24)),
        Some(&outs),
    )
    .await?;
    let b = api.take("Echo", 3).await?;
    let one = json!({"outputs": [{"text": "done"}]});
    api.expect(
        200,
        "POST",
        &format!("{ns}/state/{}/executed", id(&b[0])),
        Some(&one),
    )
    .await?;
    let err = api
        .expect(
            200,
            "POST",
            &format!("{ns}/state/{}/errored", id(&b[1])),
            Some(&json!({"error": "boom"})),
        )
        .await?;
    assert_eq!(err["retry_created"], false);
    api.expect(
        200,
        "POST",
        &format!("{ns}/state/{}/prune", id(&b[2])),
        Some(&json!({"data": {"why": "enough"}})),
    )
    .await?;
    // The root's three outputs made three `a` states, each with its own
    // `b` and unite `c` (ALL_DONE: each fires once its `b` ended). One
    // unite asks to run again later; all then finish.
    let c = api.take("Echo", 3).await?;
    api.expect(
        200,
        "POST",
        &format!("{ns}/state/{}/re-enqueue-after", id(&c[0])),
        Some(&json!({"enqueue_after": 20})),
    )
    .await?;
    let again = api.take("Echo", 1).await?;
    assert_eq!(id(&again[0]), id(&c[0]));
    for st in [&c[1], &c[2], &again[0]] {
        api.expect(
            200,
            "POST",
            &format!("{ns}/state/{}/executed", id(st)),
            Some(&json!({"outputs": []})),
        )
        .await?;
    }
    stack.wait_run(&run_id, Duration::from_secs(30)).await?;

    // Reading the run.
    let details = api
        .expect(200, "GET", &format!("{ns}/run/{run_id}"), None)
        .await?;
    assert_eq!(details["status"], "FAILED", "{details}");
    assert_eq!(details["failures"][0]["error"], "boom", "{details}");
    api.expect(404, "GET", &format!("{ns}/run/nope"), None)
        .await?;
    let runs = api
        .expect(200, "GET", &format!("{ns}/runs/1/10"), None)
        .await?;
    assert_eq!(runs["total"], 1);
    api.expect(422, "GET", &format!("{ns}/runs/0/10"), None)
        .await?;
    let graph = api
        .expect(200, "GET", &format!("{ns}/states/run/{run_id}/graph"), None)
        .await?;
    assert_eq!(graph["node_count"], 9, "{graph}");
    // The same states summed per graph node, then one node's a page at a time.
    let per_node = api
        .expect(200, "GET", &format!("{ns}/run/{run_id}/nodes"), None)
        .await?;
    let mut expected: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for n in graph["nodes"].as_array().into_iter().flatten() {
        let key = (
            n["identifier"].as_str().unwrap_or_default().to_string(),
            match n["status"].as_str().unwrap_or_default() {
                "CREATED" | "QUEUED" | "EXECUTED" => "PENDING".to_string(),
                other => other.to_string(),
            },
        );
        *expected.entry(key).or_default() += 1;
    }
    let mut summed = std::collections::BTreeMap::new();
    for n in per_node["nodes"].as_array().into_iter().flatten() {
        for (status, count) in n["counts"].as_object().into_iter().flatten() {
            let key = (
                n["identifier"].as_str().unwrap_or_default().to_string(),
                status.clone(),
            );
            summed.insert(key, count.as_u64().unwrap_or_default());
        }
    }
    assert_eq!(summed, expected, "{per_node}");
    assert_eq!(per_node["status"], "FAILED", "{per_node}");
    // A run without per-node counters (an Exosphere run, an earlier
    // version's) is summed from its states: the same answer but the times.
    let runs = stack.store.runs_raw();
    let filter = exo_store::mongodb::bson::doc! {"run_id": &run_id};
    let kept = runs
        .find_one(filter.clone())
        .await?
        .and_then(|r| r.get_document("nodes").ok().cloned())
        .ok_or_else(|| anyhow::anyhow!("run {run_id} has no per-node counters"))?;
    runs.update_one(
        filter.clone(),
        exo_store::mongodb::bson::doc! {"$unset": {"nodes": ""}},
    )
    .await?;
    let summed_up = api
        .expect(200, "GET", &format!("{ns}/run/{run_id}/nodes"), None)
        .await?;
    runs.update_one(
        filter,
        exo_store::mongodb::bson::doc! {"$set": {"nodes": kept}},
    )
    .await?;
    let timeless = |v: &Value| -> Vec<Value> {
        let mut nodes: Vec<Value> = v["nodes"].as_array().cloned().unwrap_or_default();
        for n in &mut nodes {
            if let Some(o) = n.as_object_mut() {
                o.remove("first_created_at");
                o.remove("last_updated_at");
            }
        }
        nodes.sort_by_key(|n| n["identifier"].to_string());
        nodes
    };
    assert_eq!(
        timeless(&summed_up),
        timeless(&per_node),
        "{summed_up} vs {per_node}"
    );
    let bs = format!("{ns}/run/{run_id}/nodes/b/states");
    let first = api
        .expect(200, "GET", &format!("{bs}?limit=2"), None)
        .await?;
    let rest = format!(
        "{bs}?limit=2&after={}",
        first["next_after"].as_str().unwrap_or_default()
    );
    let second = api.expect(200, "GET", &rest, None).await?;
    let paged: Vec<&Value> = [&first, &second]
        .iter()
        .flat_map(|p| p["states"].as_array().into_iter().flatten())
        .collect();
    let b_total = expected
        .iter()
        .filter(|((i, _), _)| i == "b")
        .map(|(_, n)| n)
        .sum::<u64>();
    assert_eq!(paged.len() as u64, b_total, "{first} {second}");
    assert!(second["next_after"].is_null(), "{second}");
    let errored = api
        .expect(200, "GET", &format!("{bs}?status=ERRORED"), None)
        .await?;
    assert_eq!(errored["states"][0]["error"], "boom", "{errored}");
    api.expect(400, "GET", &format!("{bs}?limit=0"), None)
        .await?;
    api.expect(404, "GET", &format!("{ns}/run/nope/nodes"), None)
        .await?;
    api.expect(404, "GET", &format!("{ns}/run/nope/nodes/b/states"), None)
        .await?;
    let bid = id(&b[0]);
    let one_state = api
        .expect(
            200,
            "GET",
            &format!("{ns}/graph/g/run/{run_id}/node/{bid}"),
            None,
        )
        .await?;
    assert_eq!(one_state["outputs"]["text"], "done");
    api.expect(
        400,
        "GET",
        &format!("{ns}/graph/g/run/{run_id}/node/xyz"),
        None,
    )
    .await?;
    api.expect(
        404,
        "GET",
        &format!("{ns}/graph/g/run/{run_id}/node/{}", "0".repeat(24)),
        None,
    )
    .await?;

    // A manual retry of the failed state, once per fanout_id.
    let retry = json!({"fanout_id": "f-1"});
    let failed = id(&b[1]);
    api.expect(
        200,
        "POST",
        &format!("{ns}/state/{failed}/manual-retry"),
        Some(&retry),
    )
    .await?;
    api.expect(
        409,
        "POST",
        &format!("{ns}/state/{failed}/manual-retry"),
        Some(&retry),
    )
    .await?;

    // Cancelling a delayed run, then again once it ended.
    let late = api
        .expect(
            200,
            "POST",
            &trig,
            Some(&json!({"store": {"who": "bo"}, "start_delay": 600_000})),
        )
        .await?;
    let late = late["run_id"].as_str().unwrap_or_default().to_string();
    let cancel = format!("{ns}/run/{late}/cancel");
    api.expect(202, "POST", &cancel, None).await?;
    stack.wait_run(&late, Duration::from_secs(30)).await?;
    api.expect(409, "POST", &cancel, None).await?;
    api.expect(404, "POST", &format!("{ns}/run/nope/cancel"), None)
        .await?;
    // Its lifecycle as server-sent events (the stream ends with the run).
    let events = api
        .expect(200, "GET", &format!("{ns}/run/{late}/events"), None)
        .await?;
    let text = events.as_str().unwrap_or_default();
    assert!(
        text.contains("event: exo.run.created") && text.contains("event: exo.run.cancelled"),
        "{text}"
    );
    api.expect(404, "GET", &format!("{ns}/run/nope/events"), None)
        .await?;

    // Scoped API keys: created (shown once), listed, revoked; a refused
    // body and an unknown key answer as documented.
    let created = api
        .expect(
            201,
            "POST",
            "/v0/keys",
            Some(&json!({"name": "ci", "namespaces": ["elsewhere"], "scope": "runtime", "rate_limit_per_sec": 50})),
        )
        .await?;
    let key_id = created["id"].as_str().unwrap_or_default().to_string();
    api.expect(422, "POST", "/v0/keys", Some(&json!({"name": "x"})))
        .await?;
    let listed = api.expect(200, "GET", "/v0/keys", None).await?;
    assert_eq!(listed["count"], 1, "{listed}");
    api.expect(200, "DELETE", &format!("/v0/keys/{key_id}"), None)
        .await?;
    api.expect(404, "DELETE", "/v0/keys/0123456789ab", None)
        .await?;

    // Every documented operation was called and succeeded at least once.
    let seen = api.seen.lock().expect("lock").clone();
    let mut missing = Vec::new();
    for item in api.doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, i)| i)
    {
        for op in item.as_object().into_iter().flatten().map(|(_, o)| o) {
            let op_id = op["operationId"].as_str().unwrap_or_default();
            if !seen
                .iter()
                .any(|(i, s)| i == op_id && (200..300).contains(s))
            {
                missing.push(op_id.to_string());
            }
        }
    }
    assert!(missing.is_empty(), "never answered 2xx: {missing:?}");
    Ok(())
}

/// The served document is valid OpenAPI 3.1 (the official schema,
/// vendored under `tests/schemas/`), every schema in it is a valid JSON
/// Schema, and docs/openapi.json is a copy of it.
#[test]
fn the_openapi_document_is_valid_openapi_3_1() -> anyhow::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/openapi-3.1.json");
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let v = jsonschema::validator_for(&meta).map_err(|e| anyhow::anyhow!("{e}"))?;
    let doc = served_document()?;
    check(&v, &doc, "the OpenAPI document")?;
    for (name, schema) in doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        validator(&doc, schema).map_err(|e| anyhow::anyhow!("schema {name}: {e}"))?;
    }
    let mut broken = doc.clone();
    broken["paths"]["/health"]["get"]["responses"] = json!([]);
    assert!(
        !v.is_valid(&broken),
        "the meta-schema must catch a broken document"
    );

    let copy = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    let copy: Value = serde_json::from_str(&std::fs::read_to_string(copy)?)?;
    assert!(
        copy == doc,
        "docs/openapi.json is stale: regenerate it with `target/debug/exo-api openapi > docs/openapi.json`"
    );
    Ok(())
}

/// What `exo-api openapi` prints (the document the api serves).
fn served_document() -> anyhow::Result<Value> {
    let bin = exo_test_support::service_bin("exo-api")?;
    let out = std::process::Command::new(bin).arg("openapi").output()?;
    anyhow::ensure!(out.status.success(), "exo-api openapi: {out:?}");
    Ok(serde_json::from_slice(&out.stdout)?)
}
