//! `exo dev`: the whole system on this machine from a clone of the
//! repository, in one command: tools, servers (nats-server, the
//! MongoDB-wire server), the five services and the example runtime, with
//! the URLs and next commands printed; Ctrl-C stops everything again.
//!
//! It drives the repository's own scripts (`deploy/install.sh`,
//! `deploy/servers.sh`, `deploy/services.sh`), so what it starts is what
//! the README's commands and CI start.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::client::{Exit, Outcome};

/// What `exo dev` does.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// The repository clone [default: the nearest parent of the current
    /// directory with `deploy/servers.sh`].
    #[arg(long, env = "EXO_ROOT")]
    pub root: Option<PathBuf>,
    /// Release builds (slower to build, faster to run).
    #[arg(long)]
    pub release: bool,
    /// Do not build; use the binaries already in `target/`.
    #[arg(long)]
    pub no_build: bool,
    /// Do not start the example runtime.
    #[arg(long)]
    pub no_runtime: bool,
    /// Start everything and return, leaving it running (`exo dev --down`
    /// stops it).
    #[arg(long, conflicts_with = "down")]
    pub detach: bool,
    /// Stop what `exo dev --detach` started.
    #[arg(long)]
    pub down: bool,
}

fn say(what: &str) {
    eprintln!("==> {what}");
}

fn find_root(given: Option<&Path>) -> Outcome<PathBuf> {
    if let Some(root) = given {
        return Ok(root.to_path_buf());
    }
    let here = std::env::current_dir()?;
    here.ancestors()
        .find(|d| d.join("deploy/servers.sh").is_file())
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            Exit::Failure(
                "exo dev runs from a clone of the exo repository (no deploy/servers.sh above \
                 the current directory); pass --root or set EXO_ROOT"
                    .into(),
            )
        })
}

/// Runs a command in `root` with `env`, failing with its name.
async fn step(root: &Path, env: &[(String, String)], program: &str, args: &[&str]) -> Outcome {
    let status = Command::new(program)
        .args(args)
        .current_dir(root)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .status()
        .await
        .map_err(|e| Exit::Failure(format!("{program}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Exit::Failure(format!(
            "`{program} {}` failed ({status})",
            args.join(" ")
        )))
    }
}

/// The `export K=V` lines of `.run/env.sh` (the servers' URLs) and the
/// tools' environment (`.tools/env.sh`'s PATH).
fn exported(root: &Path) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if let Ok(text) = std::fs::read_to_string(root.join(".run/env.sh")) {
        for line in text.lines() {
            if let Some((k, v)) = line
                .trim()
                .strip_prefix("export ")
                .and_then(|l| l.split_once('='))
            {
                env.push((k.to_string(), v.trim_matches('"').to_string()));
            }
        }
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let tools = root.join(".tools/bin");
    env.push(("PATH".into(), format!("{}:{path}", tools.display())));
    env
}

async fn down(root: &Path, env: &[(String, String)]) -> Outcome {
    if let Ok(pid) = std::fs::read_to_string(root.join(".run/exo-dev-runtime.pid")) {
        let _ = step(root, env, "kill", &["-TERM", pid.trim()]).await;
        let _ = std::fs::remove_file(root.join(".run/exo-dev-runtime.pid"));
    }
    say("stopping the services and the servers");
    step(root, env, "bash", &["deploy/services.sh", "down"]).await?;
    step(root, env, "bash", &["deploy/servers.sh", "down"]).await
}

fn start_runtime(root: &Path, env: &[(String, String)], profile: &str) -> Outcome<Child> {
    let demo = root.join(format!("target/{profile}/examples/demo"));
    let log = std::fs::File::create(root.join(".run/exo-dev-runtime.log"))?;
    Command::new(&demo)
        .args(["--serve", "--namespace", "demo"])
        .current_dir(root)
        .envs(env.iter().cloned())
        .env("EXO_API__KEY", api_key())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| {
            Exit::Failure(format!(
                "{}: {e} (build it: cargo build --examples)",
                demo.display()
            ))
        })
}

/// The example runtime's nodes.
const DEMO_NODES: [&str; 4] = ["Start", "Fan", "Work", "Report"];

/// Waits until the example runtime has registered its nodes with the API
/// (fails when it exits or takes longer than a minute).
async fn wait_registered(child: &mut Child, root: &Path) -> Outcome {
    let api = crate::client::Api::new("http://127.0.0.1:8000", &api_key(), "demo")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let log = root.join(".run/exo-dev-runtime.log");
    loop {
        if let Ok(v) = api.get("/nodes/").await {
            let names: Vec<&str> = v["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["name"].as_str())
                .collect();
            if DEMO_NODES.iter().all(|n| names.contains(n)) {
                return Ok(());
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Exit::Failure(format!(
                "the example runtime exited ({status}) before registering its nodes; see {}",
                log.display()
            )));
        }
        if std::time::Instant::now() > deadline {
            return Err(Exit::Failure(format!(
                "the example runtime did not register its nodes within a minute; see {}",
                log.display()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn api_key() -> String {
    std::env::var("EXO_API__KEY").unwrap_or_else(|_| "exo-demo-key".into())
}

/// `exo dev`.
pub async fn run(args: &DevArgs) -> Outcome {
    let root = find_root(args.root.as_deref())?;
    let profile = if args.release { "release" } else { "debug" };
    if args.down {
        return down(&root, &exported(&root)).await;
    }
    say("installing what is missing (deploy/install.sh)");
    step(&root, &[], "bash", &["deploy/install.sh"]).await?;
    let mut env = exported(&root);
    if !args.no_build {
        say(&format!(
            "building the services and the example runtime ({profile})"
        ));
        let mut build = vec!["build", "--workspace", "--bins", "--examples"];
        if args.release {
            build.push("--release");
        }
        step(&root, &env, "cargo", &build).await?;
    }
    say("starting nats-server and the MongoDB-wire server (deploy/servers.sh)");
    step(&root, &env, "bash", &["deploy/servers.sh", "up"]).await?;
    env = exported(&root);
    env.push(("EXO_PROFILE".into(), profile.into()));
    say("starting the five services (deploy/services.sh)");
    step(&root, &env, "bash", &["deploy/services.sh", "up"]).await?;
    let mut runtime = None;
    if !args.no_runtime {
        say("starting the example runtime (nodes Start, Fan, Work, Report in namespace demo)");
        let mut child = start_runtime(&root, &env, profile)?;
        if let Some(pid) = child.id() {
            std::fs::write(root.join(".run/exo-dev-runtime.pid"), pid.to_string())?;
        }
        // The printed next steps apply a graph of its nodes: they must be
        // registered before that graph can validate.
        wait_registered(&mut child, &root).await?;
        runtime = Some(child);
    }
    print_next(&root);
    if args.detach {
        return Ok(());
    }
    eprintln!("Ctrl-C stops everything.");
    let _ = tokio::signal::ctrl_c().await;
    if let Some(mut child) = runtime {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    down(&root, &env).await
}

fn print_next(root: &Path) {
    let key = api_key();
    println!(
        "\nexo is running:\n  API      http://127.0.0.1:8000   (key: {key})\n  \
         live     http://127.0.0.1:8000/ui/#/ns/demo\n  logs     {}/.run/*.log\n\n\
         Try:\n  export EXO_URL=http://127.0.0.1:8000 EXO_API_KEY={key} EXO_NAMESPACE=demo\n  \
         exo graph apply -f {}/deploy/demo-graph.yaml\n  \
         exo run start demo-graph --store who=you --wait\n  exo run list\n",
        root.display(),
        root.display()
    );
}
