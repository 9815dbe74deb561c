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
pub mod outputs;

use exo_bus::{Delivery, Disposition};
use exo_engine::Engine;
use exo_engine::worker::{self, Lane, WorkerSpec};
use exo_types::subjects::{self, ResultKind};
use tokio_util::sync::CancellationToken;

/// Configuration of the completion service (`EXO_*` environment variables).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Config {
    /// Connections, admin endpoint, concurrency.
    #[serde(flatten)]
    pub worker: worker::Config,
    /// The share of the result partitions this replica
    /// consumes, `i/N` (replica `i` of `N`, from 0): partitions `p` with
    /// `p % N == i`, and replica 0 also the lane of results without their
    /// run. Unset: every lane (every replica binds every durable consumer,
    /// and JetStream spreads each lane's messages over them).
    pub partitions: Option<String>,
}

impl exo_service::binary::ServiceConfig for Config {
    fn common(&self) -> &exo_service::config::CommonConfig {
        &self.worker.common
    }

    fn validate(&self) -> Result<(), exo_service::config::Error> {
        Config::validate(self)
    }
}

/// A replica's share of the lanes, parsed from `i/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// This replica, `0..of`.
    pub index: u32,
    /// Replicas sharing the partitions.
    pub of: u32,
}

impl std::str::FromStr for Share {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("EXO_PARTITIONS must be `i/N` with 0 <= i < N, got {s:?}");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let of: u32 = n.trim().parse().map_err(|_| bad())?;
        if of == 0 || index >= of {
            return Err(bad());
        }
        Ok(Self { index, of })
    }
}

impl Config {
    /// Checks the connections and [`Config::partitions`].
    pub fn validate(&self) -> Result<(), exo_service::config::Error> {
        self.worker.common.validate()?;
        self.share()
            .map(drop)
            .map_err(exo_service::config::Error::Invalid)
    }

    /// The parsed [`Config::partitions`] (`None`: every lane).
    pub fn share(&self) -> Result<Option<Share>, String> {
        self.partitions.as_deref().map(str::parse).transpose()
    }
}

/// The consumers of a replica with `share` (all when `None`):
/// `completion-p<i>` for each of its partitions of
/// [`subjects::RESULT_PARTITIONS`], and `completion` for results published
/// without their run.
pub fn lanes(share: Option<Share>) -> Vec<Lane> {
    let share = share.unwrap_or(Share { index: 0, of: 1 });
    let mut lanes = Vec::new();
    if share.index == 0 {
        lanes.push(Lane::new(
            subjects::CONSUMER_COMPLETION,
            &subjects::COMPLETION_FILTERS,
        ));
    }
    for p in (0..subjects::RESULT_PARTITIONS).filter(|p| p % share.of == share.index) {
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
        lanes: lanes(cfg.share().map_err(anyhow::Error::msg)?),
        concurrency: 128,
    };
    worker::run(cfg.worker, shutdown, spec, handle, worker::nothing).await
}

/// Routes one delivery by its result kind; the result applies only to a
/// state of its subject's namespace.
async fn handle(engine: Engine, d: Delivery) -> Disposition {
    let subject = d.subject.clone();
    exo_engine::common::in_namespace_of(&subject, route(engine, d)).await
}

async fn route(engine: Engine, d: Delivery) -> Disposition {
    match subjects::result_kind_of(&d.subject) {
        Some(ResultKind::Executed) => match outputs::ExecutedResult::decode(d.payload.clone()) {
            Ok(msg) => worker::disposition(
                handlers::apply_executed(&engine, msg, d.seq, || d.progress()).await,
            ),
            Err(e) => Disposition::Reject(format!("malformed message on {}: {e}", d.subject)),
        },
        Some(ResultKind::Pruned) => {
            worker::handle_json(&d, |m| handlers::on_pruned(&engine, m)).await
        }
        _ => Disposition::Reject(format!("unexpected subject {}", d.subject)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_the_partitions_without_overlap_or_gap() {
        let mut seen = std::collections::BTreeMap::new();
        for i in 0..3 {
            for lane in lanes(Some(Share { index: i, of: 3 })) {
                assert!(seen.insert(lane.consumer, i).is_none());
            }
        }
        assert_eq!(seen.len(), subjects::RESULT_PARTITIONS as usize + 1);
        assert_eq!(seen[subjects::CONSUMER_COMPLETION], 0);
        assert_eq!(lanes(None).len(), seen.len());
    }

    #[test]
    fn a_share_is_i_of_n() {
        assert_eq!("1/4".parse(), Ok(Share { index: 1, of: 4 }));
        for bad in ["4/4", "1/0", "x/2", "1", "-1/2", ""] {
            let e = bad.parse::<Share>().expect_err(bad);
            assert!(e.contains("EXO_PARTITIONS"), "{e}");
        }
    }
}
