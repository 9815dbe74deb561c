//! The `retry` service's handlers: a failed attempt gets the retry its
//! policy allows (or ends ERRORED); a re-queue puts a state back to CREATED
//! after a delay. Manual retries (`POST .../manual-retry`) build their
//! effects with the same constructor, [`exo_engine::attempts`].

use exo_engine::effects::{self, Effects, Update};
use exo_engine::{Engine, Error, Outcome, attempts};
use exo_store::filters::state_at;
use exo_store::mongodb::bson::{DateTime, doc};
use exo_store::mongodb::options::ReturnDocument;
use exo_store::oid;
use exo_types::ids;
use exo_types::messages::{Errored, Requeue};
use exo_types::status::StateStatus;

/// `retry`: records a failure and creates the retry attempt the policy
/// allows, or ends the state ERRORED.
pub async fn on_errored(engine: &Engine, msg: Errored) -> Result<Outcome, Error> {
    let (st, fresh) = match engine.fenced(msg.state_id, msg.attempt).await? {
        Ok(x) => x,
        Err(o) => return Ok(o),
    };
    let retry_id = oid(ids::retry_state_id(&st.id.to_hex()));
    if !fresh {
        if st.status == StateStatus::RetryCreated
            && let Some(r) = engine.store.state(retry_id).await?
            && r.status == StateStatus::Created
        {
            engine.publish_created(&[r]).await?;
            return Ok(Outcome::Done);
        }
        // Its delivery may have ended the run and died before telling it.
        engine.publish_finished_again(&st).await?;
        return Ok(Outcome::Stale(format!("state is {}", st.status)));
    }
    let graph = engine.graph_for(&st).await?;
    let now = engine.now_ms();
    let (lg, policy) = match graph {
        Ok(g) => {
            let p = g.graph.spec().retry_policy_for(&st.identifier).clone();
            (Some(g), Some(p))
        }
        Err(_) => (None, None),
    };
    let mut fx = Effects::new(lg, &st.run_id);
    let stamp = DateTime::from_millis(now);
    let policy = policy.filter(|p| st.retry_count < p.max_retries);
    let retrying = policy.is_some();
    match policy {
        Some(p) => {
            let r = attempts::retry_attempt(&st, retry_id, &p, now, &mut rand::rng());
            fx.transition(
                &st,
                StateStatus::Queued,
                StateStatus::RetryCreated,
                Update {
                    filter: state_at(st.id, StateStatus::Queued, st.attempt),
                    update: doc! {"$set": {"status": StateStatus::RetryCreated.as_str(), "error": &msg.error, "updated_at": stamp}},
                    expect: 1,
                },
            );
            fx.insert(r);
        }
        None => {
            tracing::warn!(exo.state_id = %st.id, exo.run_id = %st.run_id, exo.node = %st.identifier,
                error = %msg.error, retry_count = st.retry_count, "The state failed with no retry left.");
            fx.transition(
                &st,
                StateStatus::Queued,
                StateStatus::Errored,
                Update {
                    filter: state_at(st.id, StateStatus::Queued, st.attempt),
                    update: doc! {"$set": {"status": StateStatus::Errored.as_str(), "error": &msg.error, "updated_at": stamp}},
                    expect: 1,
                },
            )
        }
    }
    let applied = effects::apply(&engine.store, &fx, now).await?;
    if retrying && applied.is_some() {
        exo_service::metrics::retry("policy");
    }
    engine.after_apply(&st, applied).await?;
    Ok(Outcome::Done)
}

/// `retry`: puts a state back to CREATED to run again after a delay.
pub async fn on_requeue(engine: &Engine, msg: Requeue) -> Result<Outcome, Error> {
    if msg.delay_ms <= 0 {
        return Ok(Outcome::Reject(format!(
            "delay_ms must be > 0, got {}",
            msg.delay_ms
        )));
    }
    let (st, fresh) = match engine.fenced(msg.state_id, msg.attempt).await? {
        Ok(x) => x,
        Err(o) => return Ok(o),
    };
    if !fresh {
        if st.status == StateStatus::Created {
            engine.publish_transition(&st, StateStatus::Queued).await?;
            engine.publish_created(&[st]).await?;
            return Ok(Outcome::Done);
        }
        return Ok(Outcome::Stale(format!("state is {}", st.status)));
    }
    let now = engine.now_ms();
    let after = engine
        .store
        .states()
        .find_one_and_update(
            state_at(st.id, StateStatus::Queued, st.attempt),
            doc! {"$set": {"status": StateStatus::Created.as_str(), "enqueue_after": now.saturating_add(msg.delay_ms),
                     "updated_at": DateTime::from_millis(now)},
            "$inc": {"requeue_gen": 1i64}},
        )
        .return_document(ReturnDocument::After)
        .await
        .map_err(exo_store::Error::from)?;
    if after.is_some() {
        exo_faults::point("store.write")?;
        exo_service::metrics::state_transitions(StateStatus::Created.as_str(), 1);
        exo_service::metrics::retry("requeue");
    }
    match after {
        Some(s) => {
            engine.publish_transition(&s, StateStatus::Queued).await?;
            engine.publish_created(&[s]).await?;
            Ok(Outcome::Done)
        }
        None => Ok(Outcome::Stale("state moved on".into())),
    }
}
