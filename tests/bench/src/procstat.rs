//! CPU time and memory of processes, from `/proc`.

use std::collections::BTreeMap;

use serde::Serialize;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Reading {
    /// User + system CPU time, seconds.
    pub cpu_s: f64,
    /// Peak resident set size (`VmHWM`), MiB.
    pub peak_rss_mb: f64,
    /// Current resident set size (`VmRSS`), MiB.
    pub rss_mb: f64,
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// Reads CPU time and memory of `pid`; `None` when it is gone.
pub fn read(pid: u32, ticks: f64) -> Option<Reading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Some(Reading {
        cpu_s: (utime + stime) / ticks,
        peak_rss_mb: (kb("VmHWM:") / 1024.0 * 10.0).round() / 10.0,
        rss_mb: (kb("VmRSS:") / 1024.0 * 10.0).round() / 10.0,
    })
}

/// Named processes to watch.
#[derive(Debug, Clone)]
pub struct Watch {
    procs: Vec<(String, u32)>,
    ticks: f64,
}

/// Usage of one process over an interval.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    /// CPU seconds spent in the interval.
    pub cpu_s: f64,
    /// Share of one core over the interval (1.0 = one core busy).
    pub cores: f64,
    /// Peak RSS since the process started (`VmHWM`), MiB.
    pub peak_rss_mb: f64,
}

impl Watch {
    /// Watches the given `(name, pid)` pairs.
    pub fn new(procs: Vec<(String, u32)>) -> Self {
        Self {
            procs,
            ticks: ticks_per_second(),
        }
    }

    /// Reads every process now.
    pub fn snapshot(&self) -> BTreeMap<String, Reading> {
        self.procs
            .iter()
            .filter_map(|(n, pid)| read(*pid, self.ticks).map(|r| (n.clone(), r)))
            .collect()
    }

    /// CPU used between `before` and now, over `secs` of wall time, and the peak RSS.
    pub fn usage_since(
        &self,
        before: &BTreeMap<String, Reading>,
        secs: f64,
    ) -> BTreeMap<String, Usage> {
        let now = self.snapshot();
        now.iter()
            .map(|(name, r)| {
                let cpu = r.cpu_s - before.get(name).map(|b| b.cpu_s).unwrap_or(0.0);
                let cpu = (cpu * 100.0).round() / 100.0;
                (
                    name.clone(),
                    Usage {
                        cpu_s: cpu,
                        cores: if secs > 0.0 {
                            (cpu / secs * 100.0).round() / 100.0
                        } else {
                            0.0
                        },
                        peak_rss_mb: r.peak_rss_mb,
                    },
                )
            })
            .collect()
    }
}

/// The pid of the process whose command line contains `needle` (first match).
pub fn find_pid(needle: &str) -> Option<u32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
        {
            return Some(pid);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let r = read(std::process::id(), ticks_per_second()).expect("own /proc entry");
        assert!(r.peak_rss_mb > 0.0);
        assert!(r.peak_rss_mb >= r.rss_mb);
    }
}
