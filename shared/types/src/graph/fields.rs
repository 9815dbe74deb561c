//! Field-level (HTTP 422) validation of an upsert body.

use super::RESERVED_IDENTIFIER;
use super::model::{
    EventBinding, GraphSpec, NodeTemplate, Trigger, TriggerType, WEBHOOK_EVENTS, Webhook,
};
use crate::validation::{FieldError, LocPart};
use crate::{cron, subject_pattern};
use std::collections::{BTreeMap, HashSet};

fn loc<const N: usize>(parts: [LocPart; N]) -> Vec<LocPart> {
    parts.into()
}

/// All field-level (HTTP 422) problems of an upsert body, all reported, in
/// the order nodes, retry policy, store config, triggers. Values are checked
/// trimmed, so this gives the same answer before and after
/// [`GraphSpec::normalize`].
pub fn validate_fields(spec: &GraphSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, node) in spec.nodes.iter().enumerate() {
        node_fields(i, node, &mut errors);
    }
    retry_policies(spec, &mut errors);
    store_config(spec, &mut errors);
    for (i, trigger) in spec.triggers.iter().enumerate() {
        trigger_fields(i, trigger, &mut errors);
    }
    for (i, hook) in spec.webhooks.iter().flatten().enumerate() {
        webhook_fields(spec, i, hook, &mut errors);
    }
    errors
}

/// Webhook `i` (ours): an http(s) URL with a host, known event types, a
/// secret the graph declares.
fn webhook_fields(spec: &GraphSpec, i: usize, hook: &Webhook, errors: &mut Vec<FieldError>) {
    let at = |field: &str| loc(["webhooks".into(), i.into(), field.into()]);
    let rest = hook
        .url
        .strip_prefix("https://")
        .or_else(|| hook.url.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or_default());
    if host.is_none_or(str::is_empty) || hook.url.chars().any(char::is_whitespace) {
        errors.push(FieldError::value_error(
            at("url"),
            "A webhook url is an http:// or https:// address with a host",
        ));
    }
    if hook.events.is_empty() {
        errors.push(FieldError::value_error(
            at("events"),
            "A webhook needs at least one event",
        ));
    }
    for e in hook
        .events
        .iter()
        .filter(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
    {
        let msg = format!(
            "Unknown webhook event {e:?}: one of {}",
            WEBHOOK_EVENTS.join(", ")
        );
        errors.push(FieldError::value_error(at("events"), &msg));
    }
    if !spec.secrets.contains_key(&hook.secret) {
        let msg = format!(
            "The webhook's secret {:?} is not one of the graph's secrets",
            hook.secret
        );
        errors.push(FieldError::value_error(at("secret"), &msg));
    }
}

/// Node `i`: a name, an identifier that is not the reserved one, unique
/// non-empty `next_nodes`, a non-empty unites target.
fn node_fields(i: usize, node: &NodeTemplate, errors: &mut Vec<FieldError>) {
    let at = |field: &str| loc(["nodes".into(), i.into(), field.into()]);
    if node.node_name.trim().is_empty() {
        errors.push(FieldError::value_error(
            at("node_name"),
            "Node name cannot be empty",
        ));
    }
    let identifier = node.identifier.trim();
    if identifier.is_empty() {
        errors.push(FieldError::value_error(
            at("identifier"),
            "Node identifier cannot be empty",
        ));
    } else if identifier == RESERVED_IDENTIFIER {
        errors.push(FieldError::value_error(
            at("identifier"),
            "Node identifier cannot be reserved word 'store'",
        ));
    }
    if let Some(next) = &node.next_nodes {
        let problems = next_node_problems(next);
        if !problems.is_empty() {
            errors.push(FieldError::value_error(
                at("next_nodes"),
                &problems.join("\n"),
            ));
        }
    }
    if let Some(unites) = &node.unites
        && unites.identifier.trim().is_empty()
    {
        errors.push(FieldError::value_error(
            at("unites"),
            "Unites identifier cannot be empty",
        ));
    }
}

/// Empty and repeated `next_nodes` entries (trimmed).
fn next_node_problems(next: &[String]) -> Vec<String> {
    trimmed_problems(next.iter().map(String::as_str), |entry, repeated| {
        if entry.is_empty() {
            Some("Next node identifier cannot be empty".to_owned())
        } else if repeated {
            Some(format!("Next node identifier {entry} is not unique"))
        } else {
            None
        }
    })
}

/// What `problem` says of each trimmed entry, told whether it was seen
/// before.
fn trimmed_problems<'a>(
    entries: impl Iterator<Item = &'a str>,
    problem: impl Fn(&str, bool) -> Option<String>,
) -> Vec<String> {
    let mut seen = HashSet::new();
    entries
        .filter_map(|e| {
            let e = e.trim();
            let repeated = !seen.insert(e);
            problem(e, repeated)
        })
        .collect()
}

/// The graph's retry policy, then each node's.
fn retry_policies(spec: &GraphSpec, errors: &mut Vec<FieldError>) {
    errors.extend(
        spec.retry_policy
            .validate()
            .into_iter()
            .map(|e| e.prefixed(["retry_policy".into()])),
    );
    for (i, node) in spec.nodes.iter().enumerate() {
        if let Some(p) = &node.retry_policy {
            errors.extend(p.validate().into_iter().map(|e| {
                e.prefixed([
                    LocPart::Key("nodes".into()),
                    LocPart::Index(i),
                    LocPart::Key("retry_policy".into()),
                ])
            }));
        }
    }
}

/// Required keys, then default value keys.
fn store_config(spec: &GraphSpec, errors: &mut Vec<FieldError>) {
    let config = &spec.store_config;
    let lists = [
        (
            "required_keys",
            store_key_problems(config.required_keys.iter().map(String::as_str)),
        ),
        (
            "default_values",
            store_key_problems(config.default_values.keys().map(String::as_str)),
        ),
    ];
    for (field, problems) in lists {
        if !problems.is_empty() {
            errors.push(FieldError::value_error(
                loc(["store_config".into(), field.into()]),
                &problems.join("\n"),
            ));
        }
    }
}

/// Trigger `i`: a CRON trigger's expression (upstream ignores the other
/// keys of its value, whatever their type), an EVENT trigger's binding.
fn trigger_fields(i: usize, trigger: &Trigger, errors: &mut Vec<FieldError>) {
    match trigger.kind {
        TriggerType::Cron => cron_trigger_fields(i, trigger, errors),
        TriggerType::Event => event_trigger_fields(i, trigger, errors),
    }
}

fn cron_trigger_fields(i: usize, trigger: &Trigger, errors: &mut Vec<FieldError>) {
    if let Some(v) = trigger.value.get("expression")
        && !v.is_string()
    {
        let at = [
            "triggers".into(),
            i.into(),
            "value".into(),
            "expression".into(),
        ];
        errors.push(FieldError::not_a_string(loc(at)));
        return;
    }
    // Ours: the values a CRON run starts with (string maps).
    for key in ["inputs", "store"] {
        if let Some(v) = trigger.value.get(key)
            && serde_json::from_value::<BTreeMap<String, String>>(v.clone()).is_err()
        {
            let at = ["triggers".into(), i.into(), "value".into(), key.into()];
            let msg = format!("A CRON trigger's {key} maps names to strings");
            errors.push(FieldError::value_error(loc(at), &msg));
        }
    }
    let at = loc(["triggers".into(), i.into(), "expression".into()]);
    match trigger.cron_expression() {
        None => errors.push(FieldError::missing(at)),
        Some(expr) if !cron::is_valid(expr) => {
            errors.push(FieldError::value_error(at, "Invalid cron expression"));
        }
        // Ours: the zone and the catch-up policy.
        Some(_) => {
            if let Err(e) = cron::CronSpec::from_value(&trigger.value)
                && e.field != "expression"
            {
                let at = ["triggers".into(), i.into(), "value".into(), e.field.into()];
                errors.push(FieldError::value_error(loc(at), &e.message));
            }
        }
    }
}

/// An EVENT trigger: its value is a binding (a subject users may bind,
/// JSON Pointers where pointers go).
fn event_trigger_fields(i: usize, trigger: &Trigger, errors: &mut Vec<FieldError>) {
    let at = |key: &str| loc(["triggers".into(), i.into(), "value".into(), key.into()]);
    let binding = match serde_json::from_value::<EventBinding>(trigger.value.clone().into()) {
        Ok(b) => b,
        Err(e) => {
            let msg = format!(
                "An EVENT trigger's value is {{subject, inputs?, store?, idempotency_key?}}: {e}"
            );
            errors.push(FieldError::value_error(
                loc(["triggers".into(), i.into(), "value".into()]),
                &msg,
            ));
            return;
        }
    };
    if let Some(problem) = subject_pattern::binding_problem(&binding.subject) {
        errors.push(FieldError::value_error(at("subject"), &problem));
    }
    let pointers = [binding.inputs.iter(), binding.store.iter()]
        .into_iter()
        .flatten()
        .flat_map(|m| m.values())
        .chain(binding.idempotency_key.iter());
    for p in pointers {
        if !(p.is_empty() || p.starts_with('/')) {
            let msg = format!("{p:?} is not a JSON Pointer (\"\" or starting with '/')");
            errors.push(FieldError::value_error(
                loc(["triggers".into(), i.into(), "value".into()]),
                &msg,
            ));
        }
    }
}

/// The store key rules of spec §9, applied to trimmed keys.
fn store_key_problems<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<String> {
    trimmed_problems(keys, |key, repeated| {
        if key.is_empty() {
            Some("Key cannot be empty or contain only whitespace".to_owned())
        } else if key.contains('.') {
            Some(format!("Key '{key}' cannot contain '.' character"))
        } else if repeated {
            Some(format!("Key '{key}' is duplicated"))
        } else {
            None
        }
    })
}
