//! `exo-scheduler` binary: parses flags, loads configuration, installs telemetry
//! and signal handling, then hands over to [`exo_scheduler::run`].

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Exosphere-compatible orchestrator: the scheduler service"
)]
struct Cli {
    /// Optional TOML config file; EXO_* environment variables override it.
    #[arg(long, env = "EXO_CONFIG")]
    config: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg: exo_scheduler::Config =
        exo_service::config::load_or_exit(cli.config.as_deref(), |c: &exo_scheduler::Config| {
            c.common.validate()
        });
    let runtime = exo_service::runtime::build(cfg.common.worker_threads.unwrap_or(0))?;
    runtime.block_on(async {
        exo_service::telemetry::init("exo-scheduler");
        let shutdown = exo_service::shutdown::signal_token();
        exo_scheduler::run(cfg, shutdown).await
    })
}
