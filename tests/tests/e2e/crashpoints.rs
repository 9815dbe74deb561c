//! Crash safety proven by enumeration, not sampled.
//!
//! For a flow and a service: a fault-free run with `EXO_FAILPOINTS_TRACE=1`
//! counts how often the service passes each crash point (after every
//! MongoDB commit `store.commit` and single-document write `store.write`,
//! after every acknowledged publish `bus.publish`, after each batch of
//! lifecycle events `lifecycle.relayed` / `lifecycle.published`, before
//! every message is settled `bus.settle`; the chunks of a fan-out are
//! separate commits). Then,
//! for every point and every hit count `k`, a fresh run is started with the
//! service configured to **abort** (like `kill -9`) at the `k`-th hit; the
//! service is restarted clean, the run settles, and the invariant checker
//! (`exo_test_support::invariants`), the lifecycle events' oracle
//! (`exo_test_support::lifecycle`: one event per transition of the run and
//! of each state, none twice) and the flow's own expectations must hold. The service runs with `EXO_CONCURRENCY=1` so the hit sequence of a
//! run is the same every time.
//!
//! `.ci/run` runs the fan-out flow against `exo-completion`, the chain and
//! ReQueueAfter against `exo-scheduler`, the cancel, CRON and event flows
//! against `exo-trigger`; the rest of the matrix is behind `#[ignore]`:
//! `cargo nextest run -p exo-e2e --run-ignored only -E 'test(crash_points)'`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use exo_e2e::Stack;
use exo_test_support::invariants::{CheckedRun, check_executions, check_run};
use exo_types::status::StateStatus;
use serde_json::{Value, json};

/// The subject the event flow's graph binds.
const EVENT_SUBJECT: &str = "crashflow.orders";

/// Fan-out width and chunk size: three chunks, the last one partial.
const WIDTH: usize = 7;
const CHUNK: &str = "3";

#[derive(Clone, Copy, Debug)]
enum Flow {
    /// start → mid → end.
    Chain,
    /// start → split (×7, item-3 pruned) → work → merge (unites start, ALL_DONE).
    FanOutAllDone,
    /// The same with ALL_SUCCESS: the prune fails the group, no merge, run FAILED.
    FanOutAllSuccess,
    /// start → work failing twice then ERRORED (retry with backoff).
    Retry,
    /// start → wait (re-queues itself once, ReQueueAfter 100 ms) → end.
    Requeue,
    /// start → split (×7) → slow work, cancelled while work runs.
    Cancel,
    /// The ALL_DONE fan-out with a second `exo-completion` replica that
    /// never crashes: the two share the consumer and group-commit each
    /// their own part of the run.
    TwoCompletions,
    /// start → work (fails, no retry policy: run FAILED); then a manual
    /// retry of work, which reopens the run; the copy fails again. The
    /// service is armed only once the run has FAILED, so the crash points
    /// are those of the manual retry and what follows it.
    ManualRetry,
    /// start → lease, where `lease` is a node served over HTTP by the
    /// driver: handed out, never reported, handed out again by the
    /// scheduler's lease reaper once its 1 s lease expired, then reported.
    LeaseExpiry,
    /// One node started by a CRON occurrence (a one-shot expression a few
    /// seconds ahead, then next year): the occurrence starts exactly one
    /// run and the schedule goes on.
    Cron,
    /// One node started by an event published on a subject its EVENT
    /// trigger binds (a new idempotency key per run): the event starts
    /// exactly one run, also when the trigger dies while handling it.
    Event,
}

impl Flow {
    fn graph(self, ns: &str) -> Value {
        let fan = |strategy: &str| {
            json!({
                "secrets": {},
                "nodes": [
                    {"node_name": "AppendA", "identifier": "start", "namespace": ns, "inputs": {"text": "go"}, "next_nodes": ["split"]},
                    {"node_name": "FanOut", "identifier": "split", "namespace": ns, "inputs": {"count": WIDTH.to_string()}, "next_nodes": ["work"]},
                    {"node_name": "Picky", "identifier": "work", "namespace": ns, "inputs": {"text": "${{ split.outputs.text }}"}, "next_nodes": ["merge"]},
                    {"node_name": "Join", "identifier": "merge", "namespace": ns,
                     "inputs": {"a": "${{ start.outputs.text }}", "b": "merged"},
                     "unites": {"identifier": "start", "strategy": strategy}},
                ]
            })
        };
        match self {
            Flow::Chain => json!({
                "secrets": {},
                "nodes": [
                    {"node_name": "AppendA", "identifier": "start", "namespace": ns, "inputs": {"text": "go"}, "next_nodes": ["mid"]},
                    {"node_name": "AppendA", "identifier": "mid", "namespace": ns, "inputs": {"text": "${{ start.outputs.text }}"}, "next_nodes": ["end"]},
                    {"node_name": "AppendA", "identifier": "end", "namespace": ns, "inputs": {"text": "${{ mid.outputs.text }}"}},
                ]
            }),
            Flow::FanOutAllDone | Flow::Cancel | Flow::TwoCompletions => fan("ALL_DONE"),
            Flow::FanOutAllSuccess => fan("ALL_SUCCESS"),
            Flow::Requeue => json!({
                "secrets": {},
                "nodes": [
                    {"node_name": "AppendA", "identifier": "start", "namespace": ns, "inputs": {"text": "go"}, "next_nodes": ["wait"]},
                    {"node_name": "Requeuer", "identifier": "wait", "namespace": ns, "inputs": {"text": "${{ start.outputs.text }}"}, "next_nodes": ["end"]},
                    {"node_name": "AppendA", "identifier": "end", "namespace": ns, "inputs": {"text": "${{ wait.outputs.text }}"}},
                ]
            }),
            Flow::ManualRetry => json!({
                "secrets": {},
                "retry_policy": {"max_retries": 0, "strategy": "FIXED", "backoff_factor": 50},
                "nodes": [
                    {"node_name": "AppendA", "identifier": "start", "namespace": ns, "inputs": {"text": "go"}, "next_nodes": ["work"]},
                    {"node_name": "Picky", "identifier": "work", "namespace": ns, "inputs": {"text": "x7"}},
                ]
            }),
            Flow::LeaseExpiry => json!({
                "secrets": {},
                "nodes": [
                    {"node_name": "AppendA", "identifier": "start", "namespace": ns, "inputs": {"text": "go"}, "next_nodes": ["lease"]},
                    {"node_name": "Echo", "identifier": "lease", "namespace": ns, "inputs": {"text": "${{ start.outputs.text }}"}},
                ]
            }),
            Flow::Cron => json!({
                "secrets": {},
                "nodes": [
                    {"node_name": "AppendA", "identifier": "tick", "namespace": ns, "inputs": {"text": "go"}},
                ]
            }),
            Flow::Event => json!({
                "secrets": {},
                "triggers": [{"type": "EVENT", "value": {"subject": EVENT_SUBJECT}}],
                "nodes": [
                    {"node_name": "AppendA", "identifier": "tick", "namespace": ns, "inputs": {"text": "go"}},
                ]
            }),
            Flow::Retry => json!({
                "secrets": {},
                "retry_policy": {"max_retries": 2, "strategy": "FIXED", "backoff_factor": 50},
                "nodes": [
                    {"node_name": "AppendA", "identifier": "start", "namespace": ns, "inputs": {"text": "go"}, "next_nodes": ["work"]},
                    {"node_name": "Picky", "identifier": "work", "namespace": ns, "inputs": {"text": "x7"}},
                ]
            }),
        }
    }

    /// Extra settings of the test runtime for this flow.
    fn runtime_env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Flow::Cancel => &[("EXO_TEST_DELAY_MS", "400"), ("EXO_TEST_CONCURRENCY", "2")],
            _ => &[],
        }
    }

    /// Extra settings per service: `(service, key, value)`, for the
    /// service under test and for the others.
    fn service_env(self) -> &'static [(&'static str, &'static str, &'static str)] {
        match self {
            Flow::LeaseExpiry => &[("exo-api", "EXO_API__LEASE_SECS", "1")],
            // A crashed fire is taken over after 3 s instead of a minute.
            Flow::Cron => &[("exo-trigger", "EXO_CRON_CLAIM_TIMEOUT_SECS", "3")],
            _ => &[],
        }
    }

    /// Whether `service` is armed (crash point or trace) only once the run
    /// reached [`Driver::armed_from`], rather than before it starts: the
    /// manual retry's points come after the run FAILED; the api's points in
    /// the lease flow are those of the hand-outs and the report, not of the
    /// trigger (a client whose trigger request dies does not learn its run
    /// id).
    fn arms_late(self, service: &str) -> bool {
        matches!(self, Flow::ManualRetry)
            || (matches!(self, Flow::LeaseExpiry) && service == "exo-api")
    }
}

/// What the driver, as a user, does to a run once it is under way.
impl Driver {
    /// Whether the run reached the point where a late-armed flow arms: the
    /// run FAILED (manual retry), its `lease` state QUEUED (lease).
    async fn armed_from(&self, run_id: &str) -> anyhow::Result<bool> {
        if matches!(self.flow, Flow::LeaseExpiry) {
            return Ok(self
                .stack
                .states(run_id)
                .await?
                .iter()
                .any(|s| s.identifier == "lease" && s.status == StateStatus::Queued));
        }
        Ok(self
            .stack
            .store
            .run(run_id)
            .await?
            .is_some_and(|r| r.status.as_deref() == Some("FAILED")))
    }

    /// Takes the flow's step from outside when it is due (cancel: once a
    /// `work` state is QUEUED; manual retry: once the run FAILED; lease:
    /// take the state, drop it, take it again and report it). Returns true
    /// once taken; an api that is down (crashed) is asked again later.
    async fn drive(&mut self, run_id: &str) -> anyhow::Result<bool> {
        let (stack, ns) = (&self.stack, self.ns.as_str());
        match self.flow {
            Flow::ManualRetry => {
                if self.held.is_none() {
                    if !self.armed_from(run_id).await? {
                        return Ok(false);
                    }
                    let states = stack.states(run_id).await?;
                    let errored = states
                        .iter()
                        .find(|s| s.identifier == "work" && s.status == StateStatus::Errored);
                    self.held = errored.map(|s| s.id.to_hex());
                }
                let Some(id) = &self.held else {
                    return Ok(false);
                };
                let path = format!("/v0/namespace/{ns}/state/{id}/manual-retry");
                match stack.post(&path, &json!({"fanout_id": "again"})).await {
                    Err(_) => Ok(false),
                    Ok((200, _)) => Ok(true),
                    // The request before the api crashed had committed.
                    Ok((409, body)) if body.to_string().contains("Duplicate") => Ok(true),
                    Ok((status, body)) => anyhow::bail!("manual retry answered {status}: {body}"),
                }
            }
            Flow::LeaseExpiry => {
                // Leases belong to the caller's IP: the runtime that "dies"
                // takes the state from 127.0.0.2, the live one polls from
                // 127.0.0.3.
                let from: std::net::IpAddr = if self.held.is_none() {
                    "127.0.0.2".parse()?
                } else {
                    "127.0.0.3".parse()?
                };
                // Reported before an api crash: nothing left to hand out.
                if stack
                    .store
                    .run(run_id)
                    .await?
                    .is_some_and(|r| r.status.as_deref() != Some("PENDING"))
                {
                    return Ok(true);
                }
                let Ok((status, body)) = stack
                    .api
                    .post_from(
                        from,
                        &format!("/v0/namespace/{ns}/states/enqueue"),
                        &json!({"nodes": ["Echo"], "batch_size": 1}),
                    )
                    .await
                else {
                    return Ok(false); // the api is down (crashed): ask again
                };
                anyhow::ensure!(status == 200, "enqueue answered {status}: {body}");
                let Some(got) = body["states"][0]["state_id"].as_str() else {
                    return Ok(false);
                };
                match &self.held {
                    // First hand-out: the holder "dies" without reporting.
                    None => {
                        self.held = Some(got.to_string());
                        Ok(false)
                    }
                    Some(held) => {
                        anyhow::ensure!(held == got, "another state was handed out: {got}");
                        match stack
                            .post(
                                &format!("/v0/namespace/{ns}/state/{got}/executed"),
                                &json!({"outputs": [{"text": "leased"}]}),
                            )
                            .await
                        {
                            Ok((200, _)) => Ok(true),
                            Ok((status, body)) => {
                                anyhow::bail!("executed answered {status}: {body}")
                            }
                            // The api died with the report: the state comes
                            // back after its lease, or the report went through.
                            Err(_) => Ok(false),
                        }
                    }
                }
            }
            flow => flow.drive(stack, ns, run_id).await,
        }
    }
}

impl Flow {
    /// Whether the run needs a step from outside once it is under way, and
    /// takes it (cancel: once a `work` state is QUEUED). Returns true once
    /// taken.
    async fn drive(self, stack: &Stack, ns: &str, run_id: &str) -> anyhow::Result<bool> {
        match self {
            Flow::Cancel => {
                let working = stack
                    .states(run_id)
                    .await?
                    .iter()
                    .any(|s| s.identifier == "work" && s.status == StateStatus::Queued);
                if !working {
                    return Ok(false);
                }
                let (status, body) = stack
                    .post(
                        &format!("/v0/namespace/{ns}/run/{run_id}/cancel"),
                        &json!({}),
                    )
                    .await?;
                anyhow::ensure!(status == 202, "cancel answered {status}: {body}");
                Ok(true)
            }
            _ => Ok(true),
        }
    }

    /// What this flow's run must look like, beyond the general invariants.
    fn expect(self, c: &CheckedRun) -> anyhow::Result<()> {
        let n = |id: &str| c.with_identifier(id).len();
        match self {
            Flow::Chain => {
                anyhow::ensure!(c.status() == "SUCCESS", "chain ended {}", c.status());
                anyhow::ensure!((n("start"), n("mid"), n("end")) == (1, 1, 1));
                let end = c.with_identifier("end")[0];
                anyhow::ensure!(end.outputs.get_str("text")? == "go+a+a+a");
            }
            Flow::FanOutAllDone | Flow::FanOutAllSuccess | Flow::TwoCompletions => {
                anyhow::ensure!(
                    (n("start"), n("split"), n("work")) == (1, WIDTH, WIDTH),
                    "widths: start {} split {} work {}",
                    n("start"),
                    n("split"),
                    n("work")
                );
                let mut items: Vec<String> = Vec::new();
                for w in c.finals("work") {
                    let text = w.inputs.get_str("text")?.to_string();
                    let want = if text.ends_with('3') {
                        StateStatus::Pruned
                    } else {
                        StateStatus::Success
                    };
                    anyhow::ensure!(w.status == want, "{text} is {}", w.status);
                    items.push(text);
                }
                items.sort();
                items.dedup();
                anyhow::ensure!(items.len() == WIDTH, "items {items:?}");
                if matches!(self, Flow::FanOutAllDone | Flow::TwoCompletions) {
                    anyhow::ensure!(n("merge") == 1 && c.status() == "SUCCESS");
                } else {
                    anyhow::ensure!(n("merge") == 0 && c.status() == "FAILED");
                    anyhow::ensure!(c.run.failed_unites == 1);
                }
            }
            Flow::Requeue => {
                anyhow::ensure!(c.status() == "SUCCESS", "requeue flow ended {}", c.status());
                anyhow::ensure!((n("start"), n("wait"), n("end")) == (1, 1, 1));
                let wait = c.with_identifier("wait")[0];
                anyhow::ensure!(
                    wait.attempt == 2 && wait.requeue_gen == 1,
                    "re-queued once: attempt {} generation {}",
                    wait.attempt,
                    wait.requeue_gen
                );
                anyhow::ensure!(c.with_identifier("end")[0].outputs.get_str("text")? == "go+a+a");
            }
            Flow::Cancel => {
                anyhow::ensure!(
                    c.status() == "CANCELLED",
                    "cancel flow ended {}",
                    c.status()
                );
                anyhow::ensure!(n("merge") == 0, "no unite after a cancel");
                anyhow::ensure!(c.run.cancelled_count > 0, "pending states were cancelled");
            }
            Flow::ManualRetry => {
                let work = c.with_identifier("work");
                anyhow::ensure!(work.len() == 2, "original and copy, got {}", work.len());
                let original = work.iter().find(|s| s.fanout_id != "again");
                anyhow::ensure!(
                    original.is_some_and(|s| s.status == StateStatus::RetryCreated),
                    "the original is RETRY_CREATED: {original:?}"
                );
                let finals = c.finals("work");
                anyhow::ensure!(
                    finals.len() == 1
                        && finals[0].status == StateStatus::Errored
                        && finals[0].fanout_id == "again",
                    "the copy ran and failed again"
                );
                anyhow::ensure!(
                    c.status() == "FAILED",
                    "manual retry flow ended {}",
                    c.status()
                );
            }
            Flow::LeaseExpiry => {
                anyhow::ensure!(c.status() == "SUCCESS", "lease flow ended {}", c.status());
                let lease = c.with_identifier("lease");
                anyhow::ensure!(lease.len() == 1, "one lease state, got {}", lease.len());
                // Attempt 2 is the reaper's re-dispatch; a reaper that died
                // between its claim and clearing the claim cannot know whether
                // it published, so its next pass takes one more attempt.
                anyhow::ensure!(
                    lease[0].attempt >= 2 && lease[0].outputs.get_str("text")? == "leased",
                    "handed out twice (attempt {}), then reported",
                    lease[0].attempt
                );
            }
            Flow::Cron | Flow::Event => {
                anyhow::ensure!(c.status() == "SUCCESS", "flow ended {}", c.status());
                anyhow::ensure!(n("tick") == 1);
            }
            Flow::Retry => {
                let work = c.with_identifier("work");
                anyhow::ensure!(work.len() == 3, "three attempts, got {}", work.len());
                anyhow::ensure!(
                    c.finals("work").len() == 1
                        && c.finals("work")[0].status == StateStatus::Errored
                );
                anyhow::ensure!(c.status() == "FAILED");
            }
        }
        Ok(())
    }
}

/// Hits per crash point in the service's log (`exo-failpoint <name>` lines).
fn count_hits(log: &str) -> BTreeMap<String, usize> {
    let mut hits = BTreeMap::new();
    for line in log.lines() {
        if let Some(rest) = line.trim().strip_prefix("exo-failpoint ")
            && !rest.contains(':')
        {
            *hits.entry(rest.to_string()).or_default() += 1;
        }
    }
    hits
}

struct Driver {
    stack: Stack,
    crash_log: String,
    exec_log: tempfile::TempPath,
    ns: String,
    flow: Flow,
    service: &'static str,
    /// The state the flow's outside step holds (manual retry: the original;
    /// lease: the state handed out and dropped).
    held: Option<String>,
    /// The CRON expression of the current case.
    cron: Option<String>,
    /// Whether the service under test already crashed (and was restarted)
    /// in the current case.
    crashed: bool,
}

impl Driver {
    async fn start(flow: Flow, service: &'static str) -> anyhow::Result<Self> {
        let ns = format!("cp{}", std::process::id());
        let mut stack = Stack::start().await?;
        let exec_log = tempfile::NamedTempFile::new()?.into_temp_path();
        let log_path = exec_log.to_string_lossy().to_string();
        let mut runtime_env = vec![
            ("EXO_TEST_FAIL_DIGITS", "7"),
            ("EXO_TEST_PRUNE_DIGITS", "3"),
            ("EXO_TEST_ACK_WAIT_SECS", "2"),
            ("EXO_TEST_EXEC_LOG", log_path.as_str()),
        ];
        runtime_env.extend_from_slice(flow.runtime_env());
        stack.spawn_runtime_process(&ns, &runtime_env).await?;
        if matches!(flow, Flow::TwoCompletions) {
            // Another chunk size on purpose: a result first applied by one
            // replica is resumed on the grid it recorded, by either.
            let mut env = stack.env(exo_test_support::free_port());
            env.push(("EXO_CONCURRENCY".into(), "4".into()));
            env.push(("EXO_FANOUT_CHUNK".into(), "2".into()));
            let b = exo_test_support::ServiceProcess::spawn("exo-completion", &env).await?;
            stack.services.insert("exo-completion-b".into(), b);
        }
        for (svc, _, _) in flow.service_env() {
            if *svc != service {
                let env: Vec<(&str, &str)> = flow
                    .service_env()
                    .iter()
                    .filter(|(s, _, _)| s == svc)
                    .map(|(_, k, v)| (*k, *v))
                    .collect();
                stack.respawn_with(svc, &env).await?;
            }
        }
        if matches!(flow, Flow::LeaseExpiry) {
            stack.register_http_node(&ns, "Echo").await?;
        }
        stack.upsert_valid_graph(&ns, "g", &flow.graph(&ns)).await?;
        Ok(Self {
            stack,
            crash_log: String::new(),
            exec_log,
            ns,
            flow,
            service,
            held: None,
            cron: None,
            crashed: false,
        })
    }

    fn env(&self, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("EXO_CONCURRENCY", "1".to_string()),
            ("EXO_FANOUT_CHUNK", CHUNK.to_string()),
        ];
        for (svc, k, v) in self.flow.service_env() {
            if *svc == self.service {
                env.push((k, v.to_string()));
            }
        }
        env.extend(extra.iter().cloned());
        env
    }

    /// Starts the case's run and returns its id: a trigger over HTTP, or,
    /// for CRON, an upsert adding a one-shot occurrence a few seconds ahead
    /// (its run id is derived from the occurrence).
    async fn start_run(&mut self) -> anyhow::Result<String> {
        self.held = None;
        if matches!(self.flow, Flow::Event) {
            return self.publish_event().await;
        }
        if !matches!(self.flow, Flow::Cron) {
            return self.trigger().await;
        }
        use chrono::{Datelike, Timelike};
        let at = chrono::Utc::now() + chrono::Duration::seconds(3);
        // croniter's six fields: minute hour day month weekday second.
        let expr = format!(
            "{} {} {} {} * {}",
            at.minute(),
            at.hour(),
            at.day(),
            at.month(),
            at.second()
        );
        let mut graph = self.flow.graph(&self.ns);
        graph["triggers"] = json!([{"type": "CRON", "value": {"expression": expr}}]);
        self.stack.upsert_valid_graph(&self.ns, "g", &graph).await?;
        let occurrence = self
            .stack
            .store
            .triggers()
            .find_one(exo_store::mongodb::bson::doc! {
                "namespace": &self.ns, "graph_name": "g", "expression": &expr, "trigger_status": "PENDING"})
            .await?
            .ok_or_else(|| anyhow::anyhow!("no occurrence scheduled for {expr}"))?;
        self.cron = Some(expr);
        Ok(exo_engine::cron::occurrence_run_id(&occurrence).into_string())
    }

    /// Publishes one event under a new idempotency key (what an outside
    /// publisher does); its run id follows from the key.
    async fn publish_event(&mut self) -> anyhow::Result<String> {
        let key = uuid::Uuid::new_v4().to_string();
        let nc = async_nats::connect(self.stack.servers.nats.url()).await?;
        let js = async_nats::jetstream::new(nc);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", key.as_str());
        js.publish_with_headers(EVENT_SUBJECT, headers, "{}".into())
            .await?
            .await?;
        Ok(exo_types::ids::idempotent_run_id(&self.ns, "g", &key).into_string())
    }

    /// Triggers a run over HTTP. The api answers once `exo-trigger` created
    /// the run, so a trigger service crashing meanwhile is restarted here
    /// (as the driver would once the run is under way): otherwise the answer
    /// waits out the api's reply wait while the run goes on without the
    /// driver.
    async fn trigger(&mut self) -> anyhow::Result<String> {
        let url = format!(
            "{}/v0/namespace/{}/graph/g/trigger",
            self.stack.api_url, self.ns
        );
        let request = tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(url)
                .header("x-api-key", exo_e2e::API_KEY)
                .json(&json!({}))
                .send()
                .await?;
            let status = r.status().as_u16();
            let body: Value = r.json().await?;
            anyhow::ensure!(status == 200, "trigger: {status} {body}");
            body["run_id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("no run_id in {body}"))
        });
        while !request.is_finished() {
            self.restart_if_crashed().await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        request.await?
    }

    /// Restarts the service under test, clean, the first time it is found
    /// dead in a case.
    async fn restart_if_crashed(&mut self) -> anyhow::Result<()> {
        if !self.crashed && !self.stack.service(self.service).is_running() {
            self.crashed = true;
            self.crash_log = self.stack.service(self.service).log_contents();
            self.respawn(&[]).await?;
        }
        Ok(())
    }

    /// Checks outside the run: a CRON occurrence fired exactly once (its
    /// run) and the schedule goes on (the next occurrence is PENDING). A
    /// fire that crashed after starting its run is finished by a take-over
    /// once its claim times out, so this waits for it.
    async fn expect_outside(&self, run_id: &str) -> anyhow::Result<()> {
        let Some(expr) = &self.cron else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.occurrence_fired(expr, run_id).await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn occurrence_fired(&self, expr: &str, run_id: &str) -> anyhow::Result<()> {
        let docs: Vec<exo_store::TriggerDoc> = futures::TryStreamExt::try_collect(
            self.stack
                .store
                .triggers()
                .find(exo_store::mongodb::bson::doc! {"namespace": &self.ns, "graph_name": "g", "expression": expr})
                .await?,
        )
        .await?;
        let statuses: Vec<&str> = docs.iter().map(|d| d.trigger_status.as_str()).collect();
        let fired: Vec<_> = docs
            .iter()
            .filter(|d| d.trigger_status == "TRIGGERED")
            .collect();
        anyhow::ensure!(
            fired.len() == 1 && fired[0].run_id.as_deref() == Some(run_id),
            "the occurrence fired once, as {run_id}: {statuses:?}"
        );
        anyhow::ensure!(
            docs.len() == 2 && statuses.contains(&"PENDING"),
            "the next occurrence is scheduled: {statuses:?}"
        );
        Ok(())
    }

    /// Waits until no service consumer holds or has pending messages, so a
    /// case's crash point is hit by its own run, not by leftovers.
    async fn wait_quiet(&self) -> anyhow::Result<()> {
        use async_nats::jetstream::consumer::pull::Config;
        use exo_types::subjects as s;
        let js =
            async_nats::jetstream::new(async_nats::connect(self.stack.servers.nats.url()).await?);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut busy = 0;
            for (stream, consumer) in s::service_consumers() {
                if let Ok(mut c) = js
                    .get_consumer_from_stream::<Config, _, _>(&consumer, stream)
                    .await
                    && let Ok(i) = c.info().await
                {
                    busy += i.num_pending + i.num_ack_pending as u64;
                }
            }
            if busy == 0 || Instant::now() > deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn respawn(&mut self, extra: &[(&'static str, String)]) -> anyhow::Result<()> {
        let env = self.env(extra);
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.stack.respawn_with(self.service, &refs).await
    }

    /// Lets the run proceed until it ends: takes the flow's outside step
    /// when due, and restarts the service clean once if it crashed (at
    /// `point`). Returns whether it crashed.
    async fn run_through(&mut self, run_id: &str, point: Option<&str>) -> anyhow::Result<bool> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut driven = false;
        loop {
            self.restart_if_crashed().await?;
            let crashed = self.crashed;
            anyhow::ensure!(
                !crashed || point.is_some(),
                "{} died in a fault-free run",
                self.service
            );
            if !driven {
                driven = self.drive(run_id).await?;
            }
            if driven
                && let Some(run) = self.stack.store.run(run_id).await?
                && run.status.as_deref().is_some_and(|s| s != "PENDING")
            {
                return Ok(self.crashed);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{point:?}: the run did not end within 90 s (crashed: {crashed}, driven: {driven})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn settle(&self, run_id: &str) -> anyhow::Result<CheckedRun> {
        self.stack.wait_run(run_id, Duration::from_secs(90)).await?;
        // Let late work (a unite after the run's end would be a bug) land.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = check_run(&self.stack.store, run_id).await?;
        self.flow.expect(&c)?;
        self.expect_outside(run_id).await?;
        self.expect_events(run_id).await?;
        Ok(c)
    }

    /// The run's lifecycle events, once the outbox is empty (what a crash
    /// left is relayed by the scheduler): one per transition of the run and
    /// of each state (`exo_test_support::lifecycle`), in some order. The
    /// run's ending event follows its last commit, so the check is retried
    /// for a while before it counts as failed.
    async fn expect_events(&self, run_id: &str) -> anyhow::Result<()> {
        use exo_test_support::lifecycle;
        let js =
            async_nats::jetstream::new(async_nats::connect(self.stack.servers.nats.url()).await?);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = self
                .stack
                .store
                .outbox()
                .count_documents(exo_store::mongodb::bson::doc! {})
                .await?;
            let checked = match left {
                0 => {
                    let run = self.stack.wait_run(run_id, Duration::from_secs(5)).await?;
                    let states = self.stack.states(run_id).await?;
                    let events = lifecycle::stored_events(&js, &self.ns, run_id).await?;
                    lifecycle::check_run_events(&run, &states, &events, false)
                }
                n => Err(anyhow::anyhow!("{n} outbox documents not relayed")),
            };
            match checked {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e.context("lifecycle events")),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Starts a run with the service restarted with `extra` (before the run
    /// starts, or once it reached [`Driver::armed_from`] for a late-armed
    /// flow). Returns the run id.
    async fn arm(&mut self, extra: &[(&'static str, String)]) -> anyhow::Result<String> {
        self.wait_quiet().await?;
        self.crashed = false;
        if !self.flow.arms_late(self.service) {
            self.respawn(extra).await?;
            return self.start_run().await;
        }
        self.respawn(&[]).await?;
        let run_id = self.start_run().await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.armed_from(&run_id).await? {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{run_id} never reached the arming point"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.wait_quiet().await?;
        self.respawn(extra).await?;
        Ok(run_id)
    }

    /// A fault-free run with tracing: the hits per crash point.
    async fn trace(&mut self) -> anyhow::Result<BTreeMap<String, usize>> {
        let run_id = self.arm(&[("EXO_FAILPOINTS_TRACE", "1".into())]).await?;
        self.run_through(&run_id, None).await?;
        let checked = self.settle(&run_id).await?;
        // Without faults, user code ran exactly once per state attempt.
        let executions = exo_e2e::nodes::executions_of(&self.exec_log, &run_id);
        check_executions(&checked, &executions)?;
        let hits = count_hits(&self.stack.service(self.service).log_contents());
        anyhow::ensure!(
            !hits.is_empty(),
            "{} passed no crash point: fail points are not live (a release build?)",
            self.service
        );
        Ok(hits)
    }

    /// Crashes the service at the `k`-th hit of `point` during a run,
    /// restarts it, lets the run settle and checks it. Returns whether the
    /// crash happened.
    async fn crash_at(&mut self, point: &str, k: usize) -> anyhow::Result<bool> {
        let actions = if k == 1 {
            "return".to_string()
        } else {
            format!("{}*off->return", k - 1)
        };
        let run_id = self
            .arm(&[("FAILPOINTS", format!("{point}={actions}"))])
            .await?;
        let mut crashed = self.run_through(&run_id, Some(point)).await?;
        if !crashed {
            // The point may come right after the write that ends the run
            // (the run's end is visible a moment before the abort).
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.restart_if_crashed().await?;
            crashed = self.crashed;
        }
        if crashed {
            anyhow::ensure!(
                self.crash_log
                    .contains(&format!("exo-failpoint {point}: crashing")),
                "{} exited, but not at {point}",
                self.service
            );
        } else {
            // Not reached: drop the fail point configuration.
            self.respawn(&[]).await?;
        }
        self.settle(&run_id)
            .await
            .map_err(|e| e.context(format!("after a crash of {} at {point}#{k}", self.service)))?;
        Ok(crashed)
    }
}

/// Enumerates every crash point and hit count of `service` in `flow`.
async fn enumerate(flow: Flow, service: &'static str) -> anyhow::Result<()> {
    let mut d = Driver::start(flow, service).await?;
    let hits = d.trace().await?;
    let total: usize = hits.values().sum();
    eprintln!("{flow:?} / {service}: {total} crash points {hits:?}");
    let mut crashed = 0;
    // `EXO_CRASH_ONLY=point#k` runs one case (debugging a failure).
    let only = std::env::var("EXO_CRASH_ONLY").ok();
    for (point, &n) in &hits {
        for k in 1..=n {
            if only.as_ref().is_some_and(|o| *o != format!("{point}#{k}")) {
                crashed += 1;
                continue;
            }
            let case = d.crash_at(point, k).await;
            if case.is_err() && std::env::var("EXO_CRASH_LOGS").is_ok() {
                for (name, p) in &d.stack.services {
                    for line in p.log_contents().lines() {
                        eprintln!("[{name}] {line}");
                    }
                }
                eprintln!("[crash log] {}", d.crash_log);
            }
            if case? {
                crashed += 1;
            } else {
                eprintln!("{flow:?} / {service}: {point}#{k} was not reached in this run");
            }
        }
    }
    eprintln!(
        "{flow:?} / {service}: all {total} crash points pass ({crashed} crashed, {} not reached)",
        total - crashed
    );
    // Timing decides how much work a cancelled run holds, so its hit
    // sequence varies more between runs.
    let reproducible = if matches!(flow, Flow::Cancel | Flow::TwoCompletions) {
        5
    } else {
        9
    };
    anyhow::ensure!(
        crashed * 10 >= total * reproducible,
        "only {crashed} of {total} crash points were reached: the hit sequence is not reproducible"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_points_fanout_all_done_completion() -> anyhow::Result<()> {
    enumerate(Flow::FanOutAllDone, "exo-completion").await
}

/// The chain's path is trigger → runtime → completion → runtime …: its
/// root and successors are dispatched by the service that creates them,
/// so the scheduler is not on it (enumerating it finds no crash point).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_points_chain_completion() -> anyhow::Result<()> {
    enumerate(Flow::Chain, "exo-completion").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_points_requeue_scheduler() -> anyhow::Result<()> {
    enumerate(Flow::Requeue, "exo-scheduler").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_points_cancel_trigger() -> anyhow::Result<()> {
    enumerate(Flow::Cancel, "exo-trigger").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_points_manual_retry_api() -> anyhow::Result<()> {
    enumerate(Flow::ManualRetry, "exo-api").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_points_lease_expiry_scheduler() -> anyhow::Result<()> {
    enumerate(Flow::LeaseExpiry, "exo-scheduler").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_points_cron_trigger() -> anyhow::Result<()> {
    enumerate(Flow::Cron, "exo-trigger").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_points_event_trigger() -> anyhow::Result<()> {
    enumerate(Flow::Event, "exo-trigger").await
}

// Not in the matrix because the service is not on the flow's path (the
// enumeration would find no crash point): the chain and the ALL_SUCCESS
// fan-out (whose unite does not fire) against `exo-scheduler`, since roots
// and successors are dispatched by the service that creates them.
macro_rules! full_matrix {
    ($($name:ident: $flow:expr, $svc:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "full crash-point matrix: cargo nextest run -p exo-e2e --run-ignored only -E 'test(crash_points)'"]
        async fn $name() -> anyhow::Result<()> {
            enumerate($flow, $svc).await
        }
    )*};
}

full_matrix! {
    crash_points_chain_trigger: Flow::Chain, "exo-trigger";
    crash_points_fanout_all_done_scheduler: Flow::FanOutAllDone, "exo-scheduler";
    crash_points_fanout_all_done_trigger: Flow::FanOutAllDone, "exo-trigger";
    crash_points_fanout_all_success_completion: Flow::FanOutAllSuccess, "exo-completion";
    crash_points_retry_retry: Flow::Retry, "exo-retry";
    crash_points_retry_scheduler: Flow::Retry, "exo-scheduler";
    crash_points_retry_completion: Flow::Retry, "exo-completion";
    crash_points_requeue_retry: Flow::Requeue, "exo-retry";
    crash_points_cancel_completion: Flow::Cancel, "exo-completion";
    crash_points_two_completions: Flow::TwoCompletions, "exo-completion";
    crash_points_manual_retry_scheduler: Flow::ManualRetry, "exo-scheduler";
    crash_points_manual_retry_retry: Flow::ManualRetry, "exo-retry";
    crash_points_lease_expiry_api: Flow::LeaseExpiry, "exo-api";
}
