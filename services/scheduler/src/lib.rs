//! `exo-scheduler`: dispatches states to runtime queues.
//!
//! Consumes `exo.v1.<ns>.state.created`. A due state moves CREATED → QUEUED
//! (its attempt incremented) and is published on
//! `exo.v1.<ns>.dispatch.<node>` with `Nats-Msg-Id = dsp:<state>:<attempt>`.
//! A state due within 2 s is parked on the stream (nak with the remaining
//! delay); a later one is marked `parked` in MongoDB and its message acked,
//! and a sweep every [`DUE_EVERY`] announces parked states that fell due, so
//! delayed work never holds the consumer's ack-pending slots.
//!
//! A reconciler re-announces CREATED states whose hand-off was lost (a writer
//! that crashed between its commit and its publish): it reads only the
//! CREATED range of states due for longer than [`RECONCILE_AFTER`]. Every
//! [`OUTBOX_EVERY`] it relays the state transitions a writer committed to
//! the outbox but did not publish (see `exo_engine::lifecycle`).

pub mod handlers;

use std::time::Duration;

use exo_bus::{Delivery, Disposition};
use exo_engine::Engine;
use exo_engine::common::created_msg;
use exo_engine::worker::{self, WorkerSpec};
use exo_store::mongodb::bson::doc;
use exo_types::messages::StateCreated;
use exo_types::status::StateStatus;
use exo_types::subjects;
use futures::TryStreamExt;
use tokio_util::sync::CancellationToken;

/// How long a due state may stay CREATED before the reconciler re-announces it.
pub const RECONCILE_AFTER: Duration = Duration::from_secs(20);
/// How often the reconciler looks.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// How often parked states that fell due are looked for.
pub const DUE_EVERY: Duration = Duration::from_millis(200);
/// Parked states announced per pass.
pub const DUE_BATCH: i64 = 1000;

pub use exo_engine::worker::Config;

/// Runs the service until `shutdown` is cancelled.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let lane = (
        subjects::CONSUMER_SCHEDULER,
        &[subjects::STATES_SUBJECTS][..],
    );
    let spec = WorkerSpec::single("exo-scheduler", subjects::STREAM_STATES, lane, 128);
    worker::run(cfg, shutdown, spec, handle, reconcile).await
}

/// Handles one `state.created` announcement.
async fn handle(engine: Engine, d: Delivery) -> Disposition {
    worker::handle_json(&d, |m: StateCreated| {
        handlers::on_created(&engine, m, d.seq)
    })
    .await
}

async fn reconcile(engine: Engine, shutdown: CancellationToken) {
    let due = tokio::spawn(drain_every(
        (engine.clone(), shutdown.clone()),
        (DUE_EVERY, DUE_BATCH),
        "Announcing due states",
        |e| async move { handlers::announce_due(&e, DUE_BATCH).await },
    ));
    let outbox = tokio::spawn(drain_every(
        (engine.clone(), shutdown.clone()),
        (OUTBOX_EVERY, OUTBOX_BATCH),
        "Relaying the outbox",
        |e| async move { e.relay_stale(OUTBOX_BATCH).await },
    ));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
        match reconcile_once(&engine).await {
            Ok(n) => exo_service::metrics::reconciler_redrives(n as u64),
            Err(error) => tracing::warn!(%error, "Reconciliation pass failed."),
        }
        match reap_leases(&engine).await {
            Ok(n) => exo_service::metrics::lease_expiries(n as u64),
            Err(error) => tracing::warn!(%error, "Lease reaping failed."),
        }
    }
    let _ = tokio::join!(due, outbox);
}

/// How often outbox documents left behind are looked for (see
/// `Engine::relay_stale`).
pub const OUTBOX_EVERY: Duration = Duration::from_secs(1);
/// Outbox documents relayed per pass.
pub const OUTBOX_BATCH: i64 = 100;

/// Runs `pass` every `every` (at once again while a pass handles a full
/// `batch`) until `shutdown`: parked states falling due (see
/// `Engine::on_created`), outbox documents left behind.
async fn drain_every<F, Fut>(
    (engine, shutdown): (Engine, CancellationToken),
    (every, batch): (Duration, i64),
    what: &'static str,
    pass: F,
) where
    F: Fn(Engine) -> Fut,
    Fut: std::future::Future<Output = Result<usize, exo_engine::Error>>,
{
    loop {
        let n = match pass(engine.clone()).await {
            Ok(n) => n,
            Err(error) => {
                tracing::warn!(%error, "{what} failed.");
                0
            }
        };
        if n as i64 >= batch {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// How long a re-dispatched lease is kept, so that a failed publish is
/// retried by a later pass instead of stranding the state.
pub const REAP_RETRY: Duration = Duration::from_secs(30);

/// Re-dispatches states handed out over HTTP (`POST /states/enqueue`) whose
/// lease expired without a result (a dead Python runtime, upstream issue
/// #444): the attempt is incremented and the state goes back on its node's
/// queue. The claim keeps a short lease ([`REAP_RETRY`]) that is removed once
/// the dispatch is published, so a crash or a failed publish in between is
/// retried by a later pass. Returns how many were re-dispatched.
pub async fn reap_leases(engine: &Engine) -> anyhow::Result<usize> {
    let now = engine.now_ms();
    let queued = StateStatus::Queued.as_str();
    let mut cur = engine
        .store
        .states()
        .find(doc! {"lease_until": {"$lte": now}, "status": queued})
        .limit(1000)
        .await?;
    let mut expired = Vec::new();
    while let Some(st) = cur.try_next().await? {
        expired.push(st);
    }
    let mut n = 0;
    let retry_at = now + REAP_RETRY.as_millis() as i64;
    for st in expired {
        let claimed = engine
            .store
            .states()
            .find_one_and_update(
                doc! {"_id": st.id, "status": queued, "attempt": exo_store::filters::attempt_is(st.attempt), "lease_until": {"$lte": now}},
                doc! {"$inc": {"attempt": 1i64}, "$set": {"lease_until": retry_at},
                      "$unset": {"lease_attempt": "", "lease_holder": ""}},
            )
            .return_document(exo_store::mongodb::options::ReturnDocument::After)
            .await?;
        if let Some(st) = claimed {
            exo_faults::point("store.write")?;
            tracing::info!(exo.state_id = %st.id, attempt = st.attempt, "Lease expired; dispatching again.");
            engine.publish_dispatch(&st).await?;
            engine
                .store
                .states()
                .update_one(
                    doc! {"_id": st.id, "attempt": exo_store::filters::attempt_is(st.attempt), "lease_until": retry_at},
                    doc! {"$unset": {"lease_until": ""}},
                )
                .await?;
            exo_faults::point("store.write")?;
            n += 1;
        }
    }
    Ok(n)
}

/// Re-announces CREATED states that have been due for longer than
/// [`RECONCILE_AFTER`]. Returns how many were re-announced.
pub async fn reconcile_once(engine: &Engine) -> anyhow::Result<usize> {
    let horizon = engine.now_ms() - RECONCILE_AFTER.as_millis() as i64;
    let mut cur = engine
        .store
        .states()
        .find(doc! {"status": StateStatus::Created.as_str(), "enqueue_after": {"$lte": horizon}})
        .limit(1000)
        .await?;
    let mut out = Vec::new();
    while let Some(st) = cur.try_next().await? {
        out.push(created_msg(&st)?);
    }
    let n = out.len();
    if n > 0 {
        tracing::info!(
            count = n,
            "Re-announcing CREATED states whose hand-off was lost."
        );
        engine.bus.publish_batch(out).await?;
    }
    Ok(n)
}
