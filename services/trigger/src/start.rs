//! Starting runs on request: any NATS client publishes a
//! [`StartRun`] on `exo.v1.<ns>.start` (core NATS, queue group
//! `exo-trigger`, so one replica handles each request).
//!
//! The request is checked as the api checks a trigger (graph known and
//! VALID, root inputs resolvable, required store keys present) before
//! anything is written, then handled as a trigger command (run, store and
//! root state in one transaction). With a reply subject the client gets a
//! [`StartReply`]: the run id, or the status and detail the api would
//! answer. Without one, a request that cannot start a run is recorded on
//! `exo.dlq.v1.START.trigger` with the reason.
//!
//! Idempotency: with an `idempotency_key` (or a `Nats-Msg-Id` header) the
//! run id is derived from the key, so repeating the request, now or in a
//! year, answers the same run and starts nothing new. Without a key each
//! request starts a run; a client that retries after a timeout should send
//! a key.

use exo_engine::common::root_inputs;
use exo_engine::graphs::Unusable;
use exo_engine::{Engine, Outcome};
use exo_types::messages::{StartReply, StartRun, TriggerCommand};
use exo_types::names::{Namespace, RunId};
use exo_types::{ids, subjects};
use tokio_util::sync::CancellationToken;

use crate::handlers;

/// Queue group of the `trigger` replicas on [`subjects::START_SUBJECTS`].
pub const QUEUE_GROUP: &str = "exo-trigger";

/// Serves start requests until `shutdown`.
pub async fn serve(engine: Engine, shutdown: CancellationToken) {
    let client = engine.bus.client().clone();
    let subject = subjects::START_SUBJECTS;
    exo_bus::serve_requests(client, subject, QUEUE_GROUP, shutdown, move |msg| {
        let engine = engine.clone();
        async move { handle(&engine, msg).await }
    })
    .await;
}

/// Answers one request (or dead-letters it when it has no reply subject).
async fn handle(engine: &Engine, msg: async_nats::Message) {
    let reply = start(engine, &msg).await;
    match (&msg.reply, reply.status) {
        (Some(to), _) => {
            let body = serde_json::to_vec(&reply).unwrap_or_default();
            if let Err(error) = engine.bus.client().publish(to.clone(), body.into()).await {
                tracing::warn!(%error, "Could not answer a start request.");
            }
        }
        (None, 200) => {}
        (None, _) => {
            let reason = reply.detail.unwrap_or_default();
            let id = format!("start:{}", uuid::Uuid::new_v4());
            let dl = engine.bus.dead_letter(
                subjects::START_DLQ,
                QUEUE_GROUP,
                &msg.subject,
                &reason,
                &msg.payload,
                id,
            );
            if let Err(error) = dl.await {
                tracing::warn!(%error, %reason, "Could not dead-letter a start request.");
            }
        }
    }
}

/// Checks the request and starts the run.
pub async fn start(engine: &Engine, msg: &async_nats::Message) -> StartReply {
    let ns = match subjects::namespace_of(&msg.subject).map(Namespace::parse) {
        Some(Ok(ns)) => ns,
        Some(Err(e)) => return StartReply::refused(400, e.to_string()),
        None => return StartReply::refused(400, format!("no namespace in {}", msg.subject)),
    };
    let req: StartRun = match serde_json::from_slice(&msg.payload) {
        Ok(r) => r,
        Err(e) => return StartReply::refused(400, format!("not a start request: {e}")),
    };
    let header_key = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_string());
    let cmd = command(engine, &ns, req, header_key);
    match check(engine, &ns, &cmd).await {
        Ok(()) => {}
        Err(reply) => return reply,
    }
    let queued_by = format!("start:{}", cmd.run_id);
    let run_id = cmd.run_id.clone();
    match handlers::on_trigger(engine, &ns, cmd, &queued_by).await {
        Ok(Outcome::Done) => StartReply::started(run_id),
        Ok(Outcome::Reject(reason) | Outcome::Stale(reason)) => StartReply::refused(400, reason),
        Ok(Outcome::Delay(_)) => StartReply::refused(503, "try again"),
        Err(error) => {
            tracing::error!(%error, exo.run_id = %run_id, "A start request failed.");
            StartReply::refused(500, "Internal server error")
        }
    }
}

/// The trigger command of a request: its run id derived from the
/// idempotency key (the field, else the header), else a new UUID.
fn command(engine: &Engine, ns: &str, req: StartRun, header_key: Option<String>) -> TriggerCommand {
    let run_id = match req.idempotency_key.or(header_key) {
        Some(key) => ids::idempotent_run_id(ns, &req.run.graph_name, &key),
        None => RunId::trusted(uuid::Uuid::new_v4().to_string()),
    };
    TriggerCommand {
        run_id,
        run: req.run,
        requested_at_ms: Some(engine.now_ms()),
    }
}

/// What the api checks before it accepts a trigger, with its statuses.
async fn check(engine: &Engine, ns: &str, cmd: &TriggerCommand) -> Result<(), StartReply> {
    let lg = match engine.graphs.get(ns, &cmd.run.graph_name).await {
        Ok(Ok(lg)) => lg,
        Ok(Err(u @ Unusable::NotFound(..))) => return Err(StartReply::refused(404, u.to_string())),
        Ok(Err(u)) => return Err(StartReply::refused(400, u.to_string())),
        Err(error) => {
            tracing::error!(%error, "Could not read a graph template.");
            return Err(StartReply::refused(500, "Internal server error"));
        }
    };
    root_inputs(&lg, cmd)
        .map(drop)
        .map_err(|e| StartReply::refused(400, e.to_string()))
}
