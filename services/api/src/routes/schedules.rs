//! A graph's triggers as they run: each CRON schedule with its zone, its
//! catch-up policy, its next fire times, the occurrence waiting to fire
//! and the last ones fired (ours).

use axum::Json;
use exo_store::TriggerDoc;
use exo_store::mongodb::bson::doc;
use exo_types::cron::CronSpec;
use exo_types::graph::{Trigger, TriggerType};
use exo_types::status::TriggerStatus;
use exo_types::time::{UtcTime, rfc3339};
use futures::TryStreamExt;
use serde_json::{Value, json};

use super::Scoped;
use crate::error::ApiResult;
use crate::openapi;

/// Next fire times listed per schedule.
pub const NEXT_FIRE_TIMES: usize = 5;
/// Past occurrences listed per schedule.
pub const RECENT: i64 = 10;

/// Read a graph's triggers with their next fire times
///
/// `GET /v0/namespace/{ns}/graph/{graph}/triggers` (ours): the template's
/// triggers; each CRON one with its schedule key, time zone, catch-up
/// policy, its next fire times (computed from the api's clock), the
/// occurrence stored to fire next, and the latest occurrences fired.
#[utoipa::path(
    get, path = "/v0/namespace/{namespace_name}/graph/{graph_name}/triggers", operation_id = "getGraphTriggers", tag = "graphs",
    responses((status = 200, description = "The graph's triggers, CRON schedules with their next fire times.", body = openapi::GraphTriggersResponse), (status = 404, description = "No such graph.", body = openapi::ErrorDetail))
)]
pub async fn triggers(s: Scoped) -> ApiResult<Json<Value>> {
    let (state, ns, name) = s.parts();
    let template = super::graphs::template_or_404(&state, &ns, &name).await?;
    let now = exo_types::time::from_ms(state.engine.now_ms());
    let mut out = Vec::with_capacity(template.triggers.len());
    for t in &template.triggers {
        out.push(match (t.kind, t.cron_spec()) {
            (TriggerType::Cron, Some(spec)) => {
                let occurrences = occurrences(&state, &ns, &name, &spec.key()).await?;
                cron_entry(t, &spec, now, &occurrences)
            }
            _ => json!({"type": t.kind, "value": t.value}),
        });
    }
    Ok(Json(json!({
        "namespace": ns,
        "graph_name": name,
        "validation_status": template.validation_status,
        "triggers": out,
    })))
}

/// The stored occurrences of schedule `key`, newest first: the PENDING one
/// and the latest [`RECENT`] others.
async fn occurrences(
    state: &crate::AppState,
    ns: &str,
    graph: &str,
    key: &str,
) -> ApiResult<Vec<TriggerDoc>> {
    Ok(state
        .engine
        .store
        .triggers()
        .find(doc! {"namespace": ns, "graph_name": graph, "type": "CRON", "expression": key})
        .sort(doc! {"trigger_time": -1})
        .limit(RECENT + 1)
        .await?
        .try_collect()
        .await?)
}

fn cron_entry(t: &Trigger, spec: &CronSpec, now: UtcTime, occurrences: &[TriggerDoc]) -> Value {
    let time =
        |d: &TriggerDoc| rfc3339(exo_types::time::from_ms(d.trigger_time.timestamp_millis()));
    let pending = TriggerStatus::Pending.as_str();
    let scheduled = occurrences
        .iter()
        .find(|d| d.trigger_status == pending)
        .map(time);
    let recent: Vec<Value> = occurrences
        .iter()
        .filter(|d| d.trigger_status != pending)
        .take(RECENT as usize)
        .map(|d| {
            json!({"trigger_time": time(d), "status": d.trigger_status,
                   "run_id": d.run_id, "error": d.error})
        })
        .collect();
    let next: Vec<String> = spec
        .upcoming(now, NEXT_FIRE_TIMES)
        .into_iter()
        .map(rfc3339)
        .collect();
    json!({
        "type": t.kind,
        "value": t.value,
        "key": spec.key(),
        "timezone": spec.zone.name(),
        "catch_up": spec.catch_up.as_str(),
        "max_catch_up": spec.max_catch_up,
        "next_fire_times": next,
        "scheduled": scheduled,
        "recent": recent,
    })
}
