//! Drivers shared by the workloads: an environment (stack + runtime), one
//! chain run, one fan-out run, and what MongoDB says about them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use exo_store::mongodb::bson::{Document, doc};
use exo_store::{RunDoc, mongodb::bson::DateTime};
use futures::TryStreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::nodes::{BenchNode, Exec, NODE_NAMES, Recorder, now_us};
use crate::procstat::Reading;
use crate::stack::{BenchStack, ConnCounts, StackOptions, connz_delta};
use crate::stats::{Summary, round3};

/// A stack with (optionally) a Rust-SDK runtime serving every bench node.
pub struct Env {
    /// Servers and services.
    pub stack: BenchStack,
    /// What the nodes saw.
    pub rec: Arc<Recorder>,
    /// Stops the runtime(s).
    pub stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Env {
    /// Starts a stack; with `runtime_concurrency`, also an SDK runtime in
    /// this process (registered before this returns).
    pub async fn start(
        opts: &StackOptions,
        runtime_concurrency: Option<usize>,
    ) -> anyhow::Result<Self> {
        let t = Instant::now();
        let stack = BenchStack::start(opts).await?;
        let rec = Recorder::new();
        let stop = CancellationToken::new();
        let mut env = Self {
            stack,
            rec,
            stop,
            tasks: Vec::new(),
        };
        if let Some(c) = runtime_concurrency {
            let mut b = env.stack.runtime("bench-rt").concurrency(c);
            for n in NODE_NAMES {
                b = b.node(BenchNode::new(n, env.rec.clone()));
            }
            let runtime = b.build();
            let token = env.stop.clone();
            env.spawn(async move {
                if let Err(error) = runtime.run(token).await {
                    eprintln!("runtime failed: {error}");
                }
            });
            env.stack.wait_registered(NODE_NAMES.len() as u64).await?;
        }
        eprintln!(
            "  stack up in {:.1} s (db {}, nats {}, mongo {})",
            t.elapsed().as_secs_f64(),
            env.stack.db,
            env.stack.nats.url(),
            env.stack.mongo.uri()
        );
        Ok(env)
    }

    /// Runs a task until the environment is shut down.
    pub fn spawn(&mut self, f: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(f));
    }

    /// Stops the runtimes (the stack stops when dropped).
    pub async fn stop_runtimes(&mut self) {
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// Resource and traffic counters at one moment.
    pub async fn mark(&self) -> Mark {
        for p in self.stack.proxies.values() {
            p.reset();
        }
        Mark {
            at: Instant::now(),
            procs: self.stack.watch.snapshot(),
            connz: self.stack.connz().await,
        }
    }

    /// Cost of the work since `mark`, divided by `units` (steps, states, …):
    /// CPU per process, peak RSS, NATS messages per connection and (with
    /// `--mongo-proxy`) MongoDB commands per service.
    pub async fn cost_since(&self, mark: &Mark, units: f64, unit: &str) -> Value {
        let secs = mark.at.elapsed().as_secs_f64();
        let usage = self.stack.watch.usage_since(&mark.procs, secs);
        let connz = connz_delta(&mark.connz, &self.stack.connz().await);
        let per = |x: f64| round3(x / units.max(1.0));
        let cpu_ms: BTreeMap<&String, f64> = usage
            .iter()
            .map(|(k, u)| (k, per(u.cpu_s * 1000.0)))
            .collect();
        let total_cpu: f64 = usage.values().map(|u| u.cpu_s).sum();
        let nats: BTreeMap<&String, Value> = connz
            .iter()
            .filter(|(_, c)| c.in_msgs + c.out_msgs > 0)
            .map(|(k, c): (&String, &ConnCounts)| {
                (
                    k,
                    json!({"in": per(c.in_msgs as f64), "out": per(c.out_msgs as f64)}),
                )
            })
            .collect();
        let mut mongo = serde_json::Map::new();
        // Diagnostics: every command with its times, one JSON object a line.
        if let Some(path) = std::env::var_os("EXO_BENCH_DUMP_EVENTS") {
            let mut out = String::new();
            for (svc, p) in &self.stack.proxies {
                for e in p.events() {
                    out.push_str(&json!({"service": svc, "command": e.command, "sent_us": e.sent_us, "replied_us": e.replied_us, "conn": e.conn}).to_string());
                    out.push('\n');
                }
            }
            let _ = std::fs::write(path, out);
        }
        for (svc, p) in &self.stack.proxies {
            let snap = p.snapshot();
            let cmds: serde_json::Map<String, Value> = snap
                .iter()
                .filter(|(name, _)| !is_monitoring(name))
                .map(|(name, s)| {
                    (
                        name.clone(),
                        json!({"per_unit": per(s.count as f64),
                               "avg_ms": round3(s.total_us as f64 / s.count.max(1) as f64 / 1000.0),
                               "max_ms": round3(s.max_us as f64 / 1000.0),
                               "txn_starts_per_unit": per(s.txn_starts as f64)}),
                    )
                })
                .collect();
            let total: u64 = snap
                .iter()
                .filter(|(name, _)| !is_monitoring(name))
                .map(|(_, s)| s.count)
                .sum();
            let time_us: u64 = snap
                .iter()
                .filter(|(name, _)| !is_monitoring(name))
                .map(|(_, s)| s.total_us)
                .sum();
            mongo.insert(
                svc.clone(),
                json!({"round_trips_per_unit": per(total as f64),
                       "mongo_ms_per_unit": per(time_us as f64 / 1000.0),
                       "commands": cmds}),
            );
        }
        json!({
            "unit": unit,
            "units": units,
            "wall_s": round3(secs),
            "cpu_ms_per_unit": cpu_ms,
            "cpu_cores_busy": round3(total_cpu / secs.max(1e-9)),
            "cores": usage.iter().map(|(k, u)| (k.clone(), u.cores)).collect::<BTreeMap<_, _>>(),
            "peak_rss_mb": usage.iter().map(|(k, u)| (k.clone(), u.peak_rss_mb)).collect::<BTreeMap<_, _>>(),
            "nats_msgs_per_unit": nats,
            "mongo_per_unit": if mongo.is_empty() { Value::Null } else { Value::Object(mongo) },
        })
    }
}

/// Driver monitoring traffic (not work).
fn is_monitoring(command: &str) -> bool {
    matches!(command, "hello" | "isMaster" | "ismaster" | "ping")
}

/// Counters at the start of a measured phase.
pub struct Mark {
    at: Instant,
    procs: BTreeMap<String, Reading>,
    connz: BTreeMap<String, ConnCounts>,
}

/// Timings of one chain run.
#[derive(Debug, Default, Clone)]
pub struct ChainRun {
    /// `finished_at - created_at` of the run (ms, MongoDB timestamps).
    pub wall_ms: f64,
    /// Start of step i − start of step i−1 (µs): the time one step costs.
    pub step_us: Vec<i64>,
    /// Start of step i − return of step i−1 (µs): result publish → next
    /// execution (the dispatch latency of a ready successor).
    pub handoff_us: Vec<i64>,
    /// Return of step i−1 → JetStream stored the dispatch of step i (µs):
    /// completion + scheduler.
    pub to_dispatch_us: Vec<i64>,
    /// Dispatch stored → step i starts (µs): delivery to the runtime.
    pub delivery_us: Vec<i64>,
    /// Start times of every step (µs), in order.
    pub starts_us: Vec<i64>,
    /// Return of step i−1 (µs), for i ≥ 1 (aligned with `handoff_us`).
    pub parent_end_us: Vec<i64>,
}

/// Index of a chain identifier `s<i>`.
fn step_index(identifier: &str) -> Option<usize> {
    identifier.strip_prefix('s')?.parse().ok()
}

/// Triggers one chain run and measures it from the node records.
pub async fn chain_run(env: &Env, len: usize, timeout: Duration) -> anyhow::Result<ChainRun> {
    let run_id = env.stack.trigger("chain").await?;
    let run = env
        .stack
        .wait_run(&run_id, timeout, Duration::from_millis(20))
        .await?;
    ensure!(
        run.status.as_deref() == Some("SUCCESS"),
        "chain run {run_id} ended {:?}",
        run.status
    );
    let mut execs: Vec<(usize, Exec)> = env
        .rec
        .of_run(&run_id)
        .into_iter()
        .filter_map(|e| step_index(&e.identifier).map(|i| (i, e)))
        .collect();
    execs.sort_by_key(|(i, e)| (*i, e.start_us));
    execs.dedup_by_key(|(i, _)| *i);
    ensure!(
        execs.len() == len,
        "chain run {run_id}: {} of {len} steps recorded",
        execs.len()
    );
    let mut out = ChainRun {
        wall_ms: run_wall_ms(&run),
        ..Default::default()
    };
    for w in execs.windows(2) {
        let (prev, cur) = (&w[0].1, &w[1].1);
        out.step_us.push(cur.start_us - prev.start_us);
        let parent_end = cur.parent_end_us.unwrap_or(prev.end_us);
        out.handoff_us.push(cur.start_us - parent_end);
        out.parent_end_us.push(parent_end);
        if let Some(d) = cur.dispatched_us {
            out.to_dispatch_us.push(d - parent_end);
            out.delivery_us.push(cur.start_us - d);
        }
    }
    out.starts_us = execs.iter().map(|(_, e)| e.start_us).collect();
    Ok(out)
}

/// Every MongoDB command (through the `--mongo-proxy` proxies) between the
/// return of a step's parent and the start of the step, in time order,
/// relative to the parent's return (ms).
pub fn step_timeline(env: &Env, run: &ChainRun, step: usize) -> Value {
    let (Some(&from), Some(&to)) = (run.parent_end_us.get(step), run.starts_us.get(step + 1))
    else {
        return Value::Null;
    };
    let mut rows: Vec<(i64, Value)> = Vec::new();
    for (svc, p) in &env.stack.proxies {
        for e in p.events_between(from, to) {
            if is_monitoring(&e.command) {
                continue;
            }
            rows.push((
                e.sent_us,
                json!({"service": svc, "command": e.command,
                       "sent_ms": round3((e.sent_us - from) as f64 / 1000.0),
                       "replied_ms": round3((e.replied_us - from) as f64 / 1000.0)}),
            ));
        }
    }
    rows.sort_by_key(|r| r.0);
    json!({
        "handoff_ms": round3((to - from) as f64 / 1000.0),
        "commands": rows.into_iter().map(|r| r.1).collect::<Vec<_>>(),
    })
}

/// `finished_at - created_at` in ms.
pub fn run_wall_ms(run: &RunDoc) -> f64 {
    run.finished_at
        .map(|f| (f.timestamp_millis() - run.created_at.timestamp_millis()) as f64)
        .unwrap_or(f64::NAN)
}

/// Aggregates chain runs.
pub fn chain_summary(runs: &[ChainRun], len: usize) -> Value {
    let cat = |f: fn(&ChainRun) -> &Vec<i64>| -> Vec<i64> {
        runs.iter().flat_map(|r| f(r).iter().copied()).collect()
    };
    let per_step: Vec<f64> = runs.iter().map(|r| r.wall_ms / len as f64).collect();
    json!({
        "runs": runs.len(),
        "chain_len": len,
        "step_ms": Summary::of_us(&cat(|r| &r.step_us)),
        "handoff_ms": Summary::of_us(&cat(|r| &r.handoff_us)),
        "to_dispatch_ms": Summary::of_us(&cat(|r| &r.to_dispatch_us)),
        "delivery_ms": Summary::of_us(&cat(|r| &r.delivery_us)),
        "run_wall_ms": Summary::of(&runs.iter().map(|r| r.wall_ms).collect::<Vec<_>>()),
        "run_ms_per_step": Summary::of(&per_step),
    })
}

/// Everything measured about one fan-out run.
#[derive(Debug, Clone)]
pub struct FanoutRun {
    /// Per-phase figures, transitions, MongoDB timestamps.
    pub figures: Value,
    /// Transitions per second through the whole pipeline.
    pub transitions_per_s: f64,
    /// Last `Work` return → unite state visible in MongoDB (ms).
    pub unite_after_last_result_ms: Option<f64>,
}

fn ms_of(d: Option<&DateTime>) -> Option<i64> {
    d.map(|t| t.timestamp_millis())
}

/// Triggers one run of graph `fan` (width `n`) and follows it to the end.
pub async fn fanout_run(env: &Env, n: usize, timeout: Duration) -> anyhow::Result<FanoutRun> {
    env.rec.clear();
    let triggered_us = now_us();
    let run_id = env.stack.trigger("fan").await?;
    let (run, merge_seen_us) = follow_fanout(env, &run_id, n, timeout).await?;
    let c = FanoutCensus::read(env, &run_id, n).await?;
    let states = c.by_id.values().sum::<usize>();
    // Transitions: status changes after a state is inserted. A dispatched
    // state goes CREATED→QUEUED→EXECUTED→SUCCESS (3); a fan-out sibling is
    // inserted EXECUTED and goes →SUCCESS (1).
    let siblings = n.max(1) - 1;
    let transitions = 3 * (states - siblings) + siblings;
    let wall_ms = run_wall_ms(&run);
    let transitions_per_s = transitions as f64 / (wall_ms / 1000.0);

    let execs = env.rec.of_run(&run_id);
    let find = |id: &str| execs.iter().find(|e| e.identifier == id);
    let (start, split, merge) = (find("start"), find("split"), find("merge"));
    let work_first = env.rec.work_first_start_us.load(Ordering::SeqCst);
    let work_last = env.rec.work_last_end_us.load(Ordering::SeqCst);
    let ms = |a: Option<i64>, b: Option<i64>| -> Value {
        match (a, b) {
            (Some(a), Some(b)) => json!(round3((b - a) as f64 / 1000.0)),
            _ => Value::Null,
        }
    };
    let created_ms = run.created_at.timestamp_millis();
    let finished_ms = run.finished_at.map(|f| f.timestamp_millis());
    let unite_after_last_result_ms = merge_seen_us.map(|m| round3((m - work_last) as f64 / 1000.0));
    let figures = json!({
        "n": n,
        "run_id": run_id,
        "states": states,
        "states_by_identifier": c.by_id,
        "transitions": transitions,
        "transitions_counting": "3 per dispatched state (CREATED→QUEUED→EXECUTED→SUCCESS), 1 per fan-out sibling (inserted EXECUTED →SUCCESS); insertions not counted",
        "run_wall_ms": wall_ms,
        "transitions_per_s": round3(transitions_per_s),
        "states_per_s": round3(states as f64 / (wall_ms / 1000.0)),
        "work_executions_per_s": if work_last > work_first {
            json!(round3(n as f64 / ((work_last - work_first) as f64 / 1e6)))
        } else { Value::Null },
        "phases_ms": {
            "trigger_to_start_exec": ms(Some(triggered_us), start.map(|e| e.start_us)),
            "start_end_to_split_exec": ms(start.map(|e| e.end_us), split.map(|e| e.start_us)),
            "split_end_to_first_work": ms(split.map(|e| e.end_us), (work_first > 0).then_some(work_first)),
            "first_work_to_last_work_end": ms((work_first > 0).then_some(work_first), (work_last > 0).then_some(work_last)),
            "last_work_end_to_merge_visible": unite_after_last_result_ms,
            "last_work_end_to_merge_dispatched": ms((work_last > 0).then_some(work_last), merge.and_then(|e| e.dispatched_us)),
            "last_work_end_to_merge_exec": ms((work_last > 0).then_some(work_last), merge.map(|e| e.start_us)),
            "merge_end_to_run_finished": ms(merge.map(|e| e.end_us / 1000 * 1000), finished_ms.map(|f| f * 1000)),
        },
        "mongo_ms": {
            "run_created_at": created_ms,
            "run_finished_at": finished_ms,
            "max_work_updated_at": c.work_max_updated,
            "max_work_created_at": c.work_max_created,
            "merge_created_at": c.merge_created,
            "merge_created_minus_max_work_updated": match (c.merge_created, c.work_max_updated) {
                (Some(m), Some(w)) => json!(m - w), _ => Value::Null },
        },
    });
    Ok(FanoutRun {
        figures,
        transitions_per_s,
        unite_after_last_result_ms,
    })
}

/// Polls run `run_id` until it ends; also returns when (µs) its unite
/// state appeared, seen from the run's `total_count`.
async fn follow_fanout(
    env: &Env,
    run_id: &str,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<(exo_store::RunDoc, Option<i64>)> {
    let started = Instant::now();
    let store = &env.stack.store;
    let mut merge_seen_us = None;
    let mut last_print = Instant::now();
    // start, the split and its siblings, the work states, the unite: the
    // run's `total_count` reaches this in the transaction that inserts the
    // unite state (a read of the run by its unique id, where looking the
    // unite up by name would scan the run's states on every poll).
    let all_states = (2 + n.max(1) + n) as i64;
    let run = loop {
        let done = env.rec.work_done.load(Ordering::SeqCst);
        // The run document appears once the trigger service has handled the command.
        let run = store.run(run_id).await?;
        if merge_seen_us.is_none() && run.as_ref().is_some_and(|r| r.total_count >= all_states) {
            merge_seen_us = Some(now_us());
        }
        if let Some(run) = &run
            && matches!(run.status.as_deref(), Some("SUCCESS") | Some("FAILED"))
        {
            break run.clone();
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            let (total, pending, success) = run
                .as_ref()
                .map(|r| (r.total_count, r.pending_count, r.success_count))
                .unwrap_or_default();
            eprintln!(
                "    {:>6.1} s: states {total} (pending {pending}, success {success}), work executed {done}/{n}",
                started.elapsed().as_secs_f64(),
            );
            last_print = Instant::now();
        }
        if started.elapsed() > timeout {
            bail!("fan-out run {run_id} (n={n}) not finished within {timeout:?}: {run:?}");
        }
        // Closely once the runtime is done, to time the unite.
        let pause = if done >= n && merge_seen_us.is_none() {
            2
        } else {
            50
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    };
    ensure!(
        run.status.as_deref() == Some("SUCCESS"),
        "fan-out run {run_id} ended {:?}",
        run.status
    );

    ensure!(
        run.status.as_deref() == Some("SUCCESS"),
        "fan-out run {run_id} ended {:?}",
        run.status
    );
    Ok((run, merge_seen_us))
}

/// What MongoDB holds of a fan-out run: states per identifier (checked:
/// 1 start, `n` split states, `n` work states, 1 merge, all SUCCESS) and
/// the timestamps the figures use.
struct FanoutCensus {
    by_id: BTreeMap<String, usize>,
    work_max_updated: Option<i64>,
    work_max_created: Option<i64>,
    merge_created: Option<i64>,
}

impl FanoutCensus {
    async fn read(env: &Env, run_id: &str, n: usize) -> anyhow::Result<Self> {
        let mut cur = env
            .stack
            .store
            .states_raw()
            .find(doc! {"run_id": run_id})
            .projection(doc! {"identifier": 1, "status": 1, "created_at": 1, "updated_at": 1})
            .await?;
        let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
        let mut not_success = 0usize;
        let mut work_max_updated: Option<i64> = None;
        let mut work_max_created: Option<i64> = None;
        let mut merge_created: Option<i64> = None;
        while let Some(d) = cur.try_next().await? {
            let d: Document = d;
            let ident = d.get_str("identifier").unwrap_or("?").to_string();
            if d.get_str("status").unwrap_or("") != "SUCCESS" {
                not_success += 1;
            }
            let created = ms_of(d.get_datetime("created_at").ok());
            let updated = ms_of(d.get_datetime("updated_at").ok());
            match ident.as_str() {
                "work" => {
                    work_max_updated = work_max_updated.max(updated);
                    work_max_created = work_max_created.max(created);
                }
                "merge" => merge_created = created,
                _ => {}
            }
            *by_id.entry(ident).or_default() += 1;
        }
        let count = |k: &str| by_id.get(k).copied().unwrap_or(0);
        ensure!(
            (
                count("start"),
                count("split"),
                count("work"),
                count("merge")
            ) == (1, n.max(1), n, 1),
            "unexpected states of run {run_id}: {by_id:?}"
        );
        ensure!(not_success == 0, "{not_success} states not SUCCESS");
        Ok(Self {
            by_id,
            work_max_updated,
            work_max_created,
            merge_created,
        })
    }
}
