//! Cross-cutting HTTP behaviour (spec §2.0): request ids, the API key,
//! CORS, unknown routes, wrong methods, trailing-slash redirects and the
//! generic 500.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::FutureExt as _;
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument as _;

use crate::AppState;
use crate::error::internal_response;

/// Request and response header carrying the request id.
pub const REQUEST_ID: &str = "x-exosphere-request-id";
/// Header carrying the API key.
pub const API_KEY: &str = "x-api-key";

/// The request id to use: the client's when it parses as a UUID (echoed
/// verbatim), else a fresh UUIDv4.
pub fn request_id(header: Option<&HeaderValue>) -> String {
    header
        .and_then(|v| v.to_str().ok())
        .filter(|s| uuid::Uuid::parse_str(s.trim()).is_ok())
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// A request's headers, for reading its W3C trace context.
struct HttpHeaders<'a>(&'a axum::http::HeaderMap);

impl opentelemetry::propagation::Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Request-id, logging and unhandled-error middleware (the outermost one
/// after CORS), and the request's span, child of the W3C trace context the
/// request carries (`traceparent`). Panics in handlers become the generic
/// 500.
pub async fn request_context(req: Request, next: Next) -> Response {
    let id = request_id(req.headers().get(REQUEST_ID));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("http", request_id = %id, method = %method, path = %path,
        otel.name = %format!("{method} {path}"), otel.kind = "server");
    {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HttpHeaders(req.headers()))
        });
        let _ = span.set_parent(parent);
    }
    let started = Instant::now();
    let fut = async move {
        tracing::debug!("Request received.");
        let response = AssertUnwindSafe(next.run(req)).catch_unwind().await;
        let response = match response {
            Ok(r) => r,
            Err(_) => {
                tracing::error!("Handler panicked.");
                internal_response()
            }
        };
        tracing::debug!(
            status = response.status().as_u16(),
            response_time_ms = started.elapsed().as_secs_f64() * 1000.0,
            "Request processed."
        );
        let route = response
            .extensions()
            .get::<Route>()
            .map_or("unmatched", |r| r.0.as_str());
        exo_service::metrics::http_request(
            method.as_str(),
            route,
            response.status().as_u16(),
            started.elapsed(),
        );
        response
    };
    let mut response = fut.instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// The route template that answered a request (a response extension set
/// by [`route_of`], read by [`request_context`] for the metrics).
#[derive(Debug, Clone)]
struct Route(String);

/// Route layer of every route: tags the response with its route template
/// (`/v0/namespace/{namespace_name}/...`), so the metrics count requests per
/// route, not per path.
pub async fn route_of(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| Route(p.as_str().to_string()));
    let mut response = next.run(req).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}

/// API key check (route layer of the `/v0` routes, so unknown paths and
/// wrong methods are answered before it, as in FastAPI): 401 for no key or
/// an unknown or revoked one; 403 when a scoped key does not reach the
/// path's namespace or lacks the operation's scope (see [`crate::keys`]);
/// 429 over the key's rate. The principal rides on as a request extension.
pub async fn require_key(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let presented = req.headers().get(API_KEY).map(|v| v.as_bytes().to_vec());
    let principal = match presented {
        Some(key) => state.principal(&key).await,
        None => Ok(None),
    };
    let principal = match principal {
        Ok(Some(p)) => p,
        Ok(None) => return detail(StatusCode::UNAUTHORIZED, "Invalid API key".into()),
        Err(error) => {
            tracing::error!(%error, "Could not read API keys.");
            return internal_response();
        }
    };
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let needs = crate::keys::needs(req.method(), &route);
    if let Err(why) = principal.check(crate::keys::namespace_of(req.uri().path()), needs) {
        return detail(StatusCode::FORBIDDEN, why);
    }
    if let Err(limited) = state
        .settings
        .rate_limits
        .take(principal.id(), principal.rate_limit())
    {
        let secs = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        let mut r = detail(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Rate limit exceeded for API key {}: at most {} requests per second",
                principal.id(),
                limited.per_sec
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return r;
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

fn detail(status: StatusCode, detail: String) -> Response {
    (status, Json(json!({ "detail": detail }))).into_response()
}

/// Unknown routes: a 307 to the same path with the trailing slash toggled
/// when that path exists (Starlette's `redirect_slashes`), else 404.
pub async fn not_found(uri: Uri) -> Response {
    let path = uri.path();
    if path != "/" {
        let toggled = match path.strip_suffix('/') {
            Some(_) => path.trim_end_matches('/').to_string(),
            None => format!("{path}/"),
        };
        if !toggled.is_empty()
            && crate::openapi::paths()
                .iter()
                .any(|r| matches_route(r, &toggled))
        {
            let location = match uri.query() {
                Some(q) => format!("{toggled}?{q}"),
                None => toggled,
            };
            if let Ok(v) = HeaderValue::from_str(&location) {
                return (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, v)]).into_response();
            }
        }
    }
    (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"}))).into_response()
}

/// Known path, wrong method.
pub async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({"detail": "Method Not Allowed"})),
    )
        .into_response()
}

/// Whether `path` matches an axum-style `pattern` (`{x}` matches one
/// non-empty segment).
pub fn matches_route(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    p.len() == s.len()
        && p.iter().zip(&s).all(|(p, s)| {
            if p.starts_with('{') && p.ends_with('}') {
                !s.is_empty()
            } else {
                p == s
            }
        })
}

/// CORS as configured upstream: the listed origins, credentials allowed,
/// the fixed method and header lists, and the request id exposed. `*` in
/// the list allows every origin, as upstream's middleware does: the
/// request's origin is echoed (a literal `*` is not allowed together with
/// credentials).
pub fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::list(valid_origins(origins))
    };
    let headers = [
        "accept",
        "accept-language",
        "content-language",
        "content-type",
        "x-api-key",
        "authorization",
        "x-requested-with",
        REQUEST_ID,
    ]
    .map(HeaderName::from_static);
    CorsLayer::new()
        .allow_origin(allow)
        .allow_credentials(true)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
            Method::PATCH,
        ])
        .allow_headers(headers)
        .expose_headers([HeaderName::from_static(REQUEST_ID)])
}

fn valid_origins(origins: &[String]) -> Vec<HeaderValue> {
    origins
        .iter()
        .filter_map(|o| match HeaderValue::from_str(o) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::warn!(origin = %o, "Ignored an invalid CORS origin.");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_reused_only_when_valid() {
        let good = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
        assert_eq!(request_id(Some(&HeaderValue::from_static(good))), good);
        let upper = "3FA85F64-5717-4562-B3FC-2C963F66AFA6";
        assert_eq!(request_id(Some(&HeaderValue::from_static(upper))), upper);
        for bad in ["", "nope", "3fa85f64-5717-4562-b3fc"] {
            let id = request_id(Some(&HeaderValue::from_static(bad)));
            assert_ne!(id, bad);
            let parsed = uuid::Uuid::parse_str(&id).unwrap();
            assert_eq!(parsed.get_version_num(), 4);
        }
        assert!(uuid::Uuid::parse_str(&request_id(None)).is_ok());
    }

    #[test]
    fn route_matching() {
        assert!(matches_route(
            "/v0/namespace/{ns}/nodes/",
            "/v0/namespace/a/nodes/"
        ));
        assert!(!matches_route(
            "/v0/namespace/{ns}/nodes/",
            "/v0/namespace/a/nodes"
        ));
        assert!(!matches_route(
            "/v0/namespace/{ns}/nodes/",
            "/v0/namespace//nodes/"
        ));
        assert!(matches_route("/v0/namespaces", "/v0/namespaces"));
    }
}
