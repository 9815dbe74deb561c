//! The api's live run view (`/ui/`) in a real browser: Debian's headless
//! Chromium, driven by Playwright for Python (`tests/browser/live_view.py`),
//! opens the page during a fan-out run and sees the counts change until the
//! run ends, the fan-out collapsed into one box (with its failures and
//! prunes), the unite drawn, a state's details on click.
//! It saves a screenshot taken mid-run under `target/` (with `EXO_BLESS=1`:
//! `docs/live-view.png`, the one the README shows).

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use exo_e2e::nodes::{Append, FanOut, Picky, counter};
use exo_e2e::{Stack, assert_run_consistent};
use exo_test_support::workspace_root;
use serde_json::json;

const NS: &str = "live";
const WIDTH: usize = 120;

/// The Playwright venv's python, after `deploy/install-browser.sh` (which
/// installs Chromium and Playwright when missing; a machine that cannot
/// fails the test, it does not skip it).
async fn browser_python() -> anyhow::Result<String> {
    let script = workspace_root().join("deploy/install-browser.sh");
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("run {}", script.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} failed ({}): {}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_view_follows_a_fan_out_run_in_a_browser() -> anyhow::Result<()> {
    let python = browser_python().await?;
    let stack = Stack::start().await?;
    // Two executions at a time, 60 ms each: the run stays live for seconds.
    let builder = stack
        .runtime(NS, "rt")
        .concurrency(2)
        .node(FanOut)
        .node(Append::new("Start", "start"))
        .node(Append::new("Done", "done"))
        .node(Picky {
            fail_digits: "7",
            prune_digits: "3",
            delay: Duration::from_millis(60),
            calls: counter(),
        });
    let (stop, _rt) = stack.start_runtime(builder).await?;
    let graph = json!({"secrets": {}, "nodes": [
        {"node_name": "Start", "identifier": "start", "namespace": NS,
         "inputs": {"text": "go"}, "next_nodes": ["fan"]},
        {"node_name": "FanOut", "identifier": "fan", "namespace": NS,
         "inputs": {"count": WIDTH.to_string()}, "next_nodes": ["work"]},
        {"node_name": "Picky", "identifier": "work", "namespace": NS,
         "inputs": {"text": "${{ fan.outputs.text }}"}, "next_nodes": ["done"]},
        {"node_name": "Done", "identifier": "done", "namespace": NS,
         "inputs": {"text": "${{ start.outputs.text }}"}, "next_nodes": [],
         "unites": {"identifier": "start", "strategy": "ALL_DONE"}},
    ], "retry_policy": {"max_retries": 0}});
    stack.upsert_valid_graph(NS, "fan", &graph).await?;
    let run_id = stack.trigger(NS, "fan", &json!({})).await?;
    let shot = if std::env::var_os("EXO_BLESS").is_some() {
        workspace_root().join("docs/live-view.png")
    } else {
        workspace_root().join("target/live-view.png")
    };
    let out = tokio::process::Command::new(&python)
        .arg(workspace_root().join("tests/browser/live_view.py"))
        .args([
            "--url",
            &stack.api_url,
            "--key",
            exo_e2e::API_KEY,
            "--ns",
            NS,
        ])
        .args(["--run", &run_id, "--width", &WIDTH.to_string()])
        .arg("--screenshot")
        .arg(&shot)
        .stdin(Stdio::null())
        .output()
        .await?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{said}");
    assert!(out.status.success(), "the browser check failed:\n{said}");
    assert!(shot.is_file(), "no screenshot at {}", shot.display());
    // Items ending in 7 fail (no retries), so the run ends FAILED; those
    // ending in 3 prune; the unite (ALL_DONE) runs once all are done.
    let run = stack.wait_run(&run_id, Duration::from_secs(60)).await?;
    assert_eq!(run.status.as_deref(), Some("FAILED"));
    assert!(said.contains("run FAILED"), "{said}");
    assert_run_consistent(&stack, &run).await?;
    stop.cancel();
    Ok(())
}
