//! Upgrades: the services start on a three-node NATS cluster whose streams
//! and consumers were made by an earlier configuration (one replica, the
//! first protocol's result subjects without partitions, long ack waits,
//! other delivery limits, an operator's own duplicate window) and bring them
//! to today's, keeping what an operator tuned; then a run goes through.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, object_store, stream};
use exo_e2e::{Stack, assert_run_consistent};
use exo_test_support::{MongoServer, NatsServer, Servers, free_port};
use exo_types::subjects as subj;
use serde_json::json;

const NS: &str = "upgrade";

/// Three nats-servers routed into one JetStream cluster.
async fn cluster() -> anyhow::Result<Vec<NatsServer>> {
    let ports = [free_port(), free_port(), free_port()];
    let config = |i: usize| {
        let routes: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect();
        format!(
            "server_name: n{i}\ncluster {{\n  name: exo-upgrade\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
            ports[i],
            routes.join(", ")
        )
    };
    let (c0, c1, c2) = (config(0), config(1), config(2));
    let (a, b, c) = tokio::try_join!(
        NatsServer::start_with(&c0),
        NatsServer::start_with(&c1),
        NatsServer::start_with(&c2),
    )?;
    Ok(vec![a, b, c])
}

/// Waits until the cluster has a JetStream meta leader (a stream can be made).
async fn meta_leader(js: &jetstream::Context) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = stream::Config {
            name: "PROBE".into(),
            subjects: vec!["probe.>".into()],
            num_replicas: 3,
            ..Default::default()
        };
        match js.get_or_create_stream(probe).await {
            Ok(_) => return Ok(js.delete_stream("PROBE").await.map(drop)?),
            Err(e) if Instant::now() > deadline => anyhow::bail!("no JetStream meta leader: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn old_stream(name: &str, subjects: &[&str], retention: stream::RetentionPolicy) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        retention,
        storage: stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    }
}

/// What an earlier configuration left: one replica everywhere, results on
/// the first protocol's subjects only (no run token, no partitions), the
/// operator's 7 s duplicate window and 1 h age on the events stream, and
/// the services' consumers with 30 s ack waits and other limits.
async fn previous_configuration(js: &jetstream::Context) -> anyhow::Result<()> {
    use stream::RetentionPolicy::{Limits, WorkQueue};
    let streams = [
        old_stream(subj::STREAM_COMMANDS, &[subj::COMMANDS_SUBJECTS], WorkQueue),
        old_stream(subj::STREAM_STATES, &[subj::STATES_SUBJECTS], WorkQueue),
        old_stream(subj::STREAM_RESULTS, &["exo.v1.*.result.*"], WorkQueue),
        old_stream(subj::STREAM_DISPATCH, &[subj::DISPATCH_SUBJECTS], WorkQueue),
        stream::Config {
            duplicate_window: Duration::from_secs(7),
            max_age: Duration::from_secs(3600),
            ..old_stream(subj::STREAM_EVENTS, &[subj::EVENTS_SUBJECTS], Limits)
        },
        old_stream(subj::STREAM_DLQ, &[subj::DLQ_SUBJECTS], Limits),
    ];
    for s in streams {
        js.create_stream(s).await?;
    }
    let old_consumer = |name: &str, filters: &[&str]| consumer::pull::Config {
        durable_name: Some(name.into()),
        filter_subjects: filters.iter().map(|s| s.to_string()).collect(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: 5,
        max_ack_pending: 1000,
        ..Default::default()
    };
    let consumers = [
        (
            subj::STREAM_COMMANDS,
            old_consumer(subj::CONSUMER_TRIGGER, &[subj::COMMANDS_SUBJECTS]),
        ),
        (
            subj::STREAM_STATES,
            old_consumer(subj::CONSUMER_SCHEDULER, &[subj::STATES_SUBJECTS]),
        ),
        (
            subj::STREAM_RESULTS,
            old_consumer(subj::CONSUMER_COMPLETION, &["exo.v1.*.result.executed"]),
        ),
        (
            subj::STREAM_RESULTS,
            old_consumer(subj::CONSUMER_RETRY, &["exo.v1.*.result.errored"]),
        ),
    ];
    for (stream_name, cfg) in consumers {
        js.get_stream(stream_name)
            .await?
            .create_consumer(cfg)
            .await?;
    }
    js.create_object_store(object_store::Config {
        bucket: exo_bus::PAYLOAD_BUCKET.into(),
        num_replicas: 1,
        ..Default::default()
    })
    .await?;
    Ok(())
}

async fn stream_config(js: &jetstream::Context, name: &str) -> anyhow::Result<stream::Config> {
    Ok(js.get_stream(name).await?.info().await?.config.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_reconcile_streams_and_consumers_left_by_a_previous_configuration()
-> anyhow::Result<()> {
    exo_test_support::init_test_tracing();
    let (mut nodes, mongo) = tokio::try_join!(cluster(), MongoServer::start())?;
    let urls: Vec<String> = nodes.iter().map(NatsServer::url).collect();
    let nc = async_nats::connect(urls.clone()).await?;
    let js = jetstream::new(nc);
    meta_leader(&js).await?;
    previous_configuration(&js).await?;

    let first = nodes.remove(0);
    let servers = Servers { nats: first, mongo };
    let mut stack = Stack::start_on(servers, &[]).await?;
    stack.extra_env = vec![
        ("EXO_NATS__URL".into(), urls.join(",")),
        ("EXO_NATS__STREAM_REPLICAS".into(), "3".into()),
    ];
    for service in exo_test_support::SERVICES {
        stack.spawn(service).await?;
    }

    // Streams: today's subjects and transform, three replicas each (the
    // inbound stream and the payload bucket too), the operator's tuning kept.
    let (source, destination) = subj::results_transform();
    let results = stream_config(&js, subj::STREAM_RESULTS).await?;
    assert_eq!(results.subjects, subj::RESULTS_SUBJECTS.map(String::from));
    let transform = results.subject_transform.expect("results transform");
    assert_eq!(
        (transform.source, transform.destination),
        (source, destination)
    );
    let events = stream_config(&js, subj::STREAM_EVENTS).await?;
    assert_eq!(
        events.duplicate_window,
        Duration::from_secs(7),
        "operator's window kept"
    );
    assert_eq!(
        events.max_age,
        Duration::from_secs(3600),
        "operator's max age kept"
    );
    let all = [
        subj::STREAM_COMMANDS,
        subj::STREAM_STATES,
        subj::STREAM_RESULTS,
        subj::STREAM_DISPATCH,
        subj::STREAM_EVENTS,
        subj::STREAM_DLQ,
        subj::STREAM_INBOUND,
        "OBJ_EXO_PAYLOADS",
    ];
    for name in all {
        let info = js.get_stream(name).await?.info().await?.clone();
        assert_eq!(info.config.num_replicas, 3, "{name} replicas");
        let peers = info.cluster.map(|c| c.replicas.len()).unwrap_or(0);
        assert_eq!(peers, 2, "{name}: a leader and two peers");
    }

    // Consumers: today's filters, ack wait, delivery and in-flight limits.
    let consumer_config = |stream_name: &'static str, name: &'static str| {
        let js = js.clone();
        async move {
            let mut c: consumer::PullConsumer = js
                .get_stream(stream_name)
                .await?
                .get_consumer(name)
                .await
                .map_err(|e| anyhow::anyhow!("consumer {name}: {e}"))?;
            anyhow::Ok(c.info().await?.config.clone())
        }
    };
    for (stream_name, name, filters) in [
        (
            subj::STREAM_COMMANDS,
            subj::CONSUMER_TRIGGER,
            vec![subj::COMMANDS_SUBJECTS],
        ),
        (
            subj::STREAM_STATES,
            subj::CONSUMER_SCHEDULER,
            vec![subj::STATES_SUBJECTS],
        ),
        (
            subj::STREAM_RESULTS,
            subj::CONSUMER_COMPLETION,
            subj::COMPLETION_FILTERS.to_vec(),
        ),
        (
            subj::STREAM_RESULTS,
            subj::CONSUMER_RETRY,
            subj::RETRY_FILTERS.to_vec(),
        ),
    ] {
        let c = consumer_config(stream_name, name).await?;
        let mut have = c.filter_subjects.clone();
        if !c.filter_subject.is_empty() {
            have.push(c.filter_subject.clone());
        }
        assert_eq!(have, filters, "{name} filters");
        assert_eq!(c.ack_wait, exo_bus::SERVICE_ACK_WAIT, "{name} ack wait");
        assert_eq!(c.max_deliver, -1, "{name} max deliver");
        assert_ne!(c.max_ack_pending, 1000, "{name} max ack pending");
    }

    // And the upgraded system works: a run on the cluster to SUCCESS.
    let (stop, _rt) = stack.start_append_runtime(NS).await?;
    let node = |name: &str, id: &str, inputs: serde_json::Value, next: &[&str]| json!({"node_name": name, "identifier": id, "namespace": NS, "inputs": inputs, "next_nodes": next});
    let graph = json!({"secrets": {}, "nodes": [
        node("AppendA", "a", json!({"text": "x"}), &["b"]),
        node("AppendB", "b", json!({"text": "${{ a.outputs.text }}"}), &[]),
    ]});
    stack.upsert_valid_graph(NS, "g", &graph).await?;
    let run_id = stack.trigger(NS, "g", &json!({})).await?;
    let run = stack.wait_run(&run_id, Duration::from_secs(60)).await?;
    assert_eq!(run.status.as_deref(), Some("SUCCESS"));
    assert_run_consistent(&stack, &run).await?;
    stop.cancel();
    drop(nodes);
    Ok(())
}
