//! A handler-level test environment: real nats-server and MongoDB-wire
//! server, an [`Engine`] on them, one graph template `h/g` with registered
//! nodes, and helpers to seed a run and read it back. The service crates'
//! `tests/handlers.rs` call their handlers directly on it.

use exo_bus::Bus;
use exo_engine::{Engine, inputs};
use exo_store::mongodb::bson::{DateTime, Document, doc};
use exo_store::{GraphTemplateDoc, RegisteredNodeDoc, RunDoc, Store, oid};
use exo_types::graph::GraphSpec;
use exo_types::messages::StateCreated;
use exo_types::names::{Namespace, NodeName, RunId};
use exo_types::status::StateStatus;
use exo_types::{ids, time};
use futures::TryStreamExt;
use serde_json::{Map, Value, json};

use crate::{Servers, unique_db_name};

/// Namespace of the test graph.
pub const NS: &str = "h";

/// Servers and an engine with graph `h/g` stored and VALID.
pub struct HandlerEnv {
    /// Keeps the servers alive.
    pub servers: Servers,
    /// The engine the handlers run on.
    pub engine: Engine,
}

/// `split → work`, where `work` takes `split`'s output `x`.
pub fn split_work() -> Value {
    json!([
        {"node_name": "Split", "identifier": "split", "namespace": NS, "inputs": {}, "next_nodes": ["work"]},
        {"node_name": "Work", "identifier": "work", "namespace": NS, "inputs": {"x": "${{ split.outputs.x }}"}},
    ])
}

/// `n` outputs `{x: "item-<i>"}`.
pub fn outputs(n: usize) -> Vec<Map<String, Value>> {
    (0..n)
        .map(|i| {
            let mut m = Map::new();
            m.insert("x".into(), Value::String(format!("item-{i}")));
            m
        })
        .collect()
}

/// The 24-hex form of a deterministic id.
pub fn hex(bytes: [u8; 12]) -> String {
    oid(bytes).to_hex()
}

impl HandlerEnv {
    /// Starts servers and stores graph `h/g` with `nodes` (default retry
    /// policy) and the nodes `Split` and `Work`.
    pub async fn start(nodes: Value) -> anyhow::Result<Self> {
        Self::start_with(nodes, json!({})).await
    }

    /// As [`HandlerEnv::start`], with a retry policy.
    pub async fn start_with(nodes: Value, retry_policy: Value) -> anyhow::Result<Self> {
        crate::init_test_tracing();
        let servers = Servers::start().await?;
        let store = Store::connect(&servers.mongo.uri(), &unique_db_name("h"), "handlers").await?;
        store.ensure_indexes().await?;
        let bus = Bus::connect(&servers.nats.url(), "handlers").await?;
        bus.provision().await?;
        let spec: GraphSpec = serde_json::from_value(json!({"secrets": {}, "nodes": nodes}))?;
        let now = DateTime::now();
        store
            .graph_templates()
            .insert_one(GraphTemplateDoc {
                id: None,
                name: "g".into(),
                namespace: NS.into(),
                nodes: spec.nodes,
                validation_status: "VALID".into(),
                validation_errors: vec![],
                secrets: Default::default(),
                triggers: vec![],
                retry_policy: serde_json::from_value(retry_policy)?,
                store_config: Default::default(),
                webhooks: vec![],
                created_at: now,
                updated_at: now,
            })
            .await?;
        for (name, fields) in [("Split", vec![]), ("Work", vec!["x"])] {
            let props: Map<String, Value> = fields
                .iter()
                .map(|f| (f.to_string(), json!({"type": "string"})))
                .collect();
            store
                .registered_nodes()
                .insert_one(RegisteredNodeDoc {
                    id: None,
                    name: name.into(),
                    namespace: NS.into(),
                    runtime_name: "rt".into(),
                    runtime_namespace: NS.into(),
                    inputs_schema: json!({"type": "object", "properties": props, "required": fields}),
                    outputs_schema: json!({"type": "object"}),
                    secrets: vec![],
                    created_at: now,
                    updated_at: now,
                })
                .await?;
        }
        Ok(Self {
            servers,
            engine: Engine::new(store, bus),
        })
    }

    /// Seeds run `run_id` of `h/g` as the trigger service would, with its
    /// root in `status` (QUEUED means claimed: attempt 1) and due at
    /// `enqueue_after`. Returns the root's id.
    pub async fn seed_root(
        &self,
        run_id: &str,
        status: StateStatus,
        enqueue_after: i64,
    ) -> anyhow::Result<String> {
        let lg = self
            .engine
            .graphs
            .get(NS, "g")
            .await?
            .map_err(|u| anyhow::anyhow!("{u}"))?;
        self.engine.graphs.pin(&lg).await?;
        let now = time::now_ms();
        let mut root = inputs::new_state(
            oid(ids::root_state_id(run_id)),
            lg.graph.root(),
            &inputs::Placement {
                graph_ns: NS,
                run_id: &RunId::trusted(run_id),
                graph_name: "g",
                graph_version: Some(&lg.version),
            },
            Document::new(),
            Document::new(),
            false,
            now,
        );
        root.namespace_name = Namespace::trusted(NS);
        root.status = status;
        root.attempt = i64::from(status == StateStatus::Queued);
        root.enqueue_after = enqueue_after;
        self.engine
            .store
            .runs()
            .insert_one(RunDoc::pending(
                RunId::trusted(run_id),
                "g",
                Namespace::trusted(NS),
                DateTime::from_millis(now),
                &root,
            ))
            .await?;
        self.engine.store.states().insert_one(&root).await?;
        Ok(root.id.to_hex())
    }

    /// The `state.created` announcement of `state_id`.
    pub fn created(&self, state_id: &str, enqueue_after: i64) -> StateCreated {
        StateCreated {
            state_id: state_id.parse().expect("a 24-hex state id"),
            run_id: RunId::default(),
            node_name: NodeName::trusted("Split"),
            enqueue_after,
            generation: 0,
        }
    }

    /// States of `run_id` with `identifier`.
    pub async fn count(&self, run_id: &str, identifier: &str) -> anyhow::Result<u64> {
        Ok(self
            .engine
            .store
            .states()
            .count_documents(doc! {"run_id": run_id, "identifier": identifier})
            .await?)
    }

    /// Dispatch messages in the dispatch stream for `node` (a publication
    /// deduplicated by its `Nats-Msg-Id` is not counted twice).
    pub async fn dispatched(&self, node: &str) -> anyhow::Result<u64> {
        let subject = exo_types::subjects::dispatch(NS, node);
        let stream = self
            .engine
            .bus
            .jetstream()
            .get_stream(exo_types::subjects::STREAM_DISPATCH)
            .await?;
        let mut subjects = stream.info_with_subjects(&subject).await?;
        let mut n = 0;
        while let Some((s, count)) = subjects.try_next().await? {
            if s == subject {
                n += count as u64;
            }
        }
        Ok(n)
    }

    /// Status of a state.
    pub async fn status(&self, state_id: &str) -> anyhow::Result<StateStatus> {
        let id = oid(ids::parse_hex(state_id).ok_or_else(|| anyhow::anyhow!("bad id"))?);
        Ok(self
            .engine
            .store
            .state(id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("state {state_id} not found"))?
            .status)
    }
}
