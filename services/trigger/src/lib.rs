//! `exo-trigger`: starts runs.
//!
//! Consumes run commands published by the `api` service or by any
//! integration. `exo.v1.<ns>.run.trigger` writes the run, its store entries
//! and its root state in one transaction (deterministic ids: a redelivered
//! command creates nothing twice), then dispatches the root state (or,
//! when it has a start delay, hands it to the scheduler). `exo.v1.<ns>.run.cancel` cancels a run (see
//! [`handlers::on_cancel`]). It also fires the graphs' CRON
//! triggers (see [`exo_engine::cron`]) and answers the requests to start a
//! run that any client sends on `exo.v1.<ns>.start` (see [`start`]), and
//! starts the runs of events on subjects bound by EVENT triggers (see
//! [`inbound`]).

pub mod handlers;
pub mod inbound;
pub mod start;

use std::time::Duration;

use exo_bus::{Delivery, Disposition};
use exo_engine::Engine;
use exo_engine::worker::{self, WorkerSpec};
use exo_types::messages::{CancelCommand, TriggerCommand};
use exo_types::subjects;
use tokio_util::sync::CancellationToken;

impl exo_service::binary::ServiceConfig for Config {
    fn common(&self) -> &exo_service::config::CommonConfig {
        &self.worker.common
    }
}

/// Configuration of the `trigger` service.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Config {
    /// Connections, admin endpoint and concurrency.
    #[serde(flatten)]
    pub worker: worker::Config,
    /// How long a CRON occurrence claimed by a replica that then died stays
    /// claimed before another replica fires it, in seconds (unset:
    /// [`exo_engine::cron::STALE_CLAIM`], 60 s). The run id is derived from the
    /// occurrence, so a take-over never starts a second run; keep it above
    /// the time a fire takes.
    pub cron_claim_timeout_secs: Option<u64>,
}

impl Config {
    /// The CRON claim timeout in effect.
    pub fn cron_claim_timeout(&self) -> Duration {
        self.cron_claim_timeout_secs
            .map_or(exo_engine::cron::STALE_CLAIM, Duration::from_secs)
    }
}

/// Runs the service until `shutdown` is cancelled.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let claim_timeout = cfg.cron_claim_timeout();
    let lane = (
        subjects::CONSUMER_TRIGGER,
        &[subjects::COMMANDS_SUBJECTS][..],
    );
    let spec = WorkerSpec::single("exo-trigger", subjects::STREAM_COMMANDS, lane, 32);
    let extra = move |engine: Engine, shutdown: CancellationToken| async move {
        let starts = start::serve(engine.clone(), shutdown.clone());
        let events = inbound::serve(engine.clone(), shutdown.clone());
        tokio::join!(cron_loop(engine, claim_timeout, shutdown), starts, events);
    };
    worker::run(cfg.worker, shutdown, spec, handle, extra).await
}

/// Handles one trigger or cancel command.
async fn handle(engine: Engine, d: Delivery) -> Disposition {
    let Some(ns) = subjects::namespace_of(&d.subject).map(str::to_string) else {
        return Disposition::Reject(format!("unexpected subject {}", d.subject));
    };
    if d.subject.ends_with(".run.cancel") {
        return worker::handle_json(&d, |c: CancelCommand| handlers::on_cancel(&engine, &ns, c))
            .await;
    }
    let queued_by = format!("{}:{}", subjects::STREAM_COMMANDS, d.seq);
    worker::handle_json(&d, |c: TriggerCommand| {
        handlers::on_trigger(&engine, &ns, c, &queued_by)
    })
    .await
}

/// Fires due CRON occurrences every second until shutdown.
async fn cron_loop(
    engine: exo_engine::Engine,
    claim_timeout: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(error) = handlers::fire_due(&engine, claim_timeout).await {
            tracing::warn!(%error, "Firing cron triggers failed.");
        }
    }
}
