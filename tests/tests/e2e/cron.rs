//! CRON triggers fire runs from the `trigger` service.

use std::time::{Duration, Instant};

use exo_e2e::Stack;
use exo_e2e::nodes::Append;
use exo_store::mongodb::bson::doc;
use futures::TryStreamExt;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_triggers_start_runs_until_removed() -> anyhow::Result<()> {
    let ns = "cron";
    let stack = Stack::start().await?;
    let (stop, _) = stack
        .start_runtime(stack.runtime(ns, "rt").node(Append::new("AppendA", "a")))
        .await?;
    let node = json!({"node_name": "AppendA", "identifier": "a", "namespace": ns, "inputs": {"text": "tick"}});
    // Six fields, croniter style: the sixth is seconds, so this fires every second.
    let graph = json!({"secrets": {}, "nodes": [node], "triggers": [{"type": "CRON", "value": {"expression": "* * * * * *"}}]});
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = stack
            .store
            .runs()
            .count_documents(doc! {"namespace_name": ns, "status": "SUCCESS"})
            .await?;
        if done >= 2 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "cron runs did not complete ({done})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fired: Vec<exo_store::TriggerDoc> = stack
        .store
        .triggers()
        .find(doc! {"namespace": ns, "trigger_status": "TRIGGERED"})
        .await?
        .try_collect()
        .await?;
    assert!(fired.len() >= 2);
    for t in &fired {
        let run_id = t.run_id.as_deref().expect("fired occurrence names its run");
        assert!(
            stack.store.run(run_id).await?.is_some(),
            "run {run_id} exists"
        );
    }
    let pending = stack
        .store
        .triggers()
        .count_documents(doc! {"namespace": ns, "trigger_status": "PENDING"})
        .await?;
    assert_eq!(pending, 1, "exactly one next occurrence is scheduled");

    // Removing the trigger stops the schedule.
    let graph = json!({"secrets": {}, "nodes": [node]});
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = stack
        .store
        .runs()
        .count_documents(doc! {"namespace_name": ns})
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = stack
        .store
        .runs()
        .count_documents(doc! {"namespace_name": ns})
        .await?;
    assert_eq!(before, after, "no run after the trigger was removed");
    assert_eq!(
        stack
            .store
            .triggers()
            .count_documents(doc! {"namespace": ns, "trigger_status": "PENDING"})
            .await?,
        0
    );
    stop.cancel();
    Ok(())
}

/// A CRON trigger's `store` and `inputs` (ours) start its runs: a graph
/// with a required store key runs on schedule (upstream's CRON runs carry
/// no store, so such a graph always fails there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_runs_carry_the_trigger_s_inputs_and_store() -> anyhow::Result<()> {
    let ns = "cronstore";
    let stack = Stack::start().await?;
    let (stop, _) = stack.start_append_runtime(ns).await?;
    let graph = json!({
        "secrets": {},
        "store_config": {"required_keys": ["who"]},
        "triggers": [{"type": "CRON", "value": {"expression": "* * * * * *",
            "inputs": {"text": "hello ${{ store.who }}"}, "store": {"who": "cron"}}}],
        "nodes": [
            {"node_name": "AppendA", "identifier": "a", "namespace": ns,
             "inputs": {"text": "template input"}, "next_nodes": ["b"]},
            {"node_name": "AppendB", "identifier": "b", "namespace": ns,
             "inputs": {"text": "${{ a.outputs.text }} ${{ store.who }}"}},
        ]
    });
    stack.upsert_valid_graph(ns, "g", &graph).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let run = loop {
        let done = stack
            .store
            .runs()
            .find_one(doc! {"namespace_name": ns, "status": {"$in": ["SUCCESS", "FAILED"]}})
            .await?;
        if let Some(run) = done {
            break run;
        }
        anyhow::ensure!(Instant::now() < deadline, "no cron run finished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(run.status.as_deref(), Some("SUCCESS"), "{run:?}");
    let states = exo_e2e::assert_run_consistent(&stack, &run).await?;
    let b = states.iter().find(|s| s.identifier == "b");
    assert_eq!(
        b.and_then(|s| s.outputs.get_str("text").ok()),
        Some("hello cron+a cron+b")
    );
    stop.cancel();
    Ok(())
}

/// `GET …/graph/{graph}/triggers` (ours) shows each CRON schedule with its
/// zone, policy and next fire times, on the zone's wall clock; bad zones
/// and policies are refused with 422 naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shows_next_fire_times_in_the_schedule_s_zone() -> anyhow::Result<()> {
    let ns = "cronview";
    let stack = Stack::start_with(&["exo-api"]).await?;
    stack.register_http_node(ns, "AppendA").await?;
    let node = json!({"node_name": "AppendA", "identifier": "a", "namespace": ns, "inputs": {"text": "t"}});
    let graph =
        |triggers: serde_json::Value| json!({"secrets": {}, "nodes": [node], "triggers": triggers});
    let triggers = json!([
        {"type": "CRON", "value": {"expression": "0 9 * * *", "timezone": "America/New_York",
                                    "catch_up": "ALL", "max_catch_up": 3}},
        {"type": "CRON", "value": {"expression": "0 9 * * *"}},
        {"type": "EVENT", "value": {"subject": "cronview.ping"}},
    ]);
    stack.upsert_valid_graph(ns, "g", &graph(triggers)).await?;
    let (status, body) = stack
        .get(&format!("/v0/namespace/{ns}/graph/g/triggers"))
        .await?;
    assert_eq!(status, 200, "{body}");
    let t = &body["triggers"];
    assert_eq!(t.as_array().map(Vec::len), Some(3), "{body}");
    assert_eq!(t[0]["key"], "CRON_TZ=America/New_York 0 9 * * *");
    assert_eq!(t[0]["timezone"], "America/New_York");
    assert_eq!(t[0]["catch_up"], "ALL");
    assert_eq!(t[0]["max_catch_up"], 3);
    assert_eq!(t[1]["key"], "0 9 * * *");
    assert_eq!(t[1]["timezone"], "UTC");
    assert_eq!(t[1]["catch_up"], "ONCE");
    assert_eq!(t[2]["type"], "EVENT");
    assert!(t[2].get("next_fire_times").is_none(), "{body}");
    let times = |i: usize| -> Vec<String> {
        t[i]["next_fire_times"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(times(0).len(), 5);
    for (ny, utc) in times(0).iter().zip(times(1)) {
        // 09:00 in New York is 13:00 or 14:00 UTC (daylight saving or not).
        assert!(
            ny.ends_with("T13:00:00Z") || ny.ends_with("T14:00:00Z"),
            "{ny}"
        );
        assert!(utc.ends_with("T09:00:00Z"), "{utc}");
    }
    // The stored occurrence of each schedule is the first of its next times.
    assert_eq!(
        t[0]["scheduled"].as_str(),
        times(0).first().map(String::as_str)
    );
    assert_eq!(
        t[1]["scheduled"].as_str(),
        times(1).first().map(String::as_str)
    );
    assert_eq!(t[0]["recent"], json!([]));

    for (value, field, says) in [
        (
            json!({"expression": "0 9 * * *", "timezone": "Mars/Olympus"}),
            "timezone",
            "Unknown time zone",
        ),
        (
            json!({"expression": "0 9 * * *", "catch_up": "SOMETIMES"}),
            "catch_up",
            "SKIP",
        ),
        (
            json!({"expression": "0 9 * * *", "catch_up": "ALL", "max_catch_up": 0}),
            "max_catch_up",
            "1 to 1000",
        ),
    ] {
        let (status, body) = stack
            .put(
                &format!("/v0/namespace/{ns}/graph/bad"),
                &graph(json!([{"type": "CRON", "value": value}])),
            )
            .await?;
        assert_eq!(status, 422, "{body}");
        let detail = &body["detail"][0];
        assert_eq!(
            detail["loc"],
            json!(["body", "triggers", 0, "value", field]),
            "{body}"
        );
        assert!(
            detail["msg"].as_str().unwrap_or_default().contains(says),
            "{body}"
        );
    }
    let (status, _) = stack
        .get(&format!("/v0/namespace/{ns}/graph/none/triggers"))
        .await?;
    assert_eq!(status, 404);
    Ok(())
}
