//! The consume loop against a real nats-server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use exo_bus::{Bus, ConsumeOptions, Disposition, Outgoing, consume};
use exo_test_support::NatsServer;
use exo_types::subjects::{self, ResultKind};
use tokio_util::sync::CancellationToken;

/// A message must not wait in a client-side buffer while its 1 s ack wait
/// runs out: with one slow handler slot and 12 messages queued (3.6 s of
/// work), every message is delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_are_not_delivered_twice_behind_slow_handlers() -> anyhow::Result<()> {
    exo_test_support::init_test_tracing();
    let nats = NatsServer::start().await?;
    let bus = Bus::connect(&nats.url(), "consume-test").await?;
    bus.provision().await?;
    let subject = subjects::result("t", ResultKind::Executed);
    let msgs: Vec<Outgoing> = (0..12)
        .map(|i| Outgoing::json(subject.clone(), format!("m{i}"), &i))
        .collect::<Result<_, _>>()?;
    bus.publish_batch(msgs).await?;
    let consumer = bus
        .service_consumer(
            subjects::STREAM_RESULTS,
            subjects::CONSUMER_COMPLETION,
            &subjects::COMPLETION_FILTERS,
        )
        .await?;
    let seen: Arc<Mutex<Vec<(u64, i64)>>> = Arc::default();
    let token = CancellationToken::new();
    let opts = ConsumeOptions {
        stream: subjects::STREAM_RESULTS.into(),
        consumer: subjects::CONSUMER_COMPLETION.into(),
        concurrency: 1,
        batch: 32,
        retry_backoff: Default::default(),
    };
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
    exo_test_support::init_test_tracing();
    let nats = NatsServer::start().await?;
    let bus = Bus::connect(&nats.url(), "consume-test").await?;
    bus.provision().await?;
    let subject = subjects::result("t", ResultKind::Executed);
    bus.publish(Outgoing::json(subject, "m".into(), &1)?)
        .await?;
    let consumer = bus
        .service_consumer(
            subjects::STREAM_RESULTS,
            subjects::CONSUMER_COMPLETION,
            &subjects::COMPLETION_FILTERS,
        )
        .await?;
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
    let dlq = bus
        .jetstream()
        .get_stream(subjects::STREAM_DLQ)
        .await?
        .info()
        .await?
        .state
        .messages;
    assert_eq!(dlq, 0, "nothing dead-lettered");
    let left = bus
        .jetstream()
        .get_stream(subjects::STREAM_RESULTS)
        .await?
        .info()
        .await?
        .state
        .messages;
    assert_eq!(left, 0, "acked once handled");
    Ok(())
}
