//! `exo-completion`: advances runs when nodes finish.
//!
//! Consumes `exo.v1.<ns>.result.executed` and `exo.v1.<ns>.result.pruned`,
//! one lane (durable consumer) per result partition plus one for results
//! published without their run, so a wide run's backlog sits in front of
//! the runs of its own partition only.
//! For an executed state it records the outputs, creates fan-out siblings,
//! creates the successor states with resolved inputs, marks SUCCESS, updates
//! unite groups (creating a unite state exactly once when its group closes)
//! and the run's counters and status, all in transactions fenced by the
//! state's status and attempt; then it dispatches the new successors
//! (inserted QUEUED) and hands other new states (unite states) to the
//! scheduler.

pub mod handlers;

use exo_bus::Disposition;
use exo_engine::worker::{self, Lane, WorkerSpec};
use exo_types::subjects::{self, ResultKind};
use tokio_util::sync::CancellationToken;

pub use exo_engine::worker::Config;

/// The consumers: `completion-p<i>` for each partition of
/// [`subjects::RESULT_PARTITIONS`], and `completion` for results published
/// without their run.
pub fn lanes() -> Vec<Lane> {
    let mut lanes = vec![Lane::new(
        subjects::CONSUMER_COMPLETION,
        &subjects::COMPLETION_FILTERS,
    )];
    for p in 0..subjects::RESULT_PARTITIONS {
        let (consumer, filters) = subjects::completion_partition(p);
        lanes.push(Lane::new(consumer, &filters));
    }
    lanes
}

/// Runs the service until `shutdown` is cancelled.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let spec = WorkerSpec {
        service: "exo-completion",
        stream: subjects::STREAM_RESULTS,
        lanes: lanes(),
        concurrency: cfg.concurrency.unwrap_or(128),
    };
    worker::run(
        cfg.common,
        shutdown,
        spec,
        |engine, d| async move {
            match subjects::result_kind_of(&d.subject) {
                Some(ResultKind::Executed) => match worker::decode(&d) {
                    Ok(msg) => worker::disposition(
                        handlers::on_executed(&engine, msg, d.seq, || d.progress()).await,
                    ),
                    Err(disposition) => disposition,
                },
                Some(ResultKind::Pruned) => match worker::decode(&d) {
                    Ok(msg) => worker::disposition(handlers::on_pruned(&engine, msg).await),
                    Err(disposition) => disposition,
                },
                _ => Disposition::Reject(format!("unexpected subject {}", d.subject)),
            }
        },
        worker::nothing,
    )
    .await
}
