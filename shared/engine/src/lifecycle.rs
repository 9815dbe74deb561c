//! Lifecycle events of runs and states as CloudEvents 1.0 in NATS binary
//! mode: the attributes are `ce-*` headers, the data is the JSON body
//! (`content-type: application/json`). They go to the `EXO_EVENTS` stream
//! (kept 24 h) on
//!
//! - `exo.v1.<ns>.event.lifecycle.<run_id>.run.<created|started|succeeded|failed|cancelled>`
//! - `exo.v1.<ns>.event.lifecycle.<run_id>.state.<status>` (lower case),
//!   one per status transition of every state, data a [`StateTransition`]
//!
//! so that one run's events are one subject filter away
//! (`exo.v1.<ns>.event.lifecycle.<run_id>.>`, what the api's server-sent
//! events endpoint reads). Every id is deterministic (`ce-id` =
//! `Nats-Msg-Id`: `ce:run:<run>:<transition>`,
//! `ce:state:<state>:<generation>:<status>`), so a second publication
//! within the duplicate window is dropped by JetStream.
//!
//! Run events are published after the transaction that made the transition
//! committed; a handler that died before publishing publishes it when its
//! message is redelivered. State transitions made in a transaction are
//! written to the `Outbox` collection in that same transaction
//! ([`crate::effects`], run creation); after the commit the handler sends
//! them ([`Engine::start_relay`]) ahead of its hand-offs on the same
//! connection and waits for their acks with the hand-offs', then removes
//! the documents ([`Relaying::finish`]); documents a crash left
//! behind are relayed by the scheduler ([`Engine::relay_stale`]). The two
//! transitions made outside a transaction (the scheduler's claim, CREATED →
//! QUEUED, and a re-queue, QUEUED → CREATED) are published by their
//! handler after the write, and again by the redelivery of a handler that
//! died before. A run id that is not a subject token (a run started by
//! Exosphere with an unusual id) has no lifecycle events.

use exo_bus::Outgoing;
use exo_store::mongodb::bson::{doc, oid::ObjectId};
use exo_store::{OutboxDoc, StateTransition};
use exo_types::names;
use exo_types::status::RunStatus;
use exo_types::subjects::PREFIX;
use futures::TryStreamExt;
use serde::Serialize;

use crate::{Engine, Error};

/// CloudEvents `specversion`.
pub const SPEC_VERSION: &str = "1.0";

/// A run's lifecycle transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunTransition {
    /// The run, its store and its root state exist.
    Created,
    /// The root state is queued for a runtime.
    Started,
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
            Self::Started => "started",
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
            Self::Created | Self::Started => RunStatus::Pending,
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

/// Whether a run event's publication may repeat an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publication {
    /// Right after the transition committed.
    First,
    /// On a path that may follow an earlier publication.
    Again,
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
    /// Publishes run `run_id`'s `transition` (see the module docs). On a
    /// path that may follow an earlier publication (a repeated command,
    /// [`Publication::Again`]), only when the stream does not hold it, so
    /// that core subscribers, which JetStream's deduplication does not
    /// shield, see it once too (a crash between this check and the
    /// publication can still show them a copy; the stream holds one).
    pub async fn publish_run_transition(
        &self,
        ns: &str,
        run: (&str, &str),
        (transition, publication): (RunTransition, Publication),
    ) -> Result<(), Error> {
        if publication == Publication::Again
            && let Some(prefix) = run_prefix(ns, run.0)
            && self
                .bus
                .holds_event(&format!("{prefix}.run.{}", transition.name()))
                .await?
        {
            return Ok(());
        }
        if let Some(msg) = self.run_transition_msg(ns, run, transition, self.now_ms())? {
            self.bus.publish(msg).await?;
        }
        Ok(())
    }

    /// The event of run `run_id`'s `transition` at `at_ms` (`None` when the
    /// run id is not a subject token).
    fn run_transition_msg(
        &self,
        ns: &str,
        (run_id, graph_name): (&str, &str),
        transition: RunTransition,
        at_ms: i64,
    ) -> Result<Option<Outgoing>, Error> {
        let Some(prefix) = run_prefix(ns, run_id) else {
            return Ok(None);
        };
        let name = transition.name();
        let id = format!("ce:run:{run_id}:{name}");
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
        Ok(Some(msg.with_headers(headers)))
    }
}

/// The lifecycle event of a state transition (`None` when the run id is
/// not a subject token).
fn state_event(t: &StateTransition) -> Result<Option<Outgoing>, Error> {
    let Some(prefix) = run_prefix(&t.namespace, &t.run_id) else {
        return Ok(None);
    };
    let status = t.status.as_str().to_ascii_lowercase();
    let id = format!("ce:state:{}:{}:{status}", t.state_id, t.generation);
    let headers = ce_headers(
        &id,
        format!("exo.state.{status}"),
        format!("/exo/namespaces/{}/graphs/{}", t.namespace, t.graph_name),
        format!("runs/{}/states/{}", t.run_id, t.state_id),
        t.at_ms,
    );
    Ok(Some(
        Outgoing::json(format!("{prefix}.state.{status}"), id, t)?.with_headers(headers),
    ))
}

/// Outbox documents older than this are relayed by [`Engine::relay_stale`]
/// (their transaction's process died, or is slow, before relaying them),
/// unless `EXO_OUTBOX_STALE_MS` says otherwise.
pub const STALE_OUTBOX_MS: i64 = 3_000;

/// [`STALE_OUTBOX_MS`], or `EXO_OUTBOX_STALE_MS` (read once).
pub fn stale_outbox_ms() -> i64 {
    static MS: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
        std::env::var("EXO_OUTBOX_STALE_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|&ms: &i64| ms >= 0)
            .unwrap_or(STALE_OUTBOX_MS)
    });
    *MS
}

impl Engine {
    /// Publishes the transitions of committed outbox documents, in order
    /// (a new run's `created` event first, the run's `started` event right
    /// after its root's first QUEUED), then has the documents removed in
    /// the background. A crash before the end leaves the documents to
    /// [`Engine::relay_stale`], and the deterministic ids make a second
    /// publication within the duplicate window a no-op.
    pub async fn relay(&self, outbox: &[OutboxDoc]) -> Result<(), Error> {
        self.start_relay(outbox).await?.finish(self).await
    }

    /// The first half of [`Engine::relay`]: the events are sent, their acks
    /// not awaited, so that the caller's hand-offs follow them on the same
    /// connection (a state's events reach the server before what its
    /// successors do) without waiting a round trip.
    pub async fn start_relay(&self, outbox: &[OutboxDoc]) -> Result<Relaying, Error> {
        if outbox.is_empty() {
            return Ok(Relaying {
                sent: exo_bus::Sent::none(),
                ids: Vec::new(),
            });
        }
        let mut msgs = Vec::new();
        for o in outbox {
            if let Some(root) = o.events.first().filter(|_| o.creates_run) {
                let run = (root.run_id.as_str(), root.graph_name.as_str());
                let created = RunTransition::Created;
                msgs.extend(self.run_transition_msg(&root.namespace, run, created, o.at_ms)?);
            }
            self.transition_msgs(&o.events, &mut msgs)?;
        }
        Ok(Relaying {
            sent: self.bus.send_all(msgs).await?,
            ids: outbox.iter().map(|o| o.id).collect(),
        })
    }

    /// The events of `transitions`, the run's `started` right after its
    /// root's first QUEUED, appended to `msgs`.
    fn transition_msgs(
        &self,
        transitions: &[StateTransition],
        msgs: &mut Vec<Outgoing>,
    ) -> Result<(), Error> {
        for t in transitions {
            msgs.extend(state_event(t)?);
            if t.starts_run {
                let run = (t.run_id.as_str(), t.graph_name.as_str());
                let started = RunTransition::Started;
                msgs.extend(self.run_transition_msg(&t.namespace, run, started, t.at_ms)?);
            }
        }
        Ok(())
    }

    /// Publishes the event of a transition made outside a transaction (no
    /// outbox): `st` moved from `from` to its current status. Called after
    /// the write, and again by a redelivery that finds the write done.
    pub async fn publish_transition(
        &self,
        st: &exo_store::StateDoc,
        from: exo_types::status::StateStatus,
    ) -> Result<(), Error> {
        if !exo_store::state_events() {
            return Ok(());
        }
        let t = StateTransition::of(st, Some(from), st.status, None, self.now_ms());
        let mut msgs = Vec::new();
        self.transition_msgs(std::slice::from_ref(&t), &mut msgs)?;
        self.bus.send_all(msgs).await?.acked().await?;
        exo_faults::point("lifecycle.published")?;
        Ok(())
    }

    /// Relays the outbox documents older than [`stale_outbox_ms`] (at most
    /// `limit`, oldest first). Returns how many.
    pub async fn relay_stale(&self, limit: i64) -> Result<usize, Error> {
        let before = self.now_ms() - stale_outbox_ms();
        let docs: Vec<OutboxDoc> = self
            .store
            .outbox()
            .find(doc! {"at_ms": {"$lte": before}})
            .sort(doc! {"at_ms": 1})
            .limit(limit)
            .await
            .map_err(exo_store::Error::from)?
            .try_collect()
            .await
            .map_err(exo_store::Error::from)?;
        self.relay(&docs).await?;
        Ok(docs.len())
    }
}

/// Outbox documents whose events are sent (see [`Engine::start_relay`]).
#[must_use = "the relay is done only once its acks arrived"]
pub struct Relaying {
    sent: exo_bus::Sent,
    ids: Vec<ObjectId>,
}

impl Relaying {
    /// Waits for the acks, then has the documents removed.
    pub async fn finish(self, engine: &Engine) -> Result<(), Error> {
        if self.ids.is_empty() {
            return Ok(());
        }
        // One crash point for the batch: a batch cut half-way is relayed
        // again whole, like one not published at all.
        self.sent.acked().await?;
        exo_faults::point("lifecycle.relayed")?;
        engine.outbox_cleaner.forget(engine, self.ids);
        Ok(())
    }
}

/// How long relayed outbox documents wait to be removed together.
const CLEAN_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Removes relayed outbox documents in the background, many per command.
#[derive(Default)]
pub struct OutboxCleaner {
    ids: std::sync::Mutex<Vec<ObjectId>>,
    running: std::sync::atomic::AtomicBool,
}

impl OutboxCleaner {
    /// Queues `ids` for removal; starts a removal task unless one runs.
    fn forget(&self, engine: &Engine, ids: impl IntoIterator<Item = ObjectId>) {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(ids);
        if self.running.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let engine = engine.clone();
        tokio::spawn(async move {
            let me = &engine.outbox_cleaner;
            loop {
                tokio::time::sleep(CLEAN_EVERY).await;
                let batch: Vec<ObjectId> =
                    std::mem::take(&mut *me.ids.lock().unwrap_or_else(|p| p.into_inner()));
                if batch.is_empty() {
                    me.running
                        .store(false, std::sync::atomic::Ordering::Release);
                    // A caller may have queued ids after the take and seen
                    // the flag still set: look once more.
                    let again = !me.ids.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
                    if again && !me.running.swap(true, std::sync::atomic::Ordering::AcqRel) {
                        continue;
                    }
                    return;
                }
                for part in batch.chunks(1000) {
                    let removed = engine
                        .store
                        .outbox()
                        .delete_many(doc! {"_id": {"$in": part}})
                        .await;
                    if let Err(error) = removed {
                        // Left to the stale relay, which republishes them
                        // (deduplicated) and tries again.
                        tracing::warn!(%error, "Could not remove relayed outbox documents.");
                    }
                }
            }
        });
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
