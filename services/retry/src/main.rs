//! `exo-retry` binary: parses flags, loads configuration, installs telemetry
//! and signal handling, then hands over to [`exo_retry::run`].

fn main() -> anyhow::Result<()> {
    exo_service::binary::main::<exo_retry::Config, _, _>(
        "exo-retry",
        "Exosphere-compatible orchestrator: the retry service",
        exo_retry::run,
    )
}
