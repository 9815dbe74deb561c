//! `exo-bus`: the NATS JetStream adapter.
//!
//! - [`Bus::connect`] and [`Bus::provision`] (idempotent stream creation, safe
//!   in every replica at start-up);
//! - publishing JSON with a deterministic `Nats-Msg-Id`, one at a time or in a
//!   window of outstanding acks ([`Bus::publish_batch`]);
//! - durable pull consumers and a consume loop ([`consume`]) that maps a
//!   handler's [`Disposition`] onto ack, nak-with-delay or term, copies
//!   rejected messages to the dead-letter stream with the reason, and
//!   replies to a requester that asked (`Exo-Reply-To`, see [`Replies`]);
//! - payloads larger than the server's `max_payload` carried through the
//!   JetStream object store [`PAYLOAD_BUCKET`] (see [`Bus::payload_of`]).

mod auth;
mod consume;
mod payloads;
mod replies;
mod sampling;
pub mod streams;
pub mod trace;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, message::PublishMessage as Publish, stream};

/// A durable pull consumer, as [`Bus::service_consumer`] returns it.
pub use async_nats::jetstream::consumer::PullConsumer;
use bytes::Bytes;
use exo_types::messages::{DeadLetter, HEADER_PROTOCOL, PROTOCOL_VERSION};
use exo_types::subjects as subj;
use serde::Serialize;

pub use auth::{AuthError, NatsAuth};
pub use consume::{
    ConsumeOptions, Delivery, Disposition, NEWER_PROTOCOL_DELAY, RetryBackoff, SharedBudget,
    consume,
};
pub use payloads::{PAYLOAD_BUCKET, PAYLOAD_MAX_AGE, PayloadError, payload_ref};
pub use replies::{Answer, MAX_REQUESTS_IN_FLIGHT, Replies, serve_requests};
pub use sampling::{SAMPLE_EVERY, Sampled, sample_consumers, sample_once};

/// Bus errors. All of them are transient from a handler's point of view.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not connect.
    #[error("could not connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    /// Credentials or TLS settings that cannot be used.
    #[error("{0}")]
    Auth(String),
    /// A JetStream API call failed.
    #[error("JetStream {what} failed: {source}")]
    JetStream {
        /// What was attempted.
        what: &'static str,
        /// The client error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A message could not be serialised.
    #[error("could not encode message: {0}")]
    Encode(#[from] serde_json::Error),
    /// A fault injected by a test at a crash point.
    #[error(transparent)]
    Injected(#[from] exo_faults::Injected),
    /// A stream is missing where it must exist, or has a setting the
    /// services need otherwise and that cannot be changed in place (see
    /// [`streams::reconcile`]), or did not reach its replicas.
    #[error("{0}")]
    Incompatible(String),
}

impl Error {
    fn js(what: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::JetStream {
            what,
            source: Box::new(e),
        }
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Subject.
    pub subject: String,
    /// Deterministic dedup id (`Nats-Msg-Id`).
    pub msg_id: String,
    /// JSON payload.
    pub payload: Bytes,
    /// Further headers (e.g. CloudEvents attributes).
    pub headers: Vec<(&'static str, String)>,
}

impl Outgoing {
    /// Encodes `value` as JSON.
    pub fn json<T: Serialize>(subject: String, msg_id: String, value: &T) -> Result<Self, Error> {
        Ok(Self {
            subject,
            msg_id,
            payload: Bytes::from(serde_json::to_vec(value)?),
            headers: Vec::new(),
        })
    }

    /// The same message with `headers` added.
    pub fn with_headers(mut self, headers: Vec<(&'static str, String)>) -> Self {
        self.headers.extend(headers);
        self
    }
}

/// Ack wait of service consumers: a message held by a crashed service is
/// redelivered this long after its last heartbeat.
pub const SERVICE_ACK_WAIT: Duration = Duration::from_secs(1);

/// Ack wait of a dispatch consumer created by the api (before any NATS
/// runtime bound it): the NATS runtime SDK's default. A NATS runtime that
/// binds sets its own (see [`Bus::dispatch_consumer`]).
pub const DISPATCH_ACK_WAIT: Duration = Duration::from_secs(30);
/// Interval of the progress acks sent while a service handles a message.
pub const SERVICE_HEARTBEAT: Duration = Duration::from_millis(300);
/// Dedup window of the work streams.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long an event waits in the inbound stream for a `trigger` replica.
pub const INBOUND_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Outstanding publish acks in [`Bus::publish_batch`].
pub const PUBLISH_WINDOW: usize = 1024;

/// Messages sent by [`Bus::send_all`] whose acks are still to come.
#[must_use = "the acks must be awaited before the messages count as published"]
pub struct Sent(std::collections::VecDeque<jetstream::context::PublishAckFuture>);

impl Sent {
    /// Nothing sent.
    pub fn none() -> Self {
        Self(Default::default())
    }

    /// Waits for every ack.
    pub async fn acked(self) -> Result<(), Error> {
        for fut in self.0 {
            acked(fut, false).await?;
        }
        Ok(())
    }
}

/// Waits for one publish ack (then passes the crash point `bus.publish`
/// when `point`).
async fn acked(fut: jetstream::context::PublishAckFuture, point: bool) -> Result<(), Error> {
    fut.await.map_err(|e| Error::js("publish ack", e))?;
    if point {
        exo_faults::point("bus.publish")?;
    }
    Ok(())
}

/// The servers of a comma-separated URL list (the client library reads a
/// string as one URL), blanks ignored.
pub fn server_list(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// A connected NATS client with its JetStream context.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    payloads: std::sync::Arc<tokio::sync::OnceCell<jetstream::object_store::ObjectStore>>,
    replicas: Option<usize>,
}

impl Bus {
    /// Connects to `url` (comma-separated list allowed), naming the connection.
    pub async fn connect(url: &str, name: &str) -> Result<Self, Error> {
        Self::connect_with(url, name, &NatsAuth::default()).await
    }

    /// [`Bus::connect`] with credentials and TLS settings.
    pub async fn connect_with(url: &str, name: &str, auth: &NatsAuth) -> Result<Self, Error> {
        let opts = auth
            .apply(async_nats::ConnectOptions::new())
            .await
            .map_err(|e| Error::Auth(e.to_string()))?;
        let client = opts
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .connect(server_list(url))
            .await?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            client,
            js,
            payloads: Default::default(),
            replicas: None,
        })
    }

    /// Streams this bus creates get `replicas` replicas, and existing ones
    /// are brought to that count (`None`, the default: created with one,
    /// existing ones kept as they are, so a runtime never undoes what the
    /// services were configured with).
    pub fn with_stream_replicas(mut self, replicas: Option<usize>) -> Self {
        self.replicas = replicas;
        self
    }

    /// The core client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Creates every stream if missing, and reconciles existing ones with
    /// what the services need (idempotent; see [`streams`]).
    pub async fn provision(&self) -> Result<(), Error> {
        let work = |name: &str, subjects: &[&str]| stream::Config {
            name: name.to_string(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        let limits = |name: &str, subjects: &str, age: Duration| stream::Config {
            name: name.to_string(),
            subjects: vec![subjects.to_string()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: age,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        let (source, destination) = subj::results_transform();
        let results = stream::Config {
            subject_transform: Some(stream::SubjectTransform {
                source,
                destination,
            }),
            ..work(subj::STREAM_RESULTS, &subj::RESULTS_SUBJECTS)
        };
        let configs = [
            work(subj::STREAM_COMMANDS, &[subj::COMMANDS_SUBJECTS]),
            work(subj::STREAM_STATES, &[subj::STATES_SUBJECTS]),
            results,
            work(subj::STREAM_DISPATCH, &[subj::DISPATCH_SUBJECTS]),
            limits(
                subj::STREAM_EVENTS,
                subj::EVENTS_SUBJECTS,
                Duration::from_secs(24 * 3600),
            ),
            limits(
                subj::STREAM_DLQ,
                subj::DLQ_SUBJECTS,
                Duration::from_secs(14 * 24 * 3600),
            ),
        ];
        streams::ensure_all(&self.js, configs.into(), self.replicas).await?;
        // The large-payload bucket is created on first use, with the
        // configured replicas; one that exists is brought to them.
        if let Some(replicas) = self.replicas {
            streams::set_replicas(&self.js, &format!("OBJ_{PAYLOAD_BUCKET}"), replicas).await?;
        }
        Ok(())
    }

    /// Makes the inbound stream hold exactly `subjects` (pairwise
    /// disjoint; none: a placeholder), creating it as a work queue kept
    /// [`INBOUND_MAX_AGE`]. Its other settings (an operator's duplicate
    /// window, …) are left as they are, its replicas too unless configured
    /// (see [`streams`]).
    pub async fn ensure_inbound(&self, subjects: &[String]) -> Result<(), Error> {
        let want = if subjects.is_empty() {
            vec![subj::INBOUND_PLACEHOLDER.to_string()]
        } else {
            subjects.to_vec()
        };
        let cfg = stream::Config {
            name: subj::STREAM_INBOUND.to_string(),
            subjects: want,
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_age: INBOUND_MAX_AGE,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        streams::ensure_all(&self.js, vec![cfg], self.replicas).await?;
        Ok(())
    }

    /// When the inbound stream was created (Unix ms): with a message's
    /// sequence, it names the message across a stream's re-creation.
    pub async fn inbound_created_ms(&self) -> Result<i64, Error> {
        let info = streams::info(&self.js, subj::STREAM_INBOUND)
            .await?
            .ok_or_else(|| {
                Error::Incompatible(format!("stream {} is missing", subj::STREAM_INBOUND))
            })?;
        Ok((info.created.unix_timestamp_nanos() / 1_000_000) as i64)
    }

    /// Durable pull consumer of a service on a work stream.
    pub async fn service_consumer(
        &self,
        stream_name: &str,
        durable: &str,
        filters: &[&str],
    ) -> Result<consumer::PullConsumer, Error> {
        let stream = self
            .js
            .get_stream(stream_name)
            .await
            .map_err(|e| Error::js("get stream", e))?;
        let cfg = consumer::pull::Config {
            durable_name: Some(durable.to_string()),
            filter_subjects: filters.iter().map(|s| s.to_string()).collect(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: SERVICE_ACK_WAIT,
            max_deliver: -1,
            max_ack_pending: 20_000,
            ..Default::default()
        };
        let mut consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(durable, cfg.clone())
            .await
            .map_err(|e| Error::js("consumer provisioning", e))?;
        // A consumer made by an earlier version (or by hand) keeps its
        // settings unless they are brought up to date: its filters (e.g.
        // result partitions added), its ack wait (the short one the
        // heartbeats assume), its delivery and in-flight limits.
        let have = &consumer.cached_info().config;
        let mut have_filters = have.filter_subjects.clone();
        if !have.filter_subject.is_empty() {
            have_filters.push(have.filter_subject.clone());
        }
        let stale = have_filters != cfg.filter_subjects
            || have.ack_wait != cfg.ack_wait
            || have.max_deliver != cfg.max_deliver
            || have.max_ack_pending != cfg.max_ack_pending;
        if stale {
            tracing::info!(consumer = durable, ?have_filters, want = ?cfg.filter_subjects,
                have_ack_wait = ?have.ack_wait, want_ack_wait = ?cfg.ack_wait,
                "Bringing the consumer's settings up to date.");
            consumer = replace_consumer(&stream, cfg).await?;
        }
        Ok(consumer)
    }

    /// Durable pull consumer of one (namespace, node) dispatch queue, shared by
    /// every runtime serving that node, NATS and HTTP alike.
    ///
    /// Its `ack_wait` is the time a NATS runtime has between heartbeats
    /// before the work is handed to another, so NATS runtimes set it:
    /// `Some(d)` creates the consumer with `d`, or updates an existing one
    /// whose `ack_wait` differs (whoever created it). `None` (the api, which
    /// acks every dispatch as soon as it has leased its state, so its own
    /// hold is milliseconds) uses the consumer as it is, or creates it with
    /// [`DISPATCH_ACK_WAIT`].
    pub async fn dispatch_consumer(
        &self,
        namespace: &str,
        node: &str,
        ack_wait: Option<Duration>,
    ) -> Result<consumer::PullConsumer, Error> {
        let stream = self
            .js
            .get_stream(subj::STREAM_DISPATCH)
            .await
            .map_err(|e| Error::js("get stream", e))?;
        let name = subj::dispatch_consumer(namespace, node);
        let cfg = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: subj::dispatch(namespace, node),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ack_wait.unwrap_or(DISPATCH_ACK_WAIT),
            max_deliver: -1,
            max_ack_pending: 10_000,
            ..Default::default()
        };
        let mut consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(&name, cfg.clone())
            .await
            .map_err(|e| Error::js("dispatch consumer provisioning", e))?;
        if let Some(want) = ack_wait {
            let have = consumer.cached_info().config.ack_wait;
            if have != want {
                tracing::info!(consumer = %name, ?have, ?want, "Setting the dispatch consumer's ack_wait.");
                consumer = replace_consumer(&stream, cfg).await?;
            }
        }
        Ok(consumer)
    }

    fn headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_PROTOCOL, PROTOCOL_VERSION);
        trace::inject(&mut h);
        h
    }

    /// A JetStream publication with the protocol header and `Nats-Msg-Id`.
    /// The id is set after the header map, which `headers` replaces whole.
    pub(crate) fn publication(payload: Bytes, msg_id: &str) -> Publish {
        Publish::build()
            .payload(payload)
            .headers(Self::headers())
            .message_id(msg_id)
    }

    /// Whether the events stream holds a message on `subject`.
    pub async fn holds_event(&self, subject: &str) -> Result<bool, Error> {
        let stream = self
            .js
            .get_stream(subj::STREAM_EVENTS)
            .await
            .map_err(|e| Error::js("get stream", e))?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(false)
            }
            Err(e) => Err(Error::js("last message by subject", e)),
        }
    }

    /// Publishes one message and waits for its JetStream ack.
    #[tracing::instrument(level = "info", name = "nats.publish", skip_all, fields(otel.kind = "producer", messaging.destination.name = %msg.subject))]
    pub async fn publish(&self, msg: Outgoing) -> Result<(), Error> {
        let subject = msg.subject.clone();
        let publication = self.publication_of(msg).await?;
        self.publish_raw(subject, publication).await.map(drop)
    }

    /// The publication of `msg`: its payload (inline or through the object
    /// store), its `Nats-Msg-Id` and its further headers.
    async fn publication_of(&self, msg: Outgoing) -> Result<Publish, Error> {
        let mut publication = self.prepare(msg.payload, &msg.msg_id).await?;
        for (name, value) in msg.headers {
            publication = publication.header(name, value.as_str());
        }
        Ok(publication)
    }

    /// Publishes a prepared publication and returns its JetStream ack
    /// (`duplicate` is set when its `Nats-Msg-Id` was seen within the
    /// duplicate window and the message was dropped).
    pub(crate) async fn publish_raw(
        &self,
        subject: String,
        publication: Publish,
    ) -> Result<jetstream::publish::PublishAck, Error> {
        let fut = self
            .js
            .send_publish(subject, publication)
            .await
            .map_err(|e| Error::js("publish", e))?;
        let ack = fut.await.map_err(|e| Error::js("publish ack", e))?;
        exo_faults::point("bus.publish")?;
        Ok(ack)
    }

    /// Publishes many messages keeping up to [`PUBLISH_WINDOW`] acks
    /// outstanding, and returns once every ack arrived.
    pub async fn publish_batch(
        &self,
        msgs: impl IntoIterator<Item = Outgoing>,
    ) -> Result<(), Error> {
        self.publish_window(msgs, true).await
    }

    /// Sends many messages without waiting for their acks (beyond
    /// [`PUBLISH_WINDOW`] outstanding, the oldest are awaited first):
    /// [`Sent::acked`] waits for the rest. No crash point per message: the
    /// caller marks one for the whole batch (a partly published batch is
    /// then the same case as an unpublished one, the ids being
    /// deterministic).
    #[tracing::instrument(level = "info", name = "nats.send_all", skip_all, fields(otel.kind = "producer"))]
    pub async fn send_all(&self, msgs: impl IntoIterator<Item = Outgoing>) -> Result<Sent, Error> {
        self.send_window(msgs, false).await
    }

    /// Sends `msgs`, awaiting the oldest ack beyond [`PUBLISH_WINDOW`]
    /// outstanding (with a crash point after each when `points`).
    async fn send_window(
        &self,
        msgs: impl IntoIterator<Item = Outgoing>,
        points: bool,
    ) -> Result<Sent, Error> {
        let mut pending = std::collections::VecDeque::new();
        for msg in msgs {
            if pending.len() >= PUBLISH_WINDOW
                && let Some(fut) = pending.pop_front()
            {
                acked(fut, points).await?;
            }
            let subject = msg.subject.clone();
            let fut = self
                .js
                .send_publish(subject, self.publication_of(msg).await?)
                .await
                .map_err(|e| Error::js("publish", e))?;
            pending.push_back(fut);
        }
        Ok(Sent(pending))
    }

    #[tracing::instrument(level = "info", name = "nats.publish_batch", skip_all, fields(otel.kind = "producer"))]
    async fn publish_window(
        &self,
        msgs: impl IntoIterator<Item = Outgoing>,
        points: bool,
    ) -> Result<(), Error> {
        for fut in self.send_window(msgs, points).await?.0 {
            acked(fut, points).await?;
        }
        Ok(())
    }

    /// Records a rejected message on the dead-letter stream.
    pub async fn dead_letter(
        &self,
        stream_name: &str,
        consumer_name: &str,
        subject: &str,
        reason: &str,
        payload: &[u8],
        msg_id: String,
    ) -> Result<(), Error> {
        let letter = DeadLetter {
            subject: subject.to_string(),
            reason: reason.to_string(),
            payload: String::from_utf8_lossy(payload).into_owned(),
            at_ms: exo_types::time::now_ms(),
        };
        self.publish(Outgoing::json(
            subj::dead_letter(stream_name, consumer_name),
            msg_id,
            &letter,
        )?)
        .await
    }

    /// Flushes and closes the connection.
    pub async fn drain(&self) {
        if let Err(error) = self.client.drain().await {
            tracing::debug!(%error, "NATS drain failed.");
        }
    }
}

/// Updates an existing durable consumer to `cfg` and returns it as updated.
async fn replace_consumer(
    stream: &stream::Stream,
    cfg: consumer::pull::Config,
) -> Result<consumer::PullConsumer, Error> {
    let name = cfg.durable_name.clone().unwrap_or_default();
    stream
        .update_consumer(cfg)
        .await
        .map_err(|e| Error::js("consumer update", e))?;
    stream
        .get_consumer(&name)
        .await
        .map_err(|source| Error::JetStream {
            what: "consumer provisioning",
            source,
        })
}
