//! New attempts of a state: the automatic retry the policy allows, the
//! manual retry an operator asks for, and fan-out siblings all start from
//! [`new_attempt`], so what a new attempt resets is written once.

use exo_store::StateDoc;
use exo_store::mongodb::bson::{DateTime, Document, doc, oid::ObjectId};
use exo_types::retry::RetryPolicy;
use exo_types::status::StateStatus;

use crate::effects::{Effects, Update};
use crate::inputs;

/// A new attempt of `st` with id `id`: CREATED now, no outputs, data, error,
/// dispatch attempt, re-queue cycle or applied result; same node, inputs,
/// lineage, run and template version. A unites state gets its fingerprint
/// recomputed.
pub fn new_attempt(st: &StateDoc, id: ObjectId, now_ms: i64) -> StateDoc {
    let now = DateTime::from_millis(now_ms);
    let mut s = st.clone();
    s.id = id;
    s.status = StateStatus::Created;
    s.outputs = Document::new();
    s.data = Document::new();
    s.error = None;
    s.enqueue_after = now_ms;
    s.attempt = 0;
    s.requeue_gen = 0;
    s.result_digest = None;
    s.fanout_chunk = None;
    s.claim_seq = None;
    s.queued_by = None;
    s.created_at = now;
    s.updated_at = now;
    s.state_fingerprint = if s.does_unites {
        inputs::fingerprint(&s)
    } else {
        String::new()
    };
    s
}

/// The automatic retry of `st` (id `H("retry", st)`), due after the
/// policy's delay for its retry count.
pub fn retry_attempt(
    st: &StateDoc,
    id: ObjectId,
    policy: &RetryPolicy,
    now_ms: i64,
    rng: &mut impl rand::Rng,
) -> StateDoc {
    let mut r = st.clone();
    r.retry_count = st.retry_count + 1;
    let mut r = new_attempt(&r, id, now_ms);
    r.enqueue_after = now_ms.saturating_add(policy.delay_ms(r.retry_count, rng));
    r
}

/// The manual-retry copy of `st` (spec §8.3): a new attempt under
/// `fanout_id`, with its own retry count.
pub fn manual_retry_copy(st: &StateDoc, fanout_id: &str, now_ms: i64) -> StateDoc {
    let mut c = st.clone();
    c.fanout_id = fanout_id.to_string();
    c.manual_retry_fanout_id = fanout_id.to_string();
    c.retry_count = 0;
    new_attempt(&c, ObjectId::new(), now_ms)
}

/// The effects of a manual retry of `st`: the copy inserted, the original
/// RETRY_CREATED (from whatever status it has), and a finished run reopened,
/// all in one transaction. Returns the copy and the effects.
pub fn manual_retry(
    st: &StateDoc,
    fanout_id: &str,
    graph: Option<std::sync::Arc<crate::graphs::LoadedGraph>>,
    now_ms: i64,
) -> (StateDoc, Effects) {
    let copy = manual_retry_copy(st, fanout_id, now_ms);
    let mut fx = Effects::new(graph, &st.run_id);
    fx.reopen_run();
    fx.insert(copy.clone());
    fx.transition(
        st,
        st.status,
        StateStatus::RetryCreated,
        Update {
            filter: doc! {"_id": st.id, "status": st.status.as_str()},
            update: doc! {"$set": {"status": StateStatus::RetryCreated.as_str(), "updated_at": DateTime::from_millis(now_ms)}},
            expect: 1,
        },
    );
    (copy, fx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use exo_types::names::{Namespace, NodeName, RunId};

    fn state() -> StateDoc {
        let now = DateTime::now();
        StateDoc {
            id: ObjectId::new(),
            node_name: NodeName::trusted("N"),
            namespace_name: Namespace::trusted("ns"),
            identifier: "n".into(),
            graph_name: "g".into(),
            run_id: RunId::trusted("r"),
            status: StateStatus::Errored,
            inputs: doc! {"x": "1"},
            outputs: doc! {"y": "2"},
            data: doc! {"d": 1},
            error: Some("boom".into()),
            parents: doc! {},
            does_unites: false,
            state_fingerprint: String::new(),
            enqueue_after: 5,
            retry_count: 1,
            fanout_id: "f".into(),
            manual_retry_fanout_id: String::new(),
            created_at: now,
            updated_at: now,
            graph_namespace: Some("ns".into()),
            graph_version: Some("ns:g:v".into()),
            attempt: 3,
            requeue_gen: 2,
            result_digest: Some("d".into()),
            fanout_chunk: None,
            claim_seq: None,
            queued_by: None,
        }
    }

    #[test]
    fn a_new_attempt_keeps_what_defines_the_work_and_resets_the_rest() {
        let st = state();
        let id = ObjectId::new();
        let a = new_attempt(&st, id, 1_000);
        assert_eq!(
            (a.id, a.status, a.attempt, a.requeue_gen),
            (id, StateStatus::Created, 0, 0)
        );
        assert!(a.outputs.is_empty() && a.data.is_empty() && a.error.is_none());
        assert_eq!((a.enqueue_after, a.result_digest.as_deref()), (1_000, None));
        assert_eq!(
            (&a.inputs, &a.run_id, &a.graph_version),
            (&st.inputs, &st.run_id, &st.graph_version)
        );
    }

    #[test]
    fn retries_count_up_and_wait_for_the_policy_and_manual_copies_start_over() {
        let st = state();
        let policy: RetryPolicy = serde_json::from_value(serde_json::json!(
            {"max_retries": 3, "strategy": "FIXED", "backoff_factor": 500}
        ))
        .expect("policy");
        let r = retry_attempt(&st, ObjectId::new(), &policy, 1_000, &mut rand::rng());
        assert_eq!((r.retry_count, r.enqueue_after), (2, 1_500));
        let m = manual_retry_copy(&st, "m1", 1_000);
        assert_eq!(
            (
                m.retry_count,
                m.fanout_id.as_str(),
                m.manual_retry_fanout_id.as_str()
            ),
            (0, "m1", "m1")
        );
    }
}
