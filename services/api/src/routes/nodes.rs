//! Registered nodes (§2.11, §2.13, §13) and the namespace list (§2.15).
//!
//! Deviations from upstream: node names and the namespace must be NATS
//! subject tokens (400 otherwise), and registration is one upsert per node,
//! so concurrent first registrations of the same node do not fail.

use axum::Json;
use axum::extract::{Path, State};
use exo_store::mongodb::bson::{self, DateTime, Document, doc};
use futures::TryStreamExt;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::models::RegisterNodes;
use crate::openapi;
use crate::render::list_in_namespace;
use crate::routes::check_token;
use crate::validate::ValidJson;

/// Register a runtime's nodes
///
/// `PUT /v0/namespace/{ns}/nodes/`.
#[utoipa::path(
    put, path = "/v0/namespace/{namespace_name}/nodes/", operation_id = "registerNodes", tag = "nodes", request_body = openapi::RegisterNodesRequest,
    responses((status = 200, description = "Registered (replacing earlier registrations of these names).", body = openapi::RegisterNodesResponse), (status = 400, description = "A name is not a subject token.", body = openapi::ErrorDetail))
)]
pub async fn register(
    State(state): State<AppState>,
    Path(ns): Path<String>,
    ValidJson(body): ValidJson<RegisterNodes>,
) -> ApiResult<Json<Value>> {
    check_token("namespace", &ns)?;
    for n in &body.nodes {
        check_token("node name", &n.name)?;
    }
    let coll = state.engine.store.registered_nodes();
    for n in &body.nodes {
        let inputs = bson::to_document(&n.inputs_schema)
            .map_err(|e| ApiError::internal("inputs_schema", e))?;
        let outputs = bson::to_document(&n.outputs_schema)
            .map_err(|e| ApiError::internal("outputs_schema", e))?;
        let now = DateTime::from_millis(state.engine.now_ms());
        let filter = doc! {"name": &n.name, "namespace": &ns};
        // `updated_at` is set on insert only, as upstream's `$set` update.
        let update = doc! {
            "$set": {
                "runtime_name": &body.runtime_name,
                "runtime_namespace": &ns,
                "inputs_schema": inputs,
                "outputs_schema": outputs,
                "secrets": &n.secrets,
            },
            "$setOnInsert": {"created_at": now, "updated_at": now},
        };
        let mut attempt = 0;
        loop {
            match coll
                .update_one(filter.clone(), update.clone())
                .upsert(true)
                .await
            {
                Ok(_) => break,
                Err(e) if exo_store::is_duplicate_key(&e) && attempt < 2 => attempt += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
    tracing::info!(
        exo.namespace = %ns,
        runtime = %body.runtime_name,
        nodes = body.nodes.len(),
        "Nodes registered."
    );
    let registered: Vec<Value> = body
        .nodes
        .iter()
        .map(|n| {
            json!({
                "name": n.name,
                "inputs_schema": n.inputs_schema,
                "outputs_schema": n.outputs_schema,
                "secrets": n.secrets,
            })
        })
        .collect();
    Ok(Json(json!({
        "runtime_name": body.runtime_name,
        "registered_nodes": registered,
    })))
}

/// List registered nodes
///
/// `GET /v0/namespace/{ns}/nodes/`.
#[utoipa::path(
    get, path = "/v0/namespace/{namespace_name}/nodes/", operation_id = "listNodes", tag = "nodes",
    responses((status = 200, description = "Registered nodes.", body = openapi::ListRegisteredNodesResponse))
)]
pub async fn list(State(state): State<AppState>, Path(ns): Path<String>) -> ApiResult<Json<Value>> {
    list_in_namespace(state.engine.store.registered_nodes(), ns, "nodes").await
}

/// List namespaces
///
/// `GET /v0/namespaces`: distinct namespaces of registered nodes, sorted,
/// empty values dropped.
#[utoipa::path(
    get, path = "/v0/namespaces", operation_id = "listNamespaces", tag = "nodes",
    responses((status = 200, description = "Namespaces with registered nodes.", body = openapi::NamespacesResponse))
)]
pub async fn namespaces(
    State(state): State<AppState>,
    principal: Option<axum::Extension<crate::keys::Principal>>,
) -> ApiResult<Json<Value>> {
    let mut cur = state
        .engine
        .store
        .db()
        .collection::<Document>(exo_store::REGISTERED_NODES)
        .find(doc! {})
        .projection(doc! {"namespace": 1, "_id": 0})
        .await?;
    let mut set = std::collections::BTreeSet::new();
    while let Some(d) = cur.try_next().await? {
        if let Ok(ns) = d.get_str("namespace")
            && !ns.is_empty()
            && principal.as_ref().is_none_or(|p| p.reaches(ns))
        {
            set.insert(ns.to_string());
        }
    }
    let list: Vec<String> = set.into_iter().collect();
    Ok(Json(json!({"namespaces": list, "count": list.len()})))
}
