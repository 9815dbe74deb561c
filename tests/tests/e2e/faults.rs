//! Crash safety: `kill -9` services, the runtime and the servers at random
//! points of a wide fan-out with a unite, then prove by reading MongoDB that
//! every state reached exactly one terminal outcome, nothing was created
//! twice, and the run finished with the right counters.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use exo_e2e::{Stack, assert_run_consistent};
use exo_store::StateDoc;
use exo_test_support::{MongoOptions, MongoServer, NatsServer, Servers};
use exo_types::status::StateStatus;
use serde_json::json;

const WIDTH: usize = 300;

/// A tiny deterministic generator; the seed is printed so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn from_time() -> Self {
        let seed = std::env::var("EXO_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
            });
        eprintln!("fault seed: {seed} (set EXO_FAULT_SEED to replay)");
        Self(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

fn graph(ns: &str) -> serde_json::Value {
    json!({
        "secrets": {},
        "retry_policy": {"max_retries": 2, "strategy": "FIXED", "backoff_factor": 50},
        "nodes": [
            {"node_name": "AppendA", "identifier": "start", "namespace": ns, "inputs": {"text": "go"}, "next_nodes": ["split"]},
            {"node_name": "FanOut", "identifier": "split", "namespace": ns, "inputs": {"count": WIDTH.to_string()}, "next_nodes": ["work"]},
            {"node_name": "Picky", "identifier": "work", "namespace": ns, "inputs": {"text": "${{ split.outputs.text }}"}, "next_nodes": ["merge"]},
            {"node_name": "Join", "identifier": "merge", "namespace": ns,
             "inputs": {"a": "${{ start.outputs.text }}", "b": "merged"},
             "unites": {"identifier": "start", "strategy": "ALL_DONE"}},
        ]
    })
}

/// Starts the test runtime process serving `ns` (items ending in 7 fail,
/// in 3 prune; `extra` adds `EXO_TEST_*` settings), stores [`graph`] and
/// triggers it; returns the run id.
async fn start_fan_run(
    stack: &mut Stack,
    ns: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<String> {
    let mut env = vec![
        ("EXO_TEST_FAIL_DIGITS", "7"),
        ("EXO_TEST_PRUNE_DIGITS", "3"),
    ];
    env.extend_from_slice(extra);
    stack.spawn_runtime_process(ns, &env).await?;
    stack.upsert_valid_graph(ns, "g", &graph(ns)).await?;
    stack.trigger(ns, "g", &json!({})).await
}

/// Checks the outcome of one fan-out run: every item has exactly one final
/// attempt with the outcome its digit dictates, retries are as the policy
/// says, one unite state, right counters.
async fn check_fan_run(stack: &Stack, run_id: &str) -> anyhow::Result<()> {
    let run = stack.wait_run(run_id, Duration::from_secs(240)).await?;
    let states = assert_run_consistent(stack, &run).await?;
    let mut by_item: HashMap<String, Vec<&StateDoc>> = HashMap::new();
    for s in states.iter().filter(|s| s.identifier == "work") {
        by_item
            .entry(s.inputs.get_str("text")?.to_string())
            .or_default()
            .push(s);
    }
    assert_eq!(by_item.len(), WIDTH, "one work chain per item");
    for (item, attempts) in &by_item {
        let finals: Vec<_> = attempts
            .iter()
            .filter(|s| s.status != StateStatus::RetryCreated)
            .collect();
        assert_eq!(
            finals.len(),
            1,
            "{item}: exactly one final attempt, got {attempts:?}"
        );
        let expected = match item.chars().last() {
            Some('7') => (StateStatus::Errored, 3),
            Some('3') => (StateStatus::Pruned, 1),
            _ => (StateStatus::Success, 1),
        };
        assert_eq!((finals[0].status, attempts.len()), expected, "{item}");
    }
    let count = |id: &str| states.iter().filter(|s| s.identifier == id).count();
    assert_eq!(
        (count("start"), count("split"), count("merge")),
        (1, WIDTH, 1)
    );
    assert_eq!(
        run.status.as_deref(),
        Some("FAILED"),
        "items ending in 7 errored"
    );
    assert_eq!(run.errored_count, (WIDTH / 10) as i64);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_services_and_runtime_at_random_points() -> anyhow::Result<()> {
    let ns = "chaos";
    let mut stack = Stack::start().await?;
    let run_id = start_fan_run(
        &mut stack,
        ns,
        &[
            ("EXO_TEST_DELAY_MS", "30"),
            ("EXO_TEST_ACK_WAIT_SECS", "2"),
            ("EXO_TEST_CONCURRENCY", "4"),
        ],
    )
    .await?;
    let mut rng = Rng::from_time();
    let victims = [
        "exo-completion",
        "exo-scheduler",
        "exo-retry",
        "exo-trigger",
        "exo-test-runtime",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut kills = 0;
    while Instant::now() < deadline {
        if stack
            .store
            .run(&run_id)
            .await?
            .is_some_and(|r| r.status.as_deref() != Some("PENDING"))
        {
            break;
        }
        tokio::time::sleep(rng.ms(100, 600)).await;
        let victim = victims[(rng.next() % victims.len() as u64) as usize];
        stack.service(victim).kill9();
        kills += 1;
        tokio::time::sleep(rng.ms(10, 300)).await;
        stack.service(victim).restart().await?;
    }
    eprintln!("killed {kills} processes");
    assert!(kills > 0);
    check_fan_run(&stack, &run_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_nats_and_mongo_mid_run() -> anyhow::Result<()> {
    let ns = "servers";
    let (nats, mongo) = tokio::try_join!(
        NatsServer::start(),
        MongoServer::start_with(MongoOptions {
            sync_on_commit: true
        })
    )?;
    let mut stack = Stack::start_on(Servers { nats, mongo }, &exo_e2e::SERVICES).await?;
    let run_id = start_fan_run(
        &mut stack,
        ns,
        &[("EXO_TEST_DELAY_MS", "20"), ("EXO_TEST_ACK_WAIT_SECS", "2")],
    )
    .await?;
    let mut rng = Rng::from_time();
    tokio::time::sleep(rng.ms(300, 900)).await;
    stack.servers.nats.kill9();
    tokio::time::sleep(rng.ms(100, 500)).await;
    stack.servers.nats.start_again().await?;
    tokio::time::sleep(rng.ms(300, 900)).await;
    stack.servers.mongo.kill9();
    tokio::time::sleep(rng.ms(100, 500)).await;
    stack.servers.mongo.start_again().await?;
    check_fan_run(&stack, &run_id).await
}

/// SIGTERM (what Kubernetes sends before a pod goes) to each service in
/// turn, during a wide fan-out with failures, retries, prunes and a unite:
/// each stops taking work, finishes or hands back what it holds, and exits
/// 0 within its grace period (`EXO_SHUTDOWN_GRACE_SECS`, 5 s in the test
/// stack); started again, the run ends exactly as the graph says (every
/// item one final attempt with its outcome, one unite, right counters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_each_service_in_turn_during_a_fan_out() -> anyhow::Result<()> {
    let ns = "drain";
    let mut stack = Stack::start().await?;
    let run_id = start_fan_run(
        &mut stack,
        ns,
        &[("EXO_TEST_DELAY_MS", "200"), ("EXO_TEST_CONCURRENCY", "4")],
    )
    .await?;
    let grace = Duration::from_secs(5);
    for victim in exo_e2e::SERVICES {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pending = stack
            .store
            .run(&run_id)
            .await?
            .is_some_and(|r| r.status.as_deref() == Some("PENDING"));
        assert!(pending, "the run ended before {victim} got its SIGTERM");
        let sent = Instant::now();
        let status = stack.service(victim).terminate(grace * 3).await;
        let took = sent.elapsed();
        assert!(
            status.is_some_and(|s| s.success()),
            "{victim} exited {status:?} after SIGTERM"
        );
        // The grace period bounds the drain; process exit adds a little.
        assert!(
            took <= grace + Duration::from_secs(2),
            "{victim} took {took:?} to exit (grace {grace:?})"
        );
        stack.service(victim).restart().await?;
    }
    check_fan_run(&stack, &run_id).await
}

/// The api on SIGTERM stops accepting connections but finishes the request
/// it is in the middle of: a graph upsert whose body is still arriving when
/// the signal lands gets its full answer (and is stored), a connection
/// attempted after the signal is refused, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_sigterm_finishes_the_request_in_flight_and_accepts_no_new_one() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stack = Stack::start_with(&["exo-api"]).await?;
    let addr = stack.api_url.trim_start_matches("http://").to_string();
    let body = serde_json::to_vec(&json!({"secrets": {}, "nodes": [
        {"node_name": "Slow", "identifier": "a", "namespace": "drain-api", "inputs": {}, "next_nodes": []}
    ]}))?;
    let mut conn = tokio::net::TcpStream::connect(&addr).await?;
    let head = format!(
        "PUT /v0/namespace/drain-api/graph/g HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        exo_e2e::API_KEY,
        body.len()
    );
    let (first, rest) = body.split_at(body.len() / 2);
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(first).await?;
    conn.flush().await?;
    // The request is in flight (its body half sent) when SIGTERM lands.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let api = stack.service("exo-api");
    let (status, answer) = tokio::join!(api.terminate(Duration::from_secs(15)), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let refused = tokio::net::TcpStream::connect(&addr).await.is_err();
        conn.write_all(rest).await?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await?;
        anyhow::Ok((refused, answer))
    });
    let (refused, answer) = answer?;
    assert!(refused, "a new connection was accepted after SIGTERM");
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| anyhow::anyhow!("not a whole answer ({e}): {answer}"))?;
    assert_eq!(v["nodes"][0]["identifier"], "a", "{answer}");
    assert!(
        status.is_some_and(|s| s.success()),
        "exo-api exited {status:?}"
    );
    let stored = stack
        .store
        .db()
        .collection::<exo_store::mongodb::bson::Document>("GraphTemplate")
        .count_documents(exo_store::mongodb::bson::doc! {"namespace": "drain-api", "name": "g"})
        .await?;
    assert_eq!(stored, 1, "the graph of the finished request is stored");
    Ok(())
}
