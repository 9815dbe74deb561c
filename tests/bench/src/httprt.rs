//! A runtime that works like the Exosphere Python SDK's `Runtime`, over the
//! `/v0` HTTP API: one poller and `workers` workers sharing a local queue of
//! `2 × batch_size` states.
//!
//! Poller: when fewer than `batch_size` states are queued locally, `POST
//! …/states/enqueue {"nodes", "batch_size"}` and queue what comes back; then
//! sleep `poll_interval` (after an error, twice that). Worker: take a state,
//! execute its node, `POST …/state/{id}/executed {"outputs": [...]}` (or
//! `…/errored`). The bench nodes have no secrets, so, as the SDK, no
//! `GET …/secrets` is made.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::nodes::{NODE_NAMES, Origin, Recorder, execute_json};
use crate::stack::{API_KEY, NS};

/// SDK knobs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HttpRuntimeConfig {
    /// `batch_size` (SDK default 16).
    pub batch_size: usize,
    /// `workers` (SDK default 4).
    pub workers: usize,
    /// `poll_interval` in ms (SDK default 1000).
    pub poll_ms: u64,
}

/// Request counters.
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// `enqueue` calls.
    pub enqueue_calls: AtomicU64,
    /// States received.
    pub states: AtomicU64,
    /// `executed` / `errored` calls.
    pub results: AtomicU64,
    /// Failed calls.
    pub errors: AtomicU64,
    /// Latency of every `enqueue` call (ms), as this client sees it.
    pub enqueue_ms: std::sync::Mutex<Vec<f64>>,
}

/// Registers the bench nodes, then serves them until `stop`.
pub async fn run(
    api_url: String,
    rec: Arc<Recorder>,
    cfg: HttpRuntimeConfig,
    counters: Arc<HttpCounters>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(cfg.workers + 2)
        .build()?;
    let r = http
        .put(format!("{api_url}/v0/namespace/{NS}/nodes/"))
        .header("x-api-key", API_KEY)
        .json(&crate::nodes::registration("bench-http-rt"))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "node registration: {}", r.status());
    let cap = 2 * cfg.batch_size.max(1);
    let (tx, rx) = mpsc::channel::<Value>(cap);
    let rx = Arc::new(Mutex::new(rx));
    let mut tasks = Vec::new();
    for _ in 0..cfg.workers.max(1) {
        let (http, rx, rec, counters, stop, api_url) = (
            http.clone(),
            rx.clone(),
            rec.clone(),
            counters.clone(),
            stop.clone(),
            api_url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let state = tokio::select! {
                    s = async { rx.lock().await.recv().await } => s,
                    () = stop.cancelled() => None,
                };
                let Some(state) = state else { return };
                work(&http, &api_url, &rec, &counters, state).await;
            }
        }));
    }
    let poll = Duration::from_millis(cfg.poll_ms);
    let body = json!({"nodes": NODE_NAMES, "batch_size": cfg.batch_size});
    let url = format!("{api_url}/v0/namespace/{NS}/states/enqueue");
    while !stop.is_cancelled() {
        let queued = cap - tx.capacity();
        let mut pause = poll;
        if queued < cfg.batch_size {
            match enqueue(&http, &url, &body, &counters).await {
                Ok(v) => {
                    for s in v["states"].as_array().cloned().unwrap_or_default() {
                        counters.states.fetch_add(1, Ordering::Relaxed);
                        tokio::select! {
                            r = tx.send(s) => if r.is_err() { return Ok(()) },
                            () = stop.cancelled() => return Ok(()),
                        }
                    }
                }
                Err(error) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "enqueue failed");
                    pause = 2 * poll;
                }
            }
        } else if poll.is_zero() {
            // Full local queue and no poll interval: do not spin.
            pause = Duration::from_millis(1);
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => {}
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// One `enqueue` call, timed and counted.
async fn enqueue(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    counters: &HttpCounters,
) -> anyhow::Result<Value> {
    counters.enqueue_calls.fetch_add(1, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let got = async {
        let r = http
            .post(url)
            .header("x-api-key", API_KEY)
            .json(body)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "enqueue: {}", r.status());
        Ok::<Value, anyhow::Error>(r.json().await?)
    }
    .await;
    if let Ok(mut l) = counters.enqueue_ms.lock() {
        l.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    got
}

async fn work(
    http: &reqwest::Client,
    api_url: &str,
    rec: &Recorder,
    counters: &HttpCounters,
    state: Value,
) {
    let id = state["state_id"].as_str().unwrap_or_default().to_string();
    let name = state["node_name"].as_str().unwrap_or_default();
    let inputs: Map<String, Value> = state["inputs"].as_object().cloned().unwrap_or_default();
    let origin = Origin {
        run_id: String::new(),
        identifier: state["identifier"].as_str().unwrap_or_default().to_string(),
        dispatched_us: None,
    };
    let (path, body) = match execute_json(rec, name, &inputs, origin) {
        Ok(outputs) => ("executed", json!({"outputs": outputs})),
        Err(error) => ("errored", json!({"error": error})),
    };
    let r = http
        .post(format!("{api_url}/v0/namespace/{NS}/state/{id}/{path}"))
        .header("x-api-key", API_KEY)
        .json(&body)
        .send()
        .await;
    counters.results.fetch_add(1, Ordering::Relaxed);
    match r {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(state_id = %id, status = %r.status(), "result refused");
        }
        Err(error) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(state_id = %id, %error, "result not sent");
        }
    }
}
