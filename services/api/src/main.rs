//! `exo-api` binary: parses flags, loads configuration, installs telemetry
//! and signal handling, then hands over to [`exo_api::run`]. Two database
//! commands help switching from (and back to) Exosphere: `check-db` and
//! `revert-to-upstream` (see docs/compatibility.md); `openapi` prints the
//! HTTP API's OpenAPI document.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Exosphere-compatible orchestrator: the HTTP API")]
struct Cli {
    /// Optional TOML config file; EXO_* environment variables override it.
    #[arg(long, env = "EXO_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Print the OpenAPI document of the HTTP API (the one served at
    /// /openapi.json) and exit; needs no configuration.
    Openapi,
    /// Report what switching an Exosphere database over will do: stored
    /// VALID graphs that cannot run here (marked INVALID when the api
    /// starts), Exosphere runs to adopt, states Exosphere left EXECUTED or
    /// handed out. Writes nothing. Exit status 2 when a graph is rejected.
    CheckDb,
    /// Make the database runnable by Exosphere again (run with every
    /// service stopped): CANCELLED states become ERRORED, QUEUED states
    /// CREATED, pending runs lose our counters. Counts only, unless --apply.
    RevertToUpstream {
        /// Write the changes (without it, only counts are printed).
        #[arg(long)]
        apply: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::Openapi)) {
        println!(
            "{}",
            serde_json::to_string_pretty(exo_api::openapi::document())?
        );
        return Ok(());
    }
    let cfg =
        match exo_api::Config::load(cli.config.as_deref()).and_then(|c| c.validate().map(|()| c)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(64);
            }
        };
    let runtime = exo_service::runtime::build(cfg.common.worker_threads.unwrap_or(0))?;
    let result = runtime.block_on(serve(cli.command.unwrap_or(Command::Serve), cfg));
    exo_service::otel::flush();
    result
}

async fn serve(command: Command, cfg: exo_api::Config) -> anyhow::Result<()> {
    exo_service::telemetry::init("exo-api");
    match command {
        Command::Openapi => Ok(()),
        Command::Serve => {
            let shutdown = exo_service::shutdown::signal_token();
            exo_api::run(cfg, shutdown).await
        }
        Command::CheckDb => {
            let store = connect(&cfg).await?;
            let report = exo_engine::legacy::check(&store).await?;
            for r in &report.rejected {
                println!(
                    "graph {}/{}: stored VALID, cannot run here:",
                    r.namespace, r.name
                );
                for e in &r.errors {
                    println!("  - {e}");
                }
            }
            println!(
                "graphs stored VALID that will be marked INVALID: {}",
                report.rejected.len()
            );
            println!(
                "Exosphere runs to adopt (on their next transition): {}",
                report.runs_to_adopt
            );
            println!(
                "states Exosphere left EXECUTED (never finished by either system; retry them): {}",
                report.executed_by_exosphere
            );
            println!(
                "states Exosphere handed out (applied when their runtime reports): {}",
                report.queued_by_exosphere
            );
            if !report.rejected.is_empty() {
                std::process::exit(2);
            }
            Ok(())
        }
        Command::RevertToUpstream { apply } => {
            let store = connect(&cfg).await?;
            let r = exo_engine::legacy::revert_to_upstream(&store, apply).await?;
            let verb = if apply { "changed" } else { "would change" };
            println!("CANCELLED states → ERRORED ({verb}): {}", r.cancelled);
            println!("QUEUED states → CREATED ({verb}): {}", r.queued);
            println!(
                "PENDING runs, counters removed ({verb}): {}",
                r.pending_runs
            );
            if r.executed > 0 {
                println!(
                    "warning: {} state(s) are EXECUTED (a successor step in progress); Exosphere cannot finish them: start the services again and let them finish, or cancel their runs",
                    r.executed
                );
            }
            if !apply {
                println!("dry run: nothing written (add --apply)");
            }
            Ok(())
        }
    }
}

async fn connect(cfg: &exo_api::Config) -> anyhow::Result<exo_store::Store> {
    let m = &cfg.common.mongo;
    Ok(exo_store::Store::connect(&m.uri, &m.database, "exo-api-admin").await?)
}
