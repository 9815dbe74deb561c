//! Publishing against a real nats-server: every message carries its
//! deterministic `Nats-Msg-Id`, so JetStream drops a second copy published
//! within the duplicate window (a redelivered handler publishing again).

use exo_bus::{Bus, Outgoing};
use exo_test_support::NatsServer;
use exo_types::messages::HEADER_PROTOCOL;
use exo_types::subjects;

async fn bus() -> anyhow::Result<(NatsServer, Bus)> {
    exo_test_support::init_test_tracing();
    let nats = NatsServer::start().await?;
    let bus = Bus::connect(&nats.url(), "publish-test").await?;
    bus.provision().await?;
    Ok((nats, bus))
}

async fn stored(bus: &Bus, stream: &str) -> anyhow::Result<u64> {
    Ok(bus
        .jetstream()
        .get_stream(stream)
        .await?
        .info()
        .await?
        .state
        .messages)
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
