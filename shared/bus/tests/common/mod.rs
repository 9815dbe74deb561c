//! Set-up shared by the bus tests: a real nats-server with the streams
//! provisioned, the completion service's consumer, stream counts.

use async_nats::jetstream::consumer::PullConsumer;
use exo_bus::{Bus, ConsumeOptions};
use exo_test_support::NatsServer;
use exo_types::subjects;

/// A fresh nats-server and a provisioned bus on it (keep the server alive).
pub async fn bus(name: &str) -> anyhow::Result<(NatsServer, Bus)> {
    exo_test_support::init_test_tracing();
    let nats = NatsServer::start().await?;
    let bus = Bus::connect(&nats.url(), name).await?;
    bus.provision().await?;
    Ok((nats, bus))
}

/// The `completion` service's durable consumer on the results stream.
pub async fn completion_consumer(bus: &Bus) -> anyhow::Result<PullConsumer> {
    Ok(bus
        .service_consumer(
            subjects::STREAM_RESULTS,
            subjects::CONSUMER_COMPLETION,
            &subjects::COMPLETION_FILTERS,
        )
        .await?)
}

/// Options of a consume loop on the completion service's consumer,
/// `concurrency` handlers and pulls of `batch` at once.
pub fn completion_options(concurrency: usize, batch: usize) -> ConsumeOptions {
    ConsumeOptions {
        stream: subjects::STREAM_RESULTS.into(),
        consumer: subjects::CONSUMER_COMPLETION.into(),
        concurrency,
        batch,
        retry_backoff: Default::default(),
        budget: None,
    }
}

/// Messages stored in `stream`.
pub async fn stored(bus: &Bus, stream: &str) -> anyhow::Result<u64> {
    Ok(bus
        .jetstream()
        .get_stream(stream)
        .await?
        .info()
        .await?
        .state
        .messages)
}
