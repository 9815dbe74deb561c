//! Cached, analysed graph templates.
//!
//! A template is loaded with the registered nodes it uses, analysed once, and
//! kept for [`CACHE_TTL`]; an upsert is therefore seen by running runs within
//! that time (Exosphere reads the latest template on every step as well).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exo_store::mongodb::bson::doc;
use exo_store::{GraphTemplateDoc, Store};
use exo_types::graph::{Graph, input_fields};
use futures::TryStreamExt;

/// How long a loaded template is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(1);

/// A registered node as the engine needs it.
pub struct NodeSchema {
    /// Input field names (the schema's `properties`, in order).
    pub input_fields: Vec<String>,
    /// Compiled input schema, when it compiles.
    pub validator: Option<jsonschema::Validator>,
}

/// An analysed template with its registered nodes.
pub struct LoadedGraph {
    /// The stored document.
    pub doc: GraphTemplateDoc,
    /// The analysis.
    pub graph: Graph,
    /// Registered nodes keyed by (namespace, node name).
    pub nodes: HashMap<(String, String), NodeSchema>,
    /// Version id ([`version_of`]); runs record it and keep executing it.
    pub version: String,
}

/// Why a template cannot be used. These are permanent for the message at hand.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    /// No template with that name.
    #[error("Graph template not found for namespace {0} and graph {1}")]
    NotFound(String, String),
    /// The template is not VALID.
    #[error("Graph template is in a non-validating state: {0}")]
    NotValid(String),
    /// The stored template does not analyse (edited outside the API).
    #[error("Graph template is invalid: {0}")]
    Analysis(String),
}

/// Result of a load: the graph, or why it cannot be used, or a store error.
pub type Loaded = Result<Result<Arc<LoadedGraph>, Unusable>, exo_store::Error>;

type Entries = HashMap<(String, String), (Instant, Arc<LoadedGraph>)>;

/// Template cache shared by a service's handlers.
#[derive(Clone)]
pub struct GraphCache {
    store: Store,
    entries: Arc<Mutex<Entries>>,
    versions: Arc<Mutex<HashMap<String, Arc<LoadedGraph>>>>,
    pinned: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// Template versions cached at once.
pub const MAX_VERSIONS: usize = 256;

/// The version id of a template: `<namespace>:<name>:<sha-256 of what
/// executes>` (nodes, retry policy, store config).
pub fn version_of(doc: &GraphTemplateDoc) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&doc.nodes).unwrap_or_default());
    h.update(serde_json::to_vec(&doc.retry_policy).unwrap_or_default());
    h.update(serde_json::to_vec(&doc.store_config).unwrap_or_default());
    format!(
        "{}:{}:{}",
        doc.namespace,
        doc.name,
        &hex::encode(h.finalize())[..32]
    )
}

impl GraphCache {
    /// Empty cache over `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            entries: Arc::default(),
            versions: Arc::default(),
            pinned: Arc::default(),
        }
    }

    /// The current template `namespace`/`name` (cached for [`CACHE_TTL`]).
    pub async fn get(&self, namespace: &str, name: &str) -> Loaded {
        let key = (namespace.to_string(), name.to_string());
        if let Ok(map) = self.entries.lock()
            && let Some((at, g)) = map.get(&key)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(Ok(g.clone()));
        }
        let Some(doc) = self.store.graph_template(namespace, name).await? else {
            return Ok(Err(Unusable::NotFound(namespace.into(), name.into())));
        };
        let loaded = match self.load(doc).await? {
            Ok(l) => l,
            Err(u) => return Ok(Err(u)),
        };
        if let Ok(mut map) = self.entries.lock() {
            map.insert(key, (Instant::now(), loaded.clone()));
        }
        Ok(Ok(loaded))
    }

    /// The template version a run was started with (see
    /// [`GraphCache::pin`]); versions are immutable, so they are cached
    /// without expiry (at most [`MAX_VERSIONS`] at once). A version that is
    /// not stored (a database written before versions existed) falls back to
    /// the current template.
    pub async fn get_version(&self, namespace: &str, name: &str, version: &str) -> Loaded {
        if let Ok(map) = self.versions.lock()
            && let Some(g) = map.get(version)
        {
            return Ok(Ok(g.clone()));
        }
        let found = self
            .store
            .graph_versions()
            .find_one(doc! {"_id": version})
            .await
            .map_err(exo_store::Error::from)?;
        let Some(template) = found.and_then(|d| d.get_document("template").ok().cloned()) else {
            return self.get(namespace, name).await;
        };
        let doc: GraphTemplateDoc = exo_store::mongodb::bson::from_document(template)
            .map_err(|e| exo_store::Error::Bson(e.to_string()))?;
        let loaded = match self.load(doc).await? {
            Ok(l) => l,
            Err(u) => return Ok(Err(u)),
        };
        if let Ok(mut map) = self.versions.lock() {
            if map.len() >= MAX_VERSIONS {
                map.clear();
            }
            map.insert(version.to_string(), loaded.clone());
        }
        Ok(Ok(loaded))
    }

    /// Stores `graph`'s version (once per process and version), so runs
    /// started with it keep executing it after the template is replaced.
    pub async fn pin(&self, graph: &LoadedGraph) -> Result<(), exo_store::Error> {
        if self
            .pinned
            .lock()
            .map(|p| p.contains(&graph.version))
            .unwrap_or(false)
        {
            return Ok(());
        }
        let mut template = graph.doc.clone();
        template.id = None;
        let template = exo_store::mongodb::bson::to_document(&template)
            .map_err(|e| exo_store::Error::Bson(e.to_string()))?;
        self.store
            .graph_versions()
            .update_one(
                doc! {"_id": &graph.version},
                doc! {"$setOnInsert": {"template": template, "namespace": &graph.doc.namespace,
                "name": &graph.doc.name}},
            )
            .upsert(true)
            .await
            .map_err(exo_store::Error::from)?;
        if let Ok(mut p) = self.pinned.lock() {
            if p.len() >= MAX_VERSIONS {
                p.clear();
            }
            p.insert(graph.version.clone());
        }
        Ok(())
    }

    async fn load(
        &self,
        doc: GraphTemplateDoc,
    ) -> Result<Result<Arc<LoadedGraph>, Unusable>, exo_store::Error> {
        if doc.validation_status != exo_types::status::ValidationStatus::Valid.as_str() {
            return Ok(Err(Unusable::NotValid(doc.validation_status.clone())));
        }
        let graph = match Graph::analyse(&doc.spec()) {
            Ok(g) => g,
            Err(errors) => return Ok(Err(Unusable::Analysis(errors.join("\n")))),
        };
        let mut nodes = HashMap::new();
        let mut ors = Vec::new();
        for n in &doc.nodes {
            ors.push(doc! {"namespace": &n.namespace, "name": &n.node_name});
        }
        if !ors.is_empty() {
            let mut cursor = self
                .store
                .registered_nodes()
                .find(doc! {"$or": ors})
                .await
                .map_err(exo_store::Error::from)?;
            while let Some(rn) = cursor.try_next().await.map_err(exo_store::Error::from)? {
                let validator = jsonschema::validator_for(&rn.inputs_schema).ok();
                nodes.insert(
                    (rn.namespace.clone(), rn.name.clone()),
                    NodeSchema {
                        input_fields: input_fields(&rn.inputs_schema),
                        validator,
                    },
                );
            }
        }
        let version = version_of(&doc);
        Ok(Ok(Arc::new(LoadedGraph {
            doc,
            graph,
            nodes,
            version,
        })))
    }

    /// Drops a cached entry (after an upsert in the same process).
    pub fn invalidate(&self, namespace: &str, name: &str) {
        if let Ok(mut map) = self.entries.lock() {
            map.remove(&(namespace.to_string(), name.to_string()));
        }
    }
}
