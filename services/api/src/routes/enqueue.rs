//! `POST /states/enqueue` (§2.2, §6): hands QUEUED states to HTTP runtimes.
//!
//! Work comes from the same per-(namespace, node) JetStream dispatch queues
//! that NATS runtimes consume, so the two kinds of runtime share the load.
//! For each dispatch taken, the state must still be QUEUED with the
//! dispatch's attempt and not leased for that attempt; it is then leased to
//! the caller (`lease_until`, Unix ms, and `lease_attempt`, both new State
//! fields) and the dispatch is acked. Stale dispatches are
//! acked and skipped. Nodes are served round-robin until `batch_size`
//! states are found or every queue is empty; an empty queue is never an
//! error.
//!
//! Deviations from upstream: `batch_size` is capped at [`MAX_BATCH`];
//! invalid node names (not NATS subject tokens) are skipped; states are
//! leased (upstream has no lease).

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use axum::Json;
use axum::extract::{Path, State};
use exo_store::mongodb::bson::doc;
use exo_types::messages::Dispatch;
use exo_types::names::is_valid_token;
use exo_types::status::StateStatus;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::error::ApiResult;
use crate::models::EnqueueBody;
use crate::render::{doc_json, iso, parse_oid};
use crate::validate::ValidJson;
use crate::{AppState, Caller};

/// Most states handed out per request.
pub const MAX_BATCH: i64 = 1000;
/// Upper bound on one fetch, whatever the server does.
const FETCH_DEADLINE: Duration = Duration::from_secs(5);

/// `POST /v0/namespace/{ns}/states/enqueue`.
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
            let offset = usize::try_from(exo_types::time::now_ms().unsigned_abs()).unwrap_or(0);
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
                let taken = futures::future::join_all(
                    msgs.into_iter().map(|m| take(&state, &ns, caller, m)),
                )
                .await;
                handed.extend(taken.into_iter().flatten());
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

/// Leases the state of one dispatch and returns its description, or
/// settles a stale dispatch and returns `None`.
async fn take(state: &AppState, ns: &str, caller: Caller, mut held: Held) -> Option<Value> {
    let msg = held.message()?;
    // Only the ids are needed here (inputs are read from the state), but a
    // large dispatch carries them in the object store too.
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
    let d: Dispatch = match serde_json::from_slice(&payload) {
        Ok(d) => d,
        Err(error) => {
            tracing::warn!(subject = %msg.subject, %error, "Dropped a malformed dispatch.");
            held.settle(AckKind::Term).await;
            return None;
        }
    };
    let Some(id) = parse_oid(&d.state_id) else {
        tracing::warn!(state_id = %d.state_id, "Dropped a dispatch with a malformed state id.");
        held.settle(AckKind::Term).await;
        return None;
    };
    let store = &state.engine.store;
    let st = match store.state(id).await {
        Ok(Some(st)) => st,
        Ok(None) => {
            held.settle(AckKind::Ack).await;
            return None;
        }
        Err(error) => {
            tracing::warn!(%error, exo.state_id = %d.state_id, "Could not load a dispatched state.");
            held.settle(AckKind::Nak(None)).await;
            return None;
        }
    };
    if st.status != StateStatus::Queued || st.attempt != i64::from(d.attempt) {
        tracing::debug!(exo.state_id = %d.state_id, status = %st.status, "Skipped a stale dispatch.");
        held.settle(AckKind::Ack).await;
        return None;
    }
    let now = exo_types::time::now_ms();
    let lease_until =
        now.saturating_add(i64::try_from(state.settings.lease.as_millis()).unwrap_or(i64::MAX));
    let claimed = store
        .states()
        .update_one(
            doc! {
                "_id": id, "status": StateStatus::Queued.as_str(), "attempt": exo_store::filters::attempt_is(st.attempt),
                "$or": [{"lease_attempt": {"$ne": st.attempt}}, {"lease_until": {"$lte": now}}],
            },
            doc! {"$set": {"lease_until": lease_until, "lease_attempt": st.attempt,
            "lease_holder": caller.0.map(|ip| ip.to_string())}},
        )
        .await;
    match claimed {
        Ok(r) if r.matched_count == 1 => {}
        Ok(_) => {
            held.settle(AckKind::Ack).await;
            return None;
        }
        Err(error) => {
            tracing::warn!(%error, exo.state_id = %d.state_id, "Could not lease a dispatched state.");
            held.settle(AckKind::Nak(None)).await;
            return None;
        }
    }
    // The object of a large dispatch goes once the hand-out is confirmed.
    let large = held
        .message()
        .filter(|m| exo_bus::payload_ref(m).is_some())
        .map(|m| (**m).clone());
    if held.settle(AckKind::Ack).await
        && let Some(m) = large
    {
        state.engine.bus.forget_payload(&m).await;
    }
    tracing::debug!(exo.namespace = %ns, exo.state_id = %d.state_id, "State handed out over HTTP.");
    Some(json!({
        "state_id": st.id.to_hex(),
        "node_name": st.node_name,
        "identifier": st.identifier,
        "inputs": doc_json(&st.inputs),
        "created_at": iso(st.created_at),
    }))
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
