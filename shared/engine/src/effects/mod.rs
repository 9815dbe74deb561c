//! Run counters, unite groups and run completion.
//!
//! A handler describes what it does to states as an [`Effects`] value:
//! conditional state updates, state inserts, and the transitions they imply.
//! [`apply`] writes all of it in **one transaction**: the state writes, the
//! `$inc` of the run counters, the `$inc` of every unite group the states
//! belong to, the unite states of groups that close, and the run's terminal
//! status. So a run's counters match its states at every read, a run reads
//! SUCCESS only once nothing is pending (never before a unite state exists),
//! and a redelivered message either finds its transaction committed (the
//! conditional updates match nothing and it is a no-op) or not at all.
//!
//! A state belongs to one unite group per (ancestor instance `a` in its
//! lineage, unite node `M` targeting `a`'s identifier). Pending states count
//! as `open`; a state counts out when it ends, and as `failed` when it ends
//! ERRORED, NEXT_CREATED_ERROR or PRUNED. Children are always counted in the
//! same transaction that counts their parent out, so a group never reaches
//! zero early. A group is armed when its target reaches SUCCESS; when `open`
//! reaches zero it closes: the unite state is created (ALL_DONE, or
//! ALL_SUCCESS without failures) or the run is marked to fail (ALL_SUCCESS
//! with failures) instead of hanging.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use exo_store::mongodb::bson::{Bson, DateTime, Document, doc, oid::ObjectId};
use exo_store::mongodb::options::ReturnDocument;
use exo_store::mongodb::{ClientSession, error::Error as MongoError};
use exo_store::node_counts::{self, NodeDeltas};
use exo_store::{OutboxDoc, StateDoc, StateTransition, Store, docs::unite_group_id};
use exo_types::status::{CounterGroup, RunStatus, StateStatus};
use futures::TryStreamExt;

use crate::graphs::LoadedGraph;

mod unites;

/// Returned (as a custom driver error) when a conditional update matched no
/// document: another delivery already applied it, or the run was cancelled.
#[derive(Debug, Clone, Copy)]
pub struct AlreadyApplied;

/// Changes to run counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// States added.
    pub total: i64,
    /// Change of CREATED + QUEUED + EXECUTED.
    pub pending: i64,
    /// Change of SUCCESS + PRUNED.
    pub success: i64,
    /// Change of ERRORED + NEXT_CREATED_ERROR.
    pub errored: i64,
    /// Change of RETRY_CREATED.
    pub retried: i64,
    /// Change of CANCELLED.
    pub cancelled: i64,
}

impl Counters {
    /// Counts one more state with status `s`.
    pub fn count(&mut self, s: StateStatus) {
        self.total += 1;
        *self.slot(s.group()) += 1;
    }

    /// The counters a run document holds.
    pub fn of_run(r: &exo_store::RunDoc) -> Self {
        Self {
            total: r.total_count,
            pending: r.pending_count,
            success: r.success_count,
            errored: r.errored_count,
            retried: r.retried_count,
            cancelled: r.cancelled_count,
        }
    }

    /// The counter of group `g`.
    pub fn slot(&mut self, g: CounterGroup) -> &mut i64 {
        match g {
            CounterGroup::Pending => &mut self.pending,
            CounterGroup::Success => &mut self.success,
            CounterGroup::Errored => &mut self.errored,
            CounterGroup::Retried => &mut self.retried,
            CounterGroup::Cancelled => &mut self.cancelled,
        }
    }

    fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// The run document's counter fields with these values (for `$inc`,
    /// or `$set` when a run is adopted), and `failed_unites`.
    pub(crate) fn run_fields(&self, failed_unites: i64) -> Document {
        doc! {
            "total_count": self.total,
            "pending_count": self.pending,
            "success_count": self.success,
            "errored_count": self.errored,
            "retried_count": self.retried,
            "cancelled_count": self.cancelled,
            "failed_unites": failed_unites,
        }
    }
}

#[derive(Debug, Clone)]
struct GroupDelta {
    target: ObjectId,
    unite: String,
    open: i64,
    failed: i64,
}

/// A state update that must match exactly `expect` documents.
#[derive(Debug, Clone)]
pub struct Update {
    /// Filter (must include the expected status).
    pub filter: Document,
    /// Update document.
    pub update: Document,
    /// Documents the filter must match.
    pub expect: u64,
}

impl Update {
    /// Whether the filter cannot match more than `expect` documents: `_id`
    /// is one id (and `expect` is 1) or `{$in: ids}` with `expect` distinct
    /// ids.
    fn selects_by_id(&self) -> bool {
        match self.filter.get("_id") {
            Some(Bson::ObjectId(_)) => self.expect == 1,
            Some(Bson::Document(d)) if d.len() == 1 => d.get_array("$in").is_ok_and(|ids| {
                let distinct: std::collections::HashSet<_> =
                    ids.iter().filter_map(Bson::as_object_id).collect();
                distinct.len() == ids.len() && ids.len() as u64 == self.expect
            }),
            _ => false,
        }
    }
}

/// Everything one transaction does to one run.
#[derive(Clone)]
pub struct Effects {
    graph: Option<Arc<LoadedGraph>>,
    run_id: String,
    counters: Counters,
    /// The same changes per graph node.
    nodes: NodeDeltas,
    groups: BTreeMap<String, GroupDelta>,
    updates: Vec<Update>,
    inserts: Vec<StateDoc>,
    reopen: bool,
    /// The status transitions made, for the outbox (stamped when applied).
    transitions: Vec<StateTransition>,
    /// The status each transition enters, for the metrics.
    entered: Vec<StateStatus>,
}

/// What a committed transaction produced.
#[derive(Debug, Default)]
pub struct Applied {
    /// States inserted in CREATED (children, unite states, retries): they
    /// need a hand-off to the scheduler.
    pub created: Vec<StateDoc>,
    /// States inserted already QUEUED (successors of a result, see
    /// `StateDoc::queued_by`): they need their dispatch published.
    pub queued: Vec<StateDoc>,
    /// Set when this transaction ended the run.
    pub finished: Option<RunStatus>,
    /// The transitions it committed to the outbox, to be published
    /// ([`crate::Engine::relay`]).
    pub outbox: Vec<OutboxDoc>,
    /// The run this transaction ended, for the metrics.
    ended: Option<exo_store::RunDoc>,
}

impl Applied {
    /// What inserting `inserts` hands on: CREATED states to the scheduler,
    /// QUEUED ones to their runtimes.
    pub fn inserted(inserts: &[StateDoc]) -> Self {
        let pick = |status| {
            inserts
                .iter()
                .filter(|st| st.status == status)
                .cloned()
                .collect()
        };
        Self {
            created: pick(StateStatus::Created),
            queued: pick(StateStatus::Queued),
            finished: None,
            outbox: Vec::new(),
            ended: None,
        }
    }
}

impl Effects {
    /// Empty effects on `run_id` of `graph`. Without a graph (its template
    /// is gone) no unite group is counted.
    pub fn new(graph: Option<Arc<LoadedGraph>>, run_id: &str) -> Self {
        Self {
            graph,
            run_id: run_id.to_string(),
            counters: Counters::default(),
            nodes: NodeDeltas::default(),
            groups: BTreeMap::new(),
            updates: Vec::new(),
            inserts: Vec::new(),
            reopen: false,
            transitions: Vec::new(),
            entered: Vec::new(),
        }
    }

    /// Brings a finished (SUCCESS or FAILED) run back to PENDING in the same
    /// transaction (a manual retry). A cancelled run stays cancelled and the
    /// transaction is not applied.
    pub fn reopen_run(&mut self) {
        self.reopen = true;
    }

    /// Adds `other` (effects on the same run) to these.
    fn merge(&mut self, other: &Effects) {
        if self.graph.is_none() {
            self.graph = other.graph.clone();
        }
        self.counters.total += other.counters.total;
        self.counters.pending += other.counters.pending;
        self.counters.success += other.counters.success;
        self.counters.errored += other.counters.errored;
        self.counters.retried += other.counters.retried;
        self.counters.cancelled += other.counters.cancelled;
        self.nodes.merge(&other.nodes);
        for (k, d) in &other.groups {
            let g = self.groups.entry(k.clone()).or_insert_with(|| GroupDelta {
                target: d.target,
                unite: d.unite.clone(),
                open: 0,
                failed: 0,
            });
            g.open += d.open;
            g.failed += d.failed;
        }
        self.updates.extend(other.updates.iter().cloned());
        self.inserts.extend(other.inserts.iter().cloned());
        self.reopen |= other.reopen;
        self.transitions.extend(other.transitions.iter().cloned());
        self.entered.extend_from_slice(&other.entered);
    }

    /// True when nothing would be written.
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
            && self.inserts.is_empty()
            && self.counters.is_zero()
            && self.nodes.is_zero()
            && self.groups.is_empty()
    }

    fn unites_targeting(&self, identifier: &str) -> Vec<String> {
        self.graph
            .as_ref()
            .map(|g| g.graph.unites_targeting(identifier).to_vec())
            .unwrap_or_default()
    }

    fn membership(&mut self, state: &StateDoc, open: i64, failed: i64) {
        for (ident, id) in state.parent_pairs() {
            for unite in self.unites_targeting(&ident) {
                let g = self
                    .groups
                    .entry(unite_group_id(&id, &unite))
                    .or_insert_with(|| GroupDelta {
                        target: id,
                        unite: unite.clone(),
                        open: 0,
                        failed: 0,
                    });
                g.open += open;
                g.failed += failed;
            }
        }
    }

    /// Counts a new state (inserted with its own status).
    pub fn insert(&mut self, state: StateDoc) {
        self.counters.total += 1;
        *self.counters.slot(state.status.group()) += 1;
        self.nodes.insert(&state);
        let open = i64::from(state.status.is_pending());
        let failed = i64::from(state.status.is_failure());
        self.membership(&state, open, failed);
        if state.status == StateStatus::Success {
            self.arm(&state);
        }
        self.transitioned(&state, None, state.status, state.error.as_deref());
        self.inserts.push(state);
    }

    /// Counts an existing state moving from `from` to `to` and records the
    /// conditional update that performs it (and the error it sets, for the
    /// transition's event).
    pub fn transition(
        &mut self,
        state: &StateDoc,
        from: StateStatus,
        to: StateStatus,
        update: Update,
    ) {
        self.count(state, from, to);
        let error = update
            .update
            .get_document("$set")
            .ok()
            .and_then(|set| set.get_str("error").ok());
        self.transitioned(state, Some(from), to, error);
        self.updates.push(update);
    }

    /// Counts an existing state moving from `from` to `to`; the caller
    /// records the update (e.g. one `update_many` for a whole chunk).
    pub fn count_transition(&mut self, state: &StateDoc, from: StateStatus, to: StateStatus) {
        self.count(state, from, to);
        self.transitioned(state, Some(from), to, None);
    }

    fn count(&mut self, state: &StateDoc, from: StateStatus, to: StateStatus) {
        *self.counters.slot(from.group()) -= 1;
        *self.counters.slot(to.group()) += 1;
        self.nodes.moved(state, from, to);
        if from.is_pending() && !to.is_pending() {
            self.membership(state, -1, i64::from(to.is_failure()));
        }
        if to == StateStatus::Success {
            self.arm(state);
        }
    }

    /// Records that `state` moves from `from` (`None`: it is created) to
    /// `to`, for its lifecycle event; counts nothing (see
    /// [`Effects::count_transition`]). Used with [`Effects::update`] for a
    /// status change that moves no counter (QUEUED → EXECUTED).
    pub fn transitioned(
        &mut self,
        state: &StateDoc,
        from: Option<StateStatus>,
        to: StateStatus,
        error: Option<&str>,
    ) {
        self.entered.push(to);
        if exo_store::state_events() {
            self.transitions
                .push(StateTransition::of(state, from, to, error, 0));
        }
    }

    /// Makes the transaction evaluate group `gid` (adoption of an Exosphere
    /// run whose group is complete but never fired).
    fn touch(&mut self, (gid, target, unite): crate::legacy::Touch) {
        self.groups.entry(gid).or_insert(GroupDelta {
            target,
            unite,
            open: 0,
            failed: 0,
        });
    }

    /// A conditional update that changes no counter (e.g. QUEUED → EXECUTED).
    pub fn update(&mut self, update: Update) {
        self.updates.push(update);
    }

    /// Touches the groups of which `target` is the target, so that they are
    /// evaluated (and close at once when the target has no descendants).
    fn arm(&mut self, target: &StateDoc) {
        for unite in self.unites_targeting(&target.identifier) {
            self.groups
                .entry(unite_group_id(&target.id, &unite))
                .or_insert_with(|| GroupDelta {
                    target: target.id,
                    unite: unite.clone(),
                    open: 0,
                    failed: 0,
                });
        }
    }
}

/// Group commit: concurrent [`apply`] calls for the same run in this process
/// queue here; whoever holds the run's commit lock applies everything queued
/// in one transaction. Without it, every completion of a wide fan-out would
/// write the same run and unite-group documents in its own transaction, and
/// they would abort each other on write conflicts.
struct RunQueue {
    pending: std::sync::Mutex<Vec<Waiter>>,
    commit: tokio::sync::Mutex<()>,
}

struct Waiter {
    fx: Effects,
    now_ms: i64,
    tx: tokio::sync::oneshot::Sender<Result<Option<Applied>, MongoError>>,
}

/// Most transactions merged into one.
const MAX_BATCH: usize = 64;

static QUEUES: std::sync::LazyLock<std::sync::Mutex<HashMap<String, Arc<RunQueue>>>> =
    std::sync::LazyLock::new(Default::default);

/// Applies `effects` in one transaction (retried on transient errors),
/// possibly merged with concurrent effects on the same run. Returns
/// `Ok(None)` when a conditional update found the work already done (or the
/// run cancelled).
pub async fn apply(
    store: &Store,
    effects: &Effects,
    now_ms: i64,
) -> Result<Option<Applied>, MongoError> {
    let queue = {
        let mut map = QUEUES.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(effects.run_id.clone())
            .or_insert_with(|| {
                Arc::new(RunQueue {
                    pending: std::sync::Mutex::new(Vec::new()),
                    commit: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    };
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    queue
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Waiter {
            fx: effects.clone(),
            now_ms,
            tx,
        });
    let mut mine = None;
    {
        // The holder of the lock commits what is queued, until its own
        // effects are committed: then it hands the lock on (every other
        // queued caller waits for it), so no caller leads forever under
        // sustained load.
        let _leader = queue.commit.lock().await;
        loop {
            if let Ok(r) = rx.try_recv() {
                mine = Some(r);
                break;
            }
            let batch: Vec<Waiter> = {
                let mut p = queue.pending.lock().unwrap_or_else(|p| p.into_inner());
                let n = p.len().min(MAX_BATCH);
                p.drain(..n).collect()
            };
            if batch.is_empty() {
                break;
            }
            commit_batch(store, batch).await;
        }
    }
    {
        // Forget idle queues (the map holds one reference, this call one).
        let mut map = QUEUES.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&queue) == 2
            && queue.pending.lock().map(|p| p.is_empty()).unwrap_or(false)
        {
            map.remove(&effects.run_id);
        }
    }
    match mine {
        Some(r) => r,
        None => rx
            .await
            .unwrap_or_else(|_| Err(MongoError::custom("transaction batch dropped"))),
    }
}

async fn apply_one(
    store: &Store,
    effects: &Effects,
    now_ms: i64,
) -> Result<Option<Applied>, MongoError> {
    let ctx = (store.clone(), effects, now_ms);
    let mut result = exo_store::transaction(store, &ctx, |s, (store, fx, now)| {
        Box::pin(apply_in(s, store, fx, *now))
    })
    .await;
    if matches!(&result, Err(e) if e.get_custom::<crate::legacy::NotAdopted>().is_some()) {
        result = exo_store::transaction(store, &ctx, |s, (store, fx, now)| {
            Box::pin(adopt_then_apply(s, store, fx, *now))
        })
        .await;
    }
    match result {
        Ok(a) => {
            record(effects, &a, now_ms);
            Ok(Some(a))
        }
        Err(e) if e.get_custom::<AlreadyApplied>().is_some() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Counts what a committed transaction did: the statuses its transitions
/// entered (the unite states it created among them) and the run it ended.
fn record(fx: &Effects, applied: &Applied, now_ms: i64) {
    let mut entered: HashMap<StateStatus, u64> = HashMap::new();
    for status in &fx.entered {
        *entered.entry(*status).or_default() += 1;
    }
    let inserted = fx
        .inserts
        .iter()
        .filter(|i| i.status == StateStatus::Created);
    let unites = applied.created.len().saturating_sub(inserted.count());
    *entered.entry(StateStatus::Created).or_default() += unites as u64;
    for (status, n) in entered {
        exo_service::metrics::state_transitions(status.as_str(), n);
    }
    if let (Some(run), Some(status)) = (&applied.ended, applied.finished) {
        crate::record_run_end(run, status, now_ms);
    }
}

/// Applies a batch merged; if the merged transaction cannot commit (one of
/// the effects was already applied, a duplicate, ...), applies each alone so
/// one cannot fail the others.
async fn commit_batch(store: &Store, mut batch: Vec<Waiter>) {
    if batch.len() > 1 {
        let now_ms = batch.iter().map(|w| w.now_ms).max().unwrap_or_default();
        let mut merged = batch[0].fx.clone();
        for w in &batch[1..] {
            merged.merge(&w.fx);
        }
        if let Ok(Some(applied)) = apply_one(store, &merged, now_ms).await {
            // Each caller gets the states it inserted; the first also gets
            // what the transaction added (unite states) and the run's end.
            let inserted: std::collections::HashSet<ObjectId> = batch
                .iter()
                .flat_map(|w| w.fx.inserts.iter().map(|i| i.id))
                .collect();
            let mut extras: Vec<StateDoc> = applied
                .created
                .into_iter()
                .filter(|c| !inserted.contains(&c.id))
                .collect();
            let mut finished = applied.finished;
            let mut outbox = applied.outbox;
            for w in batch.drain(..) {
                let mut mine = Applied::inserted(&w.fx.inserts);
                mine.created.append(&mut extras);
                mine.finished = finished.take();
                mine.outbox = std::mem::take(&mut outbox);
                let _ = w.tx.send(Ok(Some(mine)));
            }
            return;
        }
    }
    for w in batch {
        let r = apply_one(store, &w.fx, w.now_ms).await;
        let _ = w.tx.send(r);
    }
}

/// Adopts the Exosphere run `fx` is about, then applies `fx` and evaluates
/// the groups adoption found complete, all in session `s`.
pub(crate) async fn adopt_then_apply(
    s: &mut ClientSession,
    store: &Store,
    fx: &Effects,
    now_ms: i64,
) -> Result<Applied, MongoError> {
    let touches =
        crate::legacy::adopt_in(s, store, (fx.graph.as_deref(), &fx.run_id), now_ms).await?;
    let mut fx = fx.clone();
    for t in touches {
        fx.touch(t);
    }
    apply_in(s, store, &fx, now_ms).await
}

/// The conditional updates of a transaction, each of which must match
/// exactly its expected count (else [`AlreadyApplied`]). When every filter
/// selects by `_id` (at most its expected count can match), they go as one
/// multi-statement `update` command and the sum of matches is checked;
/// otherwise one command each.
async fn apply_updates(
    s: &mut ClientSession,
    store: &Store,
    updates: &[Update],
) -> Result<(), MongoError> {
    if updates.len() > 1 && updates.iter().all(Update::selects_by_id) {
        let statements: Vec<exo_store::batch::Statement> = updates
            .iter()
            .map(|u| exo_store::batch::Statement {
                filter: &u.filter,
                update: &u.update,
                multi: u.expect != 1,
            })
            .collect();
        let matched =
            exo_store::batch::update_statements(store.db(), exo_store::STATES, s, &statements)
                .await?;
        let expected: u64 = updates.iter().map(|u| u.expect).sum();
        if matched != expected {
            return Err(MongoError::custom(AlreadyApplied));
        }
        return Ok(());
    }
    for u in updates {
        let r = store
            .states()
            .update_many(u.filter.clone(), u.update.clone())
            .session(&mut *s)
            .await?;
        if r.matched_count != u.expect {
            return Err(MongoError::custom(AlreadyApplied));
        }
    }
    Ok(())
}

/// Everything `fx` does, inside transaction `s`: state updates and inserts,
/// unite groups counted (closing ones create their unite states), a
/// finished run reopened, the run's counters and, when nothing is pending
/// any more, its final status.
async fn apply_in(
    s: &mut ClientSession,
    store: &Store,
    fx: &Effects,
    now_ms: i64,
) -> Result<Applied, MongoError> {
    apply_updates(s, store, &fx.updates).await?;
    if !fx.inserts.is_empty() {
        store
            .states()
            .insert_many(&fx.inserts)
            .session(&mut *s)
            .await?;
    }
    let mut applied = Applied::inserted(&fx.inserts);
    let mut counters = fx.counters;
    let mut nodes = fx.nodes.clone();
    let (unite_states, failed_unites) = match fx.graph.as_deref() {
        Some(graph) => unites::count_unite_groups(s, store, fx, graph, now_ms).await?,
        None => (Vec::new(), 0),
    };
    if !unite_states.is_empty() {
        store
            .states()
            .insert_many(&unite_states)
            .session(&mut *s)
            .await?;
        counters.total += unite_states.len() as i64;
        counters.pending += unite_states.len() as i64;
        for u in &unite_states {
            nodes.insert(u);
        }
        unites::open_ancestor_groups(s, store, fx, &unite_states).await?;
        applied.created.extend(unite_states);
    }
    applied.outbox = outbox_in(s, store, fx, &applied.created, now_ms).await?;
    if fx.reopen {
        store
            .runs()
            .update_one(
                doc! {"run_id": &fx.run_id, "status": {"$in": [RunStatus::Success.as_str(), RunStatus::Failed.as_str()]}},
                doc! {"$set": {"status": RunStatus::Pending.as_str()}, "$unset": {"finished_at": ""}},
            )
            .session(&mut *s)
            .await?;
    }
    if (!counters.is_zero() || !nodes.is_zero() || failed_unites != 0)
        && let Some((status, run)) =
            count_run(s, store, fx, (&counters, &nodes), failed_unites, now_ms).await?
    {
        applied.finished = Some(status);
        applied.ended = Some(run);
    }
    Ok(applied)
}

/// Writes the transitions of `fx` and the creation of the unite states
/// the transaction added (those of `created` not inserted by `fx`) to the
/// outbox, inside transaction `s`, stamped `now_ms`.
async fn outbox_in(
    s: &mut ClientSession,
    store: &Store,
    fx: &Effects,
    created: &[StateDoc],
    now_ms: i64,
) -> Result<Vec<OutboxDoc>, MongoError> {
    if !exo_store::state_events() {
        return Ok(Vec::new());
    }
    let inserted: std::collections::HashSet<ObjectId> = fx.inserts.iter().map(|i| i.id).collect();
    let added = created.iter().filter(|c| !inserted.contains(&c.id));
    let mut events = fx.transitions.clone();
    events.extend(added.map(|u| StateTransition::of(u, None, u.status, None, now_ms)));
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let docs = OutboxDoc::batch(events, now_ms);
    store.outbox().insert_many(&docs).session(&mut *s).await?;
    Ok(docs)
}

/// Adds `counters` (and the same per graph node) to the run and ends it
/// when nothing is pending any more (returning its final status). A
/// cancelled run refuses the whole transaction; a run Exosphere started
/// must be adopted first.
async fn count_run(
    s: &mut ClientSession,
    store: &Store,
    fx: &Effects,
    (counters, nodes): (&Counters, &NodeDeltas),
    failed_unites: i64,
    now_ms: i64,
) -> Result<Option<(RunStatus, exo_store::RunDoc)>, MongoError> {
    let mut update = doc! {"$inc": counters.run_fields(failed_unites)};
    node_counts::add_operators(&mut update, nodes.operators(now_ms));
    let after = store
        .runs()
        .find_one_and_update(
            doc! {"run_id": &fx.run_id, "status": {"$ne": RunStatus::Cancelled.as_str()}, "cancelling": {"$ne": true}},
            update,
        )
        .return_document(ReturnDocument::After)
        .session(&mut *s)
        .await?;
    let Some(run) = after else {
        if store
            .runs()
            .find_one(doc! {"run_id": &fx.run_id})
            .session(&mut *s)
            .await?
            .is_some()
        {
            // The run was cancelled: nothing more happens in it.
            return Err(MongoError::custom(AlreadyApplied));
        }
        return Ok(None);
    };
    if run.status.is_none() {
        // Started by Exosphere: adopt it first (see `legacy`).
        return Err(MongoError::custom(crate::legacy::NotAdopted));
    }
    if run.pending_count != 0 || run.status.as_deref() != Some(RunStatus::Pending.as_str()) {
        return Ok(None);
    }
    let status = if run.errored_count > 0 || run.failed_unites > 0 {
        RunStatus::Failed
    } else {
        RunStatus::Success
    };
    store
        .runs()
        .update_one(
            doc! {"run_id": &fx.run_id, "status": RunStatus::Pending.as_str()},
            doc! {"$set": {"status": status.as_str(), "finished_at": DateTime::from_millis(now_ms)}},
        )
        .session(&mut *s)
        .await?;
    Ok(Some((status, run)))
}

/// Loads the store entries of `state`'s run.
pub async fn load_store_values(
    store: &Store,
    session: Option<&mut ClientSession>,
    state: &StateDoc,
) -> Result<HashMap<String, String>, MongoError> {
    let filter = doc! {"run_id": &state.run_id, "namespace": state.graph_ns(), "graph_name": &state.graph_name};
    let mut out = HashMap::new();
    match session {
        Some(s) => {
            let mut cur = store.store_entries().find(filter).session(&mut *s).await?;
            while let Some(d) = cur.next(&mut *s).await.transpose()? {
                out.insert(d.key, d.value);
            }
        }
        None => {
            let mut cur = store.store_entries().find(filter).await?;
            while let Some(d) = cur.try_next().await? {
                out.insert(d.key, d.value);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use exo_types::names::{Namespace, NodeName, RunId};

    #[test]
    fn only_updates_that_select_by_id_are_merged_into_one_command() {
        let (a, b) = (ObjectId::new(), ObjectId::new());
        let u = |filter: Document, expect: u64| Update {
            filter,
            update: doc! {"$set": {"x": 1}},
            expect,
        };
        assert!(u(doc! {"_id": a, "status": "QUEUED"}, 1).selects_by_id());
        assert!(u(doc! {"_id": {"$in": [a, b]}, "status": "EXECUTED"}, 2).selects_by_id());
        // More matches than expected would be possible: not merged.
        assert!(!u(doc! {"_id": {"$in": [a, b]}}, 1).selects_by_id());
        assert!(!u(doc! {"_id": {"$in": [a, a]}}, 2).selects_by_id());
        assert!(!u(doc! {"_id": a}, 0).selects_by_id());
        assert!(!u(doc! {"run_id": "r", "status": "CREATED"}, 3).selects_by_id());
        assert!(!u(doc! {"_id": {"$gt": a}}, 1).selects_by_id());
    }
    use exo_store::GraphTemplateDoc;
    use exo_types::graph::{Graph, GraphSpec};
    use serde_json::json;

    fn loaded() -> Arc<LoadedGraph> {
        let spec: GraphSpec = serde_json::from_value(json!({
            "secrets": {},
            "nodes": [
                {"node_name": "A", "namespace": "ns", "identifier": "start", "inputs": {}, "next_nodes": ["split"]},
                {"node_name": "B", "namespace": "ns", "identifier": "split", "inputs": {}, "next_nodes": ["work"]},
                {"node_name": "C", "namespace": "ns", "identifier": "work", "inputs": {}, "next_nodes": ["merge"]},
                {"node_name": "D", "namespace": "ns", "identifier": "merge", "inputs": {},
                 "unites": {"identifier": "start", "strategy": "ALL_DONE"}},
            ]
        }))
        .expect("spec");
        let graph = Graph::analyse(&spec).expect("valid graph");
        let now = DateTime::now();
        let doc = GraphTemplateDoc {
            id: None,
            name: "g".into(),
            namespace: "ns".into(),
            nodes: spec.nodes.clone(),
            validation_status: exo_types::status::ValidationStatus::Valid.as_str().into(),
            validation_errors: vec![],
            secrets: Default::default(),
            triggers: vec![],
            retry_policy: Default::default(),
            store_config: Default::default(),
            webhooks: vec![],
            created_at: now,
            updated_at: now,
        };
        Arc::new(LoadedGraph {
            doc,
            graph,
            nodes: HashMap::new(),
            version: "ns:g:test".into(),
        })
    }

    fn state(identifier: &str, status: StateStatus, parents: &[(&str, ObjectId)]) -> StateDoc {
        let mut p = Document::new();
        for (k, v) in parents {
            p.insert(*k, *v);
        }
        let now = DateTime::now();
        StateDoc {
            id: ObjectId::new(),
            node_name: NodeName::trusted(identifier.to_uppercase()),
            namespace_name: Namespace::trusted("ns"),
            identifier: identifier.into(),
            graph_name: "g".into(),
            run_id: RunId::trusted("r"),
            status,
            inputs: Document::new(),
            outputs: Document::new(),
            data: Document::new(),
            error: None,
            parents: p,
            does_unites: false,
            state_fingerprint: String::new(),
            enqueue_after: 0,
            retry_count: 0,
            fanout_id: String::new(),
            manual_retry_fanout_id: String::new(),
            created_at: now,
            updated_at: now,
            graph_namespace: None,
            graph_version: None,
            attempt: 1,
            requeue_gen: 0,
            result_digest: None,
            fanout_chunk: None,
            claim_seq: None,
            queued_by: None,
        }
    }

    #[test]
    fn success_with_children_counts_children_before_counting_out() {
        let g = loaded();
        let start = state("start", StateStatus::Executed, &[]);
        let child = state("split", StateStatus::Created, &[("start", start.id)]);
        let mut fx = Effects::new(Some(g), "r");
        fx.count_transition(&start, StateStatus::Executed, StateStatus::Success);
        fx.insert(child);
        assert_eq!(
            fx.counters,
            Counters {
                total: 1,
                pending: 0,
                success: 1,
                errored: 0,
                retried: 0,
                cancelled: 0
            }
        );
        // The target's own group is armed and holds the child.
        let gid = unite_group_id(&start.id, "merge");
        let d = fx.groups.get(&gid).expect("armed group");
        assert_eq!((d.open, d.failed), (1, 0));
    }

    #[test]
    fn failures_count_out_and_mark_failed_retries_do_not() {
        let g = loaded();
        let start_id = ObjectId::new();
        let gid = unite_group_id(&start_id, "merge");
        let work = state("work", StateStatus::Queued, &[("start", start_id)]);

        let mut fx = Effects::new(Some(g.clone()), "r");
        fx.count_transition(&work, StateStatus::Queued, StateStatus::Pruned);
        let d = &fx.groups[&gid];
        assert_eq!((d.open, d.failed), (-1, 1));
        assert_eq!((fx.counters.pending, fx.counters.success), (-1, 1));

        let mut fx = Effects::new(Some(g), "r");
        fx.count_transition(&work, StateStatus::Queued, StateStatus::RetryCreated);
        let mut retry = work.clone();
        retry.id = ObjectId::new();
        retry.status = StateStatus::Created;
        fx.insert(retry);
        let d = &fx.groups[&gid];
        assert_eq!(
            (d.open, d.failed),
            (0, 0),
            "a retry replaces its original in the group"
        );
        assert_eq!(
            (fx.counters.total, fx.counters.pending, fx.counters.retried),
            (1, 0, 1)
        );
    }

    #[test]
    fn without_a_graph_no_group_is_counted() {
        let work = state("work", StateStatus::Queued, &[("start", ObjectId::new())]);
        let mut fx = Effects::new(None, "r");
        fx.count_transition(&work, StateStatus::Queued, StateStatus::Errored);
        assert!(fx.groups.is_empty());
        assert_eq!((fx.counters.pending, fx.counters.errored), (-1, 1));
    }
}
