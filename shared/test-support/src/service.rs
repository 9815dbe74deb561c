//! One of the workspace's own service binaries, run as a child process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::paths::service_bin;
use crate::process::{self, LogFile};

/// How long [`ServiceProcess::spawn`] and [`ServiceProcess::restart`] wait for `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a dropped process gets between SIGTERM and SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(5);
/// The variable that must name the admin listener.
const ADMIN_ADDR: &str = "EXO_ADMIN__ADDR";
/// Inherited variables that would leak the developer's own setup into a test; removed from the
/// child's environment unless the caller passes them.
const SCRUBBED_ALIASES: &[&str] = &[
    "MONGO_URI",
    "MONGO_DATABASE_NAME",
    "NATS_URL",
    "STATE_MANAGER_SECRET",
    "SECRETS_ENCRYPTION_KEY",
    "EXO_CONFIG",
];

/// A running service binary (`exo-api`, `exo-trigger`, `exo-scheduler`, `exo-completion`,
/// `exo-retry`) from `<target>/debug/`, with its output captured in a log file.
///
/// The child gets the test's environment minus every inherited `EXO_*` variable (except
/// `EXO_LOG_FORMAT`) and the Exosphere aliases (`MONGO_URI`, `NATS_URL`,
/// `STATE_MANAGER_SECRET`, …), plus the `env` given to [`spawn`](Self::spawn), plus
/// `RUST_LOG=info` when `RUST_LOG` is set neither there nor in the test's environment, and
/// `RUST_LIB_BACKTRACE=0` likewise (panics still print backtraces under `RUST_BACKTRACE`).
/// On drop it gets SIGTERM, then SIGKILL after 5 s.
#[derive(Debug)]
pub struct ServiceProcess {
    name: String,
    bin: PathBuf,
    env: Vec<(String, String)>,
    admin_addr: String,
    log: LogFile,
    child: Option<Child>,
    starts: u32,
    // Last: removed after the child is stopped.
    _dir: TempDir,
}

impl ServiceProcess {
    /// Spawns the built binary `name` with `env` and waits until
    /// `GET http://<EXO_ADMIN__ADDR>/readyz` answers 200 (30 s at most).
    ///
    /// `env` must contain `EXO_ADMIN__ADDR=127.0.0.1:<port>` (use [`crate::free_port`]).
    ///
    /// # Errors
    ///
    /// When `EXO_ADMIN__ADDR` is missing, the binary is not built (see [`crate::service_bin`]),
    /// it cannot be spawned, or it is not ready in time; the error says whether the process
    /// exited and quotes the end of its log.
    pub async fn spawn(name: &str, env: &[(String, String)]) -> anyhow::Result<Self> {
        // Check the env first: a missing admin address is a bug in the test, not the build.
        admin_addr(name, env)?;
        let bin = service_bin(name)?;
        Self::spawn_program(name, bin, env).await
    }

    /// Like [`spawn`](Self::spawn), but runs the program at `bin` instead of the built
    /// workspace binary `name` (`name` then only labels logs and errors).
    ///
    /// # Errors
    ///
    /// As for [`spawn`](Self::spawn).
    pub async fn spawn_program(
        name: &str,
        bin: PathBuf,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let admin_addr = admin_addr(name, env)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .context("creating the service temp dir")?;
        let log = LogFile::new(dir.path().join(format!("{name}.log")));
        let mut service = Self {
            name: name.to_string(),
            bin,
            env: env.to_vec(),
            admin_addr,
            log,
            child: None,
            starts: 0,
            _dir: dir,
        };
        service.launch().await?;
        Ok(service)
    }

    /// The binary name given to [`spawn`](Self::spawn).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The admin listener, `host:port` from `EXO_ADMIN__ADDR`.
    pub fn admin_addr(&self) -> &str {
        &self.admin_addr
    }

    /// The log file (stdout and stderr of every run, appended).
    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// Everything the process wrote so far, over all its runs.
    pub fn log_contents(&self) -> String {
        self.log.contents()
    }

    /// The process id while it runs (`None` after [`kill9`](Self::kill9) or once it exited).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `true` while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => process::exit_status(child).is_none(),
            None => false,
        }
    }

    /// Kills the process with SIGKILL (no graceful shutdown) and waits for it to go.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill9(&mut child);
        }
    }

    /// Sends SIGTERM and waits up to `grace` for a graceful exit, then SIGKILLs. Returns the
    /// exit status (`None` if it was not running or could not be reaped).
    pub async fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Some(status) = process::exit_status(&mut child) {
            return Some(status);
        }
        if process::send_sigterm(child.id()) {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Some(status) = process::exit_status(&mut child) {
                    return Some(status);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        process::kill9(&mut child);
        process::exit_status(&mut child)
    }

    /// Spawns the binary again with the same environment and waits until it is ready. A process
    /// that still runs is killed with SIGKILL first.
    ///
    /// # Errors
    ///
    /// As for [`spawn`](Self::spawn).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.launch().await
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let offset = self.log.len();
        let mut cmd = Command::new(&self.bin);
        for (key, _) in std::env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            let scrub = (key.starts_with("EXO_") && key != "EXO_LOG_FORMAT")
                || SCRUBBED_ALIASES.contains(&key);
            if scrub {
                cmd.env_remove(key);
            }
        }
        if std::env::var_os("RUST_LOG").is_none() && !self.env.iter().any(|(k, _)| k == "RUST_LOG")
        {
            cmd.env("RUST_LOG", "info");
        }
        // RUST_BACKTRACE=1 (common in CI) makes anyhow append a long backtrace to every error a
        // service returns from main; keep panic backtraces but not those.
        if std::env::var_os("RUST_LIB_BACKTRACE").is_none()
            && !self.env.iter().any(|(k, _)| k == "RUST_LIB_BACKTRACE")
        {
            cmd.env("RUST_LIB_BACKTRACE", "0");
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.starts += 1;
        let banner = format!("start #{} of {}", self.starts, self.bin.display());
        self.child = Some(process::spawn_logged(cmd, &self.log, &banner)?);

        let client = process::probe_client()?;
        let url = format!("http://{}/readyz", self.admin_addr);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let last = match client.get(&url).send().await {
                Ok(resp) if resp.status() == reqwest::StatusCode::OK => {
                    tracing::debug!(service = %self.name, "Service ready.");
                    return Ok(());
                }
                Ok(resp) => format!("last answer {}", resp.status()),
                Err(e) => format!("last error: {e}"),
            };
            let exited = self.child.as_mut().and_then(process::exit_status);
            if exited.is_some() || Instant::now() >= deadline {
                let state = process::describe_exit(self.child.as_mut());
                let why = if exited.is_some() {
                    "exited before it was ready".to_string()
                } else {
                    format!("was not ready within {READY_TIMEOUT:?}")
                };
                bail!(
                    "{} {why}: GET {url} ({last}); {state}; last lines of {}:\n{}",
                    self.name,
                    self.log.path().display(),
                    self.log.tail_from(offset)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The value of `EXO_ADMIN__ADDR` in `env`.
fn admin_addr(name: &str, env: &[(String, String)]) -> anyhow::Result<String> {
    match env.iter().find(|(k, _)| k == ADMIN_ADDR) {
        Some((_, v)) if !v.is_empty() => Ok(v.clone()),
        _ => bail!(
            "ServiceProcess::spawn({name}): env must contain {ADMIN_ADDR}=127.0.0.1:<port> \
             (the /readyz listener); use exo_test_support::free_port()"
        ),
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::terminate_blocking(&mut child, DROP_GRACE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in service: answers 200 on /readyz at EXO_ADMIN__ADDR.
    const FAKE: &str = r#"#!/bin/sh
echo "fake service starting, RUST_LOG=$RUST_LOG"
exec python3 -c '
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
host, port = os.environ["EXO_ADMIN__ADDR"].rsplit(":", 1)
http.server.HTTPServer((host, int(port)), H).serve_forever()
'
"#;

    fn script(dir: &TempDir, name: &str, body: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn admin_env() -> Vec<(String, String)> {
        vec![(
            ADMIN_ADDR.to_string(),
            format!("127.0.0.1:{}", crate::free_port()),
        )]
    }

    #[tokio::test]
    async fn spawn_waits_for_readyz_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(&dir, "fake-svc", FAKE);
        let mut svc = ServiceProcess::spawn_program("fake-svc", bin, &admin_env())
            .await
            .unwrap();
        let pid = svc.pid().unwrap();
        assert!(svc.is_running());
        assert!(
            svc.log_contents().contains("fake service starting"),
            "{}",
            svc.log_contents()
        );

        svc.kill9();
        assert_eq!(svc.pid(), None);
        assert!(!svc.is_running());

        svc.restart().await.unwrap();
        assert_ne!(svc.pid().unwrap(), pid);
        assert_eq!(
            svc.log_contents().matches("fake service starting").count(),
            2
        );

        let status = svc.terminate(Duration::from_secs(5)).await.unwrap();
        assert!(!status.success() || status.code() == Some(0));
        assert_eq!(svc.pid(), None);
    }

    #[tokio::test]
    async fn rust_log_defaults_to_info() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(&dir, "fake-svc", FAKE);
        let svc = ServiceProcess::spawn_program("fake-svc", bin, &admin_env())
            .await
            .unwrap();
        let expected = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
        let line = format!("RUST_LOG={expected}\n");
        assert!(svc.log_contents().contains(&line), "{}", svc.log_contents());
    }

    #[tokio::test]
    async fn rust_log_from_env_wins() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(&dir, "fake-svc", FAKE);
        let mut env = admin_env();
        env.push(("RUST_LOG".to_string(), "debug,exo=trace".to_string()));
        let svc = ServiceProcess::spawn_program("fake-svc", bin, &env)
            .await
            .unwrap();
        assert!(
            svc.log_contents().contains("RUST_LOG=debug,exo=trace"),
            "{}",
            svc.log_contents()
        );
    }

    #[tokio::test]
    async fn early_exit_is_reported_with_the_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(
            &dir,
            "broken-svc",
            "#!/bin/sh\necho 'config error: no EXO_NATS__URL'\nexit 3\n",
        );
        let err = ServiceProcess::spawn_program("broken-svc", bin, &admin_env())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("exited before it was ready"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("config error: no EXO_NATS__URL"), "{err}");
    }

    #[tokio::test]
    async fn admin_addr_is_required() {
        let err = ServiceProcess::spawn("exo-api", &[])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("EXO_ADMIN__ADDR"), "{err}");
    }
}
