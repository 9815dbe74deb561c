//! The two example runtimes the Kubernetes manifests deploy, run as their
//! Deployments run them: a child process with the manifest's arguments and
//! environment, pointed at a stack. Each serves work, and stops cleanly on
//! SIGTERM (exit 0 within the manifest's `terminationGracePeriodSeconds`).
//!
//! - `k8s/runtimes/rust`: the Rust demo runtime
//!   (`shared/runtime/examples/demo.rs`, `--serve`), NATS pull consumers.
//!   Also the scale-to-zero promise of its KEDA ScaledObject: a run
//!   triggered while no replica runs waits in JetStream, and finishes once
//!   one starts again.
//! - `k8s/runtimes/python`: the Python SDK runtime
//!   (`deploy/python-runtime/runtime.py`), HTTP polling of the api.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use exo_e2e::{API_KEY, Stack, assert_run_consistent};
use exo_store::RunDoc;
use exo_test_support::workspace_root;
use exo_types::status::StateStatus;
use serde_json::{Value, json};
use tempfile::TempDir;

/// `terminationGracePeriodSeconds` of `k8s/runtimes/rust/deployment.yaml`.
const RUST_GRACE: Duration = Duration::from_secs(35);
/// `terminationGracePeriodSeconds` of `k8s/runtimes/python/deployment.yaml`.
const PYTHON_GRACE: Duration = Duration::from_secs(25);
/// Fan-out width of the demo graph.
const WIDTH: usize = 50;
/// Longest wait for a runtime to register its nodes, and for a run to end.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// An example runtime run as a child process; stdout and stderr go to a log
/// file quoted in errors. Killed (SIGKILL) if dropped while running.
struct RuntimeProcess {
    label: String,
    child: tokio::process::Child,
    log: PathBuf,
    _dir: TempDir,
}

impl RuntimeProcess {
    /// Starts `program args` in the workspace root with `env` on top of the
    /// test's environment minus every inherited `EXO*` variable (as
    /// `ServiceProcess` does: the developer's own setup must not leak in).
    fn spawn(
        label: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{label}-"))
            .tempdir()?;
        let log = dir.path().join(format!("{label}.log"));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = tokio::process::Command::new(program);
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| k.starts_with("EXO")) {
                cmd.env_remove(key);
            }
        }
        cmd.args(args)
            .envs(env.iter().copied())
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {label} ({})", program.display()))?;
        Ok(Self {
            label: label.to_string(),
            child,
            log,
            _dir: dir,
        })
    }

    /// Everything the process wrote so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails, quoting the log, when the process has exited.
    fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("{} exited ({status}); log:\n{}", self.label, self.log()),
        }
    }

    /// Sends SIGTERM (what the kubelet sends) and waits up to `grace` (the
    /// manifest's `terminationGracePeriodSeconds`) for the process to exit.
    /// Sent through `kill(1)`, as `exo-test-support` does: the workspace
    /// forbids `unsafe`, so no `libc::kill`.
    async fn sigterm(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        self.ensure_running()?;
        let pid = self.child.id().context("pid of a running process")?;
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("run kill -TERM")?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed ({sent})");
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!(
                "{} still runs {grace:?} after SIGTERM (the kubelet would SIGKILL it); log:\n{}",
                self.label,
                self.log()
            ),
        }
    }

    /// SIGTERM, then checks the exit is clean: status 0 within `grace`.
    async fn stop_cleanly(&mut self, grace: Duration) -> anyhow::Result<()> {
        let status = self.sigterm(grace).await?;
        anyhow::ensure!(
            status.success(),
            "{} exited {status} after SIGTERM, not 0; log:\n{}",
            self.label,
            self.log()
        );
        Ok(())
    }
}

/// Waits until every node of `names` is registered in `ns`; fails early,
/// with the runtime's log, if the runtime exits first.
async fn wait_nodes(
    stack: &Stack,
    ns: &str,
    names: &[&str],
    rt: &mut RuntimeProcess,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + REGISTER_TIMEOUT;
    loop {
        rt.ensure_running()?;
        let (status, body) = stack.get(&format!("/v0/namespace/{ns}/nodes/")).await?;
        let have: Vec<&str> = body["nodes"]
            .as_array()
            .map(|nodes| nodes.iter().filter_map(|n| n["name"].as_str()).collect())
            .unwrap_or_default();
        if status == 200 && names.iter().all(|n| have.contains(n)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not register {names:?} in {ns} within {REGISTER_TIMEOUT:?} \
                 (registered: {have:?}); log:\n{}",
                rt.label,
                rt.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the run to end, and checks it succeeded and is consistent.
async fn wait_success(
    stack: &Stack,
    run_id: &str,
    rt: &RuntimeProcess,
) -> anyhow::Result<Vec<exo_store::StateDoc>> {
    let run: RunDoc = stack
        .wait_run(run_id, RUN_TIMEOUT)
        .await
        .with_context(|| format!("{} log:\n{}", rt.label, rt.log()))?;
    anyhow::ensure!(
        run.status.as_deref() == Some("SUCCESS"),
        "run {run_id} ended {:?}; {} log:\n{}",
        run.status,
        rt.label,
        rt.log()
    );
    assert_run_consistent(stack, &run).await
}

/// The first output `text` of the state `identifier` of a run.
fn output_text<'a>(states: &'a [exo_store::StateDoc], identifier: &str) -> anyhow::Result<&'a str> {
    let s = states
        .iter()
        .find(|s| s.identifier == identifier)
        .with_context(|| format!("no state {identifier}"))?;
    anyhow::ensure!(
        s.status == StateStatus::Success,
        "{identifier}: {}",
        s.status
    );
    s.outputs
        .get_str("text")
        .with_context(|| format!("{identifier} has no output text: {:?}", s.outputs))
}

// ---------------------------------------------------------------- Rust demo

/// The built demo runtime, `<target>/<profile>/examples/demo` (the target
/// dir and profile as for the service binaries).
fn demo_bin() -> anyhow::Result<PathBuf> {
    exo_test_support::service_bin("examples/demo").map_err(|e| {
        let what = e.to_string();
        let what = what.split(';').next().unwrap_or_default().to_string();
        anyhow!(
            "{what}: the Rust demo runtime is a cargo example, which \
             `cargo build --workspace --bins` does not build; run \
             `cargo build -p exo-runtime --example demo` first"
        )
    })
}

/// Starts the demo runtime as `k8s/runtimes/rust/deployment.yaml` runs it.
fn spawn_demo(stack: &Stack, bin: &Path, ns: &str) -> anyhow::Result<RuntimeProcess> {
    let nats = stack.servers.nats.url();
    RuntimeProcess::spawn(
        "exo-demo-runtime",
        bin,
        &["--serve", "--namespace", ns],
        &[
            ("EXO_NATS__URL", nats.as_str()),
            ("EXO_DEMO_API", stack.api_url.as_str()),
            ("EXO_API__KEY", API_KEY),
            ("RUST_LOG", "info,async_nats=warn"),
        ],
    )
}

/// The graph the demo's driver stores (`upsert_graph` in demo.rs).
fn demo_graph(ns: &str, width: usize) -> Value {
    json!({
        "secrets": {},
        "store_config": {"required_keys": ["who"]},
        "retry_policy": {"max_retries": 2, "strategy": "EXPONENTIAL_FULL_JITTER", "backoff_factor": 100},
        "nodes": [
            {"node_name": "Start", "namespace": ns, "identifier": "start", "inputs": {"name": "${{ store.who }}"}, "next_nodes": ["fan"]},
            {"node_name": "Fan", "namespace": ns, "identifier": "fan", "inputs": {"count": width.to_string()}, "next_nodes": ["work"]},
            {"node_name": "Work", "namespace": ns, "identifier": "work", "inputs": {"text": "${{ fan.outputs.text }}"}, "next_nodes": ["report"]},
            {"node_name": "Report", "namespace": ns, "identifier": "report",
             "inputs": {"greeting": "${{ start.outputs.text }}", "width": width.to_string()},
             "unites": {"identifier": "start", "strategy": "ALL_SUCCESS"}},
        ]
    })
}

/// Waits for a demo run and checks its outcome: every branch worked once
/// (k → k²), one report that mentions all of them.
async fn check_demo_run(
    stack: &Stack,
    run_id: &str,
    who: &str,
    rt: &RuntimeProcess,
) -> anyhow::Result<()> {
    let states = wait_success(stack, run_id, rt).await?;
    let mut squares: Vec<u64> = states
        .iter()
        .filter(|s| s.identifier == "work" && s.status == StateStatus::Success)
        .map(|s| {
            s.outputs
                .get_str("text")
                .unwrap_or("x")
                .parse()
                .unwrap_or(0)
        })
        .collect();
    squares.sort_unstable();
    let expected: Vec<u64> = (0..WIDTH as u64).map(|k| k * k).collect();
    assert_eq!(squares, expected, "one work state per branch, k -> k²");
    let count = |id: &str| states.iter().filter(|s| s.identifier == id).count();
    assert_eq!(
        (count("start"), count("fan"), count("report")),
        (1, WIDTH, 1)
    );
    let report = output_text(&states, "report")?;
    let want = format!("hello {who}: all {WIDTH} branches done (run {run_id})");
    assert_eq!(report, want, "the Report node's output");
    Ok(())
}

/// Watches a run for `period` while no runtime serves its namespace: it must
/// stay unfinished, with nothing executed (only its root state, pending).
async fn assert_run_waits(stack: &Stack, run_id: &str, period: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + period;
    while Instant::now() < until {
        let run = stack.store.run(run_id).await?;
        let status = run.as_ref().and_then(|r| r.status.as_deref());
        anyhow::ensure!(
            status != Some("SUCCESS") && status != Some("FAILED"),
            "run {run_id} ended ({status:?}) with no runtime running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let states = stack.states(run_id).await?;
    for s in &states {
        anyhow::ensure!(
            s.identifier == "start" && s.status.is_pending(),
            "with no runtime running, state {} of run {run_id} is {}",
            s.identifier,
            s.status
        );
    }
    Ok(())
}

/// The Rust demo runtime (`k8s/runtimes/rust`) serves a 50-wide fan-out with
/// a unite, exits 0 on SIGTERM within 35 s; a run triggered while it is
/// stopped waits, and finishes once it runs again (KEDA scale-to-zero).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_runtimes_rust_demo_serves_stops_on_sigterm_and_resumes() -> anyhow::Result<()> {
    let bin = demo_bin()?;
    let stack = Stack::start().await?;
    let ns = "demo";
    let mut rt = spawn_demo(&stack, &bin, ns)?;
    wait_nodes(&stack, ns, &["Start", "Fan", "Work", "Report"], &mut rt).await?;
    stack
        .upsert_valid_graph(ns, "demo-graph", &demo_graph(ns, WIDTH))
        .await?;
    let run = stack
        .trigger(ns, "demo-graph", &json!({"store": {"who": "k8s"}}))
        .await?;
    check_demo_run(&stack, &run, "k8s", &rt).await?;
    rt.stop_cleanly(RUST_GRACE).await?;
    assert!(
        rt.log().contains("runtime stopped"),
        "the demo did not report its stop:\n{}",
        rt.log()
    );

    // Scaled to zero: the run waits in JetStream until a replica starts.
    let waiting = stack
        .trigger(ns, "demo-graph", &json!({"store": {"who": "keda"}}))
        .await?;
    assert_run_waits(&stack, &waiting, Duration::from_secs(3)).await?;
    let mut rt = spawn_demo(&stack, &bin, ns)?;
    check_demo_run(&stack, &waiting, "keda", &rt).await?;
    rt.stop_cleanly(RUST_GRACE).await
}

// ------------------------------------------------------- Python SDK runtime

/// Starts `deploy/python-runtime/runtime.py` as
/// `k8s/runtimes/python/deployment.yaml` runs it.
async fn spawn_python_runtime(stack: &Stack, ns: &str) -> anyhow::Result<RuntimeProcess> {
    let python = crate::python_sdk::sdk_python().await?;
    RuntimeProcess::spawn(
        "exo-py-runtime",
        &python,
        &["deploy/python-runtime/runtime.py"],
        &[
            ("EXOSPHERE_STATE_MANAGER_URI", stack.api_url.as_str()),
            ("EXOSPHERE_API_KEY", API_KEY),
            ("EXO_RUNTIME_NAMESPACE", ns),
            ("EXO_SHUTDOWN_GRACE_SECS", "20"),
            ("PYTHONDONTWRITEBYTECODE", "1"),
            ("PYTHONUNBUFFERED", "1"),
        ],
    )
}

/// The Python SDK runtime (`k8s/runtimes/python`) serves its nodes Hello
/// and Shout through the api, and exits 0 on SIGTERM within 25 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_runtimes_python_sdk_serves_and_stops_on_sigterm() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let ns = "py";
    let mut rt = spawn_python_runtime(&stack, ns).await?;
    wait_nodes(&stack, ns, &["Hello", "Shout"], &mut rt).await?;
    let graph = json!({
        "secrets": {},
        "store_config": {"required_keys": ["who"]},
        "nodes": [
            {"node_name": "Hello", "namespace": ns, "identifier": "hello",
             "inputs": {"name": "${{ store.who }}"}, "next_nodes": ["shout"]},
            {"node_name": "Shout", "namespace": ns, "identifier": "shout",
             "inputs": {"text": "${{ hello.outputs.text }}"}},
        ]
    });
    stack.upsert_valid_graph(ns, "greet", &graph).await?;
    let mut runs = Vec::new();
    for who in ["k8s", "keda", "pod"] {
        let run = stack
            .trigger(ns, "greet", &json!({"store": {"who": who}}))
            .await?;
        runs.push((who, run));
    }
    for (who, run) in &runs {
        let states = wait_success(&stack, run, &rt).await?;
        assert_eq!(states.len(), 2, "run {run}: hello and shout");
        assert_eq!(output_text(&states, "hello")?, format!("hello {who}"));
        let loud = format!("HELLO {}", who.to_uppercase());
        assert_eq!(output_text(&states, "shout")?, loud);
    }
    rt.stop_cleanly(PYTHON_GRACE).await?;
    assert!(
        rt.log().contains("stopped"),
        "runtime.py did not log its stop:\n{}",
        rt.log()
    );
    Ok(())
}
