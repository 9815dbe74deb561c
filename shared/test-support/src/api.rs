//! An HTTP client of the api with its key, for tests and the bench.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::Value;

/// Calls the api at one base URL with one API key; answers are
/// `(status, JSON body or null)`.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl ApiClient {
    /// A client of the api at `base` (`http://host:port`) using `key`.
    pub fn new(base: impl Into<String>, key: impl Into<String>) -> Self {
        Self::with_http(reqwest::Client::new(), base, key)
    }

    /// The same with a configured HTTP client (pool sizes, proxies).
    pub fn with_http(
        http: reqwest::Client,
        base: impl Into<String>,
        key: impl Into<String>,
    ) -> Self {
        Self {
            http,
            base: base.into(),
            key: key.into(),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `method path` with the API key and, when given, a JSON body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        send_with(&self.http, self, method, path, body).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.send(Method::GET, path, None).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        self.send(Method::PUT, path, Some(body)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        self.send(Method::POST, path, Some(body)).await
    }

    /// `POST path` from the local address `from` (e.g. `127.0.0.2`):
    /// another runtime host, for HTTP leases, which belong to the caller's
    /// IP address.
    pub async fn post_from(
        &self,
        from: std::net::IpAddr,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let http = reqwest::Client::builder().local_address(from).build()?;
        send_with(&http, self, Method::POST, path, Some(body)).await
    }

    /// Upserts graph `graph` of `ns` and waits until it is VALID (fails when
    /// it is INVALID or still unvalidated after 20 s).
    pub async fn upsert_valid_graph(
        &self,
        ns: &str,
        graph: &str,
        body: &Value,
    ) -> anyhow::Result<()> {
        let path = format!("/v0/namespace/{ns}/graph/{graph}");
        let (status, resp) = self.put(&path, body).await?;
        if status != 201 {
            bail!("upsert graph {graph}: {status} {resp}");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, g) = self.get(&path).await?;
            match g["validation_status"].as_str() {
                Some("VALID") => return Ok(()),
                Some("INVALID") => bail!("graph {graph} is INVALID: {}", g["validation_errors"]),
                _ if Instant::now() > deadline => bail!("graph {graph} never validated: {g}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Triggers a run of `graph` in `ns`; returns its run id.
    pub async fn trigger(&self, ns: &str, graph: &str, body: &Value) -> anyhow::Result<String> {
        let path = format!("/v0/namespace/{ns}/graph/{graph}/trigger");
        let (status, resp) = self.post(&path, body).await?;
        if status != 200 {
            bail!("trigger {graph}: {status} {resp}");
        }
        resp["run_id"]
            .as_str()
            .map(str::to_string)
            .context("run_id in the trigger response")
    }
}

async fn send_with(
    http: &reqwest::Client,
    api: &ApiClient,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut req = http
        .request(method, format!("{}{path}", api.base))
        .header("x-api-key", &api.key);
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}
