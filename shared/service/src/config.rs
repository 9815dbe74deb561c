//! Layered configuration.
//!
//! Layers, later ones winning: serde defaults, an optional TOML file
//! (`--config` / `EXO_CONFIG`), then environment variables `EXO_<SECTION>__<KEY>`
//! (for example `EXO_NATS__URL`, `EXO_MONGO__URI`). The names Exosphere users
//! already set are honoured as aliases when the `EXO_` form is absent:
//! `NATS_URL`, `MONGO_URI`, `MONGO_DATABASE_NAME`, `STATE_MANAGER_SECRET` and
//! `SECRETS_ENCRYPTION_KEY`.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Configuration errors. They are reported before telemetry exists.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A source could not be read or a value could not be deserialised.
    #[error("could not load configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value was read but is not acceptable.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Connection settings for NATS.
#[derive(Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default)]
pub struct NatsConfig {
    /// Server URL(s), comma separated.
    #[serde(serialize_with = "serialize_redacted")]
    pub url: String,
    /// Client name shown in server monitoring.
    pub name: Option<String>,
    /// Replicas of the streams the services create (`R3` in a 3-node
    /// cluster survives the loss of one node); existing streams are brought
    /// to it on start. Unset: created with 1, existing ones kept as they are.
    pub stream_replicas: Option<usize>,
    /// Credentials and TLS (`EXO_NATS__CREDS_FILE`, `__USER`,
    /// `__PASSWORD`, `__TLS_CA_FILE`, …; see [`exo_bus::NatsAuth`]).
    #[serde(flatten)]
    pub auth: exo_bus::NatsAuth,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            name: None,
            stream_replicas: None,
            auth: exo_bus::NatsAuth::default(),
        }
    }
}

/// Connection settings for MongoDB.
#[derive(Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default)]
pub struct MongoConfig {
    /// Connection string. Never logged.
    #[serde(serialize_with = "serialize_redacted")]
    pub uri: String,
    /// Database name (Exosphere's default is `exosphere-state-manager`).
    pub database: String,
    /// When set, services set the server's `transactionLifetimeLimitSeconds`
    /// at start-up (needs the privilege; best effort). A transaction left
    /// open by a killed process holds its locks until this limit (MongoDB's
    /// default is 60 s), stalling the runs it touched; ours last
    /// milliseconds, so a few seconds is plenty.
    pub transaction_lifetime_secs: Option<u32>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &redact_uri(&self.url))
            .field("name", &self.name)
            .field("stream_replicas", &self.stream_replicas)
            .field("auth", &self.auth)
            .finish()
    }
}

impl std::fmt::Debug for MongoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoConfig")
            .field("uri", &redact_uri(&self.uri))
            .field("database", &self.database)
            .field("transaction_lifetime_secs", &self.transaction_lifetime_secs)
            .finish()
    }
}

/// Serialises a connection string as [`redact_uri`] shows it.
fn serialize_redacted<S: serde::Serializer>(uri: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_uri(uri))
}

/// `uri` with the credentials of every `user:password@` or `token@` part
/// replaced by `***` (a comma-separated list of URLs too), and the query
/// string dropped (it can carry `password=`, `authMechanismProperties`,
/// TLS key passwords): what a log line may show of a connection string.
pub fn redact_uri(uri: &str) -> String {
    uri.split(',')
        .map(|one| {
            let one = one.split('?').next().unwrap_or_default();
            let (scheme, rest) = one.split_once("://").unwrap_or(("", one));
            let redacted = match rest.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => rest.to_string(),
            };
            if scheme.is_empty() {
                redacted
            } else {
                format!("{scheme}://{redacted}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Default for MongoConfig {
    fn default() -> Self {
        Self {
            uri: "mongodb://127.0.0.1:27017".into(),
            database: "exosphere-state-manager".into(),
            transaction_lifetime_secs: None,
        }
    }
}

/// Admin HTTP endpoint settings (`/livez`, `/readyz`).
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default)]
pub struct AdminConfig {
    /// Listen address, `host:port`.
    pub addr: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            addr: "0.0.0.0:9090".into(),
        }
    }
}

/// The sections every service has.
#[derive(Debug, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default)]
pub struct CommonConfig {
    /// NATS connection.
    pub nats: NatsConfig,
    /// MongoDB connection.
    pub mongo: MongoConfig,
    /// Admin endpoints.
    pub admin: AdminConfig,
    /// Seconds in-flight work gets after a shutdown signal (keep
    /// `terminationGracePeriodSeconds` above it: deploy/check-k8s.sh checks).
    pub shutdown_grace_secs: u64,
    /// Tokio worker threads; unset or 0 means one
    /// per core (tokio's default, which follows the container's CPU
    /// quota). On the 2-core benchmark machine 1 and 2 measured the same
    /// (docs/benchmarks.md).
    pub worker_threads: Option<usize>,
}

impl Default for CommonConfig {
    fn default() -> Self {
        Self {
            nats: NatsConfig::default(),
            mongo: MongoConfig::default(),
            admin: AdminConfig::default(),
            shutdown_grace_secs: 20,
            worker_threads: None,
        }
    }
}

impl CommonConfig {
    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.nats.url.trim().is_empty() {
            return Err(Error::Invalid("nats.url is empty".into()));
        }
        if let Some(r) = self.nats.stream_replicas
            && !(1..=5).contains(&r)
        {
            return Err(Error::Invalid(format!(
                "nats.stream_replicas (EXO_NATS__STREAM_REPLICAS) must be 1 to 5 (JetStream's limit), got {r}"
            )));
        }
        self.nats
            .auth
            .validate()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        if !self.mongo.uri.starts_with("mongodb://")
            && !self.mongo.uri.starts_with("mongodb+srv://")
        {
            return Err(Error::Invalid(
                "mongo.uri must start with mongodb:// or mongodb+srv://".into(),
            ));
        }
        if self.mongo.database.trim().is_empty() {
            return Err(Error::Invalid("mongo.database is empty".into()));
        }
        if self.admin.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(Error::Invalid(format!(
                "admin.addr '{}' is not a host:port socket address",
                self.admin.addr
            )));
        }
        Ok(())
    }

    /// Grace period for in-flight work at shutdown.
    pub fn shutdown_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// Compatibility aliases: (alias env var, canonical `EXO_` env var).
pub const ALIASES: &[(&str, &str)] = &[
    ("NATS_URL", "EXO_NATS__URL"),
    ("MONGO_URI", "EXO_MONGO__URI"),
    ("MONGO_DATABASE_NAME", "EXO_MONGO__DATABASE"),
    ("STATE_MANAGER_SECRET", "EXO_API__KEY"),
    ("SECRETS_ENCRYPTION_KEY", "EXO_API__SECRETS_ENCRYPTION_KEY"),
    ("CORS_ORIGINS", "EXO_API__CORS_ORIGINS"),
];

/// Loads `T` from the process environment and an optional file.
pub fn load<T: DeserializeOwned>(file: Option<&Path>) -> Result<T, Error> {
    load_from(file, std::env::vars().collect())
}

/// Loads `T` from an explicit environment map (used by tests instead of
/// mutating the process environment).
pub fn load_from<T: DeserializeOwned>(
    file: Option<&Path>,
    mut env: HashMap<String, String>,
) -> Result<T, Error> {
    for (alias, canonical) in ALIASES {
        if !env.contains_key(*canonical)
            && let Some(v) = env.get(*alias).cloned()
        {
            env.insert((*canonical).to_string(), v);
        }
    }
    // Only EXO_ keys take part (top-level ones such as EXO_CONCURRENCY too);
    // aliases were copied above. Keys no section knows are ignored.
    let env: HashMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("EXO_"))
        .collect();
    let mut builder = config::Config::builder();
    if let Some(f) = file {
        builder = builder.add_source(config::File::from(f));
    }
    let cfg = builder
        .add_source(
            config::Environment::with_prefix("EXO")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .ignore_empty(true)
                .source(Some(env)),
        )
        .build()?;
    Ok(cfg.try_deserialize()?)
}

/// Loads the configuration for a binary, printing the error and exiting with
/// `EX_USAGE` (64) when it cannot be loaded or validated.
pub fn load_or_exit<T: DeserializeOwned>(
    file: Option<&Path>,
    validate: impl FnOnce(&T) -> Result<(), Error>,
) -> T {
    let cfg = match load::<T>(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(64);
        }
    };
    if let Err(e) = validate(&cfg) {
        eprintln!("error: {e}");
        std::process::exit(64);
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_never_show_credentials() {
        let cases = [
            (
                "mongodb://app:s3cr3t@db-0:27017,db-1:27017/?replicaSet=rs0&tls=true",
                "mongodb://***@db-0:27017,db-1:27017/",
            ),
            (
                "mongodb+srv://app:p%40ss@cluster.example.net/exo?authSource=admin",
                "mongodb+srv://***@cluster.example.net/exo",
            ),
            (
                "nats://token-abc@nats:4222,nats://u:pw@nats-2:4222",
                "nats://***@nats:4222,nats://***@nats-2:4222",
            ),
            ("mongodb://127.0.0.1:27017", "mongodb://127.0.0.1:27017"),
            ("mongodb://db/?password=hunter2", "mongodb://db/"),
        ];
        for (uri, shown) in cases {
            assert_eq!(redact_uri(uri), shown, "{uri}");
        }
        let common = CommonConfig {
            mongo: MongoConfig {
                uri: cases[0].0.into(),
                ..Default::default()
            },
            nats: NatsConfig {
                url: cases[2].0.into(),
                name: None,
                stream_replicas: None,
                auth: exo_bus::NatsAuth {
                    user: Some("svc".into()),
                    password: Some("nats-pw-9".into()),
                    ..Default::default()
                },
            },
            ..Default::default()
        };
        let printed = format!("{common:?} {common:#?}");
        for secret in ["s3cr3t", "token-abc", "pw@", "app:", "nats-pw-9"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains("db-0:27017"), "{printed}");
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(default)]
    struct Cfg {
        #[serde(flatten)]
        common: CommonConfig,
        api: Api,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(default)]
    struct Api {
        key: Option<String>,
        port: Option<u16>,
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_without_env() {
        let c: Cfg = load_from(None, HashMap::new()).unwrap();
        assert_eq!(c.common.nats.url, "nats://127.0.0.1:4222");
        assert_eq!(c.common.mongo.database, "exosphere-state-manager");
        c.common.validate().unwrap();
    }

    #[test]
    fn exo_env_overrides_and_aliases_fill_gaps() {
        let c: Cfg = load_from(
            None,
            env(&[
                ("EXO_NATS__URL", "nats://n:1"),
                ("NATS_URL", "nats://ignored:2"),
                ("MONGO_URI", "mongodb://m:3"),
                ("MONGO_DATABASE_NAME", "db1"),
                ("STATE_MANAGER_SECRET", "k"),
                ("EXO_API__PORT", "8080"),
            ]),
        )
        .unwrap();
        assert_eq!(c.common.nats.url, "nats://n:1");
        assert_eq!(c.common.mongo.uri, "mongodb://m:3");
        assert_eq!(c.common.mongo.database, "db1");
        assert_eq!(c.api.key.as_deref(), Some("k"));
        assert_eq!(c.api.port, Some(8080));
    }

    #[test]
    fn top_level_keys_are_read() {
        #[derive(Debug, Deserialize, Default)]
        #[serde(default)]
        struct Top {
            #[serde(flatten)]
            common: CommonConfig,
            concurrency: Option<usize>,
        }
        let c: Top = load_from(
            None,
            env(&[
                ("EXO_CONCURRENCY", "3"),
                ("EXO_SHUTDOWN_GRACE_SECS", "7"),
                ("EXO_WORKER_THREADS", "2"),
                ("EXO_LOG_FORMAT", "json"),
            ]),
        )
        .unwrap();
        assert_eq!(c.concurrency, Some(3));
        assert_eq!(c.common.shutdown_grace(), std::time::Duration::from_secs(7));
        assert_eq!(c.common.worker_threads, Some(2));
    }

    #[test]
    fn validation_names_the_bad_value() {
        let c: Cfg = load_from(None, env(&[("EXO_ADMIN__ADDR", "nowhere")])).unwrap();
        let e = c.common.validate().unwrap_err();
        assert!(e.to_string().contains("admin.addr 'nowhere'"), "{e}");
        let c: Cfg = load_from(None, env(&[("EXO_NATS__STREAM_REPLICAS", "3")])).unwrap();
        assert_eq!(c.common.nats.stream_replicas, Some(3));
        c.common.validate().unwrap();
        let c: Cfg = load_from(None, env(&[("EXO_NATS__STREAM_REPLICAS", "7")])).unwrap();
        let e = c.common.validate().unwrap_err();
        assert!(e.to_string().contains("EXO_NATS__STREAM_REPLICAS"), "{e}");
        let c: Cfg = load_from(None, env(&[("EXO_MONGO__URI", "http://x")])).unwrap();
        assert!(matches!(c.common.validate(), Err(Error::Invalid(_))));
    }
}
