//! The demo: an example runtime plus a driver, against running services.
//!
//! It registers three nodes, upserts a graph with a fan-out and a unite,
//! triggers a run, prints its progress and exits with the final status
//! (0 for SUCCESS). `deploy/demo.sh` starts everything it needs.
//!
//! With `--serve` it is only the runtime: it serves the four nodes until
//! SIGTERM or Ctrl-C, then finishes what it holds and exits 0 (the runtime
//! Deployment in `k8s/runtimes/rust` runs it so).
//!
//! ```text
//! start ──▶ fan (N outputs) ──▶ work (×N) ──▶ report (unites start, ALL_SUCCESS)
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use exo_runtime::{Context, Node, NodeError, Output, Runtime};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(about = "Exosphere-compatible orchestrator demo: runtime + driver")]
struct Cli {
    /// API base URL.
    #[arg(long, env = "EXO_DEMO_API", default_value = "http://127.0.0.1:8000")]
    api: String,
    /// API key.
    #[arg(long, env = "EXO_API__KEY", default_value = "exo-demo-key")]
    key: String,
    /// NATS URL.
    #[arg(long, env = "EXO_NATS__URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Namespace.
    #[arg(long, default_value = "demo")]
    namespace: String,
    /// Fan-out width.
    #[arg(long, default_value_t = 100)]
    width: usize,
    /// Only serve the nodes (no graph, no run) until SIGTERM or Ctrl-C.
    #[arg(long, env = "EXO_DEMO_SERVE")]
    serve: bool,
}

#[derive(Deserialize)]
struct GreetIn {
    name: String,
}
#[derive(Serialize)]
struct Text {
    text: String,
}
#[derive(Deserialize)]
struct CountIn {
    count: String,
}
#[derive(Deserialize)]
struct TextIn {
    text: String,
}
#[derive(Deserialize)]
struct ReportIn {
    greeting: String,
    width: String,
}

struct Start;
impl Node for Start {
    type Inputs = GreetIn;
    type Outputs = Text;
    fn name(&self) -> &str {
        "Start"
    }
    fn input_fields(&self) -> Vec<&str> {
        vec!["name"]
    }
    fn output_fields(&self) -> Vec<&str> {
        vec!["text"]
    }
    async fn execute(&self, i: GreetIn, _: &Context) -> Result<Output<Text>, NodeError> {
        Ok(Output::One(Text {
            text: format!("hello {}", i.name),
        }))
    }
}

struct Fan;
impl Node for Fan {
    type Inputs = CountIn;
    type Outputs = Text;
    fn name(&self) -> &str {
        "Fan"
    }
    fn input_fields(&self) -> Vec<&str> {
        vec!["count"]
    }
    fn output_fields(&self) -> Vec<&str> {
        vec!["text"]
    }
    async fn execute(&self, i: CountIn, _: &Context) -> Result<Output<Text>, NodeError> {
        let n: usize = i
            .count
            .parse()
            .map_err(|_| NodeError::new("count must be a number"))?;
        Ok(Output::Many(
            (0..n)
                .map(|k| Text {
                    text: k.to_string(),
                })
                .collect(),
        ))
    }
}

struct Work;
impl Node for Work {
    type Inputs = TextIn;
    type Outputs = Text;
    fn name(&self) -> &str {
        "Work"
    }
    fn input_fields(&self) -> Vec<&str> {
        vec!["text"]
    }
    fn output_fields(&self) -> Vec<&str> {
        vec!["text"]
    }
    async fn execute(&self, i: TextIn, _: &Context) -> Result<Output<Text>, NodeError> {
        let k: u64 = i.text.parse().map_err(|_| NodeError::new("not a number"))?;
        Ok(Output::One(Text {
            text: (k * k).to_string(),
        }))
    }
}

struct Report;
impl Node for Report {
    type Inputs = ReportIn;
    type Outputs = Text;
    fn name(&self) -> &str {
        "Report"
    }
    fn input_fields(&self) -> Vec<&str> {
        vec!["greeting", "width"]
    }
    fn output_fields(&self) -> Vec<&str> {
        vec!["text"]
    }
    async fn execute(&self, i: ReportIn, ctx: &Context) -> Result<Output<Text>, NodeError> {
        let text = format!(
            "{}: all {} branches done (run {})",
            i.greeting, i.width, ctx.run_id
        );
        println!("  report node says: {text}");
        Ok(Output::One(Text { text }))
    }
}

async fn call(
    http: &reqwest::Client,
    cli: &Cli,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut req = http
        .request(
            method,
            format!("{}/v0/namespace/{}{path}", cli.api, cli.namespace),
        )
        .header("x-api-key", &cli.key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{path}: {status} {v}");
    Ok(v)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    exo_service::telemetry::init("exo-demo");
    let ns = cli.namespace.clone();
    let runtime = Runtime::builder(&ns, "demo-runtime")
        .nats_url(&cli.nats)
        .register_with(&cli.api, &cli.key)
        .concurrency(32)
        .node(Start)
        .node(Fan)
        .node(Work)
        .node(Report)
        .build();
    if cli.serve {
        println!("==> serving nodes Start, Fan, Work, Report in namespace {ns} until SIGTERM");
        runtime.run(exo_service::shutdown::signal_token()).await?;
        println!("==> runtime stopped");
        return Ok(());
    }
    let stop = CancellationToken::new();
    let rt = {
        let stop = stop.clone();
        tokio::spawn(async move { runtime.run(stop).await })
    };
    let http = reqwest::Client::new();
    wait_registered(&http, &cli).await?;
    println!("==> runtime registered nodes Start, Fan, Work, Report in namespace {ns}");
    upsert_graph(&http, &cli).await?;
    let t0 = Instant::now();
    let trig = call(
        &http,
        &cli,
        reqwest::Method::POST,
        "/graph/demo-graph/trigger",
        Some(json!({"store": {"who": "world"}})),
    )
    .await?;
    let run_id = trig["run_id"].as_str().unwrap_or_default().to_string();
    println!("==> triggered run {run_id}");
    let final_status = follow(&http, &cli, &run_id, t0).await?;
    println!(
        "==> run {run_id} finished: {final_status} in {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    stop.cancel();
    let _ = rt.await;
    anyhow::ensure!(final_status == "SUCCESS", "run ended {final_status}");
    Ok(())
}

/// Waits (up to 20 s) until the runtime's four nodes are registered.
async fn wait_registered(http: &reqwest::Client, cli: &Cli) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = call(http, cli, reqwest::Method::GET, "/nodes/", None).await?;
        if nodes["count"].as_u64().unwrap_or(0) >= 4 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "runtime did not register its nodes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stores the demo graph and checks that it is VALID.
async fn upsert_graph(http: &reqwest::Client, cli: &Cli) -> anyhow::Result<()> {
    let ns = &cli.namespace;
    let graph = json!({
        "secrets": {},
        "store_config": {"required_keys": ["who"]},
        "retry_policy": {"max_retries": 2, "strategy": "EXPONENTIAL_FULL_JITTER", "backoff_factor": 100},
        "nodes": [
            {"node_name": "Start", "namespace": ns, "identifier": "start", "inputs": {"name": "${{ store.who }}"}, "next_nodes": ["fan"]},
            {"node_name": "Fan", "namespace": ns, "identifier": "fan", "inputs": {"count": cli.width.to_string()}, "next_nodes": ["work"]},
            {"node_name": "Work", "namespace": ns, "identifier": "work", "inputs": {"text": "${{ fan.outputs.text }}"}, "next_nodes": ["report"]},
            {"node_name": "Report", "namespace": ns, "identifier": "report",
             "inputs": {"greeting": "${{ start.outputs.text }}", "width": cli.width.to_string()},
             "unites": {"identifier": "start", "strategy": "ALL_SUCCESS"}},
        ]
    });
    call(
        http,
        cli,
        reqwest::Method::PUT,
        "/graph/demo-graph",
        Some(graph),
    )
    .await?;
    let g = call(http, cli, reqwest::Method::GET, "/graph/demo-graph", None).await?;
    anyhow::ensure!(g["validation_status"] == "VALID", "graph not valid: {g}");
    println!(
        "==> graph demo-graph is VALID: start -> fan (x{}) -> work -> report (unites start)",
        cli.width
    );
    Ok(())
}

/// Prints the run's progress until it ends (at most 300 s); its final
/// status.
async fn follow(
    http: &reqwest::Client,
    cli: &Cli,
    run_id: &str,
    t0: Instant,
) -> anyhow::Result<String> {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = call(
            http,
            cli,
            reqwest::Method::GET,
            &format!("/run/{run_id}"),
            None,
        )
        .await?;
        println!(
            "    {:>6.1}s  status={:<8} states={:<5} pending={:<5} success={:<5} errored={:<3} retried={}",
            t0.elapsed().as_secs_f64(),
            r["status"].as_str().unwrap_or("?"),
            r["total_count"],
            r["pending_count"],
            r["success_count"],
            r["errored_count"],
            r["retried_count"]
        );
        match r["status"].as_str() {
            Some(done @ ("SUCCESS" | "FAILED")) => return Ok(done.to_string()),
            _ if t0.elapsed() > Duration::from_secs(300) => {
                anyhow::bail!("run did not finish in 300 s")
            }
            _ => {}
        }
    }
}
