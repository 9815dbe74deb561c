//! `exo-completion` binary: parses flags, loads configuration, installs telemetry
//! and signal handling, then hands over to [`exo_completion::run`].

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Exosphere-compatible orchestrator: the completion service"
)]
struct Cli {
    /// Optional TOML config file; EXO_* environment variables override it.
    #[arg(long, env = "EXO_CONFIG")]
    config: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg: exo_completion::Config =
        exo_service::config::load_or_exit(cli.config.as_deref(), |c: &exo_completion::Config| {
            c.validate()
        });
    let runtime = exo_service::runtime::build(cfg.worker.common.worker_threads.unwrap_or(0))?;
    runtime.block_on(async {
        exo_service::telemetry::init("exo-completion");
        let shutdown = exo_service::shutdown::signal_token();
        exo_completion::run(cfg, shutdown).await
    })
}
