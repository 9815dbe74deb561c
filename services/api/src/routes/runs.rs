//! Runs and observability (§2.16–§2.18, §14) plus the extension
//! `GET /run/{run_id}`.
//!
//! Runs written by this implementation carry their status and counters
//! (kept in the same transactions as the state transitions), so listing
//! reads them directly; runs written by Exosphere (no `status` field) are
//! aggregated from their states as upstream does.
//!
//! Deviation from upstream: `page` and `size` must be ≥ 1 (422 otherwise;
//! upstream answers 500 for page 0 and returns everything for size 0).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use exo_store::mongodb::bson::{Document, doc};
use exo_store::{RunDoc, StateDoc};
use exo_types::status::{RunStatus, StateStatus};
use futures::TryStreamExt;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::openapi;
use crate::render::{doc_json, iso, iso_opt, parents_json, parse_oid};
use crate::routes::Scoped;
use crate::validate::{Checker, at};

fn ns_filter(ns: &str) -> Document {
    doc! {"$or": [{"namespace_name": ns}, {"graph_namespace": ns}]}
}

/// The states of run `run_id` in namespace `ns` (the node's or the graph's).
pub(crate) fn run_states(ns: &str, run_id: &str) -> Document {
    let mut filter = ns_filter(ns);
    filter.insert("run_id", run_id);
    filter
}

/// Counters of one run (the engine's).
type Counts = exo_engine::effects::Counters;

/// Upstream's status rule for a run without a stored status; a run
/// without states is FAILED.
fn legacy_status(c: &Counts) -> &'static str {
    let status = if c.total == 0 || (c.pending == 0 && c.errored > 0) {
        RunStatus::Failed
    } else if c.pending > 0 {
        RunStatus::Pending
    } else {
        RunStatus::Success
    };
    status.as_str()
}

/// Aggregates the states of legacy runs (those without a stored status).
async fn legacy_counts(state: &AppState, run_ids: &[String]) -> ApiResult<HashMap<String, Counts>> {
    let mut out: HashMap<String, Counts> = HashMap::new();
    if run_ids.is_empty() {
        return Ok(out);
    }
    let mut cur = state
        .engine
        .store
        .states_raw()
        .find(doc! {"run_id": {"$in": run_ids}})
        .projection(doc! {"run_id": 1, "status": 1})
        .await?;
    while let Some(d) = cur.try_next().await? {
        let (Ok(run), Ok(status)) = (d.get_str("run_id"), d.get_str("status")) else {
            continue;
        };
        let entry = out.entry(run.to_string()).or_default();
        match StateStatus::parse(status) {
            Some(s) => entry.count(s),
            None => entry.total += 1,
        }
    }
    Ok(out)
}

/// Status and counters of a run document.
async fn run_summary(state: &AppState, runs: &[RunDoc]) -> ApiResult<Vec<(String, Counts)>> {
    let legacy: Vec<String> = runs
        .iter()
        .filter(|r| r.status.is_none())
        .map(|r| r.run_id.to_string())
        .collect();
    let counts = legacy_counts(state, &legacy).await?;
    Ok(runs
        .iter()
        .map(|r| match &r.status {
            Some(s) => (s.clone(), Counts::of_run(r)),
            None => {
                let c = counts.get(r.run_id.as_str()).copied().unwrap_or_default();
                (legacy_status(&c).to_string(), c)
            }
        })
        .collect())
}

/// The status and counters of one run (see [`run_summary`]).
pub(crate) async fn run_status(state: &AppState, run: &RunDoc) -> ApiResult<(String, Counts)> {
    Ok(run_summary(state, std::slice::from_ref(run))
        .await?
        .pop()
        .unwrap_or_default())
}

fn path_int(c: &mut Checker, name: &str, raw: &str) -> Option<i64> {
    let loc = at(&[Value::from("path")], name);
    c.int_ge(&loc, &Value::String(raw.to_string()), 1)
}

/// List runs
///
/// `GET /v0/namespace/{ns}/runs/{page}/{size}`.
#[utoipa::path(
    get, path = "/v0/namespace/{namespace_name}/runs/{page}/{size}", operation_id = "listRuns", tag = "runs",
    responses((status = 200, description = "A page of runs, newest first.", body = openapi::RunsResponse), (status = 422, description = "page or size is not an integer ≥ 1.", body = openapi::ValidationErrors))
)]
pub async fn list(
    State(state): State<AppState>,
    Path((ns, page, size)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let mut c = Checker::default();
    let page = path_int(&mut c, "page", &page);
    let size = path_int(&mut c, "size", &size);
    let (Some(page), Some(size)) = (page, size) else {
        return Err(ApiError::Validation(c.errors));
    };
    let store = &state.engine.store;
    let filter = doc! {"namespace_name": &ns};
    let total = store.runs().count_documents(filter.clone()).await?;
    let skip = u64::try_from((page - 1).saturating_mul(size)).unwrap_or(u64::MAX);
    let runs: Vec<RunDoc> = store
        .runs()
        .find(filter)
        .sort(doc! {"created_at": -1})
        .skip(skip)
        .limit(size)
        .await?
        .try_collect()
        .await?;
    let summaries = run_summary(&state, &runs).await?;
    let items: Vec<Value> = runs
        .iter()
        .zip(summaries)
        .map(|(r, (status, c))| {
            json!({
                "run_id": r.run_id,
                "graph_name": r.graph_name,
                "success_count": c.success,
                "pending_count": c.pending,
                "errored_count": c.errored,
                "retried_count": c.retried,
                "total_count": c.total,
                "status": status,
                "created_at": iso(r.created_at),
            })
        })
        .collect();
    Ok(Json(json!({
        "namespace": ns,
        "total": total,
        "page": page,
        "size": size,
        "runs": items,
    })))
}

/// The run `run_id` of namespace `ns`, or 404.
pub(crate) async fn load_run(state: &AppState, ns: &str, run_id: &str) -> ApiResult<RunDoc> {
    let filter = doc! {"run_id": run_id, "namespace_name": ns};
    state
        .engine
        .store
        .runs()
        .find_one(filter)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Run {run_id} not found in namespace {ns}")))
}

/// Read a run
///
/// `GET /v0/namespace/{ns}/run/{run_id}` (extension): one run's status and
/// counters.
#[utoipa::path(
    get, path = "/v0/namespace/{namespace_name}/run/{run_id}", operation_id = "getRun", tag = "runs",
    responses((status = 200, description = "The run, its counts and why it failed (exo extension).", body = openapi::RunDetails), (status = 404, description = "No such run.", body = openapi::ErrorDetail))
)]
pub async fn get_run(s: Scoped) -> ApiResult<Json<Value>> {
    let (state, ns, run_id) = s.parts();
    let run = load_run(&state, &ns, &run_id).await?;
    let (status, c) = run_status(&state, &run).await?;
    let failures = run_failures(&state, &run.run_id).await?;
    Ok(Json(json!({
        "run_id": run.run_id,
        "graph_name": run.graph_name,
        "status": status,
        "total_count": c.total,
        "pending_count": c.pending,
        "success_count": c.success,
        "errored_count": c.errored,
        "retried_count": c.retried,
        "cancelled_count": c.cancelled,
        "created_at": iso(run.created_at),
        "finished_at": iso_opt(run.finished_at),
        "failures": failures,
    })))
}

/// Most failures listed by [`get_run`].
const MAX_FAILURES: i64 = 20;

/// Why a run failed (or is failing): its states that ended ERRORED (with no
/// retry left) or NEXT_CREATED_ERROR, and its unite groups that closed
/// without firing, each with its reason (at most [`MAX_FAILURES`] states).
async fn run_failures(state: &AppState, run_id: &str) -> ApiResult<Vec<Value>> {
    let failed = [
        StateStatus::Errored.as_str(),
        StateStatus::NextCreatedError.as_str(),
    ];
    let states: Vec<StateDoc> = state
        .engine
        .store
        .states()
        .find(doc! {"run_id": run_id, "status": {"$in": failed.as_slice()}})
        .limit(MAX_FAILURES)
        .await?
        .try_collect()
        .await?;
    let mut out: Vec<Value> = states
        .iter()
        .map(|st| {
            json!({
                "state_id": st.id.to_hex(),
                "identifier": st.identifier,
                "node_name": st.node_name,
                "status": st.status.as_str(),
                "retry_count": st.retry_count,
                "error": st.error,
            })
        })
        .collect();
    let groups: Vec<exo_store::UniteGroupDoc> = state
        .engine
        .store
        .unite_groups()
        .find(doc! {"run_id": run_id, "closed": true, "fired": false})
        .limit(MAX_FAILURES)
        .await?
        .try_collect()
        .await?;
    out.extend(groups.iter().map(|g| {
        json!({
            "unite": g.unite_identifier,
            "target_state_id": g.target_id.to_hex(),
            "status": "UNITE_NOT_FIRED",
            "error": g.error,
        })
    }));
    Ok(out)
}

/// Cancel a run
///
/// `POST /v0/namespace/{ns}/run/{run_id}/cancel` (extension): asks the
/// `trigger` service to cancel a pending run. 202 `{"run_id", "status":
/// "CANCELLING"}`; 404 for an unknown run; 409 when it already ended.
#[utoipa::path(
    post, path = "/v0/namespace/{namespace_name}/run/{run_id}/cancel", operation_id = "cancelRun", tag = "runs",
    responses((status = 202, description = "Cancellation requested: pending states become CANCELLED (exo extension).", body = openapi::CancelRunResponse), (status = 404, description = "No such run.", body = openapi::ErrorDetail), (status = 409, description = "The run already ended.", body = openapi::ErrorDetail))
)]
pub async fn cancel(s: Scoped) -> ApiResult<(StatusCode, Json<Value>)> {
    let (state, ns, run_id) = s.parts();
    let run = load_run(&state, &ns, &run_id).await?;
    if let Some(status) = run.status.as_deref()
        && status != RunStatus::Pending.as_str()
    {
        return Err(ApiError::Http(
            StatusCode::CONFLICT,
            format!("Run {run_id} already ended with status {status}"),
        ));
    }
    let cmd = exo_types::messages::CancelCommand {
        run_id: run.run_id.clone(),
    };
    state
        .engine
        .bus
        .publish(exo_bus::Outgoing::json(
            exo_types::subjects::cancel(&ns),
            exo_types::messages::cancel_msg_id(&run_id),
            &cmd,
        )?)
        .await?;
    tracing::info!(exo.namespace = %ns, exo.run_id = %run_id, "Run cancellation requested.");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run_id": run_id, "status": "CANCELLING"})),
    ))
}

fn summary_template() -> Map<String, Value> {
    StateStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), Value::from(0)))
        .collect()
}

/// Read a run as a graph of states
///
/// `GET /v0/namespace/{ns}/states/run/{run_id}/graph`.
#[utoipa::path(
    get, path = "/v0/namespace/{namespace_name}/states/run/{run_id}/graph", operation_id = "getRunGraph", tag = "runs",
    responses((status = 200, description = "The run's states as a graph (empty for an unknown run).", body = openapi::GraphStructureResponse))
)]
pub async fn graph_structure(s: Scoped) -> ApiResult<Json<Value>> {
    let (state, ns, run_id) = s.parts();
    let filter = run_states(&ns, &run_id);
    let states: Vec<StateDoc> = state
        .engine
        .store
        .states()
        .find(filter)
        .await?
        .try_collect()
        .await?;
    let mut summary = summary_template();
    let ids: std::collections::HashSet<_> = states.iter().map(|s| s.id).collect();
    let mut nodes = Vec::with_capacity(states.len());
    let mut roots = Vec::new();
    let mut edges = Vec::new();
    for s in &states {
        let node = json!({
            "id": s.id.to_hex(),
            "node_name": s.node_name,
            "identifier": s.identifier,
            "status": s.status.as_str(),
            "error": s.error,
            "retry_count": s.retry_count,
            "created_at": iso(s.created_at),
            "updated_at": iso(s.updated_at),
        });
        if let Some(n) = summary.get_mut(s.status.as_str()) {
            *n = Value::from(n.as_i64().unwrap_or(0) + 1);
        }
        match s.parents.iter().last() {
            None => roots.push(node.clone()),
            Some((_, parent)) => {
                if let Some(pid) = parent.as_object_id()
                    && ids.contains(&pid)
                {
                    edges.push(json!({"source": pid.to_hex(), "target": s.id.to_hex()}));
                }
            }
        }
        nodes.push(node);
    }
    let graph_name = states
        .first()
        .map(|s| s.graph_name.clone())
        .unwrap_or_default();
    Ok(Json(json!({
        "root_states": roots,
        "graph_name": graph_name,
        "nodes": nodes,
        "edges": edges,
        "node_count": nodes.len(),
        "edge_count": edges.len(),
        "execution_summary": summary,
    })))
}

/// Read one state of a run
///
/// `GET /v0/namespace/{ns}/graph/{graph}/run/{run_id}/node/{node_id}`.
#[utoipa::path(
    get, path = "/v0/namespace/{namespace_name}/graph/{graph_name}/run/{run_id}/node/{node_id}", operation_id = "getRunState", tag = "runs",
    responses((status = 200, description = "One state with its inputs and outputs.", body = openapi::NodeRunDetails), (status = 400, description = "node_id is not 24 hex digits.", body = openapi::ErrorDetail), (status = 404, description = "No such state in this run and graph.", body = openapi::ErrorDetail))
)]
pub async fn node_details(
    State(state): State<AppState>,
    Path((ns, graph, run_id, node_id)): Path<(String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    let Some(id) = parse_oid(&node_id) else {
        return Err(ApiError::bad_request(format!(
            "Invalid node ID format: {node_id}"
        )));
    };
    let mut filter = ns_filter(&ns);
    filter.insert("_id", id);
    filter.insert("run_id", &run_id);
    filter.insert("graph_name", &graph);
    let found = state.engine.store.states().find_one(filter).await;
    let st = match found {
        Ok(Some(st)) => st,
        Ok(None) => {
            return Err(ApiError::not_found(format!(
                "Node {node_id} not found in run {run_id} for graph {graph}"
            )));
        }
        Err(error) => {
            tracing::error!(%error, "Could not load node run details.");
            return Err(ApiError::Http(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal server error while retrieving node details".into(),
            ));
        }
    };
    Ok(Json(json!({
        "id": st.id.to_hex(),
        "node_name": st.node_name,
        "identifier": st.identifier,
        "graph_name": st.graph_name,
        "run_id": st.run_id,
        "status": st.status.as_str(),
        "inputs": doc_json(&st.inputs),
        "outputs": doc_json(&st.outputs),
        "error": st.error,
        "parents": parents_json(&st),
        "created_at": iso(st.created_at),
        "updated_at": iso(st.updated_at),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_status_rules() {
        let mut c = Counts::default();
        assert_eq!(legacy_status(&c), "FAILED");
        c.count(StateStatus::Success);
        c.count(StateStatus::Pruned);
        assert_eq!(legacy_status(&c), "SUCCESS");
        c.count(StateStatus::Errored);
        assert_eq!(legacy_status(&c), "FAILED");
        c.count(StateStatus::Queued);
        assert_eq!(legacy_status(&c), "PENDING");
        c.count(StateStatus::RetryCreated);
        assert_eq!(
            c,
            Counts {
                total: 5,
                pending: 1,
                success: 2,
                errored: 1,
                retried: 1,
                cancelled: 0
            }
        );
    }

    #[test]
    fn bad_pagination_is_a_422() {
        let mut c = Checker::default();
        assert_eq!(path_int(&mut c, "page", "0"), None);
        assert_eq!(path_int(&mut c, "size", "x"), None);
        assert_eq!(path_int(&mut c, "size", "10"), Some(10));
        assert_eq!(
            c.errors[0],
            json!({"type":"greater_than_equal","loc":["path","page"],
                   "msg":"Input should be greater than or equal to 1","input":"0","ctx":{"ge":1}})
        );
        assert_eq!(c.errors[1]["type"], "int_parsing");
    }
}
