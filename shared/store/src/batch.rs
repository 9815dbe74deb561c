//! Many writes in one round trip, and many reads by id in one query.
//!
//! * [`update_statements`]: several conditional updates of one collection as
//!   one `update` command (the standard MongoDB write command, which takes a
//!   list of statements), inside the caller's session and transaction.
//! * [`Batcher`]: natural batching. A caller that finds no batch in flight
//!   runs one at once with every request queued so far; callers arriving
//!   meanwhile queue theirs for the next. No one waits for a batch to fill,
//!   so there is no added latency when idle. Built on it:
//!   * [`Loader`]: concurrent look-ups by `_id` share one `find`;
//!   * [`Claimer`]: the scheduler's concurrent claims share one `update`
//!     and one `find`;
//!   * [`RunCreator`]: concurrent new runs share one transaction.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use mongodb::{ClientSession, Collection, Database};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

/// One statement of an `update` command (borrowed: it is copied once, into
/// the command).
#[derive(Debug, Clone, Copy)]
pub struct Statement<'a> {
    /// Filter (`q`).
    pub filter: &'a Document,
    /// Update document (`u`).
    pub update: &'a Document,
    /// Whether it may update several documents (`multi`).
    pub multi: bool,
}

/// Largest `updates` array sent in one command, in bytes (well under the
/// 16 MiB command limit, which large outputs could otherwise reach).
const MAX_COMMAND_BYTES: usize = 8 * 1024 * 1024;

/// Runs `statements` on `collection` as few `update` commands as fit
/// 8 MiB, in order, in `session` (and its transaction).
/// Returns the number of documents matched by all statements together
/// (MongoDB reports only the sum; callers that need per-statement counts
/// must make each statement's filter select at most its expected count,
/// e.g. by `_id`).
pub async fn update_statements(
    db: &Database,
    collection: &str,
    session: &mut ClientSession,
    statements: &[Statement<'_>],
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
    matched(&reply)
}

/// Documents matched according to an `update` command's reply, or its first
/// write error.
fn matched(reply: &Document) -> Result<u64, mongodb::error::Error> {
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

/// Natural batching of requests `Q` answered by `A` (see the module doc).
pub struct Batcher<Q, A> {
    pending: Mutex<Vec<(Q, oneshot::Sender<A>)>>,
    running: tokio::sync::Mutex<()>,
    batches: std::sync::atomic::AtomicU64,
}

impl<Q, A> Default for Batcher<Q, A> {
    fn default() -> Self {
        Self {
            pending: Mutex::new(Vec::new()),
            running: tokio::sync::Mutex::new(()),
            batches: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl<Q, A> Batcher<Q, A> {
    /// Submits `request`. If no batch is in flight, runs `run` at once on
    /// every queued request (answers in request order); otherwise waits for
    /// the batch in flight, which either took this request or leaves it to
    /// the next. `None` when the batch that took it was dropped before
    /// answering (its runner was cancelled): the caller does the work alone.
    pub async fn submit<F, Fut>(&self, request: Q, run: F) -> Option<A>
    where
        F: FnOnce(Vec<Q>) -> Fut,
        Fut: std::future::Future<Output = Vec<A>>,
    {
        let (tx, mut rx) = oneshot::channel();
        self.lock_pending().push((request, tx));
        let guard = self.running.lock().await;
        match rx.try_recv() {
            Ok(answer) => return Some(answer),
            Err(oneshot::error::TryRecvError::Closed) => return None,
            Err(oneshot::error::TryRecvError::Empty) => {}
        }
        let (requests, senders): (Vec<Q>, Vec<oneshot::Sender<A>>) =
            std::mem::take(&mut *self.lock_pending())
                .into_iter()
                .unzip();
        self.batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let answers = run(requests).await;
        for (tx, answer) in senders.into_iter().zip(answers) {
            let _ = tx.send(answer);
        }
        drop(guard);
        rx.await.ok()
    }

    /// Batches run so far (each served one or more requests).
    pub fn batches(&self) -> u64 {
        self.batches.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Vec<(Q, oneshot::Sender<A>)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Concurrent look-ups by `_id` on one collection share one query.
pub struct Loader<T: Send + Sync> {
    collection: Collection<T>,
    batcher: Batcher<ObjectId, Reply<T>>,
}

impl<T> Loader<T>
where
    T: DeserializeOwned + Clone + Send + Sync + Unpin + HasId + 'static,
{
    /// A loader over `collection`.
    pub fn new(collection: Collection<T>) -> Self {
        Self {
            collection,
            batcher: Batcher::default(),
        }
    }

    /// Shared queries run so far (each served one or more look-ups).
    pub fn queries(&self) -> u64 {
        self.batcher.batches()
    }

    /// The document with `_id` `id`, if any.
    pub async fn get(&self, id: ObjectId) -> Result<Option<T>, crate::Error> {
        match self.batcher.submit(id, |ids| self.find_all(ids)).await {
            Some(reply) => reply.map_err(load_error),
            None => Ok(self.collection.find_one(doc! {"_id": id}).await?),
        }
    }

    /// One query for `ids`; the answers in their order.
    async fn find_all(&self, ids: Vec<ObjectId>) -> Vec<Reply<T>> {
        answers(&ids, &find_by_ids(&self.collection, &ids).await)
    }
}

/// Each id's document (or the shared query's error), in the order of `ids`.
fn answers<T: Clone>(
    ids: &[ObjectId],
    found: &Result<HashMap<ObjectId, T>, String>,
) -> Vec<Reply<T>> {
    ids.iter()
        .map(|id| match found {
            Ok(map) => Ok(map.get(id).cloned()),
            Err(e) => Err(e.clone()),
        })
        .collect()
}

/// The documents of `ids` (distinct ids, one query).
async fn find_by_ids<T>(
    collection: &Collection<T>,
    ids: &[ObjectId],
) -> Result<HashMap<ObjectId, T>, String>
where
    T: DeserializeOwned + Send + Sync + HasId,
{
    let mut distinct = ids.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let mut cur = collection
        .find(doc! {"_id": {"$in": &distinct}})
        .await
        .map_err(|e| e.to_string())?;
    let mut out = HashMap::with_capacity(distinct.len());
    while let Some(d) = cur.try_next().await.map_err(|e| e.to_string())? {
        out.insert(d.id(), d);
    }
    Ok(out)
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
type ClaimRequest = (ObjectId, i64, i64);

/// Batches the scheduler's claims (CREATED and due → QUEUED): concurrent
/// claims share one multi-statement `update` (each statement conditional on
/// its own state, so each is atomic alone) and one `find` of the states
/// after it, instead of one `findAndModify` each. A claim records the
/// claiming message's sequence (`claim_seq`), so the state read back tells
/// each caller whether its message holds the claim.
pub struct Claimer {
    states: Collection<crate::StateDoc>,
    db: Database,
    batcher: Batcher<ClaimRequest, Reply<crate::StateDoc>>,
}

impl Claimer {
    /// A claimer over the store's `State` collection.
    pub fn new(store: &crate::Store) -> Self {
        Self {
            states: store.states(),
            db: store.db().clone(),
            batcher: Batcher::default(),
        }
    }

    /// Shared claim batches run so far.
    pub fn batches(&self) -> u64 {
        self.batcher.batches()
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
        match self.batcher.submit((id, seq, now), |r| self.run(r)).await {
            Some(reply) => reply.map_err(load_error),
            None => Err(load_error("the shared claim was interrupted".into())),
        }
    }

    async fn run(&self, batch: Vec<ClaimRequest>) -> Vec<Reply<crate::StateDoc>> {
        let updates: Vec<Bson> = batch
            .iter()
            .map(|(id, seq, now)| {
                Bson::Document(doc! {
                    "q": {"_id": id, "status": exo_types::status::StateStatus::Created.as_str(), "enqueue_after": {"$lte": now}},
                    "u": {"$set": {"status": exo_types::status::StateStatus::Queued.as_str(), "claim_seq": seq},
                          "$unset": {"parked": "", "queued_by": ""},
                          "$inc": {"attempt": 1i64}},
                })
            })
            .collect();
        let ids: Vec<ObjectId> = batch.iter().map(|(id, ..)| *id).collect();
        let read = async {
            let reply = self
                .db
                .run_command(doc! {"update": crate::STATES, "updates": updates, "ordered": false})
                .await
                .map_err(|e| e.to_string())?;
            if matched(&reply).map_err(|e| e.to_string())? > 0 {
                exo_faults::point("store.write").map_err(|e| e.to_string())?;
            }
            find_by_ids(&self.states, &ids).await
        }
        .await;
        answers(&ids, &read)
    }
}

/// A new run: its document, its store entries and its root state.
pub type NewRun = (crate::RunDoc, Vec<crate::StoreDoc>, crate::StateDoc);

/// Concurrent new runs share one transaction (inserting every run, store
/// entry and root state of the batch, and the root's transition in the
/// outbox, see [`crate::OutboxDoc::created`]); if that transaction fails (e.g. one
/// run exists already: a redelivered trigger), each run is created alone,
/// so each caller gets its own answer, duplicate keys included.
pub struct RunCreator {
    store: crate::Store,
    batcher: Batcher<NewRun, Result<(), mongodb::error::Error>>,
}

impl RunCreator {
    /// A creator over `store`.
    pub fn new(store: &crate::Store) -> Self {
        Self {
            store: store.clone(),
            batcher: Batcher::default(),
        }
    }

    /// Shared creation batches run so far.
    pub fn batches(&self) -> u64 {
        self.batcher.batches()
    }

    /// Creates the run, its store and its root state, all or nothing.
    /// An error when the batch that took it was dropped before answering
    /// (its runner was cancelled): whether the run exists is then unknown,
    /// and the caller's redelivery finds out.
    pub async fn create(&self, new: NewRun) -> Result<(), mongodb::error::Error> {
        match self.batcher.submit(new, |b| self.run(b)).await {
            Some(answer) => answer,
            None => Err(mongodb::error::Error::custom(LoadError(
                "the shared run creation was interrupted".into(),
            ))),
        }
    }

    async fn run(&self, batch: Vec<NewRun>) -> Vec<Result<(), mongodb::error::Error>> {
        if batch.len() > 1 && create_runs(&self.store, &batch).await.is_ok() {
            return batch.iter().map(|_| Ok(())).collect();
        }
        let mut out = Vec::with_capacity(batch.len());
        for one in batch.chunks(1) {
            out.push(create_runs(&self.store, one).await);
        }
        out
    }
}

/// One transaction inserting `runs` (documents, store entries, roots).
async fn create_runs(store: &crate::Store, runs: &[NewRun]) -> Result<(), mongodb::error::Error> {
    let ctx = (store.clone(), runs);
    crate::transaction(store, &ctx, |s, (store, runs)| {
        Box::pin(async move {
            store
                .runs()
                .insert_many(runs.iter().map(|(run, ..)| run))
                .session(&mut *s)
                .await?;
            if crate::state_events() {
                store
                    .outbox()
                    .insert_many(
                        runs.iter()
                            .map(|(.., root)| crate::OutboxDoc::created(root)),
                    )
                    .session(&mut *s)
                    .await?;
            }
            let entries: Vec<&crate::StoreDoc> = runs.iter().flat_map(|(_, e, _)| e).collect();
            if !entries.is_empty() {
                store
                    .store_entries()
                    .insert_many(entries)
                    .session(&mut *s)
                    .await?;
            }
            store
                .states()
                .insert_many(runs.iter().map(|(.., root)| root))
                .session(&mut *s)
                .await?;
            Ok(())
        })
    })
    .await
}
