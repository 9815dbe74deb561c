//! The HTTP client: one namespace of one exo (or Exosphere) API, with its
//! key; every failure mapped to an [`Exit`] code scripts can rely on.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// How the process ends, and why. The codes are part of the interface
/// (`exo --help` lists them).
#[derive(Debug)]
pub enum Exit {
    /// 1: anything else (the message says what).
    Failure(String),
    /// 1: the API refused the request itself (400, 422): its words, and
    /// its `detail` for callers that can place it (e.g. in a file).
    Rejected {
        /// What to print.
        message: String,
        /// The HTTP status.
        status: u16,
        /// The answer's `detail` (a string, or request-validation items).
        detail: Value,
    },
    /// 3: a run ended FAILED.
    RunFailed(String),
    /// 4: a run was CANCELLED.
    RunCancelled(String),
    /// 5: a graph is INVALID (or was refused as malformed).
    GraphInvalid(String),
    /// 6: what was asked for does not exist.
    NotFound(String),
    /// 7: the API refused the key (401) or its scope (403).
    Refused(String),
    /// 8: `--timeout` passed before the run ended.
    Timeout(String),
    /// 69: the API could not be reached.
    Unavailable(String),
}

impl Exit {
    /// The process exit code.
    pub fn code(&self) -> u8 {
        match self {
            Self::Failure(_) | Self::Rejected { .. } => 1,
            Self::RunFailed(_) => 3,
            Self::RunCancelled(_) => 4,
            Self::GraphInvalid(_) => 5,
            Self::NotFound(_) => 6,
            Self::Refused(_) => 7,
            Self::Timeout(_) => 8,
            Self::Unavailable(_) => 69,
        }
    }

    /// What to print on stderr.
    pub fn message(&self) -> &str {
        match self {
            Self::Failure(m)
            | Self::Rejected { message: m, .. }
            | Self::RunFailed(m)
            | Self::RunCancelled(m)
            | Self::GraphInvalid(m)
            | Self::NotFound(m)
            | Self::Refused(m)
            | Self::Timeout(m)
            | Self::Unavailable(m) => m,
        }
    }
}

impl From<anyhow::Error> for Exit {
    fn from(e: anyhow::Error) -> Self {
        Self::Failure(format!("{e:#}"))
    }
}

impl From<std::io::Error> for Exit {
    fn from(e: std::io::Error) -> Self {
        Self::Failure(e.to_string())
    }
}

/// Result of a command.
pub type Outcome<T = ()> = Result<T, Exit>;

/// A connection to the API, scoped to one namespace.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
    /// The namespace every `/v0/namespace/{ns}/…` call uses.
    pub namespace: String,
}

impl Api {
    /// A client of `base` (e.g. `http://127.0.0.1:8000`) with `key`.
    pub fn new(base: &str, key: &str, namespace: &str) -> Outcome<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Exit::Failure(e.to_string()))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            key: key.to_string(),
            namespace: namespace.to_string(),
        })
    }

    /// `/v0/namespace/{ns}{path}`.
    pub fn ns_path(&self, path: &str) -> String {
        format!("/v0/namespace/{}{path}", self.namespace)
    }

    /// `GET /v0/namespace/{ns}{path}`: the JSON answer of a 2xx.
    pub async fn get(&self, path: &str) -> Outcome<Value> {
        self.call(Method::GET, &self.ns_path(path), None).await
    }

    /// `POST /v0/namespace/{ns}{path}` with `body`: the JSON answer of a 2xx.
    pub async fn post(&self, path: &str, body: Option<&Value>) -> Outcome<Value> {
        self.call(Method::POST, &self.ns_path(path), body).await
    }

    /// Sends a request and returns the JSON answer of a 2xx.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Outcome<Value> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| Exit::Unavailable(format!("{}{path}: {e}", self.base)))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(value);
        }
        Err(refusal(status, path, &value))
    }

    /// Sends a request (for streaming answers the caller reads itself).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Outcome<reqwest::Response> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-api-key", &self.key);
        if let Some(b) = body {
            req = req.json(b);
        }
        req.send().await.map_err(|e| {
            Exit::Unavailable(format!(
                "cannot reach the API at {} ({e}); set --url or EXO_URL",
                self.base
            ))
        })
    }
}

/// The exit for a non-2xx answer, with the API's own words.
pub fn refusal(status: StatusCode, path: &str, body: &Value) -> Exit {
    let detail = match body.get("detail") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => body.to_string(),
    };
    let msg = format!("{status} from {path}: {detail}");
    match status {
        StatusCode::NOT_FOUND => Exit::NotFound(msg),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Exit::Refused(msg),
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Exit::Rejected {
            message: msg,
            status: status.as_u16(),
            detail: body.get("detail").cloned().unwrap_or(Value::Null),
        },
        _ => Exit::Failure(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refusals_keep_the_api_s_words_and_pick_the_exit_code() {
        let e = refusal(
            StatusCode::NOT_FOUND,
            "/v0/x",
            &json!({"detail": "Graph g not found"}),
        );
        assert_eq!(e.code(), 6);
        assert!(e.message().contains("Graph g not found"), "{}", e.message());
        assert_eq!(refusal(StatusCode::FORBIDDEN, "/", &json!({})).code(), 7);
        let e = refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            "/",
            &json!({"detail": [{"loc": ["body"]}]}),
        );
        assert_eq!(e.code(), 1);
        assert!(e.message().contains("loc"), "{}", e.message());
        let Exit::Rejected { status, detail, .. } = e else {
            panic!("a 422 is a rejection")
        };
        assert_eq!(status, 422);
        assert_eq!(detail[0]["loc"][0], "body");
    }
}
