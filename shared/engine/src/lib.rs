//! `exo-engine`: the state machine of the orchestrator, shared by the
//! `trigger`, `scheduler`, `completion` and `retry` services.
//!
//! Every handler follows the same pattern (see `ARCHITECTURE.md`): load what
//! it needs, apply its effect to MongoDB idempotently (conditional updates on
//! the expected status and attempt, deterministic ids, one transaction for a
//! transition and everything it counts), publish the follow-up hand-offs with
//! deterministic `Nats-Msg-Id`s, and only then let the caller ack.
//!
//! - [`graphs`]: cached, analysed graph templates with their registered nodes;
//! - [`inputs`]: building successor states and resolving their inputs;
//! - [`effects`]: run counters, unite groups and run completion, applied in
//!   the same transaction as the state writes they describe;
//! - [`attempts`]: new attempts of a state (automatic and manual retries,
//!   fan-out siblings);
//! - [`legacy`]: adoption of runs Exosphere started, on a switched database;
//! - [`common`]: what every handler shares (outcomes, hand-offs, the result
//!   fence); the handlers live in the service crates.

pub mod attempts;
pub mod common;
pub mod cron;
pub mod effects;
pub mod events;
pub mod graphs;
pub mod inputs;
pub mod legacy;
pub mod lifecycle;

use exo_bus::Bus;
use exo_store::Store;

pub use common::Outcome;

/// Engine errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// MongoDB failed; the message should be redelivered.
    #[error(transparent)]
    Store(#[from] exo_store::Error),
    /// NATS failed; the message should be redelivered.
    #[error(transparent)]
    Bus(#[from] exo_bus::Error),
    /// A fault injected by a test at a crash point.
    #[error(transparent)]
    Injected(#[from] exo_faults::Injected),
}

impl From<mongodb::error::Error> for Error {
    fn from(e: mongodb::error::Error) -> Self {
        Self::Store(exo_store::Error::Mongo(e))
    }
}

/// Shared handles of a service: the store, the bus and the template cache.
#[derive(Clone)]
pub struct Engine {
    /// MongoDB handles.
    pub store: Store,
    /// NATS handles.
    pub bus: Bus,
    /// Graph template cache.
    pub graphs: graphs::GraphCache,
    /// Concurrent state look-ups by id share one query (the fences of
    /// results handled concurrently).
    pub states: std::sync::Arc<exo_store::batch::Loader<exo_store::StateDoc>>,
    /// Concurrent claims of due states share one update and one read.
    pub claims: std::sync::Arc<exo_store::batch::Claimer>,
    /// Concurrent new runs share one transaction.
    pub creations: std::sync::Arc<exo_store::batch::RunCreator>,
    /// Where handlers read the time ([`Engine::now_ms`]).
    pub clock: std::sync::Arc<dyn exo_types::time::Clock>,
    /// Removes relayed outbox documents ([`Engine::relay`]).
    pub outbox_cleaner: std::sync::Arc<lifecycle::OutboxCleaner>,
}

impl Engine {
    /// Wraps connected handles.
    pub fn new(store: Store, bus: Bus) -> Self {
        let graphs = graphs::GraphCache::new(store.clone());
        let states = std::sync::Arc::new(exo_store::batch::Loader::new(store.states()));
        let claims = std::sync::Arc::new(exo_store::batch::Claimer::new(&store));
        let creations = std::sync::Arc::new(exo_store::batch::RunCreator::new(&store));
        Self {
            store,
            bus,
            graphs,
            states,
            claims,
            creations,
            clock: std::sync::Arc::new(exo_types::time::SystemClock),
            outbox_cleaner: Default::default(),
        }
    }

    /// The same engine reading the time from `clock` (tests).
    pub fn with_clock(mut self, clock: std::sync::Arc<dyn exo_types::time::Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The current time as Unix milliseconds, from [`Engine::clock`].
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

pub mod worker;

/// Records a run's end in the metrics (`exo_run_duration_seconds`: from
/// its creation to `now_ms`).
pub fn record_run_end(run: &exo_store::RunDoc, status: exo_types::status::RunStatus, now_ms: i64) {
    let ms = now_ms
        .saturating_sub(run.created_at.timestamp_millis())
        .max(0);
    exo_service::metrics::run_finished(
        run.namespace_name.as_str(),
        &run.graph_name,
        status.as_str(),
        std::time::Duration::from_millis(ms as u64),
    );
}
