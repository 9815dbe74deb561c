//! A real `nats-server` with JetStream, one per test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::paths::nats_server_bin;
use crate::process::{self, LogFile};

/// How long [`NatsServer::start`] and [`NatsServer::restart`] wait for `/healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A `nats-server` child process with JetStream enabled, on 127.0.0.1.
///
/// The first start lets the server pick free client and monitoring ports (`-p -1 -m -1`) and
/// reads them from its log; later starts reuse the same ports and the same store directory, so
/// streams, consumers and KV buckets survive [`restart`](Self::restart). The store lives in a
/// temporary directory removed on drop. The process is killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    log: LogFile,
    port: u16,
    monitor_port: u16,
    child: Option<Child>,
    starts: u32,
    /// A configuration file (`-c`), e.g. with accounts and permissions.
    config: Option<PathBuf>,
    // Last: removed after the child is killed.
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server on random loopback ports with an empty temporary store, and waits until
    /// `GET /healthz?js-enabled-only=true` answers 200 (20 s at most).
    ///
    /// # Errors
    ///
    /// When no suitable binary is found (see [`crate::nats_server_bin`]), the process cannot be
    /// spawned, or it is not ready in time; the error quotes the end of the server log.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_config(None).await
    }

    /// Starts a server as [`start`](Self::start) does, with `config` (nats-server
    /// configuration text, e.g. an `authorization` block with users and subject
    /// permissions) written to a file and given with `-c`. The command-line
    /// address, ports and store still apply.
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start), or when the file cannot be written.
    pub async fn start_with(config: &str) -> anyhow::Result<Self> {
        Self::start_with_config(Some(config)).await
    }

    async fn start_with_config(config: Option<&str>) -> anyhow::Result<Self> {
        let bin = nats_server_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("exo-nats-")
            .tempdir()
            .context("creating the nats-server temp dir")?;
        let log = LogFile::new(dir.path().join("nats-server.log"));
        let config = match config {
            Some(text) => {
                let path = dir.path().join("nats-server.conf");
                std::fs::write(&path, text).context("writing the nats-server config")?;
                Some(path)
            }
            None => None,
        };
        let mut server = Self {
            bin,
            log,
            port: 0,
            monitor_port: 0,
            child: None,
            starts: 0,
            config,
            dir,
        };
        server.launch().await?;
        Ok(server)
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring base URL, `http://127.0.0.1:MONITOR_PORT` (`/healthz`, `/jsz`, …).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The JetStream store directory (kept across restarts).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The server log file (all runs, appended).
    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// Everything the server logged so far, over all its runs.
    pub fn log_contents(&self) -> String {
        self.log.contents()
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL and starts it again on the same ports with the same store,
    /// then waits until it is ready.
    ///
    /// # Errors
    ///
    /// As for [`start`](Self::start).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.start_again().await
    }

    /// Kills the server with SIGKILL (no clean shutdown) and waits for the process to go.
    /// Does nothing when it is not running. Use [`start_again`](Self::start_again) to bring it
    /// back.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill9(&mut child);
        }
    }

    /// Starts the server again after [`kill9`](Self::kill9), on the same ports with the same
    /// store, and waits until it is ready.
    ///
    /// # Errors
    ///
    /// When the server is still running, or as for [`start`](Self::start).
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if process::exit_status(child).is_none() {
                bail!(
                    "nats-server (pid {}) is still running; call kill9() first",
                    child.id()
                );
            }
            self.child = None;
        }
        self.launch().await
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let offset = self.log.len();
        let (port, monitor) = if self.starts == 0 {
            ("-1".to_string(), "-1".to_string())
        } else {
            (self.port.to_string(), self.monitor_port.to_string())
        };
        let store = self.store_dir();
        let mut cmd = Command::new(&self.bin);
        if let Some(config) = &self.config {
            cmd.arg("-c").arg(config);
        }
        cmd.args(["-a", "127.0.0.1", "-p", &port, "-m", &monitor, "-js", "-sd"])
            .arg(&store);
        self.starts += 1;
        let banner = format!("start #{} of {}", self.starts, self.bin.display());
        self.child = Some(process::spawn_logged(cmd, &self.log, &banner)?);

        let client = process::probe_client()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.port == 0 || self.monitor_port == 0 {
                let text = self.log.read_from(offset);
                if let (Some(p), Some(m)) = (
                    process::port_after(&text, "Listening for client connections on "),
                    process::port_after(&text, "Starting http monitor on "),
                ) {
                    self.port = p;
                    self.monitor_port = m;
                }
            }
            if self.monitor_port != 0 {
                let url = format!("{}/healthz?js-enabled-only=true", self.monitor_url());
                if let Ok(resp) = client.get(&url).send().await
                    && resp.status().is_success()
                {
                    tracing::debug!(url = %self.url(), "nats-server ready.");
                    return Ok(());
                }
            }
            let exited = self.child.as_mut().and_then(process::exit_status);
            if exited.is_some() || Instant::now() >= deadline {
                let state = process::describe_exit(self.child.as_mut());
                let why = if exited.is_some() {
                    "exited during startup".to_string()
                } else {
                    format!("was not healthy within {READY_TIMEOUT:?}")
                };
                bail!(
                    "nats-server {} {why} (healthz {}/healthz?js-enabled-only=true; {state}); \
                     last lines of {}:\n{}",
                    self.bin.display(),
                    self.monitor_url(),
                    self.log.path().display(),
                    self.log.tail_from(offset)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill9();
    }
}
