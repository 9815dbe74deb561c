//! `exo-scheduler` binary: parses flags, loads configuration, installs telemetry
//! and signal handling, then hands over to [`exo_scheduler::run`].

fn main() -> anyhow::Result<()> {
    exo_service::binary::main::<exo_scheduler::Config, _, _>(
        "exo-scheduler",
        "Exosphere-compatible orchestrator: the scheduler service",
        exo_scheduler::run,
    )
}
