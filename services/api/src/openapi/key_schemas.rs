//! Schemas of the API-key endpoints (`/v0/keys`, ours).

use serde::Deserialize;
use utoipa::ToSchema;

/// `POST /v0/keys`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// What the key is for (1 to 128 characters).
    pub name: String,
    /// Namespaces it reaches (names as elsewhere, or `"*"` for all).
    pub namespaces: Vec<String>,
    /// `admin` (everything in its namespaces, the default) or `runtime`
    /// (register nodes, take work, report results, read secrets).
    #[schema(default = "admin")]
    pub scope: Option<String>,
    /// Requests per second it may make (default: the server's).
    pub rate_limit_per_sec: Option<u32>,
}

/// A key as listed (never its secret or hash).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyInfo {
    /// Key id (12 hex digits; the key reads `exo_<id>_<secret>`).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// Namespaces it reaches (`"*"`: all).
    pub namespaces: Vec<String>,
    /// `admin` or `runtime`.
    pub scope: String,
    /// Its own rate limit, if any.
    pub rate_limit_per_sec: Option<u32>,
    /// Creation time (Unix ms).
    pub created_at_ms: i64,
    /// Revocation time (Unix ms), once revoked.
    pub revoked_at_ms: Option<i64>,
}

/// `POST /v0/keys` answer: the key, shown this once.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCreated {
    /// The key to send in `x-api-key` (shown once; only its hash is kept).
    pub key: String,
    /// Key id (12 hex digits).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// Namespaces it reaches.
    pub namespaces: Vec<String>,
    /// `admin` or `runtime`.
    pub scope: String,
    /// Its own rate limit, if any.
    pub rate_limit_per_sec: Option<u32>,
    /// Creation time (Unix ms).
    pub created_at_ms: i64,
    /// Always null for a new key.
    pub revoked_at_ms: Option<i64>,
}

/// `GET /v0/keys` answer.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyList {
    /// Number of keys.
    pub count: u64,
    /// Every key, newest first, revoked ones included.
    pub keys: Vec<KeyInfo>,
}
