//! `exo-completion` binary: parses flags, loads configuration, installs telemetry
//! and signal handling, then hands over to [`exo_completion::run`].

fn main() -> anyhow::Result<()> {
    exo_service::binary::main::<exo_completion::Config, _, _>(
        "exo-completion",
        "Exosphere-compatible orchestrator: the completion service",
        exo_completion::run,
    )
}
