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

/// `exo run show RUN`: the run's counters and its graph nodes as a tree,
/// each with its states' counts per status (a fan-out is one line).
pub async fn show(api: &Api, run_id: &str, format: Format) -> Outcome {
    let run = api.get(&format!("/run/{run_id}")).await?;
    let nodes = api.get(&format!("/run/{run_id}/nodes")).await?;
    if format == Format::Json {
        println!("{}", json!({"run": run, "nodes": nodes["nodes"]}));
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
    print_table(tree(&nodes));
    for f in run["failures"].as_array().into_iter().flatten() {
        println!("failed: {f}");
    }
    Ok(())
}

/// A naive ISO time as the API writes it.
fn time_of(v: &Value) -> Option<chrono::NaiveDateTime> {
    chrono::NaiveDateTime::parse_from_str(v.as_str()?, "%Y-%m-%dT%H:%M:%S%.f").ok()
}

/// A node's first creation to last change, e.g. `1.25 s`.
fn took(node: &Value) -> String {
    match (
        time_of(&node["first_created_at"]),
        time_of(&node["last_updated_at"]),
    ) {
        (Some(a), Some(b)) => format!("{:.2} s", (b - a).num_milliseconds() as f64 / 1000.0),
        _ => String::new(),
    }
}

/// A run's graph nodes (`GET /run/{id}/nodes`) as a tree, depth-first from
/// the roots along their parents, each with its states' counts per status.
fn tree(summary: &Value) -> Table {
    let nodes: Vec<&Value> = summary["nodes"].as_array().into_iter().flatten().collect();
    let ident = |n: &Value| n["identifier"].as_str().unwrap_or_default().to_string();
    let known: std::collections::BTreeSet<String> = nodes.iter().map(|n| ident(n)).collect();
    let mut children: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    let mut roots = Vec::new();
    for n in &nodes {
        match n["parent"].as_str().filter(|p| known.contains(*p)) {
            Some(p) => children.entry(p.to_string()).or_default().push(n),
            None => roots.push(*n),
        }
    }
    let mut table = Table::new();
    table.set_header(["NODE", "STATES", "BY STATUS", "ATTEMPTS", "TIME"]);
    let mut seen = std::collections::BTreeSet::new();
    let mut stack: Vec<(&Value, usize)> = roots.iter().rev().map(|r| (*r, 0)).collect();
    while let Some((n, depth)) = stack.pop() {
        let id = ident(n);
        if !seen.insert(id.clone()) {
            continue;
        }
        let by: Vec<String> = n["counts"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(s, c)| format!("{s} {c}"))
            .collect();
        table.add_row([
            format!(
                "{}{id} ({})",
                "  ".repeat(depth),
                n["node_name"].as_str().unwrap_or_default()
            ),
            n["total"].to_string(),
            by.join(", "),
            n["attempts"].to_string(),
            took(n),
        ]);
        for child in children.get(&id).into_iter().flatten().rev() {
            stack.push((child, depth + 1));
        }
    }
    table
}

/// Follows a run until it ends (or `timeout`): a progress bar of its
/// states done out of all, by status, when `progress`. Returns the final
/// status.
///
/// The run's own events (`GET /run/{id}/events?only=run`: created, ended)
/// say when it ends, at once; the counts come from `GET /run/{id}`, read
/// when an event arrives and at most every [`REFRESH`] otherwise, so what
/// watching costs does not grow with the run's width. Without the events
/// (the stream refused or closed early) it reads the run every [`REFRESH`].
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
    let mut events = RunEvents::open(api, &path).await;
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
        let now = Instant::now();
        if now > deadline {
            bar.abandon();
            return Err(Exit::Timeout(format!(
                "run {run_id} still {status} after {timeout:?}"
            )));
        }
        let wait = REFRESH.min(deadline - now);
        match events.as_mut() {
            Some(ev) => {
                if !ev.next_within(wait).await {
                    events = None;
                }
            }
            None => tokio::time::sleep(wait).await,
        }
    }
}

/// Longest time between two reads of a watched run.
pub const REFRESH: Duration = Duration::from_millis(500);

/// The run's own server-sent events, read as they come.
struct RunEvents {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl RunEvents {
    /// Opens the stream (None when the API refuses it).
    async fn open(api: &Api, path: &str) -> Option<Self> {
        let resp = api
            .send(
                reqwest::Method::GET,
                &api.ns_path(&format!("{path}/events?only=run")),
                None,
            )
            .await
            .ok()?;
        resp.status().is_success().then(|| Self {
            resp,
            buf: Vec::new(),
        })
    }

    /// Waits up to `wait` for the next event; false once the stream has
    /// ended or failed (no event will come).
    async fn next_within(&mut self, wait: Duration) -> bool {
        let until = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = find(&self.buf, b"\n\n") {
                self.buf.drain(..end + 2);
                return true;
            }
            match tokio::time::timeout_at(until, self.resp.chunk()).await {
                Err(_) => return true,
                Ok(Ok(Some(bytes))) => {
                    self.buf.extend(bytes.iter().filter(|b| **b != b'\r'));
                }
                Ok(Ok(None) | Err(_)) => return false,
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
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
    fn nodes_print_as_a_tree_along_their_parents() {
        let summary = json!({"nodes": [
            {"identifier": "start", "node_name": "Start", "parent": null, "total": 1,
             "counts": {"SUCCESS": 1}, "attempts": 1},
            {"identifier": "work", "node_name": "Work", "parent": "fan", "total": 3,
             "counts": {"ERRORED": 1, "SUCCESS": 2}, "attempts": 3,
             "first_created_at": "2026-12-01T10:00:00.250000", "last_updated_at": "2026-12-01T10:00:01.500000"},
            {"identifier": "fan", "node_name": "Fan", "parent": "start", "total": 1,
             "counts": {"SUCCESS": 1}, "attempts": 1},
            {"identifier": "report", "node_name": "Report", "parent": "start", "total": 1,
             "counts": {"PENDING": 1}, "attempts": 1},
        ]});
        let text = tree(&summary).to_string();
        let at = |s: &str| {
            text.find(s)
                .unwrap_or_else(|| panic!("{s} missing: {text}"))
        };
        assert!(at("start (Start)") < at("  fan (Fan)"), "{text}");
        assert!(at("  fan (Fan)") < at("    work (Work)"), "{text}");
        assert!(at("    work (Work)") < at("  report (Report)"), "{text}");
        assert!(text.contains("ERRORED 1, SUCCESS 2"), "{text}");
        assert!(
            text.contains("1.25 s") && text.contains(" 3 "),
            "attempts and time: {text}"
        );
        assert_eq!(exit_of("r", "FAILED").unwrap_err().code(), 3);
        assert_eq!(exit_of("r", "CANCELLED").unwrap_err().code(), 4);
    }
}
