//! NATS subject, stream and consumer names: the one place they are built.
//!
//! Every subject starts with `exo.v1.<namespace>`; the version token lets the
//! wire format change without moving streams. Namespaces and node names become
//! subject tokens, so they must pass [`crate::names::validate_token`] first.

use sha2::{Digest, Sha256};

/// Version prefix of every subject.
pub const PREFIX: &str = "exo.v1";

/// Work-queue stream of run commands (`exo.v1.<ns>.run.trigger`,
/// `exo.v1.<ns>.run.cancel`).
pub const STREAM_COMMANDS: &str = "EXO_COMMANDS";
/// Work-queue stream of "state created" hand-offs (`exo.v1.<ns>.state.created`).
pub const STREAM_STATES: &str = "EXO_STATES";
/// Work-queue stream of runtime results (`exo.v1.<ns>.result.<kind>`).
pub const STREAM_RESULTS: &str = "EXO_RESULTS";
/// Work-queue stream of dispatches to runtimes (`exo.v1.<ns>.dispatch.<node>`).
pub const STREAM_DISPATCH: &str = "EXO_DISPATCH";
/// Limits stream of lifecycle events (`exo.v1.<ns>.event.>`).
pub const STREAM_EVENTS: &str = "EXO_EVENTS";
/// Limits stream of dead letters (`exo.dlq.v1.>`).
pub const STREAM_DLQ: &str = "EXO_DLQ";

/// Durable consumer of the trigger service.
pub const CONSUMER_TRIGGER: &str = "trigger";
/// Durable consumer of the scheduler service.
pub const CONSUMER_SCHEDULER: &str = "scheduler";
/// Durable consumer of the completion service (executed and pruned results).
pub const CONSUMER_COMPLETION: &str = "completion";
/// Durable consumer of the retry service (errored and re-queue results).
pub const CONSUMER_RETRY: &str = "retry";

/// Stream of the messages on subjects bound by EVENT triggers (subjects
/// chosen by users, outside `exo.>`; see [`crate::subject_pattern`]).
pub const STREAM_INBOUND: &str = "EXO_INBOUND";
/// Durable consumer of [`STREAM_INBOUND`], shared by the `trigger` replicas.
pub const CONSUMER_INBOUND: &str = "trigger-inbound";
/// Durable consumer of the `api` replicas on [`STREAM_EVENTS`]: the
/// lifecycle events webhooks may ask for.
pub const CONSUMER_WEBHOOKS: &str = "api-webhooks";
/// Filter subjects of [`CONSUMER_WEBHOOKS`]: every run ending, and the
/// state failures.
pub const WEBHOOK_FILTERS: [&str; 3] = [
    "exo.v1.*.event.lifecycle.*.run.*",
    "exo.v1.*.event.lifecycle.*.state.errored",
    "exo.v1.*.event.lifecycle.*.state.next_created_error",
];
/// The subject [`STREAM_INBOUND`] holds while no graph binds any (a stream
/// needs one): outside every namespace, nothing publishes on it.
pub const INBOUND_PLACEHOLDER: &str = "exo.inbound.none";

/// Subject filters of [`STREAM_COMMANDS`].
pub const COMMANDS_SUBJECTS: &str = "exo.v1.*.run.*";
/// Subject filters of [`STREAM_STATES`].
pub const STATES_SUBJECTS: &str = "exo.v1.*.state.created";
/// Subject filters of [`STREAM_RESULTS`]: a result published without its
/// run (`exo.v1.<ns>.result.<kind>`, the first protocol) and with it
/// (`exo.v1.<ns>.result.<kind>.<run_id>`), which the stream stores on the
/// run's partition (see [`results_transform`]).
pub const RESULTS_SUBJECTS: [&str; 2] = ["exo.v1.*.result.*", "exo.v1.*.result.*.*"];

/// Partitions of the results of runs: the stream maps the run token of
/// `exo.v1.<ns>.result.<kind>.<run_id>` onto `0..RESULT_PARTITIONS` with
/// NATS's deterministic subject-token partitioning, and each partition has
/// its own consumer, so a wide run's backlog delays only the runs that hash
/// to its partition. Changing it re-maps runs still in flight (their results
/// go on being applied, possibly out of their earlier order, which the
/// fences make harmless).
pub const RESULT_PARTITIONS: u32 = 64;

/// The results stream's subject transform, `(source, destination)`: the run
/// token becomes its partition number (`exo.v1.<ns>.result.<kind>.<p>`).
pub fn results_transform() -> (String, String) {
    (
        "exo.v1.*.result.*.*".to_string(),
        format!(
            "exo.v1.{{{{wildcard(1)}}}}.result.{{{{wildcard(2)}}}}.{{{{partition({RESULT_PARTITIONS},3)}}}}"
        ),
    )
}
/// Subject filters of [`STREAM_DISPATCH`].
pub const DISPATCH_SUBJECTS: &str = "exo.v1.*.dispatch.*";
/// Subject filters of [`STREAM_EVENTS`].
pub const EVENTS_SUBJECTS: &str = "exo.v1.*.event.>";
/// Subject filters of [`STREAM_DLQ`].
pub const DLQ_SUBJECTS: &str = "exo.dlq.v1.>";

/// Filter subjects of the completion consumer of results published without
/// their run (the first protocol); see [`completion_partition`] for the rest.
pub const COMPLETION_FILTERS: [&str; 2] = ["exo.v1.*.result.executed", "exo.v1.*.result.pruned"];
/// Filter subjects of the retry consumer (every partition: errors and
/// re-queues are applied one state at a time, so they need no lanes).
pub const RETRY_FILTERS: [&str; 4] = [
    "exo.v1.*.result.errored",
    "exo.v1.*.result.requeue",
    "exo.v1.*.result.errored.*",
    "exo.v1.*.result.requeue.*",
];

/// Durable consumer and filter subjects of the completion service's lane
/// for partition `p` of [`RESULT_PARTITIONS`].
pub fn completion_partition(p: u32) -> (String, Vec<String>) {
    (
        format!("{CONSUMER_COMPLETION}-p{p}"),
        vec![
            format!("{PREFIX}.*.result.executed.{p}"),
            format!("{PREFIX}.*.result.pruned.{p}"),
        ],
    )
}

/// Kinds of runtime result, the last token of a result subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKind {
    /// The node finished and produced outputs.
    Executed,
    /// The node failed.
    Errored,
    /// The node asked to end its branch.
    Pruned,
    /// The node asked to run again after a delay.
    Requeue,
}

impl ResultKind {
    /// The subject token.
    pub fn token(self) -> &'static str {
        match self {
            Self::Executed => "executed",
            Self::Errored => "errored",
            Self::Pruned => "pruned",
            Self::Requeue => "requeue",
        }
    }

    /// Parses a subject token.
    pub fn from_token(t: &str) -> Option<Self> {
        [Self::Executed, Self::Errored, Self::Pruned, Self::Requeue]
            .into_iter()
            .find(|k| k.token() == t)
    }
}

/// Every durable consumer of the services, `(stream, consumer)`: what to
/// watch to know whether the services have work queued or in hand.
pub fn service_consumers() -> Vec<(&'static str, String)> {
    let mut all = vec![
        (STREAM_COMMANDS, CONSUMER_TRIGGER.to_string()),
        (STREAM_STATES, CONSUMER_SCHEDULER.to_string()),
        (STREAM_RESULTS, CONSUMER_COMPLETION.to_string()),
        (STREAM_RESULTS, CONSUMER_RETRY.to_string()),
    ];
    all.extend((0..RESULT_PARTITIONS).map(|p| (STREAM_RESULTS, completion_partition(p).0)));
    all
}

/// `exo.v1.<ns>.run.trigger`
pub fn trigger(ns: &str) -> String {
    format!("{PREFIX}.{ns}.run.trigger")
}

/// `exo.v1.<ns>.run.cancel`
pub fn cancel(ns: &str) -> String {
    format!("{PREFIX}.{ns}.run.cancel")
}

/// `exo.v1.<ns>.state.created`
pub fn state_created(ns: &str) -> String {
    format!("{PREFIX}.{ns}.state.created")
}

/// `exo.v1.<ns>.dispatch.<node>`
pub fn dispatch(ns: &str, node: &str) -> String {
    format!("{PREFIX}.{ns}.dispatch.{node}")
}

/// `exo.v1.<ns>.result.<kind>`: a result without its run (the first
/// protocol, still consumed); prefer [`result_of_run`].
pub fn result(ns: &str, kind: ResultKind) -> String {
    format!("{PREFIX}.{ns}.result.{}", kind.token())
}

/// `exo.v1.<ns>.result.<kind>.<run_id>`: a result of run `run_id`, stored on
/// the run's partition. A run id that is not a subject token (never one this
/// system made) falls back to [`result`].
pub fn result_of_run(ns: &str, kind: ResultKind, run_id: &str) -> String {
    if crate::names::is_valid_token(run_id) {
        format!("{PREFIX}.{ns}.result.{}.{run_id}", kind.token())
    } else {
        result(ns, kind)
    }
}

/// `exo.v1.<ns>.event.<entity>.<name>`, e.g. `event.run.finished`.
pub fn event(ns: &str, entity: &str, name: &str) -> String {
    format!("{PREFIX}.{ns}.event.{entity}.{name}")
}

/// `exo.v1.<ns>.start`: core NATS, where any client asks to start a run
/// ([`crate::messages::StartRun`]), with request/reply for the run id.
pub fn start(ns: &str) -> String {
    format!("{PREFIX}.{ns}.start")
}

/// What the `trigger` service subscribes to for [`start`] requests of every
/// namespace (queue group `exo-trigger`).
pub const START_SUBJECTS: &str = "exo.v1.*.start";

/// The pseudo-stream named in dead-letter records of [`start`] requests
/// that could not start a run and had no reply subject.
pub const START_DLQ: &str = "START";

/// `exo.v1.<ns>.secrets.get`: core NATS request/reply (no stream, so secrets
/// are never persisted) by which a NATS runtime reads a state's secrets.
pub fn secrets(ns: &str) -> String {
    format!("{PREFIX}.{ns}.secrets.get")
}

/// What the api subscribes to for [`secrets`] requests of every namespace.
pub const SECRETS_SUBJECTS: &str = "exo.v1.*.secrets.get";

/// `exo.dlq.v1.<stream>.<consumer>`: outside `exo.v1.*` so that no namespace
/// can collide with it.
pub fn dead_letter(stream: &str, consumer: &str) -> String {
    format!("exo.dlq.v1.{stream}.{consumer}")
}

/// The namespace token of any `exo.v1.<ns>....` subject.
pub fn namespace_of(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix(PREFIX)?.strip_prefix('.')?;
    rest.split('.').next().filter(|t| !t.is_empty())
}

/// The result kind of a `exo.v1.<ns>.result.<kind>[.<run or partition>]`
/// subject.
pub fn result_kind_of(subject: &str) -> Option<ResultKind> {
    let rest = subject.strip_prefix(PREFIX)?.strip_prefix('.')?;
    let mut tokens = rest.split('.');
    let (_ns, verb, kind) = (tokens.next()?, tokens.next()?, tokens.next()?);
    if verb != "result" || tokens.nth(1).is_some() {
        return None;
    }
    ResultKind::from_token(kind)
}

/// Durable consumer name of the queue of one (namespace, node).
///
/// Names stay under 32 characters (they are file names on the server): short
/// pairs read `dsp-<ns>-<node>`, longer ones `dsp-` plus a 24-hex hash.
pub fn dispatch_consumer(ns: &str, node: &str) -> String {
    let plain = format!("dsp-{ns}-{node}");
    if plain.len() <= 32 {
        return plain;
    }
    let digest = Sha256::digest(format!("{ns}\n{node}").as_bytes());
    format!("dsp-{}", &hex::encode(digest)[..24])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_well_formed() {
        assert_eq!(dispatch("ns", "Node"), "exo.v1.ns.dispatch.Node");
        assert_eq!(
            result("ns", ResultKind::Requeue),
            "exo.v1.ns.result.requeue"
        );
        assert_eq!(namespace_of("exo.v1.ns.result.executed"), Some("ns"));
        assert_eq!(namespace_of("other.v1.ns"), None);
        assert_eq!(
            result_kind_of("exo.v1.ns.result.pruned"),
            Some(ResultKind::Pruned)
        );
        assert_eq!(result_kind_of("exo.v1.ns.state.pruned"), None);
        assert_eq!(
            result_kind_of("exo.v1.ns.result.executed.7"),
            Some(ResultKind::Executed)
        );
        assert_eq!(result_kind_of("exo.v1.ns.result.executed.7.x"), None);
        assert_eq!(
            result_of_run("ns", ResultKind::Executed, "r-1"),
            "exo.v1.ns.result.executed.r-1"
        );
        assert_eq!(
            result_of_run("ns", ResultKind::Executed, "a.b"),
            "exo.v1.ns.result.executed"
        );
        assert_eq!(
            completion_partition(3).1,
            ["exo.v1.*.result.executed.3", "exo.v1.*.result.pruned.3"]
        );
        assert_eq!(
            results_transform().1,
            "exo.v1.{{wildcard(1)}}.result.{{wildcard(2)}}.{{partition(64,3)}}"
        );
    }

    #[test]
    fn consumer_names_are_bounded() {
        assert_eq!(dispatch_consumer("ns", "A"), "dsp-ns-A");
        let long = dispatch_consumer("a-very-long-namespace-name", "AndAVeryLongNodeName");
        assert!(long.len() <= 32, "{long}");
        assert_ne!(
            long,
            dispatch_consumer("a-very-long-namespace-name", "AndAVeryLongNodeNamf")
        );
    }
}
