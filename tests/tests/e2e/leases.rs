//! HTTP runtimes get work with a lease: a state handed out and never reported
//! is handed out again after the lease expires (upstream issue #444).

use std::time::{Duration, Instant};

use exo_e2e::Stack;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreported_hand_out_is_handed_out_again_after_its_lease() -> anyhow::Result<()> {
    let ns = "lease";
    let mut stack = Stack::start().await?;
    stack
        .respawn_with("exo-api", &[("EXO_API__LEASE_SECS", "1")])
        .await?;
    stack.register_http_node(ns, "Echo").await?;
    let graph = json!({"secrets": {}, "nodes": [
        {"node_name": "Echo", "identifier": "e", "namespace": ns, "inputs": {"text": "hi"}}]});
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    let run_id = stack.trigger(ns, "g", &json!({})).await?;

    let path = format!("/v0/namespace/{ns}/states/enqueue");
    let req = json!({"nodes": ["Echo"], "batch_size": 4});
    // Leases belong to the caller's IP address: the runtime that dies is
    // on 127.0.0.2, the one that lives on 127.0.0.3.
    let (dead, alive): (std::net::IpAddr, std::net::IpAddr) =
        ("127.0.0.2".parse()?, "127.0.0.3".parse()?);
    let enqueue_from = |ip| stack.post_from(ip, &path, &req);
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let (status, body) = enqueue_from(dead).await?;
        assert_eq!(status, 200, "{body}");
        if body["count"] == 1 {
            break body["states"][0]["state_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
        anyhow::ensure!(Instant::now() < deadline, "state never handed out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The holder dies without reporting. While the lease runs, nobody else gets it.
    let (_, body) = enqueue_from(alive).await?;
    assert_eq!(body["count"], 0, "leased state handed out twice: {body}");
    let again = loop {
        let (_, body) = enqueue_from(alive).await?;
        if body["count"] == 1 {
            break body["states"][0]["state_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "expired lease never re-dispatched"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(again, first, "the same state is handed out again");
    let st = stack.states(&run_id).await?;
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].attempt, 2, "re-dispatch is a new attempt");

    let (status, body) = stack
        .post(
            &format!("/v0/namespace/{ns}/state/{again}/executed"),
            &json!({"outputs": [{"text": "done"}]}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let run = stack.wait_run(&run_id, Duration::from_secs(20)).await?;
    assert_eq!(run.status.as_deref(), Some("SUCCESS"));
    assert_eq!(run.total_count, 1);
    // A late report for the same state is refused cleanly.
    let (status, body) = stack
        .post(
            &format!("/v0/namespace/{ns}/state/{first}/executed"),
            &json!({"outputs": [{"text": "late"}]}),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["detail"], "State is not queued");
    Ok(())
}
