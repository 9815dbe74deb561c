//! Handler-level tests of the `scheduler` service against a real nats-server
//! and a real MongoDB-wire server: each reproduces a crash-safety finding
//! by calling the handlers directly, with fail points to cut a handler at a
//! boundary or to widen a race window. Every test runs in its own process
//! (nextest), so fail point configuration does not leak between tests.

use exo_engine::Outcome;
use exo_scheduler::handlers::{announce_due, on_created};
use exo_store::mongodb::bson::doc;
use exo_test_support::handlers::{HandlerEnv, split_work};
use exo_types::status::StateStatus;
use exo_types::{ids, time};

/// Finding 4: a late `state.created` copy (a reconciler announcement, a
/// resumed fan-out re-announcing a child) must not dispatch a state that is
/// already QUEUED; only a redelivery of the message that claimed it may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_announcement_does_not_dispatch_a_queued_state_again() -> anyhow::Result<()> {
    let e = HandlerEnv::start(split_work()).await?;
    let root = e.seed_root("r3", StateStatus::Created, 0).await?;
    // Claimed by the message with stream sequence 1.
    assert_eq!(
        on_created(&e.engine, e.created(&root, 0), 1).await?,
        Outcome::Done
    );
    let late = on_created(&e.engine, e.created(&root, 0), 77).await?;
    assert!(
        matches!(late, Outcome::Stale(_)),
        "a copy with another sequence is stale: {late:?}"
    );
    let redelivery = on_created(&e.engine, e.created(&root, 0), 1).await?;
    assert_eq!(
        redelivery,
        Outcome::Done,
        "the claiming message may publish again"
    );
    let st = e
        .engine
        .store
        .state(exo_store::oid(ids::root_state_id("r3")))
        .await?
        .expect("root");
    assert_eq!((st.status, st.attempt), (StateStatus::Queued, 1));
    Ok(())
}

/// Finding 3: a long delay is parked in MongoDB, not on the consumer, and is
/// announced once due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_delays_are_parked_in_mongodb_and_announced_when_due() -> anyhow::Result<()> {
    let e = HandlerEnv::start(split_work()).await?;
    let due = time::now_ms() + 600_000;
    let root = e.seed_root("r4", StateStatus::Created, due).await?;
    let outcome = on_created(&e.engine, e.created(&root, due), 1).await?;
    assert_eq!(outcome, Outcome::Done, "acked, not held on the consumer");
    let raw = e
        .engine
        .store
        .states_raw()
        .find_one(doc! {"run_id": "r4"})
        .await?
        .expect("root");
    assert_eq!(raw.get_bool("parked").ok(), Some(true));
    assert_eq!(announce_due(&e.engine, 100).await?, 0, "not due yet");
    e.engine
        .store
        .states()
        .update_one(
            doc! {"run_id": "r4"},
            doc! {"$set": {"enqueue_after": time::now_ms() - 1}},
        )
        .await?;
    assert_eq!(announce_due(&e.engine, 100).await?, 1, "announced once due");
    // A short delay still waits on the stream.
    let short = on_created(&e.engine, e.created(&root, time::now_ms() + 1_000), 2).await?;
    assert!(matches!(short, Outcome::Delay(_)), "{short:?}");
    Ok(())
}

/// Finding 5: the lease reaper claims a new attempt before it publishes; a
/// publish that fails leaves the claim's short lease on the state, so a
/// later pass dispatches it instead of the state being stranded QUEUED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lease_re_dispatch_is_retried_by_a_later_pass() -> anyhow::Result<()> {
    use exo_scheduler::{REAP_RETRY, reap_leases};
    let e = HandlerEnv::start(split_work()).await?;
    let root = e.seed_root("r5", StateStatus::Created, 0).await?;
    assert_eq!(
        on_created(&e.engine, e.created(&root, 0), 1).await?,
        Outcome::Done
    );
    let id = exo_store::oid(ids::root_state_id("r5"));
    // Handed out over HTTP for attempt 1; the lease ran out.
    let expired = time::now_ms() - 1;
    e.engine
        .store
        .states_raw()
        .update_one(
            doc! {"_id": id},
            doc! {"$set": {"lease_until": expired, "lease_attempt": 1i64}},
        )
        .await?;

    exo_faults::configure("bus.publish", "return(error)").map_err(anyhow::Error::msg)?;
    let before = time::now_ms();
    assert!(reap_leases(&e.engine).await.is_err(), "the publish failed");
    exo_faults::clear("bus.publish");
    let st = e.engine.store.state(id).await?.expect("state");
    assert_eq!(
        (st.status, st.attempt),
        (StateStatus::Queued, 2),
        "claimed a new attempt"
    );
    let raw = e
        .engine
        .store
        .states_raw()
        .find_one(doc! {"_id": id})
        .await?
        .expect("raw");
    let lease = raw.get_i64("lease_until")?;
    assert!(
        lease >= before + REAP_RETRY.as_millis() as i64,
        "the claim keeps a retry lease ({lease}), so the state is not stranded"
    );
    // Nothing is due before the retry lease runs out ...
    assert_eq!(reap_leases(&e.engine).await?, 0);
    // ... and once it has, a later pass dispatches a new attempt.
    e.engine
        .store
        .states_raw()
        .update_one(
            doc! {"_id": id},
            doc! {"$set": {"lease_until": time::now_ms() - 1}},
        )
        .await?;
    assert_eq!(reap_leases(&e.engine).await?, 1);
    let st = e.engine.store.state(id).await?.expect("state");
    assert_eq!((st.status, st.attempt), (StateStatus::Queued, 3));
    let raw = e
        .engine
        .store
        .states_raw()
        .find_one(doc! {"_id": id})
        .await?
        .expect("raw");
    assert!(
        !raw.contains_key("lease_until"),
        "published: the claim is cleared"
    );
    Ok(())
}

/// Claims handled concurrently share round trips, and each message still
/// learns whether it holds its state's claim: every state is claimed once,
/// by its own message, and dispatched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_share_batches_and_each_state_is_claimed_once() -> anyhow::Result<()> {
    let e = HandlerEnv::start(split_work()).await?;
    let mut roots = Vec::new();
    for i in 0..100 {
        roots.push(
            e.seed_root(&format!("c{i}"), StateStatus::Created, 0)
                .await?,
        );
    }
    let mut tasks = Vec::new();
    for (i, root) in roots.iter().enumerate() {
        let engine = e.engine.clone();
        let msg = e.created(root, 0);
        tasks.push(tokio::spawn(async move {
            on_created(&engine, msg, 1000 + i as u64).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await??, Outcome::Done);
    }
    for (i, root) in roots.iter().enumerate() {
        let st = e
            .engine
            .store
            .state(exo_store::mongodb::bson::oid::ObjectId::parse_str(root)?)
            .await?
            .expect("state");
        assert_eq!(
            (st.status, st.attempt, st.claim_seq),
            (StateStatus::Queued, 1, Some(1000 + i as i64))
        );
    }
    assert!(
        e.engine.claims.batches() < 100,
        "100 concurrent claims ran {} batches",
        e.engine.claims.batches()
    );
    // A second copy of any of them is stale (not dispatched again).
    let again = on_created(&e.engine, e.created(&roots[7], 0), 1).await?;
    assert!(matches!(again, Outcome::Stale(_)), "{again:?}");
    Ok(())
}

/// A redelivered message of an older generation may claim a state that was
/// re-queued meanwhile (its claim is conditional on CREATED); it then holds
/// the claim and dispatches, and the current generation's message is stale.
/// Nothing is left QUEUED without a dispatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_generation_that_claims_dispatches() -> anyhow::Result<()> {
    let e = HandlerEnv::start(split_work()).await?;
    let root = e.seed_root("g1", StateStatus::Created, 0).await?;
    e.engine
        .store
        .states()
        .update_one(
            doc! {"_id": exo_store::mongodb::bson::oid::ObjectId::parse_str(&root)?},
            doc! {"$set": {"requeue_gen": 1i64}},
        )
        .await?;
    let old = e.created(&root, 0);
    assert_eq!(on_created(&e.engine, old, 5).await?, Outcome::Done);
    let current = m_created(&e, &root, 1);
    let late = on_created(&e.engine, current, 6).await?;
    assert!(matches!(late, Outcome::Stale(_)), "{late:?}");
    let st = e
        .engine
        .store
        .state(exo_store::mongodb::bson::oid::ObjectId::parse_str(&root)?)
        .await?
        .expect("state");
    assert_eq!((st.status, st.claim_seq), (StateStatus::Queued, Some(5)));
    Ok(())
}

fn m_created(e: &HandlerEnv, root: &str, generation: i64) -> exo_types::messages::StateCreated {
    exo_types::messages::StateCreated {
        generation,
        ..e.created(root, 0)
    }
}

/// The same parking with the engine's clock moved by hand instead of the
/// state's due time rewritten: not due, parked; the clock passes the due
/// time, announced; no sleeping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_states_fall_due_when_the_clock_passes_them() -> anyhow::Result<()> {
    use std::sync::Arc;
    let mut e = HandlerEnv::start(split_work()).await?;
    let start = time::now_ms();
    let clock = Arc::new(time::ManualClock::at(start));
    e.engine = e.engine.clone().with_clock(clock.clone());
    let due = start + 3_600_000;
    let root = e.seed_root("r6", StateStatus::Created, due).await?;
    assert_eq!(
        on_created(&e.engine, e.created(&root, due), 1).await?,
        Outcome::Done,
        "an hour away: parked in MongoDB"
    );
    assert_eq!(announce_due(&e.engine, 100).await?, 0, "not due yet");
    clock.advance(3_600_000 - 1);
    assert_eq!(
        announce_due(&e.engine, 100).await?,
        0,
        "one millisecond early"
    );
    clock.advance(1);
    assert_eq!(announce_due(&e.engine, 100).await?, 1, "due now");
    Ok(())
}
