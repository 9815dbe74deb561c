//! The live run view: a small page served by the api itself (`/ui/`), its
//! assets compiled into the binary (no CDN, works offline). The page asks
//! for an API key, keeps it in the browser's local storage and calls the
//! `/v0` API with it: it lists a namespace's recent runs, and draws a run's
//! graph of states (fan-outs collapsed into counts per status, unites
//! marked), updated live from the run's server-sent events, with each
//! state's inputs, outputs, error and timings on click.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;

/// Where the page lives.
pub const PATH: &str = "/ui/";

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");
const FAVICON: &str = include_str!("ui/favicon.svg");

/// Only this origin's scripts, styles and API; nothing inline, nothing
/// from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// The page's routes (no key needed: they serve code, never data).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent(PATH) }))
        .route(
            PATH,
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/ui/favicon.svg",
            get(|| async { asset("image/svg+xml", FAVICON) }),
        )
}
