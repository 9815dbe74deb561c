//! The oracle of lifecycle events: reads a run's CloudEvents as an outside
//! client would (plain `async-nats`, JSON) and checks them against the
//! run's documents. It shares no code with the services that publish them.
//!
//! For each run: every `ce-id` once; the run's `created` event first and
//! its ending event (`succeeded`, `failed`, `cancelled`) matching the run's
//! status, `started` once when the root was queued; for every state of the
//! run, its events form one chain (the first has no `from`, each next one
//! starts where the previous one ended) that ends in the state's current
//! status, and no event names a state the run does not have.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use exo_store::{RunDoc, StateDoc};
use futures::StreamExt;
use serde_json::Value;

/// One lifecycle event as received.
#[derive(Debug, Clone)]
pub struct Event {
    /// NATS subject.
    pub subject: String,
    /// `ce-id`.
    pub id: String,
    /// `ce-type`.
    pub ce_type: String,
    /// The JSON data.
    pub data: Value,
}

impl Event {
    /// Reads a received message (its `ce-*` headers and JSON body).
    pub fn of(msg: &async_nats::Message) -> anyhow::Result<Self> {
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        };
        anyhow::ensure!(header("ce-specversion") == "1.0", "not a CloudEvent");
        Ok(Self {
            subject: msg.subject.to_string(),
            id: header("ce-id"),
            ce_type: header("ce-type"),
            data: serde_json::from_slice(&msg.payload)?,
        })
    }

    /// The data field `name` as text.
    pub fn field(&self, name: &str) -> &str {
        self.data[name].as_str().unwrap_or_default()
    }
}

/// Every event the events stream holds for run `run_id` of namespace `ns`,
/// in stream order.
pub async fn stored_events(
    js: &jetstream::Context,
    ns: &str,
    run_id: &str,
) -> anyhow::Result<Vec<Event>> {
    let stream = js.get_stream("EXO_EVENTS").await?;
    let filter = format!("exo.v1.{ns}.event.lifecycle.{run_id}.>");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter,
            ..Default::default()
        })
        .await?;
    let pending = consumer.cached_info().num_pending as usize;
    let mut out = Vec::with_capacity(pending);
    let mut messages = consumer.messages().await?;
    while out.len() < pending {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await?;
        let Some(m) = next else { break };
        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
        out.push(Event::of(&m)?);
    }
    Ok(out)
}

/// Checks run `run`'s `events` against its `states` (see the module docs).
/// With `strict`, the order is the one a run gets without crashes: each
/// state's events in the order of its transitions, the run's ending event
/// after every state event; without, each state's events must link into
/// one chain in some order.
pub fn check_run_events(
    run: &RunDoc,
    states: &[StateDoc],
    events: &[Event],
    strict: bool,
) -> anyhow::Result<()> {
    let mut ids = HashSet::new();
    for e in events {
        anyhow::ensure!(ids.insert(e.id.as_str()), "event {} published twice", e.id);
        anyhow::ensure!(e.field("run_id") == run.run_id.as_str(), "{e:?}");
        let tail = e.subject.rsplit('.').next().unwrap_or_default();
        anyhow::ensure!(e.ce_type.ends_with(&format!(".{tail}")), "{e:?}");
    }
    let by_id: HashMap<String, &StateDoc> = states.iter().map(|s| (s.id.to_hex(), s)).collect();
    // The run starts when its root (no lineage, no retry, not a copy) is
    // first queued.
    let root_queued = events.iter().any(|e| {
        e.field("status") == "QUEUED"
            && e.data["generation"] == 0
            && by_id.get(e.field("state_id")).is_some_and(|st| {
                st.parents.is_empty() && st.retry_count == 0 && st.manual_retry_fanout_id.is_empty()
            })
    });
    check_run_transitions(run, events, root_queued, strict)?;
    let mut chains: HashMap<&str, Vec<&Event>> = HashMap::new();
    for e in events
        .iter()
        .filter(|e| e.ce_type.starts_with("exo.state."))
    {
        let id = e.field("state_id");
        anyhow::ensure!(by_id.contains_key(id), "an event of unknown state {id}");
        chains.entry(id).or_default().push(e);
    }
    for st in states {
        let mut chain = chains
            .get(st.id.to_hex().as_str())
            .cloned()
            .unwrap_or_default();
        if !strict {
            chain = linked(chain);
        }
        check_chain(st, &chain)?;
    }
    Ok(())
}

fn check_run_transitions(
    run: &RunDoc,
    events: &[Event],
    root_queued: bool,
    strict: bool,
) -> anyhow::Result<()> {
    let run_events: Vec<&str> = events
        .iter()
        .filter_map(|e| e.ce_type.strip_prefix("exo.run."))
        .collect();
    anyhow::ensure!(
        events.first().map(|e| e.ce_type.as_str()) == Some("exo.run.created"),
        "the run's first event is not `created`: {run_events:?}"
    );
    let ending = match run.status.as_deref() {
        Some("SUCCESS") => Some("succeeded"),
        Some("FAILED") => Some("failed"),
        Some("CANCELLED") => Some("cancelled"),
        _ => None,
    };
    let endings: Vec<&&str> = run_events
        .iter()
        .filter(|t| ["succeeded", "failed", "cancelled"].contains(t))
        .collect();
    anyhow::ensure!(
        endings.len() == usize::from(ending.is_some()) && endings.first().map(|t| **t) == ending,
        "run {:?} has ending events {endings:?}",
        run.status
    );
    let started = run_events.iter().filter(|t| **t == "started").count();
    anyhow::ensure!(
        started == usize::from(root_queued),
        "`started` {started} times, root queued: {root_queued}"
    );
    if strict && ending.is_some() {
        let last = events
            .last()
            .map(|e| e.ce_type.as_str())
            .unwrap_or_default();
        anyhow::ensure!(last.starts_with("exo.run."), "events after the run ended");
    }
    Ok(())
}

/// `chain` put in the order its `from`s link it (the first without one),
/// as far as they link; the rest after, as received. After a crash, a
/// transition relayed late can follow later ones in the stream.
fn linked(mut chain: Vec<&Event>) -> Vec<&Event> {
    let mut out = Vec::with_capacity(chain.len());
    let mut at: Option<String> = None;
    while let Some(i) = chain
        .iter()
        .position(|e| e.data.get("from").and_then(Value::as_str) == at.as_deref())
    {
        let e = chain.remove(i);
        at = Some(e.field("status").to_string());
        out.push(e);
    }
    out.extend(chain);
    out
}

/// The events of state `st`, in order, form one chain ending in its status.
fn check_chain(st: &StateDoc, chain: &[&Event]) -> anyhow::Result<()> {
    let id = st.id;
    anyhow::ensure!(!chain.is_empty(), "state {id} ({}) has no event", st.status);
    let mut at: Option<&str> = None;
    for e in chain {
        let from = e.data.get("from").and_then(Value::as_str);
        anyhow::ensure!(
            from == at,
            "state {id}: event {} from {from:?} follows {at:?}",
            e.id
        );
        at = Some(e.field("status"));
        anyhow::ensure!(
            e.ce_type == format!("exo.state.{}", e.field("status").to_ascii_lowercase()),
            "{e:?}"
        );
    }
    anyhow::ensure!(
        at == Some(st.status.as_str()),
        "state {id} is {} but its events end at {at:?}",
        st.status
    );
    Ok(())
}
