//! `exo-retry`: failures and re-queues.
//!
//! Consumes `exo.v1.<ns>.result.errored` and `exo.v1.<ns>.result.requeue`.
//! An errored state becomes RETRY_CREATED with a new attempt delayed by the
//! graph's retry policy, or ERRORED once retries are exhausted (which counts
//! it out of its unite groups, so ALL_DONE unites still fire and ALL_SUCCESS
//! runs end FAILED instead of hanging). A re-queued state goes back to
//! CREATED with a new `enqueue_after`.

pub mod handlers;

use exo_bus::{Delivery, Disposition};
use exo_engine::Engine;
use exo_engine::worker::{self, WorkerSpec};
use exo_types::subjects::{self, ResultKind};
use tokio_util::sync::CancellationToken;

pub use exo_engine::worker::Config;

/// Runs the service until `shutdown` is cancelled.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let lane = (subjects::CONSUMER_RETRY, &subjects::RETRY_FILTERS[..]);
    let spec = WorkerSpec::single("exo-retry", subjects::STREAM_RESULTS, lane, 32);
    worker::run(cfg, shutdown, spec, handle, worker::nothing).await
}

/// Routes one delivery by its result kind; the result applies only to a
/// state of its subject's namespace.
async fn handle(engine: Engine, d: Delivery) -> Disposition {
    let subject = d.subject.clone();
    exo_engine::common::in_namespace_of(&subject, route(engine, d)).await
}

async fn route(engine: Engine, d: Delivery) -> Disposition {
    match subjects::result_kind_of(&d.subject) {
        Some(ResultKind::Errored) => {
            worker::handle_json(&d, |m| handlers::on_errored(&engine, m)).await
        }
        Some(ResultKind::Requeue) => {
            worker::handle_json(&d, |m| handlers::on_requeue(&engine, m)).await
        }
        _ => Disposition::Reject(format!("unexpected subject {}", d.subject)),
    }
}
