//! `exo-bench`: speed, width and cost of the orchestrator, measured on real
//! local servers (nats-server, secantusd-rs) with the five services running as
//! release processes and a Rust-SDK runtime inside this process.
//!
//! Workloads (`--workload`, comma-separated, default `all`):
//!
//! * `chain`: sequential chain of no-op steps; ms per step.
//! * `fanout`: a node fans out N children, a unite waits for all of them;
//!   transitions per second, unite latency, peak RSS of every process.
//! * `dispatch`: parent result → child start, under light load (one chain)
//!   and heavy load (a wide fan-out running).
//! * `trigger`: runs created per second via HTTP and via NATS commands.
//! * `http`: chain and fan-out driven by a Python-SDK-style HTTP runtime.
//!
//! Prints progress on stderr, then a table and a JSON summary (`--json PATH`
//! writes it to a file). `deploy/bench.sh` builds and runs it; the figures
//! and their reading are in `docs/benchmarks.md`.

mod drive;
mod events;
mod httprt;
mod nodes;
mod procstat;
mod proxy;
mod report;
mod stack;
mod stats;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

use crate::drive::Env;
use crate::report::Report;
use crate::stack::StackOptions;

/// One workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Sequential chain of no-op steps.
    Chain,
    /// Fan-out + unite.
    Fanout,
    /// Dispatch latency, light and heavy load.
    Dispatch,
    /// Trigger throughput over HTTP and NATS.
    Trigger,
    /// Chain and fan-out through a Python-SDK-style HTTP runtime.
    Http,
    /// Everything above.
    All,
}

/// Command-line flags.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "exo-bench",
    version,
    about = "Benchmarks of the exo orchestrator on real local servers",
    args_override_self = true
)]
pub struct Args {
    /// Workloads to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub workload: Vec<Workload>,
    /// Fan-out widths (comma-separated); e.g. `--fanout 100000` for the wide one.
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 10000])]
    pub fanout: Vec<usize>,
    /// Measured chain runs (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Steps per chain.
    #[arg(long, default_value_t = 40)]
    pub chain_len: usize,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Leave the last workload's servers and services running until Ctrl-C.
    #[arg(long)]
    pub keep_servers: bool,
    /// Start secantusd-rs with --sync-on-commit (fsync on every commit).
    #[arg(long)]
    pub sync_on_commit: bool,
    /// Start JetStream with `sync_interval: always` (fsync every write).
    #[arg(long)]
    pub nats_sync_always: bool,
    /// nats-server `max_payload` in bytes (a 100k-wide result exceeds 1 MiB).
    #[arg(long, default_value_t = 64 << 20)]
    pub nats_max_payload: u64,
    /// Run a JetStream cluster of this many nats-servers, every stream
    /// replicated on all of them (clients connect to the first).
    #[arg(long, default_value_t = 1)]
    pub nats_cluster: usize,
    /// Executions at once per node in the Rust-SDK runtime.
    #[arg(long, default_value_t = 256)]
    pub runtime_concurrency: usize,
    /// Fan-out width that loads the system during the heavy dispatch test.
    #[arg(long, default_value_t = 10_000)]
    pub heavy_fanout: usize,
    /// Runs to trigger per path in the trigger workload.
    #[arg(long, default_value_t = 3000)]
    pub trigger_runs: usize,
    /// Concurrent HTTP clients in the trigger workload.
    #[arg(long, default_value_t = 32)]
    pub trigger_clients: usize,
    /// HTTP runtime `batch_size` (Python SDK default 16).
    #[arg(long, default_value_t = 16)]
    pub http_batch: usize,
    /// HTTP runtime `workers` (Python SDK default 4).
    #[arg(long, default_value_t = 4)]
    pub http_workers: usize,
    /// HTTP runtime `poll_interval` in ms (Python SDK default 1 s).
    #[arg(long, default_value_t = 1000)]
    pub http_poll_ms: u64,
    /// Fan-out width of the HTTP workload.
    #[arg(long, default_value_t = 1000)]
    pub http_fanout: usize,
    /// Only the SDK-default HTTP profile (skip the tuned one).
    #[arg(long)]
    pub http_sdk_only: bool,
    /// Count and time every MongoDB command per service through a proxy
    /// (diagnostics: adds a hop, so figures are slower).
    #[arg(long)]
    pub mongo_proxy: bool,
    /// Extra service environment, `[SERVICE:]KEY=VALUE` (repeatable), e.g.
    /// `exo-completion:EXO_CONCURRENCY=4`.
    #[arg(long, value_parser = parse_service_env)]
    pub service_env: Vec<(Option<String>, String, String)>,
    /// Processes of a service, `SERVICE=N` (repeatable), e.g.
    /// `exo-completion=2`; the API must stay at one (it binds one port).
    #[arg(long, value_parser = parse_replicas)]
    pub replicas: Vec<(String, usize)>,
    /// Give each `exo-completion` replica its own share of the result
    /// partitions (`EXO_PARTITIONS=i/N`) instead of every lane.
    #[arg(long)]
    pub share_partitions: bool,
    /// `RUST_LOG` of the services.
    #[arg(long, default_value = "info")]
    pub rust_log: String,
    /// Directory of the service binaries (default `<workspace>/target/release`).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Per-run timeout of the fan-out workload, seconds (default scales with N).
    #[arg(long)]
    pub timeout_secs: Option<u64>,
}

impl Args {
    /// How to start each stack.
    pub fn stack_options(&self) -> StackOptions {
        StackOptions {
            bin_dir: self.bin_dir(),
            sync_on_commit: self.sync_on_commit,
            nats_sync_always: self.nats_sync_always,
            max_payload: self.nats_max_payload,
            rust_log: self.rust_log.clone(),
            mongo_proxy: self.mongo_proxy,
            service_env: self.service_env.clone(),
            replicas: self.replicas.iter().cloned().collect(),
            share_partitions: self.share_partitions,
            nats_cluster: self.nats_cluster,
        }
    }

    fn bin_dir(&self) -> PathBuf {
        self.bin_dir.clone().unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| exo_test_support::workspace_root().join("target"));
            let target = if target.is_relative() {
                exo_test_support::workspace_root().join(target)
            } else {
                target
            };
            target.join("release")
        })
    }

    fn wants(&self, w: Workload) -> bool {
        self.workload.contains(&Workload::All) || self.workload.contains(&w)
    }
}

/// Parses `SERVICE=N` (N ≥ 1; not the API, which binds one port).
fn parse_replicas(s: &str) -> Result<(String, usize), String> {
    let (svc, n) = s
        .split_once('=')
        .ok_or_else(|| format!("expected SERVICE=N, got {s:?}"))?;
    let n: usize = n
        .parse()
        .map_err(|_| format!("expected a count after '=', got {n:?}"))?;
    if n == 0 || svc == "exo-api" || !crate::stack::SERVICES.contains(&svc) {
        return Err(format!(
            "SERVICE=N needs N >= 1 and one of {:?} except exo-api, got {s:?}",
            crate::stack::SERVICES
        ));
    }
    Ok((svc.to_string(), n))
}

/// Parses `[SERVICE:]KEY=VALUE`.
fn parse_service_env(s: &str) -> Result<(Option<String>, String, String), String> {
    let (target, kv) = match s.split_once(':') {
        Some((svc, kv)) if !svc.contains('=') => (Some(svc.to_string()), kv),
        _ => (None, s),
    };
    let (k, v) = kv
        .split_once('=')
        .ok_or_else(|| format!("expected [SERVICE:]KEY=VALUE, got {s:?}"))?;
    Ok((target, k.to_string(), v.to_string()))
}

/// The commit the binaries were built from, and whether the tree had changes.
fn git_state() -> Value {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(exo_test_support::workspace_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    json!({
        "head": git(&["rev-parse", "--short", "HEAD"]),
        "changed_files": git(&["status", "--porcelain"]).map(|s| s.lines().count()),
    })
}

fn servers_section(args: &Args) -> Value {
    let nats_bin = exo_test_support::nats_server_bin().ok();
    let mongo_bin = exo_test_support::mongo_server_bin().ok();
    json!({
        "nats": {
            "binary": nats_bin.as_ref().map(|p| p.display().to_string()),
            "version": nats_bin.as_deref().map(report::version_of),
            "max_payload": args.nats_max_payload,
            "cluster_servers": args.nats_cluster,
            "stream_replicas": args.nats_cluster.max(1),
            "jetstream_storage": "file",
            "sync_interval": if args.nats_sync_always { "always" } else { "default (2 min; no fsync per write)" },
        },
        "mongo": {
            "binary": mongo_bin.as_ref().map(|p| p.display().to_string()),
            "version": mongo_bin.as_deref().map(report::version_of),
            "external": std::env::var("EXO_TEST_MONGO_URI").ok().filter(|v| !v.is_empty()).is_some(),
            "args": if args.sync_on_commit { "--cache-size 256M --log-file-max 16MB --sync-on-commit" } else { "--cache-size 256M --log-file-max 16MB" },
            "sync_on_commit": args.sync_on_commit,
        },
        "services": {
            "binaries": args.bin_dir().display().to_string(),
            "rust_log": args.rust_log,
            "mongo_proxy": args.mongo_proxy,
            "extra_env": args.service_env.iter().map(|(s, k, v)| format!("{}{k}={v}", s.as_ref().map(|s| format!("{s}:")).unwrap_or_default())).collect::<Vec<_>>(),
            "replicas": args.replicas.iter().map(|(s, n)| format!("{s}={n}")).collect::<Vec<_>>(),
            "share_partitions": args.share_partitions,
        },
        "runtime": {
            "kind": "Rust SDK (exo-runtime) in the bench process",
            "concurrency_per_node": args.runtime_concurrency,
        },
    })
}

async fn run_all(args: &Args, report: &mut Report) -> Option<Env> {
    let mut kept: Option<Env> = None;
    let mut keep = |env: Option<Env>| {
        if let Some(env) = env {
            kept = Some(env);
        }
    };
    macro_rules! step {
        ($w:expr, $name:literal, $call:expr) => {
            if args.wants($w) {
                let t = Instant::now();
                match $call {
                    Ok(env) => keep(env),
                    Err(error) => {
                        eprintln!("!! {} failed: {error:#}", $name);
                        report
                            .errors
                            .insert($name.into(), Value::String(format!("{error:#}")));
                    }
                }
                eprintln!("   ({} took {:.0} s)", $name, t.elapsed().as_secs_f64());
            }
        };
    }
    step!(
        Workload::Chain,
        "chain",
        workloads::chain(args, report).await.map(Some)
    );
    step!(
        Workload::Dispatch,
        "dispatch",
        workloads::dispatch(args, report).await.map(Some)
    );
    step!(
        Workload::Fanout,
        "fanout",
        workloads::fanout(args, report).await
    );
    step!(
        Workload::Trigger,
        "trigger",
        workloads::trigger(args, report).await.map(Some)
    );
    step!(Workload::Http, "http", workloads::http(args, report).await);
    kept
}

/// `--keep-servers`: prints where the last workload's servers and logs
/// are, and keeps them until Ctrl-C.
async fn keep_until_ctrl_c(env: drive::Env) {
    println!("\nServers kept running (Ctrl-C to stop):");
    println!(
        "  NATS      {} (monitor {})",
        env.stack.nats.url(),
        env.stack.nats.monitor_url()
    );
    println!(
        "  MongoDB   {} database {}",
        env.stack.mongo.uri(),
        env.stack.db
    );
    println!(
        "  API       {} (x-api-key: {})",
        env.stack.api_url,
        stack::API_KEY
    );
    for (name, path) in env.stack.log_paths() {
        println!("  log       {name}: {}", path.display());
    }
    let _ = tokio::signal::ctrl_c().await;
    drop(env);
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let command = report::command_line();
    let started = Instant::now();
    let started_at = exo_types::time::now_ms();
    println!("exo-bench: {command}");
    let machine = report::machine();
    let servers = servers_section(&args);
    println!(
        "machine: {} cores, {}, {} MiB; nats-server {} x{} (streams R{}), {} (sync-on-commit: {})",
        machine["cores"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["mem_total_mb"],
        servers["nats"]["version"].as_str().unwrap_or("?"),
        args.nats_cluster.max(1),
        args.nats_cluster.max(1),
        servers["mongo"]["version"].as_str().unwrap_or("?"),
        args.sync_on_commit
    );
    let mut report = Report::default();
    let kept = run_all(&args, &mut report).await;

    println!();
    println!("Results of: {command}");
    report.print_table();
    let summary = json!({
        "tool": "exo-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "command": command,
        "started_at_ms": started_at,
        "duration_s": stats::round3(started.elapsed().as_secs_f64()),
        "load_avg_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "machine": machine,
        "git": git_state(),
        "servers": servers,
        "targets": report.targets,
        "workloads": report.workloads,
        "errors": report.errors,
    });
    let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
    match &args.json {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                let _ = std::fs::create_dir_all(dir);
            }
            match std::fs::write(path, &text) {
                Ok(()) => println!("\nJSON summary written to {}", path.display()),
                Err(e) => eprintln!("cannot write {}: {e}", path.display()),
            }
        }
        None => println!("\nJSON summary:\n{text}"),
    }

    if args.keep_servers
        && let Some(env) = kept
    {
        keep_until_ctrl_c(env).await;
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
