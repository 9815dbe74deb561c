//! Recovery-time benchmark: how long after a crashed service is restarted
//! and ready does work resume?
//!
//! For each victim service it runs work that flows through it (a long chain
//! for `exo-completion` and `exo-scheduler`, a node that fails and is retried
//! for `exo-retry`), `kill -9`s the service in the middle, restarts it, and
//! measures from the moment the restarted process answers `/readyz` to the
//! next state transition observed in MongoDB (for `exo-trigger`: to the
//! creation of a run requested while it was down). Prints a table and a
//! JSON summary.
//!
//! ```text
//! EXO_BIN_PROFILE=release target/release/exo-recovery-bench [--rounds 3]
//! ```

use std::time::{Duration, Instant};

use exo_e2e::Stack;
use exo_e2e::nodes::{Append, Picky, counter};
use exo_store::mongodb::bson::doc;
use serde_json::json;

const STEPS: usize = 400;

/// Milliseconds from `ready` until `progressed` returns true.
async fn wait_progress<F, Fut>(ready: Instant, mut progressed: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    loop {
        if progressed().await? {
            return Ok(ready.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(60),
            "no progress within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let ns = "recovery";
    let mut stack = Stack::start().await?;
    let (stop, _) = stack
        .start_runtime(
            stack
                .runtime(ns, "rt")
                .node(Append::new("AppendA", "x"))
                .node(Picky {
                    fail_digits: "7",
                    prune_digits: "",
                    delay: Duration::ZERO,
                    calls: counter(),
                }),
        )
        .await?;
    // A node that always fails and is retried (almost) forever: the retry
    // service's work.
    let flaky = json!({"secrets": {}, "retry_policy": {"max_retries": 100000, "strategy": "FIXED", "backoff_factor": 5},
        "nodes": [{"node_name": "Picky", "identifier": "p", "namespace": ns, "inputs": {"text": "x7"}}]});
    stack.upsert_valid_graph(ns, "flaky", &flaky).await?;
    let nodes: Vec<serde_json::Value> = (0..STEPS)
        .map(|i| {
            let next: Vec<String> = if i + 1 < STEPS {
                vec![format!("s{}", i + 1)]
            } else {
                vec![]
            };
            let text = if i == 0 {
                "go".to_string()
            } else {
                format!("${{{{ s{}.outputs.text }}}}", i - 1)
            };
            json!({"node_name": "AppendA", "identifier": format!("s{i}"), "namespace": ns,
                   "inputs": {"text": text}, "next_nodes": next})
        })
        .collect();
    stack
        .upsert_valid_graph(ns, "chain", &json!({"secrets": {}, "nodes": nodes}))
        .await?;
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    for victim in [
        "exo-completion",
        "exo-scheduler",
        "exo-retry",
        "exo-trigger",
    ] {
        let mut samples = Vec::new();
        for _ in 0..rounds {
            if victim == "exo-trigger" {
                stack.service(victim).kill9();
                let run_id = stack.trigger(ns, "chain", &json!({})).await?;
                stack.service(victim).restart().await?;
                let ready = Instant::now();
                let ms = wait_progress(ready, || async {
                    Ok(stack.store.run(&run_id).await?.is_some())
                })
                .await?;
                samples.push(ms);
                continue;
            }
            let graph = if victim == "exo-retry" {
                "flaky"
            } else {
                "chain"
            };
            let status = if victim == "exo-retry" {
                "RETRY_CREATED"
            } else {
                "SUCCESS"
            };
            let store = stack.store.clone();
            let count = |run_id: String| {
                let store = store.clone();
                async move {
                    anyhow::Ok(
                        store
                            .states()
                            .count_documents(doc! {"run_id": &run_id, "status": status})
                            .await?,
                    )
                }
            };
            let run_id = stack.trigger(ns, graph, &json!({})).await?;
            // Let the run get going, then crash the victim mid-flight.
            while count(run_id.clone()).await? < 20 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            stack.service(victim).kill9();
            tokio::time::sleep(Duration::from_millis(200)).await;
            stack.service(victim).restart().await?;
            let ready = Instant::now();
            let base = count(run_id.clone()).await?;
            let ms = wait_progress(ready, || {
                let c = count(run_id.clone());
                async move { Ok(c.await? > base) }
            })
            .await?;
            samples.push(ms);
            let (_, _) = stack
                .post(
                    &format!("/v0/namespace/{ns}/run/{run_id}/cancel"),
                    &json!({}),
                )
                .await?;
        }
        eprintln!("{victim}: {samples:?}");
        rows.push((victim.to_string(), samples));
    }
    stop.cancel();
    println!(
        "\nRecovery time: restarted service ready → work observed to resume (ms), {rounds} rounds"
    );
    println!(
        "{:<16} {:>8} {:>8} {:>8}",
        "service", "min", "median", "max"
    );
    let mut json_rows = Vec::new();
    for (victim, mut s) in rows {
        s.sort_by(|a, b| a.total_cmp(b));
        let med = s[s.len() / 2];
        println!(
            "{victim:<16} {:>8.0} {:>8.0} {:>8.0}",
            s[0],
            med,
            s[s.len() - 1]
        );
        json_rows.push(json!({"service": victim, "min_ms": s[0], "median_ms": med, "max_ms": s[s.len() - 1], "samples_ms": s}));
    }
    println!(
        "\n{}",
        serde_json::to_string(&json!({"recovery": json_rows}))?
    );
    Ok(())
}
