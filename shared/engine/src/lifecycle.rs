//! Lifecycle events of runs as CloudEvents 1.0 in NATS binary mode: the
//! attributes are `ce-*` headers, the data is the JSON body
//! (`content-type: application/json`). They go to the `EXO_EVENTS` stream
//! (kept 24 h) on
//!
//! `exo.v1.<ns>.event.lifecycle.<run_id>.run.<created|succeeded|failed|cancelled>`
//!
//! so that one run's events are one subject filter away
//! (`exo.v1.<ns>.event.lifecycle.<run_id>.>`, what the api's server-sent
//! events endpoint reads). Each is published after the transaction that
//! made the transition committed, with a deterministic id (`ce-id` =
//! `Nats-Msg-Id`, e.g. `ce:run:<run>:created`): a handler that died before
//! publishing publishes it when its message is redelivered, and a second
//! publication within the duplicate window is dropped by JetStream, so each
//! transition is one event. A run id that is not a subject token (a run
//! started by Exosphere with an unusual id) has no lifecycle events.

use exo_bus::Outgoing;
use exo_types::names;
use exo_types::status::RunStatus;
use exo_types::subjects::PREFIX;
use serde::Serialize;

use crate::{Engine, Error};

/// CloudEvents `specversion`.
pub const SPEC_VERSION: &str = "1.0";

/// A run's lifecycle transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunTransition {
    /// The run, its store and its root state exist.
    Created,
    /// Every state ended well.
    Succeeded,
    /// A state ended ERRORED with no retry left, or a unite did not fire.
    Failed,
    /// The run was cancelled.
    Cancelled,
}

impl RunTransition {
    /// The last token of its subject, and of its CloudEvents type.
    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The transition that ends a run with `status`, if it ends it.
    pub fn ending(status: RunStatus) -> Option<Self> {
        match status {
            RunStatus::Success => Some(Self::Succeeded),
            RunStatus::Failed => Some(Self::Failed),
            RunStatus::Cancelled => Some(Self::Cancelled),
            RunStatus::Pending => None,
        }
    }

    /// The run's status after it.
    pub fn status(self) -> RunStatus {
        match self {
            Self::Created => RunStatus::Pending,
            Self::Succeeded => RunStatus::Success,
            Self::Failed => RunStatus::Failed,
            Self::Cancelled => RunStatus::Cancelled,
        }
    }
}

/// `exo.v1.<ns>.event.lifecycle.<run_id>`: the prefix of one run's events.
pub fn run_prefix(ns: &str, run_id: &str) -> Option<String> {
    names::is_valid_token(run_id).then(|| format!("{PREFIX}.{ns}.event.lifecycle.{run_id}"))
}

/// The data of a run event.
#[derive(Debug, Clone, Serialize)]
pub struct RunData<'a> {
    /// Run id.
    pub run_id: &'a str,
    /// Namespace of the graph.
    pub namespace: &'a str,
    /// Graph name.
    pub graph_name: &'a str,
    /// The run's status after the transition.
    pub status: &'static str,
    /// When the event was produced (Unix ms).
    pub at_ms: i64,
}

/// The CloudEvents attributes as NATS headers.
fn ce_headers(
    id: &str,
    ce_type: String,
    source: String,
    subject: String,
    at_ms: i64,
) -> Vec<(&'static str, String)> {
    let time = exo_types::time::from_ms(at_ms).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    vec![
        ("ce-specversion", SPEC_VERSION.to_string()),
        ("ce-id", id.to_string()),
        ("ce-type", ce_type),
        ("ce-source", source),
        ("ce-subject", subject),
        ("ce-time", time),
        ("content-type", "application/json".to_string()),
    ]
}

impl Engine {
    /// Publishes run `run_id`'s `transition` (see the module docs).
    pub async fn publish_run_transition(
        &self,
        ns: &str,
        (run_id, graph_name): (&str, &str),
        transition: RunTransition,
    ) -> Result<(), Error> {
        let Some(prefix) = run_prefix(ns, run_id) else {
            return Ok(());
        };
        let name = transition.name();
        let id = format!("ce:run:{run_id}:{name}");
        let at_ms = self.now_ms();
        let data = RunData {
            run_id,
            namespace: ns,
            graph_name,
            status: transition.status().as_str(),
            at_ms,
        };
        let headers = ce_headers(
            &id,
            format!("exo.run.{name}"),
            format!("/exo/namespaces/{ns}/graphs/{graph_name}"),
            format!("runs/{run_id}"),
            at_ms,
        );
        let msg = Outgoing::json(format!("{prefix}.run.{name}"), id, &data)?;
        self.bus.publish_with_headers(msg, &headers).await?;
        Ok(())
    }

    /// The same, on a path that may follow an earlier publication (a
    /// repeated command): published only when the stream does not hold
    /// it, so that core subscribers, which JetStream's deduplication does
    /// not shield, see it once too (a crash between this check and the
    /// publication can still show them a copy; the stream holds one).
    pub async fn publish_run_transition_again(
        &self,
        ns: &str,
        run: (&str, &str),
        transition: RunTransition,
    ) -> Result<(), Error> {
        let Some(prefix) = run_prefix(ns, run.0) else {
            return Ok(());
        };
        let subject = format!("{prefix}.run.{}", transition.name());
        if self.bus.holds_event(&subject).await? {
            return Ok(());
        }
        self.publish_run_transition(ns, run, transition).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_types() {
        assert_eq!(
            run_prefix("ns", "r-1").as_deref(),
            Some("exo.v1.ns.event.lifecycle.r-1")
        );
        assert_eq!(run_prefix("ns", "not a token"), None);
        assert_eq!(RunTransition::ending(RunStatus::Pending), None);
        assert_eq!(
            RunTransition::ending(RunStatus::Failed).map(RunTransition::name),
            Some("failed")
        );
        let h = ce_headers("i", "t".into(), "s".into(), "runs/r".into(), 0);
        assert!(h.contains(&("ce-time", "1970-01-01T00:00:00.000Z".to_string())));
        assert!(h.contains(&("ce-specversion", "1.0".to_string())));
    }
}
