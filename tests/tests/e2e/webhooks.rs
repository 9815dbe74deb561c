//! Webhooks as a receiver sees them: a local HTTP server (plain tokio, no
//! framework) that fails the first deliveries, checks every signature with
//! its own HMAC-SHA256, and the delivery log the api shows for them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exo_e2e::Stack;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "hooks";
const KEY: &str = "whsec-7f3a";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }
}

/// An HTTP receiver on a free port answering 500 to its first `failures`
/// requests, then 204. Returns its URL and what it received.
async fn receiver(failures: usize) -> anyhow::Result<(String, Arc<Mutex<Vec<Received>>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = got.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let Some(req) = read_request(&mut sock).await else {
                continue;
            };
            let n = {
                let mut g = seen.lock().expect("lock");
                g.push(req);
                g.len()
            };
            let status = if n <= failures {
                "500 Internal Server Error"
            } else {
                "204 No Content"
            };
            let reply =
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = sock.write_all(reply.as_bytes()).await;
        }
    });
    Ok((url, got))
}

/// Reads one HTTP/1.1 request (headers, then `content-length` bytes).
async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
    Some(Received { headers, body })
}

/// The receiver's own check of a signature.
fn signed(key: &str, body: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    let tag = ring::hmac::sign(&k, body.as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

async fn wait_for<F: Fn() -> bool>(what: &str, f: F) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_with_backoff_and_logged() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (stop, _) = stack.start_append_runtime(NS).await?;
    // One receiver fails twice then accepts; one always fails.
    let (flaky_url, flaky) = receiver(2).await?;
    let (down_url, down) = receiver(usize::MAX).await?;
    let graph = json!({
        "secrets": {"HOOK": KEY},
        "webhooks": [
            {"url": flaky_url, "secret": "HOOK"},
            {"url": down_url, "events": ["run.succeeded"], "secret": "HOOK"},
        ],
        "nodes": [
            {"node_name": "AppendA", "namespace": NS, "identifier": "a", "inputs": {"text": "x"}, "next_nodes": ["b"]},
            {"node_name": "AppendB", "namespace": NS, "identifier": "b", "inputs": {"text": "${{ a.outputs.text }}"}},
        ]
    });
    stack.upsert_valid_graph(NS, "g", &graph).await?;
    let (status, got) = stack.get(&format!("/v0/namespace/{NS}/graph/g")).await?;
    assert_eq!(status, 200);
    assert_eq!(
        got["webhooks"][0]["events"],
        json!(["run.succeeded", "run.failed"])
    );
    let run = stack.trigger(NS, "g", &json!({})).await?;
    let r = stack.wait_run(&run, Duration::from_secs(30)).await?;
    assert_eq!(r.status.as_deref(), Some("SUCCESS"));

    // The flaky receiver: 3 attempts of one delivery, each signed.
    wait_for("three attempts", || flaky.lock().expect("lock").len() >= 3).await?;
    wait_for("four attempts", || down.lock().expect("lock").len() >= 4).await?;
    let attempts = flaky.lock().expect("lock").clone();
    let delivery = attempts[0].header("x-exo-delivery").to_string();
    assert!(
        delivery.starts_with(&format!("ce:run:{run}:succeeded@")),
        "{delivery}"
    );
    for (i, a) in attempts.iter().enumerate() {
        assert_eq!(
            a.header("x-exo-signature-256"),
            signed(KEY, &a.body),
            "attempt {i}"
        );
        assert_ne!(
            a.header("x-exo-signature-256"),
            signed("another key", &a.body)
        );
        assert_eq!(a.header("content-type"), "application/cloudevents+json");
        assert_eq!(a.header("x-exo-event"), "exo.run.succeeded");
        assert_eq!(a.header("x-exo-delivery"), delivery);
        assert_eq!(a.header("x-exo-attempt"), (i + 1).to_string());
        let ce: Value = serde_json::from_str(&a.body)?;
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["type"], "exo.run.succeeded");
        assert_eq!(ce["id"], format!("ce:run:{run}:succeeded"));
        assert_eq!(ce["data"]["run_id"], run.as_str());
        assert_eq!(ce["data"]["status"], "SUCCESS");
    }

    // The log: DELIVERED after 500, 500, 204; the other FAILED after 4.
    let path = format!("/v0/namespace/{NS}/graph/g/webhooks/deliveries");
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let (status, log) = stack.get(&path).await?;
        assert_eq!(status, 200, "{log}");
        let statuses: Vec<&str> = log["deliveries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["status"].as_str())
            .collect();
        if statuses.len() == 2 && !statuses.contains(&"RETRYING") {
            break log;
        }
        anyhow::ensure!(Instant::now() < deadline, "deliveries never settled: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let of = |url: &str| {
        log["deliveries"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["url"] == url))
            .cloned()
            .unwrap_or_default()
    };
    let ok = of(&flaky_url);
    assert_eq!(ok["status"], "DELIVERED", "{log}");
    assert_eq!(ok["id"], delivery.as_str());
    assert_eq!(ok["event_type"], "exo.run.succeeded");
    let codes: Vec<i64> = ok["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["status_code"].as_i64())
        .collect();
    assert_eq!(codes, [500, 500, 204]);
    // Backoff: the waits before the 2nd and 3rd attempts grow (200, 400 ms).
    let at: Vec<i64> = ok["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["at_ms"].as_i64())
        .collect();
    assert!(at[1] - at[0] >= 200 && at[2] - at[1] >= 400, "{at:?}");
    let failed = of(&down_url);
    assert_eq!(failed["status"], "FAILED", "{log}");
    assert_eq!(failed["attempts"].as_array().map(Vec::len), Some(4));
    // Delivered and failed deliveries are never sent again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(flaky.lock().expect("lock").len(), 3);
    assert_eq!(down.lock().expect("lock").len(), 4);

    // Bad webhooks are refused with the field at fault.
    for (hook, field) in [
        (json!({"url": "ftp://x", "secret": "HOOK"}), "url"),
        (
            json!({"url": "https://x.example", "secret": "NOPE"}),
            "secret",
        ),
        (
            json!({"url": "https://x.example", "secret": "HOOK", "events": ["run.maybe"]}),
            "events",
        ),
    ] {
        let mut bad = graph.clone();
        bad["webhooks"] = json!([hook]);
        let (status, body) = stack
            .put(&format!("/v0/namespace/{NS}/graph/bad"), &bad)
            .await?;
        assert_eq!(status, 422, "{body}");
        assert_eq!(
            body["detail"][0]["loc"],
            json!(["body", "webhooks", 0, field]),
            "{body}"
        );
    }
    stop.cancel();
    Ok(())
}
