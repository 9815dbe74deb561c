//! One run, one trace: an in-process OTLP/HTTP collector (JSON encoding,
//! plain tokio) receives the spans of the api, the four services and a
//! runtime process while a run started with a `traceparent` header goes
//! through a successor, a failure, a retry and the scheduler; every one
//! of them must have exported spans of that trace.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use exo_e2e::Stack;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "traced";

/// A span as exported: (service.name, trace id in hex, span name).
type Spans = Arc<Mutex<Vec<(String, String, String)>>>;

async fn collector() -> anyhow::Result<(String, Spans)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let spans: Spans = Arc::default();
    let seen = spans.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(serve(sock, seen.clone()));
        }
    });
    Ok((url, spans))
}

/// Answers every request of one connection (the exporter keeps it open).
async fn serve(mut sock: tokio::net::TcpStream, seen: Spans) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + 4 + len {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..head_end + 4 + len).skip(head_end + 4).collect();
        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
            record(&v, &seen);
        }
        let reply =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        if sock.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads an `ExportTraceServiceRequest` in OTLP's JSON encoding.
fn record(v: &Value, seen: &Spans) {
    for rs in v["resourceSpans"].as_array().into_iter().flatten() {
        let service = rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_string();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for span in ss["spans"].as_array().into_iter().flatten() {
                let trace = span["traceId"].as_str().unwrap_or_default().to_lowercase();
                let name = span["name"].as_str().unwrap_or_default().to_string();
                if let Ok(mut s) = seen.lock() {
                    s.push((service.clone(), trace, name));
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_one_trace_across_services_and_the_runtime() -> anyhow::Result<()> {
    let (url, spans) = collector().await?;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mut stack = Stack::start().await?;
    for s in exo_e2e::SERVICES {
        stack.respawn_with(s, &otel).await?;
    }
    let mut extra = vec![("EXO_TEST_FAIL_DIGITS", "7")];
    extra.extend(otel);
    stack.spawn_runtime_process(NS, &extra).await?;
    let graph = json!({
        "secrets": {},
        "retry_policy": {"max_retries": 1, "strategy": "FIXED", "backoff_factor": 10},
        "nodes": [
            {"node_name": "AppendA", "identifier": "a", "namespace": NS,
             "inputs": {"text": "go"}, "next_nodes": ["b"]},
            {"node_name": "Picky", "identifier": "b", "namespace": NS,
             "inputs": {"text": "${{ a.outputs.text }}7"}, "next_nodes": []},
        ]
    });
    stack.upsert_valid_graph(NS, "g", &graph).await?;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = stack
        .http
        .post(format!(
            "{}/v0/namespace/{NS}/graph/g/trigger",
            stack.api_url
        ))
        .header("x-api-key", exo_e2e::API_KEY)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let run_id = r.json::<Value>().await?["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let run = stack.wait_run(&run_id, Duration::from_secs(60)).await?;
    assert_eq!(run.status.as_deref(), Some("FAILED"), "b fails twice");

    let want: BTreeSet<&str> = exo_e2e::SERVICES
        .into_iter()
        .chain(["exo-test-runtime"])
        .collect();
    let required = ["mongo.transaction", "nats.publish", "execute Picky"];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (in_trace, names) = loop {
        let seen = spans.lock().map(|s| s.clone()).unwrap_or_default();
        let ours: Vec<_> = seen.iter().filter(|(_, t, _)| t == trace).collect();
        let services: BTreeSet<&str> = ours.iter().map(|(s, _, _)| s.as_str()).collect();
        let names: BTreeSet<String> = ours.iter().map(|(_, _, n)| n.clone()).collect();
        // Every service, and every span asserted below: spans come in
        // batches, a service's first may arrive before the one looked for.
        let complete = want.is_subset(&services)
            && required
                .iter()
                .all(|r| names.iter().any(|n| n.starts_with(r)));
        if complete || tokio::time::Instant::now() > deadline {
            let services: BTreeSet<String> = services.into_iter().map(str::to_string).collect();
            break (services, names);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("services in the trace: {in_trace:?}\nspans: {names:?}");
    for s in &want {
        assert!(
            in_trace.contains(*s),
            "{s} exported no span of the run's trace; services in it: {in_trace:?}; spans: {names:?}"
        );
    }
    for name in required {
        assert!(
            names.iter().any(|n| n.starts_with(name)),
            "no {name} span in the trace: {names:?}"
        );
    }
    Ok(())
}
