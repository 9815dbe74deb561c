//! `/metrics` as Prometheus sees it: every service's admin port scraped
//! before and after two runs (one that succeeds, one that exhausts its
//! retries), a dead letter and a few HTTP requests; the counters and
//! histograms must have moved by exactly what happened. And the Grafana
//! dashboard: valid against its schema, built only on metrics the services
//! serve.

use std::collections::HashMap;
use std::time::Duration;

use exo_e2e::Stack;
use exo_e2e::nodes::{Append, Picky, counter};
use exo_types::status::StateStatus;
use serde_json::{Value, json};

const NS: &str = "metered";
const WAIT: Duration = Duration::from_secs(60);
const DASHBOARD: &str = "../deploy/grafana/exo-overview.json";
const DASHBOARD_SCHEMA: &str = "../deploy/grafana/dashboard.schema.json";

/// One scrape: `(name, labels)` → value, and the metric families declared.
#[derive(Debug, Default, Clone)]
struct Scrape {
    samples: Vec<(String, HashMap<String, String>, f64)>,
    families: Vec<String>,
}

impl Scrape {
    /// Sum of the samples named `name` whose labels include `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && with
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    fn merge(&mut self, other: Scrape) {
        self.samples.extend(other.samples);
        self.families.extend(other.families);
    }
}

/// Parses the OpenMetrics text format (label values may hold `{`, `}`,
/// `,` and escaped quotes: route templates do).
fn parse(text: &str) -> anyhow::Result<Scrape> {
    let mut out = Scrape::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or_default();
            out.families.push(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let (labels, after) = parse_labels(&line[open + 1..])?;
                (&line[..open], labels, after)
            }
            None => {
                let (name, rest) = line
                    .split_once(' ')
                    .ok_or_else(|| anyhow::anyhow!("no value: {line}"))?;
                (name, HashMap::new(), rest)
            }
        };
        let value = rest.split_whitespace().next().unwrap_or_default();
        let value: f64 = value.parse().map_err(|e| anyhow::anyhow!("{e}: {line}"))?;
        out.samples.push((name.to_string(), labels, value));
    }
    anyhow::ensure!(text.ends_with("# EOF\n"), "no # EOF terminator");
    Ok(out)
}

/// `k="v",…}` → the labels and what follows the closing brace.
fn parse_labels(s: &str) -> anyhow::Result<(HashMap<String, String>, &str)> {
    let mut labels = HashMap::new();
    let mut rest = s;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let rest_key = rest.trim_start_matches(',');
        let (key, after) = rest_key
            .split_once("=\"")
            .ok_or_else(|| anyhow::anyhow!("bad labels: {s}"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => {
                    if let Some((_, c)) = chars.next() {
                        value.push(match c {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => anyhow::bail!("unterminated label value: {s}"),
            }
        };
        labels.insert(key.to_string(), value);
        rest = &after[end + 1..];
    }
}

async fn scrape(stack: &Stack, service: &str) -> anyhow::Result<Scrape> {
    let addr = stack
        .services
        .get(service)
        .ok_or_else(|| anyhow::anyhow!("{service} not running"))?
        .admin_addr()
        .to_string();
    let r = stack
        .http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "{service}: /metrics {}", r.status());
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    anyhow::ensure!(ct.starts_with("application/openmetrics-text"), "{ct}");
    parse(&r.text().await?)
}

async fn scrape_all(stack: &Stack) -> anyhow::Result<HashMap<&'static str, Scrape>> {
    let mut out = HashMap::new();
    for s in exo_e2e::SERVICES {
        out.insert(s, scrape(stack, s).await?);
    }
    Ok(out)
}

/// `after − before` of a sum over every service.
fn moved(
    before: &HashMap<&str, Scrape>,
    after: &HashMap<&str, Scrape>,
    name: &str,
    with: &[(&str, &str)],
) -> f64 {
    let total = |m: &HashMap<&str, Scrape>| m.values().map(|s| s.sum(name, with)).sum::<f64>();
    total(after) - total(before)
}

fn graph() -> Value {
    json!({
        "secrets": {},
        "store_config": {"required_keys": ["tail"]},
        "retry_policy": {"max_retries": 2, "strategy": "FIXED", "backoff_factor": 10},
        "nodes": [
            {"node_name": "AppendA", "identifier": "a", "namespace": NS,
             "inputs": {"text": "go"}, "next_nodes": ["b"]},
            {"node_name": "Picky", "identifier": "b", "namespace": NS,
             "inputs": {"text": "${{ a.outputs.text }}${{ store.tail }}"}, "next_nodes": []},
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_what_the_runs_did() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let picky = Picky {
        fail_digits: "7",
        prune_digits: "",
        delay: Duration::ZERO,
        calls: counter(),
    };
    let (stop, _rt) = stack
        .start_runtime(
            stack
                .runtime(NS, "rt")
                .node(Append::new("AppendA", "a"))
                .node(picky),
        )
        .await?;
    stack.upsert_valid_graph(NS, "m", &graph()).await?;
    let before = scrape_all(&stack).await?;

    // A run that succeeds (b's text ends in 1) and one whose b fails three
    // times (ends in 7; two retries, then ERRORED).
    let ok = stack
        .trigger(NS, "m", &json!({"store": {"tail": "1"}}))
        .await?;
    let bad = stack
        .trigger(NS, "m", &json!({"store": {"tail": "7"}}))
        .await?;
    assert_eq!(
        stack.wait_run(&ok, WAIT).await?.status.as_deref(),
        Some("SUCCESS")
    );
    assert_eq!(
        stack.wait_run(&bad, WAIT).await?.status.as_deref(),
        Some("FAILED")
    );
    // A poison message for the scheduler, and two refused requests.
    let client = async_nats::connect(stack.servers.nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    js.publish(format!("exo.v1.{NS}.state.created"), "not json".into())
        .await?
        .await?;
    let r = stack
        .http
        .get(format!("{}/v0/namespace/{NS}/graph/m", stack.api_url))
        .header("x-api-key", "wrong")
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    let r = stack
        .http
        .get(format!("{}/v0/nowhere", stack.api_url))
        .send()
        .await?;
    assert_eq!(r.status(), 404);

    // Gauges are sampled every 5 s: wait for the api's reading of the
    // dispatch queues (and the dead letter to be counted).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        let after = scrape_all(&stack).await?;
        let dispatch = after["exo-api"].samples.iter().any(|(n, l, _)| {
            n == "exo_consumer_pending_messages"
                && l.get("stream").map(String::as_str) == Some("EXO_DISPATCH")
        });
        let dead = moved(&before, &after, "exo_dead_letters_total", &[]) >= 1.0;
        if (dispatch && dead) || tokio::time::Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let m = |name: &str, with: &[(&str, &str)]| moved(&before, &after, name, with);

    // Transitions, by the status entered: a (×2, created QUEUED by the
    // trigger) QUEUED EXECUTED SUCCESS; b of the good run (created QUEUED
    // by completion) QUEUED EXECUTED SUCCESS; b of the bad run QUEUED then
    // RETRY_CREATED, twice a retry CREATED (by retry) then QUEUED (by the
    // scheduler, after its backoff), the last ERRORED.
    let expected = [
        (StateStatus::Created, 2.0),
        (StateStatus::Queued, 6.0),
        (StateStatus::Executed, 3.0),
        (StateStatus::Success, 3.0),
        (StateStatus::RetryCreated, 2.0),
        (StateStatus::Errored, 1.0),
        (StateStatus::Pruned, 0.0),
        (StateStatus::Cancelled, 0.0),
    ];
    let got: Vec<(StateStatus, f64)> = expected
        .iter()
        .map(|(s, _)| {
            (
                *s,
                m("exo_state_transitions_total", &[("status", s.as_str())]),
            )
        })
        .collect();
    let per_service: Vec<(&str, &str, f64)> = exo_e2e::SERVICES
        .iter()
        .flat_map(|s| {
            let (after, before) = (&after, &before);
            expected.iter().map(move |(st, _)| {
                let with = [("status", st.as_str())];
                let n = after[s].sum("exo_state_transitions_total", &with);
                (
                    *s,
                    st.as_str(),
                    n - before[s].sum("exo_state_transitions_total", &with),
                )
            })
        })
        .filter(|(_, _, n)| *n != 0.0)
        .collect();
    assert_eq!(
        got, expected,
        "transitions by status (per service: {per_service:?})"
    );
    // The states in the database say the same.
    let mut states = stack.states(&ok).await?;
    states.extend(stack.states(&bad).await?);
    let count = |s: StateStatus| states.iter().filter(|st| st.status == s).count() as f64;
    assert_eq!(count(StateStatus::Success), 3.0);
    assert_eq!(count(StateStatus::RetryCreated), 2.0);
    assert_eq!(count(StateStatus::Errored), 1.0);

    assert_eq!(m("exo_retries_total", &[("kind", "policy")]), 2.0);
    let run = |status| {
        m(
            "exo_run_duration_seconds_count",
            &[("namespace", NS), ("graph", "m"), ("status", status)],
        )
    };
    assert_eq!(run("SUCCESS"), 1.0);
    assert_eq!(run("FAILED"), 1.0);
    assert!(
        m("exo_run_duration_seconds_sum", &[("namespace", NS)]) > 0.0,
        "durations are recorded"
    );

    // Messages: the scheduler claimed the 2 retries (acked 2 state.created) and
    // dead-lettered the poison one; completion took 3 results, retry 3
    // errors. Every settled message is timed once.
    let handled = |consumer: &str, kind: &str, outcome: &str| {
        let mut with = vec![("kind", kind), ("outcome", outcome)];
        if !consumer.is_empty() {
            with.push(("consumer", consumer));
        }
        m("exo_messages_handled_total", &with)
    };
    assert_eq!(handled("scheduler", "state.created", "ack"), 2.0);
    assert_eq!(handled("scheduler", "state.created", "reject"), 1.0);
    assert_eq!(handled("", "result.executed", "ack"), 3.0);
    assert_eq!(handled("retry", "result.errored", "ack"), 3.0);
    let settled = m(
        "exo_messages_handled_total",
        &[("consumer", "scheduler"), ("kind", "state.created")],
    );
    let timed = m(
        "exo_handler_duration_seconds_count",
        &[("consumer", "scheduler"), ("kind", "state.created")],
    );
    assert_eq!(settled, timed);
    assert_eq!(
        m(
            "exo_dead_letters_total",
            &[("stream", "EXO_STATES"), ("consumer", "scheduler")]
        ),
        1.0
    );
    assert_eq!(
        m("exo_dispatch_delay_seconds_count", &[("via", "scheduler")]),
        2.0
    );

    // HTTP, by route template and status.
    let http = |route: &str, method: &str, status: &str| {
        m(
            "exo_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    let trigger_route = "/v0/namespace/{namespace_name}/graph/{graph_name}/trigger";
    assert_eq!(http(trigger_route, "POST", "200"), 2.0);
    let graph_route = "/v0/namespace/{namespace_name}/graph/{graph_name}";
    assert_eq!(http(graph_route, "GET", "401"), 1.0);
    assert_eq!(http("unmatched", "GET", "404"), 1.0);
    assert_eq!(
        m(
            "exo_http_request_duration_seconds_count",
            &[("route", trigger_route), ("method", "POST")]
        ),
        2.0
    );

    // Transactions committed by the writers; processes name themselves;
    // consumer gauges are served.
    for s in ["exo-trigger", "exo-completion", "exo-retry"] {
        let committed = after[s].sum("exo_mongo_transactions_total", &[("outcome", "committed")])
            - before[s].sum("exo_mongo_transactions_total", &[("outcome", "committed")]);
        assert!(committed >= 1.0, "{s} committed {committed}");
    }
    for s in exo_e2e::SERVICES {
        assert_eq!(
            after[s].sum("exo_build_info", &[("service", s)]),
            1.0,
            "{s} names itself"
        );
    }
    assert_eq!(
        after["exo-scheduler"].sum(
            "exo_consumer_pending_messages",
            &[("stream", "EXO_STATES"), ("consumer", "scheduler")]
        ),
        0.0
    );
    assert!(
        after["exo-scheduler"]
            .samples
            .iter()
            .any(|(n, l, _)| n == "exo_consumer_pending_messages"
                && l.get("consumer").map(String::as_str) == Some("scheduler")),
        "the scheduler's lag is served"
    );
    let dispatch_queue = exo_types::subjects::dispatch_consumer(NS, "Picky");
    assert!(
        after["exo-api"]
            .samples
            .iter()
            .any(|(n, l, _)| n == "exo_consumer_pending_messages"
                && l.get("consumer") == Some(&dispatch_queue)),
        "the api serves the dispatch queues' lag: {:?}",
        after["exo-api"]
            .samples
            .iter()
            .filter(|(n, _, _)| n == "exo_consumer_pending_messages")
            .collect::<Vec<_>>()
    );

    // Every metric the dashboard plots is served by some service.
    let mut union = Scrape::default();
    for s in after.into_values() {
        union.merge(s);
    }
    for name in dashboard_metrics()? {
        let family = ["_bucket", "_count", "_sum", "_total"]
            .iter()
            .find_map(|sfx| name.strip_suffix(sfx))
            .unwrap_or(&name);
        assert!(
            union.families.iter().any(|f| f == family),
            "the dashboard plots {name}, which no service serves"
        );
    }
    stop.cancel();
    Ok(())
}

/// The `exo_…` names in the dashboard's queries.
fn dashboard_metrics() -> anyhow::Result<Vec<String>> {
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD)?)?;
    let mut names = Vec::new();
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    for e in exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("exo_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.push(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(e)) = m.get("expr") {
                out.push(e.clone());
            }
            m.values().for_each(|c| collect_exprs(c, out));
        }
        Value::Array(a) => a.iter().for_each(|c| collect_exprs(c, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_is_valid_and_plots_every_metric() -> anyhow::Result<()> {
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD)?)?;
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD_SCHEMA)?)?;
    let v = jsonschema::validator_for(&schema).map_err(|e| anyhow::anyhow!("{e}"))?;
    exo_e2e::schema::check(&v, &dash, "dashboard")?;
    // Panel ids unique, panels inside the 24-column grid.
    let panels = dash["panels"].as_array().cloned().unwrap_or_default();
    let mut ids: Vec<i64> = panels.iter().filter_map(|p| p["id"].as_i64()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for p in &panels {
        let (x, w) = (p["gridPos"]["x"].as_i64(), p["gridPos"]["w"].as_i64());
        assert!(x.unwrap_or(0) + w.unwrap_or(0) <= 24, "{}", p["title"]);
    }
    // Every metric of the catalogue is plotted, and nothing else.
    let plotted = dashboard_metrics()?;
    let family = |n: &str| {
        ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|sfx| n.strip_suffix(sfx))
            .unwrap_or(n)
            .to_string()
    };
    let plotted: Vec<String> = plotted.iter().map(|n| family(n)).collect();
    for (name, _, _) in exo_service::metrics::CATALOGUE {
        assert!(
            plotted.iter().any(|p| p == name),
            "{name} is not on the dashboard"
        );
    }
    for p in &plotted {
        assert!(
            exo_service::metrics::CATALOGUE
                .iter()
                .any(|(n, _, _)| n == p),
            "the dashboard plots {p}, which is not in the catalogue"
        );
    }
    Ok(())
}

#[test]
fn the_parser_reads_route_templates() -> anyhow::Result<()> {
    let text = "# TYPE exo_http_requests counter\nexo_http_requests_total{method=\"GET\",route=\"/v0/namespace/{namespace_name}/x\",status=\"200\"} 3\nexo_redrives_total 2\n# EOF\n";
    let s = parse(text)?;
    assert_eq!(
        s.sum(
            "exo_http_requests_total",
            &[("route", "/v0/namespace/{namespace_name}/x")]
        ),
        3.0
    );
    assert_eq!(s.sum("exo_redrives_total", &[]), 2.0);
    assert_eq!(s.families, vec!["exo_http_requests"]);
    assert!(parse("x 1\n").is_err(), "a scrape without # EOF is refused");
    Ok(())
}
