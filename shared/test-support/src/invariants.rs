//! The invariants every settled run must satisfy, checked by reading MongoDB.
//!
//! One checker for every end-to-end and fault test ([`check_run`]):
//!
//! 1. **Settled.** The run is SUCCESS, FAILED or CANCELLED and no state is
//!    left CREATED, QUEUED or EXECUTED.
//! 2. **Counters equal the states.** `total`, `pending`, `success`,
//!    `errored`, `retried` and `cancelled` equal the states counted by
//!    status group, and the run's per graph node counters
//!    (`exo_store::node_counts`) equal its states counted by identifier and
//!    bucket, with each node's most attempts and its parent identifier.
//! 3. **Fan-outs are whole.** For every state `O` that fanned out, its
//!    siblings are exactly the deterministic ids `H("fanout", O, 1..=m)`,
//!    with no gap, and no other state has the shape of one of its siblings.
//! 4. **Unites exactly once, after all members.** Every unite group is
//!    closed with no open member (in a cancelled run, a group may stay open
//!    and then has not fired); its `failed` count equals the failed
//!    descendants of its target; it fired if and only if exactly one unite
//!    state with its deterministic id exists; no two unite states share a
//!    fingerprint.
//! 5. **The final status is right.** FAILED if and only if some state ended
//!    errored or some ALL_SUCCESS unite group failed (unless CANCELLED).
//! 6. **Executions** (optional, [`check_executions`]): without faults, user
//!    code ran exactly once per state attempt that was executed.
//!
//! Expectations that depend on the graph (widths, which items fail) stay in
//! each test; this module checks what holds for every run.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{bail, ensure};
use exo_store::mongodb::bson::{doc, oid::ObjectId};
use exo_store::{RunDoc, StateDoc, Store, UniteGroupDoc, oid};
use exo_types::ids;
use exo_types::status::{CounterGroup, RunStatus, StateStatus};
use futures::TryStreamExt;

/// A settled run as read from MongoDB, after its invariants were checked.
#[derive(Debug)]
pub struct CheckedRun {
    /// The run document.
    pub run: RunDoc,
    /// Every state of the run.
    pub states: Vec<StateDoc>,
    /// Every unite group of the run.
    pub groups: Vec<UniteGroupDoc>,
}

impl CheckedRun {
    /// States with `identifier`.
    pub fn with_identifier(&self, identifier: &str) -> Vec<&StateDoc> {
        self.states
            .iter()
            .filter(|s| s.identifier == identifier)
            .collect()
    }

    /// States with `identifier` that are final (not replaced by a retry).
    pub fn finals(&self, identifier: &str) -> Vec<&StateDoc> {
        self.states
            .iter()
            .filter(|s| s.identifier == identifier && s.status != StateStatus::RetryCreated)
            .collect()
    }

    /// The run's final status.
    pub fn status(&self) -> &str {
        self.run.status.as_deref().unwrap_or("")
    }
}

/// Reads run `run_id` and checks invariants 1 to 5 (see the module docs).
pub async fn check_run(store: &Store, run_id: &str) -> anyhow::Result<CheckedRun> {
    let Some(run) = store.run(run_id).await? else {
        bail!("run {run_id} not found");
    };
    let states: Vec<StateDoc> = store
        .states()
        .find(doc! {"run_id": run_id})
        .await?
        .try_collect()
        .await?;
    let groups: Vec<UniteGroupDoc> = store
        .unite_groups()
        .find(doc! {"run_id": run_id})
        .await?
        .try_collect()
        .await?;
    let checked = CheckedRun {
        run,
        states,
        groups,
    };
    check_settled(&checked)?;
    check_counters(&checked)?;
    check_node_counts(&checked)?;
    check_fanouts(&checked)?;
    check_unites(&checked)?;
    check_status(&checked)?;
    Ok(checked)
}

fn check_settled(c: &CheckedRun) -> anyhow::Result<()> {
    let status = c.status();
    ensure!(
        matches!(status, "SUCCESS" | "FAILED" | "CANCELLED"),
        "run {} is {status:?}, not settled",
        c.run.run_id
    );
    let pending: Vec<String> = c
        .states
        .iter()
        .filter(|s| s.status.is_pending())
        .map(|s| format!("{}:{}:{}", s.identifier, s.id, s.status))
        .collect();
    ensure!(
        pending.is_empty(),
        "run {} is {status} but states are left pending: {pending:?}",
        c.run.run_id
    );
    Ok(())
}

fn check_counters(c: &CheckedRun) -> anyhow::Result<()> {
    let mut counts: HashMap<CounterGroup, i64> = HashMap::new();
    for s in &c.states {
        *counts.entry(s.status.group()).or_default() += 1;
    }
    let get = |g| counts.get(&g).copied().unwrap_or(0);
    let r = &c.run;
    let pairs = [
        ("total", r.total_count, c.states.len() as i64),
        ("pending", r.pending_count, get(CounterGroup::Pending)),
        ("success", r.success_count, get(CounterGroup::Success)),
        ("errored", r.errored_count, get(CounterGroup::Errored)),
        ("retried", r.retried_count, get(CounterGroup::Retried)),
        ("cancelled", r.cancelled_count, get(CounterGroup::Cancelled)),
    ];
    for (name, counter, actual) in pairs {
        ensure!(
            counter == actual,
            "run {}: {name}_count is {counter} but {actual} states are in that group",
            r.run_id
        );
    }
    Ok(())
}

fn check_node_counts(c: &CheckedRun) -> anyhow::Result<()> {
    use exo_store::node_counts::{bucket, identifier};
    let r = &c.run;
    let Some(nodes) = &r.nodes else {
        bail!("run {} has no per-node counters", r.run_id);
    };
    let mut actual: BTreeMap<String, BTreeMap<&str, i64>> = BTreeMap::new();
    let mut attempts: HashMap<&str, i64> = HashMap::new();
    let mut parents: HashMap<&str, Option<&str>> = HashMap::new();
    let mut names: HashMap<&str, &str> = HashMap::new();
    for s in &c.states {
        *actual
            .entry(s.identifier.clone())
            .or_default()
            .entry(bucket(s.status))
            .or_default() += 1;
        let a = attempts.entry(&s.identifier).or_default();
        *a = (*a).max(s.retry_count + 1);
        parents
            .entry(&s.identifier)
            .or_insert_with(|| s.parents.keys().last().map(String::as_str));
        names.insert(&s.identifier, s.node_name.as_str());
    }
    let mut stored: BTreeMap<String, BTreeMap<&str, i64>> = BTreeMap::new();
    for (key, node) in nodes {
        let ident = identifier(key);
        let node = node
            .as_document()
            .ok_or_else(|| anyhow::anyhow!("run {}: nodes.{key} is not a document", r.run_id))?;
        let counts = stored.entry(ident.clone()).or_default();
        for (b, n) in node.get_document("counts").into_iter().flatten() {
            let n = n.as_i64().or(n.as_i32().map(i64::from)).unwrap_or(-1);
            if n != 0 {
                counts.insert(b.as_str(), n);
            }
        }
        let want = attempts.get(ident.as_str()).copied().unwrap_or(0);
        let got = node
            .get_i64("attempts")
            .or(node.get_i32("attempts").map(i64::from));
        ensure!(
            got == Ok(want),
            "run {}: node {ident} counts {got:?} attempts, its states {want}",
            r.run_id
        );
        let parent = node.get_str("parent").ok();
        ensure!(
            parents.get(ident.as_str()).copied().flatten() == parent,
            "run {}: node {ident} has parent {parent:?}, its states {:?}",
            r.run_id,
            parents.get(ident.as_str())
        );
        ensure!(
            names.get(ident.as_str()).copied() == node.get_str("node").ok(),
            "run {}: node {ident} is named {:?}, its states {:?}",
            r.run_id,
            node.get_str("node"),
            names.get(ident.as_str())
        );
        let (first, last) = (node.get_i64("first_ms")?, node.get_i64("last_ms")?);
        ensure!(
            first <= last,
            "run {}: node {ident} first_ms > last_ms",
            r.run_id
        );
    }
    ensure!(
        stored == actual,
        "run {}: per-node counters {stored:?} but the states count {actual:?}",
        r.run_id
    );
    Ok(())
}

fn sibling_id(origin: &ObjectId, j: usize) -> ObjectId {
    oid(ids::fanout_sibling_id(&origin.to_hex(), j))
}

fn check_fanouts(c: &CheckedRun) -> anyhow::Result<()> {
    let by_id: HashMap<ObjectId, &StateDoc> = c.states.iter().map(|s| (s.id, s)).collect();
    for o in &c.states {
        if !by_id.contains_key(&sibling_id(&o.id, 1)) {
            continue;
        }
        let mut m = 1;
        while by_id.contains_key(&sibling_id(&o.id, m + 1)) {
            m += 1;
        }
        let expected: HashSet<ObjectId> = (1..=m).map(|j| sibling_id(&o.id, j)).collect();
        // Siblings carry their own id as fanout id and the origin's place.
        let shaped: Vec<&StateDoc> = c
            .states
            .iter()
            .filter(|s| {
                s.id != o.id
                    && s.status != StateStatus::RetryCreated
                    && s.fanout_id == s.id.to_hex()
                    && s.identifier == o.identifier
                    && s.parents == o.parents
                    && s.retry_count == 0
                    && s.manual_retry_fanout_id.is_empty()
            })
            .collect();
        let stray: Vec<String> = shaped
            .iter()
            .filter(|s| !expected.contains(&s.id))
            .map(|s| s.id.to_hex())
            .collect();
        ensure!(
            stray.is_empty(),
            "fan-out of {} ({}): siblings 1..={m} exist contiguously but {} more sibling-shaped states exist (a gap or a second fan-out): {stray:?}",
            o.identifier,
            o.id,
            stray.len()
        );
        for id in &expected {
            let s = by_id[id];
            ensure!(
                s.attempt == o.attempt,
                "sibling {id} of {} has attempt {} but its origin {}",
                o.id,
                s.attempt,
                o.attempt
            );
        }
    }
    Ok(())
}

fn check_unites(c: &CheckedRun) -> anyhow::Result<()> {
    let by_id: HashMap<ObjectId, &StateDoc> = c.states.iter().map(|s| (s.id, s)).collect();
    let mut fingerprints = HashSet::new();
    for s in c.states.iter().filter(|s| s.does_unites) {
        ensure!(
            fingerprints.insert(s.state_fingerprint.clone()),
            "two unite states of {} share fingerprint {}",
            s.identifier,
            s.state_fingerprint
        );
    }
    let mut group_of_unite: HashSet<ObjectId> = HashSet::new();
    let cancelled = c.status() == RunStatus::Cancelled.as_str();
    for g in &c.groups {
        if cancelled && !g.closed {
            // Cancellation stops the bookkeeping: an open group stays open
            // and must not have fired.
            let unite_id = oid(ids::unite_state_id(
                &g.target_id.to_hex(),
                &g.unite_identifier,
            ));
            ensure!(
                !g.fired && !by_id.contains_key(&unite_id),
                "unite group {} of a cancelled run is open but fired",
                g.id
            );
            continue;
        }
        if let Some(unite_id) = check_closed_group(c, &by_id, g)? {
            group_of_unite.insert(unite_id);
        }
    }
    for s in c.states.iter().filter(|s| s.does_unites) {
        ensure!(
            group_of_unite.contains(&s.id),
            "unite state {} ({}) exists without a fired group",
            s.id,
            s.identifier
        );
    }
    Ok(())
}

/// A group of a run that is not cancelled: closed, nothing open, its
/// failures counted, fired exactly when its unite state exists, its target
/// SUCCESS. Returns the unite state's id when it fired.
fn check_closed_group(
    c: &CheckedRun,
    by_id: &HashMap<ObjectId, &StateDoc>,
    g: &UniteGroupDoc,
) -> anyhow::Result<Option<ObjectId>> {
    ensure!(
        g.closed,
        "unite group {} never closed (open {}, failed {})",
        g.id,
        g.open,
        g.failed
    );
    ensure!(
        g.open == 0,
        "unite group {} is closed with {} open members",
        g.id,
        g.open
    );
    let Some(target) = by_id.get(&g.target_id) else {
        bail!(
            "unite group {}: target {} does not exist",
            g.id,
            g.target_id
        );
    };
    let failed = c
        .states
        .iter()
        .filter(|s| {
            s.parents.get_object_id(&target.identifier).ok() == Some(target.id)
                && s.id != target.id
                && s.status.is_failure()
        })
        .count() as i64;
    ensure!(
        g.failed == failed,
        "unite group {}: failed is {} but {failed} descendants of its target failed",
        g.id,
        g.failed
    );
    let unite_id = oid(ids::unite_state_id(
        &target.id.to_hex(),
        &g.unite_identifier,
    ));
    let exists = by_id.contains_key(&unite_id);
    ensure!(
        exists == g.fired,
        "unite group {}: fired is {} but the unite state {} {}",
        g.id,
        g.fired,
        unite_id,
        if exists { "exists" } else { "does not exist" }
    );
    ensure!(
        target.status == StateStatus::Success,
        "unite group {} closed but its target is {}",
        g.id,
        target.status
    );
    Ok(exists.then_some(unite_id))
}

fn check_status(c: &CheckedRun) -> anyhow::Result<()> {
    let r = &c.run;
    let status = c.status();
    if status == RunStatus::Cancelled.as_str() {
        return Ok(());
    }
    let failed = r.errored_count > 0 || r.failed_unites > 0;
    let failed_groups = c.groups.iter().filter(|g| !g.fired).count() as i64;
    ensure!(
        failed_groups == r.failed_unites,
        "run {}: failed_unites is {} but {failed_groups} unite groups did not fire",
        r.run_id,
        r.failed_unites
    );
    let expected = if failed { "FAILED" } else { "SUCCESS" };
    ensure!(
        status == expected,
        "run {} is {status} but errored_count {} and failed_unites {} make it {expected}",
        r.run_id,
        r.errored_count,
        r.failed_unites
    );
    Ok(())
}

/// Invariant 6: `executions` lists every (state id, attempt) the runtime
/// executed (see `EXO_TEST_EXEC_LOG` of the test runtime). Without faults
/// each attempt ran exactly once, and every state that ended by a runtime
/// report (SUCCESS without being a fan-out sibling, ERRORED, PRUNED,
/// RETRY_CREATED) ran at least once.
pub fn check_executions(c: &CheckedRun, executions: &[(String, i64)]) -> anyhow::Result<()> {
    let mut seen: HashMap<(&str, i64), usize> = HashMap::new();
    for (id, attempt) in executions {
        *seen.entry((id.as_str(), *attempt)).or_default() += 1;
    }
    let twice: Vec<String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|((id, a), n)| format!("{id}@{a}x{n}"))
        .collect();
    ensure!(
        twice.is_empty(),
        "state attempts executed more than once: {twice:?}"
    );
    let ids: HashSet<&str> = seen.keys().map(|(id, _)| *id).collect();
    for s in &c.states {
        let reported = matches!(
            s.status,
            StateStatus::Errored | StateStatus::Pruned | StateStatus::RetryCreated
        ) || (s.status == StateStatus::Success && s.fanout_id != s.id.to_hex());
        if reported && s.attempt > 0 {
            let hex = s.id.to_hex();
            ensure!(
                ids.contains(hex.as_str()),
                "state {} ({}) is {} but was never executed",
                hex,
                s.identifier,
                s.status
            );
        }
    }
    Ok(())
}
