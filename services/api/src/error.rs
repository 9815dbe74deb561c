//! HTTP errors and their JSON bodies (spec §0).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The body of every unhandled error (spec §0).
pub const INTERNAL_DETAIL: &str =
    "internal server error, please reach out to support team at nivedit@exosphere.host";

/// An error answered to the client.
#[derive(Debug)]
pub enum ApiError {
    /// `{"detail": "<message>"}` with the given status (FastAPI's
    /// HTTPException).
    Http(StatusCode, String),
    /// HTTP 422 `{"detail": [..]}` (FastAPI's request validation).
    Validation(Vec<Value>),
    /// An arbitrary JSON body with the given status.
    Body(StatusCode, Value),
    /// An unexpected failure (MongoDB, NATS, ..): logged, then answered with
    /// the generic 500 body.
    Internal(String),
}

impl ApiError {
    /// `{"detail": msg}` with status 400.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::Http(StatusCode::BAD_REQUEST, msg.into())
    }

    /// `{"detail": msg}` with status 404.
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::Http(StatusCode::NOT_FOUND, msg.into())
    }

    /// An unexpected failure with context.
    pub fn internal(context: &str, e: impl std::fmt::Display) -> Self {
        Self::Internal(format!("{context}: {e}"))
    }
}

/// The generic 500 response.
pub fn internal_response() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"success": false, "detail": INTERNAL_DETAIL})),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Http(status, detail) => {
                (status, Json(json!({ "detail": detail }))).into_response()
            }
            Self::Validation(items) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "detail": items })),
            )
                .into_response(),
            Self::Body(status, body) => (status, Json(body)).into_response(),
            Self::Internal(error) => {
                tracing::error!(%error, "Request failed.");
                internal_response()
            }
        }
    }
}

impl From<exo_store::Error> for ApiError {
    fn from(e: exo_store::Error) -> Self {
        Self::internal("MongoDB", e)
    }
}

impl From<mongodb::error::Error> for ApiError {
    fn from(e: mongodb::error::Error) -> Self {
        Self::internal("MongoDB", e)
    }
}

impl From<exo_bus::Error> for ApiError {
    fn from(e: exo_bus::Error) -> Self {
        Self::internal("NATS", e)
    }
}

impl From<exo_engine::Error> for ApiError {
    fn from(e: exo_engine::Error) -> Self {
        Self::internal("engine", e)
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
