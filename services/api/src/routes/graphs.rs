//! Graph templates: upsert (§2.9, §12), read (§2.10), list (§2.14).
//!
//! Deviations from upstream:
//! - the upsert validates against the registered nodes synchronously and
//!   stores VALID or INVALID at once (upstream: PENDING, then a background
//!   task); the PUT answer still says `PENDING` with no errors;
//! - namespaces, node names and node-template namespaces must be NATS subject
//!   tokens (`[A-Za-z0-9_-]{1,64}`), else 400;
//! - `GET /graph/{g}` returns the stored `retry_policy`, `store_config` and
//!   `triggers` (upstream returns defaults).

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use exo_store::GraphTemplateDoc;
use exo_store::mongodb::bson::{self, Bson, DateTime, Document, doc};
use exo_store::mongodb::options::ReturnDocument;
use exo_types::graph::{
    Graph, GraphSpec, RegisteredNodeSchema, validate_fields, verify_against_registry,
};
use exo_types::status::ValidationStatus;
use futures::TryStreamExt;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::models::UpsertGraph;
use crate::openapi;
use crate::render::{iso, list_in_namespace};
use crate::routes::{Scoped, check_token};
use crate::validate::{ValidJson, field_error_item};

fn to_bson<T: serde::Serialize>(what: &str, v: &T) -> ApiResult<Bson> {
    bson::to_bson(v).map_err(|e| ApiError::internal(what, e))
}

fn secret_names(secrets: &BTreeMap<String, String>) -> Value {
    Value::Object(
        secrets
            .keys()
            .map(|k| (k.clone(), Value::Bool(true)))
            .collect(),
    )
}

/// The 400 detail of a template that does not analyse, worded as upstream's
/// (its model validator's error rendered by pydantic; the input's repr is
/// left out).
fn template_error(message: &str) -> String {
    format!(
        "Error validating graph template: 1 validation error for GraphTemplate\n  \
         Value error, {message} [type=value_error, input_type=dict]\n    \
         For further information visit https://errors.pydantic.dev/2.11/v/value_error"
    )
}

/// The upsert / get answer (`UpsertGraphTemplateResponse`).
fn template_response(doc: &GraphTemplateDoc, status: &str, errors: &[String]) -> Value {
    let mut v = json!({
        "nodes": doc.nodes,
        "secrets": secret_names(&doc.secrets),
        "retry_policy": doc.retry_policy,
        "store_config": doc.store_config,
        "triggers": doc.triggers,
        "created_at": iso(doc.created_at),
        "updated_at": iso(doc.updated_at),
        "validation_status": status,
        "validation_errors": errors,
    });
    // Ours, only when set: a graph without webhooks answers as upstream.
    if !doc.webhooks.is_empty() {
        v["webhooks"] = json!(doc.webhooks);
    }
    v
}

/// The stored template `ns`/`name`, or 404.
pub async fn template_or_404(
    state: &AppState,
    ns: &str,
    name: &str,
) -> ApiResult<GraphTemplateDoc> {
    state
        .engine
        .store
        .graph_template(ns, name)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("Graph template {name} not found in namespace {ns}"))
        })
}

/// Registered nodes for the template's (namespace, node name) pairs.
async fn registry(
    state: &AppState,
    spec: &GraphSpec,
) -> ApiResult<HashMap<(String, String), RegisteredNodeSchema>> {
    let mut out = HashMap::new();
    if spec.nodes.is_empty() {
        return Ok(out);
    }
    let ors: Vec<_> = spec
        .nodes
        .iter()
        .map(|n| doc! {"namespace": &n.namespace, "name": &n.node_name})
        .collect();
    let nodes = state.engine.store.registered_nodes();
    let mut cur = nodes.find(doc! {"$or": ors}).await?;
    while let Some(rn) = cur.try_next().await? {
        out.insert(
            (rn.namespace.clone(), rn.name.clone()),
            RegisteredNodeSchema {
                name: rn.name,
                namespace: rn.namespace,
                inputs_schema: rn.inputs_schema,
                outputs_schema: rn.outputs_schema,
                secrets: rn.secrets,
            },
        );
    }
    Ok(out)
}

/// Create or replace a graph template
///
/// `PUT /v0/namespace/{ns}/graph/{graph}`.
#[utoipa::path(
    put, path = "/v0/namespace/{namespace_name}/graph/{graph_name}", operation_id = "upsertGraph", tag = "graphs", request_body = openapi::UpsertGraphTemplateRequest,
    responses((status = 201, description = "Stored; `validation_status` says whether runs can start.", body = openapi::GraphTemplateResponse), (status = 400, description = "The graph does not analyse (cycles, unknown identifiers, bad references, ...) or a name is not a subject token.", body = openapi::ErrorDetail))
)]
pub async fn upsert(
    s: Scoped,
    ValidJson(body): ValidJson<UpsertGraph>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (state, ns, name) = s.parts();
    check_token("namespace", &ns)?;
    state.settings.limits.graph_nodes(body.spec.nodes.len())?;
    let field_errors = validate_fields(&body.spec);
    if !field_errors.is_empty() {
        return Err(ApiError::Validation(
            field_errors
                .iter()
                .map(|e| field_error_item(&body.raw, e))
                .collect(),
        ));
    }
    let mut spec = body.spec;
    spec.normalize();
    for node in &spec.nodes {
        check_token("node name", &node.node_name)?;
        check_token("namespace", &node.namespace)?;
    }
    let graph = Graph::analyse(&spec)
        .map_err(|errors| ApiError::bad_request(template_error(&errors.join("\n"))))?;
    let registered = registry(&state, &spec).await?;
    let errors = verify_against_registry(&graph, |ns, node| {
        registered.get(&(ns.to_string(), node.to_string())).cloned()
    });
    let status = if errors.is_empty() {
        ValidationStatus::Valid
    } else {
        ValidationStatus::Invalid
    };

    let encrypted = encrypt_secrets(&state, &ns, &name, &spec)?;
    let now = DateTime::from_millis(state.engine.now_ms());
    let mut set = doc! {
        "nodes": to_bson("nodes", &spec.nodes)?,
        "validation_status": status.as_str(),
        "validation_errors": to_bson("validation errors", &errors)?,
        "secrets": to_bson("secrets", &encrypted)?,
        "triggers": to_bson("triggers", &spec.triggers)?,
        "retry_policy": to_bson("retry policy", &spec.retry_policy)?,
        "store_config": to_bson("store config", &spec.store_config)?,
        "updated_at": now,
    };
    if let Some(hooks) = &spec.webhooks {
        set.insert("webhooks", to_bson("webhooks", hooks)?);
    }
    let stored = store_template(
        &state,
        doc! {"name": &name, "namespace": &ns},
        doc! {"$set": set, "$setOnInsert": {"created_at": now}},
    )
    .await?;
    state.engine.graphs.invalidate(&ns, &name);
    bind_triggers(&state, &ns, &name, &spec, status == ValidationStatus::Valid).await?;
    tracing::info!(
        exo.namespace = %ns,
        exo.graph = %name,
        validation_status = status.as_str(),
        "Graph template stored."
    );
    Ok((
        StatusCode::CREATED,
        Json(template_response(
            &stored,
            ValidationStatus::Pending.as_str(),
            &[],
        )),
    ))
}

/// The graph's secrets encrypted for storage (a server without
/// `SECRETS_ENCRYPTION_KEY` refuses a graph that has some).
fn encrypt_secrets(
    state: &AppState,
    ns: &str,
    name: &str,
    spec: &GraphSpec,
) -> ApiResult<BTreeMap<String, String>> {
    let mut encrypted = BTreeMap::new();
    if spec.secrets.is_empty() {
        return Ok(encrypted);
    }
    tracing::debug!(exo.namespace = %ns, exo.graph = %name, "Encrypting the graph's secrets.");
    let cipher = state.cipher("stored")?;
    for (k, v) in &spec.secrets {
        let ct = cipher
            .encrypt(v)
            .map_err(|e| ApiError::internal("encrypt secret", e))?;
        encrypted.insert(k.clone(), ct);
    }
    Ok(encrypted)
}

/// Schedules the graph's CRON triggers (when it is VALID) and captures
/// the subjects of its EVENT triggers before the upsert answers, so events
/// published once it returned are kept for the trigger service.
async fn bind_triggers(
    state: &AppState,
    ns: &str,
    name: &str,
    spec: &GraphSpec,
    valid: bool,
) -> ApiResult<()> {
    exo_engine::cron::reschedule(&state.engine, ns, name, &spec.cron_specs(), valid)
        .await
        .map_err(|e| ApiError::internal("schedule cron triggers", e))?;
    if let Err(e) = exo_engine::events::sync_inbound(&state.engine).await {
        if !spec.event_bindings().is_empty() {
            return Err(ApiError::internal("bind event subjects", e));
        }
        tracing::warn!(error = %e, "Could not bring the inbound stream up to date.");
    }
    Ok(())
}

/// Upserts the template document and returns it as stored.
async fn store_template(
    state: &AppState,
    filter: Document,
    update: Document,
) -> ApiResult<GraphTemplateDoc> {
    let coll = state.engine.store.graph_templates();
    let mut attempt = 0;
    loop {
        let r = coll
            .find_one_and_update(filter.clone(), update.clone())
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await;
        match r {
            Ok(Some(d)) => return Ok(d),
            Ok(None) => return Err(ApiError::Internal("upsert returned no document".into())),
            // Two first-time upserts raced on the unique index: the loser retries as an update.
            Err(e) if exo_store::is_duplicate_key(&e) && attempt < 2 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Read a graph template
///
/// `GET /v0/namespace/{ns}/graph/{graph}`.
#[utoipa::path(
    get, path = "/v0/namespace/{namespace_name}/graph/{graph_name}", operation_id = "getGraph", tag = "graphs",
    responses((status = 200, description = "The template.", body = openapi::GraphTemplateResponse), (status = 404, description = "No such graph.", body = openapi::ErrorDetail))
)]
pub async fn get_graph(s: Scoped) -> ApiResult<Json<Value>> {
    let (state, ns, name) = s.parts();
    let doc = template_or_404(&state, &ns, &name).await?;
    Ok(Json(template_response(
        &doc,
        &doc.validation_status,
        &doc.validation_errors,
    )))
}

/// List graph templates
///
/// `GET /v0/namespace/{ns}/graphs/`: whole documents, ciphertexts included
/// (as upstream).
#[utoipa::path(
    get, path = "/v0/namespace/{namespace_name}/graphs/", operation_id = "listGraphs", tag = "graphs",
    responses((status = 200, description = "Every template of the namespace.", body = openapi::ListGraphTemplatesResponse))
)]
pub async fn list(State(state): State<AppState>, Path(ns): Path<String>) -> ApiResult<Json<Value>> {
    list_in_namespace(state.engine.store.graph_templates(), ns, "templates").await
}
