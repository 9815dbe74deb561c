//! Webhooks (ours): the `api` replicas share the durable consumer
//! `api-webhooks` on the lifecycle events (runs ending, state failures;
//! [`exo_types::subjects::WEBHOOK_FILTERS`]). For each event, every webhook
//! of the event's graph that asks for its type gets an HTTP POST of the
//! event as a structured-mode CloudEvent (`application/cloudevents+json`),
//! signed with HMAC-SHA256 over the body under the graph secret the webhook
//! names (`X-Exo-Signature-256: sha256=<hex>`).
//!
//! Each (event, webhook) pair is one delivery, recorded in
//! `WebhookDeliveries` under `<ce-id>@<hash of the url>` with every attempt
//! (time, HTTP status or error, duration). A delivery that got a 2xx is
//! DELIVERED and never sent again; one that failed is retried with
//! exponential backoff (the event is redelivered after the delay, and only
//! its undelivered webhooks are called), up to the configured attempts,
//! then FAILED. Delivery runs beside the engine, on its own consumer:
//! a slow or failing receiver delays nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exo_bus::{ConsumeOptions, Delivery, Disposition};
use exo_store::mongodb::bson::{Document, doc};
use exo_types::graph::Webhook;
use exo_types::subjects::{CONSUMER_WEBHOOKS, STREAM_EVENTS, WEBHOOK_FILTERS};
use ring::{digest, hmac};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::AppState;

/// Events handled at once per replica.
const CONCURRENCY: usize = 32;
/// How long a graph's webhooks are cached.
const CACHE_TTL: Duration = Duration::from_secs(2);
/// How long delivery records are kept.
const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Delivery settings (`api.webhook_*`).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Attempts per delivery before it is FAILED.
    pub attempts: u32,
    /// Wait after the first failed attempt; doubled after each next one.
    pub backoff: Duration,
    /// Timeout of one attempt.
    pub timeout: Duration,
}

/// A graph's webhooks with their keys, as last read.
#[derive(Clone)]
struct Hook {
    webhook: Webhook,
    key: Option<String>,
}

type Cache = Arc<Mutex<HashMap<(String, String), (Instant, Arc<Vec<Hook>>)>>>;

/// Delivers webhooks until `shutdown`.
pub async fn serve(state: AppState, shutdown: CancellationToken) {
    let consumer = loop {
        match state
            .engine
            .bus
            .service_consumer(STREAM_EVENTS, CONSUMER_WEBHOOKS, &WEBHOOK_FILTERS)
            .await
        {
            Ok(c) => break c,
            Err(error) => tracing::warn!(%error, "Webhook consumer not ready; retrying."),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let client = match reqwest::Client::builder()
        .timeout(state.settings.webhooks.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("exo-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(%error, "No HTTP client: webhooks are not delivered.");
            return;
        }
    };
    let cache: Cache = Arc::default();
    let opts = ConsumeOptions {
        stream: STREAM_EVENTS.to_string(),
        consumer: CONSUMER_WEBHOOKS.to_string(),
        concurrency: CONCURRENCY,
        batch: CONCURRENCY,
        retry_backoff: exo_bus::RetryBackoff::default(),
        budget: None,
    };
    let bus = state.engine.bus.clone();
    let handler = move |d: Delivery| {
        let (state, client, cache) = (state.clone(), client.clone(), cache.clone());
        async move { handle(&state, &client, &cache, d).await }
    };
    if let Err(error) = exo_bus::consume(bus, consumer, opts, shutdown, handler).await {
        tracing::error!(%error, "The webhook consumer stopped.");
    }
}

/// One lifecycle event: delivered to every webhook of its graph that asks
/// for it and has not had it yet; redelivered after the shortest backoff
/// while one of them failed with attempts left.
async fn handle(
    state: &AppState,
    client: &reqwest::Client,
    cache: &Cache,
    d: Delivery,
) -> Disposition {
    let (Some(id), Some(ce_type)) = (d.header("ce-id"), d.header("ce-type")) else {
        return Disposition::Stale("not a lifecycle event".into());
    };
    let Ok(data) = serde_json::from_slice::<Value>(&d.payload) else {
        return Disposition::Stale("lifecycle event data is not JSON".into());
    };
    let ns = data["namespace"].as_str().unwrap_or_default().to_string();
    let graph = data["graph_name"].as_str().unwrap_or_default().to_string();
    let hooks = match hooks_of(state, cache, &ns, &graph).await {
        Ok(h) => h,
        Err(e) => return Disposition::Retry(e.to_string()),
    };
    let wanted: Vec<&Hook> = hooks.iter().filter(|h| h.webhook.wants(&ce_type)).collect();
    if wanted.is_empty() {
        return Disposition::Ack;
    }
    let body = json!({
        "specversion": "1.0",
        "id": id,
        "type": ce_type,
        "source": d.header("ce-source"),
        "subject": d.header("ce-subject"),
        "time": d.header("ce-time"),
        "datacontenttype": "application/json",
        "data": data,
    })
    .to_string();
    let event = Event {
        id: &id,
        ce_type: &ce_type,
        ns: &ns,
        graph: &graph,
        body: &body,
    };
    let mut again: Option<Duration> = None;
    for hook in wanted {
        match deliver(state, client, &event, hook).await {
            Ok(Some(wait)) => again = Some(again.map_or(wait, |a| a.min(wait))),
            Ok(None) => {}
            Err(e) => return Disposition::Retry(e.to_string()),
        }
    }
    match again {
        Some(wait) => Disposition::Delay(wait),
        None => Disposition::Ack,
    }
}

/// The event being delivered.
struct Event<'a> {
    id: &'a str,
    ce_type: &'a str,
    ns: &'a str,
    graph: &'a str,
    body: &'a str,
}

/// The webhooks of `ns`/`graph` with their keys (decrypted), cached for
/// [`CACHE_TTL`].
async fn hooks_of(
    state: &AppState,
    cache: &Cache,
    ns: &str,
    graph: &str,
) -> Result<Arc<Vec<Hook>>, exo_store::Error> {
    let key = (ns.to_string(), graph.to_string());
    if let Some((at, hooks)) = cache.lock().ok().and_then(|c| c.get(&key).cloned())
        && at.elapsed() < CACHE_TTL
    {
        return Ok(hooks);
    }
    let template = state.engine.store.graph_template(ns, graph).await?;
    let hooks: Vec<Hook> = template
        .map(|t| {
            t.webhooks
                .iter()
                .map(|w| Hook {
                    webhook: w.clone(),
                    key: t
                        .secrets
                        .get(&w.secret)
                        .and_then(|ct| state.settings.cipher.as_ref()?.decrypt(ct).ok()),
                })
                .collect()
        })
        .unwrap_or_default();
    let hooks = Arc::new(hooks);
    if let Ok(mut c) = cache.lock() {
        if c.len() > 10_000 {
            c.clear();
        }
        c.insert(key, (Instant::now(), hooks.clone()));
    }
    Ok(hooks)
}

/// `sha256=<hex>` of HMAC-SHA256 over `body` under `key`.
pub fn signature(key: &str, body: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
    format!("sha256={}", hex(hmac::sign(&key, body.as_bytes()).as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The delivery id of `event` to `url`.
fn delivery_id(event_id: &str, url: &str) -> String {
    let digest = digest::digest(&digest::SHA256, url.as_bytes());
    format!("{event_id}@{}", hex(&digest.as_ref()[..6]))
}

/// Delivers `event` to `hook` unless done already; records the attempt.
/// Returns the wait before the next attempt when this one failed and
/// attempts are left.
async fn deliver(
    state: &AppState,
    client: &reqwest::Client,
    event: &Event<'_>,
    hook: &Hook,
) -> Result<Option<Duration>, exo_store::Error> {
    let settings = &state.settings.webhooks;
    let url = &hook.webhook.url;
    let id = delivery_id(event.id, url);
    let log = state.engine.store.webhook_deliveries();
    let before = log.find_one(doc! {"_id": &id}).await?;
    let done = before
        .as_ref()
        .and_then(|d| d.get_str("status").ok())
        .is_some_and(|s| s == "DELIVERED" || s == "FAILED");
    if done {
        return Ok(None);
    }
    let n = before
        .as_ref()
        .and_then(|d| d.get_array("attempts").ok())
        .map_or(0, Vec::len) as u32
        + 1;
    let started = Instant::now();
    let outcome = match &hook.key {
        None => Err(format!(
            "the graph has no secret {:?} to sign with",
            hook.webhook.secret
        )),
        Some(key) => post(client, event, &id, n, (url, key)).await,
    };
    let ms = started.elapsed().as_millis() as i64;
    let (status, wait) = match &outcome {
        Ok(code) if (200..300).contains(code) => ("DELIVERED", None),
        _ if n >= settings.attempts => ("FAILED", None),
        _ => ("RETRYING", Some(backoff(settings, n))),
    };
    let now = state.engine.now_ms();
    let attempt = match &outcome {
        Ok(code) => doc! {"at_ms": now, "status_code": i64::from(*code), "duration_ms": ms},
        Err(error) => doc! {"at_ms": now, "error": error, "duration_ms": ms},
    };
    record(state, (event, url, &id), attempt, status, now).await?;
    tracing::info!(exo.namespace = %event.ns, exo.graph = %event.graph, delivery = %id,
        attempt = n, status, "Webhook attempt.");
    Ok(wait)
}

/// One POST; the HTTP status, or why there is none.
async fn post(
    client: &reqwest::Client,
    event: &Event<'_>,
    id: &str,
    attempt: u32,
    (url, key): (&str, &str),
) -> Result<u16, String> {
    client
        .post(url)
        .header("content-type", "application/cloudevents+json")
        .header("x-exo-signature-256", signature(key, event.body))
        .header("x-exo-delivery", id)
        .header("x-exo-event", event.ce_type)
        .header("x-exo-attempt", attempt.to_string())
        .body(event.body.to_string())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// The wait after failed attempt `n`: the backoff doubled per attempt,
/// at most [`MAX_BACKOFF`].
fn backoff(settings: &WebhookSettings, n: u32) -> Duration {
    let factor = 2u32.saturating_pow(n.saturating_sub(1));
    settings.backoff.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Records an attempt of delivery `id` and its status.
async fn record(
    state: &AppState,
    (event, url, id): (&Event<'_>, &str, &str),
    attempt: Document,
    status: &str,
    now: i64,
) -> Result<(), exo_store::Error> {
    let expires = exo_store::mongodb::bson::DateTime::from_millis(now + KEEP.as_millis() as i64);
    state
        .engine
        .store
        .webhook_deliveries()
        .update_one(
            doc! {"_id": id},
            doc! {
                "$push": {"attempts": attempt},
                "$set": {"status": status, "updated_at_ms": now, "expires_at": expires},
                "$setOnInsert": {"namespace": event.ns, "graph_name": event.graph, "url": url,
                                 "event_id": event.id, "event_type": event.ce_type, "created_at_ms": now},
            },
        )
        .upsert(true)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", "what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = WebhookSettings {
            attempts: 8,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        let waits: Vec<u64> = (1..=10).map(|n| backoff(&s, n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
    }

    #[test]
    fn delivery_ids_name_the_event_and_the_url() {
        let a = delivery_id("ce:run:r:failed", "https://a.example/h");
        assert!(a.starts_with("ce:run:r:failed@"), "{a}");
        assert_eq!(a, delivery_id("ce:run:r:failed", "https://a.example/h"));
        assert_ne!(a, delivery_id("ce:run:r:failed", "https://b.example/h"));
    }
}
