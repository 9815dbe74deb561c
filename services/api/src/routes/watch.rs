//! `GET /v0/namespace/{ns}/run/{run_id}/events` (extension): a run's
//! lifecycle events as server-sent events, from the first, live, until the
//! run has ended (docs/events.md). Each SSE event is one CloudEvent: `id`
//! its `ce-id`, `event` its `ce-type`, `data` its JSON data. The stream
//! reads `EXO_EVENTS` (kept 24 h) through an ordered consumer filtered on
//! the run's subjects, so a client that reconnects gets the whole story
//! again and watching costs the server one consumer per open stream.
//! `?only=run` keeps the run's own events (created, ended: a handful per
//! run, whatever its width).

use std::convert::Infallible;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use axum::extract::Query;
use axum::response::sse::{Event, KeepAlive, Sse};
use exo_engine::lifecycle;
use exo_types::subjects;
use futures::{Stream, StreamExt};

use crate::error::{ApiError, ApiResult};
use crate::openapi;
use crate::routes::Scoped;
use crate::routes::runs::load_run;

/// `?only=`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
pub struct EventsQuery {
    /// `run`: only the run's own events (created, ended), not its states';
    /// every event when absent.
    pub only: Option<String>,
}

/// Watch a run
///
/// `GET /v0/namespace/{ns}/run/{run_id}/events` (extension): server-sent
/// events, one per lifecycle transition, until the run ends.
#[utoipa::path(
    get, path = "/v0/namespace/{namespace_name}/run/{run_id}/events", operation_id = "watchRun", tag = "runs",
    params(EventsQuery),
    responses((status = 200, description = "The run's CloudEvents as server-sent events (`id`: ce-id, `event`: ce-type, `data`: the event's JSON), from its creation; the stream ends after the run's last event.", content_type = "text/event-stream", body = String), (status = 400, description = "An `only` other than `run`.", body = openapi::ErrorDetail), (status = 404, description = "No such run.", body = openapi::ErrorDetail))
)]
pub async fn events(
    s: Scoped,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let kinds = match q.only.as_deref() {
        None | Some("") => ">",
        Some("run") => "run.>",
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "only must be run (or absent), not {other:?}"
            )));
        }
    };
    let (state, ns, run_id) = s.parts();
    let run = load_run(&state, &ns, &run_id).await?;
    // A run that ended already: its stored events, then the end (also
    // when it ended before lifecycle events existed).
    let ended_before = run
        .status
        .as_deref()
        .is_some_and(|s| s != exo_types::status::RunStatus::Pending.as_str());
    let Some(prefix) = lifecycle::run_prefix(&ns, &run_id) else {
        return Err(ApiError::bad_request(format!(
            "Run {run_id} has no lifecycle events"
        )));
    };
    let stream = state
        .engine
        .bus
        .jetstream()
        .get_stream(subjects::STREAM_EVENTS)
        .await
        .map_err(|e| ApiError::internal("events stream", e))?;
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: format!("{prefix}.{kinds}"),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| ApiError::internal("events consumer", e))?;
    let stored = consumer
        .info()
        .await
        .map_err(|e| ApiError::internal("events consumer", e))?
        .num_pending;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| ApiError::internal("events consumer", e))?;
    // Each message becomes an SSE event; the stream ends after the event
    // that ended the run (or when the consumer fails).
    let nothing_left = ended_before && stored == 0;
    let events = futures::stream::unfold(
        (messages, nothing_left),
        move |(mut messages, done)| async move {
            if done {
                return None;
            }
            let msg = messages.next().await?.ok()?;
            let header = |name: &str| {
                msg.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default()
            };
            let ce_type = header("ce-type");
            let ended = ["exo.run.succeeded", "exo.run.failed", "exo.run.cancelled"]
                .contains(&ce_type.as_str());
            let event = Event::default()
                .id(header("ce-id"))
                .event(ce_type)
                .data(String::from_utf8_lossy(&msg.payload));
            Some((Ok(event), (messages, ended)))
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
