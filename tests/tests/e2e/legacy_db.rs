//! An existing Exosphere database keeps working: documents written by
//! Exosphere (no fields of ours) are listed by the API and their pending
//! work is picked up and finished.

use std::time::{Duration, Instant};

use exo_e2e::Stack;
use exo_e2e::nodes::{Append, counter};
use exo_store::mongodb::bson::{DateTime, Document, doc, oid::ObjectId};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exosphere_documents_are_listed_and_their_pending_states_finish() -> anyhow::Result<()> {
    let ns = "legacy";
    let stack = Stack::start().await?;
    let db = stack.store.db();
    let now = DateTime::now();
    let schema = exo_runtime::string_object_schema("Inputs", &["text"]);
    let schema = exo_store::mongodb::bson::to_bson(&schema)?;
    for name in ["AppendA", "AppendB"] {
        db.collection::<Document>("RegisteredNode")
            .insert_one(
                doc! {"name": name, "namespace": ns, "runtime_name": "py", "runtime_namespace": ns,
                "inputs_schema": schema.clone(), "outputs_schema": schema.clone(), "secrets": [],
                "created_at": now, "updated_at": now},
            )
            .await?;
    }
    db.collection::<Document>("GraphTemplate")
        .insert_one(doc! {"name": "g", "namespace": ns, "validation_status": "VALID", "validation_errors": [],
            "secrets": {}, "triggers": [], "created_at": now, "updated_at": now,
            "retry_policy": {"max_retries": 3, "strategy": "EXPONENTIAL", "backoff_factor": 2000, "exponent": 2, "max_delay": null},
            "store_config": {"required_keys": [], "default_values": {}},
            "nodes": [
                {"node_name": "AppendA", "namespace": ns, "identifier": "a", "inputs": {"text": "x"}, "next_nodes": ["b"], "unites": null},
                {"node_name": "AppendB", "namespace": ns, "identifier": "b", "inputs": {"text": "${{ a.outputs.text }}"}, "next_nodes": null, "unites": null},
            ]})
        .await?;
    // A run as Exosphere writes it: no status, no counters.
    db.collection::<Document>("runs")
        .insert_one(doc! {"run_id": "legacy-run", "graph_name": "g", "namespace_name": ns, "created_at": now})
        .await?;
    let a = ObjectId::new();
    let state = |id: ObjectId,
                 ident: &str,
                 node: &str,
                 status: &str,
                 inputs: Document,
                 outputs: Document,
                 parents: Document| {
        doc! {"_id": id, "node_name": node, "namespace_name": ns, "identifier": ident, "graph_name": "g",
        "run_id": "legacy-run", "status": status, "inputs": inputs, "outputs": outputs, "data": {},
        "error": null, "parents": parents, "does_unites": false, "state_fingerprint": "",
        "enqueue_after": now.timestamp_millis() - 60_000, "retry_count": 0,
        "fanout_id": uuid::Uuid::new_v4().to_string(), "manual_retry_fanout_id": "",
        "created_at": now, "updated_at": now}
    };
    let states = db.collection::<Document>("State");
    states
        .insert_one(state(
            a,
            "a",
            "AppendA",
            "SUCCESS",
            doc! {"text": "x"},
            doc! {"text": "L"},
            doc! {},
        ))
        .await?;
    let b = ObjectId::new();
    states
        .insert_one(state(
            b,
            "b",
            "AppendB",
            "CREATED",
            doc! {"text": "L"},
            doc! {},
            doc! {"a": a},
        ))
        .await?;

    let (status, body) = stack.get(&format!("/v0/namespace/{ns}/runs/1/10")).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["runs"][0]["run_id"], "legacy-run");
    assert_eq!(body["runs"][0]["status"], "PENDING");
    assert_eq!(body["runs"][0]["pending_count"], 1);
    assert_eq!(body["runs"][0]["success_count"], 1);

    // A runtime serving the nodes: the reconciler hands the CREATED state to
    // the scheduler (there was no hand-off message for it), and it finishes.
    let (stop, _) = stack
        .start_runtime(stack.runtime(ns, "rt").node(Append {
            name: "AppendB",
            suffix: "b",
            calls: counter(),
        }))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let st = stack.store.state(b).await?.expect("state b");
        if st.status == exo_types::status::StateStatus::Success {
            assert_eq!(st.outputs.get_str("text")?, "L+b");
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "legacy state never finished: {}",
            st.status
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, body) = stack.get(&format!("/v0/namespace/{ns}/runs/1/10")).await?;
    assert_eq!(body["runs"][0]["status"], "SUCCESS", "{body}");
    assert_eq!(body["runs"][0]["success_count"], 2);
    let (status, graph) = stack
        .get(&format!("/v0/namespace/{ns}/states/run/legacy-run/graph"))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        graph["edges"],
        json!([{"source": a.to_hex(), "target": b.to_hex()}])
    );
    stop.cancel();
    Ok(())
}

/// Upstream's indexes, created first (as on a database Exosphere has been
/// using), and ours coexist: every service starts on that database, and
/// upstream's TTL index on `DatabaseTriggers.expires_at` stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_indexes_and_ours_coexist() -> anyhow::Result<()> {
    let mut stack = Stack::start_with(&[]).await?;
    let db = stack.store.db();
    let triggers = db.collection::<Document>("DatabaseTriggers");
    triggers
        .create_index(
            exo_store::mongodb::IndexModel::builder()
                .keys(doc! {"expires_at": 1})
                .options(
                    exo_store::mongodb::options::IndexOptions::builder()
                        .name("ttl_expires_at".to_string())
                        .expire_after(Duration::ZERO)
                        .partial_filter_expression(
                            doc! {"trigger_status": {"$in": ["TRIGGERED", "FAILED"]}},
                        )
                        .build(),
                )
                .build(),
        )
        .await?;
    stack.store.ensure_indexes().await?;
    for s in [
        "exo-trigger",
        "exo-scheduler",
        "exo-completion",
        "exo-retry",
        "exo-api",
    ] {
        stack.spawn(s).await?;
    }
    let names: Vec<String> = triggers.list_index_names().await?;
    assert!(names.iter().any(|n| n == "ttl_expires_at"), "{names:?}");
    Ok(())
}
