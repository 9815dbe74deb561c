//! The `exo` command line against the running system: every command's
//! output and exit code, the way a script would use them.

use std::path::Path;
use std::time::Duration;

use assert_cmd::Command;
use exo_e2e::Stack;
use exo_e2e::nodes::{Append, Picky, counter};
use serde_json::Value;

const NS: &str = "cli";

const GRAPH: &str = "\
# A chain: a then b.
store_config:
  required_keys: [word]
nodes:
  - node_name: AppendA
    identifier: a
    namespace: cli
    inputs:
      text: ${{ store.word }}
    next_nodes: [b]
  - node_name: AppendB
    identifier: b
    namespace: cli
    inputs:
      text: ${{ a.outputs.text }}
";

const BROKEN: &str = "\
secrets: {}
nodes:
  - node_name: AppendA
    identifier: a
    namespace: cli
    inputs:
      text: x
    next_nodes: [b]
  - node_name: Missing
    identifier: b
    namespace: cli
    inputs:
      text: y
";

/// `exo` with the stack's URL and key and nothing else from this process's
/// environment.
fn exo(stack: &Stack) -> anyhow::Result<Command> {
    let mut cmd = Command::new(exo_test_support::service_bin("exo")?);
    cmd.env_clear()
        .env("EXO_URL", &stack.api_url)
        .env("EXO_API_KEY", exo_e2e::API_KEY)
        .env("EXO_NAMESPACE", NS)
        .timeout(Duration::from_secs(120));
    Ok(cmd)
}

/// Runs `exo args…`; returns (exit code, stdout, stderr).
fn run(stack: &Stack, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = exo(stack)?.args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    ))
}

fn json_of(stdout: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(stdout.trim())?)
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_applies_graphs_and_shows_errors_at_their_line() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (stop, _rt) = stack.start_append_runtime(NS).await?;
    let dir = tempfile::tempdir()?;
    let good = write(dir.path(), "chain.yaml", GRAPH)?;
    let (code, out, err) = run(&stack, &["graph", "apply", "-f", &good])?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("graph chain in namespace cli: VALID"), "{out}");

    let broken = write(dir.path(), "broken.yaml", BROKEN)?;
    let (code, _, err) = run(&stack, &["graph", "apply", "-f", &broken])?;
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains(&format!(
            "{broken}:10: Node Missing in namespace cli does not exist"
        )),
        "{err}"
    );
    // Refused by the template check (the store key is not declared): the
    // placeholder's line.
    let unstored = GRAPH.replace("store_config:\n  required_keys: [word]\n", "");
    let line = unstored
        .lines()
        .position(|l| l.contains("store.word"))
        .map_or(0, |i| i + 1);
    let unstored = write(dir.path(), "unstored.yaml", &unstored)?;
    let (code, _, err) = run(&stack, &["graph", "apply", "-f", &unstored])?;
    assert_eq!(code, 5, "{err}");
    assert!(err.contains(&format!("{unstored}:{line}: 400")), "{err}");
    let malformed = write(dir.path(), "bad.json", r#"{"nodes": [{"node_name": 3}]}"#)?;
    let (code, _, err) = run(
        &stack,
        &["graph", "apply", "-f", &malformed, "--name", "bad"],
    )?;
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("bad.json:1: nodes.0"), "{err}");

    let (code, out, _) = run(&stack, &["graph", "list"])?;
    assert_eq!(code, 0);
    assert!(out.contains("chain") && out.contains("VALID"), "{out}");
    let (code, out, _) = run(&stack, &["-o", "json", "graph", "get", "chain"])?;
    assert_eq!(code, 0);
    assert_eq!(json_of(&out)?["nodes"][1]["identifier"], "b");
    let (code, out, _) = run(&stack, &["nodes", "list"])?;
    assert_eq!(code, 0);
    assert!(out.contains("AppendA") && out.contains("AppendB"), "{out}");
    let (code, out, _) = run(&stack, &["namespaces"])?;
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l == NS), "{out}");
    let (code, _, err) = run(&stack, &["graph", "get", "nope"])?;
    assert_eq!(code, 6, "{err}");
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_starts_follows_lists_shows_cancels_and_retries_runs() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let builder = stack
        .runtime(NS, "rt")
        .node(Append::new("AppendA", "a"))
        .node(Append::new("AppendB", "b"))
        .node(Picky {
            fail_digits: "7",
            prune_digits: "",
            delay: Duration::ZERO,
            calls: counter(),
        });
    let (stop, _rt) = stack.start_runtime(builder).await?;
    let dir = tempfile::tempdir()?;
    run(
        &stack,
        &[
            "graph",
            "apply",
            "-f",
            &write(dir.path(), "chain.yaml", GRAPH)?,
        ],
    )?;
    let picky = "retry_policy: {max_retries: 0}\nstore_config: {required_keys: [n]}\nnodes:\n  - {node_name: Picky, identifier: p, namespace: cli, inputs: {text: '${{ store.n }}'}}\n";
    let (code, _, err) = run(
        &stack,
        &[
            "graph",
            "apply",
            "-f",
            &write(dir.path(), "picky.yaml", picky)?,
        ],
    )?;
    assert_eq!(code, 0, "{err}");

    // Start and wait: exit 0 on SUCCESS.
    let (code, out, err) = run(
        &stack,
        &["run", "start", "chain", "--store", "word=hi", "--wait"],
    )?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SUCCESS"), "{out}");
    // JSON for scripts, then watch.
    let (code, out, _) = run(
        &stack,
        &["-o", "json", "run", "start", "chain", "--store", "word=yo"],
    )?;
    assert_eq!(code, 0);
    let run_id = json_of(&out)?["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (code, out, _) = run(&stack, &["-o", "json", "run", "watch", &run_id])?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(json_of(&out)?["status"], "SUCCESS");
    let (code, out, _) = run(&stack, &["run", "show", &run_id])?;
    assert_eq!(code, 0);
    assert!(
        out.contains("a (AppendA)") && out.contains("b (AppendB)"),
        "{out}"
    );
    assert!(
        out.contains("SUCCESS 1") && out.contains("2 of 2 states done"),
        "{out}"
    );
    assert!(
        out.contains("ATTEMPTS") && out.contains(" s "),
        "attempts and times: {out}"
    );
    let (code, out, _) = run(&stack, &["-o", "json", "run", "list"])?;
    assert_eq!(code, 0);
    let listed = json_of(&out)?;
    assert_eq!(listed["total"], 2, "{listed}");
    assert!(
        listed["runs"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["run_id"] == run_id.as_str()))
    );

    // A failing run: exit 3; its state retried by id.
    let (code, _, err) = run(
        &stack,
        &["run", "start", "picky", "--store", "n=7", "--wait"],
    )?;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("FAILED"), "{err}");
    let (_, out, _) = run(&stack, &["-o", "json", "run", "list", "--size", "1"])?;
    let failed = json_of(&out)?["runs"][0]["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let states = stack.states(&failed).await?;
    let errored = states.first().map(|s| s.id.to_hex()).unwrap_or_default();
    let (code, out, err) = run(&stack, &["state", "retry", &errored])?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("state {errored} retried as")),
        "{out}"
    );

    // A cancelled run: exit 4 from watch.
    let (_, out, _) = run(
        &stack,
        &[
            "-o",
            "json",
            "run",
            "start",
            "chain",
            "--store",
            "word=z",
            "--start-delay",
            "60000",
        ],
    )?;
    let delayed = json_of(&out)?["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (code, _, err) = run(&stack, &["run", "cancel", &delayed])?;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&stack, &["run", "watch", &delayed, "--timeout", "30"])?;
    assert_eq!(code, 4, "{err}");
    stop.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exit_codes_name_what_went_wrong_and_profiles_are_read() -> anyhow::Result<()> {
    let stack = Stack::start_with(&["exo-api"]).await?;
    let (code, _, err) = run(&stack, &["--api-key", "wrong", "graph", "list"])?;
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = run(&stack, &["--url", "http://127.0.0.1:1", "graph", "list"])?;
    assert_eq!(code, 69, "{err}");
    assert!(
        err.contains("cannot reach the API at http://127.0.0.1:1"),
        "{err}"
    );
    let (code, _, err) = run(&stack, &["run", "show", "no-such-run"])?;
    assert_eq!(code, 6, "{err}");
    let (code, _, err) = run(&stack, &["run", "start", "g", "--store", "novalue"])?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--store takes key=value"), "{err}");
    let (code, _, _) = run(&stack, &["run", "frobnicate"])?;
    assert_eq!(code, 2, "clap's usage error");
    let (code, out, _) = run(&stack, &["--help"])?;
    assert_eq!(code, 0);
    assert!(
        out.contains("Exit codes:") && out.contains("69  the API cannot be reached"),
        "{out}"
    );

    // A profile file supplies URL, key and namespace when nothing else does.
    let dir = tempfile::tempdir()?;
    let config = write(
        dir.path(),
        "config.toml",
        &format!(
            "[ops]\nurl = \"{}\"\napi_key = \"{}\"\nnamespace = \"from-profile\"\n",
            stack.api_url,
            exo_e2e::API_KEY
        ),
    )?;
    let out = Command::new(exo_test_support::service_bin("exo")?)
        .env_clear()
        .env("EXO_CLI_CONFIG", &config)
        .args(["--profile", "ops", "-o", "json", "graph", "list"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        json_of(&String::from_utf8_lossy(&out.stdout))?["namespace"],
        "from-profile"
    );
    let out = Command::new(exo_test_support::service_bin("exo")?)
        .env_clear()
        .args(["graph", "list"])
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no API key"));
    Ok(())
}

/// `exo dev --detach` brings the whole system up from this clone with the
/// repository's own scripts (servers on their default ports, the five
/// services, the example runtime), the demo graph runs through it with the
/// CLI, and `exo dev --down` stops it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_dev_brings_the_system_up_and_down() -> anyhow::Result<()> {
    for port in [4222u16, 8000, 27017] {
        anyhow::ensure!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is taken: stop the local stack first (deploy/services.sh down; deploy/servers.sh down)"
        );
    }
    let root = exo_test_support::workspace_root();
    let exo = || -> anyhow::Result<Command> {
        let mut cmd = Command::new(exo_test_support::service_bin("exo")?);
        cmd.env_remove("EXO_URL")
            .env_remove("EXO_NAMESPACE")
            .env("EXO_API_KEY", "exo-demo-key")
            .env("EXO_ROOT", &root)
            .timeout(Duration::from_secs(300));
        Ok(cmd)
    };
    let up = exo()?.args(["dev", "--detach", "--no-build"]).output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    // Failures inside return an error (no panic), so the stack is always
    // brought down below.
    let result = async {
        anyhow::ensure!(up.status.success(), "exo dev --detach failed:\n{said}");
        anyhow::ensure!(
            said.contains("http://127.0.0.1:8000/ui/#/ns/demo"),
            "{said}"
        );
        // The example runtime's four nodes are registered by the time
        // exo dev returns (its printed next step applies a graph of them).
        let out = exo()?
            .args(["-n", "demo", "-o", "json", "nodes", "list"])
            .output()?;
        let listed: Value = serde_json::from_slice(&out.stdout)?;
        anyhow::ensure!(
            listed["count"] == 4,
            "nodes when exo dev returned: {listed}"
        );
        let graph = root.join("deploy/demo-graph.yaml");
        let out = exo()?
            .args(["-n", "demo", "graph", "apply", "-f"])
            .arg(&graph)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = exo()?
            .args([
                "-n",
                "demo",
                "run",
                "start",
                "demo-graph",
                "--store",
                "who=dev",
                "--wait",
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"));
        anyhow::Ok(())
    }
    .await;
    let down = exo()?.args(["dev", "--down"]).output()?;
    result?;
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let (code, _, _) = {
        let out = exo()?.args(["-n", "demo", "nodes", "list"]).output()?;
        (out.status.code().unwrap_or(-1), (), ())
    };
    assert_eq!(code, 69, "the API is gone after exo dev --down");
    Ok(())
}
