//! API keys scoped to namespaces (ours; Exosphere has one key for
//! everything, which keeps working here as the all-namespaces admin key).
//!
//! A scoped key reads `exo_<id>_<secret>`: `<id>` (12 hex digits) names
//! it, `<secret>` (64 hex digits, 256 random bits) proves it. Only the
//! SHA-256 of the secret is stored (`ApiKeys`, `_id` = id), compared in
//! constant time; the key itself is shown once, when it is created. A
//! key has
//! - `namespaces`: the namespaces it reaches (`"*"`: all of them);
//! - `scope`: `admin` (everything in its namespaces) or `runtime` (what a
//!   runtime does: register nodes, take work, report results, read
//!   secrets);
//! - an optional `rate_limit_per_sec` (else the server's default).
//!
//! Keys are created, listed and revoked by an all-namespaces admin key
//! (`/v0/keys`). Each `api` replica caches what it read about a key for
//! [`CACHE_TTL`], so a revocation holds everywhere within that time (at
//! once on the replica that revoked it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exo_store::Store;
use exo_store::mongodb::bson::{self, doc};
use serde::{Deserialize, Serialize};

/// How long a replica trusts what it read about a key.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Prefix of a scoped key.
pub const PREFIX: &str = "exo_";
/// `namespaces` entry that reaches every namespace.
pub const ALL_NAMESPACES: &str = "*";
/// Principal id of the configured (upstream) key.
pub const MASTER_ID: &str = "master";

/// What a key may do in its namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Everything.
    Admin,
    /// What a runtime does: register nodes, take work, report results,
    /// read secrets.
    Runtime,
}

impl Scope {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Runtime => "runtime",
        }
    }
}

/// A stored key (`ApiKeys`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyDoc {
    /// Key id (12 hex digits).
    #[serde(rename = "_id")]
    pub id: String,
    /// What it is for (free text).
    pub name: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    /// Namespaces it reaches (`"*"`: all).
    pub namespaces: Vec<String>,
    /// What it may do there.
    pub scope: Scope,
    /// Requests per second it may make (`None`: the server's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_sec: Option<u32>,
    /// Creation time, Unix ms.
    pub created_at_ms: i64,
    /// Revocation time, Unix ms (a revoked key opens nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<i64>,
}

impl KeyDoc {
    /// The key as `GET /v0/keys` shows it (never the hash).
    pub fn public(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "name": self.name, "namespaces": self.namespaces,
            "scope": self.scope.as_str(), "rate_limit_per_sec": self.rate_limit_per_sec,
            "created_at_ms": self.created_at_ms, "revoked_at_ms": self.revoked_at_ms,
        })
    }
}

/// Who calls.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The configured key: every namespace, everything.
    Master,
    /// A scoped key.
    Key(Arc<KeyDoc>),
}

/// What an operation needs of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// What a runtime does.
    Runtime,
    /// Admin rights in the namespace.
    Admin,
    /// Admin rights in every namespace (managing keys).
    AdminEverywhere,
    /// Any valid key (the answer is filtered to its namespaces).
    AnyKey,
}

impl Principal {
    /// The principal's id (labels, rate limits, messages).
    pub fn id(&self) -> &str {
        match self {
            Self::Master => MASTER_ID,
            Self::Key(k) => &k.id,
        }
    }

    /// True when it reaches namespace `ns`.
    pub fn reaches(&self, ns: &str) -> bool {
        match self {
            Self::Master => true,
            Self::Key(k) => k.namespaces.iter().any(|n| n == ALL_NAMESPACES || n == ns),
        }
    }

    /// Its own rate limit, if any.
    pub fn rate_limit(&self) -> Option<u32> {
        match self {
            Self::Master => None,
            Self::Key(k) => k.rate_limit_per_sec,
        }
    }

    /// Why it may not do what `needs` in `ns` (`None` for operations
    /// outside a namespace), or `Ok` when it may.
    pub fn check(&self, ns: Option<&str>, needs: Needs) -> Result<(), String> {
        let Self::Key(k) = self else { return Ok(()) };
        if let Some(ns) = ns
            && !self.reaches(ns)
        {
            return Err(format!("API key {} cannot access namespace '{ns}'", k.id));
        }
        let everywhere = k.namespaces.iter().any(|n| n == ALL_NAMESPACES);
        match needs {
            Needs::AnyKey | Needs::Runtime => Ok(()),
            Needs::Admin if k.scope == Scope::Admin => Ok(()),
            Needs::AdminEverywhere if k.scope == Scope::Admin && everywhere => Ok(()),
            Needs::Admin => Err(format!(
                "API key {} is a runtime key: this operation needs an admin key",
                k.id
            )),
            Needs::AdminEverywhere => Err(format!(
                "API key {} cannot manage keys: that needs an admin key for every namespace",
                k.id
            )),
        }
    }
}

/// What the operation at route template `route` with `method` needs.
pub fn needs(method: &axum::http::Method, route: &str) -> Needs {
    use axum::http::Method;
    let tail = route
        .strip_prefix("/v0/namespace/{namespace_name}")
        .unwrap_or(route);
    match (method, tail) {
        (_, "/v0/namespaces") => Needs::AnyKey,
        (_, t) if t.starts_with("/v0/keys") => Needs::AdminEverywhere,
        (&Method::PUT, "/nodes/")
        | (&Method::POST, "/states/enqueue")
        | (&Method::POST, "/state/{state_id}/executed")
        | (&Method::POST, "/state/{state_id}/errored")
        | (&Method::POST, "/state/{state_id}/prune")
        | (&Method::POST, "/state/{state_id}/re-enqueue-after")
        | (&Method::GET, "/state/{state_id}/secrets") => Needs::Runtime,
        _ => Needs::Admin,
    }
}

/// The namespace of a `/v0/namespace/{ns}/…` path.
pub fn namespace_of(path: &str) -> Option<&str> {
    path.strip_prefix("/v0/namespace/")?
        .split('/')
        .next()
        .filter(|s| !s.is_empty())
}

/// A fresh key: its document (not stored) and the key to hand out once.
pub fn mint(
    name: String,
    namespaces: Vec<String>,
    scope: Scope,
    rate_limit_per_sec: Option<u32>,
    now_ms: i64,
) -> (KeyDoc, String) {
    let id_bytes: [u8; 6] = rand::random();
    let secret_bytes: [u8; 32] = rand::random();
    let (id, secret) = (hex::encode(id_bytes), hex::encode(secret_bytes));
    let doc = KeyDoc {
        id: id.clone(),
        name,
        hash: digest(&secret),
        namespaces,
        scope,
        rate_limit_per_sec,
        created_at_ms: now_ms,
        revoked_at_ms: None,
    };
    (doc, format!("{PREFIX}{id}_{secret}"))
}

fn digest(secret: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret.as_bytes(),
    ))
}

/// `exo_<12 hex>_<64 hex>` → (id, secret).
fn split(presented: &[u8]) -> Option<(&str, &str)> {
    let s = std::str::from_utf8(presented).ok()?.strip_prefix(PREFIX)?;
    let (id, secret) = s.split_once('_')?;
    let hex = |v: &str, n: usize| v.len() == n && v.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 12) && hex(secret, 64)).then_some((id, secret))
}

/// What a replica read about one key (`None`: no such key) and when.
type Cached = (Option<Arc<KeyDoc>>, Instant);

/// The keys one replica has read, each for [`CACHE_TTL`].
#[derive(Debug, Default)]
pub struct KeyRing {
    cache: Mutex<HashMap<String, Cached>>,
}

impl KeyRing {
    /// Who `presented` is: the configured key (checked by `is_master`), a
    /// live scoped key whose secret matches, or nobody.
    pub async fn resolve(
        &self,
        store: &Store,
        presented: &[u8],
        is_master: impl FnOnce(&[u8]) -> bool,
    ) -> Result<Option<Principal>, exo_store::Error> {
        if is_master(presented) {
            return Ok(Some(Principal::Master));
        }
        let Some((id, secret)) = split(presented) else {
            return Ok(None);
        };
        let doc = match self.cached(id) {
            Some(d) => d,
            None => {
                let d = load(store, id).await?.map(Arc::new);
                self.remember(id, d.clone());
                d
            }
        };
        Ok(doc
            .filter(|d| d.revoked_at_ms.is_none())
            .filter(|d| crate::constant_time_eq(digest(secret).as_bytes(), d.hash.as_bytes()))
            .map(Principal::Key))
    }

    fn cached(&self, id: &str) -> Option<Option<Arc<KeyDoc>>> {
        let map = self.cache.lock().ok()?;
        map.get(id)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(d, _)| d.clone())
    }

    fn remember(&self, id: &str, doc: Option<Arc<KeyDoc>>) {
        if let Ok(mut map) = self.cache.lock() {
            if map.len() > 10_000 {
                map.clear();
            }
            map.insert(id.to_string(), (doc, Instant::now()));
        }
    }

    /// Forgets what this replica read about key `id` (after revoking it).
    pub fn forget(&self, id: &str) {
        if let Ok(mut map) = self.cache.lock() {
            map.remove(id);
        }
    }
}

/// Reads key `id`.
pub async fn load(store: &Store, id: &str) -> Result<Option<KeyDoc>, exo_store::Error> {
    let Some(d) = store.api_keys().find_one(doc! {"_id": id}).await? else {
        return Ok(None);
    };
    Ok(bson::from_document(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    fn key(namespaces: &[&str], scope: Scope) -> Principal {
        let (doc, _) = mint(
            "t".into(),
            namespaces.iter().map(|s| s.to_string()).collect(),
            scope,
            None,
            0,
        );
        Principal::Key(Arc::new(doc))
    }

    #[test]
    fn minted_keys_split_back_and_store_only_a_digest() {
        let (doc, key) = mint("ci".into(), vec!["a".into()], Scope::Runtime, None, 1);
        let (id, secret) = split(key.as_bytes()).expect("splits");
        assert_eq!(id, doc.id);
        assert_eq!(doc.hash, digest(secret));
        assert!(!doc.hash.contains(secret));
        for bad in [
            "",
            "exo_",
            "exo_abc_def",
            "xyz_0123456789ab_00",
            &key[..key.len() - 1],
        ] {
            assert!(split(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn scopes_and_namespaces_decide() {
        let runtime = key(&["a"], Scope::Runtime);
        let admin_a = key(&["a", "b"], Scope::Admin);
        let root = key(&["*"], Scope::Admin);
        assert!(runtime.check(Some("a"), Needs::Runtime).is_ok());
        assert!(runtime.check(Some("a"), Needs::Admin).is_err());
        assert!(runtime.check(Some("b"), Needs::Runtime).is_err());
        assert!(admin_a.check(Some("b"), Needs::Admin).is_ok());
        assert!(admin_a.check(Some("c"), Needs::Admin).is_err());
        assert!(admin_a.check(None, Needs::AdminEverywhere).is_err());
        assert!(root.check(Some("zz"), Needs::Admin).is_ok());
        assert!(root.check(None, Needs::AdminEverywhere).is_ok());
        assert!(
            Principal::Master
                .check(None, Needs::AdminEverywhere)
                .is_ok()
        );
        let e = admin_a.check(Some("c"), Needs::Admin).unwrap_err();
        assert!(e.contains("cannot access namespace 'c'"), "{e}");
    }

    #[test]
    fn runtime_operations_are_exactly_the_runtime_s() {
        let ns = "/v0/namespace/{namespace_name}";
        let runtime = [
            (Method::PUT, format!("{ns}/nodes/")),
            (Method::POST, format!("{ns}/states/enqueue")),
            (Method::POST, format!("{ns}/state/{{state_id}}/executed")),
            (Method::POST, format!("{ns}/state/{{state_id}}/errored")),
            (Method::POST, format!("{ns}/state/{{state_id}}/prune")),
            (
                Method::POST,
                format!("{ns}/state/{{state_id}}/re-enqueue-after"),
            ),
            (Method::GET, format!("{ns}/state/{{state_id}}/secrets")),
        ];
        for (m, r) in &runtime {
            assert_eq!(needs(m, r), Needs::Runtime, "{m} {r}");
        }
        assert_eq!(needs(&Method::GET, &format!("{ns}/nodes/")), Needs::Admin);
        assert_eq!(
            needs(&Method::POST, &format!("{ns}/graph/{{graph_name}}/trigger")),
            Needs::Admin
        );
        assert_eq!(
            needs(
                &Method::POST,
                &format!("{ns}/state/{{state_id}}/manual-retry")
            ),
            Needs::Admin
        );
        assert_eq!(needs(&Method::GET, "/v0/namespaces"), Needs::AnyKey);
        assert_eq!(
            needs(&Method::DELETE, "/v0/keys/{key_id}"),
            Needs::AdminEverywhere
        );
        assert_eq!(namespace_of("/v0/namespace/abc/graph/x"), Some("abc"));
        assert_eq!(namespace_of("/v0/namespaces"), None);
    }
}
