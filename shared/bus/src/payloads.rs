//! Payloads larger than the server's `max_payload` (1 MiB on a stock
//! nats-server, the Helm chart's default): the bytes go to the JetStream
//! object store [`PAYLOAD_BUCKET`] (stored in 128 KiB chunks, so any
//! `max_payload` works) and the message carries an empty body with
//! [`HEADER_PAYLOAD_REF`] naming the object. Readers resolve it with
//! [`Bus::payload_of`]; the consume loop does so before a handler sees the
//! message and deletes the object once its ack is confirmed, as does the
//! `api` after handing a dispatch out. Objects nobody deletes (dispatches
//! read by NATS runtimes, payloads of dead letters) expire after
//! [`PAYLOAD_MAX_AGE`].

use std::time::Duration;

use async_nats::jetstream::object_store::{self, ObjectStore};
use bytes::Bytes;
use exo_types::messages::HEADER_PAYLOAD_REF;
use tokio::io::AsyncReadExt;

use crate::{Bus, Error, Publish};

/// The object store bucket holding large payloads.
pub const PAYLOAD_BUCKET: &str = "EXO_PAYLOADS";
/// How long an unclaimed large payload is kept.
pub const PAYLOAD_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Payloads up to this size are always sent inline.
const ALWAYS_INLINE: usize = 64 * 1024;
/// Room left for headers and the protocol overhead below `max_payload`.
const HEADROOM: usize = 16 * 1024;
/// `max_payload` assumed before the server said (NATS's default).
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// Why a message's payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The object is gone (expired or deleted): the message can never be
    /// handled.
    #[error("payload object {0} is missing")]
    Missing(String),
    /// NATS failed; try again later.
    #[error(transparent)]
    Bus(#[from] Error),
}

/// The object name of a message id (object names allow `[-/_=.a-zA-Z0-9]`).
fn object_name(msg_id: &str) -> String {
    msg_id
        .chars()
        .map(|c| match c {
            ':' => '.',
            c if c.is_ascii_alphanumeric() || "-/_=.".contains(c) => c,
            _ => '_',
        })
        .collect()
}

impl Bus {
    /// The largest payload sent inline.
    fn inline_limit(&self) -> usize {
        let max = match self.client.server_info().max_payload {
            0 => DEFAULT_MAX_PAYLOAD,
            n => n,
        };
        max.saturating_sub(HEADROOM).max(ALWAYS_INLINE)
    }

    async fn payload_store(&self) -> Result<ObjectStore, Error> {
        self.payloads
            .get_or_try_init(|| async {
                match self.js.get_object_store(PAYLOAD_BUCKET).await {
                    Ok(s) => Ok(s),
                    Err(_) => self
                        .js
                        .create_object_store(object_store::Config {
                            bucket: PAYLOAD_BUCKET.to_string(),
                            description: Some("Payloads above max_payload (exo)".into()),
                            max_age: PAYLOAD_MAX_AGE,
                            num_replicas: self.replicas.unwrap_or(1),
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| Error::js("payload bucket", e)),
                }
            })
            .await
            .cloned()
    }

    /// The publication of `payload` under `msg_id`: inline, or through the
    /// object store when it is too large for the server.
    pub(crate) async fn prepare(&self, payload: Bytes, msg_id: &str) -> Result<Publish, Error> {
        if payload.len() <= ALWAYS_INLINE || payload.len() <= self.inline_limit() {
            return Ok(Self::publication(payload, msg_id));
        }
        let name = object_name(msg_id);
        let store = self.payload_store().await?;
        store
            .put(name.as_str(), &mut payload.as_ref())
            .await
            .map_err(|e| Error::js("payload put", e))?;
        tracing::debug!(object = %name, bytes = payload.len(), "Large payload stored in the object store.");
        Ok(Self::publication(Bytes::new(), msg_id).header(HEADER_PAYLOAD_REF, name.as_str()))
    }

    /// The payload of a received message: its body, or the object its
    /// [`HEADER_PAYLOAD_REF`] names.
    pub async fn payload_of(&self, msg: &async_nats::Message) -> Result<Bytes, PayloadError> {
        let Some(name) = payload_ref(msg) else {
            return Ok(msg.payload.clone());
        };
        let store = self.payload_store().await?;
        let mut object = match store.get(name).await {
            Ok(o) => o,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                return Err(PayloadError::Missing(name.to_string()));
            }
            Err(e) => return Err(Error::js("payload get", e).into()),
        };
        let mut buf = Vec::new();
        object
            .read_to_end(&mut buf)
            .await
            .map_err(|e| Error::js("payload read", e))?;
        Ok(Bytes::from(buf))
    }

    /// Deletes the object holding a settled message's payload, if any
    /// (best effort: an object left behind expires).
    pub async fn forget_payload(&self, msg: &async_nats::Message) {
        let Some(name) = payload_ref(msg) else { return };
        let deleted = match self.payload_store().await {
            Ok(store) => store.delete(name).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = deleted {
            tracing::debug!(%error, object = name, "Could not delete a payload object.");
        }
    }
}

/// The object a message's payload is in, if it is large.
pub fn payload_ref(msg: &async_nats::Message) -> Option<&str> {
    msg.headers
        .as_ref()?
        .get(HEADER_PAYLOAD_REF)
        .map(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::object_name;

    #[test]
    fn object_names_keep_ids_readable_and_valid() {
        assert_eq!(object_name("res:executed:65f0:1"), "res.executed.65f0.1");
        assert_eq!(object_name("trg:3fa8-5f64"), "trg.3fa8-5f64");
        assert_eq!(object_name("a b+c"), "a_b_c");
    }
}
