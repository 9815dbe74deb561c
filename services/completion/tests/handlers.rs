//! Handler-level tests of the `completion` service against a real nats-server
//! and a real MongoDB-wire server: each reproduces a crash-safety finding
//! by calling the handlers directly, with fail points to cut a handler at a
//! boundary or to widen a race window. Every test runs in its own process
//! (nextest), so fail point configuration does not leak between tests.

use std::time::Duration;

use exo_completion::handlers::on_executed;
use exo_engine::Outcome;
use exo_retry::handlers::on_errored;
use exo_test_support::handlers::{HandlerEnv, hex, outputs, split_work};
use exo_types::ids;
use exo_types::messages::{Errored, Executed};
use exo_types::status::StateStatus;

/// Finding 0: a crash between two fan-out chunks, then a redelivery, must
/// leave every output as exactly one state. The first delivery committed
/// chunks [0,256) and [256,512); the redelivery used to walk a grid shifted
/// by one and never insert sibling 512.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_redelivery_after_a_crash_between_chunks_loses_nothing() -> anyhow::Result<()> {
    let e = HandlerEnv::start(split_work()).await?;
    let root = e.seed_root("r1", StateStatus::Queued, 0).await?;
    let msg = Executed {
        state_id: root.parse()?,
        attempt: 1,
        outputs: outputs(600),
    };
    // The second commit of this delivery (chunk [256,512)) commits, then the
    // handler fails as if the process died right after it.
    exo_faults::configure("store.commit", "1*off->return(error)").map_err(anyhow::Error::msg)?;
    let first = on_executed(&e.engine, msg.clone(), 1).await;
    assert!(
        first.is_err(),
        "the injected failure stops the first delivery"
    );
    exo_faults::clear("store.commit");
    assert_eq!(e.count("r1", "split").await?, 512);
    assert_eq!(on_executed(&e.engine, msg, 1).await?, Outcome::Done);
    assert_eq!(
        e.count("r1", "split").await?,
        600,
        "every output is a state"
    );
    assert_eq!(
        e.count("r1", "work").await?,
        600,
        "every output has its successor"
    );
    let sibling = hex(ids::fanout_sibling_id(&root, 512));
    assert_eq!(e.status(&sibling).await?, StateStatus::Success);
    Ok(())
}

/// Finding 1: the same attempt reported `errored` by one copy and
/// `executed` with many outputs by another, racing. Whichever wins the first
/// transition, the state must not both retry and fan out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executed_losing_to_errored_does_not_fan_out() -> anyhow::Result<()> {
    let e = HandlerEnv::start(split_work()).await?;
    let root = e.seed_root("r2", StateStatus::Queued, 0).await?;
    // Hold the executed handler after it read the state QUEUED.
    exo_faults::configure("completion.executed.loaded", "1*sleep(1500)")
        .map_err(anyhow::Error::msg)?;
    let engine = e.engine.clone();
    let msg = Executed {
        state_id: root.parse()?,
        attempt: 1,
        outputs: outputs(600),
    };
    let executed = tokio::spawn(async move { on_executed(&engine, msg, 1).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let errored = on_errored(
        &e.engine,
        Errored {
            state_id: root.parse()?,
            attempt: 1,
            error: "boom".into(),
        },
    )
    .await?;
    assert_eq!(errored, Outcome::Done);
    let outcome = executed.await??;
    let status = e.status(&root).await?;
    let retry = exo_store::oid(ids::retry_state_id(&root));
    let retried = e.engine.store.state(retry).await?.is_some();
    let sibling = exo_store::oid(ids::fanout_sibling_id(&root, 300));
    let fanned = e.engine.store.state(sibling).await?.is_some();
    if matches!(outcome, Outcome::Stale(_)) {
        // The intended order: errored won the first transition.
        assert!(matches!(
            status,
            StateStatus::RetryCreated | StateStatus::Errored
        ));
        for j in [1, 255, 256, 300, 599] {
            let sibling = exo_store::oid(ids::fanout_sibling_id(&root, j));
            assert!(
                e.engine.store.state(sibling).await?.is_none(),
                "no fan-out sibling {j} of an errored attempt"
            );
        }
        assert_eq!(e.count("r2", "work").await?, 0);
    } else {
        // A slow machine let executed commit first: then nothing may retry.
        assert_eq!(outcome, Outcome::Done);
        assert_eq!(status, StateStatus::Success);
        assert!(fanned && !retried, "fanned out {fanned}, retried {retried}");
        return Ok(());
    }
    assert!(
        !(fanned && retried),
        "an attempt both fanned out and retried"
    );
    Ok(())
}

/// A result with one output is applied in one transaction: QUEUED →
/// SUCCESS together with its successor (inserted QUEUED, attempt 1), never
/// EXECUTED in between. A crash right after that commit loses nothing: the
/// redelivery finds the state SUCCESS with this result and dispatches the
/// successor it had not dispatched yet; a copy of the result under another
/// stream sequence (a runtime that reported twice) dispatches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_output_is_one_transaction_and_survives_a_crash_after_it() -> anyhow::Result<()> {
    let e = HandlerEnv::start(split_work()).await?;
    let root = e.seed_root("r3", StateStatus::Queued, 0).await?;
    let msg = Executed {
        state_id: root.parse()?,
        attempt: 1,
        outputs: outputs(1),
    };
    // The handler dies right after its first commit.
    exo_faults::configure("store.commit", "1*return(error)").map_err(anyhow::Error::msg)?;
    assert!(on_executed(&e.engine, msg.clone(), 1).await.is_err());
    exo_faults::clear("store.commit");
    assert_eq!(
        e.status(&root).await?,
        StateStatus::Success,
        "one commit did it all"
    );
    assert_eq!(e.count("r3", "work").await?, 1);
    let kid = hex(ids::child_state_id(&root, "work"));
    assert_eq!(e.status(&kid).await?, StateStatus::Queued);
    assert_eq!(e.dispatched("Work").await?, 0, "it died before dispatching");
    // Another message with the same result does not dispatch a state that
    // the first one holds (it may be executing already).
    assert_eq!(on_executed(&e.engine, msg.clone(), 2).await?, Outcome::Done);
    assert_eq!(e.dispatched("Work").await?, 0);
    assert_eq!(on_executed(&e.engine, msg.clone(), 1).await?, Outcome::Done);
    assert_eq!(e.count("r3", "work").await?, 1, "the successor exists once");
    assert_eq!(
        e.dispatched("Work").await?,
        1,
        "the redelivery dispatched it"
    );
    assert_eq!(on_executed(&e.engine, msg.clone(), 1).await?, Outcome::Done);
    assert_eq!(e.dispatched("Work").await?, 1, "deduplicated by its id");
    // A different result for the same attempt is refused.
    let other = Executed {
        outputs: outputs(2),
        ..msg
    };
    assert!(matches!(
        on_executed(&e.engine, other, 1).await?,
        Outcome::Stale(_)
    ));
    Ok(())
}

/// An output that cannot be stored (here an integer beyond BSON's range)
/// anywhere in a fan-out rejects the whole result before anything is
/// written: outputs are kept as text and converted chunk by chunk, so they
/// are all checked first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unstorable_output_rejects_the_fanout_before_any_write() -> anyhow::Result<()> {
    let e = HandlerEnv::start(split_work()).await?;
    let root = e.seed_root("r9", StateStatus::Queued, 0).await?;
    let mut outs = outputs(600);
    outs[400].insert("big".into(), serde_json::json!(u64::MAX));
    let msg = Executed {
        state_id: root.parse()?,
        attempt: 1,
        outputs: outs,
    };
    match on_executed(&e.engine, msg, 1).await? {
        Outcome::Reject(why) => assert!(why.contains("output 400"), "{why}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(e.count("r9", "split").await?, 1, "no sibling written");
    assert_eq!(e.count("r9", "work").await?, 0, "no successor written");
    assert_eq!(e.status(&root).await?, StateStatus::Queued);
    Ok(())
}
