//! Many writes in one round trip, and many reads by id in one query.
//!
//! * [`update_statements`]: several conditional updates of one collection as
//!   one `update` command (the standard MongoDB write command, which takes a
//!   list of statements), inside the caller's session and transaction.
//! * [`Loader`]: concurrent look-ups of documents by `_id` share one
//!   `find({_id: {$in: [...]}})` while another is in flight (natural
//!   batching: no added latency when idle).

use std::collections::HashMap;
use std::sync::Mutex;

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use mongodb::{ClientSession, Collection, Database};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

/// One statement of an `update` command.
#[derive(Debug, Clone)]
pub struct Statement {
    /// Filter (`q`).
    pub filter: Document,
    /// Update document (`u`).
    pub update: Document,
    /// Whether it may update several documents (`multi`).
    pub multi: bool,
}

/// Largest `updates` array sent in one command, in bytes (well under the
/// 16 MiB command limit, which large outputs could otherwise reach).
const MAX_COMMAND_BYTES: usize = 8 * 1024 * 1024;

/// Runs `statements` on `collection` as few `update` commands as fit
/// [`MAX_COMMAND_BYTES`], in order, in `session` (and its transaction).
/// Returns the number of documents matched by all statements together
/// (MongoDB reports only the sum; callers that need per-statement counts
/// must make each statement's filter select at most its expected count,
/// e.g. by `_id`).
pub async fn update_statements(
    db: &Database,
    collection: &str,
    session: &mut ClientSession,
    statements: &[Statement],
) -> Result<u64, mongodb::error::Error> {
    let mut matched = 0u64;
    let mut batch: Vec<Bson> = Vec::new();
    let mut bytes = 0usize;
    for st in statements {
        let one = doc! {"q": st.filter.clone(), "u": st.update.clone(), "multi": st.multi};
        let size = mongodb::bson::to_vec(&one).map_or(0, |v| v.len());
        if !batch.is_empty() && bytes + size > MAX_COMMAND_BYTES {
            matched += send(db, collection, session, std::mem::take(&mut batch)).await?;
            bytes = 0;
        }
        bytes += size;
        batch.push(Bson::Document(one));
    }
    if !batch.is_empty() {
        matched += send(db, collection, session, batch).await?;
    }
    Ok(matched)
}

async fn send(
    db: &Database,
    collection: &str,
    session: &mut ClientSession,
    updates: Vec<Bson>,
) -> Result<u64, mongodb::error::Error> {
    let reply = db
        .run_command(doc! {"update": collection, "updates": updates, "ordered": true})
        .session(session)
        .await?;
    if let Ok(errors) = reply.get_array("writeErrors")
        && let Some(Bson::Document(first)) = errors.first()
    {
        let code = first.get_i32("code").unwrap_or_default();
        let message = first.get_str("errmsg").unwrap_or("write error").to_string();
        return Err(mongodb::error::Error::custom(WriteError { code, message }));
    }
    Ok(match reply.get("n") {
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or_default(),
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or_default(),
        Some(Bson::Double(n)) => *n as u64,
        _ => 0,
    })
}

/// A write error reported inside an `update` command's reply.
#[derive(Debug, thiserror::Error)]
#[error("write error {code}: {message}")]
pub struct WriteError {
    /// Server error code.
    pub code: i32,
    /// Server message.
    pub message: String,
}

type Reply<T> = Result<Option<T>, String>;

/// Batches concurrent look-ups by `_id` on one collection: a caller that
/// finds no query in flight runs one for every id queued so far; callers
/// arriving meanwhile queue theirs for the next query.
pub struct Loader<T: Send + Sync> {
    collection: Collection<T>,
    pending: Mutex<Vec<(ObjectId, oneshot::Sender<Reply<T>>)>>,
    running: tokio::sync::Mutex<()>,
    queries: std::sync::atomic::AtomicU64,
}

impl<T> Loader<T>
where
    T: DeserializeOwned + Clone + Send + Sync + Unpin + HasId + 'static,
{
    /// A loader over `collection`.
    pub fn new(collection: Collection<T>) -> Self {
        Self {
            collection,
            pending: Mutex::new(Vec::new()),
            running: tokio::sync::Mutex::new(()),
            queries: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Shared queries run so far (each served one or more look-ups).
    pub fn queries(&self) -> u64 {
        self.queries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The document with `_id` `id`, if any.
    pub async fn get(&self, id: ObjectId) -> Result<Option<T>, crate::Error> {
        let (tx, mut rx) = oneshot::channel();
        self.lock_pending().push((id, tx));
        let guard = self.running.lock().await;
        match rx.try_recv() {
            // Served by the query that ran while we waited.
            Ok(reply) => return reply.map_err(load_error),
            // That query failed or was dropped: read alone.
            Err(oneshot::error::TryRecvError::Closed) => {
                drop(guard);
                return Ok(self.collection.find_one(doc! {"_id": id}).await?);
            }
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let batch = std::mem::take(&mut *self.lock_pending());
        self.run(batch).await;
        drop(guard);
        match rx.await {
            Ok(reply) => reply.map_err(load_error),
            Err(_) => Ok(self.collection.find_one(doc! {"_id": id}).await?),
        }
    }

    /// One query for `batch`; every caller gets its document (or the error).
    async fn run(&self, batch: Vec<(ObjectId, oneshot::Sender<Reply<T>>)>) {
        self.queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ids: Vec<ObjectId> = {
            let mut ids: Vec<ObjectId> = batch.iter().map(|(id, _)| *id).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let found: Result<HashMap<ObjectId, T>, String> = async {
            let mut cur = self
                .collection
                .find(doc! {"_id": {"$in": &ids}})
                .await
                .map_err(|e| e.to_string())?;
            let mut out = HashMap::with_capacity(ids.len());
            while let Some(d) = cur.try_next().await.map_err(|e| e.to_string())? {
                out.insert(d.id(), d);
            }
            Ok(out)
        }
        .await;
        for (id, tx) in batch {
            let reply = match &found {
                Ok(map) => Ok(map.get(&id).cloned()),
                Err(e) => Err(e.clone()),
            };
            let _ = tx.send(reply);
        }
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<(ObjectId, oneshot::Sender<Reply<T>>)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A shared query's failure, as seen by each caller it served.
#[derive(Debug, thiserror::Error)]
#[error("batched look-up failed: {0}")]
pub struct LoadError(pub String);

fn load_error(message: String) -> crate::Error {
    crate::Error::Mongo(mongodb::error::Error::custom(LoadError(message)))
}

/// A document with an `ObjectId` `_id`.
pub trait HasId {
    /// Its `_id`.
    fn id(&self) -> ObjectId;
}

impl HasId for crate::StateDoc {
    fn id(&self) -> ObjectId {
        self.id
    }
}
