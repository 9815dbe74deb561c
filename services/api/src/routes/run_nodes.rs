//! A run seen per graph node (ours): what the live view and `exo run show`
//! draw without reading every state of the run.
//!
//! - `GET /v0/namespace/{ns}/run/{run_id}/nodes`: one entry per graph node
//!   (identifier) that has states in the run: its states' counts per
//!   status (CREATED, QUEUED and EXECUTED together as `PENDING`), attempts,
//!   first creation and last change, and the identifier of its parent.
//!   Read from the per-node counters of the run document
//!   (`exo_store::node_counts`), so its cost follows the graph, not the
//!   width of its fan-outs; a run without them (started by Exosphere or an
//!   earlier version) is summed by one aggregation instead.
//! - `GET /v0/namespace/{ns}/run/{run_id}/nodes/{identifier}/states`: that
//!   node's states a page at a time (`?status=`, `?limit=`, `?after=` the
//!   last id of the previous page), in id order.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use exo_engine::effects::Counters;
use exo_store::mongodb::bson::{Bson, DateTime, Document, doc};
use exo_store::{RunDoc, StateDoc, node_counts};
use exo_types::status::StateStatus;
use futures::TryStreamExt;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::openapi;
use crate::render::{iso, parse_oid};
use crate::routes::Scoped;
use crate::routes::runs::{load_run, run_states, run_status};

/// States listed per page unless `?limit=` says otherwise.
pub const DEFAULT_LIMIT: i64 = 100;
/// Most states one page lists.
pub const MAX_LIMIT: i64 = 1000;

/// One graph node's states in a run, as answered.
#[derive(Default)]
struct Node {
    node_name: String,
    parent: Option<String>,
    counts: BTreeMap<String, i64>,
    attempts: i64,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
}

impl Node {
    /// The node as the run document's counters hold it (`nodes.<key>`).
    fn from_counters(d: &Document) -> Self {
        let counts = d
            .get_document("counts")
            .map(|c| {
                c.iter()
                    .map(|(b, n)| (b.clone(), int(Some(n))))
                    .filter(|(_, n)| *n != 0)
                    .collect()
            })
            .unwrap_or_default();
        Self {
            node_name: d.get_str("node").unwrap_or_default().to_string(),
            parent: d.get_str("parent").ok().map(str::to_string),
            counts,
            attempts: int(d.get("attempts")),
            first_ms: d.get("first_ms").map(|v| int(Some(v))),
            last_ms: d.get("last_ms").map(|v| int(Some(v))),
        }
    }

    /// Folds one `(identifier, status)` group of the aggregation in.
    fn add_group(&mut self, status: StateStatus, g: &Document) {
        *self
            .counts
            .entry(node_counts::bucket(status).to_string())
            .or_default() += int(g.get("n"));
        if self.node_name.is_empty() {
            self.node_name = g.get_str("node_name").unwrap_or_default().to_string();
        }
        if self.parent.is_none() {
            // A state's parents list its ancestors oldest first: the last
            // is the state that created it.
            self.parent = g
                .get_document("parents")
                .ok()
                .and_then(|p| p.keys().last().cloned());
        }
        self.attempts = self.attempts.max(int(g.get("max_retry")) + 1);
        let ms = |k: &str| g.get_datetime(k).ok().map(|t| t.timestamp_millis());
        self.first_ms = [self.first_ms, ms("first")].into_iter().flatten().min();
        self.last_ms = [self.last_ms, ms("last")].into_iter().flatten().max();
    }

    fn to_json(&self, identifier: &str) -> Value {
        let counts: Map<String, Value> = self
            .counts
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(*v)))
            .collect();
        let time = |ms: Option<i64>| ms.map(|ms| iso(DateTime::from_millis(ms)));
        json!({
            "identifier": identifier,
            "node_name": self.node_name,
            "parent": self.parent,
            "total": self.counts.values().sum::<i64>(),
            "counts": counts,
            "attempts": self.attempts,
            "first_created_at": time(self.first_ms),
            "last_updated_at": time(self.last_ms),
        })
    }
}

fn int(v: Option<&Bson>) -> i64 {
    match v {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(f)) => *f as i64,
        _ => 0,
    }
}

/// The run's per-node counters, when it has them and they add up to its
/// counters (else `None`: a run started before they existed, or by
/// Exosphere).
fn from_counters(run: &RunDoc) -> Option<BTreeMap<String, Node>> {
    let nodes: BTreeMap<String, Node> = run
        .nodes
        .as_ref()?
        .iter()
        .filter_map(|(k, v)| {
            Some((
                node_counts::identifier(k),
                Node::from_counters(v.as_document()?),
            ))
        })
        .collect();
    let mut sums = Counters::default();
    for n in nodes.values() {
        for (b, count) in &n.counts {
            sums.total += count;
            *sums.slot(node_counts::group_of(b)?) += count;
        }
    }
    (sums == Counters::of_run(run)).then_some(nodes)
}

/// The run's states summed per node by one aggregation.
async fn aggregated(state: &AppState, ns: &str, run_id: &str) -> ApiResult<BTreeMap<String, Node>> {
    let pipeline = [
        doc! {"$match": run_states(ns, run_id)},
        doc! {"$group": {
            "_id": {"identifier": "$identifier", "status": "$status"},
            "n": {"$sum": 1},
            "node_name": {"$first": "$node_name"},
            "parents": {"$first": "$parents"},
            "max_retry": {"$max": "$retry_count"},
            "first": {"$min": "$created_at"},
            "last": {"$max": "$updated_at"},
        }},
    ];
    let mut cursor = state.engine.store.states_raw().aggregate(pipeline).await?;
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    while let Some(g) = cursor.try_next().await? {
        let Ok(key) = g.get_document("_id") else {
            continue;
        };
        let Some(status) = key.get_str("status").ok().and_then(StateStatus::parse) else {
            continue;
        };
        let identifier = key.get_str("identifier").unwrap_or_default();
        nodes
            .entry(identifier.to_string())
            .or_default()
            .add_group(status, &g);
    }
    Ok(nodes)
}

/// Read a run per graph node
///
/// `GET /v0/namespace/{ns}/run/{run_id}/nodes` (ours): for each graph node
/// with states in the run, their counts per status and timings.
#[utoipa::path(
    get, path = "/v0/namespace/{namespace_name}/run/{run_id}/nodes", operation_id = "getRunNodes", tag = "runs",
    responses((status = 200, description = "The run's states summed per graph node (exo extension), nodes in order of their first state. Read from counters the run document keeps: its cost does not grow with the run's width.", body = openapi::RunNodesResponse), (status = 404, description = "No such run.", body = openapi::ErrorDetail))
)]
pub async fn summary(s: Scoped) -> ApiResult<Json<Value>> {
    let (state, ns, run_id) = s.parts();
    let run = load_run(&state, &ns, &run_id).await?;
    let nodes = match from_counters(&run) {
        Some(nodes) => nodes,
        None => aggregated(&state, &ns, &run_id).await?,
    };
    let (status, _) = run_status(&state, &run).await?;
    let mut ordered: Vec<(&String, &Node)> = nodes.iter().collect();
    ordered.sort_by_key(|(ident, n)| (n.first_ms, *ident));
    let items: Vec<Value> = ordered.iter().map(|(i, n)| n.to_json(i)).collect();
    Ok(Json(json!({
        "run_id": run.run_id,
        "graph_name": run.graph_name,
        "status": status,
        "nodes": items,
    })))
}

/// `?status=&limit=&after=` of [`states`], as sent (checked by hand so a
/// bad value gets a message naming it).
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
pub struct PageQuery {
    /// Only states in this status (one of the state statuses).
    pub status: Option<String>,
    /// How many states (1 to 1000, default 100).
    pub limit: Option<String>,
    /// The `next_after` of the previous page: states created after it.
    pub after: Option<String>,
}

/// A checked [`PageQuery`].
#[derive(Debug, PartialEq)]
struct Page {
    status: Option<StateStatus>,
    limit: i64,
    after: Option<exo_store::mongodb::bson::oid::ObjectId>,
}

impl PageQuery {
    fn check(&self) -> Result<Page, ApiError> {
        let status = match self.status.as_deref() {
            None | Some("") => None,
            Some(s) => Some(StateStatus::parse(s).ok_or_else(|| {
                let all: Vec<&str> = StateStatus::ALL
                    .into_iter()
                    .chain([StateStatus::Cancelled])
                    .map(StateStatus::as_str)
                    .collect();
                ApiError::bad_request(format!(
                    "status must be one of {}, not {s:?}",
                    all.join(", ")
                ))
            })?),
        };
        let limit = match self.limit.as_deref() {
            None | Some("") => DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "limit must be an integer from 1 to {MAX_LIMIT}, not {raw:?}"
                    ))
                })?,
        };
        let after = match self.after.as_deref() {
            None | Some("") => None,
            Some(raw) => Some(parse_oid(raw).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "after must be a state id (24 hex digits), not {raw:?}"
                ))
            })?),
        };
        Ok(Page {
            status,
            limit,
            after,
        })
    }
}

/// List a graph node's states in a run
///
/// `GET /v0/namespace/{ns}/run/{run_id}/nodes/{identifier}/states` (ours):
/// a page of the states of one graph node, in id order.
#[utoipa::path(
    get, path = "/v0/namespace/{namespace_name}/run/{run_id}/nodes/{identifier}/states", operation_id = "listRunNodeStates", tag = "runs",
    params(PageQuery),
    responses((status = 200, description = "A page of the node's states (exo extension); `next_after` is null on the last page.", body = openapi::RunNodeStatesResponse), (status = 400, description = "A `status`, `limit` or `after` that is not valid.", body = openapi::ErrorDetail), (status = 404, description = "No such run.", body = openapi::ErrorDetail))
)]
pub async fn states(
    State(state): State<AppState>,
    Path((ns, run_id, identifier)): Path<(String, String, String)>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    let page = q.check()?;
    load_run(&state, &ns, &run_id).await?;
    let mut filter = run_states(&ns, &run_id);
    filter.insert("identifier", &identifier);
    if let Some(s) = page.status {
        filter.insert("status", s.as_str());
    }
    if let Some(after) = page.after {
        filter.insert("_id", doc! {"$gt": after});
    }
    // One more than asked, to know whether another page follows.
    let found: Vec<StateDoc> = state
        .engine
        .store
        .states()
        .find(filter)
        .projection(doc! {"inputs": 0, "outputs": 0})
        .sort(doc! {"_id": 1})
        // Within the run and node, in id order (without the hint a planner
        // may walk the whole collection's `_id` index instead).
        .hint(exo_store::mongodb::options::Hint::Name(
            exo_store::indexes::RUN_IDENTIFIER_INDEX.to_string(),
        ))
        .limit(page.limit + 1)
        .await?
        .try_collect()
        .await?;
    let more = found.len() as i64 > page.limit;
    let shown = &found[..found.len().min(page.limit as usize)];
    let items: Vec<Value> = shown
        .iter()
        .map(|st| {
            json!({
                "id": st.id.to_hex(),
                "node_name": st.node_name,
                "status": st.status.as_str(),
                "error": st.error,
                "retry_count": st.retry_count,
                "created_at": iso(st.created_at),
                "updated_at": iso(st.updated_at),
            })
        })
        .collect();
    let next = more
        .then(|| shown.last().map(|st| st.id.to_hex()))
        .flatten();
    Ok(Json(json!({
        "run_id": run_id,
        "identifier": identifier,
        "count": items.len(),
        "states": items,
        "next_after": next,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(status: Option<&str>, limit: Option<&str>, after: Option<&str>) -> PageQuery {
        PageQuery {
            status: status.map(str::to_string),
            limit: limit.map(str::to_string),
            after: after.map(str::to_string),
        }
    }

    #[test]
    fn page_queries_are_checked_at_their_bounds() {
        let p = q(None, None, None).check().unwrap();
        assert_eq!((p.status, p.limit, p.after), (None, DEFAULT_LIMIT, None));
        assert_eq!(q(None, Some("1"), None).check().unwrap().limit, 1);
        assert_eq!(q(None, Some("1000"), None).check().unwrap().limit, 1000);
        for bad in ["0", "1001", "-1", "x", "1.5"] {
            let e = q(None, Some(bad), None).check().unwrap_err();
            assert!(format!("{e:?}").contains("limit must be"), "{bad}: {e:?}");
        }
        let p = q(Some("ERRORED"), None, Some("0123456789abcdef01234567"))
            .check()
            .unwrap();
        assert_eq!(p.status, Some(StateStatus::Errored));
        assert_eq!(p.after.unwrap().to_hex(), "0123456789abcdef01234567");
        let e = q(Some("errored"), None, None).check().unwrap_err();
        assert!(
            format!("{e:?}").contains("status must be one of CREATED"),
            "{e:?}"
        );
        assert!(
            format!("{e:?}").contains("RETRY_CREATED, CANCELLED, not"),
            "{e:?}"
        );
        let p = q(Some("CANCELLED"), None, None).check().unwrap();
        assert_eq!(p.status, Some(StateStatus::Cancelled));
        let e = q(None, None, Some("123")).check().unwrap_err();
        assert!(
            format!("{e:?}").contains("after must be a state id"),
            "{e:?}"
        );
    }

    #[test]
    fn groups_fold_into_one_node() {
        let mut n = Node::default();
        let t = DateTime::from_millis;
        n.add_group(
            StateStatus::Success,
            &doc! {"n": 3, "node_name": "Work", "parents": {"start": 1, "fan": 2},
            "max_retry": 0_i64, "first": t(10), "last": t(50)},
        );
        n.add_group(
            StateStatus::Errored,
            &doc! {"n": 2_i64, "node_name": "Work", "parents": {"start": 1, "fan": 3},
            "max_retry": 2, "first": t(5), "last": t(40)},
        );
        n.add_group(StateStatus::Queued, &doc! {"n": 1, "max_retry": 1});
        n.add_group(StateStatus::Created, &doc! {"n": 1, "max_retry": 0});
        let v = n.to_json("work");
        assert_eq!(v["total"], 7);
        assert_eq!(
            v["counts"],
            json!({"ERRORED": 2, "PENDING": 2, "SUCCESS": 3})
        );
        assert_eq!(v["parent"], "fan");
        assert_eq!(v["attempts"], 3);
        assert_eq!(v["first_created_at"], iso(t(5)));
        assert_eq!(v["last_updated_at"], iso(t(50)));
        assert_eq!(v["node_name"], "Work");
    }

    #[test]
    fn counters_are_used_only_when_they_add_up() {
        let root: StateDoc = exo_store::mongodb::bson::from_document(doc! {
            "_id": exo_store::mongodb::bson::oid::ObjectId::new(), "node_name": "Start",
            "namespace_name": "ns", "identifier": "start", "graph_name": "g", "run_id": "r",
            "status": "QUEUED", "inputs": {}, "outputs": {}, "parents": {}, "enqueue_after": 0_i64,
            "created_at": DateTime::from_millis(0), "updated_at": DateTime::from_millis(0),
        })
        .expect("a state");
        let mut run = RunDoc::pending(
            exo_types::names::RunId::trusted("r"),
            "g",
            exo_types::names::Namespace::trusted("ns"),
            DateTime::from_millis(0),
            &root,
        );
        let nodes = from_counters(&run).expect("a new run counts its root");
        assert_eq!(nodes["start"].counts["PENDING"], 1);
        assert_eq!(nodes["start"].node_name, "Start");
        run.nodes = None;
        assert!(from_counters(&run).is_none(), "no counters");
        run.nodes = Some(
            doc! {"start": {"counts": {"PENDING": 1_i64}, "attempts": 1, "node": "Start",
            "first_ms": 0_i64, "last_ms": 0_i64}, "a%2Eb": {"counts": {}, "node": "B"}},
        );
        let nodes = from_counters(&run).expect("they add up");
        assert_eq!(nodes["start"].counts["PENDING"], 1);
        assert_eq!(nodes["a.b"].node_name, "B");
        run.success_count = 1;
        run.total_count = 2;
        assert!(
            from_counters(&run).is_none(),
            "one state not counted per node"
        );
    }
}
