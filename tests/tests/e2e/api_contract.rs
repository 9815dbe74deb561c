//! Contract tests of the `/v0` API, endpoint by endpoint: status codes,
//! bodies and exact `detail` texts (spec §0, §2), bad input (malformed ids,
//! wrong namespace, invalid JSON, wrong types, oversized payloads), and the
//! calls the Exosphere dashboard makes (§2.19, §16.3) with the shapes it
//! reads. Runtime endpoints are driven the way an HTTP runtime drives them:
//! `PUT /nodes/`, then `POST /states/enqueue` to claim states.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use exo_e2e::{API_KEY, Stack};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// A client that does not follow redirects and can send anything.
struct Api {
    base: String,
    http: reqwest::Client,
    /// The stack's client, for the steps that are not under test here.
    client: exo_test_support::ApiClient,
}

/// One answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn detail(&self) -> &str {
        self.body["detail"].as_str().unwrap_or_default()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What to send as the body.
enum Body<'a> {
    None,
    Json(&'a Value),
    Raw(Vec<u8>),
}

impl Api {
    fn new(stack: &Stack) -> anyhow::Result<Self> {
        Ok(Self {
            base: stack.api_url.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            client: stack.api.clone(),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body<'_>,
        key: Option<&str>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            rb = rb.header("x-api-key", k);
        }
        for (h, v) in headers {
            rb = rb.header(*h, *v);
        }
        rb = match body {
            Body::None => rb,
            Body::Json(v) => rb.json(v),
            Body::Raw(b) => rb.header("content-type", "application/json").body(b),
        };
        let r = rb.send().await?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.send(Method::GET, path, Body::None, Some(API_KEY), &[])
            .await
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Answer> {
        self.send(Method::POST, path, Body::Json(body), Some(API_KEY), &[])
            .await
    }

    async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Answer> {
        self.send(Method::PUT, path, Body::Json(body), Some(API_KEY), &[])
            .await
    }

    async fn raw(&self, method: Method, path: &str, bytes: &[u8]) -> anyhow::Result<Answer> {
        self.send(method, path, Body::Raw(bytes.to_vec()), Some(API_KEY), &[])
            .await
    }
}

/// Asserts status and exact `{"detail": text}` body.
fn expect_detail(a: &Answer, status: u16, detail: &str) {
    assert_eq!(
        (a.status, &a.body),
        (status, &json!({ "detail": detail })),
        "{a:?}"
    );
}

/// Asserts a 422 whose first item has this type and location.
fn expect_422(a: &Answer, ty: &str, loc: Value) {
    assert_eq!(a.status, 422, "{a:?}");
    let item = &a.body["detail"][0];
    assert_eq!(item["type"], ty, "{a:?}");
    assert_eq!(item["loc"], loc, "{a:?}");
    assert!(item["msg"].is_string(), "{a:?}");
    assert!(item.get("input").is_some(), "{a:?}");
}

/// The keys of a JSON object.
fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

fn set(items: &[&'static str]) -> BTreeSet<&'static str> {
    items.iter().copied().collect()
}

/// A naive ISO datetime as upstream renders it: no zone, 6 fractional
/// digits or none.
fn is_naive_iso(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let (main, frac) = match s.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (s, None),
    };
    main.len() == 19
        && main.as_bytes()[10] == b'T'
        && frac.is_none_or(|f| f.len() == 6 && f.bytes().all(|b| b.is_ascii_digit()))
}

/// A JSON schema of string fields, as pydantic writes it.
fn schema(title: &str, fields: &[&str]) -> Value {
    let props: serde_json::Map<String, Value> = fields
        .iter()
        .map(|f| (f.to_string(), json!({"title": f, "type": "string"})))
        .collect();
    json!({"properties": props, "required": fields, "title": title, "type": "object"})
}

/// Registers HTTP-runtime nodes: `Echo` (text → text) and `Vault`
/// (text → text, secret `token`).
async fn register(api: &Api, ns: &str) -> anyhow::Result<()> {
    let body = json!({"runtime_name": "contract", "runtime_namespace": ns, "nodes": [
        {"name": "Echo", "namespace": ns, "inputs_schema": schema("Inputs", &["text"]),
         "outputs_schema": schema("Outputs", &["text"]), "secrets": []},
        {"name": "Vault", "namespace": ns, "inputs_schema": schema("Inputs", &["text"]),
         "outputs_schema": schema("Outputs", &["text"]), "secrets": ["token"]},
    ]});
    let a = api
        .put(&format!("/v0/namespace/{ns}/nodes/"), &body)
        .await?;
    anyhow::ensure!(a.status == 200, "register: {a:?}");
    Ok(())
}

/// `echo → vault` with a store key and a secret.
fn chain_graph(ns: &str) -> Value {
    json!({
        "secrets": {"token": "t0ps3cret"},
        "store_config": {"required_keys": ["who"], "default_values": {"tail": "!"}},
        "retry_policy": {"max_retries": 1, "strategy": "FIXED", "backoff_factor": 50},
        "nodes": [
            {"node_name": "Echo", "namespace": ns, "identifier": "echo",
             "inputs": {"text": "hi ${{ store.who }}"}, "next_nodes": ["vault"]},
            {"node_name": "Vault", "namespace": ns, "identifier": "vault",
             "inputs": {"text": "${{ echo.outputs.text }}${{ store.tail }}"}},
        ]
    })
}

/// Upserts a graph, waits until it is VALID, and answers it as stored.
async fn upsert_valid(api: &Api, ns: &str, graph: &str, body: &Value) -> anyhow::Result<Value> {
    api.client.upsert_valid_graph(ns, graph, body).await?;
    let (_, g) = api
        .client
        .get(&format!("/v0/namespace/{ns}/graph/{graph}"))
        .await?;
    Ok(g)
}

async fn trigger(api: &Api, ns: &str, graph: &str, body: &Value) -> anyhow::Result<String> {
    api.client.trigger(ns, graph, body).await
}

/// Claims one state of `node` over HTTP, waiting for the scheduler.
async fn claim(api: &Api, ns: &str, node: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = api
            .post(
                &format!("/v0/namespace/{ns}/states/enqueue"),
                &json!({"nodes": [node], "batch_size": 1}),
            )
            .await?;
        anyhow::ensure!(a.status == 200, "enqueue: {a:?}");
        if a.body["count"] == 1 {
            return Ok(a.body["states"][0].clone());
        }
        if Instant::now() > deadline {
            bail!("no {node} state was handed out in {ns}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for a run to reach SUCCESS or FAILED (our `GET /run/{id}`).
async fn wait_run(api: &Api, ns: &str, run_id: &str) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = api.get(&format!("/v0/namespace/{ns}/run/{run_id}")).await?;
        if a.status == 200 && matches!(a.body["status"].as_str(), Some("SUCCESS" | "FAILED")) {
            return Ok(a.body);
        }
        if Instant::now() > deadline {
            bail!("run {run_id} did not finish: {a:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the state `id` has `status` (read through node details).
async fn wait_state(
    api: &Api,
    ns: &str,
    graph: &str,
    run_id: &str,
    id: &str,
    status: &str,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = api
            .get(&format!(
                "/v0/namespace/{ns}/graph/{graph}/run/{run_id}/node/{id}"
            ))
            .await?;
        if a.status == 200 && a.body["status"] == status {
            return Ok(a.body);
        }
        if Instant::now() > deadline {
            bail!("state {id} never became {status}: {a:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The API's request body limit (`exo_api::BODY_LIMIT`).
const BODY_LIMIT: usize = 32 * 1024 * 1024;

const MALFORMED_ID: &str = "not-an-object-id";
const UNKNOWN_ID: &str = "0123456789abcdef01234567";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_cutting_http_behaviour() -> anyhow::Result<()> {
    let stack = Stack::start_with(&["exo-api"]).await?;
    let api = Api::new(&stack)?;

    check_health(&api).await?;
    check_api_keys(&api).await?;
    check_request_ids(&api).await?;
    check_unknown_paths(&api).await?;
    check_redirects(&api).await?;
    check_cors(&api).await?;
    check_bodies(&api).await?;
    Ok(())
}

/// Health: no key needed.
async fn check_health(api: &Api) -> anyhow::Result<()> {
    let a = api
        .send(Method::GET, "/health", Body::None, None, &[])
        .await?;
    assert_eq!((a.status, &a.body), (200, &json!({"message": "OK"})));
    Ok(())
}

/// Every /v0 path needs the key; a bad key beats a bad body.
async fn check_api_keys(api: &Api) -> anyhow::Result<()> {
    for key in [None, Some("wrong"), Some("")] {
        for (method, path) in [
            (Method::GET, "/v0/namespaces"),
            (Method::GET, "/v0/namespace/ns/nodes/"),
            (Method::PUT, "/v0/namespace/ns/graph/g"),
            (Method::POST, "/v0/namespace/ns/states/enqueue"),
            (Method::GET, "/v0/namespace/ns/state/x/secrets"),
        ] {
            let a = api
                .send(method, path, Body::Raw(b"{not json".to_vec()), key, &[])
                .await?;
            expect_detail(&a, 401, "Invalid API key");
        }
    }
    // Header names are case-insensitive.
    let a = api
        .send(
            Method::GET,
            "/v0/namespaces",
            Body::None,
            None,
            &[("X-API-Key", API_KEY)],
        )
        .await?;
    assert_eq!(a.status, 200);
    Ok(())
}

/// Request ids: a UUID is echoed, anything else replaced by a UUIDv4,
/// on every answer (401 and 404 included).
async fn check_request_ids(api: &Api) -> anyhow::Result<()> {
    let rid = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
    let a = api
        .send(
            Method::GET,
            "/v0/namespaces",
            Body::None,
            None,
            &[("x-exosphere-request-id", rid)],
        )
        .await?;
    assert_eq!(a.status, 401);
    assert_eq!(a.header("x-exosphere-request-id"), Some(rid));
    for bad in ["nope", ""] {
        let a = api
            .send(
                Method::GET,
                "/nowhere",
                Body::None,
                Some(API_KEY),
                &[("x-exosphere-request-id", bad)],
            )
            .await?;
        let id = a.header("x-exosphere-request-id").unwrap_or_default();
        assert_eq!(uuid::Uuid::parse_str(id)?.get_version_num(), 4, "{id}");
    }
    Ok(())
}

/// Unknown paths and methods; the routes the dashboard still names but
/// upstream removed.
async fn check_unknown_paths(api: &Api) -> anyhow::Result<()> {
    expect_detail(&api.get("/v0/nowhere").await?, 404, "Not Found");
    for path in [
        "/v0/namespace/ns/graph/g/states/create",
        "/v0/namespace/ns/states/0123456789abcdef01234567/executed",
    ] {
        expect_detail(&api.post(path, &json!({})).await?, 404, "Not Found");
    }
    let a = api
        .send(
            Method::DELETE,
            "/v0/namespace/ns/graph/g",
            Body::None,
            Some(API_KEY),
            &[],
        )
        .await?;
    expect_detail(&a, 405, "Method Not Allowed");
    Ok(())
}

/// Trailing slashes: 307 to the canonical path, query kept.
async fn check_redirects(api: &Api) -> anyhow::Result<()> {
    let a = api.get("/v0/namespace/ns/nodes").await?;
    assert_eq!(a.status, 307);
    assert_eq!(a.header("location"), Some("/v0/namespace/ns/nodes/"));
    let a = api.get("/v0/namespace/ns/graphs?x=1").await?;
    assert_eq!(a.status, 307);
    assert_eq!(a.header("location"), Some("/v0/namespace/ns/graphs/?x=1"));
    let a = api.get("/v0/namespaces/").await?;
    assert_eq!(a.status, 307);
    assert_eq!(a.header("location"), Some("/v0/namespaces"));
    // Redirects come before the key check, as in Starlette.
    let a = api
        .send(
            Method::GET,
            "/v0/namespace/ns/graphs",
            Body::None,
            None,
            &[],
        )
        .await?;
    assert_eq!(
        (a.status, a.header("location")),
        (307, Some("/v0/namespace/ns/graphs/"))
    );
    Ok(())
}

/// CORS: listed origins get credentials and the exposed request id.
async fn check_cors(api: &Api) -> anyhow::Result<()> {
    let a = api
        .send(
            Method::OPTIONS,
            "/v0/namespace/ns/graph/g",
            Body::None,
            None,
            &[
                ("origin", "http://localhost:3000"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "x-api-key,content-type"),
            ],
        )
        .await?;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(a.header("access-control-allow-credentials"), Some("true"));
    let methods = a
        .header("access-control-allow-methods")
        .unwrap_or_default()
        .to_ascii_uppercase();
    for m in ["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        assert!(methods.contains(m), "{methods}");
    }
    let a = api
        .send(
            Method::GET,
            "/v0/namespaces",
            Body::None,
            Some(API_KEY),
            &[("origin", "http://127.0.0.1:3001")],
        )
        .await?;
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("http://127.0.0.1:3001")
    );
    assert!(
        a.header("access-control-expose-headers")
            .unwrap_or_default()
            .to_ascii_lowercase()
            .contains("x-exosphere-request-id")
    );
    let a = api
        .send(
            Method::GET,
            "/v0/namespaces",
            Body::None,
            Some(API_KEY),
            &[("origin", "http://evil.example")],
        )
        .await?;
    assert_eq!(a.header("access-control-allow-origin"), None);
    Ok(())
}

/// Bodies: empty, invalid JSON, not an object, too large.
async fn check_bodies(api: &Api) -> anyhow::Result<()> {
    let enqueue = "/v0/namespace/ns/states/enqueue";
    let a = api.raw(Method::POST, enqueue, b"").await?;
    assert_eq!(
        a.body,
        json!({"detail": [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": null}]})
    );
    let a = api.raw(Method::POST, enqueue, b"{\"nodes\": [}").await?;
    expect_422(&a, "json_invalid", json!(["body", 11]));
    assert_eq!(a.body["detail"][0]["msg"], "JSON decode error");
    let a = api.raw(Method::POST, enqueue, b"[1, 2]").await?;
    expect_422(&a, "model_attributes_type", json!(["body"]));
    // One byte over the limit: the API reads the whole body before refusing
    // it, so the connection closes cleanly (a larger body may be cut short
    // by a reset, which some attempts then retry).
    let sized = |len: usize| {
        let frame = "{\"nodes\": [\"\"], \"batch_size\": 1}";
        frame.replacen("[\"", &format!("[\"{}", "x".repeat(len - frame.len())), 1)
    };
    let big = sized(BODY_LIMIT + 1);
    let mut answer = None;
    for _ in 0..3 {
        match api.raw(Method::POST, enqueue, big.as_bytes()).await {
            Ok(a) => {
                answer = Some(a);
                break;
            }
            Err(e) => tracing::warn!(error = %e, "The oversized request was cut short; retrying."),
        }
    }
    let a = answer.context("an answer to the oversized request")?;
    expect_detail(
        &a,
        413,
        "Request body is too large (limit 32 MiB, EXO_API__MAX_BODY_BYTES)",
    );
    // Exactly at the limit is read (the node name is then skipped).
    let a = api
        .raw(Method::POST, enqueue, sized(BODY_LIMIT).as_bytes())
        .await?;
    assert_eq!((a.status, &a.body["count"]), (200, &json!(0)), "{a:?}");
    // The API still serves after the large body.
    assert_eq!(
        api.send(Method::GET, "/health", Body::None, None, &[])
            .await?
            .status,
        200
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_node_and_trigger_endpoints() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let api = Api::new(&stack)?;
    let ns = "contract";

    check_put_nodes(&api, ns).await?;
    check_list_nodes(&api, ns).await?;
    let stored = check_put_graph(&api, ns).await?;
    check_get_graph(&api, ns, &stored).await?;
    check_list_graphs(&api, ns).await?;
    check_trigger(&api, ns).await?;
    Ok(())
}

/// `PUT /nodes/`.
async fn check_put_nodes(api: &Api, ns: &str) -> anyhow::Result<()> {
    let path = format!("/v0/namespace/{ns}/nodes/");
    let a = api.put(&path, &json!({"nodes": []})).await?;
    assert_eq!(
        a.body,
        json!({"detail": [{"type": "missing", "loc": ["body", "runtime_name"],
                            "msg": "Field required", "input": {"nodes": []}}]})
    );
    let a = api
        .put(
            &path,
            &json!({"runtime_name": "r", "nodes": [{"name": "A", "inputs_schema": {}, "secrets": "x"}]}),
        )
        .await?;
    assert_eq!(a.status, 422);
    let locs: Vec<&Value> = a.body["detail"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| &i["loc"])
        .collect();
    assert_eq!(
        locs,
        [
            &json!(["body", "nodes", 0, "outputs_schema"]),
            &json!(["body", "nodes", 0, "secrets"])
        ]
    );
    expect_422(
        &api.put(&path, &json!({"runtime_name": 7, "nodes": {}}))
            .await?,
        "string_type",
        json!(["body", "runtime_name"]),
    );
    let bad_name = api
        .put(
            &path,
            &json!({"runtime_name": "r", "nodes": [{"name": "a.b", "inputs_schema": {},
                    "outputs_schema": {}, "secrets": []}]}),
        )
        .await?;
    expect_detail(
        &bad_name,
        400,
        "node name 'a.b' is invalid: only letters, digits, '_' and '-' are allowed (1 to 64 characters)",
    );
    let empty = api
        .put(&path, &json!({"runtime_name": "r", "nodes": []}))
        .await?;
    assert_eq!(
        (empty.status, &empty.body),
        (200, &json!({"runtime_name": "r", "registered_nodes": []}))
    );
    register(api, ns).await?;
    // The answer echoes the nodes (extra keys dropped).
    let a = api
        .put(
            &path,
            &json!({"runtime_name": "contract", "runtime_namespace": ns, "nodes": [
                {"name": "Echo", "namespace": ns, "inputs_schema": schema("Inputs", &["text"]),
                 "outputs_schema": schema("Outputs", &["text"]), "secrets": [], "extra": 1}]}),
        )
        .await?;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body,
        json!({"runtime_name": "contract", "registered_nodes": [
            {"name": "Echo", "inputs_schema": schema("Inputs", &["text"]),
             "outputs_schema": schema("Outputs", &["text"]), "secrets": []}]})
    );
    Ok(())
}

/// `GET /nodes/, /v0/namespaces`.
async fn check_list_nodes(api: &Api, ns: &str) -> anyhow::Result<()> {
    let path = format!("/v0/namespace/{ns}/nodes/");
    let a = api.get(&path).await?;
    assert_eq!(a.status, 200);
    assert_eq!(
        keys(&a.body),
        set(&["namespace", "count", "nodes"]),
        "{a:?}"
    );
    assert_eq!(a.body["count"], 2);
    for n in a.body["nodes"].as_array().into_iter().flatten() {
        assert_eq!(
            keys(n),
            set(&[
                "_id",
                "created_at",
                "updated_at",
                "name",
                "namespace",
                "runtime_name",
                "runtime_namespace",
                "inputs_schema",
                "outputs_schema",
                "secrets"
            ])
        );
        assert!(is_naive_iso(&n["created_at"]), "{n}");
        assert_eq!(n["runtime_namespace"], ns);
    }
    let other = api.get("/v0/namespace/elsewhere/nodes/").await?;
    assert_eq!(
        other.body,
        json!({"namespace": "elsewhere", "count": 0, "nodes": []})
    );
    register(api, "aaa-first").await?;
    let a = api.get("/v0/namespaces").await?;
    assert_eq!(
        a.body,
        json!({"namespaces": ["aaa-first", ns], "count": 2}),
        "sorted, only namespaces with registered nodes"
    );
    Ok(())
}

/// `PUT /graph/{g}`.
/// Returns the answer to the successful upsert.
async fn check_put_graph(api: &Api, ns: &str) -> anyhow::Result<Value> {
    let gpath = format!("/v0/namespace/{ns}/graph/chain");
    let a = api.put(&gpath, &json!({"nodes": []})).await?;
    assert_eq!(
        a.body,
        json!({"detail": [{"type": "missing", "loc": ["body", "secrets"], "msg": "Field required",
                            "input": {"nodes": []}}]})
    );
    expect_422(
        &api.put(&gpath, &json!({"secrets": {}, "nodes": {}}))
            .await?,
        "list_type",
        json!(["body", "nodes"]),
    );
    expect_422(
        &api.put(&gpath, &json!({"secrets": {"a": 1}, "nodes": []}))
            .await?,
        "string_type",
        json!(["body", "secrets", "a"]),
    );
    let node = |id: &str| json!({"node_name": "Echo", "namespace": ns, "identifier": id, "inputs": {"text": "x"}});
    let a = api
        .put(&gpath, &json!({"secrets": {}, "nodes": [node(" store ")]}))
        .await?;
    assert_eq!(
        a.body,
        json!({"detail": [{"type": "value_error", "loc": ["body", "nodes", 0, "identifier"],
                            "msg": "Value error, Node identifier cannot be reserved word 'store'",
                            "input": " store ", "ctx": {"error": {}}}]})
    );
    let a = api
        .put(
            &gpath,
            &json!({"secrets": {}, "nodes": [node("a")],
                    "triggers": [{"type": "CRON", "value": {"expression": "61 * * * *"}}]}),
        )
        .await?;
    assert_eq!(a.status, 422, "{a:?}");
    assert_eq!(
        a.body["detail"][0]["loc"],
        json!(["body", "triggers", 0, "expression"])
    );
    assert_eq!(
        a.body["detail"][0]["msg"],
        "Value error, Invalid cron expression"
    );
    let a = api
        .put(
            &gpath,
            &json!({"secrets": {}, "nodes": [node("a")], "retry_policy": {"strategy": "SOMETIMES"}}),
        )
        .await?;
    expect_422(&a, "enum", json!(["body", "retry_policy", "strategy"]));
    let a = api
        .put(
            &gpath,
            &json!({"secrets": {}, "nodes": [node("a")], "retry_policy": {"max_retries": -1}}),
        )
        .await?;
    expect_422(
        &a,
        "greater_than_equal",
        json!(["body", "retry_policy", "max_retries"]),
    );
    let a = api
        .put(
            &gpath,
            &json!({"secrets": {}, "nodes": [node("a")], "store_config": {"required_keys": ["a.b"]}}),
        )
        .await?;
    assert_eq!(
        a.body["detail"][0]["msg"],
        "Value error, Key 'a.b' cannot contain '.' character"
    );
    let a = api
        .raw(Method::PUT, &gpath, b"{\"secrets\": {}, \"nodes\": [")
        .await?;
    assert_eq!(a.body["detail"][0]["type"], "json_invalid");
    // Graph-level errors: 400, every problem listed.
    let mut n1 = node("n1");
    n1["next_nodes"] = json!(["ghost"]);
    let a = api
        .put(&gpath, &json!({"secrets": {}, "nodes": [n1, node("n1")]}))
        .await?;
    assert_eq!(a.status, 400, "{a:?}");
    assert!(
        a.detail().starts_with("Error validating graph template: "),
        "{a:?}"
    );
    assert!(
        a.detail().contains("Node identifier n1 is not unique"),
        "{a:?}"
    );
    assert!(
        a.detail()
            .contains("Node identifier ghost does not exist in the graph"),
        "{a:?}"
    );
    let a = api
        .put(&gpath, &json!({"secrets": {}, "nodes": []}))
        .await?;
    assert_eq!(
        a.detail(),
        "Error validating graph template: 1 validation error for GraphTemplate\n  \
         Value error, There should be exactly one root node in the graph but found 0 nodes \
         with zero in-degree: [] [type=value_error, input_type=dict]\n    \
         For further information visit https://errors.pydantic.dev/2.11/v/value_error"
    );
    let mut selfref = node("a");
    selfref["inputs"] = json!({"text": "${{ a.outputs.text }}"});
    let a = api
        .put(&gpath, &json!({"secrets": {}, "nodes": [selfref]}))
        .await?;
    assert!(
        a.detail()
            .contains("Input ${{ a.outputs.text }} depends on a but a is not a parent of a"),
        "{a:?}"
    );
    let a = api
        .put(
            "/v0/namespace/a.b/graph/g",
            &json!({"secrets": {}, "nodes": [node("a")]}),
        )
        .await?;
    assert_eq!(a.status, 400);
    // Success: 201, PENDING with no errors in the answer, no name/namespace.
    let a = api.put(&gpath, &chain_graph(ns)).await?;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(
        keys(&a.body),
        set(&[
            "nodes",
            "secrets",
            "retry_policy",
            "store_config",
            "triggers",
            "created_at",
            "updated_at",
            "validation_status",
            "validation_errors"
        ])
    );
    assert_eq!(a.body["validation_status"], "PENDING");
    assert_eq!(a.body["validation_errors"], json!([]));
    assert_eq!(a.body["secrets"], json!({"token": true}));
    assert!(is_naive_iso(&a.body["created_at"]));
    assert_eq!(a.body["nodes"][0]["unites"], Value::Null);
    Ok(a.body)
}

/// `GET /graph/{g}`.
async fn check_get_graph(api: &Api, ns: &str, stored: &Value) -> anyhow::Result<()> {
    let gpath = format!("/v0/namespace/{ns}/graph/chain");
    let g = api.get(&gpath).await?;
    assert_eq!(g.status, 200);
    assert_eq!(keys(&g.body), keys(stored));
    assert_eq!(g.body["validation_status"], "VALID");
    assert_eq!(g.body["secrets"], json!({"token": true}));
    assert_eq!(
        g.body["retry_policy"],
        json!({"max_retries": 1, "strategy": "FIXED", "backoff_factor": 50, "exponent": 2, "max_delay": null})
    );
    expect_detail(
        &api.get(&format!("/v0/namespace/{ns}/graph/nope")).await?,
        404,
        &format!("Graph template nope not found in namespace {ns}"),
    );
    // Another namespace does not see it.
    expect_detail(
        &api.get("/v0/namespace/elsewhere/graph/chain").await?,
        404,
        "Graph template chain not found in namespace elsewhere",
    );
    // An unregistered node makes it INVALID, with upstream's texts.
    let mut ghost = chain_graph(ns);
    ghost["nodes"][1]["node_name"] = json!("Ghost");
    ghost["secrets"] = json!({});
    ghost["nodes"][0]["node_name"] = json!("Vault");
    let a = api
        .put(&format!("/v0/namespace/{ns}/graph/ghost"), &ghost)
        .await?;
    assert_eq!(a.status, 201);
    let g = api.get(&format!("/v0/namespace/{ns}/graph/ghost")).await?;
    assert_eq!(g.body["validation_status"], "INVALID");
    let errors: BTreeSet<&str> = g.body["validation_errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        errors.contains(format!("Node Ghost in namespace {ns} does not exist.").as_str()),
        "{errors:?}"
    );
    assert!(
        errors.contains("Secret token is required but not present in the graph template"),
        "{errors:?}"
    );
    Ok(())
}

/// `GET /graphs/`.
async fn check_list_graphs(api: &Api, ns: &str) -> anyhow::Result<()> {
    let a = api.get(&format!("/v0/namespace/{ns}/graphs/")).await?;
    assert_eq!(keys(&a.body), set(&["namespace", "count", "templates"]));
    assert_eq!(a.body["count"], 2);
    let chain = a.body["templates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["name"] == "chain")
        .context("chain listed")?;
    assert_eq!(
        keys(chain),
        set(&[
            "_id",
            "created_at",
            "updated_at",
            "name",
            "namespace",
            "nodes",
            "validation_status",
            "validation_errors",
            "secrets",
            "triggers",
            "retry_policy",
            "store_config"
        ])
    );
    // Ciphertexts, never the plaintext.
    let ct = chain["secrets"]["token"].as_str().unwrap_or_default();
    assert!(ct.len() >= 32 && !ct.contains("t0ps3cret"), "{ct}");
    Ok(())
}

/// `POST /graph/{g}/trigger`.
async fn check_trigger(api: &Api, ns: &str) -> anyhow::Result<()> {
    let tpath = |g: &str| format!("/v0/namespace/{ns}/graph/{g}/trigger");
    expect_detail(
        &api.post(&tpath("nope"), &json!({})).await?,
        404,
        &format!("Graph template not found for namespace {ns} and graph nope"),
    );
    expect_detail(
        &api.post(&tpath("ghost"), &json!({"store": {"who": "x"}}))
            .await?,
        400,
        "Graph template is not valid",
    );
    expect_detail(
        &api.post("/v0/namespace/elsewhere/graph/chain/trigger", &json!({}))
            .await?,
        404,
        "Graph template not found for namespace elsewhere and graph chain",
    );
    expect_detail(
        &api.post(&tpath("chain"), &json!({"store": {}})).await?,
        400,
        "Invalid input: Dependent who not found in store for root node echo",
    );
    expect_detail(
        &api.post(
            &tpath("chain"),
            &json!({"inputs": {"text": "${{ vault.outputs.text }}"}, "store": {"who": "x"}}),
        )
        .await?,
        400,
        "Invalid input: 400: Root node can have only store identifier as dependent but got vault",
    );
    expect_detail(
        &api.post(
            &tpath("chain"),
            &json!({"inputs": {"text": "plain"}, "store": {"other": "x"}}),
        )
        .await?,
        400,
        "Missing store keys: {'who'}",
    );
    expect_422(
        &api.post(&tpath("chain"), &json!({"inputs": {"text": 5}}))
            .await?,
        "string_type",
        json!(["body", "inputs", "text"]),
    );
    expect_422(
        &api.post(&tpath("chain"), &json!({"start_delay": -1}))
            .await?,
        "greater_than_equal",
        json!(["body", "start_delay"]),
    );
    expect_422(
        &api.post(&tpath("chain"), &json!({"store": ["who"]}))
            .await?,
        "dict_type",
        json!(["body", "store"]),
    );
    let a = api
        .post(&tpath("chain"), &json!({"store": {"who": "x"}}))
        .await?;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(keys(&a.body), set(&["status", "run_id"]));
    assert_eq!(a.body["status"], "CREATED");
    let run_id = a.body["run_id"].as_str().unwrap_or_default();
    assert_eq!(uuid::Uuid::parse_str(run_id)?.get_version_num(), 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_run_endpoints() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let api = Api::new(&stack)?;
    let ns = "states";
    register(&api, ns).await?;
    upsert_valid(&api, ns, "chain", &chain_graph(ns)).await?;
    check_enqueue(&api, ns).await?;
    let (run_id, root_id) = claim_root(&api, ns).await?;
    check_state_not_found(&api, ns, &root_id).await?;
    check_report_bodies(&api, ns, &root_id).await?;
    check_requeue_then_executed(&api, ns, &run_id, &root_id).await?;
    let (vault_id, retry_id) = check_errored(&api, ns, &run_id).await?;
    let run2 = check_prune(&api, ns).await?;
    check_manual_retry(&api, ns, &run_id, &retry_id).await?;
    let ids = RunIds {
        run_id,
        root_id,
        vault_id,
        run2,
    };
    check_run_reads(&api, ns, &ids).await
}

/// The ids `check_run_reads` looks up: the failed run, its root, its
/// errored state, and the pruned run.
struct RunIds {
    run_id: String,
    root_id: String,
    vault_id: String,
    run2: String,
}

/// `POST /states/enqueue`: its 422s, and empty answers for what cannot match.
async fn check_enqueue(api: &Api, ns: &str) -> anyhow::Result<()> {
    let p = |rest: &str| format!("/v0/namespace/{ns}{rest}");
    // ---- POST /states/enqueue
    let a = api
        .post(&p("/states/enqueue"), &json!({"nodes": ["Echo"]}))
        .await?;
    assert_eq!(
        a.body,
        json!({"detail": [{"type": "missing", "loc": ["body", "batch_size"], "msg": "Field required",
                            "input": {"nodes": ["Echo"]}}]})
    );
    expect_422(
        &api.post(
            &p("/states/enqueue"),
            &json!({"nodes": "Echo", "batch_size": "many"}),
        )
        .await?,
        "list_type",
        json!(["body", "nodes"]),
    );
    assert_eq!(
        api.post(
            &p("/states/enqueue"),
            &json!({"nodes": ["Echo"], "batch_size": "x"})
        )
        .await?
        .body["detail"][0]["type"],
        "int_parsing"
    );
    for body in [
        json!({"nodes": [], "batch_size": 5}),
        json!({"nodes": ["Echo"], "batch_size": 0}),
        json!({"nodes": ["Echo"], "batch_size": -3}),
        json!({"nodes": ["no.such node"], "batch_size": 3}),
    ] {
        let a = api.post(&p("/states/enqueue"), &body).await?;
        assert_eq!(
            (a.status, &a.body),
            (
                200,
                &json!({"count": 0, "namespace": ns, "status": "QUEUED", "states": []})
            ),
            "{body}"
        );
    }
    Ok(())
}

/// Triggers a run of `chain` and claims its root over HTTP, checking the hand-out's shape; answers the run and root ids.
async fn claim_root(api: &Api, ns: &str) -> anyhow::Result<(String, String)> {
    // A run whose root is claimed over HTTP.
    let run_id = trigger(api, ns, "chain", &json!({"store": {"who": "ann"}})).await?;
    let root = claim(api, ns, "Echo").await?;
    assert_eq!(
        keys(&root),
        set(&[
            "state_id",
            "node_name",
            "identifier",
            "inputs",
            "created_at"
        ])
    );
    assert_eq!(root["node_name"], "Echo");
    assert_eq!(root["identifier"], "echo");
    assert_eq!(root["inputs"], json!({"text": "hi ann"}));
    assert!(is_naive_iso(&root["created_at"]));
    let root_id = root["state_id"].as_str().unwrap_or_default().to_string();
    Ok((run_id, root_id))
}

/// The per-state endpoints: 404 for a malformed id, an unknown id and another namespace.
async fn check_state_not_found(api: &Api, ns: &str, root_id: &str) -> anyhow::Result<()> {
    let p = |rest: &str| format!("/v0/namespace/{ns}{rest}");
    // ---- the per-state endpoints: malformed id, unknown id, wrong namespace
    for rest in ["executed", "errored", "prune", "re-enqueue-after"] {
        let body = match rest {
            "executed" => json!({"outputs": []}),
            "errored" => json!({"error": "e"}),
            "prune" => json!({"data": {}}),
            _ => json!({"enqueue_after": 10}),
        };
        for id in [MALFORMED_ID, UNKNOWN_ID] {
            expect_detail(
                &api.post(&p(&format!("/state/{id}/{rest}")), &body).await?,
                404,
                "State not found",
            );
        }
        expect_detail(
            &api.post(
                &format!("/v0/namespace/elsewhere/state/{root_id}/{rest}"),
                &body,
            )
            .await?,
            404,
            "State not found",
        );
    }
    for id in [MALFORMED_ID, UNKNOWN_ID] {
        expect_detail(
            &api.post(
                &p(&format!("/state/{id}/manual-retry")),
                &json!({"fanout_id": "f"}),
            )
            .await?,
            404,
            "State not found",
        );
        expect_detail(
            &api.get(&p(&format!("/state/{id}/secrets"))).await?,
            404,
            "State not found",
        );
    }
    expect_detail(
        &api.get(&format!("/v0/namespace/elsewhere/state/{root_id}/secrets"))
            .await?,
        404,
        "State not found",
    );
    Ok(())
}

/// The runtime endpoints' bodies (422s) and the state's secrets.
async fn check_report_bodies(api: &Api, ns: &str, root_id: &str) -> anyhow::Result<()> {
    let sp = |rest: &str| format!("/v0/namespace/{ns}/state/{root_id}/{rest}");
    // ---- bodies of the runtime endpoints
    expect_422(
        &api.post(&sp("executed"), &json!({})).await?,
        "missing",
        json!(["body", "outputs"]),
    );
    expect_422(
        &api.post(&sp("executed"), &json!({"outputs": [{"a": "b"}, "c"]}))
            .await?,
        "dict_type",
        json!(["body", "outputs", 1]),
    );
    expect_422(
        &api.post(&sp("errored"), &json!({"error": 3})).await?,
        "string_type",
        json!(["body", "error"]),
    );
    expect_422(
        &api.post(&sp("prune"), &json!({"data": null})).await?,
        "dict_type",
        json!(["body", "data"]),
    );
    for bad in [json!(0), json!(-5), json!(1.5), json!("soon")] {
        let a = api
            .post(&sp("re-enqueue-after"), &json!({"enqueue_after": bad}))
            .await?;
        assert_eq!(a.status, 422, "{bad}: {a:?}");
    }
    assert_eq!(
        api.post(&sp("re-enqueue-after"), &json!({"enqueue_after": 0}))
            .await?
            .body["detail"][0],
        json!({"type": "greater_than", "loc": ["body", "enqueue_after"],
               "msg": "Input should be greater than 0", "input": 0, "ctx": {"gt": 0}})
    );
    expect_422(
        &api.post(&sp("manual-retry"), &json!({"fanout_id": 1}))
            .await?,
        "string_type",
        json!(["body", "fanout_id"]),
    );
    let a = api
        .raw(Method::POST, &sp("executed"), b"{\"outputs\": [")
        .await?;
    assert_eq!(a.body["detail"][0]["type"], "json_invalid");

    // ---- secrets: every secret of the state's graph, decrypted.
    let a = api.get(&sp("secrets")).await?;
    assert_eq!(
        (a.status, &a.body),
        (200, &json!({"secrets": {"token": "t0ps3cret"}}))
    );
    Ok(())
}

/// `re-enqueue-after` on the QUEUED root, then `executed`, then every report refused on a state no longer QUEUED.
async fn check_requeue_then_executed(
    api: &Api,
    ns: &str,
    run_id: &str,
    root_id: &str,
) -> anyhow::Result<()> {
    let sp = |rest: &str| format!("/v0/namespace/{ns}/state/{root_id}/{rest}");
    // ---- re-enqueue-after on the QUEUED root: CREATED again, later.
    let before = exo_types::time::now_ms();
    let a = api
        .post(&sp("re-enqueue-after"), &json!({"enqueue_after": "300"}))
        .await?;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["status"], "CREATED");
    let at = a.body["enqueue_after"].as_i64().unwrap_or_default();
    assert!(
        at >= before + 300 && at < before + 60_000,
        "{at} vs {before}"
    );
    // Not QUEUED any more (deviation: upstream has no precondition).
    let graph = "chain";
    wait_state(api, ns, graph, run_id, root_id, "QUEUED")
        .await
        .ok();
    let again = claim(api, ns, "Echo").await?;
    assert_eq!(again["state_id"], root_id);
    assert!(exo_types::time::now_ms() >= before + 300);

    // ---- executed: 200, then the state is no longer QUEUED.
    let a = api
        .post(&sp("executed"), &json!({"outputs": [{"text": "hi ann"}]}))
        .await?;
    assert_eq!((a.status, &a.body), (200, &json!({"status": "EXECUTED"})));
    wait_state(api, ns, graph, run_id, root_id, "SUCCESS").await?;
    expect_detail(
        &api.post(&sp("executed"), &json!({"outputs": []})).await?,
        400,
        "State is not queued",
    );
    expect_detail(
        &api.post(&sp("errored"), &json!({"error": "late"})).await?,
        400,
        "State is not queued or executed",
    );
    expect_detail(
        &api.post(&sp("prune"), &json!({"data": {}})).await?,
        400,
        "State is not queued",
    );
    expect_detail(
        &api.post(&sp("re-enqueue-after"), &json!({"enqueue_after": 5}))
            .await?,
        400,
        "State is not queued",
    );
    Ok(())
}

/// `errored` with a retry left, then without: the run FAILS; answers the errored state's id and its retry's.
async fn check_errored(api: &Api, ns: &str, run_id: &str) -> anyhow::Result<(String, String)> {
    let p = |rest: &str| format!("/v0/namespace/{ns}{rest}");
    // ---- errored with a retry left, then without.
    let vault = claim(api, ns, "Vault").await?;
    assert_eq!(vault["inputs"], json!({"text": "hi ann!"}));
    let vault_id = vault["state_id"].as_str().unwrap_or_default().to_string();
    let a = api
        .post(
            &p(&format!("/state/{vault_id}/errored")),
            &json!({"error": "first"}),
        )
        .await?;
    assert_eq!(
        (a.status, &a.body),
        (200, &json!({"status": "ERRORED", "retry_created": true}))
    );
    let retry = claim(api, ns, "Vault").await?;
    let retry_id = retry["state_id"].as_str().unwrap_or_default().to_string();
    assert_ne!(retry_id, vault_id);
    let a = api
        .post(
            &p(&format!("/state/{retry_id}/errored")),
            &json!({"error": "second"}),
        )
        .await?;
    assert_eq!(
        (a.status, &a.body),
        (200, &json!({"status": "ERRORED", "retry_created": false}))
    );
    let run = wait_run(api, ns, run_id).await?;
    assert_eq!(run["status"], "FAILED");
    assert_eq!(
        (
            &run["total_count"],
            &run["errored_count"],
            &run["retried_count"],
            &run["success_count"]
        ),
        (&json!(3), &json!(1), &json!(1), &json!(1))
    );
    Ok((vault_id, retry_id))
}

/// `prune` ends a run's only branch: SUCCESS; answers that run's id.
async fn check_prune(api: &Api, ns: &str) -> anyhow::Result<String> {
    let p = |rest: &str| format!("/v0/namespace/{ns}{rest}");
    // ---- prune: answers the state's enqueue_after.
    let run2 = trigger(api, ns, "chain", &json!({"store": {"who": "bo"}})).await?;
    let r2 = claim(api, ns, "Echo").await?;
    let r2_id = r2["state_id"].as_str().unwrap_or_default().to_string();
    let a = api
        .post(
            &p(&format!("/state/{r2_id}/prune")),
            &json!({"data": {"why": ["nested", 1]}}),
        )
        .await?;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(keys(&a.body), set(&["enqueue_after", "status"]));
    assert_eq!(a.body["status"], "PRUNED");
    assert!(a.body["enqueue_after"].as_i64().unwrap_or_default() > 0);
    let run = wait_run(api, ns, &run2).await?;
    assert_eq!(
        (&run["status"], &run["total_count"], &run["success_count"]),
        (&json!("SUCCESS"), &json!(1), &json!(1))
    );
    Ok(run2)
}

/// `manual-retry`: a copy, 409 for the same `fanout_id`, 404 elsewhere; the run is PENDING again.
async fn check_manual_retry(
    api: &Api,
    ns: &str,
    run_id: &str,
    retry_id: &str,
) -> anyhow::Result<()> {
    let p = |rest: &str| format!("/v0/namespace/{ns}{rest}");
    // ---- manual-retry: a copy, then 409 for the same fanout_id.
    let fanout = uuid::Uuid::new_v4().to_string();
    let mr = p(&format!("/state/{retry_id}/manual-retry"));
    let a = api.post(&mr, &json!({"fanout_id": fanout})).await?;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(keys(&a.body), set(&["id", "status"]));
    assert_eq!(a.body["status"], "CREATED");
    expect_detail(
        &api.post(&mr, &json!({"fanout_id": fanout})).await?,
        409,
        "Duplicate retry state detected",
    );
    expect_detail(
        &api.post(
            &format!("/v0/namespace/elsewhere/state/{retry_id}/manual-retry"),
            &json!({"fanout_id": "x"}),
        )
        .await?,
        404,
        "State not found",
    );
    // The run has work again.
    let r = api.get(&p(&format!("/run/{run_id}"))).await?;
    assert_eq!(r.body["status"], "PENDING", "{r:?}");
    Ok(())
}

/// The run reads: one run, pages of runs, the graph of states, one state's details.
async fn check_run_reads(api: &Api, ns: &str, ids: &RunIds) -> anyhow::Result<()> {
    let RunIds {
        run_id,
        root_id,
        vault_id,
        run2,
    } = ids;
    let p = |rest: &str| format!("/v0/namespace/{ns}{rest}");
    // ---- runs, run, graph structure, node details
    expect_detail(
        &api.get(&p("/run/no-such-run")).await?,
        404,
        &format!("Run no-such-run not found in namespace {ns}"),
    );
    expect_detail(
        &api.get(&format!("/v0/namespace/elsewhere/run/{run_id}"))
            .await?,
        404,
        &format!("Run {run_id} not found in namespace elsewhere"),
    );
    let a = api.get(&p(&format!("/run/{run_id}"))).await?;
    assert_eq!(
        keys(&a.body),
        set(&[
            "run_id",
            "graph_name",
            "status",
            "total_count",
            "pending_count",
            "success_count",
            "errored_count",
            "retried_count",
            "cancelled_count",
            "created_at",
            "finished_at",
            "failures"
        ])
    );
    for (page, size, ty) in [
        ("0", "10", "greater_than_equal"),
        ("1", "0", "greater_than_equal"),
        ("x", "10", "int_parsing"),
        ("1", "1.5", "int_parsing"),
    ] {
        let a = api.get(&p(&format!("/runs/{page}/{size}"))).await?;
        assert_eq!(a.status, 422, "{page}/{size}: {a:?}");
        assert_eq!(a.body["detail"][0]["type"], ty, "{page}/{size}: {a:?}");
    }
    let a = api.get(&p("/runs/1/1")).await?;
    assert_eq!(
        keys(&a.body),
        set(&["namespace", "total", "page", "size", "runs"])
    );
    assert_eq!(
        (&a.body["total"], &a.body["page"], &a.body["size"]),
        (&json!(2), &json!(1), &json!(1))
    );
    assert_eq!(a.body["runs"].as_array().map(Vec::len), Some(1));
    let a = api.get(&p("/runs/3/1")).await?;
    assert_eq!(a.body["runs"], json!([]));
    assert_eq!(a.body["total"], 2);

    let empty = api.get(&p("/states/run/no-such-run/graph")).await?;
    assert_eq!(
        empty.body,
        json!({"root_states": [], "graph_name": "", "nodes": [], "edges": [], "node_count": 0,
               "edge_count": 0, "execution_summary": {"CREATED": 0, "QUEUED": 0, "EXECUTED": 0,
               "SUCCESS": 0, "ERRORED": 0, "NEXT_CREATED_ERROR": 0, "PRUNED": 0, "RETRY_CREATED": 0}})
    );
    let other_ns = api
        .get(&format!(
            "/v0/namespace/elsewhere/states/run/{run_id}/graph"
        ))
        .await?;
    assert_eq!(other_ns.body["node_count"], 0);

    let nd = |g: &str, r: &str, id: &str| p(&format!("/graph/{g}/run/{r}/node/{id}"));
    expect_detail(
        &api.get(&nd("chain", run_id, MALFORMED_ID)).await?,
        400,
        &format!("Invalid node ID format: {MALFORMED_ID}"),
    );
    expect_detail(
        &api.get(&nd("chain", run_id, UNKNOWN_ID)).await?,
        404,
        &format!("Node {UNKNOWN_ID} not found in run {run_id} for graph chain"),
    );
    expect_detail(
        &api.get(&nd("other", run_id, root_id)).await?,
        404,
        &format!("Node {root_id} not found in run {run_id} for graph other"),
    );
    expect_detail(
        &api.get(&nd("chain", run2, root_id)).await?,
        404,
        &format!("Node {root_id} not found in run {run2} for graph chain"),
    );
    let d = api.get(&nd("chain", run_id, vault_id)).await?;
    assert_eq!(d.status, 200);
    assert_eq!(
        d.body["parents"],
        json!({"echo": root_id}),
        "identifier → id string"
    );
    assert_eq!(d.body["error"], "first");
    assert_eq!(d.body["status"], "RETRY_CREATED");
    Ok(())
}

/// The dashboard's calls (spec §2.19): each answered with the shape its
/// client reads, for a run that fanned out and failed, and its retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_api_calls() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let api = Api::new(&stack)?;
    let ns = "dash";
    register(&api, ns).await?;
    check_graph_editor(&api, ns).await?;
    let (run_id, failed) = run_with_a_failed_branch(&api, ns).await?;
    check_runs_page(&api, ns, &run_id).await?;
    check_run_graph_view(&api, ns, &run_id, &failed).await?;
    check_node_details(&api, ns, &run_id, &failed).await?;
    check_retry_button(&api, ns, &run_id, &failed).await?;
    check_sidebar_lists(&api, ns).await
}

/// The graph editor: PUT, then GET `/graph/{g}`.
async fn check_graph_editor(api: &Api, ns: &str) -> anyhow::Result<()> {
    let p = |rest: &str| format!("/v0/namespace/{ns}{rest}");
    // The graph editor: PUT then GET /graph/{g}.
    let body = json!({"secrets": {"token": "x"}, "retry_policy": {"max_retries": 0},
    "nodes": [
        {"node_name": "Echo", "namespace": ns, "identifier": "fan",
         "inputs": {"text": "go"}, "next_nodes": ["vault"]},
        {"node_name": "Vault", "namespace": ns, "identifier": "vault",
         "inputs": {"text": "${{ fan.outputs.text }}"}},
    ]});
    let put = api.put(&p("/graph/flow"), &body).await?;
    assert_eq!(put.status, 201);
    let g = upsert_valid(api, ns, "flow", &body).await?;
    assert_eq!(g["nodes"][1]["identifier"], "vault");
    assert_eq!(
        g["nodes"][1]["next_nodes"],
        json!([]),
        "a leaf reads back []"
    );
    Ok(())
}

/// A run of `flow` whose root fans out to two outputs, one branch failing; answers the run id and the failed state's id.
async fn run_with_a_failed_branch(api: &Api, ns: &str) -> anyhow::Result<(String, String)> {
    let p = |rest: &str| format!("/v0/namespace/{ns}{rest}");
    // A run: the root fans out to two outputs; one branch fails.
    let run_id = trigger(api, ns, "flow", &json!({})).await?;
    let root = claim(api, ns, "Echo").await?;
    let root_id = root["state_id"].as_str().unwrap_or_default().to_string();
    let a = api
        .post(
            &p(&format!("/state/{root_id}/executed")),
            &json!({"outputs": [{"text": "a"}, {"text": "b"}]}),
        )
        .await?;
    assert_eq!(a.status, 200);
    let mut failed = None;
    for _ in 0..2 {
        let s = claim(api, ns, "Vault").await?;
        let id = s["state_id"].as_str().unwrap_or_default().to_string();
        let (rest, body) = if s["inputs"]["text"] == "a" {
            ("executed", json!({"outputs": [{"text": "done"}]}))
        } else {
            failed = Some(id.clone());
            ("errored", json!({"error": "vault exploded"}))
        };
        let a = api.post(&p(&format!("/state/{id}/{rest}")), &body).await?;
        assert_eq!(a.status, 200, "{a:?}");
    }
    let failed = failed.context("the 'b' branch")?;
    let run = wait_run(api, ns, &run_id).await?;
    assert_eq!(run["status"], "FAILED");
    Ok((run_id, failed))
}

/// The runs page.
async fn check_runs_page(api: &Api, ns: &str, run_id: &str) -> anyhow::Result<()> {
    let p = |rest: &str| format!("/v0/namespace/{ns}{rest}");
    // Runs page.
    let runs = api.get(&p("/runs/1/20")).await?;
    assert_eq!(runs.status, 200);
    let item = &runs.body["runs"][0];
    assert_eq!(
        keys(item),
        set(&[
            "run_id",
            "graph_name",
            "success_count",
            "pending_count",
            "errored_count",
            "retried_count",
            "total_count",
            "status",
            "created_at"
        ])
    );
    assert_eq!(
        (
            &item["run_id"],
            &item["graph_name"],
            &item["status"],
            &item["total_count"],
            &item["success_count"],
            &item["errored_count"]
        ),
        (
            &json!(run_id),
            &json!("flow"),
            &json!("FAILED"),
            &json!(4),
            &json!(3),
            &json!(1)
        )
    );
    assert!(is_naive_iso(&item["created_at"]));
    Ok(())
}

/// The run graph view.
async fn check_run_graph_view(
    api: &Api,
    ns: &str,
    run_id: &str,
    failed: &str,
) -> anyhow::Result<()> {
    let p = |rest: &str| format!("/v0/namespace/{ns}{rest}");
    // Run graph view.
    let st = api.get(&p(&format!("/states/run/{run_id}/graph"))).await?;
    assert_eq!(
        keys(&st.body),
        set(&[
            "root_states",
            "graph_name",
            "nodes",
            "edges",
            "node_count",
            "edge_count",
            "execution_summary"
        ])
    );
    assert_eq!(st.body["graph_name"], "flow");
    assert_eq!(
        (&st.body["node_count"], &st.body["edge_count"]),
        (&json!(4), &json!(2))
    );
    for n in st.body["nodes"].as_array().into_iter().flatten() {
        assert_eq!(
            keys(n),
            // Upstream's fields, plus the three exo adds (docs/compatibility.md).
            set(&[
                "id",
                "node_name",
                "identifier",
                "status",
                "error",
                "retry_count",
                "created_at",
                "updated_at"
            ])
        );
    }
    for e in st.body["edges"].as_array().into_iter().flatten() {
        assert_eq!(keys(e), set(&["source", "target"]));
    }
    assert_eq!(st.body["execution_summary"]["ERRORED"], 1);
    assert_eq!(st.body["execution_summary"]["SUCCESS"], 3);
    // Fan-out siblings of the root copy its (empty) parents: both are roots.
    assert_eq!(st.body["root_states"].as_array().map(Vec::len), Some(2));
    let errored_node = st.body["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == failed)
        .context("failed node listed")?;
    assert_eq!(errored_node["error"], "vault exploded");
    Ok(())
}

/// The node details panel of the failed state.
async fn check_node_details(api: &Api, ns: &str, run_id: &str, failed: &str) -> anyhow::Result<()> {
    let p = |rest: &str| format!("/v0/namespace/{ns}{rest}");
    // Node details panel.
    let d = api
        .get(&p(&format!("/graph/flow/run/{run_id}/node/{failed}")))
        .await?;
    assert_eq!(
        keys(&d.body),
        set(&[
            "id",
            "node_name",
            "identifier",
            "graph_name",
            "run_id",
            "status",
            "inputs",
            "outputs",
            "error",
            "parents",
            "created_at",
            "updated_at"
        ])
    );
    assert_eq!(d.body["status"], "ERRORED");
    assert_eq!(d.body["inputs"], json!({"text": "b"}));
    assert_eq!(d.body["outputs"], json!({}));
    assert!(is_naive_iso(&d.body["created_at"]) && is_naive_iso(&d.body["updated_at"]));
    assert_eq!(
        d.body["parents"]["fan"]
            .as_str()
            .map(|s| s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit())),
        Some(true)
    );
    Ok(())
}

/// The retry button: a fresh UUID as `fanout_id`; the copy succeeds and so does the run.
async fn check_retry_button(api: &Api, ns: &str, run_id: &str, failed: &str) -> anyhow::Result<()> {
    let p = |rest: &str| format!("/v0/namespace/{ns}{rest}");
    // Retry button: a fresh UUID as fanout_id.
    let fanout = uuid::Uuid::new_v4().to_string();
    let a = api
        .post(
            &p(&format!("/state/{failed}/manual-retry")),
            &json!({"fanout_id": fanout}),
        )
        .await?;
    assert_eq!(a.status, 200, "{a:?}");
    let copy = a.body["id"].as_str().unwrap_or_default().to_string();
    let s = claim(api, ns, "Vault").await?;
    assert_eq!(s["state_id"], copy.as_str());
    assert_eq!(s["inputs"], json!({"text": "b"}));
    let a = api
        .post(
            &p(&format!("/state/{copy}/executed")),
            &json!({"outputs": [{"text": "fixed"}]}),
        )
        .await?;
    assert_eq!(a.status, 200);
    let run = wait_run(api, ns, run_id).await?;
    assert_eq!(run["status"], "SUCCESS", "{run}");
    let st = api.get(&p(&format!("/states/run/{run_id}/graph"))).await?;
    assert_eq!(st.body["execution_summary"]["RETRY_CREATED"], 1);
    assert_eq!(st.body["execution_summary"]["SUCCESS"], 4);
    Ok(())
}

/// The sidebar lists: nodes, graphs, namespaces.
async fn check_sidebar_lists(api: &Api, ns: &str) -> anyhow::Result<()> {
    let p = |rest: &str| format!("/v0/namespace/{ns}{rest}");
    // Sidebar lists: nodes, graphs, namespaces.
    let nodes = api.get(&p("/nodes/")).await?;
    assert_eq!(nodes.body["count"], 2);
    let graphs = api.get(&p("/graphs/")).await?;
    assert_eq!(graphs.body["templates"][0]["name"], "flow");
    assert_eq!(graphs.body["templates"][0]["validation_status"], "VALID");
    let nss = api.get("/v0/namespaces").await?;
    assert_eq!(nss.body, json!({"namespaces": [ns], "count": 1}));
    Ok(())
}
