//! The official Python SDK (`exospherehost`, pinned by
//! `deploy/install-python-sdk.sh`) drives the real system: each test starts a
//! stack and runs one pytest module of `tests/python/` with the venv's
//! Python, pointed at the stack's API. The scenarios define SDK `BaseNode`s,
//! run an SDK `Runtime` in-process, upsert graphs and trigger runs with the
//! SDK's `StateManager`, and check the outcomes through the API.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use exo_e2e::{API_KEY, Stack};
use exo_test_support::workspace_root;

/// Longest time one pytest module may take.
const MODULE_TIMEOUT: Duration = Duration::from_secs(240);

/// The venv's Python, after making sure the pinned SDK is installed (the
/// install script is idempotent, serialised by a lock, and quick when
/// everything is in place).
pub(crate) async fn sdk_python() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let script = root.join("deploy/install-python-sdk.sh");
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .current_dir(&root)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): the Python SDK venv .tools/pysdk could not be set up \
             (it needs python3 with venv and access to PyPI).\nstdout:\n{}\nstderr:\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let python = root.join(".tools/pysdk/bin/python");
    anyhow::ensure!(
        python.exists(),
        "{} is missing after deploy/install-python-sdk.sh",
        python.display()
    );
    Ok(python)
}

/// Runs `tests/python/<module>` against `stack` with namespaces prefixed
/// `ns_prefix`; fails with pytest's output and the tail of the API log.
async fn run_module(stack: &mut Stack, module: &str, ns_prefix: &str) -> anyhow::Result<()> {
    run_module_with(stack, module, ns_prefix, &[], None)
        .await
        .map(|_| ())
}

/// As [`run_module`], with extra environment for pytest; when `restart` names
/// a service, that service is restarted (clean) if it exits during the
/// module, and its log up to the exit is returned.
async fn run_module_with(
    stack: &mut Stack,
    module: &str,
    ns_prefix: &str,
    env: &[(&str, &str)],
    restart: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let python = sdk_python().await?;
    let dir = workspace_root().join("tests/python");
    let started = Instant::now();
    let child = tokio::process::Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--durations=0",
            module,
        ])
        .current_dir(&dir)
        .env("EXOSPHERE_STATE_MANAGER_URI", &stack.api_url)
        .env("EXOSPHERE_API_KEY", API_KEY)
        .env("EXO_TEST_NAMESPACE", ns_prefix)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", python.display()))?;
    let mut waiting = tokio::spawn(child.wait_with_output());
    let deadline = tokio::time::Instant::now() + MODULE_TIMEOUT;
    let mut crash_log = None;
    let out = loop {
        tokio::select! {
            r = &mut waiting => break r??,
            _ = tokio::time::sleep_until(deadline) => bail!("{module} did not finish in {MODULE_TIMEOUT:?}"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if let Some(svc) = restart
                    && crash_log.is_none()
                    && !stack.service(svc).is_running()
                {
                    crash_log = Some(stack.service(svc).log_contents());
                    stack.respawn_with(svc, &[]).await?;
                }
            }
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let api_log = stack.service("exo-api").log_contents();
        let tail: Vec<&str> = api_log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{module} failed ({}) after {:?}\n--- pytest stdout ---\n{stdout}\n--- pytest stderr ---\n{stderr}\n--- exo-api log (tail) ---\n{}",
            out.status,
            started.elapsed(),
            tail.join("\n")
        );
    }
    eprintln!("{module} passed in {:?}\n{stdout}", started.elapsed());
    for s in exo_e2e::SERVICES {
        anyhow::ensure!(stack.service(s).is_running(), "{s} exited during {module}");
    }
    Ok(crash_log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_register_upsert_trigger_store_secrets() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    run_module(&mut stack, "test_sdk_graphs.py", "py-graphs").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_runtime_with_a_scoped_key() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    run_module(&mut stack, "test_sdk_scoped_keys.py", "py-keys").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_fan_out_and_unite() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    run_module(&mut stack, "test_sdk_fanout.py", "py-fan").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_prune_and_requeue_signals() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    run_module(&mut stack, "test_sdk_signals.py", "py-signals").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_errored_retries_and_manual_retry() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    run_module(&mut stack, "test_sdk_retries.py", "py-retries").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_contract_edges() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    run_module(&mut stack, "test_sdk_edges.py", "py-edges").await
}

/// Leases against the SDK's local queue: with a 2 s lease, one worker,
/// batches of 8 and nodes taking 1.5 s, states wait in the SDK up to ~15 s
/// before they start; the runtime keeps polling and reporting, so none is
/// handed out (and run) twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_slow_nodes_keep_their_leases_while_the_runtime_lives() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack
        .respawn_with("exo-api", &[("EXO_API__LEASE_SECS", "2")])
        .await?;
    run_module(&mut stack, "test_sdk_leases.py", "py-lease").await
}

/// The crash that once lost a fan-out output, as a user hit it: the real
/// SDK fans out 1 000 items, `exo-completion` dies right after committing
/// the second 256-state chunk (its 4th commit: two for the root, then
/// `[0,256)` and `[256,512)`), restarts, and the run must still end with
/// every item worked once and one unite (the module's own assertions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_wide_fan_out_survives_a_completion_crash_between_chunks() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    stack
        .respawn_with(
            "exo-completion",
            &[("FAILPOINTS", "store.commit=3*off->return")],
        )
        .await?;
    let crash_log = run_module_with(
        &mut stack,
        "test_sdk_fanout.py",
        "py-crash",
        &[("EXO_TEST_FAN_WIDTH", "1000")],
        Some("exo-completion"),
    )
    .await?;
    let log = crash_log.context("exo-completion never crashed")?;
    anyhow::ensure!(
        log.contains("exo-failpoint store.commit: crashing"),
        "exo-completion exited, but not at its crash point"
    );
    Ok(())
}

/// The reference Python NATS runtime (`runtimes/python`, nats-py, written
/// from the protocol documents): a chain, a fan-out with a prune and a
/// unite, a crash redelivery within its own `ack_wait`, and a cancellation
/// that stops its execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_nats_runtime_chain_fan_out_crash_and_cancel() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let nats = stack.servers.nats.url();
    run_module_with(
        &mut stack,
        "test_nats_runtime.py",
        "py-nats",
        &[("EXO_NATS_URL", nats.as_str())],
        None,
    )
    .await
    .map(|_| ())
}
