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

/// A claim request: state `id`, due at `now`, by the message with stream
/// sequence `seq`.
type ClaimRequest = (ObjectId, i64, i64, oneshot::Sender<Reply<crate::StateDoc>>);

/// Batches the scheduler's claims (CREATED and due → QUEUED): concurrent
/// claims share one multi-statement `update` (each statement conditional on
/// its own state, so each is atomic alone) and one `find` of the states
/// after it, instead of one `findAndModify` each. A claim records the
/// claiming message's sequence (`claim_seq`), so the state read back tells
/// each caller whether its message holds the claim.
pub struct Claimer {
    states: Collection<crate::StateDoc>,
    db: Database,
    pending: Mutex<Vec<ClaimRequest>>,
    running: tokio::sync::Mutex<()>,
    batches: std::sync::atomic::AtomicU64,
}

impl Claimer {
    /// A claimer over the store's `State` collection.
    pub fn new(store: &crate::Store) -> Self {
        Self {
            states: store.states(),
            db: store.db().clone(),
            pending: Mutex::new(Vec::new()),
            running: tokio::sync::Mutex::new(()),
            batches: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Shared claim batches run so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Claims state `id` for the message `seq` if it is CREATED and due at
    /// `now`; returns the state as it is after the claim (None when it does
    /// not exist). The caller holds the claim when the state is QUEUED with
    /// `claim_seq == seq` (claimed now, or by an earlier delivery of the
    /// same message).
    pub async fn claim(
        &self,
        id: ObjectId,
        seq: i64,
        now: i64,
    ) -> Result<Option<crate::StateDoc>, crate::Error> {
        let (tx, mut rx) = oneshot::channel();
        self.lock_pending().push((id, seq, now, tx));
        let guard = self.running.lock().await;
        match rx.try_recv() {
            Ok(reply) => return reply.map_err(load_error),
            Err(oneshot::error::TryRecvError::Closed) => {
                drop(guard);
                return Err(load_error("the shared claim was interrupted".into()));
            }
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let batch = std::mem::take(&mut *self.lock_pending());
        let outcome = self.run(batch).await;
        drop(guard);
        outcome?;
        match rx.await {
            Ok(reply) => reply.map_err(load_error),
            Err(_) => Err(load_error("the shared claim was interrupted".into())),
        }
    }

    async fn run(&self, batch: Vec<ClaimRequest>) -> Result<(), crate::Error> {
        self.batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let updates: Vec<Bson> = batch
            .iter()
            .map(|(id, seq, now, _)| {
                Bson::Document(doc! {
                    "q": {"_id": id, "status": exo_types::status::StateStatus::Created.as_str(), "enqueue_after": {"$lte": now}},
                    "u": {"$set": {"status": exo_types::status::StateStatus::Queued.as_str(), "claim_seq": seq},
                          "$unset": {"parked": ""},
                          "$inc": {"attempt": 1i64}},
                })
            })
            .collect();
        let claimed = async {
            let reply = self
                .db
                .run_command(doc! {"update": crate::STATES, "updates": updates, "ordered": false})
                .await?;
            if let Ok(errors) = reply.get_array("writeErrors")
                && let Some(Bson::Document(first)) = errors.first()
            {
                let code = first.get_i32("code").unwrap_or_default();
                let message = first.get_str("errmsg").unwrap_or("write error").to_string();
                return Err(mongodb::error::Error::custom(WriteError { code, message }));
            }
            Ok(reply
                .get("n")
                .is_some_and(|n| !matches!(n, Bson::Int32(0) | Bson::Int64(0))))
        }
        .await;
        let ids: Vec<ObjectId> = batch.iter().map(|(id, ..)| *id).collect();
        let read = match claimed {
            Ok(any) => {
                if any {
                    exo_faults::point("store.write").map_err(|e| {
                        crate::Error::Mongo(mongodb::error::Error::custom(LoadError(e.to_string())))
                    })?;
                }
                let mut out = HashMap::with_capacity(ids.len());
                match self.states.find(doc! {"_id": {"$in": &ids}}).await {
                    Ok(mut cur) => loop {
                        match cur.try_next().await {
                            Ok(Some(d)) => {
                                out.insert(d.id, d);
                            }
                            Ok(None) => break Ok(out),
                            Err(e) => break Err(e.to_string()),
                        }
                    },
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        for (id, _, _, tx) in batch {
            let reply = match &read {
                Ok(map) => Ok(map.get(&id).cloned()),
                Err(e) => Err(e.clone()),
            };
            let _ = tx.send(reply);
        }
        Ok(())
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Vec<ClaimRequest>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}
