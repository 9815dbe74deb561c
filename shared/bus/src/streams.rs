//! Streams: created on start when missing, and reconciled when they exist.
//!
//! A stream made by an earlier version (or by hand) is brought to what
//! today's services need, and only that: its subjects and subject transform
//! (a newer version may add subjects), and its replica count when one is
//! configured (`EXO_NATS__STREAM_REPLICAS`). Every other setting an operator
//! may tune (duplicate window, age and size limits, …) is kept once the
//! stream exists. A retention policy other than the one a stream needs
//! cannot be changed in place: the services refuse to start, naming it.

use async_nats::jetstream::{self, stream};

use crate::Error;

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// The stream did not exist and was created.
    Created,
    /// The stream had what the services need.
    Kept,
    /// The stream was updated; the names of the settings that changed.
    Updated(Vec<&'static str>),
}

/// The stream's information, `None` when there is no such stream.
pub async fn info(js: &jetstream::Context, name: &str) -> Result<Option<stream::Info>, Error> {
    let Ok(stream) = js.get_stream(name).await else {
        return Ok(None);
    };
    let info = stream
        .get_info()
        .await
        .map_err(|e| Error::js("stream info", e))?;
    Ok(Some(info))
}

/// Creates stream `want` (with `replicas`, default 1) or reconciles the
/// existing one with it (see the module documentation), without waiting
/// for new replicas ([`ensure_all`] does).
pub async fn ensure(
    js: &jetstream::Context,
    mut want: stream::Config,
    replicas: Option<usize>,
) -> Result<Reconciled, Error> {
    let Some(have) = info(js, &want.name).await?.map(|i| i.config) else {
        want.num_replicas = replicas.unwrap_or(1);
        js.get_or_create_stream(want)
            .await
            .map_err(|e| Error::js("stream provisioning", e))?;
        return Ok(Reconciled::Created);
    };
    let (next, changed) = reconcile(&have, &want, replicas)?;
    if changed.is_empty() {
        return Ok(Reconciled::Kept);
    }
    tracing::info!(stream = %want.name, ?changed, "Bringing the stream's settings up to date.");
    js.update_stream(&next)
        .await
        .map_err(|e| Error::js("stream update", e))?;
    Ok(Reconciled::Updated(changed))
}

/// Reconciles every stream of `wants` (see [`ensure`]), then waits until
/// those whose replica count changed have their new replicas current (all
/// at once: a new peer takes seconds to catch up, and consumers cannot be
/// placed on a stream before).
pub async fn ensure_all(
    js: &jetstream::Context,
    wants: Vec<stream::Config>,
    replicas: Option<usize>,
) -> Result<(), Error> {
    let mut scaled = Vec::new();
    for want in wants {
        let name = want.name.clone();
        if let Reconciled::Updated(changed) = ensure(js, want, replicas).await?
            && changed.contains(&"num_replicas")
        {
            scaled.push(name);
        }
    }
    let r = replicas.unwrap_or(1);
    futures::future::try_join_all(scaled.iter().map(|name| replicas_current(js, name, r))).await?;
    Ok(())
}

/// How long [`replicas_current`] waits.
const REPLICAS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits until stream `name` has a leader and `replicas - 1` current peers
/// (its consumers cannot be placed before), at most [`REPLICAS_TIMEOUT`].
async fn replicas_current(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + REPLICAS_TIMEOUT;
    loop {
        let info = info(js, name).await?;
        let cluster = info.as_ref().and_then(|i| i.cluster.as_ref());
        let current = cluster.is_some_and(|c| {
            c.leader.is_some()
                && c.replicas
                    .iter()
                    .filter(|p| p.current && !p.offline)
                    .count()
                    + 1
                    >= replicas
        });
        if current || replicas <= 1 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Incompatible(format!(
                "stream {name} has not reached {replicas} current replicas in {REPLICAS_TIMEOUT:?} \
                 (are there {replicas} JetStream servers in the cluster?)"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Brings stream `name`, when it exists, to `replicas` replicas.
pub async fn set_replicas(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<(), Error> {
    let Some(mut cfg) = info(js, name).await?.map(|i| i.config) else {
        return Ok(());
    };
    if cfg.num_replicas.max(1) != replicas {
        tracing::info!(
            stream = name,
            have = cfg.num_replicas,
            want = replicas,
            "Setting the stream's replicas."
        );
        cfg.num_replicas = replicas;
        js.update_stream(&cfg)
            .await
            .map_err(|e| Error::js("stream update", e))?;
        replicas_current(js, name, replicas).await?;
    }
    Ok(())
}

/// The configuration `have` should be updated to, and the settings that
/// differ; an error when `have` cannot serve as `want` and cannot be changed
/// in place.
pub fn reconcile(
    have: &stream::Config,
    want: &stream::Config,
    replicas: Option<usize>,
) -> Result<(stream::Config, Vec<&'static str>), Error> {
    if have.retention != want.retention {
        return Err(Error::Incompatible(format!(
            "stream {} has retention {:?}, the services need {:?}; it cannot be changed in \
             place: move its messages elsewhere and delete it (docs/deploy.md, \"Upgrades\")",
            want.name, have.retention, want.retention
        )));
    }
    if have.storage != want.storage {
        tracing::warn!(stream = %want.name, have = ?have.storage, want = ?want.storage,
            "The stream's storage is not the one the services create it with; kept (it cannot be changed in place).");
    }
    let mut next = have.clone();
    let mut changed = Vec::new();
    if have.subjects != want.subjects {
        next.subjects = want.subjects.clone();
        changed.push("subjects");
    }
    if have.subject_transform != want.subject_transform {
        next.subject_transform = want.subject_transform.clone();
        changed.push("subject_transform");
    }
    if let Some(r) = replicas
        && have.num_replicas.max(1) != r
    {
        next.num_replicas = r;
        changed.push("num_replicas");
    }
    Ok((next, changed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn work(subjects: &[&str]) -> stream::Config {
        stream::Config {
            name: "S".into(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        }
    }

    #[test]
    fn only_what_the_services_own_is_changed() {
        let want = work(&["a.>", "b.>"]);
        // An operator's tuning of an existing stream.
        let have = stream::Config {
            duplicate_window: Duration::from_secs(5),
            max_bytes: 1 << 30,
            num_replicas: 3,
            ..work(&["a.>"])
        };
        let (next, changed) = reconcile(&have, &want, None).unwrap();
        assert_eq!(changed, ["subjects"]);
        assert_eq!(next.subjects, want.subjects);
        assert_eq!(next.duplicate_window, Duration::from_secs(5));
        assert_eq!(next.max_bytes, 1 << 30);
        assert_eq!(next.num_replicas, 3, "replicas kept when none configured");
        let (next, changed) = reconcile(&have, &want, Some(1)).unwrap();
        assert_eq!(changed, ["subjects", "num_replicas"]);
        assert_eq!(next.num_replicas, 1);
        let (_, changed) = reconcile(&next, &want, Some(1)).unwrap();
        assert!(changed.is_empty(), "{changed:?}");
    }

    #[test]
    fn a_stream_with_another_retention_is_refused_by_name() {
        let have = stream::Config {
            retention: stream::RetentionPolicy::Limits,
            ..work(&["a.>"])
        };
        let err = reconcile(&have, &work(&["a.>"]), None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("stream S") && text.contains("retention"),
            "{text}"
        );
    }

    #[test]
    fn zero_replicas_reads_as_one() {
        let have = stream::Config {
            num_replicas: 0,
            ..work(&["a.>"])
        };
        let (_, changed) = reconcile(&have, &work(&["a.>"]), Some(1)).unwrap();
        assert!(changed.is_empty(), "{changed:?}");
    }
}
