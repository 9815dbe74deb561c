//! The five workloads. Each starts its own stack (so peak RSS and CPU belong
//! to it), measures, adds rows to the report and returns the stack so that
//! `--keep-servers` can leave the last one running.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use exo_bus::{Bus, Outgoing};
use exo_store::mongodb::bson::doc;
use exo_types::messages::{TriggerCommand, trigger_msg_id};
use exo_types::subjects;
use serde_json::{Value, json};

use crate::Args;
use crate::drive::{self, ChainRun, Env, FanoutRun, chain_run, chain_summary, fanout_run};
use crate::httprt::{self, HttpCounters, HttpRuntimeConfig};
use crate::nodes::{chain_graph, fan_graph, single_graph};
use crate::report::Report;
use crate::stack::{API_KEY, NS};
use crate::stats::{Summary, fmt_ms, round3};

/// `p50 … / p99 … ms` of the distribution `key` of a summary.
fn p50_p99(v: &Value, key: &str) -> String {
    let q = |q: &str| fmt_ms(f(v, &[key, q]));
    format!("p50 {} / p99 {} ms", q("p50"), q("p99"))
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or(f64::NAN)
}

fn chain_timeout(len: usize) -> Duration {
    Duration::from_secs(60 + len as u64 * 2)
}

/// One unmeasured chain run (connections, caches, consumers).
async fn warm_up(env: &Env, len: usize) -> anyhow::Result<()> {
    env.rec.clear();
    chain_run(env, len, chain_timeout(len)).await?;
    Ok(())
}

/// Measured chain runs, one after the other.
async fn chains(env: &Env, len: usize, runs: usize, label: &str) -> anyhow::Result<Vec<ChainRun>> {
    let mut out = Vec::new();
    for i in 0..runs {
        env.rec.clear();
        let r = chain_run(env, len, chain_timeout(len)).await?;
        eprintln!(
            "    {label} run {}/{runs}: {:.0} ms ({:.2} ms/step)",
            i + 1,
            r.wall_ms,
            r.wall_ms / len as f64
        );
        out.push(r);
    }
    Ok(out)
}

/// 1. Sequential chain of no-op steps.
pub async fn chain(args: &Args, report: &mut Report) -> anyhow::Result<Env> {
    eprintln!("== chain: {} runs of {} steps", args.runs, args.chain_len);
    let env = Env::start(&args.stack_options(), Some(args.runtime_concurrency)).await?;
    env.stack
        .upsert_graph("chain", &chain_graph(args.chain_len))
        .await?;
    warm_up(&env, args.chain_len).await?;
    let mark = env.mark().await;
    let runs = chains(&env, args.chain_len, args.runs, "chain").await?;
    let steps = (runs.len() * args.chain_len) as f64;
    let mut v = chain_summary(&runs, args.chain_len);
    v["cost"] = env.cost_since(&mark, steps, "step").await;
    if args.mongo_proxy
        && let Some(last) = runs.last()
    {
        // The step whose hand-off is the median of the last run.
        let mut order: Vec<usize> = (0..last.handoff_us.len()).collect();
        order.sort_by_key(|&i| last.handoff_us[i]);
        if let Some(&median) = order.get(order.len() / 2) {
            let t = drive::step_timeline(&env, last, median);
            eprintln!("    timeline of a median step (ms after the parent returned):");
            for c in t["commands"].as_array().into_iter().flatten() {
                eprintln!(
                    "      {:>7} → {:>7}  {:<15} {}",
                    c["sent_ms"],
                    c["replied_ms"],
                    c["service"].as_str().unwrap_or(""),
                    c["command"].as_str().unwrap_or("")
                );
            }
            eprintln!("      child started at {} ms", t["handoff_ms"]);
            v["median_step_timeline"] = t;
        }
    }
    let p50 = f(&v, &["step_ms", "p50"]);
    report.check(
        "chain",
        &format!("ms per step ({} × {} steps)", runs.len(), args.chain_len),
        p50_p99(&v, "step_ms"),
        "p50 ≤ 5 ms",
        p50,
        p50 <= 5.0,
    );
    report.fig(
        "chain",
        "run wall time / steps",
        format!(
            "p50 {} ms/step (run p50 {} ms)",
            fmt_ms(f(&v, &["run_ms_per_step", "p50"])),
            fmt_ms(f(&v, &["run_wall_ms", "p50"]))
        ),
    );
    report.fig(
        "chain",
        "CPU per step (all processes)",
        format!(
            "{} ms ({} cores busy)",
            fmt_ms(
                v["cost"]["cpu_ms_per_unit"]
                    .as_object()
                    .map(|m| m.values().filter_map(Value::as_f64).sum())
                    .unwrap_or(f64::NAN)
            ),
            v["cost"]["cpu_cores_busy"]
        ),
    );
    report.workloads.insert("chain".into(), v);
    Ok(env)
}

/// 3. Dispatch latency under light and heavy load.
pub async fn dispatch(args: &Args, report: &mut Report) -> anyhow::Result<Env> {
    let light_runs = args.runs.max(10);
    eprintln!(
        "== dispatch: light ({light_runs} chains), heavy (chains during a {}-wide fan-out)",
        args.heavy_fanout
    );
    let env = Env::start(&args.stack_options(), Some(args.runtime_concurrency)).await?;
    env.stack
        .upsert_graph("chain", &chain_graph(args.chain_len))
        .await?;
    env.stack
        .upsert_graph("fan", &fan_graph(args.heavy_fanout))
        .await?;
    warm_up(&env, args.chain_len).await?;
    let light = chains(&env, args.chain_len, light_runs, "light").await?;
    let light_v = chain_summary(&light, args.chain_len);
    let p99 = f(&light_v, &["handoff_ms", "p99"]);
    report.check(
        "dispatch",
        "light: parent result → child start",
        p50_p99(&light_v, "handoff_ms"),
        "p99 ≤ 10 ms",
        p99,
        p99 <= 10.0,
    );
    report.fig(
        "dispatch",
        "light: dispatch stored → child start",
        p50_p99(&light_v, "delivery_ms"),
    );

    let fan_started = Instant::now();
    let heavy = heavy_chains(&env, args).await?;
    let heavy_v = chain_summary(&heavy, args.chain_len);
    report.fig(
        "dispatch",
        &format!(
            "heavy ({}-wide fan-out): result → child start",
            args.heavy_fanout
        ),
        format!(
            "p50 {} / p99 {} ms (n={})",
            fmt_ms(f(&heavy_v, &["handoff_ms", "p50"])),
            fmt_ms(f(&heavy_v, &["handoff_ms", "p99"])),
            heavy_v["handoff_ms"]["n"]
        ),
    );
    report.fig(
        "dispatch",
        "heavy: dispatch stored → child start",
        p50_p99(&heavy_v, "delivery_ms"),
    );
    report.workloads.insert(
        "dispatch".into(),
        json!({
            "measured_as": "parent node returns (its result is published right after) → child node starts, from timestamps carried in the inputs (sent_at); to_dispatch = parent return → JetStream stored the child's dispatch (Context::published); delivery = dispatch stored → child starts",
            "light": light_v,
            "heavy": heavy_v,
            "heavy_fanout": args.heavy_fanout,
            "heavy_fanout_run_s": round3(fan_started.elapsed().as_secs_f64()),
        }),
    );
    Ok(env)
}

/// Heavy load: chains back to back while a wide fan-out runs; only the
/// hand-offs that happened before the fan-out ended are kept.
async fn heavy_chains(env: &Env, args: &Args) -> anyhow::Result<Vec<ChainRun>> {
    env.rec.clear();
    let fan_run = env.stack.trigger("fan").await?;
    let fan_started = Instant::now();
    let mut heavy: Vec<ChainRun> = Vec::new();
    let timeout = Duration::from_secs(300 + args.heavy_fanout as u64 / 50);
    let fan_end_us = loop {
        let run = env.stack.store.run(&fan_run).await?;
        if let Some(run) = run
            && matches!(run.status.as_deref(), Some("SUCCESS") | Some("FAILED"))
        {
            break run
                .finished_at
                .map(|f| f.timestamp_millis() * 1000)
                .unwrap_or(i64::MAX);
        }
        if fan_started.elapsed() > timeout {
            bail!("heavy fan-out {fan_run} not finished within {timeout:?}");
        }
        let r = chain_run(env, args.chain_len, timeout).await?;
        eprintln!(
            "    heavy chain {}: {:.0} ms ({:.1} ms/step), fan-out running {:.1} s",
            heavy.len() + 1,
            r.wall_ms,
            r.wall_ms / args.chain_len as f64,
            fan_started.elapsed().as_secs_f64()
        );
        env.rec.clear();
        heavy.push(r);
    };
    // Keep only the hand-offs that happened while the fan-out ran.
    for r in &mut heavy {
        let keep: Vec<bool> = r
            .starts_us
            .iter()
            .skip(1)
            .map(|&s| s < fan_end_us)
            .collect();
        let filt = |v: &mut Vec<i64>| {
            if v.len() == keep.len() {
                let mut k = keep.iter();
                v.retain(|_| *k.next().unwrap_or(&false));
            }
        };
        filt(&mut r.handoff_us);
        filt(&mut r.step_us);
        filt(&mut r.to_dispatch_us);
        filt(&mut r.delivery_us);
    }
    Ok(heavy)
}

/// 2. Fan-out + unite, one fresh stack per width.
pub async fn fanout(args: &Args, report: &mut Report) -> anyhow::Result<Option<Env>> {
    let mut last = None;
    let mut sections = Vec::new();
    for &n in &args.fanout {
        eprintln!("== fanout: n = {n}");
        let env = Env::start(&args.stack_options(), Some(args.runtime_concurrency)).await?;
        env.stack.upsert_graph("fan", &fan_graph(n)).await?;
        let mark = env.mark().await;
        let timeout = args
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(300 + n as u64 / 20));
        let r: FanoutRun = fanout_run(&env, n, timeout).await?;
        let mut v = r.figures.clone();
        v["cost"] = env
            .cost_since(&mark, f(&v, &["transitions"]), "transition")
            .await;
        let label = format!("fanout {n}");
        let tps = r.transitions_per_s;
        report.check_where(
            n >= 10_000,
            (&label, "transitions/s (whole pipeline)"),
            format!(
                "{tps:.0} ({} in {:.1} s)",
                v["transitions"],
                f(&v, &["run_wall_ms"]) / 1000.0
            ),
            "≥ 10,000/s",
            tps,
            |x| x >= 10_000.0,
        );
        let unite = r.unite_after_last_result_ms.unwrap_or(f64::NAN);
        let unite_text = format!(
            "{} ms after the last result (MongoDB stamps: {} ms)",
            fmt_ms(unite),
            v["mongo_ms"]["merge_created_minus_max_work_updated"]
        );
        report.check_where(
            n >= 100_000,
            (&label, "unite created after last child"),
            unite_text,
            "≤ 1000 ms",
            unite,
            |x| x <= 1000.0,
        );
        report_rss(report, &label, n >= 100_000, &v["cost"]["peak_rss_mb"]);
        let views = view_costs(&env, v["run_id"].as_str().unwrap_or_default()).await?;
        report.fig(
            &label,
            "reading the run per node (live view, exo run show)",
            format!(
                "{} ms, {} bytes (every state: {} ms, {} bytes)",
                views["nodes_ms"], views["nodes_bytes"], views["graph_ms"], views["graph_bytes"]
            ),
        );
        v["views"] = views;
        report.fig(
            &label,
            "work executions/s (runtime)",
            format!("{:.0}", f(&v, &["work_executions_per_s"])),
        );
        eprintln!(
            "    n={n}: {:.0} transitions/s, run {:.1} s",
            tps,
            f(&v, &["run_wall_ms"]) / 1000.0
        );
        sections.push(v);
        last = Some(env);
    }
    report
        .workloads
        .insert("fanout".into(), Value::Array(sections));
    Ok(last)
}

/// What reading a finished run costs through the API: the per-node summary
/// (`GET …/run/{id}/nodes`, median of five) against every state
/// (`GET …/states/run/{id}/graph`, once).
async fn view_costs(env: &Env, run_id: &str) -> anyhow::Result<Value> {
    let get = |path: String| async move {
        let started = std::time::Instant::now();
        let body = env
            .stack
            .http
            .get(format!(
                "{}/v0/namespace/{}{path}",
                env.stack.api_url,
                crate::stack::NS
            ))
            .header("x-api-key", crate::stack::API_KEY)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        anyhow::Ok((started.elapsed().as_secs_f64() * 1000.0, body.len()))
    };
    let mut nodes = Vec::new();
    for _ in 0..5 {
        nodes.push(get(format!("/run/{run_id}/nodes")).await?);
    }
    nodes.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (graph_ms, graph_bytes) = get(format!("/states/run/{run_id}/graph")).await?;
    Ok(json!({
        "nodes_ms": round3(nodes[2].0), "nodes_bytes": nodes[2].1,
        "graph_ms": round3(graph_ms), "graph_bytes": graph_bytes,
    }))
}

/// Peak RSS rows: per service (checked against 512 MiB where `checked`),
/// and the servers' and the bench's.
fn report_rss(report: &mut Report, label: &str, checked: bool, rss: &Value) {
    let services_max = crate::stack::SERVICES
        .iter()
        .filter_map(|s| rss[*s].as_f64())
        .fold(0.0, f64::max);
    let rss_text = crate::stack::SERVICES
        .iter()
        .map(|s| format!("{}={}", s.trim_start_matches("exo-"), rss[*s]))
        .collect::<Vec<_>>()
        .join(" ");
    report.check_where(
        checked,
        (label, "peak RSS per service (MiB)"),
        rss_text,
        "each ≤ 512 MiB",
        services_max,
        |x| x <= 512.0,
    );
    report.fig(
        label,
        "peak RSS servers / bench (MiB)",
        format!(
            "nats={} secantusd={} bench+runtime={}",
            rss["nats-server"], rss["secantusd-rs"], rss["exo-bench (runtime)"]
        ),
    );
}

/// Samples the number of runs in the database until it reaches `target`.
pub(crate) async fn count_runs_until(
    env: &Env,
    target: u64,
    start: Instant,
    timeout: Duration,
) -> anyhow::Result<Vec<(f64, u64)>> {
    let mut samples = Vec::new();
    loop {
        let n = env.stack.store.runs().count_documents(doc! {}).await?;
        samples.push((start.elapsed().as_secs_f64(), n));
        if n >= target {
            return Ok(samples);
        }
        if start.elapsed() > timeout {
            bail!("only {n} of {target} runs created within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs created per second: overall, and between 10 % and 90 % of the batch.
pub(crate) fn creation_rates(samples: &[(f64, u64)], base: u64, m: u64) -> (f64, f64, f64) {
    let done = samples.last().map(|s| s.0).unwrap_or(f64::NAN);
    let at = |frac: f64| {
        samples
            .iter()
            .find(|(_, n)| (n - base.min(*n)) as f64 >= frac * m as f64)
            .copied()
    };
    let steady = match (at(0.1), at(0.9)) {
        (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0),
        _ => f64::NAN,
    };
    (m as f64 / done, steady, done)
}

/// 4. Runs started per second, over HTTP, over NATS, and by events.
pub async fn trigger(args: &Args, report: &mut Report) -> anyhow::Result<Env> {
    let m = args.trigger_runs;
    eprintln!(
        "== trigger: {m} runs over HTTP ({} clients), then {m} over NATS",
        args.trigger_clients
    );
    // The runtime only registers the nodes; no run executes (the root states
    // are dispatched and stay in their queue).
    let mut env = Env::start(&args.stack_options(), Some(args.runtime_concurrency)).await?;
    env.stop_runtimes().await;
    env.stack.upsert_graph("one", &single_graph()).await?;
    let mark = env.mark().await;

    let (http, lat) = trigger_over_http(&env, m, args.trigger_clients).await?;
    let (http_rate, http_steady, http_done, accepted_s) =
        (http.rate, http.steady, http.done, http.sent_s);
    let http_cost = env.cost_since(&mark, m as f64, "run").await;

    let (nats, nats_cost) = trigger_over_nats(&env, m).await?;
    let (nats_rate, nats_steady, nats_done, published_s) =
        (nats.rate, nats.steady, nats.done, nats.sent_s);
    let events = crate::events::measure(&env, m, 2 * m as u64, report).await?;

    report.fig(
        "trigger",
        &format!("HTTP: runs created/s ({} clients)", args.trigger_clients),
        format!(
            "{http_rate:.0} overall, {http_steady:.0} steady ({m} in {http_done:.1} s; answered {:.0}/s)",
            m as f64 / accepted_s
        ),
    );
    report.fig("trigger", "HTTP: trigger request latency", lat.short());
    report.fig(
        "trigger",
        "NATS: runs created/s",
        format!(
            "{nats_rate:.0} overall, {nats_steady:.0} steady ({m} in {nats_done:.1} s; published {:.0}/s)",
            m as f64 / published_s
        ),
    );
    report.workloads.insert(
        "trigger".into(),
        json!({
            "graph": "one node; no runtime executes (roots are dispatched and wait in their queue)",
            "runs": m,
            "http": {
                "clients": args.trigger_clients,
                "runs_created_per_s": round3(http_rate),
                "steady_runs_created_per_s": round3(http_steady),
                "all_created_after_s": round3(http_done),
                "requests_answered_per_s": round3(m as f64 / accepted_s),
                "request_latency_ms": lat,
                "cost": http_cost,
            },
            "nats": {
                "publish_window": exo_bus::PUBLISH_WINDOW,
                "runs_created_per_s": round3(nats_rate),
                "steady_runs_created_per_s": round3(nats_steady),
                "all_created_after_s": round3(nats_done),
                "published_per_s": round3(m as f64 / published_s),
                "cost": nats_cost,
            },
            "events": events,
        }),
    );
    Ok(env)
}

/// How fast a batch of triggers became runs: overall and steady rate,
/// when the last run existed, and how long sending took (s).
struct Rates {
    rate: f64,
    steady: f64,
    done: f64,
    sent_s: f64,
}

/// `m` triggers over HTTP from `clients` concurrent clients; also the
/// request latencies.
async fn trigger_over_http(
    env: &Env,
    m: usize,
    clients_n: usize,
) -> anyhow::Result<(Rates, Summary)> {
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(m)));
    let start = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..clients_n {
        let (next, lat, http) = (next.clone(), latencies.clone(), env.stack.http.clone());
        let url = format!("{}/v0/namespace/{NS}/graph/one/trigger", env.stack.api_url);
        clients.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::SeqCst) < m {
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .header("x-api-key", API_KEY)
                    .json(&json!({}))
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "trigger: {}", r.status());
                if let Ok(mut l) = lat.lock() {
                    l.push(t.elapsed().as_micros() as i64);
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    let counting = count_runs_until(env, m as u64, start, Duration::from_secs(600));
    let (samples, accepted_s) = {
        let accept = async {
            for c in clients {
                c.await??;
            }
            Ok::<f64, anyhow::Error>(start.elapsed().as_secs_f64())
        };
        let (s, a) = tokio::join!(counting, accept);
        (s?, a?)
    };
    let (rate, steady, done) = creation_rates(&samples, 0, m as u64);
    let lat = Summary::of_us(&latencies.lock().map(|l| l.clone()).unwrap_or_default());
    Ok((
        Rates {
            rate,
            steady,
            done,
            sent_s: accepted_s,
        },
        lat,
    ))
}

/// `m` trigger commands published on NATS at once (after `m` runs exist).
/// Also the cost of the window (from after the messages are built).
async fn trigger_over_nats(env: &Env, m: usize) -> anyhow::Result<(Rates, Value)> {
    let bus = Bus::connect(&env.stack.nats.url(), "exo-bench-trigger").await?;
    let now = exo_types::time::now_ms();
    let msgs: Vec<Outgoing> = (0..m)
        .map(|_| {
            let cmd = TriggerCommand {
                run_id: exo_types::names::RunId::trusted(uuid::Uuid::new_v4().to_string()),
                run: exo_types::messages::RunRequest {
                    graph_name: "one".into(),
                    inputs: Default::default(),
                    store: Default::default(),
                    start_delay_ms: 0,
                },
                requested_at_ms: Some(now),
            };
            Outgoing::json(subjects::trigger(NS), trigger_msg_id(&cmd.run_id), &cmd)
        })
        .collect::<Result<_, _>>()?;
    let mark = env.mark().await;
    let start = Instant::now();
    let counting = count_runs_until(env, 2 * m as u64, start, Duration::from_secs(600));
    let publish = async {
        bus.publish_batch(msgs).await?;
        Ok::<f64, anyhow::Error>(start.elapsed().as_secs_f64())
    };
    let (samples, published_s) = tokio::join!(counting, publish);
    let (samples, published_s) = (samples?, published_s?);
    let (rate, steady, done) = creation_rates(&samples, m as u64, m as u64);
    let cost = env.cost_since(&mark, m as f64, "run").await;
    bus.drain().await;
    let rates = Rates {
        rate,
        steady,
        done,
        sent_s: published_s,
    };
    Ok((rates, cost))
}

/// The HTTP runtime's settings measured: the SDK's defaults (one chain),
/// then tuned ones (`--runs` chains) unless `--http-sdk-only`.
fn http_profiles(args: &Args) -> Vec<(&'static str, HttpRuntimeConfig, usize)> {
    let sdk = HttpRuntimeConfig {
        batch_size: args.http_batch,
        workers: args.http_workers,
        poll_ms: args.http_poll_ms,
    };
    let tuned = HttpRuntimeConfig {
        batch_size: 64,
        workers: 32,
        poll_ms: 0,
    };
    if args.http_sdk_only {
        vec![("sdk", sdk, 1)]
    } else {
        vec![("sdk", sdk, 1), ("tuned", tuned, args.runs)]
    }
}

/// `runs` chains summarised, with their cost per step.
async fn costed_chains(env: &Env, args: &Args, runs: usize, label: &str) -> anyhow::Result<Value> {
    let mark = env.mark().await;
    let runs_v = chains(env, args.chain_len, runs, label).await?;
    let mut chain_v = chain_summary(&runs_v, args.chain_len);
    chain_v["cost"] = env
        .cost_since(&mark, (runs_v.len() * args.chain_len) as f64, "step")
        .await;
    Ok(chain_v)
}

/// A fan-out's rate, wall time and runtime rate, for a report row.
fn fanout_text(transitions_per_s: f64, v: &Value) -> String {
    format!(
        "{:.0} (run {:.1} s, work {:.0}/s)",
        transitions_per_s,
        f(v, &["run_wall_ms"]) / 1000.0,
        f(v, &["work_executions_per_s"])
    )
}

/// A stack with the Python-SDK-style HTTP runtime (`cfg`) serving, and the
/// chain and fan-out graphs stored.
async fn http_env(args: &Args, cfg: HttpRuntimeConfig) -> anyhow::Result<(Env, Arc<HttpCounters>)> {
    let mut env = Env::start(&args.stack_options(), None).await?;
    let counters = Arc::new(HttpCounters::default());
    let (url, rec, c, stop) = (
        env.stack.api_url.clone(),
        env.rec.clone(),
        counters.clone(),
        env.stop.clone(),
    );
    env.spawn(async move {
        if let Err(error) = httprt::run(url, rec, cfg, c, stop).await {
            eprintln!("http runtime failed: {error:#}");
        }
    });
    env.stack
        .wait_registered(crate::nodes::NODE_NAMES.len() as u64)
        .await?;
    env.stack
        .upsert_graph("chain", &chain_graph(args.chain_len))
        .await
        .context("chain graph")?;
    env.stack
        .upsert_graph("fan", &fan_graph(args.http_fanout))
        .await?;
    Ok((env, counters))
}

/// 5. Chain and fan-out driven by a Python-SDK-style HTTP runtime.
pub async fn http(args: &Args, report: &mut Report) -> anyhow::Result<Option<Env>> {
    let mut section = serde_json::Map::new();
    let mut last = None;
    for (name, cfg, runs) in http_profiles(args) {
        eprintln!(
            "== http ({name}: batch_size {}, workers {}, poll {} ms): chain ×{runs}, fan-out {}",
            cfg.batch_size, cfg.workers, cfg.poll_ms, args.http_fanout
        );
        let (env, counters) = http_env(args, cfg).await?;
        if runs > 1 {
            warm_up(&env, args.chain_len).await?;
        }
        let chain_v = costed_chains(&env, args, runs, &format!("http {name}")).await?;
        let mark = env.mark().await;
        let timeout = Duration::from_secs(600 + args.http_fanout as u64 / 5);
        let fan = fanout_run(&env, args.http_fanout, timeout).await?;
        let mut fan_v = fan.figures.clone();
        fan_v["cost"] = env
            .cost_since(&mark, f(&fan_v, &["transitions"]), "transition")
            .await;
        report.fig(
            &format!("http {name}"),
            &format!(
                "chain ms/step (batch {}, workers {}, poll {} ms)",
                cfg.batch_size, cfg.workers, cfg.poll_ms
            ),
            p50_p99(&chain_v, "step_ms"),
        );
        report.fig(
            &format!("http {name}"),
            &format!("fan-out {}: transitions/s", args.http_fanout),
            fanout_text(fan.transitions_per_s, &fan_v),
        );
        let enqueue = crate::stats::Summary::of(
            &counters
                .enqueue_ms
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default(),
        );
        report.fig(
            &format!("http {name}"),
            "enqueue latency (whole run)",
            enqueue.short(),
        );
        let requests = json!({
            "enqueue_calls": counters.enqueue_calls.load(Ordering::Relaxed),
            "states_received": counters.states.load(Ordering::Relaxed),
            "results_posted": counters.results.load(Ordering::Relaxed),
            "errors": counters.errors.load(Ordering::Relaxed),
        });
        section.insert(
            name.to_string(),
            json!({"config": cfg, "enqueue_ms": enqueue, "chain": chain_v, "fanout": fan_v, "requests": requests}),
        );
        if let Some(mut prev) = last.replace(env) {
            prev.stop_runtimes().await;
        }
    }
    report
        .workloads
        .insert("http".into(), Value::Object(section));
    Ok(last)
}
