//! `exo`: the command line of the exo orchestrator.
//!
//! Talks to the `/v0` HTTP API of exo (or of Exosphere itself): graphs,
//! nodes, runs and states. Settings come from flags, then the environment
//! (`EXO_URL`, `EXO_API_KEY`, `EXO_NAMESPACE`), then a profile in
//! `~/.config/exo/config.toml` (or `EXO_CLI_CONFIG`), then the defaults.

mod client;
mod dev;
mod graph;
mod output;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use client::{Api, Exit, Outcome};
use output::{Format, print_table, table};

const EXIT_CODES: &str = "\
Exit codes:
  0   done (a run waited for or watched ended SUCCESS)
  1   error (the message says what)
  2   bad command line
  3   the run ended FAILED
  4   the run was CANCELLED
  5   the graph is INVALID or malformed (each error with its line in the file)
  6   not found (graph, run, state)
  7   refused: the API key is unknown (401) or lacks the scope (403)
  8   --timeout passed before the run ended
  69  the API cannot be reached

Profiles (~/.config/exo/config.toml, or EXO_CLI_CONFIG):
  [default]
  url = \"http://127.0.0.1:8000\"
  api_key = \"…\"
  namespace = \"demo\"
Select another with --profile NAME (EXO_PROFILE). Flags and EXO_* variables win.";

#[derive(Parser)]
#[command(
    name = "exo",
    version,
    about = "Drive the exo orchestrator: apply graphs, start, follow and retry runs",
    after_help = EXIT_CODES
)]
struct Cli {
    /// API base URL [default: http://127.0.0.1:8000].
    #[arg(long, env = "EXO_URL", global = true)]
    url: Option<String>,
    /// API key (sent as x-api-key).
    #[arg(long, env = "EXO_API_KEY", global = true, hide_env_values = true)]
    api_key: Option<String>,
    /// Namespace [default: default].
    #[arg(short, long, env = "EXO_NAMESPACE", global = true)]
    namespace: Option<String>,
    /// Profile of the config file to use.
    #[arg(long, env = "EXO_PROFILE", global = true, default_value = "default")]
    profile: String,
    /// Output: human tables, or JSON for scripts.
    #[arg(short, long, value_enum, global = true, default_value = "table")]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Graph templates.
    #[command(subcommand)]
    Graph(GraphCmd),
    /// Nodes registered by runtimes.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Namespaces with registered nodes.
    Namespaces,
    /// Runs of graphs.
    #[command(subcommand)]
    Run(RunCmd),
    /// States (one attempt of one node in a run).
    #[command(subcommand)]
    State(StateCmd),
    /// Run the whole system on this machine from a clone of the repository:
    /// servers, the five services and the example runtime (Ctrl-C stops it).
    Dev(dev::DevArgs),
}

#[derive(Subcommand)]
enum GraphCmd {
    /// Validate and store a graph template from a YAML or JSON file; waits
    /// for validation and shows each error at its line.
    Apply {
        /// The file (`.yaml`, `.yml` or `.json`).
        #[arg(short, long)]
        file: PathBuf,
        /// Graph name [default: the file's `name` field, else its stem].
        #[arg(long)]
        name: Option<String>,
    },
    /// Show one graph template.
    Get {
        /// Graph name.
        name: String,
    },
    /// List the graph templates of the namespace.
    List,
}

#[derive(Subcommand)]
enum NodesCmd {
    /// List the registered nodes of the namespace.
    List,
}

#[derive(Subcommand)]
enum RunCmd {
    /// Start a run of a graph.
    Start {
        /// Graph name.
        graph: String,
        /// Root node input override, `key=value` (repeatable).
        #[arg(long = "input", value_name = "KEY=VALUE")]
        inputs: Vec<String>,
        /// Store entry, `key=value` (repeatable).
        #[arg(long = "store", value_name = "KEY=VALUE")]
        store: Vec<String>,
        /// Milliseconds before the root may run.
        #[arg(long)]
        start_delay: Option<i64>,
        /// Follow the run until it ends; the exit code tells how it ended.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (exit 8).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// List recent runs, newest first.
    List {
        /// Page, from 1.
        #[arg(long, default_value_t = 1)]
        page: u32,
        /// Runs per page.
        #[arg(long, default_value_t = 20)]
        size: u32,
    },
    /// A run's counters and its states as a tree (fan-outs collapsed).
    Show {
        /// Run id.
        run_id: String,
    },
    /// Follow a run with a progress bar until it ends.
    Watch {
        /// Run id.
        run_id: String,
        /// Give up after this many seconds (exit 8).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Cancel a run: pending states are cancelled, running ones finish.
    Cancel {
        /// Run id.
        run_id: String,
    },
}

#[derive(Subcommand)]
enum StateCmd {
    /// Run an ended state again (a new attempt with a new id).
    Retry {
        /// State id.
        state_id: String,
        /// Idempotency id of this retry [default: a new UUID].
        #[arg(long)]
        retry_id: Option<String>,
    },
}

/// The profile `name` of the config file, if there is one.
fn profile(name: &str) -> Outcome<Value> {
    let path = std::env::var_os("EXO_CLI_CONFIG")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/exo/config.toml"))
        });
    let Some(path) = path.filter(|p| p.is_file()) else {
        return Ok(Value::Null);
    };
    let all: Value = config::Config::builder()
        .add_source(config::File::from(path.as_path()))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| Exit::Failure(format!("{}: {e}", path.display())))?;
    Ok(all.get(name).cloned().unwrap_or(Value::Null))
}

fn connect(cli: &Cli) -> Outcome<Api> {
    let p = profile(&cli.profile)?;
    let from_profile = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
    let url = cli
        .url
        .clone()
        .or_else(|| from_profile("url"))
        .unwrap_or_else(|| "http://127.0.0.1:8000".into());
    let key = cli
        .api_key
        .clone()
        .or_else(|| from_profile("api_key"))
        .ok_or_else(|| {
            Exit::Failure(
            "no API key: pass --api-key, set EXO_API_KEY, or put api_key in a profile (exo --help)"
                .into(),
        )
        })?;
    let ns = cli
        .namespace
        .clone()
        .or_else(|| from_profile("namespace"))
        .unwrap_or_else(|| "default".into());
    Api::new(&url, &key, &ns)
}

fn print_json_or(format: Format, v: &Value, human: impl FnOnce(&Value)) {
    match format {
        Format::Json => println!("{v}"),
        Format::Table => human(v),
    }
}

fn text(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

async fn graphs(api: &Api, cmd: &GraphCmd, format: Format) -> Outcome {
    match cmd {
        GraphCmd::Apply { file, name } => {
            graph::apply(api, file, name.as_deref(), format == Format::Json).await
        }
        GraphCmd::Get { name } => {
            let v = api.get(&format!("/graph/{name}")).await?;
            print_json_or(format, &v, |v| {
                println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
            });
            Ok(())
        }
        GraphCmd::List => {
            let v = api.get("/graphs/").await?;
            print_json_or(format, &v, |v| {
                let rows = v["templates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        let nodes = t["nodes"].as_array().map_or(0, Vec::len);
                        [
                            text(t, "name"),
                            text(t, "validation_status"),
                            nodes.to_string(),
                            text(t, "updated_at"),
                        ]
                    })
                    .collect();
                print_table(table(["GRAPH", "VALIDATION", "NODES", "UPDATED"], rows));
            });
            Ok(())
        }
    }
}

async fn nodes(api: &Api, format: Format) -> Outcome {
    let v = api.get("/nodes/").await?;
    print_json_or(format, &v, |v| {
        let fields = |s: &Value| {
            s["properties"]
                .as_object()
                .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        };
        let rows = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                [
                    text(n, "name"),
                    text(n, "runtime_name"),
                    fields(&n["inputs_schema"]),
                    fields(&n["outputs_schema"]),
                ]
            })
            .collect();
        print_table(table(["NODE", "RUNTIME", "INPUTS", "OUTPUTS"], rows));
    });
    Ok(())
}

async fn runs(api: &Api, cmd: &RunCmd, format: Format) -> Outcome {
    match cmd {
        RunCmd::Start {
            graph,
            inputs,
            store,
            start_delay,
            wait,
            timeout,
        } => {
            let mut body = json!({});
            if !inputs.is_empty() {
                body["inputs"] = run::pairs(inputs, "input")?;
            }
            if !store.is_empty() {
                body["store"] = run::pairs(store, "store")?;
            }
            if let Some(d) = start_delay {
                body["start_delay"] = json!(d);
            }
            let wait = wait.then(|| Duration::from_secs(*timeout));
            run::start(api, graph, body, wait, format).await
        }
        RunCmd::List { page, size } => run::list(api, *page, *size, format).await,
        RunCmd::Show { run_id } => run::show(api, run_id, format).await,
        RunCmd::Watch { run_id, timeout } => {
            let table = format == Format::Table;
            let status = run::watch(api, run_id, Duration::from_secs(*timeout), table).await?;
            match format {
                Format::Json => println!("{}", json!({"run_id": run_id, "status": status})),
                Format::Table => println!("run {run_id} {status}"),
            }
            run::exit_of(run_id, &status)
        }
        RunCmd::Cancel { run_id } => run::cancel(api, run_id, format).await,
    }
}

async fn execute(cli: Cli) -> Outcome {
    if let Command::Dev(args) = &cli.command {
        return dev::run(args).await;
    }
    let api = connect(&cli)?;
    let format = cli.output;
    match &cli.command {
        Command::Graph(cmd) => graphs(&api, cmd, format).await,
        Command::Nodes(NodesCmd::List) => nodes(&api, format).await,
        Command::Namespaces => {
            let v = api.call(Method::GET, "/v0/namespaces", None).await?;
            print_json_or(format, &v, |v| {
                for ns in v["namespaces"].as_array().into_iter().flatten() {
                    println!("{}", ns.as_str().unwrap_or_default());
                }
            });
            Ok(())
        }
        Command::Run(cmd) => runs(&api, cmd, format).await,
        Command::State(StateCmd::Retry { state_id, retry_id }) => {
            run::retry(&api, state_id, retry_id.as_deref(), format).await
        }
        Command::Dev(_) => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(exit) => {
            eprintln!("error: {}", exit.message());
            ExitCode::from(exit.code())
        }
    }
}
