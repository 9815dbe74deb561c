//! Durable consumers' counts for the metrics (`exo_consumer_*_messages`).

use std::time::Duration;

use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::{Bus, Error};

/// How often [`sample_consumers`] reads the counts.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Which consumers of a stream to sample.
#[derive(Debug, Clone)]
pub enum Sampled {
    /// These durable consumers.
    Named(Vec<String>),
    /// Every consumer of the stream (e.g. the per-node dispatch queues).
    All,
}

/// Reads the counts of `which` consumers of `stream` at once and then every
/// [`SAMPLE_EVERY`] until `shutdown`, into the metrics. A failed read is
/// logged at debug level and tried again at the next tick.
pub async fn sample_consumers(
    bus: Bus,
    stream: String,
    which: Sampled,
    shutdown: CancellationToken,
) {
    loop {
        if let Err(error) = sample_once(&bus, &stream, &which).await {
            tracing::debug!(%error, stream, "Could not sample consumer counts.");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

/// One reading of [`sample_consumers`].
pub async fn sample_once(bus: &Bus, stream: &str, which: &Sampled) -> Result<(), Error> {
    let s = bus
        .jetstream()
        .get_stream(stream)
        .await
        .map_err(|e| Error::js("get stream", e))?;
    let record = |info: &async_nats::jetstream::consumer::Info| {
        exo_metrics::consumer_counts(
            stream,
            &info.name,
            exo_metrics::ConsumerCounts {
                pending: info.num_pending,
                ack_pending: info.num_ack_pending as u64,
                redelivered: info.num_redelivered as u64,
            },
        );
    };
    match which {
        Sampled::Named(names) => {
            for name in names {
                let info = s
                    .consumer_info(name)
                    .await
                    .map_err(|e| Error::js("consumer info", e))?;
                record(&info);
            }
        }
        Sampled::All => {
            let mut all = s.consumers();
            while let Some(info) = all.next().await {
                record(&info.map_err(|e| Error::js("list consumers", e))?);
            }
        }
    }
    Ok(())
}
