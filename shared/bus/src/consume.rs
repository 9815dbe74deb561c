//! The consume loop shared by every service.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::{Bus, PayloadError};
use exo_types::messages::{
    HEADER_PROTOCOL, HEADER_REPLY_TO, PROTOCOL_VERSION, Reply, ReplyOutcome,
};

/// What to do with a message once the handler returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Effects applied; remove the message.
    Ack,
    /// Nothing to do (the message no longer applies): remove it, and tell a
    /// requester why.
    Stale(String),
    /// Not now: redeliver after the delay (scheduling, not failure).
    Delay(Duration),
    /// A transient (infrastructure) failure: redeliver after a capped
    /// exponential backoff, for as long as it takes. Such a message is never
    /// dead-lettered: losing it would strand its state.
    Retry(String),
    /// The message can never be handled: dead-letter it with the reason and
    /// stop redelivery.
    Reject(String),
}

/// One delivered message.
pub struct Delivery {
    /// Subject it arrived on.
    pub subject: String,
    /// Payload bytes.
    pub payload: Bytes,
    /// Delivery count (1 on first delivery).
    pub delivered: i64,
    /// Stream sequence of the message (the same on every redelivery).
    pub seq: u64,
    message: Arc<jetstream::Message>,
}

impl Delivery {
    /// Extends the ack deadline while long work is in progress.
    pub async fn progress(&self) {
        if let Err(error) = self.message.ack_with(AckKind::Progress).await {
            tracing::debug!(%error, "Could not send progress ack.");
        }
    }

    /// The `Nats-Msg-Id` header, if any.
    pub fn msg_id(&self) -> Option<String> {
        self.header("Nats-Msg-Id")
    }

    /// The header `name`, if any.
    pub fn header(&self, name: &str) -> Option<String> {
        self.message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    }
}

/// Settings of one consume loop.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// Stream name (for dead letters).
    pub stream: String,
    /// Consumer name (for dead letters).
    pub consumer: String,
    /// Messages handled at once.
    pub concurrency: usize,
    /// Messages requested per pull.
    pub batch: usize,
    /// Delays before redelivering a message whose handler failed
    /// ([`Disposition::Retry`]).
    pub retry_backoff: RetryBackoff,
    /// Shared by the consume loops of one service (its lanes): no loop pulls
    /// while the lanes together handle [`SharedBudget::limit`] messages, so
    /// the lanes bound the service's work together while each keeps its own
    /// queue. `None`: this loop's `concurrency` is the only bound.
    pub budget: Option<SharedBudget>,
}

/// Messages in flight across the consume loops of one service (see
/// [`ConsumeOptions::budget`]). A soft bound: loops that pull at the same
/// moment may together overshoot it by one pull each.
#[derive(Debug, Clone)]
pub struct SharedBudget {
    inflight: Arc<std::sync::atomic::AtomicUsize>,
    limit: usize,
}

impl SharedBudget {
    /// A budget of `limit` messages in flight (at least 1).
    pub fn new(limit: usize) -> Self {
        Self {
            inflight: Arc::default(),
            limit: limit.max(1),
        }
    }

    /// The bound.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Messages in flight now, across the loops sharing this budget.
    pub fn inflight(&self) -> usize {
        self.inflight.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn free(&self) -> usize {
        self.limit.saturating_sub(self.inflight())
    }

    fn take(&self) -> BudgetSlot {
        self.inflight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        BudgetSlot(self.inflight.clone())
    }
}

/// One message's share of a [`SharedBudget`], given back when dropped.
struct BudgetSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for BudgetSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Longest backoff between two deliveries of a message whose handler failed.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Redelivery delays of a message whose handler failed (an infrastructure
/// error): `first`, doubling, capped at `max`. There is no limit on the
/// number of deliveries: such a message is never dead-lettered, it waits
/// for MongoDB or NATS to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBackoff {
    /// Delay after the first failed delivery.
    pub first: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for RetryBackoff {
    /// 250 ms doubling, capped at 30 s.
    fn default() -> Self {
        Self {
            first: Duration::from_millis(250),
            max: MAX_BACKOFF,
        }
    }
}

impl RetryBackoff {
    /// Delay before the next delivery of a message whose handler failed
    /// `delivered` times.
    pub fn after(&self, delivered: i64) -> Duration {
        let exp = delivered.clamp(1, 16) as u32;
        self.first.saturating_mul(2u32.pow(exp - 1)).min(self.max)
    }
}

/// How often a loop whose lanes hold the whole shared budget looks again.
const BUDGET_POLL: Duration = Duration::from_millis(5);

/// How long one pull request waits for messages.
pub const PULL_EXPIRES: Duration = Duration::from_millis(500);

/// Runs until `shutdown` is cancelled: pulls messages, hands each to
/// `handler` (up to `concurrency` at once) and settles it by the returned
/// [`Disposition`]. Messages in flight at shutdown finish first.
///
/// Flow control: a pull request asks for at most as many messages as there
/// are free handler slots, so every delivered message starts at once and is
/// kept alive by progress acks from the moment it arrives; nothing waits in
/// a client-side buffer while its 1 s ack wait runs out (which would have it
/// delivered a second time while the first copy is still queued).
pub async fn consume<H, F>(
    bus: Bus,
    consumer: PullConsumer,
    opts: ConsumeOptions,
    shutdown: CancellationToken,
    handler: H,
) -> Result<(), crate::Error>
where
    H: Fn(Delivery) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Disposition> + Send,
{
    use futures::stream::FuturesUnordered;
    let handler = Arc::new(handler);
    let concurrency = opts.concurrency.max(1);
    // Pull again only once a quarter of the slots are free (or nothing runs),
    // so a busy service does not send one pull request per message.
    let low_water = (concurrency / 4).max(1);
    let mut inflight = FuturesUnordered::new();
    while !shutdown.is_cancelled() {
        let mut free = concurrency - inflight.len();
        if let Some(budget) = &opts.budget {
            free = free.min(budget.free());
            if free == 0 && inflight.is_empty() {
                // Other lanes hold the whole budget: look again shortly.
                pause(&mut inflight, BUDGET_POLL, &shutdown).await;
                continue;
            }
        }
        if free < low_water && !inflight.is_empty() {
            inflight.next().await;
            continue;
        }
        let want = free.min(opts.batch.max(1));
        let batch = consumer
            .batch()
            .max_messages(want)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let batch = match batch {
            Ok(b) => b,
            Err(error) => {
                tracing::warn!(%error, consumer = %opts.consumer, "Could not pull; retrying.");
                pause(&mut inflight, Duration::from_secs(1), &shutdown).await;
                continue;
            }
        };
        let batch = batch.take_until(shutdown.clone().cancelled_owned());
        tokio::pin!(batch);
        // The server ends a pull request at its expiry; a request whose end
        // never arrives (a lost connection) is abandoned a little later.
        let abandon = tokio::time::sleep(PULL_EXPIRES + Duration::from_secs(2));
        tokio::pin!(abandon);
        loop {
            tokio::select! {
                _ = &mut abandon => break,
                item = batch.next() => match item {
                    Some(Ok(message)) => {
                        let slot = opts.budget.as_ref().map(SharedBudget::take);
                        let bus = &bus;
                        let opts = &opts;
                        let handler = &*handler;
                        inflight.push(async move {
                            settle(bus, opts, message, handler).await;
                            drop(slot);
                        });
                    }
                    Some(Err(error)) => tracing::debug!(%error, "Pull error."),
                    None => break,
                },
                Some(()) = inflight.next(), if !inflight.is_empty() => {}
            }
        }
    }
    while inflight.next().await.is_some() {}
    Ok(())
}

/// Waits `d` (less if `shutdown` comes) while the handlers in flight go on.
async fn pause<Fut: std::future::Future<Output = ()>>(
    inflight: &mut futures::stream::FuturesUnordered<Fut>,
    d: Duration,
    shutdown: &CancellationToken,
) {
    let pause = tokio::time::sleep(d);
    tokio::pin!(pause);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = &mut pause => break,
            Some(()) = inflight.next(), if !inflight.is_empty() => {}
        }
    }
}

async fn settle<H, F>(bus: &Bus, opts: &ConsumeOptions, message: jetstream::Message, handler: &H)
where
    H: Fn(Delivery) -> F,
    F: std::future::Future<Output = Disposition>,
{
    let started = std::time::Instant::now();
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
    let message = Arc::new(message);
    // Heartbeats keep the message while the handler works, so the ack wait
    // can be short and a crashed service's messages come back quickly.
    let heartbeat = {
        let m = message.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::SERVICE_HEARTBEAT).await;
                if m.ack_with(AckKind::Progress).await.is_err() {
                    return;
                }
            }
        })
    };
    let kind = exo_metrics::subject_kind(&message.subject);
    let span = crate::trace::message_span(
        &format!("{} {kind}", opts.consumer),
        &message.subject,
        message.headers.as_ref(),
    );
    let disposition = run_handler(bus, &message, delivered, handler, span).await;
    heartbeat.abort();
    let record = |outcome| {
        exo_metrics::message_handled(&opts.consumer, &kind, outcome, started.elapsed());
    };
    if exo_faults::point("bus.settle").is_err() {
        // Injected: leave the message unsettled; it comes back after the ack wait.
        record(exo_metrics::Outcome::Unsettled);
        return;
    }
    record(outcome_of(&disposition));
    let reply = reply_of(&message, &disposition);
    let done = matches!(disposition, Disposition::Ack | Disposition::Stale(_));
    let large = crate::payloads::payload_ref(&message).is_some();
    let result = match disposition {
        // A large payload's object is deleted once the ack is confirmed: a
        // redelivery after a lost ack must still find it.
        Disposition::Ack | Disposition::Stale(_) if large => message.double_ack().await,
        Disposition::Ack | Disposition::Stale(_) => message.ack().await,
        Disposition::Delay(d) => message.ack_with(AckKind::Nak(Some(d))).await,
        Disposition::Retry(reason) => {
            let next = opts.retry_backoff.after(delivered);
            tracing::warn!(subject = %message.subject, delivered, next_ms = next.as_millis() as u64, %reason, "Handler failed; will redeliver.");
            message.ack_with(AckKind::Nak(Some(next))).await
        }
        Disposition::Reject(reason) => {
            reject(bus, opts, &message, reason).await;
            Ok(())
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "Could not settle a message; it will be redelivered.");
    } else if done && large {
        bus.forget_payload(&message).await;
    }
    if let Some((to, reply)) = reply
        && let Ok(body) = serde_json::to_vec(&reply)
        && let Err(error) = bus.client().publish(to, body.into()).await
    {
        tracing::debug!(%error, "Could not reply to a requester.");
    }
}

/// How long a message of a newer protocol waits before it is offered again.
pub const NEWER_PROTOCOL_DELAY: Duration = Duration::from_secs(5);

/// The message's protocol version when it is newer than this build's
/// [`PROTOCOL_VERSION`] (a message without the header is version 1).
fn newer_protocol(message: &jetstream::Message) -> Option<u32> {
    let ours: u32 = PROTOCOL_VERSION.parse().unwrap_or(1);
    let theirs: u32 = message
        .headers
        .as_ref()?
        .get(HEADER_PROTOCOL)?
        .as_str()
        .trim()
        .parse()
        .ok()?;
    (theirs > ours).then_some(theirs)
}

/// Reads the payload (from the object store when large) and runs the
/// handler in the message's `span` (child of the trace context it carries).
async fn run_handler<H, F>(
    bus: &Bus,
    message: &Arc<jetstream::Message>,
    delivered: i64,
    handler: &H,
    span: tracing::Span,
) -> Disposition
where
    H: Fn(Delivery) -> F,
    F: std::future::Future<Output = Disposition>,
{
    if let Some(version) = newer_protocol(message) {
        // A newer version's message during a rolling upgrade: left for a
        // replica that knows it (never dropped, never half-understood).
        tracing::warn!(subject = %message.subject, version, "A message of a newer protocol; left for a newer replica.");
        return Disposition::Delay(NEWER_PROTOCOL_DELAY);
    }
    match bus.payload_of(message).await {
        Ok(payload) => {
            let delivery = Delivery {
                subject: message.subject.to_string(),
                payload,
                delivered,
                seq: seq_of(message),
                message: message.clone(),
            };
            tracing::Instrument::instrument(handler(delivery), span).await
        }
        Err(PayloadError::Missing(object)) => {
            Disposition::Reject(format!("payload object {object} is missing"))
        }
        Err(PayloadError::Bus(error)) => Disposition::Retry(error.to_string()),
    }
}

fn outcome_of(d: &Disposition) -> exo_metrics::Outcome {
    use exo_metrics::Outcome;
    match d {
        Disposition::Ack => Outcome::Ack,
        Disposition::Stale(_) => Outcome::Stale,
        Disposition::Delay(_) => Outcome::Delay,
        Disposition::Retry(_) => Outcome::Retry,
        Disposition::Reject(_) => Outcome::Reject,
    }
}

/// The reply a requester asked for ([`HEADER_REPLY_TO`]), once the
/// disposition is final: none while the message will come back.
fn reply_of(message: &jetstream::Message, d: &Disposition) -> Option<(String, Reply)> {
    let to = message
        .headers
        .as_ref()?
        .get(HEADER_REPLY_TO)?
        .as_str()
        .to_string();
    let (outcome, reason) = match d {
        Disposition::Ack => (ReplyOutcome::Done, None),
        Disposition::Stale(r) => (ReplyOutcome::Stale, Some(r.clone())),
        Disposition::Reject(r) => (ReplyOutcome::Rejected, Some(r.clone())),
        Disposition::Delay(_) | Disposition::Retry(_) => return None,
    };
    Some((to, Reply { outcome, reason }))
}

/// Copies a message to the dead-letter stream with `reason`, then stops its
/// redelivery. If the copy fails, the message is redelivered instead.
async fn reject(bus: &Bus, opts: &ConsumeOptions, message: &jetstream::Message, reason: String) {
    let id = exo_types::messages::dead_letter_msg_id(&opts.consumer, seq_of(message));
    if let Err(error) = bus
        .dead_letter(
            &opts.stream,
            &opts.consumer,
            &message.subject,
            &reason,
            &message.payload,
            id,
        )
        .await
    {
        tracing::warn!(%error, "Could not record a dead letter; will redeliver.");
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
            .await;
        return;
    }
    exo_metrics::dead_letter(&opts.stream, &opts.consumer);
    tracing::warn!(subject = %message.subject, %reason, "Message dead-lettered.");
    if let Err(error) = message.ack_with(AckKind::Term).await {
        tracing::debug!(%error, "Could not term a message.");
    }
}

fn seq_of(message: &jetstream::Message) -> u64 {
    message.info().map(|i| i.stream_sequence).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_250_ms_and_is_capped() {
        let b = RetryBackoff::default();
        assert_eq!(b.after(1), Duration::from_millis(250));
        assert_eq!(b.after(2), Duration::from_millis(500));
        assert_eq!(b.after(7), Duration::from_millis(16_000));
        assert_eq!(b.after(8), MAX_BACKOFF);
        assert_eq!(b.after(10_000), MAX_BACKOFF);
    }
}
