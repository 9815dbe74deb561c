//! `exo-trigger`: starts runs.
//!
//! Consumes run commands published by the `api` service or by any
//! integration. `exo.v1.<ns>.run.trigger` writes the run, its store entries
//! and its root state in one transaction (deterministic ids: a redelivered
//! command creates nothing twice), then hands the root state to the
//! scheduler. `exo.v1.<ns>.run.cancel` cancels a run (see
//! [`exo_engine::Engine::on_cancel`]). It also fires the graphs' CRON
//! triggers (see [`exo_engine::cron`]).

pub mod handlers;

use exo_engine::worker::{self, WorkerSpec};
use exo_types::messages::{CancelCommand, TriggerCommand};
use exo_types::subjects;
use tokio_util::sync::CancellationToken;

pub use exo_engine::worker::Config;

/// Runs the service until `shutdown` is cancelled.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let spec = WorkerSpec {
        service: "exo-trigger",
        stream: subjects::STREAM_COMMANDS,
        consumer: subjects::CONSUMER_TRIGGER,
        filters: vec![subjects::COMMANDS_SUBJECTS],
        concurrency: cfg.concurrency.unwrap_or(32),
    };
    worker::run(
        cfg.common,
        shutdown,
        spec,
        |engine, d| async move {
            let Some(ns) = subjects::namespace_of(&d.subject).map(str::to_string) else {
                return exo_bus::Disposition::Reject(format!("unexpected subject {}", d.subject));
            };
            if d.subject.ends_with(".run.cancel") {
                return match worker::decode::<CancelCommand>(&d) {
                    Ok(cmd) => worker::disposition(handlers::on_cancel(&engine, &ns, cmd).await),
                    Err(disposition) => disposition,
                };
            }
            let cmd: TriggerCommand = match worker::decode(&d) {
                Ok(c) => c,
                Err(disposition) => return disposition,
            };
            worker::disposition(handlers::on_trigger(&engine, &ns, cmd).await)
        },
        cron_loop,
    )
    .await
}

/// Fires due CRON occurrences every second until shutdown.
async fn cron_loop(engine: exo_engine::Engine, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        if let Err(error) = handlers::fire_due(&engine).await {
            tracing::warn!(%error, "Firing cron triggers failed.");
        }
    }
}
