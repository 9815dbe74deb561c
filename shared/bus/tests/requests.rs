//! Serving core NATS requests (`serve_requests`, behind `exo.v1.<ns>.start`
//! and `exo.v1.<ns>.secrets.get`) against a real nats-server: a flood of
//! requests is handled at most `MAX_REQUESTS_IN_FLIGHT` at a time, and every
//! request is answered once the flood drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use exo_bus::{MAX_REQUESTS_IN_FLIGHT, serve_requests};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_requests_is_served_within_the_bound() -> anyhow::Result<()> {
    exo_test_support::init_test_tracing();
    let nats = exo_test_support::NatsServer::start().await?;
    let bus = exo_bus::Bus::connect(&nats.url(), "requests-test").await?;
    let (active, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let release = Arc::new(tokio::sync::Notify::new());
    let shutdown = CancellationToken::new();
    let client = bus.client().clone();
    let server = {
        let (active, peak, release, c2) = (
            active.clone(),
            peak.clone(),
            release.clone(),
            client.clone(),
        );
        tokio::spawn(serve_requests(
            client.clone(),
            "test.req",
            "q",
            shutdown.clone(),
            move |msg| {
                let (active, peak, release, client) =
                    (active.clone(), peak.clone(), release.clone(), c2.clone());
                async move {
                    let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    // Hold the slot until the test lets every handler go.
                    release.notified().await;
                    active.fetch_sub(1, Ordering::SeqCst);
                    if let Some(reply) = msg.reply {
                        let _ = client.publish(reply, msg.payload).await;
                    }
                }
            },
        ))
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let n = MAX_REQUESTS_IN_FLIGHT + 44;
    let requests: Vec<_> = (0..n)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move { c.request("test.req", i.to_string().into()).await })
        })
        .collect();
    // Wait until the bound is reached, and stays the bound.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while active.load(Ordering::SeqCst) < MAX_REQUESTS_IN_FLIGHT {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {} in flight",
            active.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(peak.load(Ordering::SeqCst), MAX_REQUESTS_IN_FLIGHT);
    // Let handlers finish as they come: every request is answered.
    let releaser = {
        let release = release.clone();
        tokio::spawn(async move {
            loop {
                release.notify_waiters();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    for (i, r) in requests.into_iter().enumerate() {
        let reply = r.await??;
        assert_eq!(reply.payload, i.to_string().as_bytes());
    }
    assert!(peak.load(Ordering::SeqCst) <= MAX_REQUESTS_IN_FLIGHT);
    releaser.abort();
    shutdown.cancel();
    server.await?;
    Ok(())
}
