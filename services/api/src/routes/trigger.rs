//! `POST /graph/{g}/trigger` (§2.3, §5.3).
//!
//! The request is checked here (template VALID, root inputs resolvable,
//! required store keys present) with the same rules the trigger service
//! applies, then published as a trigger command; the run, its store and its
//! root state are created by `exo-trigger`. The answer is sent once it has
//! (read-your-writes: a list or read right after finds the run), or after
//! [`crate::APPLY_WAIT`] if that service is down: the command is durable,
//! the run id answered is the one it will create.

use axum::Json;
use exo_bus::Outgoing;
use exo_engine::common::{RootError, root_inputs};
use exo_engine::graphs::Unusable;
use exo_types::messages::{TriggerCommand, trigger_msg_id};
use exo_types::names::RunId;
use exo_types::subjects;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::models::TriggerGraph;
use crate::openapi;
use crate::routes::{Scoped, check_token};
use crate::validate::ValidJson;
use exo_types::pyrepr;

/// Start a run
///
/// `POST /v0/namespace/{ns}/graph/{graph}/trigger`.
#[utoipa::path(
    post, path = "/v0/namespace/{namespace_name}/graph/{graph_name}/trigger", operation_id = "triggerGraph", tag = "runs", request_body = openapi::TriggerGraphRequest,
    responses((status = 200, description = "The run is created (its root state follows).", body = openapi::TriggerGraphResponse), (status = 400, description = "The template is not VALID, an input is invalid, or store keys are missing.", body = openapi::ErrorDetail), (status = 404, description = "No such graph.", body = openapi::ErrorDetail))
)]
pub async fn trigger(
    s: Scoped,
    ValidJson(body): ValidJson<TriggerGraph>,
) -> ApiResult<Json<Value>> {
    let (state, ns, graph) = s.parts();
    state.settings.limits.store(&body.store)?;
    let lg = match state.engine.graphs.get(&ns, &graph).await? {
        Ok(lg) => lg,
        Err(Unusable::NotFound(..)) => {
            return Err(ApiError::not_found(format!(
                "Graph template not found for namespace {ns} and graph {graph}"
            )));
        }
        Err(Unusable::NotValid(_)) => {
            return Err(ApiError::bad_request("Graph template is not valid"));
        }
        Err(Unusable::Analysis(reason)) => {
            tracing::warn!(exo.namespace = %ns, exo.graph = %graph, %reason,
                "A stored graph template does not analyse.");
            return Err(ApiError::bad_request("Graph template is not valid"));
        }
    };
    check_token("namespace", &ns)?;
    let cmd = TriggerCommand {
        run_id: RunId::trusted(uuid::Uuid::new_v4().to_string()),
        run: exo_types::messages::RunRequest {
            graph_name: graph.clone(),
            inputs: body.inputs,
            store: body.store,
            start_delay_ms: u64::try_from(body.start_delay).unwrap_or(0),
        },
        requested_at_ms: Some(state.engine.now_ms()),
    };
    match root_inputs(&lg, &cmd) {
        Ok(_) => {}
        Err(RootError::InvalidInput(reason)) => {
            return Err(ApiError::bad_request(format!("Invalid input: {reason}")));
        }
        Err(RootError::MissingStoreKeys(keys)) => {
            return Err(ApiError::bad_request(format!(
                "Missing store keys: {}",
                pyrepr::set_repr(&keys)
            )));
        }
    }
    // Answered once the trigger service has created the run (or refused
    // it), so a read right after finds it.
    let answer = state
        .apply(Outgoing::json(
            subjects::trigger(&ns),
            trigger_msg_id(&cmd.run_id),
            &cmd,
        )?)
        .await?;
    if let exo_bus::Answer::Replied(exo_types::messages::Reply {
        outcome: exo_types::messages::ReplyOutcome::Rejected,
        reason,
    }) = answer
    {
        return Err(ApiError::bad_request(reason.unwrap_or_default()));
    }
    tracing::info!(exo.namespace = %ns, exo.graph = %graph, exo.run_id = %cmd.run_id, "Run requested.");
    Ok(Json(
        json!({"status": exo_types::status::StateStatus::Created.as_str(), "run_id": cmd.run_id}),
    ))
}
