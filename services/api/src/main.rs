//! `exo-api` binary: parses flags, loads configuration, installs telemetry
//! and signal handling, then hands over to [`exo_api::run`].

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Exosphere-compatible orchestrator: the HTTP API")]
struct Cli {
    /// Optional TOML config file; EXO_* environment variables override it.
    #[arg(long, env = "EXO_CONFIG")]
    config: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg =
        match exo_api::Config::load(cli.config.as_deref()).and_then(|c| c.validate().map(|()| c)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(64);
            }
        };
    exo_service::telemetry::init("exo-api");
    let shutdown = exo_service::shutdown::signal_token();
    exo_api::run(cfg, shutdown).await
}
