//! No-op bench nodes that record when they run, and the bench graphs.
//!
//! The same node logic serves the Rust-SDK runtime (through [`Node`]) and the
//! HTTP runtime that mimics the Python SDK (through [`execute_json`]).

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use exo_runtime::{Context, Node, NodeError, Output};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::stack::NS;

/// Wall clock in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn system_time_us(t: SystemTime) -> Option<i64> {
    t.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_micros() as i64)
}

/// One execution of a recorded node.
#[derive(Debug, Clone)]
pub struct Exec {
    /// Run id.
    pub run_id: String,
    /// Node identifier (`s0`, `s1`, …, `merge`).
    pub identifier: String,
    /// When `execute` started (µs).
    pub start_us: i64,
    /// When `execute` returned (µs); the SDK publishes the result right after.
    pub end_us: i64,
    /// When the parent returned (µs), carried in the inputs (`sent_at`).
    pub parent_end_us: Option<i64>,
    /// When JetStream stored the dispatch message (µs, server clock), from
    /// [`Context::published`].
    pub dispatched_us: Option<i64>,
}

/// What the nodes saw.
#[derive(Debug, Default)]
pub struct Recorder {
    execs: Mutex<Vec<Exec>>,
    /// `Work` executions finished.
    pub work_done: AtomicUsize,
    /// First `Work` start (µs, 0 = none yet).
    pub work_first_start_us: AtomicI64,
    /// Latest `Work` return (µs).
    pub work_last_end_us: AtomicI64,
}

impl Recorder {
    /// A shared recorder.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn push(&self, e: Exec) {
        if let Ok(mut v) = self.execs.lock() {
            v.push(e);
        }
    }

    /// Executions of `run_id`, and those of unknown runs (HTTP runtimes are
    /// not told the run id; their records carry an empty one).
    pub fn of_run(&self, run_id: &str) -> Vec<Exec> {
        self.execs
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|e| e.run_id == run_id || e.run_id.is_empty())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every recorded execution.
    #[cfg(test)]
    pub fn all(&self) -> Vec<Exec> {
        self.execs.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Forgets everything.
    pub fn clear(&self) {
        if let Ok(mut v) = self.execs.lock() {
            v.clear();
        }
        self.work_done.store(0, Ordering::SeqCst);
        self.work_first_start_us.store(0, Ordering::SeqCst);
        self.work_last_end_us.store(0, Ordering::SeqCst);
    }

    fn work(&self, start: i64, end: i64) {
        let _ =
            self.work_first_start_us
                .compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst);
        self.work_last_end_us.fetch_max(end, Ordering::SeqCst);
        self.work_done.fetch_add(1, Ordering::SeqCst);
    }
}

/// Node names, as registered.
pub const NODE_NAMES: [&str; 5] = ["Step", "Start", "Split", "Work", "Merge"];

/// Where an execution came from.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// Run id.
    pub run_id: String,
    /// Node identifier.
    pub identifier: String,
    /// Dispatch message time, when known.
    pub dispatched_us: Option<i64>,
}

impl Origin {
    /// What a node of this origin recorded: it ran from `start_us` to
    /// `end_us`, its parent having returned at `parent_end_us`.
    fn exec(self, start_us: i64, end_us: i64, parent_end_us: Option<i64>) -> Exec {
        Exec {
            run_id: self.run_id,
            identifier: self.identifier,
            start_us,
            end_us,
            parent_end_us,
            dispatched_us: self.dispatched_us,
        }
    }

    fn of(ctx: &Context) -> Self {
        Self {
            run_id: ctx.run_id.clone(),
            identifier: ctx.identifier.clone(),
            dispatched_us: ctx.published.and_then(system_time_us),
        }
    }
}

/// Runs node `name` on JSON inputs: the one implementation behind both
/// runtimes. Every output value is a string (Exosphere's data model).
pub fn execute_json(
    rec: &Recorder,
    name: &str,
    inputs: &Map<String, Value>,
    origin: Origin,
) -> Result<Vec<Map<String, Value>>, String> {
    let start = now_us();
    let text = |k: &str| -> Result<String, String> {
        inputs
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("input {k} missing"))
    };
    let one = |pairs: &[(&str, String)]| -> Vec<Map<String, Value>> {
        vec![
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), Value::String(v.clone())))
                .collect(),
        ]
    };
    match name {
        "Step" => {
            let parent_end = text("sent_at")?.parse::<i64>().ok().filter(|&t| t > 0);
            let out_text = text("text")?;
            let end = now_us();
            rec.push(origin.exec(start, end, parent_end));
            Ok(one(&[("text", out_text), ("sent_at", end.to_string())]))
        }
        "Start" | "Merge" => {
            let t = text("text")?;
            let end = now_us();
            rec.push(origin.exec(start, end, None));
            Ok(one(&[("text", t)]))
        }
        "Split" => {
            let n: usize = text("count")?
                .parse()
                .map_err(|_| "count is not a number".to_string())?;
            let out = (0..n)
                .map(|k| {
                    let mut m = Map::new();
                    m.insert("text".into(), Value::String(format!("item-{k}")));
                    m
                })
                .collect();
            rec.push(origin.exec(start, now_us(), None));
            Ok(out)
        }
        "Work" => {
            let t = text("text")?;
            rec.work(start, now_us());
            Ok(one(&[("text", t)]))
        }
        other => Err(format!("unknown node {other}")),
    }
}

/// Input field names of a node.
pub fn input_fields(name: &str) -> Vec<&'static str> {
    match name {
        "Step" => vec!["text", "sent_at"],
        "Split" => vec!["count"],
        _ => vec!["text"],
    }
}

/// Output field names of a node.
pub fn output_fields(name: &str) -> Vec<&'static str> {
    match name {
        "Step" => vec!["text", "sent_at"],
        _ => vec!["text"],
    }
}

/// A bench node for the Rust SDK.
pub struct BenchNode {
    name: &'static str,
    rec: Arc<Recorder>,
}

impl BenchNode {
    /// Node `name` (one of [`NODE_NAMES`]) recording into `rec`.
    pub fn new(name: &'static str, rec: Arc<Recorder>) -> Self {
        Self { name, rec }
    }
}

/// Any object of strings.
#[derive(Debug, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Strings(pub Map<String, Value>);

impl Node for BenchNode {
    type Inputs = Strings;
    type Outputs = Strings;
    fn name(&self) -> &str {
        self.name
    }
    fn input_fields(&self) -> Vec<&str> {
        input_fields(self.name)
    }
    fn output_fields(&self) -> Vec<&str> {
        output_fields(self.name)
    }
    async fn execute(&self, i: Strings, ctx: &Context) -> Result<Output<Strings>, NodeError> {
        let mut out =
            execute_json(&self.rec, self.name, &i.0, Origin::of(ctx)).map_err(NodeError::new)?;
        Ok(if out.len() == 1 {
            Output::One(Strings(out.remove(0)))
        } else {
            Output::Many(out.into_iter().map(Strings).collect())
        })
    }
}

/// Registration payload of every bench node (`PUT /nodes/`), for runtimes
/// that register over HTTP themselves.
pub fn registration(runtime_name: &str) -> Value {
    let nodes: Vec<Value> = NODE_NAMES
        .iter()
        .map(|n| {
            json!({
                "name": n,
                "namespace": NS,
                "inputs_schema": exo_runtime::string_object_schema("Inputs", &input_fields(n)),
                "outputs_schema": exo_runtime::string_object_schema("Outputs", &output_fields(n)),
                "secrets": [],
            })
        })
        .collect();
    json!({"runtime_name": runtime_name, "runtime_namespace": NS, "nodes": nodes})
}

fn node(
    name: &str,
    id: &str,
    inputs: Value,
    next: &[&str],
    unites: Option<&str>,
) -> serde_json::Value {
    let mut n = json!({"node_name": name, "identifier": id, "namespace": NS,
                       "inputs": inputs, "next_nodes": next});
    if let Some(target) = unites {
        n["unites"] = json!({"identifier": target, "strategy": "ALL_SUCCESS"});
    }
    n
}

/// `s0 → s1 → … → s{len-1}`: each step passes its text on and stamps
/// `sent_at` (µs) when it returns, so the next one can measure the hand-off.
pub fn chain_graph(len: usize) -> Value {
    let nodes: Vec<Value> = (0..len)
        .map(|i| {
            let inputs = if i == 0 {
                json!({"text": "x", "sent_at": "0"})
            } else {
                json!({"text": format!("${{{{ s{}.outputs.text }}}}", i - 1),
                       "sent_at": format!("${{{{ s{}.outputs.sent_at }}}}", i - 1)})
            };
            let next: Vec<String> = if i + 1 < len {
                vec![format!("s{}", i + 1)]
            } else {
                vec![]
            };
            let next: Vec<&str> = next.iter().map(String::as_str).collect();
            node("Step", &format!("s{i}"), inputs, &next, None)
        })
        .collect();
    json!({"secrets": {}, "nodes": nodes})
}

/// `start → split (fans out n) → work (×n) → merge`, where `merge` unites
/// `start` (an ancestor of the fanning node), as the e2e `fan_graph`.
pub fn fan_graph(n: usize) -> Value {
    json!({
        "secrets": {},
        "nodes": [
            node("Start", "start", json!({"text": "go"}), &["split"], None),
            node("Split", "split", json!({"count": n.to_string()}), &["work"], None),
            node("Work", "work", json!({"text": "${{ split.outputs.text }}"}), &["merge"], None),
            node("Merge", "merge", json!({"text": "${{ start.outputs.text }}"}), &[], Some("start")),
        ]
    })
}

/// One node: the smallest run (trigger throughput).
pub fn single_graph() -> Value {
    json!({"secrets": {}, "nodes": [node("Start", "only", json!({"text": "go"}), &[], None)]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_references_the_parent() {
        let g = chain_graph(3);
        assert_eq!(g["nodes"][0]["inputs"]["sent_at"], "0");
        assert_eq!(g["nodes"][2]["inputs"]["text"], "${{ s1.outputs.text }}");
        assert_eq!(g["nodes"][1]["next_nodes"][0], "s2");
        assert_eq!(
            g["nodes"][2]["next_nodes"].as_array().map(Vec::len),
            Some(0)
        );
    }

    #[test]
    fn step_stamps_its_return() {
        let rec = Recorder::new();
        let mut i = Map::new();
        i.insert("text".into(), json!("x"));
        i.insert("sent_at".into(), json!("5"));
        let out = execute_json(&rec, "Step", &i, Origin::default()).unwrap();
        assert_eq!(out[0]["text"], "x");
        assert!(out[0]["sent_at"].as_str().unwrap().parse::<i64>().unwrap() > 5);
        assert_eq!(rec.all()[0].parent_end_us, Some(5));
        let mut s = Map::new();
        s.insert("count".into(), json!("3"));
        assert_eq!(
            execute_json(&rec, "Split", &s, Origin::default())
                .unwrap()
                .len(),
            3
        );
    }
}
