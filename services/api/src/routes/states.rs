//! Runtime endpoints on one state (§2.4–§2.8, §2.12, §7.1, §8, §11).
//!
//! `executed`, `errored`, `prune` and `re-enqueue-after` check the state and
//! then publish the result on `exo.v1.<ns>.result.<kind>` (deduplicated per
//! state attempt); the completion and retry services apply it. The answer
//! is sent once the service has applied it (so a read right after sees it,
//! and a result that lost a race to another is refused like upstream), or
//! after [`crate::APPLY_WAIT`] when that service is down (the result is
//! durable and applied later).
//!
//! Deviations from upstream:
//! - a malformed state id answers 404 "State not found" (upstream: 500);
//! - the state must belong to the path namespace (its node's or its
//!   graph's namespace), else 404 (upstream ignores the namespace here);
//! - `re-enqueue-after` requires a QUEUED state (400 "State is not queued";
//!   upstream has no precondition);
//! - `errored` reads the retry policy of the state's graph in the graph's
//!   namespace (upstream: the path namespace); `retry_created` is false when
//!   that template is not VALID, as the retry service then ends the state
//!   ERRORED;
//! - `secrets` answers 404 for a missing state or template (upstream: 500);
//! - outputs or prune data that MongoDB cannot store (e.g. integers above
//!   `i64::MAX`) are refused with 400;
//! - `manual-retry` writes the copy and the original's RETRY_CREATED in one
//!   transaction that also updates the run counters, puts a finished run
//!   back to PENDING, and hands the copy to the scheduler.

use axum::Json;
use axum::http::StatusCode;
use exo_bus::{Answer, Outgoing};
use exo_engine::effects::{self};
use exo_engine::graphs::Unusable;
use exo_store::StateDoc;
use exo_types::ids::StateId;
use exo_types::messages::{self as m, Errored, Executed, Pruned, Reply, ReplyOutcome, Requeue};
use exo_types::status::StateStatus;
use exo_types::subjects::{self, ResultKind};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::models::{ErroredBody, ExecutedBody, ManualRetryBody, PruneBody, ReEnqueueBody};
use crate::openapi;
use crate::render::{in_namespace, parse_oid};
use crate::routes::{Scoped, check_token};
use crate::validate::ValidJson;

fn state_not_found() -> ApiError {
    ApiError::not_found("State not found")
}

/// Loads the state `id` of namespace `ns`, or 404 "State not found".
async fn load_state(state: &AppState, ns: &str, id: &str) -> ApiResult<StateDoc> {
    let oid = parse_oid(id).ok_or_else(state_not_found)?;
    match state.engine.store.state(oid).await? {
        Some(st) if in_namespace(&st, ns) => Ok(st),
        _ => Err(state_not_found()),
    }
}

fn attempt_of(st: &StateDoc) -> u32 {
    u32::try_from(st.attempt).unwrap_or(u32::MAX)
}

/// Publishes a runtime result about `st` and waits until it is applied.
/// Answers `Err(stale reason)` when the service found the state moved on
/// (another result for this attempt was applied first).
async fn publish_result<T: serde::Serialize>(
    state: &AppState,
    st: &StateDoc,
    kind: ResultKind,
    msg: &T,
) -> ApiResult<Result<(), String>> {
    check_token("namespace", &st.namespace_name)?;
    let answer = state
        .apply(Outgoing::json(
            subjects::result_of_run(&st.namespace_name, kind, &st.run_id),
            m::result_msg_id(kind.token(), &st.id.to_hex(), attempt_of(st)),
            msg,
        )?)
        .await?;
    tracing::debug!(exo.state_id = %st.id, kind = kind.token(), ?answer, "Result published.");
    match answer {
        Answer::Replied(Reply {
            outcome: ReplyOutcome::Stale,
            reason,
        }) => Ok(Err(reason.unwrap_or_default())),
        Answer::Replied(Reply {
            outcome: ReplyOutcome::Rejected,
            reason,
        }) => Err(ApiError::bad_request(reason.unwrap_or_default())),
        _ => Ok(Ok(())),
    }
}

/// The 400 of `errored` for a state that is not QUEUED: upstream's two
/// messages.
fn not_erroring(status: StateStatus) -> ApiError {
    match status {
        StateStatus::Executed => ApiError::bad_request("State is already executed"),
        _ => ApiError::bad_request("State is not queued or executed"),
    }
}

/// The status of `st` now (after a result of ours was found stale).
async fn status_now(state: &AppState, st: &StateDoc) -> ApiResult<StateStatus> {
    Ok(state
        .engine
        .store
        .state(st.id)
        .await?
        .map_or(st.status, |s| s.status))
}

/// A runtime's report on the state at `{namespace}/state/{id}` of the
/// path. Extracting it reads nothing (the body is validated first, so a
/// bad body answers 422 before a missing state answers 404).
impl Scoped {
    /// The state, whatever its status (the caller's leases are renewed
    /// first: it is alive).
    async fn load(&self) -> ApiResult<StateDoc> {
        self.state.renew_leases(&self.ns, self.caller).await;
        load_state(&self.state, &self.ns, &self.name).await
    }

    /// The state, which must be QUEUED.
    async fn queued(&self) -> ApiResult<StateDoc> {
        let st = self.load().await?;
        if st.status == StateStatus::Queued {
            Ok(st)
        } else {
            Err(not_queued())
        }
    }

    /// Publishes the result `make(state id, attempt)` about `st` and waits
    /// until it is applied (see [`publish_result`]).
    async fn publish<T: serde::Serialize>(
        &self,
        st: &StateDoc,
        kind: ResultKind,
        make: impl FnOnce(StateId, u32) -> T,
    ) -> ApiResult<Result<(), String>> {
        let msg = make(StateId::from_bytes(st.id.bytes()), attempt_of(st));
        publish_result(&self.state, st, kind, &msg).await
    }
}

fn not_queued() -> ApiError {
    ApiError::bad_request("State is not queued")
}

/// Largest outputs (all of one result together) or prune data accepted: a
/// state document holds them, and MongoDB documents are limited to 16 MiB.
pub const MAX_STORED: usize = 15 * 1024 * 1024;

/// 400 when JSON objects cannot be stored as BSON documents (e.g. an
/// integer above `i64::MAX`) or are together larger than [`MAX_STORED`],
/// so that the result is refused here instead of failing, again and again,
/// in the service that applies it.
fn storable<'a>(what: &str, ms: impl IntoIterator<Item = &'a Map<String, Value>>) -> ApiResult<()> {
    use exo_store::mongodb::bson;
    let mut size = 0;
    for m in ms {
        let d = bson::to_document(m)
            .map_err(|e| ApiError::bad_request(format!("{what} cannot be stored: {e}")))?;
        size += bson::to_vec(&d).map_or(0, |v| v.len());
    }
    if size > MAX_STORED {
        return Err(ApiError::bad_request(format!(
            "{what} are too large to store: {size} bytes (limit {MAX_STORED})"
        )));
    }
    Ok(())
}

/// Report outputs
///
/// `POST /v0/namespace/{ns}/state/{id}/executed`.
#[utoipa::path(
    post, path = "/v0/namespace/{namespace_name}/state/{state_id}/executed", operation_id = "reportExecuted", tag = "states", request_body = openapi::ExecutedRequest,
    responses((status = 200, description = "Recorded; successors are created.", body = openapi::StatusResponse), (status = 400, description = "The state is not QUEUED (already reported, or its attempt moved on) or the outputs cannot be stored.", body = openapi::ErrorDetail), (status = 404, description = "No such state.", body = openapi::ErrorDetail))
)]
pub async fn executed(
    r: Scoped,
    ValidJson(body): ValidJson<ExecutedBody>,
) -> ApiResult<Json<Value>> {
    r.state.settings.limits.outputs(body.outputs.len())?;
    let st = r.queued().await?;
    storable("outputs", &body.outputs)?;
    let executed = |state_id, attempt| Executed {
        state_id,
        attempt,
        outputs: body.outputs,
    };
    r.publish(&st, ResultKind::Executed, executed)
        .await?
        .map_err(|_| not_queued())?;
    Ok(Json(json!({"status": StateStatus::Executed.as_str()})))
}

/// Report a failure
///
/// `POST /v0/namespace/{ns}/state/{id}/errored`.
#[utoipa::path(
    post, path = "/v0/namespace/{namespace_name}/state/{state_id}/errored", operation_id = "reportErrored", tag = "states", request_body = openapi::ErroredRequest,
    responses((status = 200, description = "Recorded; a retry is scheduled when the policy allows.", body = openapi::ErroredResponse), (status = 400, description = "The state is not QUEUED.", body = openapi::ErrorDetail), (status = 404, description = "No such state or graph.", body = openapi::ErrorDetail))
)]
pub async fn errored(r: Scoped, ValidJson(body): ValidJson<ErroredBody>) -> ApiResult<Json<Value>> {
    let st = r.load().await?;
    if st.status != StateStatus::Queued {
        return Err(not_erroring(st.status));
    }
    let retry_created = match r.state.engine.graph_for(&st).await? {
        Ok(g) => st.retry_count < g.graph.spec().retry_policy_for(&st.identifier).max_retries,
        Err(Unusable::NotFound(..)) => return Err(ApiError::not_found("Graph template not found")),
        Err(_) => false,
    };
    let errored = |state_id, attempt| Errored {
        state_id,
        attempt,
        error: body.error,
    };
    if r.publish(&st, ResultKind::Errored, errored).await?.is_err() {
        return Err(not_erroring(status_now(&r.state, &st).await?));
    }
    Ok(Json(
        json!({"status": StateStatus::Errored.as_str(), "retry_created": retry_created}),
    ))
}

/// Prune a branch
///
/// `POST /v0/namespace/{ns}/state/{id}/prune`.
#[utoipa::path(
    post, path = "/v0/namespace/{namespace_name}/state/{state_id}/prune", operation_id = "reportPrune", tag = "states", request_body = openapi::PruneRequest,
    responses((status = 200, description = "The state and its branch end here.", body = openapi::EnqueueAfterResponse), (status = 400, description = "The state is not QUEUED.", body = openapi::ErrorDetail), (status = 404, description = "No such state.", body = openapi::ErrorDetail))
)]
pub async fn prune(r: Scoped, ValidJson(body): ValidJson<PruneBody>) -> ApiResult<Json<Value>> {
    let st = r.queued().await?;
    storable("data", [&body.data])?;
    let pruned = |state_id, attempt| Pruned {
        state_id,
        attempt,
        data: body.data,
    };
    r.publish(&st, ResultKind::Pruned, pruned)
        .await?
        .map_err(|_| not_queued())?;
    Ok(Json(
        json!({"enqueue_after": st.enqueue_after, "status": StateStatus::Pruned.as_str()}),
    ))
}

/// Run a state again later
///
/// `POST /v0/namespace/{ns}/state/{id}/re-enqueue-after`.
#[utoipa::path(
    post, path = "/v0/namespace/{namespace_name}/state/{state_id}/re-enqueue-after", operation_id = "reEnqueueAfter", tag = "states", request_body = openapi::ReEnqueueAfterRequest,
    responses((status = 200, description = "The state runs again after the delay.", body = openapi::EnqueueAfterResponse), (status = 400, description = "The state is not QUEUED.", body = openapi::ErrorDetail), (status = 404, description = "No such state.", body = openapi::ErrorDetail))
)]
pub async fn re_enqueue_after(
    r: Scoped,
    ValidJson(body): ValidJson<ReEnqueueBody>,
) -> ApiResult<Json<Value>> {
    let st = r.queued().await?;
    let delay_ms = body.enqueue_after;
    let at = r.state.engine.now_ms().saturating_add(delay_ms);
    let requeue = |state_id, attempt| Requeue {
        state_id,
        attempt,
        delay_ms,
    };
    r.publish(&st, ResultKind::Requeue, requeue)
        .await?
        .map_err(|_| not_queued())?;
    Ok(Json(
        json!({"enqueue_after": at, "status": StateStatus::Created.as_str()}),
    ))
}

/// Retry a state by hand
///
/// `POST /v0/namespace/{ns}/state/{id}/manual-retry`.
#[utoipa::path(
    post, path = "/v0/namespace/{namespace_name}/state/{state_id}/manual-retry", operation_id = "manualRetry", tag = "states", request_body = openapi::ManualRetryRequest,
    responses((status = 200, description = "A new attempt of the state is created.", body = openapi::ManualRetryResponse), (status = 404, description = "No such state.", body = openapi::ErrorDetail), (status = 409, description = "A retry with this fanout_id exists, or the state changed concurrently.", body = openapi::ErrorDetail))
)]
pub async fn manual_retry(
    s: Scoped,
    ValidJson(body): ValidJson<ManualRetryBody>,
) -> ApiResult<Json<Value>> {
    let (state, ns, id) = s.parts();
    let store = &state.engine.store;
    let mut tries = 0;
    let (copy, applied) = loop {
        tries += 1;
        let st = load_state(&state, &ns, &id).await?;
        let now = state.engine.now_ms();
        let lg = state.engine.graph_for(&st).await?.ok();
        // A finished run has work again: reopened in the same transaction, so
        // a cancellation in between cannot leave it PENDING with nothing to do.
        let (copy, fx) = exo_engine::attempts::manual_retry(&st, &body.fanout_id, lg, now);
        match effects::apply(store, &fx, now).await {
            Ok(Some(applied)) => break (copy, applied),
            // The original moved on between the read and the write: read again.
            Ok(None) if tries < 5 => continue,
            Ok(None) => {
                return Err(ApiError::Http(
                    StatusCode::CONFLICT,
                    "State changed concurrently, please retry".into(),
                ));
            }
            Err(e) if exo_store::is_duplicate_key(&e) => {
                return Err(ApiError::Http(
                    StatusCode::CONFLICT,
                    "Duplicate retry state detected".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    };
    state.engine.hand_on(&applied).await?;
    exo_service::metrics::retry("manual");
    tracing::info!(exo.state_id = %id, exo.run_id = %copy.run_id, new_state = %copy.id, "Manual retry created.");
    Ok(Json(
        json!({"id": copy.id.to_hex(), "status": StateStatus::Created.as_str()}),
    ))
}

/// Read a state's secrets
///
/// `GET /v0/namespace/{ns}/state/{id}/secrets`: every decrypted secret of
/// the state's graph.
#[utoipa::path(
    get, path = "/v0/namespace/{namespace_name}/state/{state_id}/secrets", operation_id = "getSecrets", tag = "states",
    responses((status = 200, description = "Every secret of the state's graph, decrypted.", body = openapi::SecretsResponse), (status = 404, description = "No such state or graph.", body = openapi::ErrorDetail))
)]
pub async fn secrets(s: Scoped) -> ApiResult<Json<Value>> {
    let (state, ns, id) = s.parts();
    Ok(Json(
        json!({"secrets": secrets_of(&state, &ns, &id).await?}),
    ))
}

/// The decrypted secrets of the graph of state `id` in namespace `ns` (for
/// `GET …/secrets` and the NATS request subject, [`crate::secrets_nats`]).
pub(crate) async fn secrets_of(
    state: &AppState,
    ns: &str,
    id: &str,
) -> ApiResult<Map<String, Value>> {
    let st = load_state(state, ns, id).await?;
    let Some(graph) = state
        .engine
        .store
        .graph_template(st.graph_ns(), &st.graph_name)
        .await?
    else {
        return Err(ApiError::not_found("Graph template not found"));
    };
    let mut out = Map::new();
    if !graph.secrets.is_empty() {
        let cipher = state.cipher("decrypted")?;
        for (name, ct) in &graph.secrets {
            let plain = cipher
                .decrypt(ct)
                .map_err(|e| ApiError::internal(&format!("decrypt secret {name}"), e))?;
            out.insert(name.clone(), Value::String(plain));
        }
    }
    Ok(out)
}
