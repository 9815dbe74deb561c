//! Hostile input, as property tests (`cargo fuzz` needs a nightly
//! toolchain; this machine has only stable): every parser and decoder that
//! reads outside input gets arbitrary bytes and arbitrary JSON and must
//! answer (accept or refuse) without panicking, and what it accepts must
//! hold its invariants. Each target also replays its committed corpus
//! (`tests/fuzz-corpus/<target>/`: inputs that once found bugs or sit on
//! edges: deep nesting, huge numbers, lone surrogates, placeholders left
//! open, cycles). The suite runs 512 random cases per target (about a
//! second each); `PROPTEST_CASES=100000 cargo nextest run -p exo-e2e --test
//! fuzz` runs a long campaign, and a failure is kept in
//! `tests/tests/fuzz.proptest-regressions` and replayed first from then on.
//!
//! Targets: `placeholder` (the `${{ … }}` language), `graph` (template
//! decoding, field validation, graph analysis), `schema` (nodes' JSON-Schema
//! input checks), `request` (every HTTP request model, pydantic-style
//! checks), `message` (every wire message on NATS, the completion service's
//! zero-copy result decoder, CRON specs).

use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::{Value, json};

/// Every file of `tests/fuzz-corpus/<target>/`.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz-corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            (name, std::fs::read(e.path()).unwrap_or_default())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "corpus {target} is empty");
    out
}

/// Arbitrary JSON: scalars (big and small numbers, odd strings) nested in
/// arrays and objects up to a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::from)),
        ".{0,40}".prop_map(Value::from),
        "\\$\\{\\{ ?[a-z.]{0,12} ?\\}?\\}?".prop_map(Value::from),
        prop_oneof![
            Just("nodes"),
            Just("node_name"),
            Just("identifier"),
            Just("inputs"),
            Just("next_nodes"),
            Just("unites"),
            Just("secrets"),
            Just("CRON"),
            Just("EVENT"),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::btree_map(key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Object keys: the fields the models know, and anything.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "nodes",
            "node_name",
            "identifier",
            "namespace",
            "inputs",
            "next_nodes",
            "unites",
            "strategy",
            "secrets",
            "retry_policy",
            "max_retries",
            "backoff_factor",
            "store_config",
            "required_keys",
            "default_values",
            "triggers",
            "type",
            "value",
            "expression",
            "timezone",
            "webhooks",
            "url",
            "events",
            "secret",
            "outputs",
            "error",
            "data",
            "enqueue_after",
            "fanout_id",
            "store",
            "start_delay",
            "runtime_name",
            "name",
            "inputs_schema",
            "outputs_schema",
            "batch_size",
            "state_id",
            "attempt",
            "run_id",
            "graph_name",
            "scope",
            "rate_limit_per_sec",
            "subject",
            "catch_up",
            "max_catch_up",
        ])
        .prop_map(str::to_string),
        ".{0,12}",
    ]
}

/// A graph template that is mostly well formed, with arbitrary inputs,
/// edges and unites: reaches the analysis, not just the decoder.
fn graph_json() -> impl Strategy<Value = Value> {
    let ids = prop::sample::select(vec!["a", "b", "c", "d", "e"]);
    let node = (
        ids.clone(),
        prop::collection::vec(ids.clone(), 0..3),
        json_value(),
        prop::option::of(ids),
    )
        .prop_map(|(id, next, input, unites)| {
            let mut n = json!({"node_name": "N", "identifier": id, "namespace": "ns",
                "inputs": {"x": input}, "next_nodes": next});
            if let Some(u) = unites {
                n["unites"] = json!({"identifier": u});
            }
            n
        });
    (prop::collection::vec(node, 1..6), json_value())
        .prop_map(|(nodes, extra)| json!({"secrets": {}, "nodes": nodes, "retry_policy": extra}))
}

fn placeholder(s: &str) {
    use exo_types::placeholder::DependentString;
    if let Ok(d) = DependentString::parse(s) {
        // Whatever parses renders, and a string without placeholders
        // renders as itself.
        let rendered = d.render(|dep| Some(format!("<{}>", dep.field())));
        let rendered = rendered.expect("every dependency has a value");
        if !d.has_placeholders() {
            assert_eq!(rendered, s);
        }
        assert!(rendered.starts_with(d.head()));
    }
}

fn graph(v: &Value) {
    use exo_types::graph::{Graph, GraphSpec, validate_fields};
    if let Ok(spec) = serde_json::from_value::<GraphSpec>(v.clone()) {
        let field_errors = validate_fields(&spec);
        if let Ok(g) = Graph::analyse(&spec) {
            // An analysed graph has one root and every edge leads to a node.
            let root = g.root().identifier.clone();
            assert!(g.node(&root).is_some());
            for n in g.nodes() {
                for next in g.next_nodes(&n.identifier) {
                    assert!(g.node(next).is_some(), "edge to unknown {next}");
                }
            }
        }
        let _ = field_errors;
    }
}

fn schema(schema: &Value, instance: &Value) {
    if let Ok(v) = jsonschema::validator_for(schema) {
        let valid = v.is_valid(instance);
        assert_eq!(valid, v.iter_errors(instance).next().is_none());
    }
}

fn request(v: &Value) {
    use exo_api::models::*;
    use exo_api::validate::{Checker, Model};
    fn one<T: Model>(v: &Value) {
        let mut c = Checker::default();
        let accepted = T::check(v, &mut c).is_some();
        // Refusals always say why, at a location inside the body.
        if !accepted || !c.errors.is_empty() {
            assert!(!c.errors.is_empty(), "refused without a reason");
            for e in &c.errors {
                assert_eq!(e["loc"][0], "body", "{e}");
                assert!(e["msg"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
            }
        }
    }
    one::<UpsertGraph>(v);
    one::<RegisterNodes>(v);
    one::<TriggerGraph>(v);
    one::<ExecutedBody>(v);
    one::<ErroredBody>(v);
    one::<PruneBody>(v);
    one::<ReEnqueueBody>(v);
    one::<ManualRetryBody>(v);
    one::<EnqueueBody>(v);
    one::<CreateKey>(v);
    let mut c = Checker::default();
    if let Some(g) = UpsertGraph::check(v, &mut c) {
        graph(&serde_json::to_value(&g.spec).unwrap_or_default());
    }
}

fn message(bytes: &[u8]) {
    use exo_types::messages::*;
    let _ = serde_json::from_slice::<StartRun>(bytes);
    let _ = serde_json::from_slice::<TriggerCommand>(bytes);
    let _ = serde_json::from_slice::<CancelCommand>(bytes);
    let _ = serde_json::from_slice::<StateCreated>(bytes);
    let _ = serde_json::from_slice::<Dispatch>(bytes);
    let _ = serde_json::from_slice::<Executed>(bytes);
    let _ = serde_json::from_slice::<Errored>(bytes);
    let _ = serde_json::from_slice::<Pruned>(bytes);
    let _ = serde_json::from_slice::<Requeue>(bytes);
    let _ = serde_json::from_slice::<RunEvent>(bytes);
    let _ = serde_json::from_slice::<DeadLetter>(bytes);
    let _ = serde_json::from_slice::<Reply>(bytes);
    let _ = exo_api::validate::parse_body(bytes);
    if let Ok(r) = exo_completion::outputs::ExecutedResult::decode(bytes.to_vec().into()) {
        // The zero-copy decoder agrees with serde on what it accepts.
        let plain: Value = serde_json::from_slice(bytes).expect("decoded bytes are JSON");
        assert_eq!(
            r.outputs.len(),
            plain["outputs"].as_array().map_or(0, Vec::len)
        );
    }
    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(bytes) {
        let _ = exo_types::cron::CronSpec::from_value(&m);
    }
    if let Ok(s) = std::str::from_utf8(bytes) {
        let _ = exo_types::cron::CronSpec::from_key(s);
        let _ = exo_types::subjects::namespace_of(s);
        placeholder(s);
    }
}

#[test]
fn corpus_placeholder() {
    for (name, bytes) in corpus("placeholder") {
        eprintln!("placeholder/{name}");
        placeholder(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn corpus_graph_request_schema() {
    for target in ["graph", "request", "schema"] {
        for (name, bytes) in corpus(target) {
            eprintln!("{target}/{name}");
            let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
                // Not JSON (e.g. nested past the parser's limit): the API
                // refuses it as a body, with a reason.
                assert!(
                    exo_api::validate::parse_body(&bytes).is_err(),
                    "{target}/{name}"
                );
                continue;
            };
            match target {
                "graph" => graph(&v),
                "request" => request(&v),
                _ => schema(&v["schema"], &v["instance"]),
            }
        }
    }
}

#[test]
fn corpus_message() {
    for (name, bytes) in corpus("message") {
        eprintln!("message/{name}");
        message(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn fuzz_placeholder(s in "(.{0,8}(\\$\\{\\{ ?[a-z_.]{0,20} ?(\\}\\})?)?){0,4}") {
        placeholder(&s);
    }

    #[test]
    fn fuzz_graph(v in prop_oneof![graph_json(), json_value()]) {
        graph(&v);
    }

    #[test]
    fn fuzz_schema(s in json_value(), i in json_value()) {
        schema(&s, &i);
    }

    #[test]
    fn fuzz_request(v in prop_oneof![graph_json(), json_value()]) {
        request(&v);
    }

    #[test]
    fn fuzz_message_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        message(&bytes);
    }

    #[test]
    fn fuzz_message_json(v in json_value()) {
        message(v.to_string().as_bytes());
    }
}
