//! The `completion` service's handlers: an executed result is applied in
//! two phases (`phase1`: the state and its fan-out siblings EXECUTED;
//! `phase2`: successors created, states SUCCESS), chunk by chunk on a
//! fixed grid; a pruned result ends its branch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use exo_engine::common::json_to_doc;
use exo_engine::effects::{self, Effects, Update};
use exo_engine::graphs::LoadedGraph;
use exo_engine::{Engine, Error, Outcome, attempts, inputs};
use exo_store::filters::{state_at, state_in, states_in};
use exo_store::mongodb::bson::{Bson, DateTime, Document, doc, oid::ObjectId};
use exo_store::{StateDoc, oid};
use exo_types::graph::NodeTemplate;
use exo_types::ids;
use exo_types::messages::{Executed, Pruned};
use exo_types::status::StateStatus;
use futures::TryStreamExt;

use crate::outputs::{ExecutedResult, Outputs};

/// States written per transaction when a result fans out (default of
/// `EXO_FANOUT_CHUNK`).
pub const CHUNK: usize = 256;

/// States written per fan-out transaction: `EXO_FANOUT_CHUNK` (at least 1),
/// else [`CHUNK`]. Tests use small chunks to cross chunk boundaries with few
/// states.
pub fn fanout_chunk() -> usize {
    static CHUNK_SIZE: std::sync::LazyLock<usize> =
        std::sync::LazyLock::new(|| env_count("EXO_FANOUT_CHUNK", CHUNK));
    *CHUNK_SIZE
}

/// The positive count in environment variable `name`, else `default`.
fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(default)
}

/// Most outputs one result may carry, i.e. the widest fan-out of one state:
/// `EXO_MAX_OUTPUTS` (at least 1), else 1 000 000 (the api's default for
/// results reported over HTTP, `EXO_API__MAX_OUTPUTS`). A wider result
/// ends its state NEXT_CREATED_ERROR, naming the limit.
pub fn max_outputs() -> usize {
    static MAX: std::sync::LazyLock<usize> =
        std::sync::LazyLock::new(|| env_count("EXO_MAX_OUTPUTS", 1_000_000));
    *MAX
}

/// `completion`: records outputs, fans out, creates successors, marks
/// SUCCESS and lets unite groups close. `seq` is the result message's
/// sequence in `EXO_RESULTS`: the successors are inserted QUEUED under it
/// and dispatched at once (no scheduler hop), and only a redelivery of
/// this very message dispatches them again. An output that cannot be
/// stored rejects the result. (The service reads results with
/// [`ExecutedResult::decode`] and calls [`apply_executed`], which also
/// reports progress on long fan-outs.)
pub async fn on_executed(engine: &Engine, msg: Executed, seq: u64) -> Result<Outcome, Error> {
    match ExecutedResult::try_from(msg) {
        Ok(r) => apply_executed(engine, r, seq, || async {}).await,
        Err(e) => Ok(Outcome::Reject(e)),
    }
}

/// [`on_executed`] for a result read with [`ExecutedResult::decode`]: its
/// outputs stay text until their chunk is written, so applying a fan-out
/// takes memory for its payload, not for a document per output.
pub async fn apply_executed<P, F>(
    engine: &Engine,
    msg: ExecutedResult,
    seq: u64,
    progress: P,
) -> Result<Outcome, Error>
where
    P: Fn() -> F,
    F: std::future::Future<Output = ()>,
{
    let (st, fresh) = match engine.fenced(msg.state_id, msg.attempt).await? {
        Ok(x) => x,
        Err(o) => return Ok(o),
    };
    // Between reading the state and the first write (tests widen it).
    exo_faults::point("completion.executed.loaded")?;
    if !fresh
        && !matches!(
            st.status,
            StateStatus::Executed | StateStatus::Success | StateStatus::NextCreatedError
        )
    {
        return Ok(Outcome::Stale(format!("state is {}", st.status)));
    }
    let outputs = msg.outputs;
    if !fresh && st.result_digest.as_deref() != Some(outputs.digest()) {
        return Ok(Outcome::Stale(
            "a different result was already applied to this attempt".into(),
        ));
    }
    tracing::debug!(exo.state_id = %st.id, fresh, attempt = msg.attempt, "Applying an executed result.");
    if fresh && outputs.len() > max_outputs() {
        let why = format!(
            "the result has {} outputs; at most {} per state (EXO_MAX_OUTPUTS)",
            outputs.len(),
            max_outputs()
        );
        fail_next_created(engine, &st, &outputs.doc(0), &why).await?;
        return Ok(Outcome::Done);
    }
    let lg = match engine.graph_for(&st).await? {
        Ok(g) => g,
        Err(u) => {
            if fresh {
                fail_next_created(engine, &st, &outputs.doc(0), &u.to_string()).await?;
            }
            return Ok(Outcome::Done);
        }
    };
    let chunk = st
        .fanout_chunk
        .and_then(|c| usize::try_from(c).ok())
        .filter(|&c| c >= 1)
        .unwrap_or_else(fanout_chunk);
    let r = Applying {
        st,
        outputs,
        now: engine.now_ms(),
        chunk,
        queued_by: format!("{}:{seq}", exo_types::subjects::STREAM_RESULTS),
    };
    if fresh && r.len() == 1 {
        return apply_single(engine, &r, &lg).await;
    }
    if let Some(outcome) = phase1(engine, &r, &lg, fresh, &progress).await? {
        return Ok(outcome);
    }
    phase2(engine, &r, &lg, &progress).await
}

/// An executed result being applied to its state `st`: one output per
/// fan-out index (index 0 is `st` itself).
struct Applying {
    st: StateDoc,
    outputs: Outputs,
    now: i64,
    /// States per transaction: the size recorded with the state when the
    /// result was first applied, else this replica's.
    chunk: usize,
    /// The result message, as recorded in the successors it inserts QUEUED.
    queued_by: String,
}

impl Applying {
    fn len(&self) -> usize {
        self.outputs.len()
    }

    fn digest(&self) -> &str {
        self.outputs.digest()
    }

    /// The state at fan-out index `j`: `st` itself for 0, else its sibling
    /// (a new attempt with a deterministic id), EXECUTED with output `j`.
    fn state(&self, j: usize) -> StateDoc {
        let mut s = if j == 0 {
            self.st.clone()
        } else {
            let id = oid(ids::fanout_sibling_id(&self.st.id.to_hex(), j));
            let mut s = attempts::new_attempt(&self.st, id, self.now);
            s.fanout_id = id.to_hex();
            s.retry_count = 0;
            s.does_unites = false;
            s.state_fingerprint = String::new();
            s.manual_retry_fanout_id = String::new();
            s.attempt = self.st.attempt;
            s.result_digest = self.st.result_digest.clone();
            s
        };
        s.status = StateStatus::Executed;
        s.outputs = self.outputs.doc(j);
        s.error = None;
        s
    }
}

/// What creating the successors of a state needs: the templates that
/// follow it (unites excluded: their groups create them), the ancestors
/// whose outputs they read, and the run's store if they read it.
struct Successors<'g> {
    lg: &'g LoadedGraph,
    next: Vec<&'g NodeTemplate>,
    ancestors: HashMap<ObjectId, StateDoc>,
    store: HashMap<String, String>,
}

impl<'g> Successors<'g> {
    /// Reads what the successors of `st` need (nothing when they only read
    /// `st`'s own outputs).
    async fn load(engine: &Engine, st: &StateDoc, lg: &'g LoadedGraph) -> Result<Self, Error> {
        let next: Vec<&NodeTemplate> = lg
            .graph
            .next_nodes(&st.identifier)
            .iter()
            .filter_map(|id| lg.graph.node(id))
            .filter(|t| t.unites.is_none())
            .collect();
        let wanted = inputs::referenced_ancestors(next.iter().copied(), &st.identifier);
        let ancestor_ids: Vec<ObjectId> = wanted
            .iter()
            .filter_map(|i| st.parents.get(i).and_then(Bson::as_object_id))
            .collect();
        let mut ancestors = HashMap::new();
        if !ancestor_ids.is_empty() {
            let mut cur = engine
                .store
                .states()
                .find(doc! {"_id": {"$in": ancestor_ids}})
                .await
                .map_err(exo_store::Error::from)?;
            while let Some(d) = cur.try_next().await.map_err(exo_store::Error::from)? {
                ancestors.insert(d.id, d);
            }
        }
        let store = if inputs::reads_store(next.iter().copied()) {
            effects::load_store_values(&engine.store, None, st)
                .await
                .map_err(exo_store::Error::from)?
        } else {
            HashMap::new()
        };
        Ok(Self {
            lg,
            next,
            ancestors,
            store,
        })
    }

    /// The children of `state` (fan-out index of `r`), or why they cannot
    /// be created.
    fn children(&self, r: &Applying, state: &StateDoc) -> Result<Vec<StateDoc>, String> {
        let src = inputs::Sources {
            graph: self.lg,
            store: &self.store,
            ancestors: &self.ancestors,
        };
        self.next
            .iter()
            .map(|t| {
                inputs::resolve_inputs(&src, t, state).map(|inp| {
                    let mut kid = inputs::new_state(
                        oid(ids::child_state_id(&state.id.to_hex(), &t.identifier)),
                        t,
                        &inputs::Placement::of(&r.st),
                        inp,
                        inputs::lineage(state),
                        false,
                        r.now,
                    );
                    // Due now: inserted as claimed and dispatched by this
                    // handler (the scheduler's claim, without the hop).
                    kid.status = StateStatus::Queued;
                    kid.attempt = 1;
                    kid.queued_by = Some(r.queued_by.clone());
                    kid
                })
            })
            .collect()
    }
}

/// A fresh result with one output (no fan-out): the state goes QUEUED →
/// SUCCESS (or NEXT_CREATED_ERROR) with its children in one transaction,
/// the conditional update on (state, QUEUED, attempt) being the fence. A
/// redelivery after the commit finds the state SUCCESS with this result's
/// digest and only re-announces the children (phase 2).
async fn apply_single(
    engine: &Engine,
    r: &Applying,
    lg: &Arc<LoadedGraph>,
) -> Result<Outcome, Error> {
    let succ = Successors::load(engine, &r.st, lg).await?;
    let state = r.state(0);
    let mut set = doc! {
        "outputs": r.outputs.doc(0),
        "result_digest": r.digest(),
        "fanout_chunk": r.chunk as i64,
        "updated_at": DateTime::from_millis(r.now),
    };
    let filter = state_at(r.st.id, StateStatus::Queued, r.st.attempt);
    let mut fx = Effects::new(Some(lg.clone()), &r.st.run_id);
    let (to, kids) = match succ.children(r, &state) {
        Ok(kids) => (StateStatus::Success, kids),
        Err(error) => {
            warn_next_created_error(&state, &error);
            set.insert("error", error);
            (StateStatus::NextCreatedError, Vec::new())
        }
    };
    set.insert("status", to.as_str());
    // QUEUED → EXECUTED → `to` in one write: both transitions are events
    // (QUEUED and EXECUTED count alike, so counting from EXECUTED is exact).
    fx.transitioned(
        &state,
        Some(StateStatus::Queued),
        StateStatus::Executed,
        None,
    );
    fx.transition(
        &state,
        StateStatus::Executed,
        to,
        Update {
            filter,
            update: doc! {"$set": set},
            expect: 1,
        },
    );
    for kid in kids {
        fx.insert(kid);
    }
    let applied = effects::apply(&engine.store, &fx, r.now).await?;
    if applied.is_none() {
        return after_lost_race(engine, &r.st, r.digest()).await;
    }
    engine.after_apply(&r.st, applied).await?;
    Ok(Outcome::Done)
}

/// Phase 1: the state becomes EXECUTED and every sibling exists (EXECUTED),
/// chunk by chunk, so all of them are counted before any is counted out.
/// The chunks lie on a fixed grid, `[c*chunk, (c+1)*chunk)` with index 0
/// being the state itself, so every delivery of this result cuts the same
/// chunks; each chunk is one transaction, so it exists entirely or not at
/// all, and a redelivery skips exactly the chunks whose first state exists.
/// Returns an outcome when the result must stop here.
async fn phase1<P, F>(
    engine: &Engine,
    r: &Applying,
    lg: &Arc<LoadedGraph>,
    fresh: bool,
    progress: &P,
) -> Result<Option<Outcome>, Error>
where
    P: Fn() -> F,
    F: std::future::Future<Output = ()>,
{
    let chunk = r.chunk;
    if fresh {
        let end = r.len().min(chunk);
        let mut fx = Effects::new(Some(lg.clone()), &r.st.run_id);
        fx.transitioned(
            &r.state(0),
            Some(StateStatus::Queued),
            StateStatus::Executed,
            None,
        );
        fx.update(Update {
            filter: state_at(r.st.id, StateStatus::Queued, r.st.attempt),
            update: doc! {"$set": {
                "status": StateStatus::Executed.as_str(),
                "outputs": r.outputs.doc(0),
                "result_digest": r.digest(),
                "fanout_chunk": r.chunk as i64,
                "updated_at": DateTime::from_millis(r.now),
            }},
            expect: 1,
        });
        for j in 1..end {
            fx.insert(r.state(j));
        }
        let applied = effects::apply(&engine.store, &fx, r.now).await?;
        if applied.is_none() {
            // Another delivery, an `errored` report of the same attempt or a
            // cancellation moved S first: continue only if it is this very
            // result that was applied.
            return after_lost_race(engine, &r.st, r.digest()).await.map(Some);
        }
        engine.after_apply(&r.st, applied).await?;
        if r.len() > chunk {
            progress().await;
        }
    }
    let mut j = chunk;
    while j < r.len() {
        let end = r.len().min(j + chunk);
        let first = oid(ids::fanout_sibling_id(&r.st.id.to_hex(), j));
        if engine.store.state(first).await?.is_none() {
            let mut fx = Effects::new(Some(lg.clone()), &r.st.run_id);
            // Fence: S still holds this attempt's result (not cancelled, not
            // replaced by a different result of a second execution).
            fx.update(Update {
                filter: doc! {"_id": r.st.id, "status": StateStatus::Executed.as_str(), "attempt": exo_store::filters::attempt_is(r.st.attempt),
                "result_digest": r.digest()},
                update: doc! {"$set": {"updated_at": DateTime::from_millis(r.now)}},
                expect: 1,
            });
            for k in j..end {
                fx.insert(r.state(k));
            }
            let applied = effects::apply(&engine.store, &fx, r.now).await?;
            if applied.is_none() {
                return Ok(Some(Outcome::Stale(format!(
                    "fan-out of state {} stopped: it no longer holds this result",
                    r.st.id
                ))));
            }
            engine.after_apply(&r.st, applied).await?;
            progress().await;
        }
        j = end;
    }
    Ok(None)
}

/// Phase 2: successors are created and the states marked SUCCESS (or
/// NEXT_CREATED_ERROR), chunk by chunk; a chunk already advanced by an
/// earlier delivery only has its children announced again.
async fn phase2<P, F>(
    engine: &Engine,
    r: &Applying,
    lg: &Arc<LoadedGraph>,
    progress: &P,
) -> Result<Outcome, Error>
where
    P: Fn() -> F,
    F: std::future::Future<Output = ()>,
{
    let chunk = r.chunk;
    let succ = Successors::load(engine, &r.st, lg).await?;
    let mut finished = None;
    let mut j = 0;
    while j < r.len() {
        let end = r.len().min(j + chunk);
        let still = still_executed(engine, r, j..end).await?;
        let (fx, again, advanced) = phase2_chunk(r, lg, &succ, j..end, &still);
        let applied = if fx.is_empty() {
            None
        } else {
            effects::apply(&engine.store, &fx, r.now).await?
        };
        tracing::debug!(exo.state_id = %r.st.id, chunk = j, advanced, applied = applied.is_some(), "Phase 2 chunk done.");
        if let Some(a) = applied {
            if a.finished.is_some() {
                finished = a.finished;
            }
            engine.hand_on(&a).await?;
        }
        engine.hand_on_again(&again, &r.queued_by).await?;
        progress().await;
        j = end;
    }
    match finished {
        Some(status) => {
            engine
                .publish_finished(r.st.graph_ns(), &r.st.run_id, &r.st.graph_name, status)
                .await?;
        }
        // An earlier delivery may have ended the run and died before
        // telling it.
        None => engine.publish_finished_again(&r.st).await?,
    }
    Ok(Outcome::Done)
}

/// The effects of phase 2 for fan-out indexes `range`: each state still
/// EXECUTED (in `still`) goes SUCCESS with its children inserted, or
/// NEXT_CREATED_ERROR; the children of states an earlier delivery advanced
/// are returned to be announced again. Also returns how many advance.
fn phase2_chunk(
    r: &Applying,
    lg: &Arc<LoadedGraph>,
    succ: &Successors<'_>,
    range: std::ops::Range<usize>,
    still: &HashSet<ObjectId>,
) -> (Effects, Vec<ObjectId>, usize) {
    let mut fx = Effects::new(Some(lg.clone()), &r.st.run_id);
    let mut again: Vec<ObjectId> = Vec::new();
    let mut ok_ids = Vec::new();
    for k in range {
        let state = r.state(k);
        let (kids, failure) = match succ.children(r, &state) {
            Ok(kids) => (kids, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        if !still.contains(&state.id) {
            // Already advanced by an earlier delivery, which may have
            // died before handing its children on.
            if failure.is_none() {
                again.extend(kids.iter().map(|k| k.id));
            }
            continue;
        }
        match failure {
            None => {
                ok_ids.push(state.id);
                fx.count_transition(&state, StateStatus::Executed, StateStatus::Success);
                for kid in kids {
                    fx.insert(kid);
                }
            }
            Some(error) => {
                warn_next_created_error(&state, &error);
                fx.transition(
                    &state,
                    StateStatus::Executed,
                    StateStatus::NextCreatedError,
                    Update {
                        filter: state_in(state.id, StateStatus::Executed),
                        update: doc! {"$set": {"status": StateStatus::NextCreatedError.as_str(), "error": error}},
                        expect: 1,
                    },
                );
            }
        }
    }
    if !ok_ids.is_empty() {
        fx.update(Update {
            filter: states_in(&ok_ids, StateStatus::Executed),
            update: doc! {"$set": {"status": StateStatus::Success.as_str()}},
            expect: ok_ids.len() as u64,
        });
    }
    (fx, again, ok_ids.len())
}

/// The states of fan-out indexes `range` still EXECUTED with this attempt
/// (the others were advanced by an earlier delivery).
async fn still_executed(
    engine: &Engine,
    r: &Applying,
    range: std::ops::Range<usize>,
) -> Result<HashSet<ObjectId>, Error> {
    let chunk_ids: Vec<ObjectId> = range
        .map(|k| {
            if k == 0 {
                r.st.id
            } else {
                oid(ids::fanout_sibling_id(&r.st.id.to_hex(), k))
            }
        })
        .collect();
    let mut still = HashSet::new();
    let mut cur = engine
        .store
        .states_raw()
        .find(doc! {"_id": {"$in": &chunk_ids}, "status": StateStatus::Executed.as_str(), "attempt": exo_store::filters::attempt_is(r.st.attempt)})
        .projection(doc! {"_id": 1})
        .await
        .map_err(exo_store::Error::from)?;
    while let Some(d) = cur.try_next().await.map_err(exo_store::Error::from)? {
        if let Ok(id) = d.get_object_id("_id") {
            still.insert(id);
        }
    }
    Ok(still)
}

/// After a fresh result lost the race for its state's first transition:
/// the state moved on. If it was this very result that moved it (a
/// concurrent delivery), the caller's work is done by that delivery or
/// will be by a redelivery; anything else makes this result stale.
async fn after_lost_race(engine: &Engine, st: &StateDoc, digest: &str) -> Result<Outcome, Error> {
    let now = engine.store.state(st.id).await?;
    Ok(match now {
        Some(cur) if cur.attempt == st.attempt && cur.result_digest.as_deref() == Some(digest) => {
            // The same result is being applied by another delivery; ask for a
            // redelivery so that this one resumes whatever that one leaves.
            Outcome::Delay(Duration::from_secs(1))
        }
        Some(cur) => Outcome::Stale(format!("state is {}", cur.status)),
        None => Outcome::Reject(format!("state {} not found", st.id)),
    })
}

/// Logs why a state ends NEXT_CREATED_ERROR (the reason is also stored
/// with it and listed by the run endpoint).
fn warn_next_created_error(state: &StateDoc, error: &str) {
    tracing::warn!(exo.state_id = %state.id, exo.run_id = %state.run_id,
        exo.node = %state.identifier, %error,
        "Successors could not be created; the state ends NEXT_CREATED_ERROR.");
}

async fn fail_next_created(
    engine: &Engine,
    st: &StateDoc,
    outputs: &Document,
    error: &str,
) -> Result<(), Error> {
    warn_next_created_error(st, error);
    // Without a usable template there are no unite groups to count.
    let mut fx = Effects::new(None, &st.run_id);
    fx.transition(
        st,
        StateStatus::Queued,
        StateStatus::NextCreatedError,
        Update {
            filter: state_at(st.id, StateStatus::Queued, st.attempt),
            update: doc! {"$set": {"status": StateStatus::NextCreatedError.as_str(), "outputs": outputs.clone(), "error": error}},
            expect: 1,
        },
    );
    let applied = effects::apply(&engine.store, &fx, engine.now_ms()).await?;
    engine.after_apply(st, applied).await
}

/// `completion`: ends a branch with PRUNED.
pub async fn on_pruned(engine: &Engine, msg: Pruned) -> Result<Outcome, Error> {
    let (st, fresh) = match engine.fenced(msg.state_id, msg.attempt).await? {
        Ok(x) => x,
        Err(o) => return Ok(o),
    };
    if !fresh {
        // Its delivery may have ended the run and died before telling it.
        engine.publish_finished_again(&st).await?;
        return Ok(Outcome::Stale(format!("state is {}", st.status)));
    }
    let data = match json_to_doc(&msg.data) {
        Ok(d) => d,
        Err(e) => return Ok(Outcome::Reject(e)),
    };
    let lg = engine.graph_for(&st).await?.ok();
    let mut fx = Effects::new(lg, &st.run_id);
    fx.transition(
        &st,
        StateStatus::Queued,
        StateStatus::Pruned,
        Update {
            filter: state_at(st.id, StateStatus::Queued, st.attempt),
            update: doc! {"$set": {"status": StateStatus::Pruned.as_str(), "data": data,
            "updated_at": DateTime::from_millis(engine.now_ms())}},
            expect: 1,
        },
    );
    let applied = effects::apply(&engine.store, &fx, engine.now_ms()).await?;
    engine.after_apply(&st, applied).await?;
    Ok(Outcome::Done)
}
