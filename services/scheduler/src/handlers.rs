//! The `scheduler` service's handlers: claim a due state and dispatch it,
//! park states that are not due, announce parked states that fell due.

use std::time::Duration;

use exo_bus::Outgoing;
use exo_engine::common::created_payload;
use exo_engine::{Engine, Error, Outcome};
use exo_service::metrics;
use exo_store::mongodb::bson::{doc, oid::ObjectId};
use exo_types::messages::{self as m, StateCreated};
use exo_types::status::StateStatus;
use exo_types::subjects;
use futures::TryStreamExt;

/// Longest single delay the scheduler parks a message for.
pub const MAX_PARK: Duration = Duration::from_secs(3600);
/// Longest delay parked on the stream itself (nak with delay); longer delays
/// are parked in MongoDB so they never hold the consumer's ack-pending slots.
pub const NAK_PARK_LIMIT: Duration = Duration::from_secs(2);

fn park(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0)).min(MAX_PARK)
}

/// `scheduler`: moves a due CREATED state to QUEUED and publishes its
/// dispatch. `seq` is the stream sequence of the `state.created` message
/// being handled: the claim records it, and a state found QUEUED is
/// dispatched again only by a redelivery of the very message that claimed
/// it (which may have died before publishing). Any other copy (a
/// reconciler announcement, a re-announcement by a resumed fan-out) finds
/// the state QUEUED under another sequence and is stale, so a state that
/// is executing is never dispatched twice.
///
/// A state due within [`NAK_PARK_LIMIT`] is parked on the stream (nak
/// with the remaining delay); a state due later is marked `parked` in
/// MongoDB and the message acked, so delayed work never holds the
/// consumer's ack-pending slots: [`announce_due`] announces it
/// again when it falls due.
pub async fn on_created(engine: &Engine, msg: StateCreated, seq: u64) -> Result<Outcome, Error> {
    let id = exo_store::oid(msg.state_id.bytes());
    let now = engine.now_ms();
    if msg.enqueue_after > now {
        return park_state(engine, id, &msg, msg.enqueue_after - now).await;
    }
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    // Claimed together with the other due states being handled now (one
    // update, one read); the state read back says whether this message
    // holds the claim: claimed now, or by an earlier delivery of this
    // message that may have died before publishing (the dispatch id
    // deduplicates).
    let st = match engine.claims.claim(id, seq, now).await? {
        None => return Ok(Outcome::Reject(format!("state {} not found", msg.state_id))),
        Some(st) if st.status == StateStatus::Queued && st.claim_seq == Some(seq) => st,
        Some(st) if st.status == StateStatus::Created && st.enqueue_after > now => {
            return park_state(engine, id, &msg, st.enqueue_after - now).await;
        }
        Some(st) => return Ok(Outcome::Stale(format!("state is {}", st.status))),
    };
    engine.publish_transition(&st, StateStatus::Created).await?;
    engine.publish_dispatch(&st).await?;
    let ready = st.created_at.timestamp_millis().max(st.enqueue_after);
    let delay = u64::try_from(engine.now_ms().saturating_sub(ready)).unwrap_or(0);
    metrics::state_transitions(StateStatus::Queued.as_str(), 1);
    metrics::dispatch_delay("scheduler", Duration::from_millis(delay));
    Ok(Outcome::Done)
}

/// Parks a state that is not due for `ms`: on the stream when short, in
/// MongoDB (`parked: true`, announced by [`announce_due`]) when long.
async fn park_state(
    engine: &Engine,
    id: ObjectId,
    msg: &StateCreated,
    ms: i64,
) -> Result<Outcome, Error> {
    if ms <= NAK_PARK_LIMIT.as_millis() as i64 {
        return Ok(Outcome::Delay(park(ms)));
    }
    engine.store
        .states()
        .update_one(
            doc! {"_id": id, "status": StateStatus::Created.as_str(), "requeue_gen": msg.generation},
            doc! {"$set": {"parked": true}},
        )
        .await
        .map_err(exo_store::Error::from)?;
    exo_faults::point("store.write")?;
    Ok(Outcome::Done)
}

/// `scheduler`: announces parked states that fell due (at most `limit`),
/// with `Nats-Msg-Id = due:<state>:<generation>`. Returns how many.
pub async fn announce_due(engine: &Engine, limit: i64) -> Result<usize, Error> {
    let now = engine.now_ms();
    let mut cur = engine
        .store
        .states()
        .find(doc! {"status": StateStatus::Created.as_str(), "enqueue_after": {"$lte": now}, "parked": true})
        .limit(limit)
        .await
        .map_err(exo_store::Error::from)?;
    let mut out = Vec::new();
    while let Some(st) = cur.try_next().await.map_err(exo_store::Error::from)? {
        let msg = created_payload(&st);
        out.push(Outgoing::json(
            subjects::state_created(&st.namespace_name),
            m::due_msg_id(&msg.state_id.to_hex(), st.requeue_gen),
            &msg,
        )?);
    }
    let n = out.len();
    if n > 0 {
        engine.bus.publish_batch(out).await?;
    }
    Ok(n)
}
