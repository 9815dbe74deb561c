//! The system under test: nats-server, the MongoDB-wire server and the five
//! services as release processes, plus clients.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use exo_store::mongodb::bson::doc;
use exo_store::{RunDoc, Store};
use exo_test_support::{
    ApiClient, MongoOptions, MongoServer, ServiceProcess, free_port, unique_db_name,
};
use serde_json::Value;
use tempfile::TempDir;

use crate::procstat::{self, Watch};
use crate::proxy::MongoProxy;

pub use exo_test_support::SERVICES;

/// API key of every bench stack.
pub const API_KEY: &str = "bench-secret-key";

/// Namespace of every bench graph.
pub const NS: &str = "bench";

/// How the stack is started.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Directory of the release service binaries.
    pub bin_dir: PathBuf,
    /// `--sync-on-commit` for secantusd-rs.
    pub sync_on_commit: bool,
    /// JetStream `sync_interval: always` (fsync every write).
    pub nats_sync_always: bool,
    /// nats-server `max_payload`, bytes.
    pub max_payload: u64,
    /// `RUST_LOG` of the services.
    pub rust_log: String,
    /// Put a counting proxy between each service and MongoDB.
    pub mongo_proxy: bool,
    /// Extra environment: `(service or None for all, key, value)`.
    pub service_env: Vec<(Option<String>, String, String)>,
    /// Processes per service (absent: one).
    pub replicas: BTreeMap<String, usize>,
    /// Give each `exo-completion` replica its share of the result
    /// partitions (`EXO_PARTITIONS=i/N`) instead of every lane.
    pub share_partitions: bool,
    /// nats-servers: 1, or a JetStream cluster of this many with the
    /// streams replicated on all of them (`EXO_NATS__STREAM_REPLICAS`).
    pub nats_cluster: usize,
}

/// A server's place in a JetStream cluster: its index and every member's
/// route port.
#[derive(Debug, Clone, Copy)]
pub struct ClusterSeat<'a> {
    /// This server, `0..routes.len()`.
    pub index: usize,
    /// Route ports of every member.
    pub routes: &'a [u16],
}

/// A nats-server started by the bench with its own configuration file
/// (`exo-test-support` takes no extra arguments, and a 100k-wide fan-out
/// result is larger than the default 1 MiB `max_payload`).
pub struct BenchNats {
    child: Option<Child>,
    port: u16,
    monitor_port: u16,
    /// Server log.
    pub log_path: PathBuf,
    _dir: TempDir,
}

/// The nats-server configuration of a bench server.
fn config_text(
    port: u16,
    monitor_port: u16,
    store: &Path,
    max_payload: u64,
    sync_always: bool,
    seat: Option<ClusterSeat<'_>>,
) -> String {
    let sync = if sync_always {
        "\n  sync_interval: always"
    } else {
        ""
    };
    let mut config = format!(
        "listen: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{monitor_port}\"\n\
             max_payload: {max_payload}\nmax_pending: {}\n\
             jetstream {{\n  store_dir: \"{}\"{sync}\n}}\n",
        max_payload.max(64 << 20),
        store.display()
    );
    if let Some(seat) = seat {
        let routes: Vec<String> = seat
            .routes
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect();
        config.push_str(&format!(
                "server_name: n{}\ncluster {{\n  name: exo-bench\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                seat.index,
                seat.routes[seat.index],
                routes.join(", ")
            ));
    }
    config
}

impl BenchNats {
    /// Starts nats-server with JetStream and waits for `/healthz`.
    pub async fn start(
        max_payload: u64,
        sync_always: bool,
        seat: Option<ClusterSeat<'_>>,
    ) -> anyhow::Result<Self> {
        let bin = exo_test_support::nats_server_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("exo-bench-nats-")
            .tempdir()?;
        let port = free_port();
        let monitor_port = free_port();
        let store = dir.path().join("store");
        let config = config_text(port, monitor_port, &store, max_payload, sync_always, seat);
        // Clustered, plain /healthz waits for the JetStream meta leader.
        let health = if seat.is_some() {
            "/healthz"
        } else {
            "/healthz?js-enabled-only=true"
        };
        let config_path = dir.path().join("nats.conf");
        std::fs::write(&config_path, &config)?;
        let log_path = dir.path().join("nats-server.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut nats = Self {
            child: Some(child),
            port,
            monitor_port,
            log_path,
            _dir: dir,
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = format!("{}{health}", nats.monitor_url());
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(nats);
            }
            if let Some(c) = nats.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "nats-server exited ({status}): {}",
                    std::fs::read_to_string(&nats.log_path).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("nats-server not healthy within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Monitoring base URL.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for BenchNats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Messages in and out of one NATS connection (from `/connz`).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ConnCounts {
    /// Messages the client sent (publishes, acks, pull requests).
    pub in_msgs: u64,
    /// Messages the server delivered to the client (deliveries, replies).
    pub out_msgs: u64,
}

/// Servers, services and clients of one workload.
pub struct BenchStack {
    /// nats-server (the one every client connects to).
    pub nats: BenchNats,
    /// The other members of a JetStream cluster (`--nats-cluster`).
    pub nats_peers: Vec<BenchNats>,
    /// MongoDB-wire server.
    pub mongo: MongoServer,
    /// Database of this stack.
    pub db: String,
    /// Services in [`SERVICES`] order.
    pub services: Vec<ServiceProcess>,
    /// Base URL of the API.
    pub api_url: String,
    /// Store handle (direct, never through a proxy).
    pub store: Store,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The api with the bench's key.
    pub api: ApiClient,
    /// Counting proxies by service name (with `--mongo-proxy`).
    pub proxies: BTreeMap<String, MongoProxy>,
    /// Process watcher (services, servers, this process).
    pub watch: Watch,
}

/// The environment of service `name`: connections, ports, the bench's
/// key and settings, then `--service-env` overrides.
fn service_env(
    opts: &StackOptions,
    name: &str,
    nats_url: &str,
    mongo_uri: &str,
    db: &str,
    api_port: u16,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("EXO_NATS__URL", nats_url.to_string()),
        ("EXO_MONGO__URI", mongo_uri.to_string()),
        ("EXO_MONGO__DATABASE", db.to_string()),
        ("EXO_ADMIN__ADDR", format!("127.0.0.1:{}", free_port())),
        ("EXO_API__ADDR", format!("127.0.0.1:{api_port}")),
        ("EXO_API__KEY", API_KEY.to_string()),
        (
            "EXO_API__SECRETS_ENCRYPTION_KEY",
            "YTzpUlBGLSwm-3yKJRJTZnb0_aQuQQHyz64s8qAERVU=".to_string(),
        ),
        ("EXO_SHUTDOWN_GRACE_SECS", "5".to_string()),
        ("RUST_LOG", opts.rust_log.clone()),
        (
            "EXO_NATS__STREAM_REPLICAS",
            opts.nats_cluster.max(1).to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (svc, k, v) in &opts.service_env {
        if svc.as_deref().is_none_or(|s| s == name) {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
    }
    env
}

/// The processes to watch: services (replicas told apart by their index,
/// `#1`, …), the servers and this process (which runs the runtime).
fn watched(
    services: &[ServiceProcess],
    nats: &[&BenchNats],
    mongo: &MongoServer,
) -> Vec<(String, u32)> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut procs: Vec<(String, u32)> = services
        .iter()
        .filter_map(|p| {
            let k = seen.entry(p.name().to_string()).or_default();
            let name = match *k {
                0 => p.name().to_string(),
                i => format!("{}#{i}", p.name()),
            };
            *k += 1;
            p.pid().map(|pid| (name, pid))
        })
        .collect();
    for (i, server) in nats.iter().enumerate() {
        if let Some(pid) = server.pid() {
            let name = match i {
                0 => "nats-server".to_string(),
                i => format!("nats-server#{i}"),
            };
            procs.push((name, pid));
        }
    }
    if let Some(pid) = mongo
        .storage_dir()
        .and_then(|d| procstat::find_pid(&d.display().to_string()))
    {
        procs.push(("secantusd-rs".into(), pid));
    }
    procs.push(("exo-bench (runtime)".into(), std::process::id()));
    procs
}

/// One nats-server, or `opts.nats_cluster` of them routed into one
/// JetStream cluster (started together: each waits for the meta leader).
async fn start_nats(opts: &StackOptions) -> anyhow::Result<Vec<BenchNats>> {
    if opts.nats_cluster <= 1 {
        return Ok(vec![
            BenchNats::start(opts.max_payload, opts.nats_sync_always, None).await?,
        ]);
    }
    let routes: Vec<u16> = (0..opts.nats_cluster).map(|_| free_port()).collect();
    futures::future::try_join_all((0..opts.nats_cluster).map(|index| {
        let seat = ClusterSeat {
            index,
            routes: &routes,
        };
        BenchNats::start(opts.max_payload, opts.nats_sync_always, Some(seat))
    }))
    .await
}

impl BenchStack {
    /// Starts the servers and the five services from `opts.bin_dir`.
    pub async fn start(opts: &StackOptions) -> anyhow::Result<Self> {
        for s in SERVICES {
            let bin = opts.bin_dir.join(s);
            if !bin.is_file() {
                bail!(
                    "{} not found: run `cargo build --release --workspace --bins` (or pass --bin-dir)",
                    bin.display()
                );
            }
        }
        let (mut nats_servers, mongo) = tokio::try_join!(
            start_nats(opts),
            MongoServer::start_with(MongoOptions {
                sync_on_commit: opts.sync_on_commit,
            })
        )?;
        let nats = nats_servers.remove(0);
        let nats_peers = nats_servers;
        let db = unique_db_name("bench");
        let store = Store::connect(&mongo.uri(), &db, "exo-bench").await?;
        let api_port = free_port();
        let mut proxies = BTreeMap::new();
        if opts.mongo_proxy {
            let port = mongo
                .port()
                .context("--mongo-proxy needs a local MongoDB-wire server")?;
            for s in SERVICES {
                proxies.insert(s.to_string(), MongoProxy::start(port).await?);
            }
        }
        let mut services = Vec::new();
        for name in SERVICES {
            let mongo_uri = match proxies.get(name) {
                Some(p) => format!("mongodb://127.0.0.1:{}/?directConnection=true", p.port),
                None => mongo.uri(),
            };
            let env = service_env(opts, name, &nats.url(), &mongo_uri, &db, api_port);
            let n = opts.replicas.get(name).copied().unwrap_or(1).max(1);
            for i in 0..n {
                let mut env = env.clone();
                if i > 0 {
                    env.retain(|(k, _)| k != "EXO_ADMIN__ADDR");
                    env.push((
                        "EXO_ADMIN__ADDR".to_string(),
                        format!("127.0.0.1:{}", free_port()),
                    ));
                }
                if opts.share_partitions && name == "exo-completion" {
                    env.push(("EXO_PARTITIONS".to_string(), format!("{i}/{n}")));
                }
                let p = ServiceProcess::spawn_program(name, opts.bin_dir.join(name), &env)
                    .await
                    .with_context(|| format!("start {name} #{i}"))?;
                services.push(p);
            }
        }
        let all_nats: Vec<&BenchNats> = std::iter::once(&nats).chain(&nats_peers).collect();
        let procs = watched(&services, &all_nats, &mongo);
        let api_url = format!("http://127.0.0.1:{api_port}");
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Self {
            nats,
            nats_peers,
            mongo,
            db,
            services,
            api: ApiClient::with_http(http.clone(), &api_url, API_KEY),
            api_url,
            store,
            http,
            proxies,
            watch: Watch::new(procs),
        })
    }

    /// A Rust-SDK runtime builder for this stack, registering with its API.
    pub fn runtime(&self, name: &str) -> exo_runtime::Builder {
        exo_runtime::Runtime::builder(NS, name)
            .nats_url(self.nats.url())
            .register_with(&self.api_url, API_KEY)
    }

    /// Waits until `n` nodes are registered in the bench namespace.
    pub async fn wait_registered(&self, n: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self
                .store
                .registered_nodes()
                .count_documents(doc! {"namespace": NS})
                .await?;
            if got >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {got} of {n} nodes registered after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Upserts a graph and checks it is VALID.
    pub async fn upsert_graph(&self, name: &str, body: &Value) -> anyhow::Result<()> {
        self.api.upsert_valid_graph(NS, name, body).await
    }

    /// Triggers a run of `graph` through the API; returns its run id.
    pub async fn trigger(&self, graph: &str) -> anyhow::Result<String> {
        self.api.trigger(NS, graph, &serde_json::json!({})).await
    }

    /// Waits until the run is SUCCESS or FAILED, polling every `every`.
    pub async fn wait_run(
        &self,
        run_id: &str,
        timeout: Duration,
        every: Duration,
    ) -> anyhow::Result<RunDoc> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(run) = self.store.run(run_id).await?
                && matches!(run.status.as_deref(), Some("SUCCESS") | Some("FAILED"))
            {
                return Ok(run);
            }
            if Instant::now() > deadline {
                let run = self.store.run(run_id).await?;
                bail!("run {run_id} did not finish within {timeout:?}: {run:?}");
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Messages per named NATS connection (services and runtimes).
    pub async fn connz(&self) -> BTreeMap<String, ConnCounts> {
        let url = format!("{}/connz?limit=1024", self.nats.monitor_url());
        let mut out: BTreeMap<String, ConnCounts> = BTreeMap::new();
        let Ok(r) = self.http.get(url).send().await else {
            return out;
        };
        let Ok(v) = r.json::<Value>().await else {
            return out;
        };
        for c in v["connections"].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or("?").to_string();
            let e = out.entry(name).or_default();
            e.in_msgs += c["in_msgs"].as_u64().unwrap_or(0);
            e.out_msgs += c["out_msgs"].as_u64().unwrap_or(0);
        }
        out
    }

    /// Log files of the services and servers (kept with `--keep-servers`).
    pub fn log_paths(&self) -> Vec<(String, PathBuf)> {
        let mut v: Vec<(String, PathBuf)> = self
            .services
            .iter()
            .map(|s| (s.name().to_string(), s.log_path().to_path_buf()))
            .collect();
        v.push(("nats-server".into(), self.nats.log_path.clone()));
        for (i, peer) in self.nats_peers.iter().enumerate() {
            v.push((format!("nats-server#{}", i + 1), peer.log_path.clone()));
        }
        if let Some(d) = self.mongo.storage_dir() {
            v.push((
                "secantusd-rs".into(),
                d.parent().unwrap_or(Path::new("/")).join("secantusd.log"),
            ));
        }
        v
    }
}

/// Differences of NATS message counters between two `/connz` readings.
pub fn connz_delta(
    before: &BTreeMap<String, ConnCounts>,
    after: &BTreeMap<String, ConnCounts>,
) -> BTreeMap<String, ConnCounts> {
    after
        .iter()
        .map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or_default();
            (
                k.clone(),
                ConnCounts {
                    in_msgs: a.in_msgs.saturating_sub(b.in_msgs),
                    out_msgs: a.out_msgs.saturating_sub(b.out_msgs),
                },
            )
        })
        .collect()
}
