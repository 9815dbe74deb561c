//! `exo run …` and `exo state retry`: start, list, show, watch, cancel.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use comfy_table::Table;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use crate::client::{Api, Exit, Outcome};
use crate::output::{Format, print_table};

/// `k=v` pairs as a JSON object of strings.
pub fn pairs(items: &[String], what: &str) -> Outcome<Value> {
    let mut map = serde_json::Map::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| Exit::Failure(format!("--{what} takes key=value, got {item:?}")))?;
        map.insert(k.trim().to_string(), Value::String(v.to_string()));
    }
    Ok(Value::Object(map))
}

/// The exit a finished run's status calls for.
pub fn exit_of(run_id: &str, status: &str) -> Outcome {
    match status {
        "SUCCESS" => Ok(()),
        "FAILED" => Err(Exit::RunFailed(format!("run {run_id} FAILED"))),
        "CANCELLED" => Err(Exit::RunCancelled(format!("run {run_id} CANCELLED"))),
        other => Err(Exit::Failure(format!("run {run_id} is {other}"))),
    }
}

/// `exo run start GRAPH [--input k=v]… [--store k=v]… [--wait]`.
pub async fn start(
    api: &Api,
    graph: &str,
    body: Value,
    wait: Option<Duration>,
    format: Format,
) -> Outcome {
    let answer = api
        .post(&format!("/graph/{graph}/trigger"), Some(&body))
        .await?;
    let run_id = answer["run_id"].as_str().unwrap_or_default().to_string();
    match format {
        Format::Json if wait.is_none() => println!("{answer}"),
        Format::Json => {}
        Format::Table => println!("run {run_id} started ({graph})"),
    }
    let Some(timeout) = wait else {
        return Ok(());
    };
    let status = watch(api, &run_id, timeout, format == Format::Table).await?;
    match format {
        Format::Json => println!("{}", json!({"run_id": run_id, "status": status})),
        Format::Table => println!("run {run_id} {status}"),
    }
    exit_of(&run_id, &status)
}

/// `exo run list [--page N] [--size N]`.
pub async fn list(api: &Api, page: u32, size: u32, format: Format) -> Outcome {
    let v = api.get(&format!("/runs/{page}/{size}")).await?;
    if format == Format::Json {
        println!("{v}");
        return Ok(());
    }
    let mut table = Table::new();
    table.set_header([
        "RUN", "GRAPH", "STATUS", "DONE", "PENDING", "ERRORED", "CREATED",
    ]);
    for r in v["runs"].as_array().into_iter().flatten() {
        let n = |k: &str| r[k].as_u64().unwrap_or(0).to_string();
        table.add_row([
            r["run_id"].as_str().unwrap_or_default().to_string(),
            r["graph_name"].as_str().unwrap_or_default().to_string(),
            r["status"].as_str().unwrap_or_default().to_string(),
            format!("{}/{}", n("success_count"), n("total_count")),
            n("pending_count"),
            n("errored_count"),
            r["created_at"].as_str().unwrap_or_default().to_string(),
        ]);
    }
    print_table(table);
    let total = v["total"].as_u64().unwrap_or(0);
    let plural = if total == 1 { "" } else { "s" };
    println!("{total} run{plural} in namespace {}", api.namespace);
    Ok(())
}

/// `exo run show RUN`: the run's counters and its states, grouped by
/// node (a fan-out is one line with its counts per status).
pub async fn show(api: &Api, run_id: &str, format: Format) -> Outcome {
    let run = api.get(&format!("/run/{run_id}")).await?;
    let graph = api.get(&format!("/states/run/{run_id}/graph")).await?;
    if format == Format::Json {
        println!("{}", json!({"run": run, "graph": graph}));
        return Ok(());
    }
    println!(
        "run {run_id}  graph {}  {}  ({} of {} states done, {} pending, {} errored)",
        run["graph_name"].as_str().unwrap_or_default(),
        run["status"].as_str().unwrap_or_default(),
        run["success_count"],
        run["total_count"],
        run["pending_count"],
        run["errored_count"]
    );
    print_table(tree(&graph));
    for f in run["failures"].as_array().into_iter().flatten() {
        println!("failed: {f}");
    }
    Ok(())
}

/// The states of one graph node in a run.
#[derive(Default)]
struct Group<'a> {
    node: &'a str,
    counts: BTreeMap<&'a str, u64>,
    error: Option<&'a str>,
    /// Most retries of one state, plus one.
    attempts: i64,
    /// First creation and last change among its states.
    span: Option<(chrono::NaiveDateTime, chrono::NaiveDateTime)>,
}

/// A naive ISO time as the API writes it.
fn time_of(v: &Value) -> Option<chrono::NaiveDateTime> {
    chrono::NaiveDateTime::parse_from_str(v.as_str()?, "%Y-%m-%dT%H:%M:%S%.f").ok()
}

impl Group<'_> {
    fn add_times(&mut self, n: &Value) {
        self.attempts = self
            .attempts
            .max(n["retry_count"].as_i64().unwrap_or(0) + 1);
        let (Some(c), Some(u)) = (time_of(&n["created_at"]), time_of(&n["updated_at"])) else {
            return;
        };
        self.span = Some(match self.span {
            Some((a, b)) => (a.min(c), b.max(u)),
            None => (c, u),
        });
    }

    /// First creation to last change, e.g. `1.25 s`.
    fn took(&self) -> String {
        self.span.map_or(String::new(), |(a, b)| {
            format!("{:.2} s", (b - a).num_milliseconds() as f64 / 1000.0)
        })
    }
}

/// The states of a run graph as a tree of nodes (depth-first from the
/// roots, by identifier), each with its states' counts per status.
fn tree(graph: &Value) -> Table {
    let nodes = graph["nodes"].as_array().cloned().unwrap_or_default();
    let ident_of: BTreeMap<&str, &str> = nodes
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n["identifier"].as_str()?)))
        .collect();
    let mut by_ident: BTreeMap<&str, Group> = BTreeMap::new();
    for n in &nodes {
        let g = by_ident
            .entry(n["identifier"].as_str().unwrap_or_default())
            .or_insert_with(|| Group {
                node: n["node_name"].as_str().unwrap_or_default(),
                ..Group::default()
            });
        *g.counts
            .entry(n["status"].as_str().unwrap_or_default())
            .or_default() += 1;
        if g.error.is_none() {
            g.error = n["error"].as_str();
        }
        g.add_times(n);
    }
    let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for edge in graph["edges"].as_array().into_iter().flatten() {
        let (Some(s), Some(t)) = (edge["source"].as_str(), edge["target"].as_str()) else {
            continue;
        };
        let (Some(&a), Some(&b)) = (ident_of.get(s), ident_of.get(t)) else {
            continue;
        };
        let list = children.entry(a).or_default();
        if a != b && !list.contains(&b) {
            list.push(b);
        }
    }
    let mut roots: Vec<&str> = graph["root_states"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["identifier"].as_str())
        .collect();
    roots.dedup();
    let mut table = Table::new();
    table.set_header(["NODE", "STATES", "BY STATUS", "ATTEMPTS", "TIME", "ERROR"]);
    let mut seen = std::collections::BTreeSet::new();
    let mut stack: Vec<(&str, usize)> = roots.iter().rev().map(|r| (*r, 0)).collect();
    while let Some((ident, depth)) = stack.pop() {
        if !seen.insert(ident) {
            continue;
        }
        if let Some(g) = by_ident.get(ident) {
            let by: Vec<String> = g.counts.iter().map(|(s, c)| format!("{s} {c}")).collect();
            table.add_row([
                format!("{}{ident} ({})", "  ".repeat(depth), g.node),
                g.counts.values().sum::<u64>().to_string(),
                by.join(", "),
                g.attempts.to_string(),
                g.took(),
                g.error.unwrap_or_default().to_string(),
            ]);
        }
        for child in children.get(ident).into_iter().flatten().rev() {
            stack.push((child, depth + 1));
        }
    }
    table
}

/// Follows a run until it ends (or `timeout`): a progress bar of its
/// states done out of all, by status, when `progress`. Returns the final
/// status.
pub async fn watch(api: &Api, run_id: &str, timeout: Duration, progress: bool) -> Outcome<String> {
    let bar = if progress {
        ProgressBar::new(1)
    } else {
        ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::hidden())
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} states {msg}",
        )
        .map_err(|e| Exit::Failure(e.to_string()))?,
    );
    let path = format!("/run/{run_id}");
    let deadline = Instant::now() + timeout;
    loop {
        let run = api.get(&path).await?;
        let n = |k: &str| run[k].as_u64().unwrap_or(0);
        bar.set_length(n("total_count").max(1));
        bar.set_position(n("total_count") - n("pending_count").min(n("total_count")));
        bar.set_message(format!(
            "{}: {} done, {} pending, {} errored",
            run["status"].as_str().unwrap_or("?"),
            n("success_count"),
            n("pending_count"),
            n("errored_count")
        ));
        let status = run["status"].as_str().unwrap_or_default().to_string();
        if status != "PENDING" && !status.is_empty() {
            bar.finish();
            return Ok(status);
        }
        if Instant::now() > deadline {
            bar.abandon();
            return Err(Exit::Timeout(format!(
                "run {run_id} still {status} after {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `exo run cancel RUN`.
pub async fn cancel(api: &Api, run_id: &str, format: Format) -> Outcome {
    let v = api.post(&format!("/run/{run_id}/cancel"), None).await?;
    match format {
        Format::Json => println!("{v}"),
        Format::Table => println!(
            "run {run_id}: {}",
            v["status"].as_str().unwrap_or("cancelled")
        ),
    }
    Ok(())
}

/// `exo state retry STATE [--retry-id ID]`: a new attempt of an ended state.
pub async fn retry(api: &Api, state_id: &str, retry_id: Option<&str>, format: Format) -> Outcome {
    let id = retry_id
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let v = api
        .post(
            &format!("/state/{state_id}/manual-retry"),
            Some(&json!({"fanout_id": id})),
        )
        .await?;
    match format {
        Format::Json => println!("{v}"),
        Format::Table => println!(
            "state {state_id} retried as {} ({})",
            v["id"].as_str().unwrap_or_default(),
            v["status"].as_str().unwrap_or_default()
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_need_an_equals_sign() {
        let v = pairs(&["a=1".into(), "b = x=y".into()], "input").unwrap();
        assert_eq!(v, json!({"a": "1", "b": " x=y"}));
        let e = pairs(&["oops".into()], "store").unwrap_err();
        assert!(
            e.message().contains("--store takes key=value"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn fan_outs_collapse_into_one_line_per_node() {
        let graph = json!({
            "root_states": [{"id": "1", "identifier": "start"}],
            "nodes": [
                {"id": "1", "identifier": "start", "node_name": "Start", "status": "SUCCESS"},
                {"id": "2", "identifier": "work", "node_name": "Work", "status": "SUCCESS"},
                {"id": "3", "identifier": "work", "node_name": "Work", "status": "ERRORED", "error": "boom",
                 "retry_count": 2, "created_at": "2026-12-01T10:00:00.250000", "updated_at": "2026-12-01T10:00:01.500000"},
                {"id": "4", "identifier": "work", "node_name": "Work", "status": "SUCCESS"},
            ],
            "edges": [{"source": "1", "target": "2"}, {"source": "1", "target": "3"}, {"source": "1", "target": "4"}],
        });
        let text = tree(&graph).to_string();
        assert!(text.contains("start (Start)"), "{text}");
        assert!(text.contains("  work (Work)"), "{text}");
        assert!(text.contains("ERRORED 1, SUCCESS 2"), "{text}");
        assert!(text.contains("boom"), "{text}");
        assert!(
            text.contains("1.25 s") && text.contains(" 3 "),
            "attempts and time: {text}"
        );
        assert_eq!(exit_of("r", "FAILED").unwrap_err().code(), 3);
        assert_eq!(exit_of("r", "CANCELLED").unwrap_err().code(), 4);
    }
}
