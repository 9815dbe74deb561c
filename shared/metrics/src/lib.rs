//! The Prometheus metrics of an exo process.
//!
//! One registry per process, created on first use; the services record into
//! it through the functions of this crate and serve it on their admin port
//! (`GET /metrics`, [`encode`], OpenMetrics text). Names follow the
//! Prometheus conventions: `exo_` prefix, base units (seconds), `_total`
//! on counters. Labels are bounded sets (statuses, outcomes, consumer
//! names, route templates) except `namespace` and `graph` on run
//! durations, which grow with what users deploy.
//!
//! The catalogue (every name, its labels and what moves it) is
//! [`CATALOGUE`]; `docs/operations.md` and the Grafana dashboard are built on it.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric: its name as scraped (counters with `_total`, histograms
/// as the family name), its type and its labels.
pub const CATALOGUE: &[(&str, &str, &[&str])] = &[
    ("exo_build_info", "gauge", &["service", "version"]),
    (
        "exo_messages_handled_total",
        "counter",
        &["consumer", "kind", "outcome"],
    ),
    (
        "exo_handler_duration_seconds",
        "histogram",
        &["consumer", "kind"],
    ),
    ("exo_state_transitions_total", "counter", &["status"]),
    ("exo_dispatch_delay_seconds", "histogram", &["via"]),
    (
        "exo_consumer_pending_messages",
        "gauge",
        &["stream", "consumer"],
    ),
    (
        "exo_consumer_ack_pending_messages",
        "gauge",
        &["stream", "consumer"],
    ),
    (
        "exo_consumer_redelivered_messages",
        "gauge",
        &["stream", "consumer"],
    ),
    ("exo_dead_letters_total", "counter", &["stream", "consumer"]),
    ("exo_retries_total", "counter", &["kind"]),
    ("exo_reconciler_redrives_total", "counter", &[]),
    ("exo_lease_expiries_total", "counter", &[]),
    ("exo_cron_fire_delay_seconds", "histogram", &[]),
    ("exo_cron_skipped_total", "counter", &[]),
    (
        "exo_run_duration_seconds",
        "histogram",
        &["namespace", "graph", "status"],
    ),
    ("exo_mongo_transactions_total", "counter", &["outcome"]),
    (
        "exo_mongo_transaction_retries_total",
        "counter",
        &["reason"],
    ),
    (
        "exo_http_requests_total",
        "counter",
        &["method", "route", "status"],
    ),
    (
        "exo_http_request_duration_seconds",
        "histogram",
        &["method", "route"],
    ),
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    service: String,
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    consumer: String,
    kind: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabels {
    consumer: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ViaLabel {
    via: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    stream: String,
    consumer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    namespace: String,
    graph: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRouteLabels {
    method: String,
    route: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

struct Metrics {
    registry: Registry,
    build: Family<BuildLabels, Gauge>,
    messages: Family<MessageLabels, Counter>,
    handler: Histograms<HandlerLabels>,
    transitions: Family<StatusLabel, Counter>,
    dispatch: Histograms<ViaLabel>,
    pending: Family<ConsumerLabels, Gauge>,
    ack_pending: Family<ConsumerLabels, Gauge>,
    redelivered: Family<ConsumerLabels, Gauge>,
    dead_letters: Family<ConsumerLabels, Counter>,
    retries: Family<KindLabel, Counter>,
    redrives: Counter,
    lease_expiries: Counter,
    cron_delay: Histogram,
    cron_skipped: Counter,
    runs: Histograms<RunLabels>,
    transactions: Family<OutcomeLabel, Counter>,
    transaction_retries: Family<ReasonLabel, Counter>,
    http: Family<HttpLabels, Counter>,
    http_seconds: Histograms<HttpRouteLabels>,
}

/// 0.5 ms doubling to about 16 s: handler, dispatch and HTTP latencies.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// 10 ms growing 2.5 times per bucket to about 2.6 h: run durations.
fn durations() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.5, 16))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut r = Registry::with_prefix("exo");
    let m = Metrics {
        registry: Registry::default(),
        build: Family::default(),
        messages: Family::default(),
        handler: Family::new_with_constructor(latency),
        transitions: Family::default(),
        dispatch: Family::new_with_constructor(latency),
        pending: Family::default(),
        ack_pending: Family::default(),
        redelivered: Family::default(),
        dead_letters: Family::default(),
        retries: Family::default(),
        redrives: Counter::default(),
        lease_expiries: Counter::default(),
        cron_delay: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        cron_skipped: Counter::default(),
        runs: Family::new_with_constructor(durations),
        transactions: Family::default(),
        transaction_retries: Family::default(),
        http: Family::default(),
        http_seconds: Family::new_with_constructor(latency),
    };
    r.register(
        "build_info",
        "The running service and its version (always 1)",
        m.build.clone(),
    );
    r.register(
        "messages_handled",
        "Messages settled by a consume loop, by durable consumer, message kind and outcome (ack, stale, delay, retry, reject)",
        m.messages.clone(),
    );
    r.register(
        "handler_duration_seconds",
        "Time from a message's delivery to its disposition",
        m.handler.clone(),
    );
    r.register(
        "state_transitions",
        "State status changes committed by this process, by the status entered (a state's creation counts as entering its first status)",
        m.transitions.clone(),
    );
    r.register(
        "dispatch_delay_seconds",
        "Time from a state becoming ready to its hand-off: published to its runtimes' queue (via=scheduler) or handed out over HTTP (via=http)",
        m.dispatch.clone(),
    );
    r.register(
        "consumer_pending_messages",
        "Messages of a durable consumer's stream not yet delivered to it (its lag), sampled every few seconds",
        m.pending.clone(),
    );
    r.register(
        "consumer_ack_pending_messages",
        "Messages delivered to a durable consumer and not yet acknowledged",
        m.ack_pending.clone(),
    );
    r.register(
        "consumer_redelivered_messages",
        "Messages of a durable consumer delivered more than once and not yet acknowledged",
        m.redelivered.clone(),
    );
    r.register(
        "dead_letters",
        "Messages dead-lettered (exo.dlq.v1.<stream>.<consumer>)",
        m.dead_letters.clone(),
    );
    r.register(
        "retries",
        "New attempts of states: kind=policy (a retry policy after an error), kind=requeue (ReQueueAfter), kind=manual (manual retry)",
        m.retries.clone(),
    );
    r.register(
        "reconciler_redrives",
        "States the reconciler handed on again because their hand-off was lost",
        m.redrives.clone(),
    );
    r.register(
        "lease_expiries",
        "HTTP hand-outs whose lease ran out (the state is handed out again)",
        m.lease_expiries.clone(),
    );
    r.register(
        "cron_fire_delay_seconds",
        "Time from a CRON occurrence's scheduled instant to its run's creation",
        m.cron_delay.clone(),
    );
    r.register(
        "cron_skipped",
        "CRON occurrences recorded SKIPPED by the catch-up policy",
        m.cron_skipped.clone(),
    );
    r.register(
        "run_duration_seconds",
        "Runs ended by this process: time from creation to end, by namespace, graph and final status",
        m.runs.clone(),
    );
    r.register(
        "mongo_transactions",
        "MongoDB transactions, by outcome (committed, failed)",
        m.transactions.clone(),
    );
    r.register(
        "mongo_transaction_retries",
        "MongoDB transaction attempts repeated, by reason (write_conflict, transient, unknown_commit_result)",
        m.transaction_retries.clone(),
    );
    r.register(
        "http_requests",
        "HTTP requests answered, by method, route template and status",
        m.http.clone(),
    );
    r.register(
        "http_request_duration_seconds",
        "Time to answer an HTTP request (to the response head for streams)",
        m.http_seconds.clone(),
    );
    Metrics { registry: r, ..m }
});

/// The registry, encoded in the OpenMetrics text format (serve with
/// [`CONTENT_TYPE`]).
pub fn encode() -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &METRICS.registry).is_err() {
        out = "# EOF\n".to_string();
    }
    out
}

/// Records which service this process runs (`exo_build_info`), and
/// creates the series of the fixed label sets at zero (so a rate over them
/// starts from the process's start, and every family is served from the
/// first scrape).
pub fn set_service(service: &str) {
    for outcome in ["committed", "failed"] {
        METRICS
            .transactions
            .get_or_create(&OutcomeLabel { outcome })
            .inc_by(0);
    }
    for reason in ["write_conflict", "transient", "unknown_commit_result"] {
        METRICS
            .transaction_retries
            .get_or_create(&ReasonLabel { reason })
            .inc_by(0);
    }
    for kind in ["policy", "requeue", "manual"] {
        METRICS.retries.get_or_create(&KindLabel { kind }).inc_by(0);
    }
    METRICS
        .build
        .get_or_create(&BuildLabels {
            service: service.to_string(),
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
}

/// How a consume loop settled a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged (effects applied).
    Ack,
    /// Acknowledged, nothing to do.
    Stale,
    /// Redelivery asked after a delay (scheduling).
    Delay,
    /// Redelivery after a failure (infrastructure).
    Retry,
    /// Dead-lettered.
    Reject,
    /// Left unsettled (shutdown or an injected fault); it comes back.
    Unsettled,
}

impl Outcome {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::Stale => "stale",
            Self::Delay => "delay",
            Self::Retry => "retry",
            Self::Reject => "reject",
            Self::Unsettled => "unsettled",
        }
    }
}

/// The kind of message a subject carries, as a bounded label:
/// `exo.v1.<ns>.<a>.<b>…` gives `<a>.<b>` (`state.created`,
/// `result.executed`, `run.trigger`), `dispatch` for any node's dispatch,
/// `start` for start requests, `event` for events, and `inbound` for
/// subjects outside `exo.` (bound by EVENT triggers).
pub fn subject_kind(subject: &str) -> String {
    let mut tokens = subject.split('.');
    if tokens.next() != Some("exo") {
        return "inbound".to_string();
    }
    let rest: Vec<&str> = tokens.skip(2).take(2).collect();
    match rest.as_slice() {
        ["dispatch", ..] => "dispatch".to_string(),
        ["event", ..] => "event".to_string(),
        [a, b] => format!("{a}.{b}"),
        [a] => (*a).to_string(),
        [] => "other".to_string(),
        [..] => "other".to_string(),
    }
}

/// A consume loop settled a message of `kind` (see [`subject_kind`]) from
/// `consumer` after `elapsed`.
pub fn message_handled(consumer: &str, kind: &str, outcome: Outcome, elapsed: Duration) {
    let kind = kind.to_string();
    METRICS
        .messages
        .get_or_create(&MessageLabels {
            consumer: consumer.to_string(),
            kind: kind.clone(),
            outcome: outcome.as_str(),
        })
        .inc();
    METRICS
        .handler
        .get_or_create(&HandlerLabels {
            consumer: consumer.to_string(),
            kind,
        })
        .observe(elapsed.as_secs_f64());
}

/// `n` states entered `status` (committed).
pub fn state_transitions(status: &'static str, n: u64) {
    if n > 0 {
        METRICS
            .transitions
            .get_or_create(&StatusLabel { status })
            .inc_by(n);
    }
}

/// A state was handed off `via` (`scheduler`, `http`) `delay` after it
/// became ready.
pub fn dispatch_delay(via: &'static str, delay: Duration) {
    METRICS
        .dispatch
        .get_or_create(&ViaLabel { via })
        .observe(delay.as_secs_f64());
}

/// A durable consumer's counts, as sampled from JetStream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerCounts {
    /// Not yet delivered (lag).
    pub pending: u64,
    /// Delivered, not acknowledged.
    pub ack_pending: u64,
    /// Redelivered, not acknowledged.
    pub redelivered: u64,
}

/// Sets the gauges of `consumer` on `stream`.
pub fn consumer_counts(stream: &str, consumer: &str, counts: ConsumerCounts) {
    let labels = ConsumerLabels {
        stream: stream.to_string(),
        consumer: consumer.to_string(),
    };
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    METRICS
        .pending
        .get_or_create(&labels)
        .set(gauge(counts.pending));
    METRICS
        .ack_pending
        .get_or_create(&labels)
        .set(gauge(counts.ack_pending));
    METRICS
        .redelivered
        .get_or_create(&labels)
        .set(gauge(counts.redelivered));
}

/// A message of `consumer` on `stream` was dead-lettered.
pub fn dead_letter(stream: &str, consumer: &str) {
    METRICS
        .dead_letters
        .get_or_create(&ConsumerLabels {
            stream: stream.to_string(),
            consumer: consumer.to_string(),
        })
        .inc();
}

/// A new attempt of a state was committed: `kind` is `policy`, `requeue`
/// or `manual`.
pub fn retry(kind: &'static str) {
    METRICS.retries.get_or_create(&KindLabel { kind }).inc();
}

/// The reconciler handed `n` states on again.
pub fn reconciler_redrives(n: u64) {
    METRICS.redrives.inc_by(n);
}

/// `n` HTTP leases ran out.
pub fn lease_expiries(n: u64) {
    METRICS.lease_expiries.inc_by(n);
}

/// A CRON occurrence started its run `delay` after its scheduled instant.
pub fn cron_fired(delay: Duration) {
    METRICS.cron_delay.observe(delay.as_secs_f64());
}

/// `n` CRON occurrences were skipped.
pub fn cron_skipped(n: u64) {
    METRICS.cron_skipped.inc_by(n);
}

/// A run of `graph` in `namespace` ended with `status` after `duration`.
pub fn run_finished(namespace: &str, graph: &str, status: &'static str, duration: Duration) {
    METRICS
        .runs
        .get_or_create(&RunLabels {
            namespace: namespace.to_string(),
            graph: graph.to_string(),
            status,
        })
        .observe(duration.as_secs_f64());
}

/// A MongoDB transaction ended: `committed` or not.
pub fn transaction(committed: bool) {
    let outcome = if committed { "committed" } else { "failed" };
    METRICS
        .transactions
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
}

/// A MongoDB transaction attempt is repeated because of `reason`
/// (`write_conflict`, `transient`, `unknown_commit_result`).
pub fn transaction_retry(reason: &'static str) {
    METRICS
        .transaction_retries
        .get_or_create(&ReasonLabel { reason })
        .inc();
}

/// An HTTP request to `route` (the route template, or `unmatched`) was
/// answered with `status` after `elapsed`.
pub fn http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    METRICS
        .http
        .get_or_create(&HttpLabels {
            method: method.to_string(),
            route: route.to_string(),
            status,
        })
        .inc();
    METRICS
        .http_seconds
        .get_or_create(&HttpRouteLabels {
            method: method.to_string(),
            route: route.to_string(),
        })
        .observe(elapsed.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_bounded() {
        assert_eq!(subject_kind("exo.v1.ns.state.created"), "state.created");
        assert_eq!(
            subject_kind("exo.v1.ns.result.executed.17"),
            "result.executed"
        );
        assert_eq!(subject_kind("exo.v1.ns.dispatch.some-node"), "dispatch");
        assert_eq!(
            subject_kind("exo.v1.ns.event.lifecycle.r.run.created"),
            "event"
        );
        assert_eq!(subject_kind("exo.v1.ns.start"), "start");
        assert_eq!(subject_kind("orders.created.eu"), "inbound");
        assert_eq!(subject_kind("exo.v1"), "other");
    }

    #[test]
    fn the_catalogue_is_what_is_encoded() {
        set_service("test");
        message_handled("c", "state.created", Outcome::Ack, Duration::from_millis(3));
        state_transitions("SUCCESS", 2);
        dispatch_delay("scheduler", Duration::from_millis(1));
        consumer_counts("S", "c", ConsumerCounts::default());
        dead_letter("S", "c");
        retry("policy");
        reconciler_redrives(1);
        lease_expiries(1);
        cron_fired(Duration::from_millis(5));
        cron_skipped(1);
        run_finished("ns", "g", "SUCCESS", Duration::from_secs(1));
        transaction(true);
        transaction_retry("write_conflict");
        http_request("GET", "/health", 200, Duration::from_millis(1));
        let text = encode();
        for (name, kind, labels) in CATALOGUE {
            let family = name.strip_suffix("_total").unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {family} {kind}\n")),
                "{family} {kind} missing in\n{text}"
            );
            let sample = match *kind {
                "histogram" => format!("{family}_count"),
                _ => name.to_string(),
            };
            let line = text
                .lines()
                .find(|l| l.starts_with(&sample))
                .unwrap_or_else(|| panic!("no sample of {sample}"));
            for label in *labels {
                assert!(
                    line.contains(&format!("{label}=\"")),
                    "{line} lacks {label}"
                );
            }
        }
        assert!(text.contains("exo_state_transitions_total{status=\"SUCCESS\"} 2"));
        assert!(text.ends_with("# EOF\n"));
    }
}
