//! OpenTelemetry traces, exported over OTLP when configured and off
//! otherwise.
//!
//! Set `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! to export: `OTEL_EXPORTER_OTLP_PROTOCOL` `http/protobuf` (default) or
//! `http/json`, the batch settings (`OTEL_BSP_SCHEDULE_DELAY`, …) and
//! `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` as the OpenTelemetry
//! specification says. The W3C trace context (`traceparent`,
//! `tracestate`) is read from HTTP requests and NATS messages and written
//! on every NATS message published inside a span, so one run is one trace
//! across the api, the four services and the runtimes.

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// True when an OTLP endpoint is configured.
pub fn configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
}

/// The tracing layer exporting spans of `service`, when configured (and
/// the W3C propagator installed for [`exo_bus`]'s headers and the api's
/// requests). `None` when no endpoint is set or the exporter cannot be
/// built (the reason is printed: logging is not up yet).
pub fn layer<S>(service: &str) -> Option<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if !configured() {
        return None;
    }
    let json = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").is_ok_and(|p| p.trim() == "http/json");
    let protocol = if json {
        opentelemetry_otlp::Protocol::HttpJson
    } else {
        opentelemetry_otlp::Protocol::HttpBinary
    };
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
    {
        Ok(e) => e,
        Err(error) => {
            eprintln!("OpenTelemetry: cannot build the OTLP exporter ({error}); traces are off");
            return None;
        }
    };
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer(service.to_string());
    let _ = PROVIDER.set(provider);
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Exports the spans still buffered (at shutdown).
pub fn flush() {
    if let Some(p) = PROVIDER.get() {
        if let Err(error) = p.force_flush() {
            tracing::debug!(%error, "Could not flush spans.");
        }
        let _ = p.shutdown();
    }
}
