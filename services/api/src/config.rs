//! Configuration of the API service.
//!
//! Everything comes from `EXO_*` environment variables (and an optional TOML
//! file), with the names Exosphere users already set honoured as aliases:
//!
//! | key | env | alias | default |
//! |---|---|---|---|
//! | `api.addr` | `EXO_API__ADDR` | | `0.0.0.0:8000` |
//! | `api.key` | `EXO_API__KEY` | `STATE_MANAGER_SECRET` | required |
//! | `api.secrets_encryption_key` | `EXO_API__SECRETS_ENCRYPTION_KEY` | `SECRETS_ENCRYPTION_KEY` | unset |
//! | `api.cors_origins` | `EXO_API__CORS_ORIGINS` | `CORS_ORIGINS` | the 4 localhost origins |
//! | `api.lease_secs` | `EXO_API__LEASE_SECS` | | `300` |
//! | `api.webhook_attempts` | `EXO_API__WEBHOOK_ATTEMPTS` | | `8` |
//! | `api.webhook_backoff_ms` | `EXO_API__WEBHOOK_BACKOFF_MS` | | `1000` |
//! | `api.webhook_timeout_secs` | `EXO_API__WEBHOOK_TIMEOUT_SECS` | | `10` |
//! | `api.rate_limit_per_sec` | `EXO_API__RATE_LIMIT_PER_SEC` | | `0` (no limit) |
//! | `api.rate_limit_burst` | `EXO_API__RATE_LIMIT_BURST` | | `0` (= the rate) |
//! | `api.max_body_bytes` | `EXO_API__MAX_BODY_BYTES` | | `33554432` (32 MiB) |
//! | `api.max_graph_nodes` | `EXO_API__MAX_GRAPH_NODES` | | `10000` |
//! | `api.max_outputs` | `EXO_API__MAX_OUTPUTS` | | `1000000` |
//! | `api.max_store_bytes` | `EXO_API__MAX_STORE_BYTES` | | `16777216` (16 MiB) |

use std::collections::HashMap;
use std::path::Path;

use exo_service::config::{CommonConfig, Error};
use serde::Deserialize;

/// Origins allowed by default (spec §2.0).
pub const DEFAULT_CORS_ORIGINS: [&str; 4] = [
    "http://localhost:3000",
    "http://localhost:3001",
    "http://127.0.0.1:3000",
    "http://127.0.0.1:3001",
];

/// Service configuration.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Config {
    /// Connections and admin endpoint.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// HTTP API settings.
    pub api: ApiConfig,
}

/// The `api` section.
#[derive(Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default)]
pub struct ApiConfig {
    /// Listen address of the HTTP API, `host:port`.
    pub addr: String,
    /// The API key every `/v0` request must send in `x-api-key`. Required.
    #[serde(skip_serializing)]
    pub key: String,
    /// URL-safe base64 of the 32-byte AES-256-GCM key for graph secrets.
    /// Without it, graphs with secrets cannot be stored or read.
    #[serde(skip_serializing)]
    pub secrets_encryption_key: Option<String>,
    /// Comma-separated CORS origins; unset means [`DEFAULT_CORS_ORIGINS`]
    /// (`http://localhost:3000`, `:3001`, and the same on `127.0.0.1`).
    pub cors_origins: Option<String>,
    /// How long a state handed out by `POST /states/enqueue` stays leased
    /// to the caller. (Dispatch consumers it creates get the NATS runtimes'
    /// default `ack_wait`; the api acks a dispatch as soon as it is leased.)
    pub lease_secs: u64,
    /// Attempts per webhook delivery before it is FAILED.
    pub webhook_attempts: u32,
    /// Wait after a webhook delivery's first failed attempt, in ms (doubled
    /// after each next one, at most 5 minutes).
    pub webhook_backoff_ms: u64,
    /// Timeout of one webhook attempt, in seconds.
    pub webhook_timeout_secs: u64,
    /// Requests per second each API key may make (0: no limit); a key
    /// created with its own `rate_limit_per_sec` uses that instead.
    pub rate_limit_per_sec: u32,
    /// Requests a key may make at once above its rate (0: the rate).
    pub rate_limit_burst: u32,
    /// Largest request body, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Most nodes in one graph template (422 above).
    pub max_graph_nodes: usize,
    /// Most outputs in one result, i.e. the widest fan-out one state may
    /// make (422 above).
    pub max_outputs: usize,
    /// Largest store of one run (keys and values, UTF-8 bytes; 422 above).
    pub max_store_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            addr: "0.0.0.0:8000".into(),
            key: String::new(),
            secrets_encryption_key: None,
            cors_origins: None,
            lease_secs: 300,
            webhook_attempts: 8,
            webhook_backoff_ms: 1000,
            webhook_timeout_secs: 10,
            rate_limit_per_sec: 0,
            rate_limit_burst: 0,
            max_body_bytes: 32 * 1024 * 1024,
            max_graph_nodes: 10_000,
            max_outputs: 1_000_000,
            max_store_bytes: 16 * 1024 * 1024,
        }
    }
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("addr", &self.addr)
            .field("key", &"<redacted>")
            .field(
                "secrets_encryption_key",
                &self.secrets_encryption_key.as_ref().map(|_| "<redacted>"),
            )
            .field("cors_origins", &self.cors_origins)
            .field("lease_secs", &self.lease_secs)
            .field("webhook_attempts", &self.webhook_attempts)
            .field("webhook_backoff_ms", &self.webhook_backoff_ms)
            .field("webhook_timeout_secs", &self.webhook_timeout_secs)
            .field("rate_limit_per_sec", &self.rate_limit_per_sec)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_graph_nodes", &self.max_graph_nodes)
            .field("max_outputs", &self.max_outputs)
            .field("max_store_bytes", &self.max_store_bytes)
            .finish()
    }
}

impl ApiConfig {
    /// The CORS origins: the configured list (trimmed, empties dropped) or
    /// the defaults.
    pub fn origins(&self) -> Vec<String> {
        match &self.cors_origins {
            Some(list) => parse_origins(list),
            None => DEFAULT_CORS_ORIGINS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Splits a comma-separated origin list, trimming entries and dropping
/// empty ones.
pub fn parse_origins(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Raw-string settings re-read from the environment after loading, because
/// the generic loader parses numeric-looking strings (a key `0123` would
/// otherwise become `123`). Pairs of (canonical, alias).
const RAW_STRINGS: [(&str, &str); 3] = [
    ("EXO_API__KEY", "STATE_MANAGER_SECRET"),
    ("EXO_API__SECRETS_ENCRYPTION_KEY", "SECRETS_ENCRYPTION_KEY"),
    ("EXO_API__CORS_ORIGINS", "CORS_ORIGINS"),
];

fn raw(env: &HashMap<String, String>, canonical: &str, alias: &str) -> Option<String> {
    env.get(canonical)
        .filter(|v| !v.is_empty())
        .or_else(|| env.get(alias).filter(|v| !v.is_empty()))
        .cloned()
}

impl Config {
    /// Loads the configuration from the process environment and an optional
    /// file.
    pub fn load(file: Option<&Path>) -> Result<Self, Error> {
        Self::load_from(file, std::env::vars().collect())
    }

    /// Loads the configuration from an explicit environment map (tests).
    pub fn load_from(file: Option<&Path>, mut env: HashMap<String, String>) -> Result<Self, Error> {
        if !env.contains_key("EXO_API__CORS_ORIGINS")
            && let Some(v) = env.get("CORS_ORIGINS").cloned()
        {
            env.insert("EXO_API__CORS_ORIGINS".into(), v);
        }
        let raws: Vec<Option<String>> = RAW_STRINGS.iter().map(|(c, a)| raw(&env, c, a)).collect();
        let mut cfg: Config = exo_service::config::load_from(file, env)?;
        if let Some(k) = raws[0].clone() {
            cfg.api.key = k;
        }
        if let Some(k) = raws[1].clone() {
            cfg.api.secrets_encryption_key = Some(k);
        }
        if let Some(k) = raws[2].clone() {
            cfg.api.cors_origins = Some(k);
        }
        Ok(cfg)
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        self.common.validate()?;
        if self.api.key.is_empty() {
            return Err(Error::Invalid("STATE_MANAGER_SECRET is not set".into()));
        }
        if self.api.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(Error::Invalid(format!(
                "api.addr '{}' is not a host:port socket address",
                self.api.addr
            )));
        }
        if self.api.lease_secs == 0 {
            return Err(Error::Invalid("api.lease_secs must be at least 1".into()));
        }
        if self.api.webhook_attempts == 0 || self.api.webhook_timeout_secs == 0 {
            return Err(Error::Invalid(
                "api.webhook_attempts and api.webhook_timeout_secs must be at least 1".into(),
            ));
        }
        if let Some(k) = &self.api.secrets_encryption_key
            && let Err(e) = crate::crypto::SecretCipher::from_key(k)
        {
            return Err(Error::Invalid(format!("SECRETS_ENCRYPTION_KEY: {e}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_missing_key() {
        let c = Config::load_from(None, HashMap::new()).unwrap();
        assert_eq!(c.api.addr, "0.0.0.0:8000");
        assert_eq!(c.api.lease_secs, 300);
        assert_eq!(c.api.origins().len(), 4);
        let e = c.validate().unwrap_err();
        assert!(
            e.to_string().contains("STATE_MANAGER_SECRET is not set"),
            "{e}"
        );
    }

    #[test]
    fn aliases_and_raw_strings() {
        let c = Config::load_from(
            None,
            env(&[
                ("STATE_MANAGER_SECRET", "0123"),
                (
                    "SECRETS_ENCRYPTION_KEY",
                    "YTzpUlBGLSwm-3yKJRJTZnb0_aQuQQHyz64s8qAERVU=",
                ),
                ("CORS_ORIGINS", " http://a , ,http://b "),
                ("EXO_API__LEASE_SECS", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(c.api.key, "0123");
        assert_eq!(c.api.origins(), vec!["http://a", "http://b"]);
        assert_eq!(c.api.lease_secs, 7);
        c.validate().unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("0123") && !dbg.contains("YTzp"), "{dbg}");
    }

    #[test]
    fn bad_encryption_key_is_refused() {
        let c = Config::load_from(
            None,
            env(&[
                ("EXO_API__KEY", "k"),
                ("SECRETS_ENCRYPTION_KEY", "c2hvcnQ="),
            ]),
        )
        .unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("32 raw bytes"), "{e}");
    }
}
