//! Nodes used by the end-to-end tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use exo_runtime::{Context, Node, NodeError, Output};
use serde::{Deserialize, Serialize};

/// Inputs with one `text` field.
#[derive(Debug, Deserialize)]
pub struct TextIn {
    /// Text.
    pub text: String,
}

/// Outputs with one `text` field.
#[derive(Debug, Serialize)]
pub struct TextOut {
    /// Text.
    pub text: String,
}

/// Appends `+<suffix>` to its input.
pub struct Append {
    /// Registered name.
    pub name: &'static str,
    /// Suffix.
    pub suffix: &'static str,
    /// Executions seen by this instance.
    pub calls: Arc<AtomicUsize>,
}

impl Append {
    /// `name` appending `+<suffix>`, with its own execution counter.
    pub fn new(name: &'static str, suffix: &'static str) -> Self {
        Self {
            name,
            suffix,
            calls: counter(),
        }
    }
}

impl Node for Append {
    type Inputs = TextIn;
    type Outputs = TextOut;
    fn name(&self) -> &str {
        self.name
    }
    fn input_fields(&self) -> Vec<&str> {
        vec!["text"]
    }
    fn output_fields(&self) -> Vec<&str> {
        vec!["text"]
    }
    async fn execute(&self, i: TextIn, ctx: &Context) -> Result<Output<TextOut>, NodeError> {
        record_execution(ctx);
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Output::One(TextOut {
            text: format!("{}+{}", i.text, self.suffix),
        }))
    }
}

/// Inputs of [`FanOut`].
#[derive(Debug, Deserialize)]
pub struct FanIn {
    /// How many outputs to produce.
    pub count: String,
}

/// Produces `count` outputs `text = item-<i>`.
pub struct FanOut;

impl Node for FanOut {
    type Inputs = FanIn;
    type Outputs = TextOut;
    fn name(&self) -> &str {
        "FanOut"
    }
    fn input_fields(&self) -> Vec<&str> {
        vec!["count"]
    }
    fn output_fields(&self) -> Vec<&str> {
        vec!["text"]
    }
    async fn execute(&self, i: FanIn, ctx: &Context) -> Result<Output<TextOut>, NodeError> {
        record_execution(ctx);
        let n: usize = i
            .count
            .parse()
            .map_err(|_| NodeError::new("count is not a number"))?;
        Ok(Output::Many(
            (0..n)
                .map(|k| TextOut {
                    text: format!("item-{k}"),
                })
                .collect(),
        ))
    }
}

/// Fails when the text ends with a digit in `fail_digits`, prunes when it
/// ends with a digit in `prune_digits`, otherwise echoes.
pub struct Picky {
    /// Digits that fail.
    pub fail_digits: &'static str,
    /// Digits that prune.
    pub prune_digits: &'static str,
    /// Optional delay per execution.
    pub delay: Duration,
    /// Executions seen by this instance.
    pub calls: Arc<AtomicUsize>,
}

impl Node for Picky {
    type Inputs = TextIn;
    type Outputs = TextOut;
    fn name(&self) -> &str {
        "Picky"
    }
    fn input_fields(&self) -> Vec<&str> {
        vec!["text"]
    }
    fn output_fields(&self) -> Vec<&str> {
        vec!["text"]
    }
    async fn execute(&self, i: TextIn, ctx: &Context) -> Result<Output<TextOut>, NodeError> {
        record_execution(ctx);
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let last = i.text.chars().last().unwrap_or(' ');
        if self.fail_digits.contains(last) {
            return Err(NodeError::new(format!("refusing {}", i.text)));
        }
        if self.prune_digits.contains(last) {
            let mut data = serde_json::Map::new();
            data.insert("why".into(), serde_json::Value::String(i.text.clone()));
            return Ok(Output::Prune(data));
        }
        Ok(Output::One(TextOut { text: i.text }))
    }
}

/// Inputs of [`Join`].
#[derive(Debug, Deserialize)]
pub struct JoinIn {
    /// First part.
    pub a: String,
    /// Second part.
    pub b: String,
}

/// Outputs `a|b`.
pub struct Join {
    /// Registered name.
    pub name: &'static str,
}

impl Node for Join {
    type Inputs = JoinIn;
    type Outputs = TextOut;
    fn name(&self) -> &str {
        self.name
    }
    fn input_fields(&self) -> Vec<&str> {
        vec!["a", "b"]
    }
    fn output_fields(&self) -> Vec<&str> {
        vec!["text"]
    }
    async fn execute(&self, i: JoinIn, ctx: &Context) -> Result<Output<TextOut>, NodeError> {
        record_execution(ctx);
        Ok(Output::One(TextOut {
            text: format!("{}|{}", i.a, i.b),
        }))
    }
}

/// Asks to run again after `delay` on its first dispatch attempt
/// (Exosphere's `ReQueueAfterSignal`), then echoes its text.
pub struct Requeuer {
    /// Re-queue delay.
    pub delay: Duration,
}

impl Node for Requeuer {
    type Inputs = TextIn;
    type Outputs = TextOut;
    fn name(&self) -> &str {
        "Requeuer"
    }
    fn input_fields(&self) -> Vec<&str> {
        vec!["text"]
    }
    fn output_fields(&self) -> Vec<&str> {
        vec!["text"]
    }
    async fn execute(&self, i: TextIn, ctx: &Context) -> Result<Output<TextOut>, NodeError> {
        record_execution(ctx);
        if ctx.attempt <= 1 {
            return Ok(Output::RequeueAfter(self.delay));
        }
        Ok(Output::One(TextOut { text: i.text }))
    }
}

/// A counter handle.
pub fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

/// Appends `<run> <state> <attempt>` to the file named by
/// `EXO_TEST_EXEC_LOG`, if set: the execution log the invariant checker
/// reads to prove that user code ran once per state attempt.
pub fn record_execution(ctx: &Context) {
    use std::io::Write as _;
    static LOG: std::sync::LazyLock<Option<std::sync::Mutex<std::fs::File>>> =
        std::sync::LazyLock::new(|| {
            let path = std::env::var("EXO_TEST_EXEC_LOG").ok()?;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
                .map(std::sync::Mutex::new)
        });
    if let Some(file) = LOG.as_ref()
        && let Ok(mut f) = file.lock()
    {
        let _ = writeln!(f, "{} {} {}", ctx.run_id, ctx.state_id, ctx.attempt);
    }
}

/// The executions of `run_id` in an execution log (see [`record_execution`]).
pub fn executions_of(log: &std::path::Path, run_id: &str) -> Vec<(String, i64)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (run, state, attempt) = (parts.next()?, parts.next()?, parts.next()?);
            if run != run_id {
                return None;
            }
            Some((state.to_string(), attempt.parse().ok()?))
        })
        .collect()
}

/// A node of the Rust SDK that appends its graph's `token` secret.
pub struct Reveal;

impl exo_runtime::Node for Reveal {
    type Inputs = TextIn;
    type Outputs = TextOut;
    fn name(&self) -> &str {
        "Reveal"
    }
    fn input_fields(&self) -> Vec<&str> {
        vec!["text"]
    }
    fn output_fields(&self) -> Vec<&str> {
        vec!["text"]
    }
    async fn execute(
        &self,
        i: Self::Inputs,
        ctx: &exo_runtime::Context,
    ) -> Result<exo_runtime::Output<Self::Outputs>, exo_runtime::NodeError> {
        let secrets = ctx.secrets().await?;
        let token = secrets.get("token").cloned().unwrap_or_default();
        Ok(exo_runtime::Output::One(TextOut {
            text: format!("{}:{token}", i.text),
        }))
    }
}
