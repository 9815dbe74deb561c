//! Per graph node counters of a run (field `nodes` of the run document,
//! ours).
//!
//! For every graph node (identifier) with states in the run, the run
//! document holds `nodes.<key>`: `counts` (status → states; the pending
//! statuses CREATED, QUEUED and EXECUTED share the bucket `PENDING`, since
//! dispatch moves states between them without touching the run),
//! `attempts` (most attempts of one state), `first_ms` / `last_ms` (first
//! state created, last counted change), `node` (the node name) and
//! `parent` (the identifier of the node whose state created these). They change in the transactions that
//! change the run's counters, so at every read they add up to the run's
//! counters; a reader that finds they do not (a run started before they
//! existed, an Exosphere run) counts the states instead.
//!
//! `<key>` is the identifier with `%`, `.` and a leading `$` escaped
//! (`%25`, `%2E`, `%24`), so any identifier an Exosphere graph may hold is
//! one field name.

use std::collections::BTreeMap;

use exo_types::status::{CounterGroup, StateStatus};
use mongodb::bson::{Bson, Document, doc};

use crate::StateDoc;

/// The run document's field holding the counters.
pub const FIELD: &str = "nodes";

/// The bucket of CREATED, QUEUED and EXECUTED states.
pub const PENDING: &str = "PENDING";

/// The bucket a state in status `s` is counted in.
pub fn bucket(s: StateStatus) -> &'static str {
    if s.is_pending() { PENDING } else { s.as_str() }
}

/// The counter group of bucket `b` (None for an unknown bucket).
pub fn group_of(b: &str) -> Option<CounterGroup> {
    if b == PENDING {
        return Some(CounterGroup::Pending);
    }
    StateStatus::parse(b).map(StateStatus::group)
}

/// The field name of `identifier` under `nodes`.
pub fn key(identifier: &str) -> String {
    let mut out = String::with_capacity(identifier.len());
    for (i, c) in identifier.char_indices() {
        match c {
            '%' => out.push_str("%25"),
            '.' => out.push_str("%2E"),
            '$' if i == 0 => out.push_str("%24"),
            c => out.push(c),
        }
    }
    out
}

/// The identifier whose field name is `key` (inverse of [`key`]).
pub fn identifier(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut rest = key;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i..i + 3);
        let c = match code {
            Some("%25") => '%',
            Some("%2E") => '.',
            Some("%24") => '$',
            _ => {
                out.push('%');
                rest = &rest[i + 1..];
                continue;
            }
        };
        out.push(c);
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    out
}

/// What one transaction changes in the counters of one graph node.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NodeDelta {
    /// Bucket → change.
    pub counts: BTreeMap<&'static str, i64>,
    /// Most attempts of a state created (0: none created).
    pub attempts: i64,
    /// The identifier of the node that created a state, if one was.
    pub parent: Option<String>,
    /// The node name of a state created, if one was.
    pub node: Option<String>,
}

/// What one transaction changes in the per-node counters of a run.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NodeDeltas(BTreeMap<String, NodeDelta>);

impl NodeDeltas {
    /// Counts a new state.
    pub fn insert(&mut self, st: &StateDoc) {
        let d = self.0.entry(st.identifier.clone()).or_default();
        *d.counts.entry(bucket(st.status)).or_default() += 1;
        d.attempts = d.attempts.max(st.retry_count.saturating_add(1));
        if d.parent.is_none() {
            d.parent = st.parents.keys().last().cloned();
        }
        if d.node.is_none() {
            d.node = Some(st.node_name.to_string());
        }
    }

    /// Counts `st` moving from `from` to `to`.
    pub fn moved(&mut self, st: &StateDoc, from: StateStatus, to: StateStatus) {
        let (a, b) = (bucket(from), bucket(to));
        if a == b {
            return;
        }
        let d = self.0.entry(st.identifier.clone()).or_default();
        *d.counts.entry(a).or_default() -= 1;
        *d.counts.entry(b).or_default() += 1;
    }

    /// Adds `other` to these.
    pub fn merge(&mut self, other: &NodeDeltas) {
        for (ident, o) in &other.0 {
            let d = self.0.entry(ident.clone()).or_default();
            for (b, n) in &o.counts {
                *d.counts.entry(b).or_default() += n;
            }
            d.attempts = d.attempts.max(o.attempts);
            if d.parent.is_none() {
                d.parent.clone_from(&o.parent);
            }
            if d.node.is_none() {
                d.node.clone_from(&o.node);
            }
        }
    }

    /// True when no counter changes.
    pub fn is_zero(&self) -> bool {
        self.0
            .values()
            .all(|d| d.attempts == 0 && d.counts.values().all(|n| *n == 0))
    }

    /// The update operators that apply these changes at `now_ms`, to be
    /// merged into the run's update: `$inc` of the counts, `$max` of
    /// `attempts` and `last_ms`, `$min` of `first_ms`, `$set` of `parent`.
    pub fn operators(&self, now_ms: i64) -> [(&'static str, Document); 4] {
        let (mut inc, mut max, mut min, mut set) = Default::default();
        for (ident, d) in &self.0 {
            let at = format!("{FIELD}.{}", key(ident));
            let counted = d.counts.values().any(|n| *n != 0);
            for (b, n) in d.counts.iter().filter(|(_, n)| **n != 0) {
                Document::insert(&mut inc, format!("{at}.counts.{b}"), *n);
            }
            if counted {
                Document::insert(&mut max, format!("{at}.last_ms"), now_ms);
            }
            if d.attempts > 0 {
                Document::insert(&mut max, format!("{at}.attempts"), d.attempts);
                Document::insert(&mut min, format!("{at}.first_ms"), now_ms);
            }
            if let Some(p) = &d.parent {
                Document::insert(&mut set, format!("{at}.parent"), p.as_str());
            }
            if let Some(n) = &d.node {
                Document::insert(&mut set, format!("{at}.node"), n.as_str());
            }
        }
        [("$inc", inc), ("$max", max), ("$min", min), ("$set", set)]
    }

    /// The `nodes` document of a run whose states are exactly these (a new
    /// run, an adopted one), at `now_ms`.
    pub fn document(&self, now_ms: i64) -> Document {
        let mut out = Document::new();
        for (ident, d) in &self.0 {
            let counts: Document = d
                .counts
                .iter()
                .filter(|(_, n)| **n != 0)
                .map(|(b, n)| (b.to_string(), Bson::Int64(*n)))
                .collect();
            let mut node = doc! {"counts": counts, "attempts": d.attempts,
            "first_ms": now_ms, "last_ms": now_ms};
            if let Some(p) = &d.parent {
                node.insert("parent", p.as_str());
            }
            if let Some(n) = &d.node {
                node.insert("node", n.as_str());
            }
            out.insert(key(ident), node);
        }
        out
    }
}

/// Adds `ops` (from [`NodeDeltas::operators`]) to the update document
/// `update`, next to its own operators.
pub fn add_operators(update: &mut Document, ops: [(&'static str, Document); 4]) {
    for (op, fields) in ops {
        if fields.is_empty() {
            continue;
        }
        match update.get_mut(op) {
            Some(Bson::Document(existing)) => existing.extend(fields),
            _ => {
                update.insert(op, fields);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_escape_what_a_field_name_cannot_hold() {
        for ident in [
            "work", "a.b", "$x", "x$", "50%", "%2E", "%252E", "a.%.$", "é.%",
        ] {
            let k = key(ident);
            assert!(!k.contains('.') && !k.starts_with('$'), "{ident} -> {k}");
            assert_eq!(identifier(&k), ident, "{k}");
        }
        assert_eq!(key("a.b"), "a%2Eb");
        assert_eq!(key("$x"), "%24x");
    }

    #[test]
    fn buckets_follow_the_counter_groups() {
        for s in StateStatus::ALL.into_iter().chain([StateStatus::Cancelled]) {
            assert_eq!(group_of(bucket(s)), Some(s.group()), "{s}");
        }
        assert_eq!(bucket(StateStatus::Queued), PENDING);
        assert_eq!(bucket(StateStatus::Pruned), "PRUNED");
        assert_eq!(group_of("NOPE"), None);
    }

    fn state(ident: &str, status: StateStatus, retry: i64, parents: &[&str]) -> StateDoc {
        let mut st: StateDoc = mongodb::bson::from_document(doc! {
            "_id": mongodb::bson::oid::ObjectId::new(), "node_name": "Work", "namespace_name": "ns",
            "identifier": ident, "graph_name": "g", "run_id": "r", "status": status.as_str(),
            "inputs": {}, "outputs": {}, "parents": {}, "retry_count": retry, "enqueue_after": 0_i64,
            "created_at": mongodb::bson::DateTime::from_millis(0),
            "updated_at": mongodb::bson::DateTime::from_millis(0),
        })
        .expect("a state");
        for p in parents {
            st.parents.insert(*p, mongodb::bson::oid::ObjectId::new());
        }
        st
    }

    #[test]
    fn a_transaction_becomes_operators_on_the_run() {
        let mut d = NodeDeltas::default();
        let work = state("work", StateStatus::Queued, 0, &["start", "fan"]);
        d.insert(&work);
        d.insert(&state("work", StateStatus::Created, 2, &["start", "fan"]));
        d.moved(&work, StateStatus::Queued, StateStatus::Executed);
        d.moved(&work, StateStatus::Executed, StateStatus::Success);
        let mut other = NodeDeltas::default();
        other.moved(
            &state("a.b", StateStatus::Queued, 0, &[]),
            StateStatus::Queued,
            StateStatus::Errored,
        );
        d.merge(&other);
        let mut update = doc! {"$inc": {"total_count": 2}};
        add_operators(&mut update, d.operators(7));
        assert_eq!(
            update,
            doc! {
                "$inc": {"total_count": 2, "nodes.a%2Eb.counts.ERRORED": 1_i64, "nodes.a%2Eb.counts.PENDING": -1_i64,
                         "nodes.work.counts.PENDING": 1_i64, "nodes.work.counts.SUCCESS": 1_i64},
                "$max": {"nodes.a%2Eb.last_ms": 7_i64, "nodes.work.last_ms": 7_i64, "nodes.work.attempts": 3_i64},
                "$min": {"nodes.work.first_ms": 7_i64},
                "$set": {"nodes.work.parent": "fan", "nodes.work.node": "Work"},
            }
        );
        assert!(!d.is_zero());
        let mut nothing = NodeDeltas::default();
        nothing.moved(&work, StateStatus::Created, StateStatus::Queued);
        assert!(nothing.is_zero());
        assert_eq!(nothing.operators(1).map(|(_, d)| d.len()), [0, 0, 0, 0]);
    }

    #[test]
    fn a_new_run_holds_its_root() {
        let mut d = NodeDeltas::default();
        d.insert(&state("start", StateStatus::Queued, 0, &[]));
        assert_eq!(
            d.document(5),
            doc! {"start": {"counts": {"PENDING": 1_i64}, "attempts": 1_i64, "first_ms": 5_i64,
            "last_ms": 5_i64, "node": "Work"}}
        );
    }
}
