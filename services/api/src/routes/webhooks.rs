//! A graph's webhook deliveries (ours; see `crate::webhooks`).

use axum::Json;
use axum::extract::Query;
use exo_store::mongodb::bson::{Document, doc};
use futures::TryStreamExt;
use serde_json::{Value, json};

use super::Scoped;
use crate::error::{ApiError, ApiResult};
use crate::openapi;

/// Most deliveries one request lists.
pub const MAX_LIMIT: i64 = 500;

/// `?limit=`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct DeliveriesQuery {
    /// How many deliveries, newest first (1 to 500, default 50).
    pub limit: Option<i64>,
}

/// Read a graph's webhook deliveries
///
/// `GET /v0/namespace/{ns}/graph/{graph}/webhooks/deliveries` (ours): the
/// latest deliveries of the graph's lifecycle events to its webhooks, newest
/// first, each with its attempts (time, HTTP status or error, duration) and
/// its status: DELIVERED, RETRYING (attempts left) or FAILED. Kept 7 days.
#[utoipa::path(
    get, path = "/v0/namespace/{namespace_name}/graph/{graph_name}/webhooks/deliveries", operation_id = "getWebhookDeliveries", tag = "graphs",
    params(DeliveriesQuery),
    responses((status = 200, description = "The graph's latest webhook deliveries.", body = openapi::WebhookDeliveriesResponse), (status = 404, description = "No such graph.", body = openapi::ErrorDetail), (status = 400, description = "A `limit` out of range.", body = openapi::ErrorDetail))
)]
pub async fn deliveries(s: Scoped, Query(q): Query<DeliveriesQuery>) -> ApiResult<Json<Value>> {
    let (state, ns, name) = s.parts();
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to {MAX_LIMIT}, not {limit}"
        )));
    }
    super::graphs::template_or_404(&state, &ns, &name).await?;
    let docs: Vec<Document> = state
        .engine
        .store
        .webhook_deliveries()
        .find(doc! {"namespace": &ns, "graph_name": &name})
        .sort(doc! {"created_at_ms": -1})
        .limit(limit)
        .await?
        .try_collect()
        .await?;
    let deliveries: Vec<Value> = docs.iter().map(render).collect();
    Ok(Json(json!({
        "namespace": ns,
        "graph_name": name,
        "count": deliveries.len(),
        "deliveries": deliveries,
    })))
}

fn render(d: &Document) -> Value {
    let s = |k: &str| d.get_str(k).unwrap_or_default();
    let attempts: Vec<Value> = d
        .get_array("attempts")
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_document())
                .map(attempt)
                .collect()
        })
        .unwrap_or_default();
    json!({
        "id": s("_id"),
        "url": s("url"),
        "event_id": s("event_id"),
        "event_type": s("event_type"),
        "status": s("status"),
        "created_at_ms": d.get_i64("created_at_ms").ok(),
        "updated_at_ms": d.get_i64("updated_at_ms").ok(),
        "attempts": attempts,
    })
}

fn attempt(a: &Document) -> Value {
    json!({
        "at_ms": a.get_i64("at_ms").ok(),
        "status_code": a.get_i64("status_code").ok(),
        "error": a.get_str("error").ok(),
        "duration_ms": a.get_i64("duration_ms").ok(),
    })
}
