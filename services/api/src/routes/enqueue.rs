//! `POST /states/enqueue` (§2.2, §6): hands QUEUED states to HTTP runtimes.
//!
//! Work comes from the same per-(namespace, node) JetStream dispatch queues
//! that NATS runtimes consume, so the two kinds of runtime share the load.
//! For each dispatch taken, the state must still be QUEUED with the
//! dispatch's attempt and not leased for that attempt; it is then leased to
//! the caller (`lease_until`, Unix ms, `lease_attempt` and `lease_holder`,
//! State fields of ours) in one conditional `update_many` per batch, the
//! answer is built from the dispatches, and they are acked in the
//! background. Stale dispatches are acked and skipped. Each queue is
//! pulled without waiting, all at once, until `batch_size` states are found
//! or every queue is empty; an empty queue is never an error.
//!
//! Deviations from upstream: `batch_size` is capped at [`MAX_BATCH`];
//! invalid node names (not NATS subject tokens) are skipped; states are
//! leased (upstream has no lease).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use axum::Json;
use axum::extract::{Path, State};
use exo_store::StateDoc;
use exo_store::mongodb::bson::{DateTime, Document, doc, oid::ObjectId};
use exo_types::messages::Dispatch;
use exo_types::names::is_valid_token;
use exo_types::status::StateStatus;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use crate::error::ApiResult;
use crate::models::EnqueueBody;
use crate::openapi;
use crate::render::iso;
use crate::validate::ValidJson;
use crate::{AppState, Caller};

/// Most states handed out per request.
pub const MAX_BATCH: i64 = 1000;
/// Upper bound on one fetch, whatever the server does.
const FETCH_DEADLINE: Duration = Duration::from_secs(5);

/// Take work
///
/// `POST /v0/namespace/{ns}/states/enqueue`.
#[utoipa::path(
    post, path = "/v0/namespace/{namespace_name}/states/enqueue", operation_id = "enqueueStates", tag = "states", request_body = openapi::EnqueueRequest,
    responses((status = 200, description = "Up to batch_size states, leased to the caller (possibly none).", body = openapi::EnqueueResponse))
)]
pub async fn enqueue(
    State(state): State<AppState>,
    caller: Caller,
    Path(ns): Path<String>,
    ValidJson(body): ValidJson<EnqueueBody>,
) -> ApiResult<Json<Value>> {
    state.renew_leases(&ns, caller).await;
    let batch = usize::try_from(body.batch_size.clamp(0, MAX_BATCH)).unwrap_or(0);
    let mut handed: Vec<Value> = Vec::new();
    if batch > 0 && is_valid_token(&ns) {
        let mut active: Vec<(String, PullConsumer)> = Vec::new();
        for node in &body.nodes {
            if !is_valid_token(node) || active.iter().any(|(n, _)| n == node) {
                continue;
            }
            let consumer = state.dispatch_consumer(&ns, node).await?;
            active.push((node.clone(), consumer));
        }
        // Start at a different queue on every request, so that small batches
        // do not always favour the first node named.
        if !active.is_empty() {
            let offset = usize::try_from(state.engine.now_ms().unsigned_abs()).unwrap_or(0);
            let start = offset % active.len();
            active.rotate_left(start);
        }
        while handed.len() < batch && !active.is_empty() {
            // Share what is left among the queues still holding work and
            // fetch from all of them at once, so an idle poll costs one
            // fetch wait whatever the number of nodes.
            let shares = split_evenly(batch - handed.len(), active.len());
            let rounds =
                active
                    .into_iter()
                    .zip(shares)
                    .map(|((node, consumer), want)| async move {
                        let got = if want == 0 {
                            Ok(Vec::new())
                        } else {
                            fetch(&consumer, want).await
                        };
                        (node, consumer, want, got)
                    });
            let mut still = Vec::new();
            for (node, consumer, want, got) in futures::future::join_all(rounds).await {
                let msgs = match got {
                    Ok(m) => m,
                    Err(error) => {
                        tracing::warn!(exo.namespace = %ns, exo.node = %node, %error,
                            "Could not fetch dispatches.");
                        state.forget_consumer(&ns, &node);
                        continue;
                    }
                };
                let full = msgs.len() == want;
                handed.extend(take_all(&state, &ns, caller, msgs).await);
                if full {
                    still.push((node, consumer));
                }
            }
            active = still;
        }
    }
    Ok(Json(json!({
        "count": handed.len(),
        "namespace": ns,
        "status": StateStatus::Queued.as_str(),
        "states": handed,
    })))
}

/// `total` split into `parts` shares differing by at most one, the larger
/// first.
fn split_evenly(total: usize, parts: usize) -> Vec<usize> {
    if parts == 0 {
        return Vec::new();
    }
    let (base, extra) = (total / parts, total % parts);
    (0..parts).map(|i| base + usize::from(i < extra)).collect()
}

/// A fetched dispatch not yet settled. If it is dropped unsettled (the
/// request failed or its client went away mid-way), it is given back at
/// once (nak) instead of staying invisible for the consumer's ack wait.
struct Held(Option<jetstream::Message>);

impl Held {
    fn message(&self) -> Option<&jetstream::Message> {
        self.0.as_ref()
    }

    /// Settles the dispatch; true when the server confirmed it.
    async fn settle(&mut self, kind: AckKind) -> bool {
        let Some(msg) = self.0.take() else {
            return false;
        };
        let r = match kind {
            AckKind::Ack => msg.double_ack().await,
            other => msg.ack_with(other).await,
        };
        if let Err(error) = &r {
            tracing::warn!(%error, "Could not settle a dispatch.");
        }
        r.is_ok()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(msg) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
            });
        }
    }
}

/// Fetches up to `n` messages that are ready now: a no-wait pull, so an
/// empty queue answers at once (the SDK does its own sleeping between
/// polls). What was received before the deadline is kept (and handed out or
/// given back).
async fn fetch(consumer: &PullConsumer, n: usize) -> Result<Vec<Held>, String> {
    let deadline = tokio::time::Instant::now() + FETCH_DEADLINE;
    let mut batch = match tokio::time::timeout_at(
        deadline,
        consumer.fetch().max_messages(n).messages(),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("fetch timed out".into()),
    };
    let mut out = Vec::with_capacity(n);
    loop {
        match tokio::time::timeout_at(deadline, batch.next()).await {
            Ok(Some(Ok(m))) => out.push(Held(Some(m))),
            Ok(Some(Err(e))) if out.is_empty() => return Err(e.to_string()),
            Ok(Some(Err(_)) | None) | Err(_) => break,
        }
    }
    Ok(out)
}

/// A fetched dispatch whose message decoded.
struct Taken {
    held: Held,
    id: ObjectId,
    dispatch: Dispatch,
}

/// Decodes one fetched dispatch, or settles a malformed one and returns
/// `None`.
async fn decode(state: &AppState, mut held: Held) -> Option<Taken> {
    let msg = held.message()?;
    let payload = match state.engine.bus.payload_of(msg).await {
        Ok(p) => p,
        Err(error) => {
            tracing::warn!(subject = %msg.subject, %error, "Could not read a dispatch payload.");
            let kind = if matches!(error, exo_bus::PayloadError::Missing(_)) {
                AckKind::Term
            } else {
                AckKind::Nak(None)
            };
            held.settle(kind).await;
            return None;
        }
    };
    let dispatch: Dispatch = match serde_json::from_slice(&payload) {
        Ok(d) => d,
        Err(error) => {
            tracing::warn!(subject = %msg.subject, %error, "Dropped a malformed dispatch.");
            held.settle(AckKind::Term).await;
            return None;
        }
    };
    let id = exo_store::oid(dispatch.state_id.bytes());
    Some(Taken { held, id, dispatch })
}

/// Leases the states of a batch of dispatches and returns their
/// descriptions, built from the dispatches themselves. One MongoDB command
/// for the whole batch in the common case: an `update_many` per dispatch
/// attempt present (usually one), whose filter is the fence (the state is
/// still QUEUED for that attempt and not leased for it by a live hand-out).
/// When it matches fewer states than asked, the states this request leased
/// are read back; the others (stale, or redelivered while their first
/// hand-out lives) are acked and skipped. Dispatches are settled after the
/// answer is built, off the request's path: an ack that is lost only brings
/// the dispatch back after the consumer's ack wait, and the lease makes it
/// stale then.
async fn take_all(state: &AppState, ns: &str, caller: Caller, msgs: Vec<Held>) -> Vec<Value> {
    let decoded = futures::future::join_all(msgs.into_iter().map(|m| decode(state, m))).await;
    let mut by_attempt: BTreeMap<u32, Vec<Taken>> = BTreeMap::new();
    for t in decoded.into_iter().flatten() {
        by_attempt.entry(t.dispatch.attempt).or_default().push(t);
    }
    let store = &state.engine.store;
    let now = state.engine.now_ms();
    let lease_until =
        now.saturating_add(i64::try_from(state.settings.lease.as_millis()).unwrap_or(i64::MAX));
    let holder = caller.0.map(|ip| ip.to_string());
    let mut handed: Vec<Taken> = Vec::new();
    let mut stale: Vec<Taken> = Vec::new();
    for (attempt, group) in by_attempt {
        let attempt = i64::from(attempt);
        let gids: Vec<ObjectId> = group.iter().map(|t| t.id).collect();
        let filter = doc! {
            "_id": {"$in": &gids}, "status": StateStatus::Queued.as_str(),
            "attempt": exo_store::filters::attempt_is(attempt),
            "$or": [{"lease_attempt": {"$ne": attempt}}, {"lease_until": {"$lte": now}}],
        };
        let update = doc! {"$set": {"lease_until": lease_until, "lease_attempt": attempt,
        "lease_holder": holder.clone()}};
        let ours: HashSet<ObjectId> = match store.states().update_many(filter, update).await {
            Ok(r) if r.matched_count == gids.len() as u64 => gids.iter().copied().collect(),
            // A dispatch is held by one request at a time (until its ack
            // wait), so these values identify the leases this one wrote.
            Ok(_) => match leased_by(store, &gids, lease_until, attempt, &holder).await {
                Ok(ids) => ids,
                Err(error) => {
                    tracing::warn!(%error, "Could not read leases back.");
                    HashSet::new()
                }
            },
            Err(error) => {
                tracing::warn!(%error, "Could not lease dispatched states.");
                settle_later(group, AckKind::Nak(None), state);
                continue;
            }
        };
        for t in group {
            if ours.contains(&t.id) {
                handed.push(t);
            } else {
                tracing::debug!(exo.state_id = %t.dispatch.state_id, "Skipped a stale dispatch.");
                stale.push(t);
            }
        }
    }
    settle_later(stale, AckKind::Ack, state);
    let created = creation_times(store, &handed).await;
    let out = handed
        .iter()
        .map(|t| {
            let d = &t.dispatch;
            tracing::debug!(exo.namespace = %ns, exo.state_id = %d.state_id, "State handed out over HTTP.");
            let created_at = d
                .created_at_ms
                .map(DateTime::from_millis)
                .or_else(|| created.get(&t.id).copied())
                .unwrap_or_else(DateTime::now);
            let waited = u64::try_from(now.saturating_sub(created_at.timestamp_millis()));
            let waited = std::time::Duration::from_millis(waited.unwrap_or(0));
            exo_service::metrics::dispatch_delay("http", waited);
            json!({
                "state_id": d.state_id,
                "node_name": d.node_name,
                "identifier": d.identifier,
                "inputs": d.inputs,
                "created_at": iso(created_at),
            })
        })
        .collect();
    settle_later(handed, AckKind::Ack, state);
    out
}

/// The creation times of handed-out states whose dispatch does not carry
/// it (dispatches of older versions), read from their documents.
async fn creation_times(store: &exo_store::Store, handed: &[Taken]) -> HashMap<ObjectId, DateTime> {
    let missing: Vec<ObjectId> = handed
        .iter()
        .filter(|t| t.dispatch.created_at_ms.is_none())
        .map(|t| t.id)
        .collect();
    let mut created = HashMap::new();
    if missing.is_empty() {
        return created;
    }
    match store.states().find(doc! {"_id": {"$in": &missing}}).await {
        Ok(cur) => {
            let docs: Vec<StateDoc> = cur.try_collect().await.unwrap_or_default();
            created.extend(docs.into_iter().map(|st| (st.id, st.created_at)));
        }
        Err(error) => tracing::warn!(%error, "Could not read creation times."),
    }
    created
}

/// The states of `ids` that carry the lease (`until`, `attempt`, `holder`).
async fn leased_by(
    store: &exo_store::Store,
    ids: &[ObjectId],
    until: i64,
    attempt: i64,
    holder: &Option<String>,
) -> Result<HashSet<ObjectId>, exo_store::mongodb::error::Error> {
    let docs: Vec<Document> = store
        .db()
        .collection::<Document>(exo_store::STATES)
        .find(
            doc! {"_id": {"$in": ids}, "lease_until": until, "lease_attempt": attempt,
            "lease_holder": holder.clone()},
        )
        .projection(doc! {"_id": 1})
        .await?
        .try_collect()
        .await?;
    Ok(docs
        .iter()
        .filter_map(|d| d.get_object_id("_id").ok())
        .collect())
}

/// Settles `taken` with `kind` in the background; the object of a large
/// dispatch handed out goes once its ack is confirmed.
fn settle_later(taken: Vec<Taken>, kind: AckKind, state: &AppState) {
    if taken.is_empty() {
        return;
    }
    let bus = state.engine.bus.clone();
    tokio::spawn(async move {
        let settles = taken.into_iter().map(|mut t| {
            let bus = bus.clone();
            async move {
                let large = t
                    .held
                    .message()
                    .filter(|m| exo_bus::payload_ref(m).is_some())
                    .map(|m| (**m).clone());
                if t.held.settle(kind).await
                    && matches!(kind, AckKind::Ack)
                    && let Some(m) = large
                {
                    bus.forget_payload(&m).await;
                }
            }
        });
        futures::future::join_all(settles).await;
    });
}

#[cfg(test)]
mod tests {
    use super::split_evenly;

    #[test]
    fn shares_differ_by_at_most_one() {
        assert_eq!(split_evenly(16, 7), [3, 3, 2, 2, 2, 2, 2]);
        assert_eq!(split_evenly(2, 4), [1, 1, 0, 0]);
        assert_eq!(split_evenly(8, 1), [8]);
        assert!(split_evenly(5, 0).is_empty());
        assert_eq!(split_evenly(1000, 3).iter().sum::<usize>(), 1000);
    }
}
