//! Router behaviour that needs no database: auth, request ids, errors,
//! redirects, CORS, limits, and the checks done before any I/O.

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use exo_api::{AppState, Settings};
use exo_service::admin::Readiness;
use serde_json::{Value, json};
use tower::ServiceExt;

const KEY: &str = "test-key";
const RID: &str = "x-exosphere-request-id";

async fn app_with(mongo_uri: &str) -> (Router, Readiness) {
    let store = exo_store::Store::connect(mongo_uri, "exo-api-router-test", "test")
        .await
        .unwrap();
    let bus = exo_bus::Bus::connect("nats://127.0.0.1:1", "test")
        .await
        .unwrap();
    let engine = exo_engine::Engine::new(store, bus);
    let api = exo_api::ApiConfig {
        key: KEY.into(),
        ..Default::default()
    };
    let readiness = Readiness::default();
    let state = AppState::new(
        engine,
        Settings::from_config(&api).unwrap(),
        readiness.clone(),
    );
    (exo_api::app(state), readiness)
}

async fn app() -> Router {
    app_with("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300")
        .await
        .0
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn call(app: &Router, req: Request<Body>) -> Resp {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = to_bytes(res.into_body(), usize::MAX).await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn req(method: &str, uri: &str, key: Option<&str>, body: Option<&str>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        b = b.header("x-api-key", k);
    }
    match body {
        Some(s) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(s.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

#[tokio::test]
async fn health_and_request_ids() {
    let app = app().await;
    let r = call(&app, req("GET", "/health", None, None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"message": "OK"}));
    let id = r.headers[RID].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok());

    let given = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
    let mut q = req("GET", "/health", None, None);
    q.headers_mut().insert(RID, given.parse().unwrap());
    assert_eq!(call(&app, q).await.headers[RID], given);

    let mut q = req("GET", "/nope", None, None);
    q.headers_mut().insert(RID, "not-a-uuid".parse().unwrap());
    let r = call(&app, q).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body, json!({"detail": "Not Found"}));
    assert_ne!(r.headers[RID], "not-a-uuid");
}

#[tokio::test]
async fn auth_comes_before_validation() {
    let app = app().await;
    let bad_body = Some("{\"nodes\": 1}");
    for key in [None, Some("wrong"), Some("")] {
        let r = call(&app, req("PUT", "/v0/namespace/ns/graph/g", key, bad_body)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.body, json!({"detail": "Invalid API key"}));
        assert!(r.headers.contains_key(RID));
    }
    let r = call(&app, req("GET", "/v0/namespaces", None, None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Header names are case-insensitive.
    let mut q = req(
        "POST",
        "/v0/namespace/ns/states/enqueue",
        None,
        Some("{\"nodes\":[\"a\"]}"),
    );
    q.headers_mut().insert("X-API-Key", KEY.parse().unwrap());
    let r = call(&app, q).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.body,
        json!({"detail":[{"type":"missing","loc":["body","batch_size"],"msg":"Field required","input":{"nodes":["a"]}}]})
    );
}

#[tokio::test]
async fn body_errors_are_fastapi_shaped() {
    let app = app().await;
    let r = call(
        &app,
        req("POST", "/v0/namespace/ns/states/enqueue", Some(KEY), None),
    )
    .await;
    assert_eq!(
        r.body,
        json!({"detail":[{"type":"missing","loc":["body"],"msg":"Field required","input":null}]})
    );
    let r = call(
        &app,
        req(
            "POST",
            "/v0/namespace/ns/states/enqueue",
            Some(KEY),
            Some("{oops"),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["detail"][0]["type"], "json_invalid");
    let r = call(
        &app,
        req(
            "POST",
            "/v0/namespace/ns/graph/g/trigger",
            Some(KEY),
            Some(r#"{"store": {"k": 1}, "start_delay": -5}"#),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["detail"][0]["loc"], json!(["body", "store", "k"]));
    assert_eq!(r.body["detail"][1]["ctx"], json!({"ge": 0}));
    let r = call(
        &app,
        req(
            "POST",
            "/v0/namespace/ns/state/abc/re-enqueue-after",
            Some(KEY),
            Some(r#"{"enqueue_after": 0}"#),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["detail"][0]["msg"], "Input should be greater than 0");
}

fn graph(nodes: Value) -> String {
    json!({"secrets": {}, "nodes": nodes}).to_string()
}

#[tokio::test]
async fn graph_upsert_checks_before_storage() {
    let app = app().await;
    let node = |id: &str, next: Value| json!({"node_name": "N", "namespace": "ns", "identifier": id, "inputs": {}, "next_nodes": next});
    // Field level: 422 with pydantic's message and the offending input.
    let body = graph(json!([node("store", Value::Null)]));
    let r = call(
        &app,
        req("PUT", "/v0/namespace/ns/graph/g", Some(KEY), Some(&body)),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.body["detail"][0],
        json!({"type":"value_error","loc":["body","nodes",0,"identifier"],
               "msg":"Value error, Node identifier cannot be reserved word 'store'",
               "input":"store","ctx":{"error":{}}})
    );
    // Model level: 400.
    let body = graph(json!([node("a", Value::Null), node("b", Value::Null)]));
    let r = call(
        &app,
        req("PUT", "/v0/namespace/ns/graph/g", Some(KEY), Some(&body)),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("Error validating graph template: "),
        "{detail}"
    );
    assert!(detail.contains("exactly one root node"), "{detail}");
    // Names must be subject tokens.
    let body = graph(json!([node("a", Value::Null)]));
    let r = call(
        &app,
        req("PUT", "/v0/namespace/a.b/graph/g", Some(KEY), Some(&body)),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .starts_with("namespace 'a.b' is invalid")
    );
    let body =
        graph(json!([{"node_name": "N*", "namespace": "ns", "identifier": "a", "inputs": {}}]));
    let r = call(
        &app,
        req("PUT", "/v0/namespace/ns/graph/g", Some(KEY), Some(&body)),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .starts_with("node name 'N*' is invalid")
    );
    let body =
        json!({"secrets": {}, "nodes": [], "retry_policy": {"backoff_factor": 0}}).to_string();
    let r = call(
        &app,
        req("PUT", "/v0/namespace/ns/graph/g", Some(KEY), Some(&body)),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.body["detail"][0]["loc"],
        json!(["body", "retry_policy", "backoff_factor"])
    );
    assert_eq!(r.body["detail"][0]["input"], json!(0));
}

#[tokio::test]
async fn id_and_pagination_checks_need_no_database() {
    let app = app().await;
    for kind in [
        "executed",
        "errored",
        "prune",
        "re-enqueue-after",
        "manual-retry",
    ] {
        let body = match kind {
            "executed" => r#"{"outputs": []}"#,
            "errored" => r#"{"error": "x"}"#,
            "prune" => r#"{"data": {}}"#,
            "re-enqueue-after" => r#"{"enqueue_after": 5}"#,
            _ => r#"{"fanout_id": "f"}"#,
        };
        let uri = format!("/v0/namespace/ns/state/not-an-id/{kind}");
        let r = call(&app, req("POST", &uri, Some(KEY), Some(body))).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{kind}");
        assert_eq!(r.body, json!({"detail": "State not found"}));
    }
    let r = call(
        &app,
        req("GET", "/v0/namespace/ns/state/xyz/secrets", Some(KEY), None),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(
        &app,
        req(
            "GET",
            "/v0/namespace/ns/graph/g/run/r/node/xyz",
            Some(KEY),
            None,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body, json!({"detail": "Invalid node ID format: xyz"}));
    let r = call(
        &app,
        req("GET", "/v0/namespace/ns/runs/0/x", Some(KEY), None),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["detail"][0]["loc"], json!(["path", "page"]));
    assert_eq!(r.body["detail"][1]["loc"], json!(["path", "size"]));
    // Nothing to hand out: no queue is touched.
    let r = call(
        &app,
        req(
            "POST",
            "/v0/namespace/ns/states/enqueue",
            Some(KEY),
            Some(r#"{"nodes": ["A"], "batch_size": 0}"#),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        json!({"count": 0, "namespace": "ns", "status": "QUEUED", "states": []})
    );
    let r = call(
        &app,
        req(
            "POST",
            "/v0/namespace/ns/states/enqueue",
            Some(KEY),
            Some(r#"{"nodes": ["a.b"], "batch_size": 5}"#),
        ),
    )
    .await;
    assert_eq!(r.body["count"], 0);
}

#[tokio::test]
async fn database_failures_give_the_generic_500() {
    let app = app().await;
    let r = call(
        &app,
        req("GET", "/v0/namespace/ns/graph/g", Some(KEY), None),
    )
    .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        r.body,
        json!({"success": false, "detail": "internal server error, please reach out to support team at nivedit@exosphere.host"})
    );
    assert!(r.headers.contains_key(RID));
}

#[tokio::test]
async fn methods_redirects_and_unknown_routes() {
    let app = app().await;
    let r = call(&app, req("DELETE", "/health", None, None)).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.body, json!({"detail": "Method Not Allowed"}));
    // Wrong method is answered before auth.
    let r = call(&app, req("DELETE", "/v0/namespace/ns/graph/g", None, None)).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.headers.contains_key(RID));

    let r = call(&app, req("GET", "/v0/namespace/ns/nodes", None, None)).await;
    assert_eq!(r.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(r.headers[header::LOCATION], "/v0/namespace/ns/nodes/");
    let r = call(&app, req("PUT", "/v0/namespace/ns/graphs?x=1", None, None)).await;
    assert_eq!(r.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(r.headers[header::LOCATION], "/v0/namespace/ns/graphs/?x=1");
    let r = call(&app, req("GET", "/v0/namespaces/", None, None)).await;
    assert_eq!(r.status, StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(r.headers[header::LOCATION], "/v0/namespaces");

    for path in [
        "/v0/namespace/ns/graph/g/states/create",
        "/v0/namespace/ns/states/abc/executed",
        "/v0/namespace/ns",
        "/",
    ] {
        let r = call(&app, req("POST", path, Some(KEY), None)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.body, json!({"detail": "Not Found"}));
    }
}

#[tokio::test]
async fn every_listed_route_is_routed() {
    let app = app().await;
    for pattern in exo_api::openapi::paths() {
        let path = pattern
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let r = call(&app, req("PATCH", &path, None, None)).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
    }
}

#[tokio::test]
async fn cors_preflight_and_exposed_header() {
    let app = app().await;
    let q = Request::builder()
        .method("OPTIONS")
        .uri("/v0/namespace/ns/graph/g")
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "x-api-key,content-type")
        .body(Body::empty())
        .unwrap();
    let r = call(&app, q).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    let methods = r.headers["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("PUT") && methods.contains("PATCH"),
        "{methods}"
    );

    let q = Request::builder()
        .uri("/health")
        .header("origin", "http://127.0.0.1:3001")
        .body(Body::empty())
        .unwrap();
    let r = call(&app, q).await;
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "http://127.0.0.1:3001"
    );
    assert_eq!(
        r.headers["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase(),
        RID
    );
    let q = Request::builder()
        .uri("/health")
        .header("origin", "http://evil.example")
        .body(Body::empty())
        .unwrap();
    let r = call(&app, q).await;
    assert!(!r.headers.contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let app = app().await;
    let big = format!("{{\"error\": \"{}\"}}", "x".repeat(exo_api::BODY_LIMIT));
    let r = call(
        &app,
        req(
            "POST",
            "/v0/namespace/ns/state/x/errored",
            Some(KEY),
            Some(&big),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.body["detail"].as_str().unwrap().contains("32 MiB"));
}

#[tokio::test]
async fn admin_routes_on_the_main_router() {
    let (app, readiness) = app_with("mongodb://127.0.0.1:1").await;
    assert_eq!(
        call(&app, req("GET", "/livez", None, None)).await.status,
        StatusCode::OK
    );
    let r = call(&app, req("GET", "/readyz", None, None)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    readiness.set(true);
    assert_eq!(
        call(&app, req("GET", "/readyz", None, None)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_router_serves_exactly_the_documented_methods() {
    let app = app().await;
    let doc = exo_api::openapi::document();
    let mut operations = 0;
    for (pattern, item) in doc["paths"].as_object().unwrap() {
        let path = pattern
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            let r = call(&app, req(method, &path, None, None)).await;
            if item.get(method.to_lowercase()).is_some() {
                operations += 1;
                let expected: &[StatusCode] = if pattern.starts_with("/v0") {
                    &[StatusCode::UNAUTHORIZED]
                } else {
                    &[StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE]
                };
                assert!(
                    expected.contains(&r.status),
                    "{method} {path}: {}",
                    r.status
                );
            } else {
                assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            }
        }
    }
    assert_eq!(operations, 30);
}

#[tokio::test]
async fn openapi_and_swagger_ui_are_served_without_a_key() {
    let app = app().await;
    let r = call(&app, req("GET", "/openapi.json", None, None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body, exo_api::openapi::document());
    assert_eq!(r.body["openapi"], "3.1.0");

    let r = call(&app, req("GET", "/docs/", None, None)).await;
    assert_eq!(r.status, StatusCode::OK);
    let page = r.body.as_str().unwrap_or_default();
    assert!(page.contains("swagger-ui"), "{page}");
    // The assets come from the binary, not from a CDN.
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );
    for asset in [
        "/docs/swagger-ui.css",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-initializer.js",
    ] {
        let r = call(&app, req("GET", asset, None, None)).await;
        assert_eq!(r.status, StatusCode::OK, "{asset}");
    }
    let r = call(&app, req("GET", "/docs/swagger-initializer.js", None, None)).await;
    assert!(
        r.body
            .as_str()
            .unwrap_or_default()
            .contains("/openapi.json")
    );

    let r = call(&app, req("GET", "/docs", None, None)).await;
    assert!(
        r.status == StatusCode::OK || r.status.is_redirection(),
        "{}",
        r.status
    );
}

#[tokio::test]
async fn the_live_view_is_served_from_the_binary_without_a_key() {
    let app = app().await;
    let r = call(&app, req("GET", "/ui", None, None)).await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers[header::LOCATION], "/ui/");
    let r = call(&app, req("GET", "/ui/", None, None)).await;
    assert_eq!(r.status, StatusCode::OK);
    let page = r.body.as_str().unwrap_or_default();
    assert!(page.contains(r#"<script src="/ui/app.js">"#), "{page}");
    let csp = r.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap_or_default();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    for (asset, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let r = call(&app, req("GET", asset, None, None)).await;
        assert_eq!(r.status, StatusCode::OK, "{asset}");
        let ct = r.headers[header::CONTENT_TYPE].to_str().unwrap_or_default();
        assert!(ct.starts_with(kind), "{asset}: {ct}");
        let body = r.body.as_str().unwrap_or_default();
        // Offline: nothing is fetched from another origin.
        assert!(
            !body.contains("https://") && !body.contains("http://cdn"),
            "{asset}"
        );
    }
    // The page carries no data: the API behind it still wants the key.
    let r = call(&app, req("GET", "/v0/namespaces", None, None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
