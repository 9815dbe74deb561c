//! The runtime: registration, consume loops, heartbeats, result publishing.

use exo_types::ids::StateId;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use exo_bus::{Bus, Outgoing};
use exo_types::messages::{self as m, Dispatch, Errored, Executed, Pruned, Requeue};
use exo_types::subjects::{self, ResultKind};
use futures::StreamExt;
use futures::future::{AbortHandle, Abortable};
use tokio_util::sync::CancellationToken;

/// How many cancelled run ids a runtime remembers.
const CANCELLED_MEMORY: usize = 10_000;

/// Executions in flight by run id, so a run cancellation can stop them, and
/// the recently cancelled runs, whose queued dispatches are dropped unrun.
#[derive(Default)]
struct Inflight {
    next: std::sync::atomic::AtomicU64,
    by_run: std::sync::Mutex<std::collections::HashMap<String, Vec<(u64, AbortHandle)>>>,
    cancelled: std::sync::Mutex<(
        std::collections::HashSet<String>,
        std::collections::VecDeque<String>,
    )>,
}

impl Inflight {
    fn is_cancelled(&self, run_id: &str) -> bool {
        self.cancelled.lock().is_ok_and(|c| c.0.contains(run_id))
    }

    fn register(&self, run_id: &str, handle: AbortHandle) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut m) = self.by_run.lock() {
            m.entry(run_id.to_string()).or_default().push((id, handle));
        }
        id
    }

    fn remove(&self, run_id: &str, id: u64) {
        if let Ok(mut m) = self.by_run.lock()
            && let Some(v) = m.get_mut(run_id)
        {
            v.retain(|(i, _)| *i != id);
            if v.is_empty() {
                m.remove(run_id);
            }
        }
    }

    fn abort_run(&self, run_id: &str) -> usize {
        if let Ok(mut c) = self.cancelled.lock()
            && c.0.insert(run_id.to_string())
        {
            c.1.push_back(run_id.to_string());
            if c.1.len() > CANCELLED_MEMORY
                && let Some(old) = c.1.pop_front()
            {
                c.0.remove(&old);
            }
        }
        let handles = self
            .by_run
            .lock()
            .ok()
            .and_then(|mut m| m.remove(run_id))
            .unwrap_or_default();
        for (_, h) in &handles {
            h.abort();
        }
        handles.len()
    }
}

use crate::node::{Context, DynNode, Report};

/// Runtime errors (start-up only; per-message problems are reported as
/// errored results or logged).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name is not a valid subject token.
    #[error(transparent)]
    Name(#[from] exo_types::names::Error),
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] exo_bus::Error),
    /// Registering the nodes with the API failed.
    #[error("could not register nodes: {0}")]
    Register(String),
    /// Two nodes have the same name.
    #[error("node {0} is registered twice")]
    Duplicate(String),
}

/// Where and how to register node schemas (`PUT /v0/namespace/{ns}/nodes/`).
#[derive(Debug, Clone)]
pub struct Registration {
    /// Base URL of the `api` service, e.g. `http://127.0.0.1:8000`.
    pub api_url: String,
    /// API key (`x-api-key`).
    pub api_key: String,
}

/// Builder of a [`Runtime`].
pub struct Builder {
    namespace: String,
    name: String,
    nats_url: String,
    nats_auth: exo_bus::NatsAuth,
    registration: Option<Registration>,
    nodes: Vec<Arc<dyn DynNode>>,
    concurrency: usize,
    ack_wait: Duration,
    max_deliveries: i64,
}

impl Builder {
    /// Deliveries of one dispatch after which it is reported errored without
    /// running it again (default 10): protects against a node that crashes
    /// its runtime every time (a poison dispatch). The graph's retry policy
    /// then decides.
    pub fn max_deliveries(mut self, n: i64) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// NATS URL (default `nats://127.0.0.1:4222`).
    pub fn nats_url(mut self, url: impl Into<String>) -> Self {
        self.nats_url = url.into();
        self
    }

    /// NATS credentials and TLS (`.creds` file, nkey, user and password,
    /// token, CA and client certificates); none by default.
    pub fn nats_auth(mut self, auth: exo_bus::NatsAuth) -> Self {
        self.nats_auth = auth;
        self
    }

    /// Registers the node schemas with the API at start-up.
    pub fn register_with(mut self, api_url: impl Into<String>, api_key: impl Into<String>) -> Self {
        self.registration = Some(Registration {
            api_url: api_url.into(),
            api_key: api_key.into(),
        });
        self
    }

    /// Adds a node.
    pub fn node(mut self, node: impl DynNode) -> Self {
        self.nodes.push(Arc::new(node));
        self
    }

    /// Executions at once, per node (default 8).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How long a dispatch stays with this runtime without a heartbeat before
    /// it is redelivered elsewhere (default 30 s; heartbeats go every third).
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d.max(Duration::from_secs(1));
        self
    }

    /// Finishes the builder.
    pub fn build(self) -> Runtime {
        Runtime {
            cfg: Arc::new(self),
        }
    }
}

/// A runtime process serving some nodes of one namespace.
#[derive(Clone)]
pub struct Runtime {
    cfg: Arc<Builder>,
}

impl Runtime {
    /// Starts a builder for `namespace`, naming this runtime `name`.
    pub fn builder(namespace: impl Into<String>, name: impl Into<String>) -> Builder {
        Builder {
            namespace: namespace.into(),
            name: name.into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_auth: exo_bus::NatsAuth::default(),
            registration: None,
            nodes: Vec::new(),
            concurrency: 8,
            ack_wait: exo_bus::DISPATCH_ACK_WAIT,
            max_deliveries: 10,
        }
    }

    /// Registers the nodes (when configured), then serves them until
    /// `shutdown` is cancelled; executions in flight finish first.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), Error> {
        self.run_with_ready(shutdown, || {}).await
    }

    /// Like [`Runtime::run`], calling `ready` once the nodes are registered
    /// and every queue is being consumed.
    pub async fn run_with_ready(
        &self,
        shutdown: CancellationToken,
        ready: impl FnOnce(),
    ) -> Result<(), Error> {
        let cfg = &self.cfg;
        exo_types::names::validate_token("namespace", &cfg.namespace)?;
        let mut seen = std::collections::HashSet::new();
        for n in &cfg.nodes {
            exo_types::names::validate_token("node name", n.name())?;
            if !seen.insert(n.name().to_string()) {
                return Err(Error::Duplicate(n.name().to_string()));
            }
        }
        if let Some(reg) = &cfg.registration {
            self.register(reg).await?;
        }
        let name = format!("exo-runtime-{}", cfg.name);
        let bus = Bus::connect_with(&cfg.nats_url, &name, &cfg.nats_auth).await?;
        // The services create the streams; a runtime whose NATS permissions
        // allow only its own subjects (docs/security.md) cannot, and needs not.
        if let Err(error) = bus.provision().await {
            tracing::info!(%error, "Could not provision the streams (the services do); going on.");
        }
        let inflight = Arc::new(Inflight::default());
        stop_cancelled_runs(&bus, &cfg.namespace, inflight.clone(), shutdown.clone()).await?;
        let mut tasks = Vec::new();
        for node in &cfg.nodes {
            let Some(consumer) = bind_dispatch(&bus, cfg, node.name(), &shutdown).await else {
                return Ok(());
            };
            tasks.push(tokio::spawn(serve_node(
                bus.clone(),
                self.cfg.clone(),
                node.clone(),
                consumer,
                shutdown.clone(),
                inflight.clone(),
            )));
        }
        tracing::info!(namespace = %cfg.namespace, runtime = %cfg.name, nodes = cfg.nodes.len(), "Runtime started.");
        ready();
        for t in tasks {
            let _ = t.await;
        }
        bus.drain().await;
        tracing::info!(runtime = %cfg.name, "Runtime stopped.");
        Ok(())
    }

    async fn register(&self, reg: &Registration) -> Result<(), Error> {
        let cfg = &self.cfg;
        let body = serde_json::json!({
            "runtime_name": cfg.name,
            "runtime_namespace": cfg.namespace,
            "nodes": cfg.nodes.iter().map(|n| n.registration()).collect::<Vec<_>>(),
        });
        let url = format!(
            "{}/v0/namespace/{}/nodes/",
            reg.api_url.trim_end_matches('/'),
            cfg.namespace
        );
        let resp = reqwest::Client::new()
            .put(&url)
            .header("x-api-key", &reg.api_key)
            .json(&body)
            .send()
            .await
            .map_err(|e| Error::Register(e.to_string()))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(Error::Register(format!("{status}: {text}")));
        }
        Ok(())
    }
}

async fn serve_node(
    bus: Bus,
    cfg: Arc<Builder>,
    node: Arc<dyn DynNode>,
    consumer: jetstream::consumer::PullConsumer,
    shutdown: CancellationToken,
    inflight: Arc<Inflight>,
) {
    while !shutdown.is_cancelled() {
        let messages = consumer
            .stream()
            .max_messages_per_batch(cfg.concurrency)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await;
        let messages = match messages {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(%error, node = node.name(), "Could not pull; retrying.");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        messages
            .take_until(shutdown.clone().cancelled_owned())
            .for_each_concurrent(cfg.concurrency, |item| {
                let bus = bus.clone();
                let node = node.clone();
                let cfg = cfg.clone();
                let inflight = inflight.clone();
                async move {
                    match item {
                        Ok(msg) => {
                            let name = format!("execute {}", node.name());
                            let span = exo_bus::trace::message_span(
                                &name,
                                &msg.subject,
                                msg.headers.as_ref(),
                            );
                            let run = handle(&bus, &cfg, &*node, &inflight, msg);
                            tracing::Instrument::instrument(run, span).await
                        }
                        Err(error) => tracing::debug!(%error, "Pull stream error."),
                    }
                }
            })
            .await;
    }
}

/// Run cancellations (`run.cancelled` events of the namespace) stop the
/// executions of that run, until `shutdown`.
async fn stop_cancelled_runs(
    bus: &Bus,
    namespace: &str,
    inflight: Arc<Inflight>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let mut cancels = bus
        .client()
        .subscribe(subjects::event(namespace, "run", "cancelled"))
        .await
        .map_err(|e| Error::Register(format!("subscribe to cancellations: {e}")))?;
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = cancels.next() => match m { Some(m) => m, None => return },
            };
            if let Ok(ev) = serde_json::from_slice::<exo_types::messages::RunEvent>(&msg.payload) {
                let n = inflight.abort_run(&ev.run_id);
                tracing::info!(exo.run_id = %ev.run_id, stopped = n, "Run cancelled; executions stopped.");
            }
        }
    });
    Ok(())
}

/// The dispatch queue of `node`. The services create the streams: a
/// runtime started first waits for them (`None` if `shutdown` comes
/// first).
async fn bind_dispatch(
    bus: &Bus,
    cfg: &Builder,
    node: &str,
    shutdown: &CancellationToken,
) -> Option<jetstream::consumer::PullConsumer> {
    let mut wait = Duration::from_millis(100);
    loop {
        match bus
            .dispatch_consumer(&cfg.namespace, node, Some(cfg.ack_wait))
            .await
        {
            Ok(c) => return Some(c),
            Err(error) => {
                tracing::warn!(%error, node,
                    "Cannot bind the dispatch queue yet (are the services started?); retrying.");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One dispatch: read, executed (unless its run was cancelled or it was
/// delivered too often), its result published, then acked; handed back
/// when the result cannot be published.
async fn handle(
    bus: &Bus,
    cfg: &Builder,
    node: &dyn DynNode,
    inflight: &Inflight,
    msg: jetstream::Message,
) {
    let Some(dispatch) = read_dispatch(bus, &msg).await else {
        return;
    };
    if inflight.is_cancelled(&dispatch.run_id) {
        tracing::debug!(state_id = %dispatch.state_id, "Dropping a dispatch of a cancelled run.");
        let _ = msg.ack().await;
        return;
    }
    let ctx = context(bus, cfg, &dispatch, &msg);
    let dispatch_id = dispatch.state_id;
    let heartbeat = {
        let every = cfg.ack_wait / 3;
        let acker = msg.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if acker.ack_with(AckKind::Progress).await.is_err() {
                    return;
                }
            }
        })
    };
    let report = if ctx.delivered > cfg.max_deliveries {
        Some(Report::Errored(format!(
            "dispatch delivered {} times without a result (the node crashed or hung its runtime)",
            ctx.delivered
        )))
    } else {
        let (handle, registration) = AbortHandle::new_pair();
        let id = inflight.register(&ctx.run_id, handle);
        let result = Abortable::new(node.run(dispatch.inputs, &ctx), registration).await;
        inflight.remove(&ctx.run_id, id);
        result.ok()
    };
    heartbeat.abort();
    let Some(report) = report else {
        // Stopped by a run cancellation: the state is already CANCELLED,
        // there is nothing to report.
        tracing::debug!(state_id = %ctx.state_id, "Execution stopped by a run cancellation.");
        let _ = msg.ack().await;
        return;
    };
    let published = match result_message(&cfg.namespace, &ctx, dispatch_id, report) {
        Ok(o) => bus.publish(o).await,
        Err(e) => Err(e),
    };
    match published {
        Ok(()) => {
            if let Err(error) = msg.ack().await {
                tracing::debug!(%error, "Could not ack a dispatch; it may run again.");
            }
        }
        Err(error) => {
            tracing::warn!(%error, state_id = %ctx.state_id, "Could not publish a result; handing the dispatch back.");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
    }
}

/// The dispatch a message carries (its payload may be in the object
/// store); `None` once the message is settled because it cannot be read.
async fn read_dispatch(bus: &Bus, msg: &jetstream::Message) -> Option<Dispatch> {
    let payload = match bus.payload_of(msg).await {
        Ok(p) => p,
        Err(exo_bus::PayloadError::Missing(object)) => {
            tracing::error!(%object, subject = %msg.subject, "Dispatch payload missing; terminating it.");
            let _ = msg.ack_with(AckKind::Term).await;
            return None;
        }
        Err(error) => {
            tracing::warn!(%error, subject = %msg.subject, "Could not read a dispatch payload; handing it back.");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return None;
        }
    };
    match serde_json::from_slice(&payload) {
        Ok(d) => Some(d),
        Err(error) => {
            tracing::error!(%error, subject = %msg.subject, "Malformed dispatch; terminating it.");
            let _ = msg.ack_with(AckKind::Term).await;
            None
        }
    }
}

/// What a node execution sees of its dispatch.
fn context(bus: &Bus, cfg: &Builder, dispatch: &Dispatch, msg: &jetstream::Message) -> Context {
    Context {
        state_id: dispatch.state_id.to_string(),
        run_id: dispatch.run_id.to_string(),
        graph_name: dispatch.graph_name.clone(),
        identifier: dispatch.identifier.clone(),
        attempt: dispatch.attempt,
        delivered: msg.info().map(|i| i.delivered).unwrap_or(1),
        published: msg.info().ok().map(|i| i.published.into()),
        secrets_access: cfg
            .registration
            .as_ref()
            .map(|r| crate::node::SecretsAccess {
                client: bus.client().clone(),
                namespace: cfg.namespace.clone(),
                api_key: r.api_key.clone(),
            }),
    }
}

/// The result message of an execution.
fn result_message(
    ns: &str,
    ctx: &Context,
    state_id: StateId,
    report: Report,
) -> Result<Outgoing, exo_bus::Error> {
    let attempt = ctx.attempt;
    let at = (ns, ctx.run_id.as_str(), ctx.state_id.as_str(), attempt);
    match report {
        Report::Executed(outputs) => outgoing(
            at,
            ResultKind::Executed,
            &Executed {
                state_id,
                attempt,
                outputs,
            },
        ),
        Report::Errored(error) => {
            tracing::debug!(state_id = %ctx.state_id, %error, "Node failed.");
            outgoing(
                at,
                ResultKind::Errored,
                &Errored {
                    state_id,
                    attempt,
                    error,
                },
            )
        }
        Report::Pruned(data) => outgoing(
            at,
            ResultKind::Pruned,
            &Pruned {
                state_id,
                attempt,
                data,
            },
        ),
        Report::Requeue(delay_ms) => outgoing(
            at,
            ResultKind::Requeue,
            &Requeue {
                state_id,
                attempt,
                delay_ms,
            },
        ),
    }
}

/// A result message: (namespace, run, state, attempt), kind and body.
fn outgoing<T: serde::Serialize>(
    (ns, run_id, state_id, attempt): (&str, &str, &str, u32),
    kind: ResultKind,
    body: &T,
) -> Result<Outgoing, exo_bus::Error> {
    Outgoing::json(
        subjects::result_of_run(ns, kind, run_id),
        m::result_msg_id(kind.token(), state_id, attempt),
        body,
    )
}
