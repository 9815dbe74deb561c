//! Publishing a message and waiting until the service that consumes it has
//! handled it: the HTTP API answers only what is true in MongoDB.
//!
//! A [`Replies`] holds one core NATS subscription on a private inbox prefix.
//! [`Replies::request`] publishes to JetStream (durably, as any message)
//! with an [`HEADER_REPLY_TO`] header naming a fresh subject under that
//! prefix, and waits for the consuming service's [`Reply`], sent once the
//! message's effects are committed (see the consume loop). The message
//! stays durable whatever happens to the requester: a requester that times
//! out (the service is down) knows the message will still be applied.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::oneshot;

use crate::{Bus, Error, Outgoing};
use exo_types::messages::{HEADER_REPLY_TO, Reply};

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// What became of a [`Replies::request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The consuming service handled the message.
    Replied(Reply),
    /// JetStream already held a message with this id (a client repeating
    /// its request): the first copy is, or was, handled; nothing to wait for.
    Duplicate,
    /// Stored, but no reply within the wait (the service is busy or down);
    /// the message will still be handled.
    TimedOut,
}

/// Requests with a reply from the consuming service.
#[derive(Clone)]
pub struct Replies {
    bus: Bus,
    prefix: String,
    waiting: Waiting,
    next: Arc<AtomicU64>,
}

impl Replies {
    /// Subscribes to a private inbox and routes replies to their requests
    /// until the connection closes.
    pub async fn start(bus: &Bus) -> Result<Self, Error> {
        let prefix = bus.client().new_inbox();
        let mut sub = bus
            .client()
            .subscribe(format!("{prefix}.*"))
            .await
            .map_err(|e| Error::js("reply inbox subscription", e))?;
        let waiting: Waiting = Arc::default();
        let routes = waiting.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(token) = msg
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|t| t.parse::<u64>().ok())
                else {
                    continue;
                };
                let Ok(reply) = serde_json::from_slice::<Reply>(&msg.payload) else {
                    tracing::debug!(subject = %msg.subject, "Ignored a malformed reply.");
                    continue;
                };
                let tx = routes.lock().ok().and_then(|mut m| m.remove(&token));
                if let Some(tx) = tx {
                    let _ = tx.send(reply);
                }
            }
        });
        Ok(Self {
            bus: bus.clone(),
            prefix,
            waiting,
            next: Arc::default(),
        })
    }

    /// Publishes `msg` durably and waits up to `wait` for the consuming
    /// service's reply.
    pub async fn request(&self, msg: Outgoing, wait: Duration) -> Result<Answer, Error> {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.waiting.lock() {
            m.insert(token, tx);
        }
        let _forget = Forget(&self.waiting, token);
        let publication = self
            .bus
            .prepare(msg.payload, &msg.msg_id)
            .await?
            .header(HEADER_REPLY_TO, format!("{}.{token}", self.prefix).as_str());
        let ack = self.bus.publish_raw(msg.subject, publication).await?;
        if ack.duplicate {
            return Ok(Answer::Duplicate);
        }
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(reply)) => Ok(Answer::Replied(reply)),
            Ok(Err(_)) | Err(_) => Ok(Answer::TimedOut),
        }
    }
}

/// Removes a request's route when the request ends, however it ends.
struct Forget<'a>(&'a Waiting, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&self.1);
        }
    }
}

/// Requests one replica handles at once in [`serve_requests`]; more wait
/// in the client's buffer (a flood makes requesters time out, it does not
/// exhaust the service).
pub const MAX_REQUESTS_IN_FLIGHT: usize = 256;

/// Serves core NATS requests on `subject` (queue group `queue`, so each
/// request reaches one replica) until `shutdown`: every message is handed
/// to `handle` in a task of its own, at most [`MAX_REQUESTS_IN_FLIGHT`] at
/// once.
pub async fn serve_requests<H, F>(
    client: async_nats::Client,
    subject: &'static str,
    queue: &'static str,
    shutdown: tokio_util::sync::CancellationToken,
    handle: H,
) where
    H: Fn(async_nats::Message) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    use futures::StreamExt;
    let mut sub = match client.queue_subscribe(subject, queue.into()).await {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, subject, "Cannot serve requests over NATS.");
            return;
        }
    };
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS_IN_FLIGHT));
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => return },
        };
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        let work = handle(msg);
        tokio::spawn(async move {
            work.await;
            drop(slot);
        });
    }
}
