//! `exo-api`: the Exosphere-compatible HTTP API (spec §2).
//!
//! It serves every `/v0` endpoint of Exosphere's state manager with the same
//! paths, bodies, status codes and error texts (deliberate deviations are
//! documented on the handlers), plus `GET /health`, `/livez`,
//! `/readyz` and the extension `GET /v0/namespace/{ns}/run/{run_id}`.
//!
//! What it writes directly to MongoDB: graph templates (validated against the
//! registered nodes synchronously, so they are VALID or INVALID as soon as
//! the PUT returns), registered nodes, manual-retry copies, and the
//! `lease_until` of states handed out over HTTP.
//!
//! What it publishes on NATS instead of writing: trigger commands
//! (`exo.v1.<ns>.run.trigger`, consumed by `exo-trigger`) and runtime results
//! (`exo.v1.<ns>.result.<kind>`, consumed by `exo-completion` and
//! `exo-retry`); every publish waits for the JetStream ack before the HTTP
//! answer. `POST /states/enqueue` pulls from the same per-node dispatch
//! queues as NATS runtimes.

pub mod config;
pub mod crypto;
pub mod error;
pub mod http;
pub mod keys;
pub mod limits;
pub mod models;
pub mod openapi;
pub mod ratelimit;
mod render;
mod routes;
pub mod secrets_nats;
pub mod ui;
pub mod validate;
pub mod webhooks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::PullConsumer;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use exo_engine::Engine;
use exo_service::admin::{self, Readiness};
use tokio_util::sync::CancellationToken;

pub use config::{ApiConfig, Config};
pub use limits::Limits;

/// Largest accepted request body by default (32 MiB;
/// `EXO_API__MAX_BODY_BYTES`).
pub const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// Settings derived from the configuration.
#[derive(Debug)]
pub struct Settings {
    /// The configured API key (never printed).
    pub key: secrecy::SecretString,
    /// The secrets cipher, when a key is configured.
    pub cipher: Option<crypto::SecretCipher>,
    /// Lease of states handed out by `POST /states/enqueue`.
    pub lease: Duration,
    /// CORS origins.
    pub origins: Vec<String>,
    /// Webhook delivery.
    pub webhooks: webhooks::WebhookSettings,
    /// Size limits.
    pub limits: Limits,
    /// Requests per second per key.
    pub rate_limits: ratelimit::RateLimits,
}

impl Settings {
    /// True when `presented` is the API key (the `x-api-key` header of the
    /// HTTP API, `Exo-Api-Key` of a NATS secrets request). The comparison
    /// takes the same time wherever the first difference is, so timing
    /// does not reveal how much of a guess was right.
    pub fn key_matches(&self, presented: &[u8]) -> bool {
        use secrecy::ExposeSecret as _;
        constant_time_eq(presented, self.key.expose_secret().as_bytes())
    }

    /// Builds the settings from the `api` section.
    pub fn from_config(api: &ApiConfig) -> Result<Self, crypto::Error> {
        let cipher = match &api.secrets_encryption_key {
            Some(k) if !k.trim().is_empty() => Some(crypto::SecretCipher::from_key(k)?),
            _ => None,
        };
        Ok(Self {
            key: secrecy::SecretString::from(api.key.clone()),
            cipher,
            lease: Duration::from_secs(api.lease_secs.max(1)),
            origins: api.origins(),
            webhooks: webhooks::WebhookSettings {
                attempts: api.webhook_attempts.max(1),
                backoff: Duration::from_millis(api.webhook_backoff_ms),
                timeout: Duration::from_secs(api.webhook_timeout_secs.max(1)),
            },
            limits: Limits::of(api),
            rate_limits: ratelimit::RateLimits::new(api.rate_limit_per_sec, api.rate_limit_burst),
        })
    }
}

/// `a == b`, in time that depends on the lengths only.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u64::from(a.len() != b.len());
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Store, bus and graph cache.
    pub engine: Engine,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Readiness flag served on `/readyz`.
    pub readiness: Readiness,
    consumers: Arc<Mutex<HashMap<(String, String), PullConsumer>>>,
    replies: Arc<tokio::sync::OnceCell<exo_bus::Replies>>,
    renewed: Arc<Mutex<HashMap<(String, std::net::IpAddr), std::time::Instant>>>,
    /// The scoped API keys this replica has read.
    pub keys: Arc<keys::KeyRing>,
}

/// Who calls, for HTTP leases: the peer's IP address (a runtime pod), when
/// the server knows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Caller(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// How long a request that changes a run (trigger, results) waits for the
/// service that applies it. The message is durable: when the wait runs
/// out (that service is down or far behind) the request still succeeds
/// and the change is applied later.
pub const APPLY_WAIT: Duration = Duration::from_secs(5);

impl AppState {
    /// Wraps connected handles and settings.
    pub fn new(engine: Engine, settings: Settings, readiness: Readiness) -> Self {
        Self {
            engine,
            settings: Arc::new(settings),
            readiness,
            consumers: Arc::default(),
            replies: Arc::default(),
            renewed: Arc::default(),
            keys: Arc::default(),
        }
    }

    /// Who presented `key` (the configured key, a live scoped key), or
    /// nobody.
    pub async fn principal(&self, key: &[u8]) -> Result<Option<keys::Principal>, exo_store::Error> {
        let settings = &self.settings;
        self.keys
            .resolve(&self.engine.store, key, |k| settings.key_matches(k))
            .await
    }

    /// The secrets cipher, or a 500 saying `SECRETS_ENCRYPTION_KEY` is not
    /// configured so secrets cannot be `what` (stored, decrypted).
    pub fn cipher(&self, what: &str) -> Result<&crypto::SecretCipher, error::ApiError> {
        self.settings.cipher.as_ref().ok_or_else(|| {
            tracing::error!(
                "Secrets cannot be {what}: SECRETS_ENCRYPTION_KEY is not configured."
            );
            error::ApiError::Http(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "SECRETS_ENCRYPTION_KEY is not configured on the server; secrets cannot be {what}"
                ),
            )
        })
    }

    /// A runtime at `caller` asked for work or reported a result in `ns`:
    /// it is alive, so every state it holds there keeps its lease for
    /// another full lease (at most once per tenth of a lease per caller;
    /// best effort). A state waiting in an SDK's local queue behind slow
    /// nodes is therefore never handed out twice while its runtime lives;
    /// once the runtime stops calling, its leases run out and the reaper
    /// hands its states to others.
    pub async fn renew_leases(&self, ns: &str, caller: Caller) {
        let Some(ip) = caller.0 else { return };
        let now = std::time::Instant::now();
        if let Ok(mut map) = self.renewed.lock() {
            let key = (ns.to_string(), ip);
            if map
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < self.settings.lease / 10)
            {
                return;
            }
            if map.len() > 10_000 {
                map.clear();
            }
            map.insert(key, now);
        }
        let now_ms = self.engine.now_ms();
        let until = now_ms
            .saturating_add(i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX));
        let renewed = self
            .engine
            .store
            .states()
            .update_many(
                exo_store::mongodb::bson::doc! {
                    "lease_until": {"$gt": now_ms}, "lease_holder": ip.to_string(),
                    "namespace_name": ns, "status": exo_types::status::StateStatus::Queued.as_str(),
                },
                exo_store::mongodb::bson::doc! {"$set": {"lease_until": until}},
            )
            .await;
        match renewed {
            Ok(r) if r.modified_count > 0 => {
                tracing::debug!(exo.namespace = %ns, %ip, count = r.modified_count, "Leases renewed.");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(exo.namespace = %ns, %error, "Could not renew leases."),
        }
    }

    /// Publishes `msg` and waits up to [`APPLY_WAIT`] until the service
    /// consuming it has applied it (see [`exo_bus::Replies`]).
    pub async fn apply(&self, msg: exo_bus::Outgoing) -> Result<exo_bus::Answer, exo_bus::Error> {
        let replies = self
            .replies
            .get_or_try_init(|| exo_bus::Replies::start(&self.engine.bus))
            .await?;
        let answer = replies.request(msg, APPLY_WAIT).await?;
        if answer == exo_bus::Answer::TimedOut {
            tracing::warn!(
                wait_ms = APPLY_WAIT.as_millis() as u64,
                "No service applied a request in time; it stays queued and will be applied."
            );
        }
        Ok(answer)
    }

    /// The dispatch consumer of (namespace, node), created on first use and
    /// then reused.
    async fn dispatch_consumer(
        &self,
        ns: &str,
        node: &str,
    ) -> Result<PullConsumer, exo_bus::Error> {
        let key = (ns.to_string(), node.to_string());
        if let Ok(map) = self.consumers.lock()
            && let Some(c) = map.get(&key)
        {
            return Ok(c.clone());
        }
        let c = self.engine.bus.dispatch_consumer(ns, node, None).await?;
        if let Ok(mut map) = self.consumers.lock() {
            map.insert(key, c.clone());
        }
        Ok(c)
    }

    /// Forgets a cached consumer (after a failure, e.g. it was deleted).
    fn forget_consumer(&self, ns: &str, node: &str) {
        if let Ok(mut map) = self.consumers.lock() {
            map.remove(&(ns.to_string(), node.to_string()));
        }
    }
}

/// The whole HTTP application: routes, auth, request ids, CORS, limits,
/// and the OpenAPI document with its Swagger UI.
pub fn app(state: AppState) -> Router {
    let key = middleware::from_fn_with_state(state.clone(), http::require_key);
    let (routes, doc) = openapi::routes(|v0| v0.route_layer(key));
    let docs =
        utoipa_swagger_ui::SwaggerUi::new(openapi::DOCS_PATH).url(openapi::OPENAPI_PATH, doc);
    routes
        .with_state(state.clone())
        .merge(admin::router(state.readiness.clone()))
        .merge(docs)
        .merge(ui::router())
        .route_layer(middleware::from_fn(http::route_of))
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.settings.limits.max_body_bytes))
        .layer(axum::Extension(validate::BodyLimit(
            state.settings.limits.max_body_bytes,
        )))
        .layer(middleware::from_fn(http::request_context))
        .layer(http::cors(&state.settings.origins))
}

/// Runs the API until `shutdown` is cancelled.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if exo_faults::init_from_env() {
        tracing::warn!("Fail points are live (FAILPOINTS / EXO_FAILPOINTS_TRACE): a test build.");
    }
    let readiness = Readiness::default();
    let admin = admin::serve(&cfg.common.admin.addr, readiness.clone(), shutdown.clone())
        .await
        .with_context(|| format!("bind admin address {}", cfg.common.admin.addr))?;
    let settings = Settings::from_config(&cfg.api).context("load SECRETS_ENCRYPTION_KEY")?;
    if settings.cipher.is_none() {
        tracing::warn!("SECRETS_ENCRYPTION_KEY is not set: graphs with secrets will be refused.");
    }
    let listener = tokio::net::TcpListener::bind(&cfg.api.addr)
        .await
        .with_context(|| format!("bind API address {}", cfg.api.addr))?;
    let engine = tokio::select! {
        e = exo_engine::worker::connect(&cfg.common, "exo-api") => e?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    // Templates stored VALID (by Exosphere) that cannot run here are marked
    // INVALID with the reason, so GET and trigger agree.
    exo_engine::legacy::mark_rejected_graphs(&engine.store)
        .await
        .context("check stored graph templates")?;
    let state = AppState::new(engine.clone(), settings, readiness.clone());
    let secrets = tokio::spawn(secrets_nats::serve(state.clone(), shutdown.clone()));
    let hooks = tokio::spawn(webhooks::serve(state.clone(), shutdown.clone()));
    let samplers = [
        (exo_types::subjects::STREAM_DISPATCH, exo_bus::Sampled::All),
        (
            exo_types::subjects::STREAM_EVENTS,
            exo_bus::Sampled::Named(vec![exo_types::subjects::CONSUMER_WEBHOOKS.to_string()]),
        ),
    ]
    .map(|(stream, which)| {
        let sample =
            exo_bus::sample_consumers(engine.bus.clone(), stream.into(), which, shutdown.clone());
        tokio::spawn(sample)
    });
    let router = app(state);
    readiness.set(true);
    tracing::info!(exo.service = "exo-api", addr = %cfg.api.addr, "Service ready.");
    let token = shutdown.clone();
    let r = readiness.clone();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            token.cancelled().await;
            r.set(false);
        })
        .await
    });
    shutdown.cancelled().await;
    readiness.set(false);
    tracing::info!(exo.service = "exo-api", "Draining in-flight requests.");
    let grace = cfg.common.shutdown_grace();
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::error!(%error, "HTTP server failed."),
        Ok(Err(error)) => tracing::error!(%error, "HTTP server task failed."),
        Err(_) => tracing::warn!(
            grace_secs = grace.as_secs(),
            "Graceful shutdown did not complete in time."
        ),
    }
    let _ = tokio::join!(secrets, hooks);
    samplers.iter().for_each(tokio::task::JoinHandle::abort);
    engine.bus.drain().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
    tracing::info!(exo.service = "exo-api", "Stopped.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(constant_time_eq(b"", b""));
        for other in [&b"s3creT"[..], b"s3cre", b"s3cret!", b"", b"S3cret"] {
            assert!(!constant_time_eq(other, b"s3cret"), "{other:?}");
            assert!(!constant_time_eq(b"s3cret", other), "{other:?}");
        }
    }
}
