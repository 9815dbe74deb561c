//! The consume loop against a real nats-server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::{completion_consumer, stored};
use exo_bus::{ConsumeOptions, Disposition, Outgoing, consume};
use exo_types::subjects::{self, ResultKind};
use tokio_util::sync::CancellationToken;

/// A message must not wait in a client-side buffer while its 1 s ack wait
/// runs out: with one slow handler slot and 12 messages queued (3.6 s of
/// work), every message is delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_are_not_delivered_twice_behind_slow_handlers() -> anyhow::Result<()> {
    let (_nats, bus) = common::bus("consume-test").await?;
    let subject = subjects::result("t", ResultKind::Executed);
    let msgs: Vec<Outgoing> = (0..12)
        .map(|i| Outgoing::json(subject.clone(), format!("m{i}"), &i))
        .collect::<Result<_, _>>()?;
    bus.publish_batch(msgs).await?;
    let consumer = completion_consumer(&bus).await?;
    let seen: Arc<Mutex<Vec<(u64, i64)>>> = Arc::default();
    let token = CancellationToken::new();
    let opts = common::completion_options(1, 32);
    let s2 = seen.clone();
    let task = tokio::spawn(consume(
        bus.clone(),
        consumer,
        opts,
        token.clone(),
        move |d| {
            let seen = s2.clone();
            async move {
                seen.lock().expect("lock").push((d.seq, d.delivered));
                tokio::time::sleep(Duration::from_millis(300)).await;
                Disposition::Ack
            }
        },
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.lock().expect("lock").len() < 12 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Long enough for any redelivery of a buffered message to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    token.cancel();
    task.await??;
    let seen = seen.lock().expect("lock").clone();
    let twice: Vec<_> = seen.iter().filter(|(_, d)| *d > 1).collect();
    assert!(twice.is_empty(), "delivered again while queued: {twice:?}");
    assert_eq!(seen.len(), 12, "{seen:?}");
    Ok(())
}

/// Infrastructure errors (the handler answers `Retry`) are redelivered for
/// as long as they last, with capped backoff: a message failing 30 times in
/// a row (beyond any max-deliver limit a broker might impose) is neither
/// dead-lettered nor dropped, and is handled once the failure clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_handlers_are_retried_without_limit_and_never_dead_lettered() -> anyhow::Result<()>
{
    let (_nats, bus) = common::bus("consume-test").await?;
    let subject = subjects::result("t", ResultKind::Executed);
    bus.publish(Outgoing::json(subject, "m".into(), &1)?)
        .await?;
    let consumer = completion_consumer(&bus).await?;
    const FAILURES: i64 = 30;
    let deliveries: Arc<Mutex<Vec<i64>>> = Arc::default();
    let token = CancellationToken::new();
    let opts = ConsumeOptions {
        stream: subjects::STREAM_RESULTS.into(),
        consumer: subjects::CONSUMER_COMPLETION.into(),
        concurrency: 1,
        batch: 1,
        retry_backoff: exo_bus::RetryBackoff {
            first: Duration::from_millis(5),
            max: Duration::from_millis(20),
        },
        budget: None,
    };
    let seen = deliveries.clone();
    let task = tokio::spawn(consume(
        bus.clone(),
        consumer,
        opts,
        token.clone(),
        move |d| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("lock").push(d.delivered);
                if d.delivered <= FAILURES {
                    Disposition::Retry("MongoDB is down".into())
                } else {
                    Disposition::Ack
                }
            }
        },
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while deliveries.lock().expect("lock").len() <= FAILURES as usize
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Long enough for a wrongly unsettled message to come back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    token.cancel();
    task.await??;
    let seen = deliveries.lock().expect("lock").clone();
    assert_eq!(
        seen,
        (1..=FAILURES + 1).collect::<Vec<_>>(),
        "redelivered after every failure, handled once it succeeded"
    );
    assert_eq!(
        stored(&bus, subjects::STREAM_DLQ).await?,
        0,
        "nothing dead-lettered"
    );
    assert_eq!(
        stored(&bus, subjects::STREAM_RESULTS).await?,
        0,
        "acked once handled"
    );
    Ok(())
}

/// During a rolling upgrade an older replica may receive a message of a
/// newer protocol (`Exo-Protocol` above its own): it neither handles nor
/// drops it, but leaves it in the stream for a replica that knows it, and
/// goes on handling the messages of its own protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_a_newer_protocol_are_left_for_a_newer_replica() -> anyhow::Result<()> {
    let (_nats, bus) = common::bus("consume-test").await?;
    let subject = subjects::result("t", ResultKind::Executed);
    for (body, version) in [
        ("newer", Some("2")),
        ("ours", Some("1")),
        ("unversioned", None),
    ] {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(v) = version {
            headers.insert(exo_types::messages::HEADER_PROTOCOL, v);
        }
        bus.jetstream()
            .publish_with_headers(subject.clone(), headers, body.into())
            .await?
            .await?;
    }
    let consumer = completion_consumer(&bus).await?;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let token = CancellationToken::new();
    let opts = common::completion_options(4, 32);
    let s2 = seen.clone();
    let task = tokio::spawn(consume(
        bus.clone(),
        consumer,
        opts,
        token.clone(),
        move |d| {
            let seen = s2.clone();
            async move {
                seen.lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&d.payload).to_string());
                Disposition::Ack
            }
        },
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.lock().expect("lock").len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Long enough for the newer message to have been offered (and left).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    token.cancel();
    task.await??;
    let mut seen = seen.lock().expect("lock").clone();
    seen.sort();
    assert_eq!(seen, ["ours", "unversioned"]);
    assert_eq!(
        stored(&bus, subjects::STREAM_RESULTS).await?,
        1,
        "the newer message is kept"
    );
    Ok(())
}
