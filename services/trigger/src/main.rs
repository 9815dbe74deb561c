//! `exo-trigger` binary: parses flags, loads configuration, installs telemetry
//! and signal handling, then hands over to [`exo_trigger::run`].

fn main() -> anyhow::Result<()> {
    exo_service::binary::main::<exo_trigger::Config, _, _>(
        "exo-trigger",
        "Exosphere-compatible orchestrator: the trigger service",
        exo_trigger::run,
    )
}
