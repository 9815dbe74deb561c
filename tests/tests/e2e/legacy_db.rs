//! An existing Exosphere database keeps working: documents written by
//! Exosphere (no fields of ours) are listed by the API and their pending
//! work is picked up and finished.

use std::time::{Duration, Instant};

use exo_e2e::nodes::Append;
use exo_e2e::{Stack, assert_run_consistent};
use exo_store::mongodb::bson::{DateTime, Document, doc, oid::ObjectId};
use exo_types::status::StateStatus;
use futures::TryStreamExt;
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
        .start_runtime(stack.runtime(ns, "rt").node(Append::new("AppendB", "b")))
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
    for s in exo_e2e::SERVICES {
        stack.spawn(s).await?;
    }
    let names: Vec<String> = triggers.list_index_names().await?;
    assert!(names.iter().any(|n| n == "ttl_expires_at"), "{names:?}");
    Ok(())
}

/// Loads `tests/legacy/upstream-mid-run.json` (written by upstream's own
/// state manager, see `tests/legacy/make_fixture.py`) into the stack's
/// database: upstream's indexes first, then its documents as they are.
async fn load_upstream_fixture(stack: &Stack) -> anyhow::Result<serde_json::Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/legacy/upstream-mid-run.json");
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let db = stack.store.db();
    let ext = |v: &serde_json::Value| -> anyhow::Result<Document> {
        match exo_store::mongodb::bson::Bson::try_from(v.clone())? {
            exo_store::mongodb::bson::Bson::Document(d) => Ok(d),
            other => anyhow::bail!("not a document: {other}"),
        }
    };
    for (name, c) in fixture["collections"].as_object().expect("collections") {
        let mut indexes = Vec::new();
        for spec in c["indexes"].as_array().expect("indexes") {
            let mut spec = ext(spec)?;
            spec.remove("v");
            spec.remove("ns");
            indexes.push(spec);
        }
        if !indexes.is_empty() {
            db.run_command(doc! {"createIndexes": name, "indexes": indexes})
                .await?;
        }
        let docs: Vec<Document> = c["documents"]
            .as_array()
            .expect("documents")
            .iter()
            .map(ext)
            .collect::<anyhow::Result<_>>()?;
        if !docs.is_empty() {
            db.collection::<Document>(name).insert_many(docs).await?;
        }
    }
    Ok(fixture)
}

/// The switch-over, from a database upstream's own state manager wrote
/// mid-run (`root -> split (4 items) -> work -> merge` uniting `root`): one
/// `work` state done, one handed to a runtime that has not reported yet, two
/// waiting, no merge state and none of our bookkeeping. After the switch the
/// late report is accepted, the waiting states are handed out, the run is
/// adopted by the first transition (counters and unite groups computed from
/// its states), and the merge fires exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_upstream_left_half_way_through_a_unite_fires_it_once() -> anyhow::Result<()> {
    let mut stack = Stack::start_with(&[]).await?;
    let fixture = load_upstream_fixture(&stack).await?;
    stack.store.ensure_indexes().await?;
    for s in exo_e2e::SERVICES {
        stack.spawn(s).await?;
    }
    let ns = "legacy";
    let run_id = fixture["run_id"].as_str().expect("run_id").to_string();
    let (status, body) = stack.get(&format!("/v0/namespace/{ns}/runs/1/10")).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["runs"][0]["run_id"], run_id.as_str());
    assert_eq!(body["runs"][0]["status"], "PENDING", "{body}");
    assert_eq!(body["runs"][0]["pending_count"], 3, "{body}");

    // The runtime that took a `work` state from upstream reports to us.
    let queued = fixture["queued_state"].as_str().expect("queued_state");
    let st = stack
        .store
        .state(ObjectId::parse_str(queued)?)
        .await?
        .expect("queued state");
    let item = st.inputs.get_str("item")?.to_string();
    let (status, body) = stack
        .post(
            &format!("/v0/namespace/{ns}/state/{queued}/executed"),
            &json!({"outputs": [{"done": item}]}),
        )
        .await?;
    if status != 200 {
        stack.print_problems();
    }
    assert_eq!(status, 200, "{body}");

    // An HTTP runtime serves the rest: the two waiting `work` states (never
    // announced on NATS: the reconciler finds them) and the merge.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut merges_handed_out = 0;
    loop {
        let (status, body) = stack
            .post(
                &format!("/v0/namespace/{ns}/states/enqueue"),
                &json!({"nodes": ["Work", "Merge"], "batch_size": 10}),
            )
            .await?;
        assert_eq!(status, 200, "{body}");
        for s in body["states"].as_array().expect("states") {
            let id = s["state_id"].as_str().expect("state_id");
            let outputs = if s["node_name"] == "Merge" {
                merges_handed_out += 1;
                assert_eq!(s["inputs"], json!({"seed": "s"}));
                json!([{"total": "4"}])
            } else {
                json!([{"done": s["inputs"]["item"]}])
            };
            let (status, body) = stack
                .post(
                    &format!("/v0/namespace/{ns}/state/{id}/executed"),
                    &json!({ "outputs": outputs }),
                )
                .await?;
            assert_eq!(status, 200, "{body}");
        }
        let run = stack.store.run(&run_id).await?.expect("run");
        if matches!(run.status.as_deref(), Some("SUCCESS") | Some("FAILED")) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "run never finished: {run:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let run = stack.wait_run(&run_id, Duration::from_secs(10)).await?;
    assert_eq!(run.status.as_deref(), Some("SUCCESS"), "{run:?}");
    let states = assert_run_consistent(&stack, &run).await?;
    let merges: Vec<_> = states.iter().filter(|s| s.identifier == "merge").collect();
    assert_eq!(merges.len(), 1, "{states:?}");
    assert_eq!(merges_handed_out, 1);
    assert_eq!(
        (run.total_count, run.success_count, run.pending_count),
        (10, 10, 0)
    );
    let works: Vec<_> = states.iter().filter(|s| s.identifier == "work").collect();
    assert_eq!(works.len(), 4);
    assert!(
        works.iter().all(|s| s.status == StateStatus::Success),
        "{works:?}"
    );
    let groups: Vec<Document> = stack
        .store
        .db()
        .collection::<Document>("UniteGroup")
        .find(doc! {"run_id": &run_id})
        .await?
        .try_collect()
        .await?;
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert!(groups[0].get_bool("fired")?, "{groups:?}");
    assert_eq!(groups[0].get_i64("open")?, 0, "{groups:?}");
    assert_eq!(groups[0].get_i64("failed")?, 0, "{groups:?}");
    Ok(())
}

/// Runs `exo-api <args>` against the stack's database; returns (exit code,
/// stdout).
fn exo_api_command(stack: &Stack, args: &[&str]) -> anyhow::Result<(i32, String)> {
    let out = std::process::Command::new(exo_test_support::service_bin("exo-api")?)
        .args(args)
        .envs(stack.env(exo_test_support::free_port()))
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "exo-api {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), stdout))
}

/// A template Exosphere stored as VALID that our analysis rejects (a node
/// name that cannot be a NATS subject token, a join that references only
/// one branch of a diamond) is listed by `exo-api check-db` before the
/// switch (exit 2, nothing written), then marked INVALID with the reasons
/// when the api starts: GET and trigger agree, never VALID next to a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_valid_graphs_we_cannot_run_are_reported_then_marked_invalid() -> anyhow::Result<()>
{
    let mut stack = Stack::start_with(&[]).await?;
    let db = stack.store.db();
    let now = DateTime::now();
    let node = |name: &str, ident: &str, inputs: Document, next: Vec<&str>| {
        doc! {"node_name": name, "namespace": "legacy", "identifier": ident, "inputs": inputs,
        "next_nodes": next, "unites": null}
    };
    let template = |name: &str, nodes: Vec<Document>| {
        doc! {"name": name, "namespace": "legacy", "validation_status": "VALID", "validation_errors": [],
        "secrets": {}, "triggers": [], "created_at": now, "updated_at": now,
        "retry_policy": {"max_retries": 3, "strategy": "EXPONENTIAL", "backoff_factor": 2000, "exponent": 2, "max_delay": null},
        "store_config": {"required_keys": [], "default_values": {}}, "nodes": nodes}
    };
    let templates = db.collection::<Document>("GraphTemplate");
    templates
        .insert_many([
            template("dotted", vec![node("my.node", "a", doc! {}, vec![])]),
            template(
                "diamond",
                vec![
                    node("A", "a", doc! {}, vec!["b", "c"]),
                    node("B", "b", doc! {}, vec!["d"]),
                    node("C", "c", doc! {}, vec!["d"]),
                    node("D", "d", doc! {"x": "${{ b.outputs.x }}"}, vec![]),
                ],
            ),
            template(
                "fine",
                vec![
                    node("A", "a", doc! {}, vec!["b"]),
                    node("B", "b", doc! {"x": "${{ a.outputs.x }}"}, vec![]),
                ],
            ),
        ])
        .await?;

    let (code, out) = exo_api_command(&stack, &["check-db"])?;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("graph legacy/dotted"), "{out}");
    assert!(out.contains("graph legacy/diamond"), "{out}");
    assert!(!out.contains("legacy/fine"), "{out}");
    assert!(out.contains("marked INVALID: 2"), "{out}");
    let still_valid = templates
        .count_documents(doc! {"validation_status": "VALID"})
        .await?;
    assert_eq!(still_valid, 3, "check-db writes nothing");

    stack.spawn("exo-api").await?;
    for (name, expect) in [("dotted", "node name"), ("diamond", "b")] {
        let (status, body) = stack
            .get(&format!("/v0/namespace/legacy/graph/{name}"))
            .await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["validation_status"], "INVALID", "{body}");
        let errors = body["validation_errors"].to_string();
        assert!(
            errors.contains("Not runnable by exo") && errors.contains(expect),
            "{errors}"
        );
        let (status, body) = stack
            .post(
                &format!("/v0/namespace/legacy/graph/{name}/trigger"),
                &json!({"inputs": {}}),
            )
            .await?;
        assert_eq!(
            (status, body["detail"].as_str()),
            (400, Some("Graph template is not valid"))
        );
    }
    let (_, body) = stack.get("/v0/namespace/legacy/graph/fine").await?;
    assert_eq!(body["validation_status"], "VALID", "{body}");
    let (code, out) = exo_api_command(&stack, &["check-db"])?;
    assert_eq!(code, 0, "{out}");
    Ok(())
}

/// Going back: `exo-api revert-to-upstream` counts without writing, then
/// with `--apply` turns what Exosphere cannot read or run into its shapes
/// (CANCELLED → ERRORED, QUEUED → CREATED without a lease) and removes our
/// bookkeeping from pending runs, which are adopted afresh if the database
/// is switched forward again; finished runs keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_to_upstream_counts_then_rewrites_what_exosphere_cannot_read() -> anyhow::Result<()>
{
    let stack = Stack::start_with(&[]).await?;
    let db = stack.store.db();
    let now = DateTime::now();
    let state = |run: &str, status: &str, extra: Document| {
        let mut d = doc! {"_id": ObjectId::new(), "node_name": "A", "namespace_name": "legacy", "identifier": "a",
        "graph_name": "g", "run_id": run, "status": status, "inputs": {}, "outputs": {}, "data": {},
        "error": null, "parents": {}, "does_unites": false, "state_fingerprint": "",
        "enqueue_after": now.timestamp_millis(), "retry_count": 0,
        "fanout_id": uuid::Uuid::new_v4().to_string(), "manual_retry_fanout_id": "",
        "created_at": now, "updated_at": now, "attempt": 1i64};
        d.extend(extra);
        d
    };
    let states = db.collection::<Document>("State");
    states
        .insert_many([
            state(
                "cancelled-run",
                "CANCELLED",
                doc! {"error": "run cancelled"},
            ),
            state(
                "pending-run",
                "QUEUED",
                doc! {"lease_until": now.timestamp_millis() + 60_000, "lease_holder": "127.0.0.1"},
            ),
            state("pending-run", "SUCCESS", doc! {}),
        ])
        .await?;
    let runs = db.collection::<Document>("runs");
    runs.insert_many([
        doc! {"run_id": "cancelled-run", "graph_name": "g", "namespace_name": "legacy", "created_at": now,
              "status": "CANCELLED", "total_count": 1i64, "cancelled_count": 1i64},
        doc! {"run_id": "pending-run", "graph_name": "g", "namespace_name": "legacy", "created_at": now,
              "status": "PENDING", "total_count": 2i64, "pending_count": 1i64, "success_count": 1i64},
    ])
    .await?;
    db.collection::<Document>("UniteGroup")
        .insert_one(doc! {"_id": "x:merge", "run_id": "pending-run", "target_id": ObjectId::new(),
                          "unite_identifier": "merge", "open": 1i64, "failed": 0i64, "closed": false, "fired": false})
        .await?;

    let (code, out) = exo_api_command(&stack, &["revert-to-upstream"])?;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("CANCELLED states → ERRORED (would change): 1"),
        "{out}"
    );
    assert!(
        out.contains("QUEUED states → CREATED (would change): 1"),
        "{out}"
    );
    assert!(
        out.contains("PENDING runs, counters removed (would change): 1"),
        "{out}"
    );
    assert_eq!(
        states.count_documents(doc! {"status": "CANCELLED"}).await?,
        1
    );

    let (code, out) = exo_api_command(&stack, &["revert-to-upstream", "--apply"])?;
    assert_eq!(code, 0, "{out}");
    let allowed = [
        "CREATED",
        "QUEUED",
        "EXECUTED",
        "ERRORED",
        "NEXT_CREATED_ERROR",
        "SUCCESS",
        "PRUNED",
        "RETRY_CREATED",
    ];
    let all: Vec<Document> = states.find(doc! {}).await?.try_collect().await?;
    for s in &all {
        assert!(
            allowed.contains(&s.get_str("status")?),
            "Exosphere's enum rejects {s}"
        );
    }
    let reverted = states
        .find_one(doc! {"run_id": "cancelled-run"})
        .await?
        .expect("state");
    assert_eq!(reverted.get_str("status")?, "ERRORED");
    let requeued = states
        .find_one(doc! {"run_id": "pending-run", "status": "CREATED"})
        .await?
        .expect("QUEUED became CREATED");
    assert!(!requeued.contains_key("lease_until") && !requeued.contains_key("lease_holder"));
    let pending = runs
        .find_one(doc! {"run_id": "pending-run"})
        .await?
        .expect("run");
    assert!(
        !pending.contains_key("status") && !pending.contains_key("pending_count"),
        "{pending}"
    );
    let finished = runs
        .find_one(doc! {"run_id": "cancelled-run"})
        .await?
        .expect("run");
    assert_eq!(finished.get_str("status")?, "CANCELLED");
    assert_eq!(
        db.collection::<Document>("UniteGroup")
            .count_documents(doc! {"run_id": "pending-run"})
            .await?,
        0
    );
    Ok(())
}

/// Cancelling a run Exosphere started (no counters of ours) adopts it first:
/// its pending states are cancelled and the counters match its states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_exosphere_started_adopts_it() -> anyhow::Result<()> {
    let mut stack = Stack::start_with(&[]).await?;
    let fixture = load_upstream_fixture(&stack).await?;
    stack.store.ensure_indexes().await?;
    for s in ["exo-trigger", "exo-api"] {
        stack.spawn(s).await?;
    }
    let run_id = fixture["run_id"].as_str().expect("run_id");
    let (status, body) = stack
        .post(
            &format!("/v0/namespace/legacy/run/{run_id}/cancel"),
            &json!({}),
        )
        .await?;
    assert_eq!(status, 202, "{body}");
    let run = stack.wait_run(run_id, Duration::from_secs(60)).await?;
    assert_eq!(run.status.as_deref(), Some("CANCELLED"), "{run:?}");
    assert_eq!(
        (
            run.total_count,
            run.success_count,
            run.cancelled_count,
            run.pending_count
        ),
        (9, 6, 3, 0),
        "{run:?}"
    );
    assert_run_consistent(&stack, &run).await?;
    Ok(())
}
