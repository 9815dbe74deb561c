//! Runs started by Exosphere itself, on a database that is switched over.
//!
//! Exosphere keeps no run status, no counters and no unite groups: it decides
//! a unite by querying the group's states every time a branch succeeds. A run
//! it left half-way has none of our bookkeeping, and counting its remaining
//! transitions from zero would never close a group. So the first transaction
//! that touches such a run (its `runs` document has no `status`) is aborted
//! and done again after **adopting** the run in the same transaction: its
//! counters and unite groups are computed from its states as they are now,
//! groups whose unite state already exists are recorded as fired, and groups
//! that are already complete without a unite state (Exosphere's lost
//! wake-ups, spec §18.4) are decided at once. Adoption and the transition
//! commit together, so a crash leaves either neither or both, and concurrent
//! adopters serialise on the run document.

use exo_types::names::RunId;
use std::collections::{BTreeMap, HashSet};

use exo_store::mongodb::bson::{Bson, doc, oid::ObjectId};
use exo_store::mongodb::{ClientSession, error::Error as MongoError};
use exo_store::{Store, docs::unite_group_id};
use exo_types::status::{RunStatus, StateStatus};

use crate::effects::{self, Counters, Effects};
use crate::graphs::LoadedGraph;
use crate::{Engine, Error};

/// Returned (as a custom driver error) by a transaction that found its run
/// written by Exosphere (no `status`): the caller adopts the run and applies
/// the transaction again.
#[derive(Debug, Clone, Copy)]
pub struct NotAdopted;

/// A unite group to evaluate right after adoption: (group id, target state,
/// unite node identifier).
pub(crate) type Touch = (String, ObjectId, String);

#[derive(Default)]
struct Group {
    target: Option<ObjectId>,
    unite: String,
    open: i64,
    failed: i64,
}

/// What a legacy run's states add up to: counters, unite groups, the groups
/// whose unite state exists (fired) and those whose target is SUCCESS
/// (armed).
#[derive(Default)]
struct Census<'g> {
    graph: Option<&'g LoadedGraph>,
    counters: Counters,
    nodes: exo_store::node_counts::NodeDeltas,
    groups: BTreeMap<String, Group>,
    fired: HashSet<String>,
    armed: HashSet<String>,
}

impl Census<'_> {
    fn unites_targeting(&self, ident: &str) -> Vec<String> {
        self.graph
            .map(|g| g.graph.unites_targeting(ident).to_vec())
            .unwrap_or_default()
    }

    /// Counts state `st`.
    fn add(&mut self, st: &exo_store::StateDoc) {
        self.counters.count(st.status);
        self.nodes.insert(st);
        let open = i64::from(st.status.is_pending());
        let failed = i64::from(st.status.is_failure());
        for (ident, id) in st.parent_pairs() {
            for unite in self.unites_targeting(&ident) {
                let g = self.groups.entry(unite_group_id(&id, &unite)).or_default();
                g.target = Some(id);
                g.unite = unite;
                g.open += open;
                g.failed += failed;
            }
        }
        if st.does_unites
            && let Some(Bson::ObjectId(target)) = self
                .graph
                .and_then(|g| g.graph.node(&st.identifier))
                .and_then(|n| n.unites.as_ref())
                .and_then(|u| st.parents.get(&u.identifier))
        {
            self.fired.insert(unite_group_id(target, &st.identifier));
        }
        if st.status == StateStatus::Success {
            for unite in self.unites_targeting(&st.identifier) {
                let gid = unite_group_id(&st.id, &unite);
                self.armed.insert(gid.clone());
                let g = self.groups.entry(gid).or_default();
                g.target = Some(st.id);
                g.unite = unite;
            }
        }
    }
}

/// Adopts run `run_id` inside session `s` if it is still Exosphere's: sets
/// its status and counters and writes its unite groups. Returns the groups
/// that are complete and armed (their target SUCCESS) but have no unite
/// state: the caller evaluates them in the same transaction. Returns nothing
/// when the run was adopted already (by a concurrent transaction). Its
/// per-node counters are stamped `now_ms`.
pub(crate) async fn adopt_in(
    s: &mut ClientSession,
    store: &Store,
    (graph, run_id): (Option<&LoadedGraph>, &str),
    now_ms: i64,
) -> Result<Vec<Touch>, MongoError> {
    let legacy = store
        .runs()
        .find_one(doc! {"run_id": run_id, "status": {"$exists": false}})
        .session(&mut *s)
        .await?;
    if legacy.is_none() {
        return Ok(Vec::new());
    }
    let mut census = Census {
        graph,
        ..Census::default()
    };
    let mut cur = store
        .states()
        .find(doc! {"run_id": run_id})
        .session(&mut *s)
        .await?;
    while let Some(st) = cur.next(&mut *s).await.transpose()? {
        census.add(&st);
    }
    let Census {
        counters: c,
        nodes,
        groups,
        fired,
        armed,
        ..
    } = census;
    let mut touches = Vec::new();
    for (gid, g) in &groups {
        let Some(target) = g.target else { continue };
        let was_fired = fired.contains(gid);
        store
            .unite_groups()
            .update_one(
                doc! {"_id": gid},
                doc! {"$set": {"run_id": run_id, "target_id": target, "unite_identifier": &g.unite,
                "open": g.open, "failed": g.failed, "closed": was_fired, "fired": was_fired}},
            )
            .upsert(true)
            .session(&mut *s)
            .await?;
        if !was_fired && g.open == 0 && armed.contains(gid) {
            touches.push((gid.clone(), target, g.unite.clone()));
        }
    }
    let status = match (c.pending, c.errored) {
        (0, 0) if touches.is_empty() => RunStatus::Success,
        (0, _) if touches.is_empty() => RunStatus::Failed,
        _ => RunStatus::Pending,
    };
    tracing::info!(exo.run_id = %run_id, total = c.total, pending = c.pending, status = status.as_str(),
        groups = groups.len(), "Adopting a run started by Exosphere.");
    let mut set = c.run_fields(0);
    set.insert("status", status.as_str());
    set.insert(exo_store::node_counts::FIELD, nodes.document(now_ms));
    store
        .runs()
        .update_one(
            doc! {"run_id": run_id, "status": {"$exists": false}},
            doc! {"$set": set},
        )
        .session(&mut *s)
        .await?;
    Ok(touches)
}

/// Adopts run `run_id` now if Exosphere started it (a no-op otherwise), and
/// hands any unite state that adoption fired to the scheduler. For paths
/// that change a run without a counted transition (cancellation).
pub async fn adopt(engine: &Engine, run_id: &str) -> Result<(), Error> {
    let legacy = engine
        .store
        .runs()
        .find_one(doc! {"run_id": run_id, "status": {"$exists": false}})
        .await?;
    if legacy.is_none() {
        return Ok(());
    }
    let Some(st) = engine
        .store
        .states()
        .find_one(doc! {"run_id": run_id})
        .await?
    else {
        return Ok(());
    };
    let graph = engine.graph_for(&st).await?.ok();
    let fx = Effects::new(graph, run_id);
    let now = engine.now_ms();
    let applied = exo_store::transaction(
        &engine.store,
        &(engine.store.clone(), &fx, now),
        |s, (store, fx, now)| Box::pin(effects::adopt_then_apply(s, store, fx, *now)),
    )
    .await?;
    engine.after_apply(&st, Some(applied)).await
}

/// A stored VALID graph template this implementation cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Namespace of the template.
    pub namespace: String,
    /// Name of the template.
    pub name: String,
    /// Why: the analysis errors, or names that cannot be NATS subject tokens.
    pub errors: Vec<String>,
}

/// Why a stored template cannot run here, or nothing when it can.
fn rejection(doc: &exo_store::GraphTemplateDoc) -> Vec<String> {
    let mut errors = Vec::new();
    let names = std::iter::once(("namespace", &doc.namespace)).chain(
        doc.nodes
            .iter()
            .flat_map(|n| [("namespace", &n.namespace), ("node name", &n.node_name)]),
    );
    for (kind, value) in names {
        if let Err(e) = exo_types::names::validate_token(kind, value) {
            let e = e.to_string();
            if !errors.contains(&e) {
                errors.push(e);
            }
        }
    }
    if let Err(e) = exo_types::graph::Graph::analyse(&doc.spec()) {
        errors.extend(e);
    }
    errors
}

/// Stored templates marked VALID (by Exosphere, or edited in the database)
/// that this implementation's analysis rejects: Exosphere validates less
/// (a diamond join may reference one branch and fail at runtime, spec
/// §18.13) and accepts any name, where ours become NATS subject tokens.
pub async fn rejected_graphs(store: &Store) -> Result<Vec<Rejected>, exo_store::Error> {
    use futures::TryStreamExt;
    let valid = exo_types::status::ValidationStatus::Valid.as_str();
    let mut cur = store
        .graph_templates()
        .find(doc! {"validation_status": valid})
        .await?;
    let mut out = Vec::new();
    while let Some(t) = cur.try_next().await? {
        let errors = rejection(&t);
        if !errors.is_empty() {
            out.push(Rejected {
                namespace: t.namespace,
                name: t.name,
                errors,
            });
        }
    }
    Ok(out)
}

/// Marks the [`rejected_graphs`] INVALID with their reasons, so that `GET`
/// says what a trigger would answer (400 "Graph template is not valid"),
/// never VALID next to a refused trigger. Returns them. The api does this at
/// start-up; `exo-api check-db` lists them beforehand without writing.
pub async fn mark_rejected_graphs(store: &Store) -> Result<Vec<Rejected>, exo_store::Error> {
    let rejected = rejected_graphs(store).await?;
    for r in &rejected {
        let errors: Vec<String> = r
            .errors
            .iter()
            .map(|e| format!("Not runnable by exo: {e}"))
            .collect();
        store
            .graph_templates()
            .update_one(
                doc! {"namespace": &r.namespace, "name": &r.name,
                      "validation_status": exo_types::status::ValidationStatus::Valid.as_str()},
                doc! {"$set": {"validation_status": exo_types::status::ValidationStatus::Invalid.as_str(),
                               "validation_errors": &errors}},
            )
            .await?;
        tracing::warn!(exo.namespace = %r.namespace, exo.graph = %r.name, errors = ?r.errors,
            "A graph template stored as VALID cannot run here; marked INVALID.");
    }
    Ok(rejected)
}

/// What `exo-api check-db` reports about a database before (or after) the
/// switch from Exosphere.
#[derive(Debug, Default)]
pub struct Report {
    /// Templates stored VALID that would be marked INVALID.
    pub rejected: Vec<Rejected>,
    /// Runs Exosphere started that are not adopted yet (adopted by their
    /// next transition).
    pub runs_to_adopt: u64,
    /// States Exosphere left EXECUTED (its background step was lost, spec
    /// §5.7): neither system finishes them; retry them manually.
    pub executed_by_exosphere: u64,
    /// States Exosphere handed out (QUEUED, no attempt): applied when their
    /// runtime reports; without a lease, a dead runtime's stay QUEUED.
    pub queued_by_exosphere: u64,
}

/// Reads the database and reports what the switch will do (writes nothing).
pub async fn check(store: &Store) -> Result<Report, exo_store::Error> {
    let states = store.states();
    let exosphere =
        |status: StateStatus| doc! {"status": status.as_str(), "attempt": {"$exists": false}};
    Ok(Report {
        rejected: rejected_graphs(store).await?,
        runs_to_adopt: store
            .runs()
            .count_documents(doc! {"status": {"$exists": false}})
            .await?,
        executed_by_exosphere: states
            .count_documents(exosphere(StateStatus::Executed))
            .await?,
        queued_by_exosphere: states
            .count_documents(exosphere(StateStatus::Queued))
            .await?,
    })
}

/// What going back to Exosphere changes (`exo-api revert-to-upstream`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Revert {
    /// CANCELLED states (a status Exosphere's model rejects) → ERRORED.
    pub cancelled: u64,
    /// States dispatched by us (QUEUED) → CREATED, so Exosphere hands them
    /// out again (its `enqueue` takes CREATED states only).
    pub queued: u64,
    /// States in the middle of our fan-out or successor step (EXECUTED):
    /// Exosphere cannot finish them; let the services finish (or cancel
    /// the run) before reverting.
    pub executed: u64,
    /// Runs still PENDING: their status, counters and unite groups are
    /// removed, so that Exosphere's progress on them does not leave stale
    /// counters behind; switching forward again adopts them afresh.
    pub pending_runs: u64,
}

/// Makes the database readable and runnable by Exosphere again: with
/// `apply` false only counts. Run it with every service stopped. Fields and
/// collections of ours on finished runs (counters, `UniteGroup`,
/// `GraphVersions`) are left: Exosphere ignores them.
pub async fn revert_to_upstream(store: &Store, apply: bool) -> Result<Revert, exo_store::Error> {
    let states = store.states();
    let cancelled = doc! {"status": StateStatus::Cancelled.as_str()};
    let queued = doc! {"status": StateStatus::Queued.as_str()};
    let report = Revert {
        cancelled: states.count_documents(cancelled.clone()).await?,
        queued: states.count_documents(queued.clone()).await?,
        executed: states
            .count_documents(doc! {"status": StateStatus::Executed.as_str()})
            .await?,
        pending_runs: store
            .runs()
            .count_documents(doc! {"status": RunStatus::Pending.as_str()})
            .await?,
    };
    if apply {
        use futures::TryStreamExt;
        let pending: Vec<RunId> = store
            .runs()
            .find(doc! {"status": RunStatus::Pending.as_str()})
            .await?
            .map_ok(|r| r.run_id)
            .try_collect()
            .await?;
        for chunk in pending.chunks(1000) {
            store
                .unite_groups()
                .delete_many(doc! {"run_id": {"$in": chunk}})
                .await?;
            store
                .runs()
                .update_many(
                    doc! {"run_id": {"$in": chunk}, "status": RunStatus::Pending.as_str()},
                    doc! {"$unset": {"status": "", "total_count": "", "pending_count": "", "success_count": "",
                                     "errored_count": "", "retried_count": "", "cancelled_count": "",
                                     "failed_unites": "", "cancelling": "", "nodes": ""}},
                )
                .await?;
        }
        states
            .update_many(
                cancelled,
                doc! {"$set": {"status": StateStatus::Errored.as_str(), "error": "run cancelled"}},
            )
            .await?;
        states
            .update_many(
                queued,
                doc! {"$set": {"status": StateStatus::Created.as_str()},
                "$unset": {"lease_until": "", "lease_holder": "", "lease_attempt": ""}},
            )
            .await?;
    }
    Ok(report)
}
