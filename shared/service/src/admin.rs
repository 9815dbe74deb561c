//! Admin endpoints: `/livez` (the process is alive), `/readyz` (the service
//! is connected and consuming; flips to 503 at shutdown) and `/metrics`
//! (Prometheus, OpenMetrics text).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

/// Shared readiness flag.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the service ready or not ready.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Current readiness.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Routes `/livez` and `/readyz`, to be merged into another router or served
/// alone by [`serve`] (with `/metrics`).
pub fn router(readiness: Readiness) -> Router {
    Router::new().route("/livez", get(|| async { "ok" })).route(
        "/readyz",
        get(move || {
            let r = readiness.clone();
            async move {
                if r.get() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }
        }),
    )
}

/// `GET /metrics`: the process's metrics.
async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, exo_metrics::CONTENT_TYPE)],
        exo_metrics::encode(),
    )
}

/// Binds `addr` and serves the admin routes until `shutdown` is cancelled.
/// Returns once the listener is bound, so binding errors surface at start-up.
pub async fn serve(
    addr: &str,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = router(readiness).route("/metrics", get(metrics));
    Ok(tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = r {
            tracing::error!(%error, "Admin server failed.");
        }
    }))
}
