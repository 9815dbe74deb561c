//! A runtime process serving the end-to-end test nodes, so that tests can
//! `kill -9` a runtime. Configured by environment:
//!
//! `EXO_NATS__URL` (`EXO_NATS__USER` + `EXO_NATS__PASSWORD`), `EXO_ADMIN__ADDR`
//! (readiness), `EXO_TEST_NAMESPACE`,
//! `EXO_TEST_API` + `EXO_API__KEY` (registration, optional),
//! `EXO_TEST_FAIL_DIGITS`, `EXO_TEST_PRUNE_DIGITS`, `EXO_TEST_DELAY_MS`,
//! `EXO_TEST_ACK_WAIT_SECS`, `EXO_TEST_CONCURRENCY`.

use std::time::Duration;

use exo_e2e::nodes::{Append, FanOut, Join, Picky, Requeuer, counter};
use exo_service::admin::{self, Readiness};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    exo_service::telemetry::init("exo-test-runtime");
    let shutdown = exo_service::shutdown::signal_token();
    let readiness = Readiness::default();
    let admin_addr = var("EXO_ADMIN__ADDR").unwrap_or_else(|| "127.0.0.1:0".into());
    let _admin = admin::serve(&admin_addr, readiness.clone(), shutdown.clone()).await?;
    let ns = var("EXO_TEST_NAMESPACE").unwrap_or_else(|| "test".into());
    let delay = Duration::from_millis(
        var("EXO_TEST_DELAY_MS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let ack_wait = Duration::from_secs(
        var("EXO_TEST_ACK_WAIT_SECS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
    );
    let concurrency = var("EXO_TEST_CONCURRENCY")
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let auth = exo_runtime::NatsAuth {
        user: var("EXO_NATS__USER"),
        password: var("EXO_NATS__PASSWORD").map(Into::into),
        ..Default::default()
    };
    let mut b = exo_runtime::Runtime::builder(&ns, "test-runtime")
        .nats_url(var("EXO_NATS__URL").unwrap_or_else(|| "nats://127.0.0.1:4222".into()))
        .nats_auth(auth)
        .ack_wait(ack_wait)
        .concurrency(concurrency)
        .node(Append::new("AppendA", "a"))
        .node(FanOut)
        .node(Picky {
            fail_digits: leak(var("EXO_TEST_FAIL_DIGITS").unwrap_or_default()),
            prune_digits: leak(var("EXO_TEST_PRUNE_DIGITS").unwrap_or_default()),
            delay,
            calls: counter(),
        })
        .node(Join { name: "Join" })
        .node(Requeuer {
            delay: Duration::from_millis(100),
        });
    if let (Some(api), Some(key)) = (var("EXO_TEST_API"), var("EXO_API__KEY")) {
        b = b.register_with(api, key);
    }
    let runtime = b.build();
    let r = readiness.clone();
    runtime
        .run_with_ready(shutdown, move || r.set(true))
        .await?;
    Ok(())
}
