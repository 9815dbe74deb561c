//! Route handlers, one module per resource.

pub mod enqueue;
pub mod graphs;
pub mod nodes;
pub mod runs;
pub mod states;
pub mod trigger;

use axum::Json;
use serde_json::{Value, json};

use crate::error::ApiError;

/// `GET /health` (no auth, no database check).
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    summary = "Liveness of the API process",
    tag = "health",
    responses((status = 200, description = "Up.", body = crate::openapi::HealthResponse))
)]
pub async fn health() -> Json<Value> {
    Json(json!({"message": "OK"}))
}

/// 400 with the name-validation message when `value` cannot be a NATS
/// subject token.
pub fn check_token(kind: &str, value: &str) -> Result<(), ApiError> {
    exo_types::names::validate_token(kind, value).map_err(|e| ApiError::bad_request(e.to_string()))
}
