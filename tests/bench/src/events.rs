//! Runs started by events (docs/events.md): a batch of events on a subject
//! bound by an EVENT trigger (runs created per second), the latency from
//! publishing one event to its run existing, and the latency of a start
//! request answered over NATS (the run exists when the answer arrives).

use std::time::{Duration, Instant};

use exo_bus::{Bus, Outgoing};
use exo_types::ids::idempotent_run_id;
use serde_json::{Value, json};

use crate::drive::Env;
use crate::report::Report;
use crate::stack::NS;
use crate::stats::{Summary, round3};
use crate::workloads::{count_runs_until, creation_rates};

/// The subject the bench's EVENT trigger binds.
const SUBJECT: &str = "bench.orders";
/// Sequential samples of each latency.
const SAMPLES: usize = 200;

/// Binds graph `evt` (one node) to [`SUBJECT`], then measures; `before` is
/// the number of runs already in the database.
pub async fn measure(
    env: &Env,
    m: usize,
    before: u64,
    report: &mut Report,
) -> anyhow::Result<Value> {
    let mut graph = crate::nodes::single_graph();
    graph["triggers"] = json!([{"type": "EVENT", "value": {"subject": SUBJECT}}]);
    env.stack.upsert_graph("evt", &graph).await?;
    let bus = Bus::connect(&env.stack.nats.url(), "exo-bench-events").await?;
    let msgs: Vec<Outgoing> = (0..m)
        .map(|i| Outgoing {
            subject: SUBJECT.to_string(),
            msg_id: format!("batch-{i}"),
            payload: "{}".into(),
            headers: Vec::new(),
        })
        .collect();
    let mark = env.mark().await;
    let start = Instant::now();
    let target = before + m as u64;
    let counting = count_runs_until(env, target, start, Duration::from_secs(600));
    let publish = async {
        bus.publish_batch(msgs).await?;
        Ok::<f64, anyhow::Error>(start.elapsed().as_secs_f64())
    };
    let (samples, published_s) = tokio::join!(counting, publish);
    let (samples, published_s) = (samples?, published_s?);
    let (rate, steady, done) = creation_rates(&samples, before, m as u64);
    let cost = env.cost_since(&mark, m as f64, "run").await;
    let event_lat = event_latency(env, &bus).await?;
    let start_lat = start_latency(env).await?;
    bus.drain().await;
    report.fig(
        "trigger",
        "events: runs created/s",
        format!(
            "{rate:.0} overall, {steady:.0} steady ({m} in {done:.1} s; published {:.0}/s)",
            m as f64 / published_s
        ),
    );
    report.fig("trigger", "event published → run exists", event_lat.short());
    report.fig(
        "trigger",
        "start request → answer (run exists)",
        start_lat.short(),
    );
    Ok(json!({
        "events": m,
        "runs_created_per_s": round3(rate),
        "steady_runs_created_per_s": round3(steady),
        "all_created_after_s": round3(done),
        "published_per_s": round3(m as f64 / published_s),
        "event_to_run_ms": event_lat,
        "start_request_ms": start_lat,
        "cost": cost,
    }))
}

/// One event at a time: from its publication (acked by JetStream) to its
/// run's document existing, polled every millisecond.
async fn event_latency(env: &Env, bus: &Bus) -> anyhow::Result<Summary> {
    let mut us = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let key = format!("latency-{i}");
        let run_id = idempotent_run_id(NS, "evt", &key);
        let t0 = Instant::now();
        bus.publish(Outgoing {
            subject: SUBJECT.to_string(),
            msg_id: key,
            payload: "{}".into(),
            headers: Vec::new(),
        })
        .await?;
        let deadline = t0 + Duration::from_secs(30);
        while env.stack.store.run(&run_id).await?.is_none() {
            anyhow::ensure!(Instant::now() < deadline, "run of event {i} not created");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        us.push(t0.elapsed().as_micros() as i64);
    }
    Ok(Summary::of_us(&us))
}

/// One start request at a time, answered once the run exists.
async fn start_latency(env: &Env) -> anyhow::Result<Summary> {
    let nc = async_nats::connect(env.stack.nats.url()).await?;
    let subject = exo_types::subjects::start(NS);
    let mut us = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t0 = Instant::now();
        let reply = nc
            .request(subject.clone(), r#"{"graph_name": "evt"}"#.into())
            .await?;
        us.push(t0.elapsed().as_micros() as i64);
        let v: Value = serde_json::from_slice(&reply.payload)?;
        anyhow::ensure!(v["status"] == 200, "start request failed: {v}");
    }
    Ok(Summary::of_us(&us))
}
