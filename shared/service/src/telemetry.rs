//! Tracing initialisation.
//!
//! The filter comes from `RUST_LOG` (default `info,async_nats=warn,mongodb=warn`);
//! `EXO_LOG_FORMAT=json` selects JSON lines for log collectors, anything else
//! the human-readable format.

use tracing_subscriber::EnvFilter;

/// Default filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,async_nats=warn,mongodb=warn";

/// Installs the global tracing subscriber. Calling it twice is harmless.
pub fn init(service: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = std::env::var("EXO_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
    if result.is_ok() {
        tracing::info!(
            exo.service = service,
            version = env!("CARGO_PKG_VERSION"),
            "Telemetry initialised."
        );
    }
}
