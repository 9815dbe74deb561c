//! Validating messages against the schemas of the interface documents
//! (`docs/asyncapi.json`, the served OpenAPI document).

use serde_json::Value;

/// A validator for `schema` (a schema object of `doc`, or a `$ref` to
/// one), with the document's `components` reachable by its `$ref`s.
pub fn validator(doc: &Value, schema: &Value) -> anyhow::Result<jsonschema::Validator> {
    let mut root = schema.clone();
    if let Some(r) = root["$ref"].as_str().map(str::to_string) {
        root = doc
            .pointer(r.trim_start_matches('#'))
            .cloned()
            .unwrap_or(Value::Null);
    }
    root["components"] = doc["components"].clone();
    jsonschema::validator_for(&root).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Fails with every error when `instance` does not validate; `what` names
/// it in the message.
pub fn check(v: &jsonschema::Validator, instance: &Value, what: &str) -> anyhow::Result<()> {
    let errors: Vec<String> = v.iter_errors(instance).map(|e| e.to_string()).collect();
    if !errors.is_empty() {
        let text = instance.to_string();
        let shown: String = text.chars().take(2000).collect();
        anyhow::bail!("{what}: {errors:?} in {shown}");
    }
    Ok(())
}
