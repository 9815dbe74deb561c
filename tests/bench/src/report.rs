//! The human table and the JSON summary.

use serde_json::{Map, Value, json};

/// One line of the human table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Workload.
    pub workload: String,
    /// What was measured.
    pub metric: String,
    /// The figure.
    pub value: String,
    /// The target, if any.
    pub target: String,
    /// Whether the target is met.
    pub met: Option<bool>,
}

/// Everything the bench reports.
#[derive(Debug, Default)]
pub struct Report {
    /// Table rows, in order.
    pub rows: Vec<Row>,
    /// Per-workload JSON sections.
    pub workloads: Map<String, Value>,
    /// Target checks.
    pub targets: Vec<Value>,
    /// Workloads that failed, with the error.
    pub errors: Map<String, Value>,
}

impl Report {
    /// Adds a row without a target.
    pub fn fig(&mut self, workload: &str, metric: &str, value: String) {
        self.rows.push(Row {
            workload: workload.into(),
            metric: metric.into(),
            value,
            target: String::new(),
            met: None,
        });
    }

    /// Adds a row checked against a target (`measured` compared by `met`).
    pub fn check(
        &mut self,
        workload: &str,
        metric: &str,
        value: String,
        target: &str,
        measured: f64,
        met: bool,
    ) {
        self.rows.push(Row {
            workload: workload.into(),
            metric: metric.into(),
            value,
            target: target.into(),
            met: Some(met),
        });
        self.targets.push(json!({
            "workload": workload, "metric": metric, "target": target,
            "measured": measured, "met": met,
        }));
    }

    /// [`Report::check`] where the target applies (`applies`), else
    /// [`Report::fig`]; `target` is the target's text and `met` tells
    /// whether `measured` meets it.
    pub fn check_where(
        &mut self,
        applies: bool,
        (workload, metric): (&str, &str),
        value: String,
        target: &str,
        measured: f64,
        met: impl FnOnce(f64) -> bool,
    ) {
        if applies {
            self.check(workload, metric, value, target, measured, met(measured));
        } else {
            self.fig(workload, metric, value);
        }
    }

    /// Prints the table.
    pub fn print_table(&self) {
        let width = |cell: fn(&Row) -> &str, header: &str| {
            self.rows
                .iter()
                .map(|r| cell(r).len())
                .fold(header.len(), usize::max)
        };
        let w0 = width(|r| &r.workload, "workload");
        let w1 = width(|r| &r.metric, "metric");
        let w2 = width(|r| &r.value, "value");
        println!(
            "{:<w0$}  {:<w1$}  {:<w2$}  target",
            "workload", "metric", "value"
        );
        println!("{}", "-".repeat(w0 + w1 + w2 + 20));
        for r in &self.rows {
            let verdict = match r.met {
                Some(true) => format!("{}  MET", r.target),
                Some(false) => format!("{}  MISSED", r.target),
                None => String::new(),
            };
            println!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {verdict}",
                r.workload, r.metric, r.value
            );
        }
        for (w, e) in &self.errors {
            println!("{w:<w0$}  FAILED: {}", e.as_str().unwrap_or_default());
        }
    }
}

/// Facts about the machine.
pub fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem_mb = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0);
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "mem_total_mb": mem_mb,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "load_avg_at_start": read("/proc/loadavg").trim(),
    })
}

/// First line of `<bin> --version`.
pub fn version_of(bin: &std::path::Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            let t = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            t.lines().next().unwrap_or_default().trim().to_string()
        })
        .unwrap_or_default()
}

/// The command line, shell-quoted.
pub fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=,:".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
