//! Tracing initialisation.
//!
//! The filter comes from `RUST_LOG` (default `info,async_nats=warn,mongodb=warn`);
//! `EXO_LOG_FORMAT=json` selects JSON lines for log collectors, anything else
//! the human-readable format.

use tracing_subscriber::EnvFilter;

/// Default filter when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,async_nats=warn,mongodb=warn";

/// Targets whose events carry documents or payloads (inputs, outputs,
/// secrets as stored): the MongoDB driver's commands (debug level) and the
/// NATS client's protocol operations (trace level). Off unless `RUST_LOG`
/// names them.
pub const QUIET_TARGETS: [&str; 2] = ["mongodb::command", "async_nats::connection"];

/// The filter: `RUST_LOG` (else [`DEFAULT_FILTER`]), with each of
/// [`QUIET_TARGETS`] it does not name turned off.
pub fn filter_directives(rust_log: Option<String>) -> String {
    let mut f = rust_log
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_FILTER.to_string());
    for target in QUIET_TARGETS {
        if !f.contains(target) {
            f.push_str(&format!(",{target}=off"));
        }
    }
    f
}

/// Installs the global tracing subscriber: logs (filtered, readable or
/// JSON) and, when an OTLP endpoint is configured, OpenTelemetry spans
/// ([`crate::otel`]); names the service in the metrics' `exo_build_info`.
/// Calling it twice is harmless.
pub fn init(service: &str) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    exo_metrics::set_service(service);
    let filter = EnvFilter::try_new(filter_directives(std::env::var("RUST_LOG").ok()))
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = std::env::var("EXO_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .with_target(true)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_target(true).boxed()
    };
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(crate::otel::layer(service))
        .try_init();
    if result.is_ok() {
        tracing::info!(
            exo.service = service,
            version = env!("CARGO_PKG_VERSION"),
            traces = crate::otel::configured(),
            "Telemetry initialised."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_commands_stay_off_unless_named() {
        let off = "mongodb::command=off,async_nats::connection=off";
        assert_eq!(filter_directives(None), format!("{DEFAULT_FILTER},{off}"));
        assert_eq!(
            filter_directives(Some("trace".into())),
            format!("trace,{off}")
        );
        assert_eq!(
            filter_directives(Some("info,mongodb::command=debug".into())),
            "info,mongodb::command=debug,async_nats::connection=off"
        );
    }
}
