//! A real MongoDB-wire server (`secantusd-rs`), one per test, or an existing server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::paths::mongo_server_bin;
use crate::process::{self, LogFile};

/// Storage cache of the server. A result is written in one transaction with
/// its children's inputs, so a 10 MiB output makes a transaction of 20 MiB
/// or more; secantusd-rs refuses a transaction above a small fraction of its
/// cache ("Transaction is too large and will not fit in the storage engine
/// cache"): 256 MiB refuses 20 MiB, 1 GiB accepts it.
const CACHE_SIZE: &str = "1G";

/// How long [`MongoServer::start`] and [`MongoServer::restart`] wait for the server.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The log line secantusd-rs prints once it accepts connections.
const LISTENING: &str = "listening on ";
/// Environment variable naming an existing server to use instead of spawning one.
const EXTERNAL_URI_ENV: &str = "EXO_TEST_MONGO_URI";

/// Options for [`MongoServer::start_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MongoOptions {
    /// Pass `--sync-on-commit`: fsync the WiredTiger log on every commit, so an acknowledged
    /// write survives `kill -9` (writes get several times slower). Off by default.
    pub sync_on_commit: bool,
}

/// A MongoDB-wire server for tests: a `secantusd-rs` child process on 127.0.0.1 with a fresh
/// temporary storage path, killed (SIGKILL) on drop.
///
/// It advertises a one-member replica set, so transactions and change streams work; the URI
/// needs no extra options. The first start lets the server pick a free port (`--port 0`) and
/// reads it from the log; [`restart`](Self::restart) reuses the port and the storage.
///
/// If `EXO_TEST_MONGO_URI` is set, [`start`](Self::start) spawns nothing and the handle points
/// at that server (for example a real MongoDB 7 replica set); then [`restart`](Self::restart)
/// and [`start_again`](Self::start_again) return errors and [`kill9`](Self::kill9) does nothing.
/// Use a unique database per test ([`crate::unique_db_name`]) so that both modes isolate tests.
#[derive(Debug)]
pub struct MongoServer {
    uri: String,
    local: Option<LocalMongo>,
}

#[derive(Debug)]
struct LocalMongo {
    bin: PathBuf,
    opts: MongoOptions,
    log: LogFile,
    port: u16,
    child: Option<Child>,
    starts: u32,
    // Last: removed after the child is killed.
    dir: TempDir,
}

impl MongoServer {
    /// Starts a server with default options (see [`start_with`](Self::start_with)).
    ///
    /// # Errors
    ///
    /// As for [`start_with`](Self::start_with).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(MongoOptions::default()).await
    }

    /// Starts a server with `opts` on a random loopback port and a fresh storage path, and waits
    /// until it logs `listening on` and accepts a TCP connection (30 s at most). With
    /// `EXO_TEST_MONGO_URI` set, returns a handle to that server instead (and `opts` are
    /// ignored).
    ///
    /// # Errors
    ///
    /// When no binary is found (see [`crate::mongo_server_bin`]), it cannot be spawned, or it is
    /// not ready in time; the error quotes the end of the server log.
    pub async fn start_with(opts: MongoOptions) -> anyhow::Result<Self> {
        if let Some(uri) = std::env::var(EXTERNAL_URI_ENV)
            .ok()
            .filter(|u| !u.is_empty())
        {
            tracing::debug!("Using the external MongoDB server from {EXTERNAL_URI_ENV}.");
            return Ok(Self { uri, local: None });
        }
        let bin = mongo_server_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("exo-mongo-")
            .tempdir()
            .context("creating the secantusd-rs temp dir")?;
        // secantusd-rs auto-discovers ./secantusd.toml and ~/.secantus/; pin an empty config.
        std::fs::write(dir.path().join("secantusd.toml"), "")
            .context("writing the empty secantusd.toml")?;
        let log = LogFile::new(dir.path().join("secantusd.log"));
        let mut local = LocalMongo {
            bin,
            opts,
            log,
            port: 0,
            child: None,
            starts: 0,
            dir,
        };
        local.launch().await?;
        Ok(Self {
            uri: format!("mongodb://127.0.0.1:{}", local.port),
            local: Some(local),
        })
    }

    /// The connection string, `mongodb://127.0.0.1:PORT` (or `EXO_TEST_MONGO_URI`).
    pub fn uri(&self) -> String {
        self.uri.clone()
    }

    /// `true` when this handle points at `EXO_TEST_MONGO_URI` and owns no process.
    pub fn is_external(&self) -> bool {
        self.local.is_none()
    }

    /// The port of a spawned server (`None` for an external one).
    pub fn port(&self) -> Option<u16> {
        self.local.as_ref().map(|l| l.port)
    }

    /// The storage directory of a spawned server (kept across restarts).
    pub fn storage_dir(&self) -> Option<PathBuf> {
        self.local.as_ref().map(LocalMongo::storage)
    }

    /// The log file of a spawned server (all runs, appended).
    pub fn log_path(&self) -> Option<&Path> {
        self.local.as_ref().map(|l| l.log.path())
    }

    /// Everything a spawned server logged so far (empty for an external one).
    pub fn log_contents(&self) -> String {
        self.local
            .as_ref()
            .map(|l| l.log.contents())
            .unwrap_or_default()
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.local.as_ref()?.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL and starts it again on the same port with the same
    /// storage, then waits until it is ready.
    ///
    /// Without `sync_on_commit` the last acknowledged writes may be lost (as with a real crash).
    ///
    /// # Errors
    ///
    /// For an external server, or as for [`start_with`](Self::start_with).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.start_again().await
    }

    /// Kills the server with SIGKILL and waits for the process to go. Does nothing when it is
    /// not running, or (with a warning) for an external server.
    pub fn kill9(&mut self) {
        match self.local.as_mut() {
            Some(local) => {
                if let Some(mut child) = local.child.take() {
                    process::kill9(&mut child);
                }
            }
            None => tracing::warn!(
                "kill9() on an external MongoDB server ({EXTERNAL_URI_ENV}) does nothing."
            ),
        }
    }

    /// Starts the server again after [`kill9`](Self::kill9), on the same port with the same
    /// storage, and waits until it is ready.
    ///
    /// # Errors
    ///
    /// For an external server, when the server still runs, or as for
    /// [`start_with`](Self::start_with).
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let Some(local) = self.local.as_mut() else {
            bail!(
                "MongoServer points at the external server from {EXTERNAL_URI_ENV}; it cannot be restarted"
            );
        };
        if let Some(child) = local.child.as_mut() {
            if process::exit_status(child).is_none() {
                bail!(
                    "secantusd-rs (pid {}) is still running; call kill9() first",
                    child.id()
                );
            }
            local.child = None;
        }
        local.launch().await
    }
}

impl LocalMongo {
    fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let offset = self.log.len();
        let port = self.port.to_string();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(self.dir.path().join("secantusd.toml"))
            .args(["--host", "127.0.0.1", "--port", &port, "--storage-path"])
            .arg(self.storage())
            .args(["--cache-size", CACHE_SIZE, "--log-file-max", "16MB"]);
        if self.opts.sync_on_commit {
            cmd.arg("--sync-on-commit");
        }
        self.starts += 1;
        let banner = format!("start #{} of {}", self.starts, self.bin.display());
        self.child = Some(process::spawn_logged(cmd, &self.log, &banner)?);

        let deadline = Instant::now() + READY_TIMEOUT;
        let mut listening = false;
        loop {
            if !listening {
                let text = self.log.read_from(offset);
                if let Some(p) = process::port_after(&text, LISTENING) {
                    listening = true;
                    if self.port == 0 {
                        self.port = p;
                    }
                }
            }
            if listening
                && tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::net::TcpStream::connect(("127.0.0.1", self.port)),
                )
                .await
                .is_ok_and(|r| r.is_ok())
            {
                tracing::debug!(port = self.port, "secantusd-rs ready.");
                return Ok(());
            }
            let exited = self.child.as_mut().and_then(process::exit_status);
            if exited.is_some() || Instant::now() >= deadline {
                let state = process::describe_exit(self.child.as_mut());
                let why = if exited.is_some() {
                    "exited during startup".to_string()
                } else {
                    format!("was not accepting connections within {READY_TIMEOUT:?}")
                };
                bail!(
                    "secantusd-rs {} {why} (port {}, logged `listening on`: {listening}; {state}); \
                     last lines of {}:\n{}",
                    self.bin.display(),
                    self.port,
                    self.log.path().display(),
                    self.log.tail_from(offset)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for LocalMongo {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill9(&mut child);
        }
    }
}
