//! Runs started by events: the `trigger` replicas share the durable
//! consumer `trigger-inbound` on the inbound stream (see
//! [`exo_engine::events`]). Each message starts one run per graph whose
//! EVENT trigger binds its subject; a message no graph binds, or that
//! cannot start a bound graph (its body lacks what the binding reads, the
//! template is not VALID, store keys are missing), is recorded on the
//! dead-letter stream with the reason, once per graph, and no run is
//! written for it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use exo_bus::{ConsumeOptions, Delivery, Disposition};
use exo_engine::events::{self, Bound, Inbound};
use exo_engine::{Engine, Outcome};
use exo_types::subject_pattern;
use exo_types::subjects::{CONSUMER_INBOUND, STREAM_INBOUND};
use tokio_util::sync::CancellationToken;

use crate::handlers;

/// How often the bindings are read again and the stream's subjects brought
/// up to date.
pub const RESYNC_EVERY: Duration = Duration::from_secs(3);

/// Messages handled at once.
const CONCURRENCY: usize = 32;

/// The bindings as last read, shared by the handlers.
type Bindings = Arc<RwLock<Vec<Bound>>>;

/// Consumes the inbound stream until `shutdown`.
pub async fn serve(engine: Engine, shutdown: CancellationToken) {
    let (consumer, created, bound) = loop {
        match bind(&engine).await {
            Ok(b) => break b,
            Err(error) => tracing::warn!(%error, "Inbound stream not ready; retrying."),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let bindings: Bindings = Arc::new(RwLock::new(bound));
    let resync = tokio::spawn(resync(engine.clone(), bindings.clone(), shutdown.clone()));
    let opts = ConsumeOptions {
        stream: STREAM_INBOUND.to_string(),
        consumer: CONSUMER_INBOUND.to_string(),
        concurrency: CONCURRENCY,
        batch: CONCURRENCY,
        retry_backoff: exo_bus::RetryBackoff::default(),
        budget: None,
    };
    let e2 = engine.clone();
    let handler = move |d: Delivery| {
        let (engine, bindings) = (e2.clone(), bindings.clone());
        async move { handle(&engine, &bindings, created, d).await }
    };
    let consumed = exo_bus::consume(engine.bus.clone(), consumer, opts, shutdown, handler);
    if let Err(error) = consumed.await {
        tracing::error!(%error, "The inbound consumer stopped.");
    }
    resync.abort();
}

/// The stream brought up to date, its creation time, the consumer and the
/// bindings.
async fn bind(
    engine: &Engine,
) -> Result<(exo_bus::PullConsumer, i64, Vec<Bound>), exo_engine::Error> {
    let bound = events::sync_inbound(engine).await?;
    let created = engine.bus.inbound_created_ms().await?;
    let consumer = engine
        .bus
        .service_consumer(STREAM_INBOUND, CONSUMER_INBOUND, &[])
        .await?;
    Ok((consumer, created, bound))
}

async fn resync(engine: Engine, bindings: Bindings, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RESYNC_EVERY) => {}
        }
        match events::sync_inbound(&engine).await {
            Ok(b) => {
                if let Ok(mut w) = bindings.write() {
                    *w = b;
                }
            }
            Err(error) => tracing::warn!(%error, "Could not bring the inbound stream up to date."),
        }
    }
}

/// The bindings that match `subject`; read again once when none does (a
/// graph stored a moment ago).
async fn matching(
    engine: &Engine,
    bindings: &Bindings,
    subject: &str,
) -> Result<Vec<Bound>, exo_engine::Error> {
    let pick = |all: &[Bound]| -> Vec<Bound> {
        all.iter()
            .filter(|b| subject_pattern::matches(&b.binding.subject, subject))
            .cloned()
            .collect()
    };
    let found = bindings.read().map(|b| pick(&b)).unwrap_or_default();
    if !found.is_empty() {
        return Ok(found);
    }
    let fresh = events::bindings(&engine.store).await?;
    let found = pick(&fresh);
    if let Ok(mut w) = bindings.write() {
        *w = fresh;
    }
    Ok(found)
}

/// Starts the runs of one message.
async fn handle(engine: &Engine, bindings: &Bindings, created: i64, d: Delivery) -> Disposition {
    let bound = match matching(engine, bindings, &d.subject).await {
        Ok(b) => b,
        Err(e) => return Disposition::Retry(e.to_string()),
    };
    if bound.is_empty() {
        return Disposition::Reject(format!("no graph binds {}", d.subject));
    }
    let msg_id = d.msg_id();
    let msg = Inbound {
        subject: &d.subject,
        payload: &d.payload,
        msg_id: msg_id.as_deref(),
        place: (created, d.seq),
    };
    for b in &bound {
        match start(engine, b, &msg).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                if let Err(e) = dead_letter(engine, b, &msg, &reason).await {
                    return Disposition::Retry(e.to_string());
                }
            }
            Err(e) => return Disposition::Retry(e.to_string()),
        }
    }
    Disposition::Ack
}

/// Starts `b`'s graph for `msg`; `Ok(Err(reason))` when it cannot.
async fn start(
    engine: &Engine,
    b: &Bound,
    msg: &Inbound<'_>,
) -> Result<Result<(), String>, exo_engine::Error> {
    let lg = match engine.graphs.get(&b.ns, &b.graph).await? {
        Ok(lg) => lg,
        Err(u) => return Ok(Err(u.to_string())),
    };
    let cmd = match events::command(b, &lg, msg, engine.now_ms()) {
        Ok(c) => c,
        Err(reason) => return Ok(Err(reason)),
    };
    let queued_by = format!("{STREAM_INBOUND}:{}", msg.place.1);
    match handlers::on_trigger(engine, &b.ns, cmd, &queued_by).await? {
        Outcome::Reject(reason) => Ok(Err(reason)),
        Outcome::Done | Outcome::Stale(_) | Outcome::Delay(_) => Ok(Ok(())),
    }
}

async fn dead_letter(
    engine: &Engine,
    b: &Bound,
    msg: &Inbound<'_>,
    reason: &str,
) -> Result<(), exo_bus::Error> {
    let reason = format!("graph {}/{}: {reason}", b.ns, b.graph);
    tracing::warn!(exo.namespace = %b.ns, exo.graph = %b.graph, %reason, "An event could not start a run.");
    let id = format!("inb:{}:{}:{}:{}", msg.place.0, msg.place.1, b.ns, b.graph);
    engine
        .bus
        .dead_letter(
            STREAM_INBOUND,
            CONSUMER_INBOUND,
            msg.subject,
            &reason,
            msg.payload,
            id,
        )
        .await
}
