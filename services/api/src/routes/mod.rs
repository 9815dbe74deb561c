//! Route handlers, one module per resource.

pub mod enqueue;
pub mod graphs;
pub mod keys;
pub mod nodes;
pub mod run_nodes;
pub mod runs;
pub mod schedules;
pub mod states;
pub mod trigger;
pub mod watch;
pub mod webhooks;

use axum::Json;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::openapi;
use crate::{AppState, Caller};

/// Liveness of the API process
///
/// `GET /health` (no auth, no database check).
#[utoipa::path(
    get, path = "/health", operation_id = "health", tag = "health",
    responses((status = 200, description = "Up.", body = openapi::HealthResponse))
)]
pub async fn health() -> Json<Value> {
    Json(json!({"message": "OK"}))
}

/// 400 with the name-validation message when `value` cannot be a NATS
/// subject token.
pub fn check_token(kind: &str, value: &str) -> Result<(), ApiError> {
    exo_types::names::validate_token(kind, value).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// What a route `/v0/namespace/{namespace_name}/.../{name}` works on: the
/// application state, the namespace, and the one other path parameter (a
/// graph name, a run id, a state id). Extracting it reads nothing.
pub struct Scoped {
    /// The application state.
    pub state: AppState,
    /// The path's namespace.
    pub ns: String,
    /// The path's other parameter.
    pub name: String,
    /// Who calls (for HTTP leases).
    pub caller: Caller,
}

impl Scoped {
    /// The state, the namespace and the other parameter.
    pub fn parts(self) -> (AppState, String, String) {
        (self.state, self.ns, self.name)
    }
}

impl FromRequestParts<AppState> for Scoped {
    type Rejection = axum::response::Response;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Path((ns, name)) = Path::<(String, String)>::from_request_parts(parts, app)
            .await
            .map_err(IntoResponse::into_response)?;
        let caller = Caller::from_request_parts(parts, app)
            .await
            .unwrap_or_default();
        let state = app.clone();
        Ok(Self {
            state,
            ns,
            name,
            caller,
        })
    }
}
