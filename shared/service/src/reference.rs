//! The configuration reference, generated from the configuration structs.
//!
//! Every setting of a service's configuration type `T` (its JSON Schema for
//! the names, types and doc comments; `T::default()` for the defaults), with
//! the environment variable that sets it and the Exosphere alias, if any;
//! plus the few switches read straight from the process environment
//! ([`PROCESS_ENV`]). docs/deploy.md carries the result; a test keeps the two
//! in sync.

use serde::Serialize;
use serde_json::Value;

use crate::config::ALIASES;

/// One setting of a configuration type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The dotted key in a TOML file (`nats.url`; top-level ones bare).
    pub key: String,
    /// The environment variable (`EXO_NATS__URL`).
    pub env: String,
    /// The name Exosphere users already set, honoured when `env` is absent.
    pub alias: Option<&'static str>,
    /// JSON Schema type(s) of the value (`string`, `integer`, `boolean`).
    pub kind: String,
    /// The default, as text (`unset` when there is none).
    pub default: String,
    /// The field's documentation, on one line.
    pub description: String,
}

/// Switches read from the process environment rather than the
/// configuration: `(variable, default, meaning)`.
pub const PROCESS_ENV: &[(&str, &str, &str)] = &[
    (
        "EXO_CONFIG",
        "unset",
        "A TOML file with the settings above (keys as in the Key column); \
         environment variables override it. Same as `--config`.",
    ),
    (
        "RUST_LOG",
        "`info`",
        "Log filter (tracing `EnvFilter` syntax). The driver and client targets that print \
         documents and payloads stay off unless named.",
    ),
    (
        "EXO_LOG_FORMAT",
        "readable text",
        "`json` for one JSON object per log line (the images set it).",
    ),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "unset",
        "OTLP/HTTP collector base URL; set, every service exports its spans (docs/operations.md).",
    ),
    (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "unset",
        "OTLP/HTTP traces URL, instead of the base URL.",
    ),
    (
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "`http/protobuf`",
        "`http/json` to export JSON.",
    ),
    (
        "OTEL_SERVICE_NAME",
        "the binary's name",
        "The `service.name` of exported spans.",
    ),
    (
        "EXO_STATE_EVENTS",
        "on",
        "`false`, `0` or `off`: no state lifecycle events (outbox writes and \
         `exo.v1.<ns>.event.state.*` messages); run events stay.",
    ),
    (
        "EXO_OUTBOX_STALE_MS",
        "`3000`",
        "Age after which another process relays outbox events a crashed one left.",
    ),
    (
        "EXO_FANOUT_CHUNK",
        "`256`",
        "`exo-completion`: states written per fan-out transaction.",
    ),
    (
        "EXO_MAX_OUTPUTS",
        "`1000000`",
        "`exo-completion`: most outputs one result from a NATS runtime may carry; a wider \
         one ends its state NEXT_CREATED_ERROR naming this setting.",
    ),
    (
        "EXO_FAILPOINTS_TRACE",
        "unset",
        "Tests only: log every crash point passed.",
    ),
    (
        "FAILPOINTS",
        "unset",
        "Tests only: crash points to fire (the `fail` crate's syntax).",
    ),
];

/// The settings of configuration type `T`, in declaration order.
pub fn settings<T: schemars::JsonSchema + Default + Serialize>() -> Vec<Setting> {
    let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default();
    let defaults = serde_json::to_value(T::default()).unwrap_or_default();
    let mut out = Vec::new();
    walk(&schema, &schema, &defaults, &[], &mut out);
    out
}

fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix("#/")
            .map(|path| path.split('/').fold(root, |v, part| &v[part]))
            .unwrap_or(schema),
        None => schema,
    }
}

fn walk(root: &Value, schema: &Value, defaults: &Value, path: &[&str], out: &mut Vec<Setting>) {
    let Some(props) = resolve(root, schema)["properties"].as_object() else {
        return;
    };
    for (name, prop) in props {
        let here: Vec<&str> = path.iter().copied().chain([name.as_str()]).collect();
        let target = resolve(root, prop);
        if target.get("properties").is_some() {
            walk(root, prop, &defaults[name.as_str()], &here, out);
            continue;
        }
        out.push(leaf(&here, prop, target, &defaults[name.as_str()]));
    }
}

fn leaf(path: &[&str], prop: &Value, target: &Value, default: &Value) -> Setting {
    let env = format!(
        "EXO_{}",
        path.iter()
            .map(|p| p.to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join("__")
    );
    let alias = ALIASES.iter().find(|(_, c)| *c == env).map(|(a, _)| *a);
    let description = prop
        .get("description")
        .or_else(|| target.get("description"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .replace("[`", "`")
        .replace("`]", "`")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let kind = match &target["type"] {
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join("|"),
        _ => "string".into(),
    };
    let default = match default {
        Value::Null => "unset".to_string(),
        Value::String(s) if s.is_empty() => "empty".to_string(),
        Value::String(s) => format!("`{s}`"),
        other => format!("`{other}`"),
    };
    Setting {
        key: path.join("."),
        env,
        alias,
        kind,
        default,
        description,
    }
}

/// A markdown table of `settings`.
pub fn table(settings: &[Setting]) -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut md = String::from(
        "| Environment variable | Key | Type | Default | Meaning |\n|---|---|---|---|---|\n",
    );
    for s in settings {
        let env = match s.alias {
            Some(a) => format!("`{}` (alias `{a}`)", s.env),
            None => format!("`{}`", s.env),
        };
        md.push_str(&format!(
            "| {env} | `{}` | {} | {} | {} |\n",
            s.key,
            s.kind,
            cell(&s.default),
            cell(&s.description)
        ));
    }
    md
}

/// A markdown table of [`PROCESS_ENV`].
pub fn process_env_table() -> String {
    let mut md = String::from("| Environment variable | Default | Meaning |\n|---|---|---|\n");
    for (name, default, meaning) in PROCESS_ENV {
        md.push_str(&format!("| `{name}` | {default} | {meaning} |\n"));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CommonConfig;

    #[test]
    fn sections_become_double_underscores_and_defaults_are_read() {
        let all = settings::<CommonConfig>();
        let find = |env: &str| all.iter().find(|s| s.env == env).cloned();
        let url = find("EXO_NATS__URL").expect("nats.url");
        assert_eq!(url.key, "nats.url");
        assert_eq!(url.alias, Some("NATS_URL"));
        assert_eq!(url.default, "`nats://127.0.0.1:4222`");
        assert!(url.description.contains("comma separated"), "{url:?}");
        let grace = find("EXO_SHUTDOWN_GRACE_SECS").expect("top level");
        assert_eq!(
            (grace.key.as_str(), grace.kind.as_str()),
            ("shutdown_grace_secs", "integer")
        );
        let creds = find("EXO_NATS__CREDS_FILE").expect("flattened auth");
        assert_eq!(creds.default, "unset");
        assert!(find("EXO_NATS__PASSWORD").is_some(), "secrets are listed");
        assert_eq!(
            find("EXO_NATS__REQUIRE_TLS").map(|s| s.default),
            Some("`false`".into())
        );
    }
}
