//! Request models (spec §2) and their checks.

use std::collections::BTreeMap;

use exo_types::graph::{
    GraphSpec, NodeTemplate, StoreConfig, Trigger, TriggerType, Unites, Webhook,
};
use exo_types::retry::{RetryPolicy, RetryStrategy};
use serde_json::{Map, Value};

use crate::validate::{Checker, Model, at, body_loc, or_null};

const UNITES_STRATEGIES: [&str; 2] = ["ALL_SUCCESS", "ALL_DONE"];
const TRIGGER_TYPES: [&str; 2] = ["CRON", "EVENT"];

/// A body whose one field is required: its value at `key`, checked by
/// `check` (which records what is wrong with it).
fn only_field<'v, T>(
    v: &'v Value,
    c: &mut Checker,
    key: &str,
    check: impl FnOnce(&mut Checker, &[Value], &'v Value) -> Option<T>,
) -> Option<T> {
    let obj = top(v, c)?;
    let l = body_loc();
    let x = c.required(&l, obj, key)?;
    check(c, &at(&l, key), x)
}

fn top<'a>(v: &'a Value, c: &mut Checker) -> Option<&'a Map<String, Value>> {
    c.model(&body_loc(), v, None)
}

/// `PUT /graph/{name}`: the graph template (secrets in plaintext) and the
/// raw body (to quote offending values in field-level errors).
#[derive(Debug, Clone)]
pub struct UpsertGraph {
    /// The template.
    pub spec: GraphSpec,
    /// The body as received.
    pub raw: Value,
}

impl Model for UpsertGraph {
    fn check(v: &Value, c: &mut Checker) -> Option<Self> {
        let obj = top(v, c)?;
        let l = body_loc();
        let secrets = c.field(&l, obj, "secrets", Checker::str_dict);
        let nodes = c.required(&l, obj, "nodes").and_then(|n| {
            c.list_of(&at(&l, "nodes"), n, |c, loc, item| {
                node_template(c, loc, item)
            })
        });
        let retry_policy = c.optional(
            &l,
            obj,
            ("retry_policy", RetryPolicy::default()),
            retry_policy,
        );
        let store_config = c.optional(
            &l,
            obj,
            ("store_config", StoreConfig::default()),
            store_config,
        );
        let triggers = c.optional(&l, obj, ("triggers", Vec::new()), triggers);
        let webhooks = c.optional(&l, obj, ("webhooks", None), |c, loc, v| {
            webhooks(c, loc, v).map(Some)
        });
        Some(Self {
            spec: GraphSpec {
                nodes: nodes?,
                secrets: secrets?,
                retry_policy: retry_policy?,
                store_config: store_config?,
                triggers: triggers?,
                webhooks: webhooks?,
            },
            raw: v.clone(),
        })
    }
}

fn node_template(c: &mut Checker, loc: &[Value], v: &Value) -> Option<NodeTemplate> {
    let obj = c.model(loc, v, Some("NodeTemplate"))?;
    let s = |key: &str, c: &mut Checker| {
        c.required(loc, obj, key)
            .and_then(|x| c.string(&at(loc, key), x))
    };
    let node_name = s("node_name", c);
    let namespace = s("namespace", c);
    let identifier = s("identifier", c);
    let inputs = c
        .required(loc, obj, "inputs")
        .and_then(|x| c.dict(&at(loc, "inputs"), x))
        .cloned();
    let next_nodes = c.optional(loc, obj, ("next_nodes", None), or_null(Checker::str_list));
    let unites = match obj.get("unites") {
        None | Some(Value::Null) => Some(None),
        Some(x) => {
            let uloc = at(loc, "unites");
            c.model(&uloc, x, Some("Unites")).and_then(|u| {
                let identifier = c.field(&uloc, u, "identifier", Checker::string);
                let strategy = match u.get("strategy") {
                    None => Some(Default::default()),
                    Some(s) => c
                        .enumeration(&at(&uloc, "strategy"), s, &UNITES_STRATEGIES)
                        .and_then(|s| serde_json::from_value(Value::String(s)).ok()),
                };
                Some(Some(Unites {
                    identifier: identifier?,
                    strategy: strategy?,
                }))
            })
        }
    };
    let node_retry = c.optional(loc, obj, ("retry_policy", None), or_null(retry_policy));
    Some(NodeTemplate {
        node_name: node_name?,
        namespace: namespace?,
        identifier: identifier?,
        inputs: inputs?,
        next_nodes: next_nodes?,
        unites: unites?,
        retry_policy: node_retry?,
    })
}

fn retry_policy(c: &mut Checker, loc: &[Value], v: &Value) -> Option<RetryPolicy> {
    let obj = c.model(loc, v, Some("RetryPolicyModel"))?;
    let d = RetryPolicy::default();
    let int = |key: &str, default: i64, c: &mut Checker| {
        c.optional(loc, obj, (key, default), Checker::int)
    };
    let max_retries = int("max_retries", d.max_retries, c);
    let strategy = match obj.get("strategy") {
        None => Some(d.strategy),
        Some(s) => c
            .enumeration(
                &at(loc, "strategy"),
                s,
                &RetryStrategy::ALL.map(RetryStrategy::as_str),
            )
            .and_then(|s| serde_json::from_value::<RetryStrategy>(Value::String(s)).ok()),
    };
    let backoff_factor = int("backoff_factor", d.backoff_factor, c);
    let exponent = int("exponent", d.exponent, c);
    let max_delay = c.optional(loc, obj, ("max_delay", None), or_null(Checker::int));
    Some(RetryPolicy {
        max_retries: max_retries?,
        strategy: strategy?,
        backoff_factor: backoff_factor?,
        exponent: exponent?,
        max_delay: max_delay?,
    })
}

fn store_config(c: &mut Checker, loc: &[Value], v: &Value) -> Option<StoreConfig> {
    let obj = c.model(loc, v, Some("StoreConfig"))?;
    let required_keys = c.optional(loc, obj, ("required_keys", Vec::new()), Checker::str_list);
    let default_values = c.optional(
        loc,
        obj,
        ("default_values", BTreeMap::new()),
        Checker::str_dict,
    );
    Some(StoreConfig {
        required_keys: required_keys?,
        default_values: default_values?,
    })
}

fn triggers(c: &mut Checker, loc: &[Value], v: &Value) -> Option<Vec<Trigger>> {
    c.list_of(loc, v, |c, tloc, item| {
        let obj = c.model(tloc, item, Some("Trigger"))?;
        let kind = c
            .required(tloc, obj, "type")
            .and_then(|t| c.enumeration(&at(tloc, "type"), t, &TRIGGER_TYPES))
            .map(|t| match t.as_str() {
                "EVENT" => TriggerType::Event,
                _ => TriggerType::Cron,
            });
        let value = c.optional(tloc, obj, ("value", Map::new()), |c, l, x| {
            c.dict(l, x).cloned()
        });
        Some(Trigger {
            kind: kind?,
            value: value?,
        })
    })
}

/// A graph's `webhooks` (ours): `{url, events?, secret}` each.
fn webhooks(c: &mut Checker, loc: &[Value], v: &Value) -> Option<Vec<Webhook>> {
    c.list_of(loc, v, |c, hloc, item| {
        let obj = c.model(hloc, item, Some("Webhook"))?;
        let url = c.field(hloc, obj, "url", Checker::string);
        let secret = c.field(hloc, obj, "secret", Checker::string);
        let default = vec!["run.succeeded".to_string(), "run.failed".to_string()];
        let events = c.optional(hloc, obj, ("events", default), Checker::str_list);
        Some(Webhook {
            url: url?,
            events: events?,
            secret: secret?,
        })
    })
}

/// One node of `PUT /nodes/`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRegistration {
    /// Node (class) name.
    pub name: String,
    /// Inputs JSON schema.
    pub inputs_schema: Map<String, Value>,
    /// Outputs JSON schema.
    pub outputs_schema: Map<String, Value>,
    /// Secret names.
    pub secrets: Vec<String>,
}

/// `PUT /nodes/`.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterNodes {
    /// Registering runtime.
    pub runtime_name: String,
    /// Nodes.
    pub nodes: Vec<NodeRegistration>,
}

impl Model for RegisterNodes {
    fn check(v: &Value, c: &mut Checker) -> Option<Self> {
        let obj = top(v, c)?;
        let l = body_loc();
        let runtime_name = c.field(&l, obj, "runtime_name", Checker::string);
        let nodes = c.required(&l, obj, "nodes").and_then(|n| {
            c.list_of(&at(&l, "nodes"), n, |c, nloc, item| {
                let o = c.model(nloc, item, Some("NodeRegistrationModel"))?;
                let name = c
                    .required(nloc, o, "name")
                    .and_then(|x| c.string(&at(nloc, "name"), x));
                let inputs_schema = c
                    .required(nloc, o, "inputs_schema")
                    .and_then(|x| c.dict(&at(nloc, "inputs_schema"), x))
                    .cloned();
                let outputs_schema = c
                    .required(nloc, o, "outputs_schema")
                    .and_then(|x| c.dict(&at(nloc, "outputs_schema"), x))
                    .cloned();
                let secrets = c
                    .required(nloc, o, "secrets")
                    .and_then(|x| c.str_list(&at(nloc, "secrets"), x));
                Some(NodeRegistration {
                    name: name?,
                    inputs_schema: inputs_schema?,
                    outputs_schema: outputs_schema?,
                    secrets: secrets?,
                })
            })
        });
        Some(Self {
            runtime_name: runtime_name?,
            nodes: nodes?,
        })
    }
}

/// `POST /graph/{name}/trigger`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TriggerGraph {
    /// Initial store.
    pub store: BTreeMap<String, String>,
    /// Root input overrides.
    pub inputs: BTreeMap<String, String>,
    /// Delay before the root may run, ms (≥ 0).
    pub start_delay: i64,
}

impl Model for TriggerGraph {
    fn check(v: &Value, c: &mut Checker) -> Option<Self> {
        let obj = top(v, c)?;
        let l = body_loc();
        let store = c.optional(&l, obj, ("store", BTreeMap::new()), Checker::str_dict);
        let inputs = c.optional(&l, obj, ("inputs", BTreeMap::new()), Checker::str_dict);
        let start_delay = c.optional(&l, obj, ("start_delay", 0), |c, l, x| c.int_ge(l, x, 0));
        Some(Self {
            store: store?,
            inputs: inputs?,
            start_delay: start_delay?,
        })
    }
}

/// `POST /state/{id}/executed`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutedBody {
    /// One object per output.
    pub outputs: Vec<Map<String, Value>>,
}

impl Model for ExecutedBody {
    fn check(v: &Value, c: &mut Checker) -> Option<Self> {
        only_field(v, c, "outputs", |c, loc, raw| {
            c.list_of(loc, raw, |c, l, item| c.dict(l, item).cloned())
        })
        .map(|outputs| Self { outputs })
    }
}

/// A request body with one required field, `$key`, read by `$check`
/// (a `Checker` method or closure taking the checker, the field's location
/// and its value).
macro_rules! one_field_body {
    ($(#[$doc:meta])* $name:ident { $(#[$fdoc:meta])* $field:ident: $ty:ty } = $key:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $(#[$fdoc])*
            pub $field: $ty,
        }

        impl Model for $name {
            fn check(v: &Value, c: &mut Checker) -> Option<Self> {
                only_field(v, c, $key, $check).map(|$field| Self { $field })
            }
        }
    };
}

one_field_body!(
    /// `POST /state/{id}/errored`.
    ErroredBody {
        /// Error text.
        error: String
    } = "error", Checker::string
);

one_field_body!(
    /// `POST /state/{id}/prune`.
    PruneBody {
        /// Prune data.
        data: Map<String, Value>
    } = "data", |c: &mut Checker, l: &[Value], x| c.dict(l, x).cloned()
);

one_field_body!(
    /// `POST /state/{id}/re-enqueue-after`.
    ReEnqueueBody {
        /// Delay in ms (> 0).
        enqueue_after: i64
    } = "enqueue_after", |c: &mut Checker, l: &[Value], x| c.int_gt(l, x, 0)
);

one_field_body!(
    /// `POST /state/{id}/manual-retry`.
    ManualRetryBody {
        /// Fan-out id of the new copy (any string).
        fanout_id: String
    } = "fanout_id", Checker::string
);

/// `POST /states/enqueue`.
#[derive(Debug, Clone, PartialEq)]
pub struct EnqueueBody {
    /// Node names.
    pub nodes: Vec<String>,
    /// Most states to hand out.
    pub batch_size: i64,
}

impl Model for EnqueueBody {
    fn check(v: &Value, c: &mut Checker) -> Option<Self> {
        let obj = top(v, c)?;
        let l = body_loc();
        let nodes = c.field(&l, obj, "nodes", Checker::str_list);
        let batch_size = c.field(&l, obj, "batch_size", Checker::int);
        Some(Self {
            nodes: nodes?,
            batch_size: batch_size?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check<T: Model>(v: Value) -> Result<T, Vec<Value>> {
        let mut c = Checker::default();
        match T::check(&v, &mut c) {
            Some(t) if c.errors.is_empty() => Ok(t),
            _ => Err(c.errors),
        }
    }

    #[test]
    fn enqueue_missing_batch_size_matches_fastapi() {
        let e = check::<EnqueueBody>(json!({"nodes": ["a"]})).unwrap_err();
        assert_eq!(
            e,
            vec![
                json!({"type":"missing","loc":["body","batch_size"],"msg":"Field required","input":{"nodes":["a"]}})
            ]
        );
    }

    #[test]
    fn graph_body_defaults_and_errors() {
        let ok = check::<UpsertGraph>(json!({
            "secrets": {},
            "nodes": [{"node_name": "N", "namespace": "ns", "identifier": "a", "inputs": {}}],
        }))
        .unwrap();
        assert_eq!(ok.spec.retry_policy, RetryPolicy::default());
        assert!(ok.spec.nodes[0].next_nodes.is_none());

        let e = check::<UpsertGraph>(json!({
            "nodes": [{"node_name": 1, "namespace": "ns", "identifier": "a", "inputs": {},
                       "unites": {"identifier": "x", "strategy": "SOME"}}],
            "retry_policy": {"strategy": "NOPE", "max_retries": "x"},
            "triggers": [{"type": "CRON", "value": []}],
        }))
        .unwrap_err();
        let locs: Vec<String> = e.iter().map(|i| i["loc"].to_string()).collect();
        assert_eq!(
            locs,
            [
                r#"["body","secrets"]"#,
                r#"["body","nodes",0,"node_name"]"#,
                r#"["body","nodes",0,"unites","strategy"]"#,
                r#"["body","retry_policy","max_retries"]"#,
                r#"["body","retry_policy","strategy"]"#,
                r#"["body","triggers",0,"value"]"#,
            ]
        );
    }

    #[test]
    fn trigger_body_rules() {
        let t = check::<TriggerGraph>(json!({})).unwrap();
        assert_eq!(t, TriggerGraph::default());
        let e = check::<TriggerGraph>(json!({"inputs": {"a": 1}, "start_delay": -1})).unwrap_err();
        assert_eq!(e[0]["loc"], json!(["body", "inputs", "a"]));
        assert_eq!(e[1]["type"], "greater_than_equal");
    }

    #[test]
    fn signal_bodies() {
        assert!(check::<PruneBody>(json!({"data": null})).is_err());
        assert_eq!(
            check::<PruneBody>(json!({"data": {}})).unwrap().data.len(),
            0
        );
        assert_eq!(
            check::<ReEnqueueBody>(json!({"enqueue_after": "5000"}))
                .unwrap()
                .enqueue_after,
            5000
        );
        assert!(check::<ReEnqueueBody>(json!({"enqueue_after": 0})).is_err());
        assert!(check::<ManualRetryBody>(json!({"fanout_id": 3})).is_err());
        assert_eq!(
            check::<ManualRetryBody>(json!({"fanout_id": ""}))
                .unwrap()
                .fanout_id,
            ""
        );
        let e = check::<ExecutedBody>(json!({"outputs": [{"a": 1}, 2]})).unwrap_err();
        assert_eq!(e[0]["loc"], json!(["body", "outputs", 1]));
        let e = check::<ErroredBody>(json!([])).unwrap_err();
        assert_eq!(e[0]["type"], "model_attributes_type");
    }
}

/// `POST /v0/keys` (ours).
#[derive(Debug, Clone, PartialEq)]
pub struct CreateKey {
    /// What the key is for.
    pub name: String,
    /// Namespaces it reaches (`"*"`: all).
    pub namespaces: Vec<String>,
    /// `admin` (default) or `runtime`.
    pub scope: Option<String>,
    /// Its own rate limit.
    pub rate_limit_per_sec: Option<u32>,
}

impl Model for CreateKey {
    fn check(v: &Value, c: &mut Checker) -> Option<Self> {
        let obj = top(v, c)?;
        let l = body_loc();
        let name = c.field(&l, obj, "name", |c, loc, v| {
            let s = c.string(loc, v)?;
            let ok = (1..=128).contains(&s.chars().count());
            if !ok {
                c.error(
                    "value_error",
                    loc,
                    "Value error, a key's name has 1 to 128 characters",
                    v,
                    None,
                );
            }
            ok.then_some(s)
        });
        let namespaces = c.field(&l, obj, "namespaces", |c, loc, v| {
            let list = c.str_list(loc, v)?;
            let bad: Vec<usize> = (0..list.len())
                .filter(|i| !crate::routes::keys::valid_namespace(&list[*i]))
                .collect();
            for i in &bad {
                let msg =
                    "Value error, a namespace name ([A-Za-z0-9_-], 1 to 64 characters) or \"*\"";
                c.error("value_error", &at(loc, *i), msg, &v[*i], None);
            }
            if list.is_empty() {
                c.error(
                    "too_short",
                    loc,
                    "List should have at least 1 item after validation, not 0",
                    v,
                    None,
                );
            }
            (bad.is_empty() && !list.is_empty()).then_some(list)
        });
        let scope = c.optional(&l, obj, ("scope", None), |c, loc, v| {
            c.enumeration(loc, v, &["admin", "runtime"]).map(Some)
        });
        let rate = c.optional(&l, obj, ("rate_limit_per_sec", None), |c, loc, v| {
            c.int_ge(loc, v, 1)
                .map(|n| Some(u32::try_from(n).unwrap_or(u32::MAX)))
        });
        Some(Self {
            name: name?,
            namespaces: namespaces?,
            scope: scope?,
            rate_limit_per_sec: rate?,
        })
    }
}
