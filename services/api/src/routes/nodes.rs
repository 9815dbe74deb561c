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
use crate::render::iso;
use crate::routes::check_token;
use crate::validate::ValidJson;

/// `PUT /v0/namespace/{ns}/nodes/`.
#[utoipa::path(
    put,
    path = "/v0/namespace/{namespace_name}/nodes/",
    operation_id = "registerNodes",
    summary = "Register a runtime's nodes",
    tag = "nodes",
    request_body = crate::openapi::RegisterNodesRequest,
    responses((status = 200, description = "Registered (replacing earlier registrations of these names).", body = crate::openapi::RegisterNodesResponse), (status = 400, description = "A name is not a subject token.", body = crate::openapi::ErrorDetail))
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

/// `GET /v0/namespace/{ns}/nodes/`.
#[utoipa::path(
    get,
    path = "/v0/namespace/{namespace_name}/nodes/",
    operation_id = "listNodes",
    summary = "List registered nodes",
    tag = "nodes",
    responses((status = 200, description = "Registered nodes.", body = crate::openapi::ListRegisteredNodesResponse))
)]
pub async fn list(State(state): State<AppState>, Path(ns): Path<String>) -> ApiResult<Json<Value>> {
    let mut cur = state
        .engine
        .store
        .registered_nodes()
        .find(doc! {"namespace": &ns})
        .await?;
    let mut nodes = Vec::new();
    while let Some(n) = cur.try_next().await? {
        nodes.push(json!({
            "_id": n.id.map(|i| i.to_hex()),
            "created_at": iso(n.created_at),
            "updated_at": iso(n.updated_at),
            "name": n.name,
            "namespace": n.namespace,
            "runtime_name": n.runtime_name,
            "runtime_namespace": n.runtime_namespace,
            "inputs_schema": n.inputs_schema,
            "outputs_schema": n.outputs_schema,
            "secrets": n.secrets,
        }));
    }
    Ok(Json(json!({
        "namespace": ns,
        "count": nodes.len(),
        "nodes": nodes,
    })))
}

/// `GET /v0/namespaces`: distinct namespaces of registered nodes, sorted,
/// empty values dropped.
#[utoipa::path(
    get,
    path = "/v0/namespaces",
    operation_id = "listNamespaces",
    summary = "List namespaces",
    tag = "nodes",
    responses((status = 200, description = "Namespaces with registered nodes.", body = crate::openapi::NamespacesResponse))
)]
pub async fn namespaces(State(state): State<AppState>) -> ApiResult<Json<Value>> {
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
        {
            set.insert(ns.to_string());
        }
    }
    let list: Vec<String> = set.into_iter().collect();
    Ok(Json(json!({"namespaces": list, "count": list.len()})))
}
