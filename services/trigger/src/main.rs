//! `exo-trigger` binary: parses flags, loads configuration, installs telemetry
//! and signal handling, then hands over to [`exo_trigger::run`].

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Exosphere-compatible orchestrator: the trigger service"
)]
struct Cli {
    /// Optional TOML config file; EXO_* environment variables override it.
    #[arg(long, env = "EXO_CONFIG")]
    config: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg: exo_trigger::Config =
        exo_service::config::load_or_exit(cli.config.as_deref(), |c: &exo_trigger::Config| {
            c.worker.common.validate()
        });
    let runtime = exo_service::runtime::build(cfg.worker.common.worker_threads.unwrap_or(0))?;
    runtime.block_on(async {
        exo_service::telemetry::init("exo-trigger");
        let shutdown = exo_service::shutdown::signal_token();
        exo_trigger::run(cfg, shutdown).await
    })
}
