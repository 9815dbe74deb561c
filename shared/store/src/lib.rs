//! `exo-store`: the MongoDB adapter.
//!
//! Collection and field names follow Exosphere's (`State`, `GraphTemplate`,
//! `RegisteredNode`, `Store`, `runs`, `DatabaseTriggers`) so that an existing
//! Exosphere database keeps working; fields the re-implementation adds are
//! listed in `ARCHITECTURE.md`. Only standard driver operations are used, so
//! MongoDB 7+ works unchanged.

pub mod batch;
pub mod docs;
pub mod filters;
pub mod indexes;
pub mod node_counts;

use mongodb::bson::{Document, doc, oid::ObjectId};
use mongodb::{Client, Collection, Database};

pub use docs::{
    GraphTemplateDoc, OutboxDoc, RegisteredNodeDoc, RunDoc, StateDoc, StateTransition, StoreDoc,
    TriggerDoc, UniteGroupDoc,
};
pub use mongodb;

/// Collection of state attempts.
pub const STATES: &str = "State";
/// Collection of graph templates.
pub const GRAPH_TEMPLATES: &str = "GraphTemplate";
/// Collection of registered nodes.
pub const REGISTERED_NODES: &str = "RegisteredNode";
/// Collection of per-run store entries.
pub const STORE: &str = "Store";
/// Collection of runs.
pub const RUNS: &str = "runs";
/// Collection of cron trigger occurrences.
pub const TRIGGERS: &str = "DatabaseTriggers";
/// Collection of unite group bookkeeping (ours).
pub const UNITE_GROUPS: &str = "UniteGroup";
/// Collection of template versions that runs execute (ours).
pub const GRAPH_VERSIONS: &str = "GraphVersions";
/// Collection of state transitions awaiting publication (ours).
pub const OUTBOX: &str = "Outbox";
/// Collection of webhook deliveries (ours).
pub const WEBHOOK_DELIVERIES: &str = "WebhookDeliveries";
/// Collection of API keys scoped to namespaces (ours; hashes, never keys).
pub const API_KEYS: &str = "ApiKeys";

/// Whether state transitions are recorded in the outbox and published as
/// lifecycle events: `EXO_STATE_EVENTS` (`false`, `0` or `off` turns them
/// off; on by default). Read once per process.
pub fn state_events() -> bool {
    static ON: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        !matches!(
            std::env::var("EXO_STATE_EVENTS").as_deref().map(str::trim),
            Ok("false" | "0" | "off" | "FALSE" | "OFF")
        )
    });
    *ON
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The driver reported an error.
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    /// A document could not be converted.
    #[error("document conversion: {0}")]
    Bson(String),
}

impl Error {
    /// True for unique-index violations (code 11000), which handlers treat as
    /// "already done".
    pub fn is_duplicate_key(&self) -> bool {
        match self {
            Self::Mongo(e) => is_duplicate_key(e),
            Self::Bson(_) => false,
        }
    }
}

/// True when a driver error is a unique-index violation (code 11000).
pub fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::InsertMany(im) => im
            .write_errors
            .as_ref()
            .is_some_and(|errs| errs.iter().any(|w| w.code == 11000)),
        ErrorKind::Command(c) => c.code == 11000,
        _ => e.to_string().contains("E11000"),
    }
}

/// Typed handles on every collection.
#[derive(Clone, Debug)]
pub struct Store {
    client: Client,
    db: Database,
}

/// Typed accessors of the collections: `name: DocType = COLLECTION;`.
macro_rules! collections {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $coll:expr;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self) -> Collection<$ty> {
                self.db.collection($coll)
            }
        )*
    };
}

impl Store {
    /// Connects and returns the handles; does not create indexes (see
    /// [`Store::ensure_indexes`]).
    pub async fn connect(uri: &str, database: &str, app_name: &str) -> Result<Self, Error> {
        let mut opts = mongodb::options::ClientOptions::parse(uri).await?;
        opts.app_name = Some(app_name.to_string());
        if opts.max_pool_size.is_none() {
            opts.max_pool_size = Some(64);
        }
        let client = Client::with_options(opts)?;
        let db = client.database(database);
        Ok(Self { client, db })
    }

    /// Pings the server.
    pub async fn ping(&self) -> Result<(), Error> {
        self.db.run_command(doc! {"ping": 1}).await?;
        Ok(())
    }

    /// Creates every index (idempotent).
    pub async fn ensure_indexes(&self) -> Result<(), Error> {
        indexes::ensure(self).await
    }

    /// The driver client (sessions, transactions).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The database.
    pub fn db(&self) -> &Database {
        &self.db
    }

    collections! {
        /// `State` collection.
        states: StateDoc = STATES;
        /// `State` collection as raw documents.
        states_raw: Document = STATES;
        /// `GraphVersions` collection (ours): `{_id: version, template, namespace, name}`.
        graph_versions: Document = GRAPH_VERSIONS;
        /// `runs` collection as raw documents (fields of ours not in [`RunDoc`]).
        runs_raw: Document = RUNS;
        /// `GraphTemplate` collection.
        graph_templates: GraphTemplateDoc = GRAPH_TEMPLATES;
        /// `RegisteredNode` collection.
        registered_nodes: RegisteredNodeDoc = REGISTERED_NODES;
        /// `Store` collection.
        store_entries: StoreDoc = STORE;
        /// `runs` collection.
        runs: RunDoc = RUNS;
        /// `DatabaseTriggers` collection.
        triggers: TriggerDoc = TRIGGERS;
        /// `UniteGroup` collection.
        unite_groups: UniteGroupDoc = UNITE_GROUPS;
        /// `Outbox` collection (ours).
        outbox: OutboxDoc = OUTBOX;
        /// `WebhookDeliveries` collection (ours), as raw documents.
        webhook_deliveries: Document = WEBHOOK_DELIVERIES;
        /// `ApiKeys` collection (ours), as raw documents.
        api_keys: Document = API_KEYS;
    }

    /// Loads one state by id.
    pub async fn state(&self, id: ObjectId) -> Result<Option<StateDoc>, Error> {
        Ok(self.states().find_one(doc! {"_id": id}).await?)
    }

    /// Loads one graph template.
    pub async fn graph_template(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<GraphTemplateDoc>, Error> {
        Ok(self
            .graph_templates()
            .find_one(doc! {"namespace": namespace, "name": name})
            .await?)
    }

    /// Loads one run by its run id.
    pub async fn run(&self, run_id: &str) -> Result<Option<RunDoc>, Error> {
        Ok(self.runs().find_one(doc! {"run_id": run_id}).await?)
    }
}

/// Converts a hex id to an ObjectId.
pub fn oid(bytes: [u8; 12]) -> ObjectId {
    ObjectId::from_bytes(bytes)
}

/// A transaction body: runs its writes on the session and returns a value.
/// It may run several times (transient errors retry the whole transaction).
pub type TxnBody<C, R> =
    for<'s> fn(
        &'s mut mongodb::ClientSession,
        &'s C,
    ) -> futures::future::BoxFuture<'s, Result<R, mongodb::error::Error>>;

/// Runs `body` in a transaction, retrying it on `TransientTransactionError`
/// (write conflicts) and retrying the commit on
/// `UnknownTransactionCommitResult`, for up to two minutes.
pub async fn transaction<C: Sync, R>(
    store: &Store,
    ctx: &C,
    body: TxnBody<C, R>,
) -> Result<R, mongodb::error::Error> {
    let span = tracing::info_span!(
        "mongo.transaction",
        otel.kind = "client",
        db.system = "mongodb"
    );
    tracing::Instrument::instrument(transaction_in(store, ctx, body), span).await
}

async fn transaction_in<C: Sync, R>(
    store: &Store,
    ctx: &C,
    body: TxnBody<C, R>,
) -> Result<R, mongodb::error::Error> {
    use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut session = store.client.start_session().await?;
    let mut backoff_ms = 1u64;
    'outer: loop {
        session.start_transaction().await?;
        let value = match body(&mut session, ctx).await {
            Ok(v) => v,
            Err(e) => {
                let _ = session.abort_transaction().await;
                if e.contains_label(TRANSIENT_TRANSACTION_ERROR)
                    && std::time::Instant::now() < deadline
                {
                    exo_metrics::transaction_retry(retry_reason(&e));
                    tokio_sleep_ms(backoff_ms).await;
                    backoff_ms = (backoff_ms * 2).min(100);
                    continue;
                }
                exo_metrics::transaction(false);
                return Err(e);
            }
        };
        loop {
            match session.commit_transaction().await {
                Ok(()) => {
                    exo_metrics::transaction(true);
                    exo_faults::point("store.commit").map_err(mongodb::error::Error::custom)?;
                    return Ok(value);
                }
                Err(e)
                    if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
                        && std::time::Instant::now() < deadline =>
                {
                    exo_metrics::transaction_retry("unknown_commit_result");
                }
                Err(e)
                    if e.contains_label(TRANSIENT_TRANSACTION_ERROR)
                        && std::time::Instant::now() < deadline =>
                {
                    exo_metrics::transaction_retry(retry_reason(&e));
                    tokio_sleep_ms(backoff_ms).await;
                    backoff_ms = (backoff_ms * 2).min(100);
                    continue 'outer;
                }
                Err(e) => {
                    exo_metrics::transaction(false);
                    return Err(e);
                }
            }
        }
    }
}

/// Why a transient transaction error repeats the transaction: a write
/// conflict (server code 112) or another transient failure.
fn retry_reason(e: &mongodb::error::Error) -> &'static str {
    let conflict = matches!(
        e.kind.as_ref(),
        mongodb::error::ErrorKind::Command(c) if c.code == 112
    ) || matches!(
        e.kind.as_ref(),
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) if w.code == 112
    );
    if conflict {
        "write_conflict"
    } else {
        "transient"
    }
}

async fn tokio_sleep_ms(ms: u64) {
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}
