//! End-to-end test harness: a [`Stack`] of real servers and real service
//! binaries, plus test nodes for the Rust runtime SDK.

pub mod nodes;
pub mod schema;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use exo_store::mongodb::bson::doc;
use exo_store::{RunDoc, StateDoc, Store};
use exo_test_support::{ApiClient, Servers, ServiceProcess, free_port, unique_db_name};
use futures::TryStreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use exo_test_support::SERVICES;

/// API key used by every stack.
pub const API_KEY: &str = "e2e-secret-key";

/// Servers, services and clients of one test.
pub struct Stack {
    /// nats-server and the MongoDB-wire server.
    pub servers: Servers,
    /// Database name of this stack.
    pub db: String,
    /// Running services by binary name.
    pub services: HashMap<String, ServiceProcess>,
    /// Base URL of the API.
    pub api_url: String,
    /// Store handle on the stack's database.
    pub store: Store,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The api with the stack's key.
    pub api: ApiClient,
    /// Settings given to every process started from now on (e.g. NATS
    /// credentials), after the stack's own.
    pub extra_env: Vec<(String, String)>,
    api_port: u16,
}

impl Stack {
    /// Starts servers and every service.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&SERVICES).await
    }

    /// Starts servers and the named services.
    pub async fn start_with(services: &[&str]) -> anyhow::Result<Self> {
        exo_test_support::init_test_tracing();
        let servers = Servers::start().await?;
        Self::start_on(servers, services).await
    }

    /// Starts the named services on already running servers.
    pub async fn start_on(servers: Servers, services: &[&str]) -> anyhow::Result<Self> {
        exo_test_support::init_test_tracing();
        let db = unique_db_name("e2e");
        let store = Store::connect(&servers.mongo.uri(), &db, "e2e").await?;
        let api_port = free_port();
        let mut stack = Self {
            servers,
            db,
            services: HashMap::new(),
            api_url: format!("http://127.0.0.1:{api_port}"),
            store,
            http: reqwest::Client::new(),
            api: ApiClient::new(format!("http://127.0.0.1:{api_port}"), API_KEY),
            extra_env: Vec::new(),
            api_port,
        };
        for s in services {
            stack.spawn(s).await?;
        }
        Ok(stack)
    }

    /// Environment of a service process.
    pub fn env(&self, admin_port: u16) -> Vec<(String, String)> {
        let mut env = vec![
            ("EXO_NATS__URL".to_string(), self.servers.nats.url()),
            ("EXO_MONGO__URI".to_string(), self.servers.mongo.uri()),
            ("EXO_MONGO__DATABASE".to_string(), self.db.clone()),
            (
                "EXO_ADMIN__ADDR".to_string(),
                format!("127.0.0.1:{admin_port}"),
            ),
            (
                "EXO_API__ADDR".to_string(),
                format!("127.0.0.1:{}", self.api_port),
            ),
            ("EXO_API__KEY".to_string(), API_KEY.to_string()),
            (
                "EXO_API__SECRETS_ENCRYPTION_KEY".to_string(),
                "YTzpUlBGLSwm-3yKJRJTZnb0_aQuQQHyz64s8qAERVU=".to_string(),
            ),
            ("EXO_SHUTDOWN_GRACE_SECS".to_string(), "5".to_string()),
            // Outbox documents a crash left are relayed after 1 s (3 s by default).
            ("EXO_OUTBOX_STALE_MS".to_string(), "1000".to_string()),
            // Webhook retries every 200 ms, 400 ms, ... (1 s by default), 4 attempts.
            ("EXO_API__WEBHOOK_BACKOFF_MS".to_string(), "200".to_string()),
            ("EXO_API__WEBHOOK_ATTEMPTS".to_string(), "4".to_string()),
            (
                "EXO_MONGO__TRANSACTION_LIFETIME_SECS".to_string(),
                "2".to_string(),
            ),
        ];
        if std::env::var("RUST_LOG").is_err() {
            env.push(("RUST_LOG".into(), "info,exo_engine=debug".into()));
        }
        env.extend(self.extra_env.iter().cloned());
        env
    }

    /// Stops one service and starts it again with extra environment.
    pub async fn respawn_with(&mut self, name: &str, extra: &[(&str, &str)]) -> anyhow::Result<()> {
        if let Some(mut old) = self.services.remove(name) {
            old.terminate(Duration::from_secs(5)).await;
        }
        let mut env = self.env(free_port());
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string())),
        );
        let p = ServiceProcess::spawn(name, &env)
            .await
            .with_context(|| format!("start {name}"))?;
        self.services.insert(name.to_string(), p);
        Ok(())
    }

    /// Starts (or replaces) one service.
    pub async fn spawn(&mut self, name: &str) -> anyhow::Result<()> {
        let env = self.env(free_port());
        let p = ServiceProcess::spawn(name, &env)
            .await
            .with_context(|| format!("start {name}"))?;
        self.services.insert(name.to_string(), p);
        Ok(())
    }

    /// Starts the test runtime binary (`exo-test-runtime`) as a process, so
    /// that it can be killed. `extra` adds `EXO_TEST_*` settings.
    pub async fn spawn_runtime_process(
        &mut self,
        ns: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let mut env = self.env(free_port());
        env.push(("EXO_TEST_NAMESPACE".into(), ns.into()));
        env.push(("EXO_TEST_API".into(), self.api_url.clone()));
        for (k, v) in extra {
            env.push(((*k).to_string(), (*v).to_string()));
        }
        let p = ServiceProcess::spawn("exo-test-runtime", &env)
            .await
            .context("start exo-test-runtime")?;
        self.services.insert("exo-test-runtime".into(), p);
        Ok(())
    }

    /// A process by name.
    pub fn service(&mut self, name: &str) -> &mut ServiceProcess {
        self.services
            .get_mut(name)
            .expect("service started by the stack")
    }

    /// A runtime builder connected to this stack, registering with its API.
    pub fn runtime(&self, namespace: &str, name: &str) -> exo_runtime::Builder {
        exo_runtime::Runtime::builder(namespace, name)
            .nats_url(self.servers.nats.url())
            .register_with(&self.api_url, API_KEY)
    }

    /// Starts the in-process runtime most flows use in `ns`: `AppendA`
    /// (appends `+a`) and `AppendB` (appends `+b`).
    pub async fn start_append_runtime(
        &self,
        ns: &str,
    ) -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<()>)> {
        let builder = self
            .runtime(ns, "rt")
            .node(nodes::Append::new("AppendA", "a"))
            .node(nodes::Append::new("AppendB", "b"));
        self.start_runtime(builder).await
    }

    /// Starts a runtime in this process; returns its stop token and task.
    pub async fn start_runtime(
        &self,
        builder: exo_runtime::Builder,
    ) -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<()>)> {
        let runtime = builder.build();
        let token = CancellationToken::new();
        let t = token.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let handle = tokio::spawn(async move {
            if let Err(error) = runtime
                .run_with_ready(t, move || {
                    let _ = ready_tx.send(());
                })
                .await
            {
                panic!("runtime failed: {error}");
            }
        });
        // Registered and consuming every queue, or the task ended early.
        tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .context("runtime not ready within 30 s")?
            .context("runtime stopped before it was ready")?;
        Ok((token, handle))
    }

    /// `PUT` JSON with the API key; returns status and body.
    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        self.api.put(path, body).await
    }

    /// `POST` JSON with the API key; returns status and body.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        self.api.post(path, body).await
    }

    /// `GET` with the API key; returns status and body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.api.get(path).await
    }

    /// Registers `name` (one string field `text` in and out) as a node of
    /// an HTTP runtime in `ns`, as the Python SDK does.
    pub async fn register_http_node(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        let schema = exo_runtime::string_object_schema("Inputs", &["text"]);
        let (status, body) = self
            .put(
                &format!("/v0/namespace/{ns}/nodes/"),
                &serde_json::json!({"runtime_name": "py", "nodes": [
                    {"name": name, "inputs_schema": schema, "outputs_schema": schema, "secrets": []}]}),
            )
            .await?;
        anyhow::ensure!(status == 200, "register {name}: {status} {body}");
        Ok(())
    }

    /// Upserts a graph and waits until it is VALID.
    pub async fn upsert_valid_graph(
        &self,
        ns: &str,
        graph: &str,
        body: &Value,
    ) -> anyhow::Result<()> {
        self.api.upsert_valid_graph(ns, graph, body).await
    }

    /// Triggers a run through the API; returns its run id.
    pub async fn trigger(&self, ns: &str, graph: &str, body: &Value) -> anyhow::Result<String> {
        self.api.trigger(ns, graph, body).await
    }

    /// Waits until the run reaches a terminal status; fails after `timeout`.
    pub async fn wait_run(&self, run_id: &str, timeout: Duration) -> anyhow::Result<RunDoc> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(run) = self.store.run(run_id).await?
                && matches!(
                    run.status.as_deref(),
                    Some("SUCCESS") | Some("FAILED") | Some("CANCELLED")
                )
            {
                return Ok(run);
            }
            if Instant::now() > deadline {
                self.print_problems();
                self.print_consumers().await;
                let states = self.states(run_id).await?;
                let stuck: Vec<&StateDoc> =
                    states.iter().filter(|s| s.status.is_pending()).collect();
                for s in &stuck {
                    let id = s.id.to_hex();
                    for (name, p) in &self.services {
                        for line in p.log_contents().lines().filter(|l| l.contains(&id)) {
                            eprintln!("[{name}] {line}");
                        }
                    }
                }
                let summary: Vec<String> = stuck
                    .iter()
                    .map(|s| {
                        format!(
                            "{}:{}:{}:attempt={}:digest={:?}",
                            s.identifier, s.status, s.id, s.attempt, s.result_digest
                        )
                    })
                    .collect();
                bail!("run {run_id} did not finish in {timeout:?}; states: {summary:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Prints the WARN and ERROR lines of every service log (test diagnostics).
    pub fn print_problems(&self) {
        for (name, p) in &self.services {
            for line in p
                .log_contents()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            {
                eprintln!("[{name}] {line}");
            }
        }
    }

    /// Prints the state of every service consumer (test diagnostics).
    pub async fn print_consumers(&self) {
        let Ok(client) = async_nats::connect(self.servers.nats.url()).await else {
            return;
        };
        let js = async_nats::jetstream::new(client);
        use exo_types::subjects as s;
        for (stream, consumer) in s::service_consumers() {
            let info = match js
                .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                    &consumer, stream,
                )
                .await
            {
                Ok(mut c) => c
                    .info()
                    .await
                    .map(|i| {
                        format!(
                            "pending={} ack_pending={} redelivered={} waiting={}",
                            i.num_pending, i.num_ack_pending, i.num_redelivered, i.num_waiting
                        )
                    })
                    .unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            eprintln!("consumer {stream}/{consumer}: {info}");
        }
    }

    /// Every state of a run.
    pub async fn states(&self, run_id: &str) -> anyhow::Result<Vec<StateDoc>> {
        Ok(self
            .store
            .states()
            .find(doc! {"run_id": run_id})
            .await?
            .try_collect()
            .await?)
    }
}

/// Checks the invariants every settled run must satisfy (the one checker,
/// [`exo_test_support::invariants::check_run`]) and returns its states.
pub async fn assert_run_consistent(stack: &Stack, run: &RunDoc) -> anyhow::Result<Vec<StateDoc>> {
    Ok(
        exo_test_support::invariants::check_run(&stack.store, &run.run_id)
            .await?
            .states,
    )
}
