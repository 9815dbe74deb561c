//! Child-process plumbing shared by the server and service handles.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How many log lines an error message quotes.
pub(crate) const TAIL_LINES: usize = 40;

/// A log file that a child's stdout and stderr are appended to, across restarts.
#[derive(Debug)]
pub(crate) struct LogFile {
    path: PathBuf,
}

impl LogFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Current length in bytes (0 when missing), to read only what a new run writes.
    pub(crate) fn len(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Everything written from byte `offset` on, lossily decoded.
    pub(crate) fn read_from(&self, offset: u64) -> String {
        let mut buf = Vec::new();
        if let Ok(mut f) = File::open(&self.path)
            && f.seek(SeekFrom::Start(offset)).is_ok()
        {
            let _ = f.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The whole file.
    pub(crate) fn contents(&self) -> String {
        self.read_from(0)
    }

    /// What a startup error should quote from the output written since `offset`: all of it
    /// when short; else the lines that look like errors (so a cause printed before a long
    /// backtrace is not lost) followed by the last `TAIL_LINES` lines.
    pub(crate) fn tail_from(&self, offset: u64) -> String {
        excerpt(&self.read_from(offset))
    }

    /// Opens the file for appending, writes a marker line, and returns two handles for a child's
    /// stdout and stderr.
    fn open_for_child(&self, banner: &str) -> anyhow::Result<(File, File)> {
        use std::io::Write;
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening log file {}", self.path.display()))?;
        writeln!(out, "--- exo-test-support: {banner} ---")?;
        let err = out.try_clone()?;
        Ok((out, err))
    }
}

/// Most error-looking lines quoted by [`excerpt`].
const MAX_ERROR_LINES: usize = 20;

/// See [`LogFile::tail_from`].
fn excerpt(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= TAIL_LINES + MAX_ERROR_LINES {
        return lines.join("\n");
    }
    let tail_start = lines.len() - TAIL_LINES;
    let errors: Vec<&str> = lines[..tail_start]
        .iter()
        .filter(|l| {
            ["ERROR", "Error:", "error:", "Caused by", "panicked", "FTL"]
                .iter()
                .any(|m| l.contains(m))
        })
        .take(MAX_ERROR_LINES)
        .copied()
        .collect();
    let mut out = String::new();
    if !errors.is_empty() {
        out.push_str("[error lines]\n");
        out.push_str(&errors.join("\n"));
        out.push('\n');
    }
    out.push_str(&format!("[last {TAIL_LINES} of {} lines]\n", lines.len()));
    out.push_str(&lines[tail_start..].join("\n"));
    out
}

/// Spawns `cmd` with stdin closed and stdout + stderr appended to `log`.
pub(crate) fn spawn_logged(mut cmd: Command, log: &LogFile, banner: &str) -> anyhow::Result<Child> {
    let (out, err) = log.open_for_child(banner)?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    cmd.spawn()
        .with_context(|| format!("spawning {:?}", cmd.get_program()))
}

/// SIGKILL and reap. Never fails: a child that is already gone is fine.
pub(crate) fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM, wait up to `grace` (blocking), then SIGKILL. Returns the exit status if reaped.
pub(crate) fn terminate_blocking(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    if send_sigterm(child.id()) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
    }
    kill9(child);
    child.try_wait().ok().flatten()
}

/// Sends SIGTERM through `kill(1)` (this crate forbids `unsafe`, so no `libc::kill`).
pub(crate) fn send_sigterm(pid: u32) -> bool {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `Some(status)` when the child has exited.
pub(crate) fn exit_status(child: &mut Child) -> Option<ExitStatus> {
    child.try_wait().ok().flatten()
}

/// A one-line description of the child's state for error messages.
pub(crate) fn describe_exit(child: Option<&mut Child>) -> String {
    match child.map(exit_status) {
        Some(Some(status)) => format!("the process exited ({status})"),
        Some(None) => "the process is still running".to_string(),
        None => "the process is not running".to_string(),
    }
}

/// An HTTP client for readiness probes (fresh per wait loop: pooled connections are tied to the
/// runtime that made them, and every `#[tokio::test]` has its own runtime).
pub(crate) fn probe_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .context("building the readiness HTTP client")
}

/// `host:port` that appears right after `marker` in `text` (first match).
pub(crate) fn port_after(text: &str, marker: &str) -> Option<u16> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let addr = rest.split_whitespace().next()?;
    let port = addr.rsplit(':').next()?;
    port.trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_ports_in_log_lines() {
        let nats = "[1] 2026/11/25 [INF] Listening for client connections on 127.0.0.1:34579\n";
        assert_eq!(
            port_after(nats, "Listening for client connections on "),
            Some(34579)
        );
        let mongo = "secantusd-rs listening on 127.0.0.1:41687\n";
        assert_eq!(port_after(mongo, "listening on "), Some(41687));
        assert_eq!(port_after("nothing", "listening on "), None);
    }

    #[test]
    fn excerpt_keeps_the_cause_before_a_long_backtrace() {
        assert_eq!(excerpt("a\nb"), "a\nb");
        let mut text = String::from("starting\nError: cannot connect to NATS\n");
        for i in 0..200 {
            text.push_str(&format!("  {i}: frame\n"));
        }
        let out = excerpt(&text);
        assert!(out.contains("Error: cannot connect to NATS"), "{out}");
        assert!(out.contains("199: frame"), "{out}");
        assert!(!out.contains("  5: frame"), "{out}");
    }
}
