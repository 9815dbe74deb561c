//! Publishing against a real nats-server: every message carries its
//! deterministic `Nats-Msg-Id`, so JetStream drops a second copy published
//! within the duplicate window (a redelivered handler publishing again).

mod common;

use common::{completion_consumer, stored};
use exo_bus::Outgoing;
use exo_types::messages::HEADER_PROTOCOL;
use exo_types::subjects;

async fn bus() -> anyhow::Result<(exo_test_support::NatsServer, exo_bus::Bus)> {
    common::bus("publish-test").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_twice_is_stored_once_with_its_id() -> anyhow::Result<()> {
    let (_nats, bus) = bus().await?;
    let subject = subjects::dispatch("ns", "Node");
    let msg = || Outgoing::json(subject.clone(), "dsp:abc:1".into(), &1);
    bus.publish(msg()?).await?;
    bus.publish(msg()?).await?;
    assert_eq!(
        stored(&bus, subjects::STREAM_DISPATCH).await?,
        1,
        "second copy dropped"
    );

    let raw = bus
        .jetstream()
        .get_stream(subjects::STREAM_DISPATCH)
        .await?
        .get_last_raw_message_by_subject(&subject)
        .await?;
    let headers = raw.headers;
    assert_eq!(
        headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some("dsp:abc:1"),
        "{headers:?}"
    );
    assert!(headers.get(HEADER_PROTOCOL).is_some(), "{headers:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_repeating_ids_stores_each_id_once() -> anyhow::Result<()> {
    let (_nats, bus) = bus().await?;
    let subject = subjects::result("ns", subjects::ResultKind::Executed);
    let msgs: Vec<Outgoing> = (0..10)
        .map(|i| Outgoing::json(subject.clone(), format!("r{}", i % 4), &i))
        .collect::<Result<_, _>>()?;
    bus.publish_batch(msgs).await?;
    assert_eq!(stored(&bus, subjects::STREAM_RESULTS).await?, 4);
    Ok(())
}

/// A request waits for the consuming loop's reply, which carries the
/// handler's outcome; a repeated request (same id) is answered `Duplicate`
/// at once; with no consumer running it times out (the message stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_the_handlers_outcome() -> anyhow::Result<()> {
    use exo_bus::{Answer, Disposition, Replies, consume};
    use exo_types::messages::{Reply, ReplyOutcome};
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    let (_nats, bus) = bus().await?;
    let replies = Replies::start(&bus).await?;
    let subject = subjects::result("ns", subjects::ResultKind::Executed);
    let wait = Duration::from_millis(500);
    let timed_out = replies
        .request(Outgoing::json(subject.clone(), "early".into(), &0)?, wait)
        .await?;
    assert_eq!(timed_out, Answer::TimedOut, "no consumer yet");

    let consumer = completion_consumer(&bus).await?;
    let token = CancellationToken::new();
    let opts = common::completion_options(4, 8);
    let task = tokio::spawn(consume(
        bus.clone(),
        consumer,
        opts,
        token.clone(),
        |d| async move {
            match serde_json::from_slice::<i64>(&d.payload).unwrap_or(-1) {
                1 => Disposition::Stale("state is SUCCESS".into()),
                2 => Disposition::Reject("malformed".into()),
                _ => Disposition::Ack,
            }
        },
    ));
    let wait = Duration::from_secs(10);
    let ask = |id: &str, v: i64| Outgoing::json(subject.clone(), id.to_string(), &v);
    assert_eq!(
        replies.request(ask("a", 0)?, wait).await?,
        Answer::Replied(Reply {
            outcome: ReplyOutcome::Done,
            reason: None
        })
    );
    assert_eq!(
        replies.request(ask("b", 1)?, wait).await?,
        Answer::Replied(Reply {
            outcome: ReplyOutcome::Stale,
            reason: Some("state is SUCCESS".into())
        })
    );
    assert_eq!(
        replies.request(ask("c", 2)?, wait).await?,
        Answer::Replied(Reply {
            outcome: ReplyOutcome::Rejected,
            reason: Some("malformed".into())
        })
    );
    assert_eq!(
        replies.request(ask("a", 0)?, wait).await?,
        Answer::Duplicate
    );
    token.cancel();
    task.await??;
    Ok(())
}
