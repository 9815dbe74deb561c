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
    let enqueue_from = |ip| stack.api.post_from(ip, &path, &req);
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

/// A dispatch delivered again while its state is leased for that attempt
/// (its first hand-out is alive) is acked, not handed out a second time,
/// when it comes in the same batch as fresh work: the batch's one lease
/// update matches only the fresh state, and the hand-out reads back which
/// leases are its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_hands_out_only_the_states_it_leased() -> anyhow::Result<()> {
    use exo_store::mongodb::bson::doc;
    let ns = "lease2";
    let stack = Stack::start().await?;
    stack.register_http_node(ns, "Echo").await?;
    let graph = json!({"secrets": {}, "nodes": [
        {"node_name": "Echo", "identifier": "e", "namespace": ns, "inputs": {"text": "hi"}}]});
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    let leased_run = stack.trigger(ns, "g", &json!({})).await?;
    let fresh_run = stack.trigger(ns, "g", &json!({})).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let (leased, fresh) = loop {
        let a = stack.states(&leased_run).await?;
        let b = stack.states(&fresh_run).await?;
        let queued = |v: &Vec<exo_store::StateDoc>| {
            v.len() == 1 && v[0].status == exo_types::status::StateStatus::Queued
        };
        if queued(&a) && queued(&b) {
            break (a[0].clone(), b[0].clone());
        }
        anyhow::ensure!(Instant::now() < deadline, "states never dispatched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // As if an earlier hand-out of this attempt were alive elsewhere.
    let until = exo_types::time::now_ms() + 60_000;
    stack
        .store
        .states()
        .update_one(
            doc! {"_id": leased.id},
            doc! {"$set": {"lease_until": until, "lease_attempt": leased.attempt, "lease_holder": "10.0.0.9"}},
        )
        .await?;
    let path = format!("/v0/namespace/{ns}/states/enqueue");
    let (status, body) = stack
        .post(&path, &json!({"nodes": ["Echo"], "batch_size": 4}))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 1, "{body}");
    assert_eq!(body["states"][0]["state_id"], fresh.id.to_hex().as_str());
    let (_, body) = stack
        .post(&path, &json!({"nodes": ["Echo"], "batch_size": 4}))
        .await?;
    assert_eq!(
        body["count"], 0,
        "the leased state's dispatch was acked: {body}"
    );
    let after = stack.store.state(leased.id).await?.expect("state");
    assert_eq!(after.status, exo_types::status::StateStatus::Queued);
    let raw = stack
        .store
        .db()
        .collection::<exo_store::mongodb::bson::Document>("State")
        .find_one(doc! {"_id": leased.id})
        .await?
        .expect("state");
    assert_eq!(
        raw.get_str("lease_holder")?,
        "10.0.0.9",
        "the live lease is untouched"
    );
    assert_eq!(raw.get_i64("lease_until")?, until);
    Ok(())
}
