//! The shape shared by the consuming services: connect, provision, serve the
//! admin endpoints, consume one durable consumer until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use exo_bus::{Bus, ConsumeOptions, Delivery, Disposition};
use exo_service::admin::{self, Readiness};
use exo_service::config::CommonConfig;
use exo_store::Store;
use tokio_util::sync::CancellationToken;

use crate::{Engine, Error, Outcome};

/// Configuration of a consuming service (`EXO_*` environment variables).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Config {
    /// Connections and admin endpoint.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Messages handled at once, per durable consumer. Unset: the
    /// service's own (trigger 32, scheduler 128, completion 128 per lane,
    /// retry 32).
    pub concurrency: Option<usize>,
}

impl exo_service::binary::ServiceConfig for Config {
    fn common(&self) -> &CommonConfig {
        &self.common
    }
}

/// What a consuming service consumes.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Service name (connection names, logs).
    pub service: &'static str,
    /// Stream to consume.
    pub stream: &'static str,
    /// The durable consumers, each consumed by its own loop (its own queue),
    /// all handled by the same handler.
    pub lanes: Vec<Lane>,
    /// Messages handled at once per lane (the service's default;
    /// `EXO_CONCURRENCY` overrides it); with several lanes, twice as many
    /// across them (so a busy lane never leaves the others without room).
    pub concurrency: usize,
}

impl WorkerSpec {
    /// A service consuming `filters` of `stream` through one durable
    /// `consumer`, `concurrency` messages at once.
    pub fn single(
        service: &'static str,
        stream: &'static str,
        (consumer, filters): (&str, &[&str]),
        concurrency: usize,
    ) -> Self {
        Self {
            service,
            stream,
            lanes: vec![Lane::new(consumer, filters)],
            concurrency,
        }
    }
}

/// One durable consumer of a [`WorkerSpec`].
#[derive(Debug, Clone)]
pub struct Lane {
    /// Durable consumer name.
    pub consumer: String,
    /// Filter subjects.
    pub filters: Vec<String>,
}

impl Lane {
    /// A lane consuming `filters` through durable `consumer`.
    pub fn new(consumer: impl Into<String>, filters: &[impl AsRef<str>]) -> Self {
        Self {
            consumer: consumer.into(),
            filters: filters.iter().map(|f| f.as_ref().to_string()).collect(),
        }
    }
}

/// Connects to MongoDB and NATS, creating indexes and streams.
pub async fn connect(common: &CommonConfig, service: &str) -> anyhow::Result<Engine> {
    let store = Store::connect(&common.mongo.uri, &common.mongo.database, service)
        .await
        .context("connect to MongoDB")?;
    store.ping().await.context("ping MongoDB")?;
    if let Some(secs) = common.mongo.transaction_lifetime_secs {
        let cmd = exo_store::mongodb::bson::doc! {"setParameter": 1, "transactionLifetimeLimitSeconds": i64::from(secs)};
        match store.client().database("admin").run_command(cmd).await {
            Ok(_) => tracing::info!(secs, "Set the server's transaction lifetime limit."),
            Err(error) => {
                tracing::warn!(%error, "Could not set transactionLifetimeLimitSeconds; abandoned transactions hold locks for the server default.")
            }
        }
    }
    store
        .ensure_indexes()
        .await
        .context("create MongoDB indexes")?;
    let bus = Bus::connect_with(&common.nats.url, service, &common.nats.auth)
        .await
        .context("connect to NATS")?
        .with_stream_replicas(common.nats.stream_replicas);
    bus.provision()
        .await
        .context("provision JetStream streams")?;
    Ok(Engine::new(store, bus))
}

/// Maps a handler result onto a message disposition.
pub fn disposition(result: Result<Outcome, Error>) -> Disposition {
    match result {
        Ok(Outcome::Done) => Disposition::Ack,
        Ok(Outcome::Delay(d)) => Disposition::Delay(d),
        Ok(Outcome::Stale(reason)) => {
            tracing::debug!(%reason, "Ignored a stale message.");
            Disposition::Stale(reason)
        }
        Ok(Outcome::Reject(reason)) => Disposition::Reject(reason),
        Err(error) => Disposition::Retry(error.to_string()),
    }
}

/// Decodes a JSON payload or rejects the message with the decoding error.
pub fn decode<T: serde::de::DeserializeOwned>(d: &Delivery) -> Result<T, Disposition> {
    serde_json::from_slice(&d.payload)
        .map_err(|e| Disposition::Reject(format!("malformed message on {}: {e}", d.subject)))
}

/// Decodes a delivery's JSON payload and applies `handle` to it; a payload
/// that does not decode is rejected.
pub async fn handle_json<T, Fut>(d: &Delivery, handle: impl FnOnce(T) -> Fut) -> Disposition
where
    T: serde::de::DeserializeOwned,
    Fut: Future<Output = Result<Outcome, Error>>,
{
    match decode(d) {
        Ok(msg) => disposition(handle(msg).await),
        Err(rejected) => rejected,
    }
}

/// Runs a consuming service until `shutdown`. `extra` is started beside the
/// consumer (e.g. the scheduler's reconciler) with the engine and the token.
pub async fn run<H, F, X, XF>(
    cfg: Config,
    shutdown: CancellationToken,
    mut spec: WorkerSpec,
    handler: H,
    extra: X,
) -> anyhow::Result<()>
where
    H: Fn(Engine, Delivery) -> F + Send + Sync + 'static,
    F: Future<Output = Disposition> + Send + 'static,
    X: FnOnce(Engine, CancellationToken) -> XF,
    XF: Future<Output = ()> + Send + 'static,
{
    let common = cfg.common;
    spec.concurrency = cfg.concurrency.unwrap_or(spec.concurrency);
    if exo_faults::init_from_env() {
        tracing::warn!(
            exo.service = spec.service,
            "Fail points are live (FAILPOINTS / EXO_FAILPOINTS_TRACE): a test build."
        );
    }
    let readiness = Readiness::default();
    let admin = admin::serve(&common.admin.addr, readiness.clone(), shutdown.clone())
        .await
        .with_context(|| format!("bind admin address {}", common.admin.addr))?;
    let engine = tokio::select! {
        e = connect(&common, spec.service) => e?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let consumers = bind_lanes(&engine, &spec).await?;
    let extra_task = tokio::spawn(extra(engine.clone(), shutdown.clone()));
    let lanes = spec.lanes.iter().map(|l| l.consumer.clone()).collect();
    let sampler = tokio::spawn(exo_bus::sample_consumers(
        engine.bus.clone(),
        spec.stream.to_string(),
        exo_bus::Sampled::Named(lanes),
        shutdown.clone(),
    ));
    readiness.set(true);
    tracing::info!(
        exo.service = spec.service,
        lanes = consumers.len(),
        "Service ready."
    );
    let consume_token = CancellationToken::new();
    let consume = consume_lanes(&engine, &spec, consumers, handler, &consume_token);
    shutdown.cancelled().await;
    readiness.set(false);
    tracing::info!(exo.service = spec.service, "Draining in-flight messages.");
    consume_token.cancel();
    let grace = common.shutdown_grace();
    if tokio::time::timeout(grace, consume.join_all())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "Graceful shutdown did not complete in time."
        );
    }
    extra_task.abort();
    sampler.abort();
    engine.bus.drain().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
    tracing::info!(exo.service = spec.service, "Stopped.");
    Ok(())
}

/// The durable consumer of each lane of `spec` (created or reconciled).
async fn bind_lanes(
    engine: &Engine,
    spec: &WorkerSpec,
) -> anyhow::Result<Vec<(String, exo_bus::PullConsumer)>> {
    let mut consumers = Vec::with_capacity(spec.lanes.len());
    for lane in &spec.lanes {
        let filters: Vec<&str> = lane.filters.iter().map(String::as_str).collect();
        let consumer = engine
            .bus
            .service_consumer(spec.stream, &lane.consumer, &filters)
            .await
            .with_context(|| format!("create consumer {}", lane.consumer))?;
        consumers.push((lane.consumer.clone(), consumer));
    }
    Ok(consumers)
}

/// One consume loop per lane, all under one in-flight budget when there
/// are several, until `token` is cancelled.
fn consume_lanes<H, F>(
    engine: &Engine,
    spec: &WorkerSpec,
    consumers: Vec<(String, exo_bus::PullConsumer)>,
    handler: H,
    token: &CancellationToken,
) -> tokio::task::JoinSet<Result<(), exo_bus::Error>>
where
    H: Fn(Engine, Delivery) -> F + Send + Sync + 'static,
    F: Future<Output = Disposition> + Send + 'static,
{
    let budget = (consumers.len() > 1)
        .then(|| exo_bus::SharedBudget::new(spec.concurrency.saturating_mul(2)));
    let handler = Arc::new(handler);
    let mut consume = tokio::task::JoinSet::new();
    for (name, consumer) in consumers {
        let opts = ConsumeOptions {
            stream: spec.stream.to_string(),
            consumer: name,
            concurrency: spec.concurrency,
            batch: spec.concurrency.max(16) * 2,
            retry_backoff: exo_bus::RetryBackoff::default(),
            budget: budget.clone(),
        };
        let (e2, handler) = (engine.clone(), handler.clone());
        consume.spawn(exo_bus::consume(
            engine.bus.clone(),
            consumer,
            opts,
            token.clone(),
            move |d| handler(e2.clone(), d),
        ));
    }
    consume
}

/// No extra task.
pub async fn nothing(_: Engine, _: CancellationToken) {}
