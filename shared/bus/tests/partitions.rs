//! Result partitions against a real nats-server: the results stream stores a
//! run's results on one partition (NATS's deterministic subject-token
//! partitioning), and one partition's backlog does not hold up another's
//! lane.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[allow(dead_code)]
mod common;

use exo_bus::{Bus, ConsumeOptions, Disposition, Outgoing, SharedBudget, consume};
use exo_types::subjects::{self, ResultKind};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Messages stored per subject under `filter`.
async fn by_subject(bus: &Bus, filter: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let stream = bus.jetstream().get_stream(subjects::STREAM_RESULTS).await?;
    let mut info = stream.info_with_subjects(filter).await?;
    let mut out = BTreeMap::new();
    while let Some(item) = info.next().await {
        let (subject, count) = item?;
        out.insert(subject, count as u64);
    }
    Ok(out)
}

/// Fetches and acks what `consumer` has now: `(subject, payload)` each.
async fn take_all(
    consumer: &async_nats::jetstream::consumer::PullConsumer,
) -> anyhow::Result<Vec<(String, bytes::Bytes)>> {
    let mut batch = consumer
        .fetch()
        .max_messages(1000)
        .expires(Duration::from_millis(200))
        .messages()
        .await?;
    let mut out = Vec::new();
    while let Some(msg) = batch.next().await {
        let msg = msg.map_err(|e| anyhow::anyhow!(e))?;
        out.push((msg.subject.to_string(), msg.payload.clone()));
        msg.ack().await.map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(out)
}

/// The partition the stream stores `run`'s results on, found by publishing
/// a probe in namespace `probe` and purging it (once per run: a second probe
/// would be a duplicate).
async fn partition_of(bus: &Bus, run: &str) -> anyhow::Result<u32> {
    let subject = subjects::result_of_run("probe", ResultKind::Executed, run);
    bus.publish(Outgoing::json(subject, format!("probe-{run}"), &run)?)
        .await?;
    let stored = by_subject(bus, "exo.v1.probe.result.executed.*").await?;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let (subject, _) = stored.into_iter().next().expect("one subject");
    bus.jetstream()
        .get_stream(subjects::STREAM_RESULTS)
        .await?
        .purge()
        .filter(&subject)
        .await?;
    let p = subject.rsplit('.').next().expect("last token").parse()?;
    Ok(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_s_results_share_one_partition_and_runs_spread_over_all() -> anyhow::Result<()> {
    let (_nats, bus) = common::bus("partitions-test").await?;
    let runs: Vec<String> = (0..64).map(|i| format!("run-{i:03}")).collect();
    let mut msgs = Vec::new();
    for run in &runs {
        for (k, kind) in [
            ResultKind::Executed,
            ResultKind::Pruned,
            ResultKind::Errored,
        ]
        .into_iter()
        .enumerate()
        {
            msgs.push(Outgoing::json(
                subjects::result_of_run("t", kind, run),
                format!("{run}-{k}"),
                run,
            )?);
        }
    }
    // One result of the first protocol, without its run.
    msgs.push(Outgoing::json(
        subjects::result("t", ResultKind::Executed),
        "legacy".into(),
        &"legacy",
    )?);
    bus.publish_batch(msgs).await?;

    // Every run's executed and pruned results are on one partition, which
    // only that partition's completion lane consumes.
    let mut partitions_of: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for p in 0..subjects::RESULT_PARTITIONS {
        let (durable, filters) = subjects::completion_partition(p);
        let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
        let consumer = bus
            .service_consumer(subjects::STREAM_RESULTS, &durable, &filters)
            .await?;
        for (subject, payload) in take_all(&consumer).await? {
            let run: String = serde_json::from_slice(&payload)?;
            assert!(subject.ends_with(&format!(".{p}")), "{subject} on lane {p}");
            partitions_of.entry(run).or_default().insert(p);
        }
    }
    assert_eq!(partitions_of.len(), runs.len(), "{partitions_of:?}");
    for (run, ps) in &partitions_of {
        assert_eq!(ps.len(), 1, "{run} spread over {ps:?}");
    }
    let used: BTreeSet<u32> = partitions_of.values().flatten().copied().collect();
    assert!(
        used.len() >= 24,
        "64 runs should spread over many of the 64 partitions: {used:?}"
    );

    // The legacy result is the `completion` lane's; errors are the retry
    // service's, partitioned or not.
    let legacy = common::completion_consumer(&bus).await?;
    let legacy_seen: Vec<String> = take_all(&legacy)
        .await?
        .into_iter()
        .map(|(subject, _)| subject)
        .collect();
    assert_eq!(legacy_seen, ["exo.v1.t.result.executed"]);
    let retry = bus
        .service_consumer(
            subjects::STREAM_RESULTS,
            subjects::CONSUMER_RETRY,
            &subjects::RETRY_FILTERS,
        )
        .await?;
    assert_eq!(retry.clone().info().await?.num_pending, runs.len() as u64);
    Ok(())
}

/// A consumer created with the first protocol's filters is brought up to
/// date: the retry consumer then also sees partitioned errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_consumer_s_filters_are_reconciled() -> anyhow::Result<()> {
    let (_nats, bus) = common::bus("partitions-reconcile").await?;
    let old = ["exo.v1.*.result.errored", "exo.v1.*.result.requeue"];
    bus.service_consumer(subjects::STREAM_RESULTS, subjects::CONSUMER_RETRY, &old)
        .await?;
    let mut now = bus
        .service_consumer(
            subjects::STREAM_RESULTS,
            subjects::CONSUMER_RETRY,
            &subjects::RETRY_FILTERS,
        )
        .await?;
    assert_eq!(
        now.info().await?.config.filter_subjects,
        subjects::RETRY_FILTERS
    );
    Ok(())
}

/// A consumer left by an earlier version with the same filter but other
/// settings (a long ack wait, a delivery limit, a small in-flight limit) is
/// brought up to the service's settings on start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_consumer_s_ack_wait_and_limits_are_reconciled() -> anyhow::Result<()> {
    let (_nats, bus) = common::bus("consumer-reconcile").await?;
    let stream = bus.jetstream().get_stream(subjects::STREAM_STATES).await?;
    let old = async_nats::jetstream::consumer::pull::Config {
        durable_name: Some(subjects::CONSUMER_SCHEDULER.to_string()),
        filter_subject: subjects::STATES_SUBJECTS.to_string(),
        ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
        ack_wait: std::time::Duration::from_secs(30),
        max_deliver: 5,
        max_ack_pending: 100,
        ..Default::default()
    };
    stream.create_consumer(old).await?;
    let mut now = bus
        .service_consumer(
            subjects::STREAM_STATES,
            subjects::CONSUMER_SCHEDULER,
            &[subjects::STATES_SUBJECTS],
        )
        .await?;
    let cfg = now.info().await?.config.clone();
    assert_eq!(cfg.ack_wait, exo_bus::SERVICE_ACK_WAIT);
    assert_eq!(cfg.max_deliver, -1);
    assert_eq!(cfg.max_ack_pending, 20_000);
    let mut filters = cfg.filter_subjects.clone();
    if !cfg.filter_subject.is_empty() {
        filters.push(cfg.filter_subject.clone());
    }
    assert_eq!(filters, vec![subjects::STATES_SUBJECTS.to_string()]);
    Ok(())
}

/// Two lanes sharing a budget: a backlog of slow results on one partition
/// does not hold up a result on another, which is handled while almost all
/// of the backlog is still waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlogged_partition_does_not_delay_another() -> anyhow::Result<()> {
    let (_nats, bus) = common::bus("partitions-fair").await?;
    let busy = "busy-run".to_string();
    let p_busy = partition_of(&bus, &busy).await?;
    let mut small = None;
    for i in 0..64 {
        let run = format!("small-{i}");
        let p = partition_of(&bus, &run).await?;
        if p != p_busy {
            small = Some((run, p));
            break;
        }
    }
    let (small, p_small) = small.expect("a run on another partition");

    const BACKLOG: usize = 300;
    let msgs: Vec<Outgoing> = (0..BACKLOG)
        .map(|i| {
            Outgoing::json(
                subjects::result_of_run("t", ResultKind::Executed, &busy),
                format!("b{i}"),
                &busy,
            )
        })
        .collect::<Result<_, _>>()?;
    bus.publish_batch(msgs).await?;

    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let token = CancellationToken::new();
    let budget = SharedBudget::new(8);
    let mut tasks = Vec::new();
    for p in [p_busy, p_small] {
        let (durable, filters) = subjects::completion_partition(p);
        let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
        let consumer = bus
            .service_consumer(subjects::STREAM_RESULTS, &durable, &filters)
            .await?;
        let opts = ConsumeOptions {
            stream: subjects::STREAM_RESULTS.into(),
            consumer: durable,
            concurrency: 4,
            batch: 8,
            retry_backoff: Default::default(),
            budget: Some(budget.clone()),
        };
        let h = handled.clone();
        tasks.push(tokio::spawn(consume(
            bus.clone(),
            consumer,
            opts,
            token.clone(),
            move |d| {
                let h = h.clone();
                async move {
                    let run: String = serde_json::from_slice(&d.payload).unwrap_or_default();
                    // The busy run's results are slow: 4 at a time, 200 ms
                    // each, the backlog takes 15 s.
                    if run.starts_with("busy") {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    h.lock().expect("lock").push(run);
                    Disposition::Ack
                }
            },
        )));
    }
    // The backlog is being worked on before the small run's result arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while handled.lock().expect("lock").is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bus.publish(Outgoing::json(
        subjects::result_of_run("t", ResultKind::Executed, &small),
        "small".into(),
        &small,
    )?)
    .await?;
    while !handled.lock().expect("lock").contains(&small) && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = handled.lock().expect("lock").clone();
    token.cancel();
    for t in tasks {
        t.await??;
    }
    let busy_before = seen.iter().take_while(|r| **r != small).count();
    assert!(
        seen.contains(&small),
        "the small run's result (partition {p_small}) was not handled"
    );
    assert!(
        busy_before < BACKLOG / 3,
        "the small run waited behind {busy_before} of the busy run's {BACKLOG} results"
    );
    assert!(budget.inflight() == 0, "budget slots leaked");
    Ok(())
}
