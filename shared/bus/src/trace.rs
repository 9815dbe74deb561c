//! W3C trace context on NATS messages: every publication made inside a
//! span carries `traceparent` (and `tracestate`) in its headers, and every
//! message handled gets a span whose parent is the context its headers
//! carry, so one run is one trace across the services and the runtimes.
//! Without a propagator installed (traces not configured,
//! `exo_service::otel`), nothing is written and the spans stay local.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct Inject<'a>(&'a mut HeaderMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string().as_str(), value.as_str());
    }
}

struct Extract<'a>(&'a HeaderMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the current span's trace context into `headers`.
pub fn inject(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Inject(headers)));
}

/// The trace context `headers` carry (empty when none).
pub fn extract(headers: Option<&HeaderMap>) -> opentelemetry::Context {
    match headers {
        Some(h) => opentelemetry::global::get_text_map_propagator(|p| p.extract(&Extract(h))),
        None => opentelemetry::Context::new(),
    }
}

/// The span of handling a message: `name` (e.g. `handle state.created`),
/// child of the trace context in `headers`.
pub fn message_span(name: &str, subject: &str, headers: Option<&HeaderMap>) -> tracing::Span {
    let span = tracing::info_span!(
        "exo.message",
        otel.name = %name,
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.destination.name = %subject,
    );
    let _ = span.set_parent(extract(headers));
    span
}
