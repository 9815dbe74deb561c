//! CRON schedules under a controlled clock, against a real nats-server and
//! a real MongoDB-wire server: the `trigger` service's firing loop
//! ([`fire_due`]) is called by two engines (two replicas: their own NATS
//! and MongoDB connections) on one [`ManualClock`], stepped through the
//! times that matter: every slot of an hour, each catch-up policy after a
//! downtime, and both daylight saving changes of a named zone.

use std::sync::Arc;

use exo_engine::Engine;
use exo_store::TriggerDoc;
use exo_store::mongodb::bson::doc;
use exo_test_support::handlers::{HandlerEnv, NS, split_work};
use exo_trigger::handlers::fire_due;
use exo_types::time::ManualClock;
use futures::TryStreamExt;
use serde_json::{Value, json};

/// Unix ms of an RFC 3339 time.
fn ms(t: &str) -> i64 {
    t.parse::<exo_types::time::UtcTime>()
        .expect("an RFC 3339 time")
        .timestamp_millis()
}

fn iso(ms: i64) -> String {
    exo_types::time::rfc3339(exo_types::time::from_ms(ms))
}

/// Two replicas of the trigger service on one manual clock showing `start`.
struct Replicas {
    env: HandlerEnv,
    clock: Arc<ManualClock>,
    engines: Vec<Engine>,
}

impl Replicas {
    async fn start(start: &str) -> anyhow::Result<Self> {
        let env = HandlerEnv::start(split_work()).await?;
        let clock = Arc::new(ManualClock::at(ms(start)));
        let mut engines = Vec::new();
        for name in ["trigger-a", "trigger-b"] {
            let store = exo_store::Store::connect(
                &env.servers.mongo.uri(),
                env.engine.store.db().name(),
                name,
            )
            .await?;
            let bus = exo_bus::Bus::connect(&env.servers.nats.url(), name).await?;
            engines.push(Engine::new(store, bus).with_clock(clock.clone()));
        }
        Ok(Self {
            env,
            clock,
            engines,
        })
    }

    /// Declares graph `g`'s only trigger, CRON with `value`, as an upsert
    /// does (template, then its occurrences rescheduled from the clock).
    async fn schedule(&self, value: Value) -> anyhow::Result<()> {
        let trigger = json!({"type": "CRON", "value": value});
        let triggers = exo_store::mongodb::bson::to_bson(&vec![trigger.clone()])?;
        let store = &self.engines[0].store;
        store
            .graph_templates()
            .update_one(
                doc! {"name": "g", "namespace": NS},
                doc! {"$set": {"triggers": triggers}},
            )
            .await?;
        let spec: exo_types::graph::Trigger = serde_json::from_value(trigger)?;
        let spec = spec.cron_spec().expect("a valid schedule");
        exo_engine::cron::reschedule(&self.engines[0], NS, "g", &[spec], true).await?;
        Ok(())
    }

    /// Sets the clock to `t` and lets both replicas fire what is due, at
    /// the same time. Returns how many occurrences they claimed.
    async fn at(&self, t: &str) -> anyhow::Result<usize> {
        self.clock.set(ms(t));
        let stale = exo_engine::cron::STALE_CLAIM;
        let (a, b) = tokio::join!(
            fire_due(&self.engines[0], stale),
            fire_due(&self.engines[1], stale)
        );
        Ok(a? + b?)
    }

    /// Steps the clock from `from` to `until` (inclusive) every `step_ms`,
    /// letting both replicas fire at each step. Returns how many
    /// occurrences they claimed in all.
    async fn step_through(&self, from: &str, until: &str, step_ms: i64) -> anyhow::Result<usize> {
        let (mut t, end) = (ms(from), ms(until));
        let mut claimed = 0;
        while t <= end {
            claimed += self.at(&iso(t)).await?;
            t += step_ms;
        }
        Ok(claimed)
    }

    /// Every stored occurrence, oldest first: (time, status).
    async fn occurrences(&self) -> anyhow::Result<Vec<(String, String)>> {
        let docs: Vec<TriggerDoc> = self
            .env
            .engine
            .store
            .triggers()
            .find(doc! {})
            .sort(doc! {"trigger_time": 1})
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .into_iter()
            .map(|d| (iso(d.trigger_time.timestamp_millis()), d.trigger_status))
            .collect())
    }

    /// The times of the occurrences that started a run, each checked to
    /// have started the run its id names (one run per started occurrence).
    async fn fired(&self) -> anyhow::Result<Vec<String>> {
        let store = &self.env.engine.store;
        let docs: Vec<TriggerDoc> = store
            .triggers()
            .find(doc! {"trigger_status": "TRIGGERED"})
            .sort(doc! {"trigger_time": 1})
            .await?
            .try_collect()
            .await?;
        for d in &docs {
            let run = d.run_id.clone().expect("a fired occurrence names its run");
            assert_eq!(run, exo_engine::cron::occurrence_run_id(d));
            assert!(store.run(&run).await?.is_some(), "run {run} exists");
        }
        let runs = store.runs().count_documents(doc! {}).await?;
        assert_eq!(runs as usize, docs.len(), "one run per fired occurrence");
        Ok(docs
            .iter()
            .map(|d| iso(d.trigger_time.timestamp_millis()))
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_start_one_run_per_slot() -> anyhow::Result<()> {
    let r = Replicas::start("2026-06-01T10:00:30Z").await?;
    r.schedule(json!({"expression": "*/10 * * * *"})).await?;
    // Both replicas look every 20 s for an hour: each slot fires once.
    let claimed = r
        .step_through("2026-06-01T10:00:30Z", "2026-06-01T11:00:30Z", 20_000)
        .await?;
    let slots: Vec<String> = (1..=6)
        .map(|i| iso(ms("2026-06-01T10:00:00Z") + i * 600_000))
        .collect();
    assert_eq!(r.fired().await?, slots);
    assert_eq!(claimed, 6);
    let pending: Vec<_> = r
        .occurrences()
        .await?
        .into_iter()
        .filter(|(_, s)| s == "PENDING")
        .collect();
    assert_eq!(
        pending,
        [("2026-06-01T11:10:00Z".to_string(), "PENDING".to_string())]
    );
    Ok(())
}

/// A schedule `0 * * * *` is scheduled at 00:30 for 01:00; no replica runs
/// until 05:30 (five slots missed); what the replicas do then.
async fn after_downtime(policy: Value) -> anyhow::Result<Replicas> {
    let r = Replicas::start("2026-06-01T00:30:00Z").await?;
    let mut value = json!({"expression": "0 * * * *"});
    if let Value::Object(p) = policy {
        value.as_object_mut().expect("an object").extend(p);
    }
    r.schedule(value).await?;
    r.at("2026-06-01T05:30:00Z").await?;
    Ok(r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_skip_starts_nothing_for_missed_slots() -> anyhow::Result<()> {
    let r = after_downtime(json!({"catch_up": "SKIP"})).await?;
    assert!(r.fired().await?.is_empty());
    assert_eq!(
        r.occurrences().await?,
        [
            ("2026-06-01T01:00:00Z".into(), "SKIPPED".into()),
            ("2026-06-01T06:00:00Z".into(), "PENDING".into()),
        ]
    );
    // On time again: the next slot fires.
    r.at("2026-06-01T06:00:01Z").await?;
    assert_eq!(r.fired().await?, ["2026-06-01T06:00:00Z"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_once_starts_one_run_for_missed_slots() -> anyhow::Result<()> {
    // ONCE is the default.
    for policy in [json!({}), json!({"catch_up": "ONCE"})] {
        let r = after_downtime(policy).await?;
        assert_eq!(r.fired().await?, ["2026-06-01T01:00:00Z"]);
        let pending = r.occurrences().await?.pop();
        assert_eq!(
            pending,
            Some(("2026-06-01T06:00:00Z".into(), "PENDING".into()))
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_all_starts_each_missed_slot_up_to_the_bound() -> anyhow::Result<()> {
    let r = after_downtime(json!({"catch_up": "ALL"})).await?;
    assert_eq!(
        r.fired().await?,
        ["01", "02", "03", "04", "05"].map(|h| format!("2026-06-01T{h}:00:00Z"))
    );
    // Bounded: only the latest 3 of the 5 missed slots start runs.
    let r = after_downtime(json!({"catch_up": "ALL", "max_catch_up": 3})).await?;
    assert_eq!(
        r.fired().await?,
        ["03", "04", "05"].map(|h| format!("2026-06-01T{h}:00:00Z"))
    );
    let statuses: Vec<(String, String)> = r.occurrences().await?;
    assert_eq!(
        statuses[0],
        ("2026-06-01T01:00:00Z".into(), "SKIPPED".into())
    );
    assert_eq!(statuses.last().map(|(_, s)| s.as_str()), Some("PENDING"));
    assert_eq!(
        statuses.len(),
        5,
        "01 skipped, 03 04 05 fired, 06 pending: {statuses:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_zone_fires_on_its_wall_clock_across_both_dst_changes() -> anyhow::Result<()> {
    // Europe/Berlin: on 2026-03-29 02:00 CET becomes 03:00 CEST (02:30
    // does not exist); on 2026-10-25 03:00 CEST becomes 02:00 CET (02:30
    // happens twice).
    let r = Replicas::start("2026-03-27T12:00:00Z").await?;
    r.schedule(json!({"expression": "30 2 * * *", "timezone": "Europe/Berlin"}))
        .await?;
    r.step_through("2026-03-27T12:00:00Z", "2026-03-31T12:00:00Z", 15 * 60_000)
        .await?;
    assert_eq!(
        r.fired().await?,
        [
            "2026-03-28T01:30:00Z", // 02:30 CET
            "2026-03-29T01:00:00Z", // in the gap: 03:00 CEST, the first instant after it
            "2026-03-30T00:30:00Z", // 02:30 CEST
            "2026-03-31T00:30:00Z",
        ]
    );
    let r = Replicas::start("2026-10-23T12:00:00Z").await?;
    r.schedule(json!({"expression": "30 2 * * *", "timezone": "Europe/Berlin"}))
        .await?;
    r.step_through("2026-10-23T12:00:00Z", "2026-10-26T12:00:00Z", 15 * 60_000)
        .await?;
    assert_eq!(
        r.fired().await?,
        [
            "2026-10-24T00:30:00Z", // 02:30 CEST
            "2026-10-25T00:30:00Z", // twice on the wall clock: once, the earlier
            "2026-10-26T01:30:00Z", // 02:30 CET
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_taken_over_after_its_run_started_is_not_skipped() -> anyhow::Result<()> {
    let r = Replicas::start("2026-06-01T00:30:00Z").await?;
    r.schedule(json!({"expression": "0 * * * *", "catch_up": "SKIP"}))
        .await?;
    // Replica a claims 01:00 on time, starts its run, schedules 02:00 and
    // dies before recording the occurrence (the write after the insert).
    r.clock.set(ms("2026-06-01T01:00:05Z"));
    exo_faults::configure("store.write", "1*off->return(error)").map_err(anyhow::Error::msg)?;
    let died = fire_due(&r.engines[0], exo_engine::cron::STALE_CLAIM).await;
    exo_faults::clear("store.write");
    assert!(died.is_err(), "the fault cut the fire");
    // Replica b takes the claim over once it is stale: late by then, but
    // its run stands, so it is TRIGGERED, not SKIPPED.
    r.clock.set(ms("2026-06-01T01:01:10Z"));
    fire_due(&r.engines[1], exo_engine::cron::STALE_CLAIM).await?;
    assert_eq!(r.fired().await?, ["2026-06-01T01:00:00Z"]);
    let statuses: Vec<String> = r.occurrences().await?.into_iter().map(|(_, s)| s).collect();
    assert_eq!(statuses, ["TRIGGERED", "PENDING"]);
    Ok(())
}
