//! Scoped API keys (ours, see `crate::keys`): create, list, revoke. Each
//! needs an admin key for every namespace (the configured key, or a scoped
//! admin key with `"*"`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use exo_store::mongodb::bson::{self, doc};
use futures::TryStreamExt;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::keys::{ALL_NAMESPACES, KeyDoc, Scope, mint};
use crate::models::CreateKey;
use crate::openapi;
use crate::validate::ValidJson;

/// Create an API key
///
/// `POST /v0/keys` (ours): a key scoped to namespaces and to admin or
/// runtime use. The key is in this answer only; the server keeps its hash.
#[utoipa::path(
    post, path = "/v0/keys", operation_id = "createKey", tag = "keys", request_body = openapi::CreateKeyRequest,
    responses((status = 201, description = "The key (shown this once).", body = openapi::KeyCreated), (status = 403, description = "The caller's key cannot manage keys.", body = openapi::ErrorDetail))
)]
pub async fn create(
    State(state): State<AppState>,
    ValidJson(body): ValidJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let scope = match body.scope.as_deref() {
        Some("runtime") => Scope::Runtime,
        _ => Scope::Admin,
    };
    let now = state.engine.now_ms();
    let (doc, key) = mint(
        body.name,
        body.namespaces,
        scope,
        body.rate_limit_per_sec,
        now,
    );
    let raw = bson::to_document(&doc).map_err(|e| ApiError::internal("encode an API key", e))?;
    state.engine.store.api_keys().insert_one(raw).await?;
    tracing::info!(exo.key_id = %doc.id, scope = scope.as_str(), namespaces = ?doc.namespaces, "API key created.");
    let mut out = doc.public();
    out["key"] = Value::String(key);
    Ok((StatusCode::CREATED, Json(out)))
}

/// List API keys
///
/// `GET /v0/keys` (ours): every scoped key, newest first, without secrets.
#[utoipa::path(
    get, path = "/v0/keys", operation_id = "listKeys", tag = "keys",
    responses((status = 200, description = "Every scoped key.", body = openapi::KeyList), (status = 403, description = "The caller's key cannot manage keys.", body = openapi::ErrorDetail))
)]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let docs: Vec<bson::Document> = state
        .engine
        .store
        .api_keys()
        .find(doc! {})
        .sort(doc! {"created_at_ms": -1})
        .await?
        .try_collect()
        .await?;
    let keys: Vec<Value> = docs
        .into_iter()
        .filter_map(|d| bson::from_document::<KeyDoc>(d).ok())
        .map(|k| k.public())
        .collect();
    Ok(Json(json!({"count": keys.len(), "keys": keys})))
}

/// Revoke an API key
///
/// `DELETE /v0/keys/{key_id}` (ours): the key opens nothing any more (on
/// this replica at once, on the others within 5 s). Revoking twice answers
/// the first revocation.
#[utoipa::path(
    delete, path = "/v0/keys/{key_id}", operation_id = "revokeKey", tag = "keys",
    responses((status = 200, description = "The key, revoked.", body = openapi::KeyInfo), (status = 404, description = "No such key.", body = openapi::ErrorDetail), (status = 403, description = "The caller's key cannot manage keys.", body = openapi::ErrorDetail))
)]
pub async fn revoke(
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let now = state.engine.now_ms();
    let keys = state.engine.store.api_keys();
    keys.update_one(
        doc! {"_id": &key_id, "revoked_at_ms": {"$exists": false}},
        doc! {"$set": {"revoked_at_ms": now}},
    )
    .await?;
    state.keys.forget(&key_id);
    let Some(doc) = crate::keys::load(&state.engine.store, &key_id).await? else {
        return Err(ApiError::not_found(format!("API key {key_id} not found")));
    };
    tracing::info!(exo.key_id = %key_id, "API key revoked.");
    Ok(Json(doc.public()))
}

/// True when `ns` may be named in a key's namespaces.
pub fn valid_namespace(ns: &str) -> bool {
    ns == ALL_NAMESPACES || exo_types::names::validate_token("namespace", ns).is_ok()
}
