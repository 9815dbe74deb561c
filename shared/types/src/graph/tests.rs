//! Tests of graph validation, analysis, registry checks and fingerprints.

use super::*;
use crate::retry::RetryPolicy;
use serde_json::{Value, json};
use std::collections::BTreeSet;

fn spec(value: Value) -> GraphSpec {
    serde_json::from_value(value).unwrap()
}

/// A node `id` with children `next`, no inputs.
fn n(id: &str, next: &[&str]) -> Value {
    json!({
        "node_name": format!("N{id}"),
        "namespace": "ns",
        "identifier": id,
        "inputs": {},
        "next_nodes": if next.is_empty() { Value::Null } else { json!(next) },
    })
}

/// A unites node `id` targeting `target`, with children `next`.
fn u(id: &str, target: &str, next: &[&str]) -> Value {
    let mut v = n(id, next);
    v["unites"] = json!({ "identifier": target });
    v
}

fn with_inputs(mut node: Value, inputs: Value) -> Value {
    node["inputs"] = inputs;
    node
}

fn graph(nodes: Vec<Value>) -> GraphSpec {
    spec(json!({ "secrets": {}, "nodes": nodes }))
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn errors_of(s: &GraphSpec) -> Vec<String> {
    Graph::analyse(s).unwrap_err()
}

// ----- models ---------------------------------------------------------

#[test]
fn upsert_body_defaults_and_required_fields() {
    let s = spec(json!({
        "secrets": {},
        "nodes": [{"node_name": "A", "namespace": "ns", "identifier": "a", "inputs": {"z": "1", "a": "2"}}],
    }));
    assert_eq!(s.retry_policy, RetryPolicy::default());
    assert_eq!(s.store_config, StoreConfig::default());
    assert!(s.triggers.is_empty());
    let node = &s.nodes[0];
    assert_eq!(node.next_nodes, None);
    assert_eq!(node.unites, None);
    // Input order is the request order.
    assert_eq!(node.inputs.keys().collect::<Vec<_>>(), ["z", "a"]);
    let back = serde_json::to_value(&s).unwrap();
    assert_eq!(
        back["nodes"][0]["next_nodes"],
        json!([]),
        "null written back as []"
    );
    assert_eq!(back["nodes"][0]["unites"], Value::Null);
    assert_eq!(
        back["store_config"],
        json!({"required_keys": [], "default_values": {}})
    );

    assert!(serde_json::from_value::<GraphSpec>(json!({"nodes": []})).is_err());
    assert!(serde_json::from_value::<GraphSpec>(json!({"secrets": {}})).is_err());
}

#[test]
fn unites_and_trigger_models() {
    let un: Unites = serde_json::from_value(json!({"identifier": "x"})).unwrap();
    assert_eq!(un.strategy, UnitesStrategy::AllSuccess);
    let un: Unites =
        serde_json::from_value(json!({"identifier": "x", "strategy": "ALL_DONE"})).unwrap();
    assert_eq!(un.strategy, UnitesStrategy::AllDone);
    assert!(
        serde_json::from_value::<Unites>(json!({"identifier": "x", "strategy": "ANY"})).is_err()
    );

    let t: Trigger =
        serde_json::from_value(json!({"type": "CRON", "value": {"expression": "* * * * *"}}))
            .unwrap();
    assert_eq!(t.kind, TriggerType::Cron);
    assert_eq!(t.cron_expression(), Some("* * * * *"));
    let t: Trigger = serde_json::from_value(json!({"type": "CRON"})).unwrap();
    assert_eq!(t.cron_expression(), None);
    assert!(serde_json::from_value::<Trigger>(json!({"type": "WEBHOOK"})).is_err());
    assert_eq!(
        serde_json::to_value(&t).unwrap(),
        json!({"type": "CRON", "value": {}})
    );

    let s = spec(json!({
        "secrets": {}, "nodes": [],
        "triggers": [
            {"type": "CRON", "value": {"expression": "@daily"}},
            {"type": "CRON", "value": {"expression": "@hourly"}},
            {"type": "CRON", "value": {"expression": "@daily"}},
        ]
    }));
    let keys: Vec<String> = s.cron_specs().iter().map(|c| c.key()).collect();
    assert_eq!(keys, ["@daily", "@hourly"]);
}

#[test]
fn normalize_trims_names_identifiers_and_keys() {
    let mut s = spec(json!({
        "secrets": {},
        "nodes": [{
            "node_name": " A ", "namespace": " ns ", "identifier": " a\t",
            "inputs": {}, "next_nodes": [" b "], "unites": {"identifier": " c "}
        }],
        "store_config": {"required_keys": [" k "], "default_values": {" d ": "v"}}
    }));
    s.normalize();
    let node = &s.nodes[0];
    assert_eq!(node.node_name, "A");
    assert_eq!(node.namespace, " ns ", "namespace is not trimmed");
    assert_eq!(node.identifier, "a");
    assert_eq!(node.next(), ["b"]);
    assert_eq!(node.unites.as_ref().unwrap().identifier, "c");
    assert_eq!(s.store_config.required_keys, ["k"]);
    assert_eq!(
        s.store_config.default_values.get("d").map(String::as_str),
        Some("v")
    );
}

// ----- field validation ----------------------------------------------

fn field_errors(s: &GraphSpec) -> Vec<(Value, String)> {
    validate_fields(s)
        .into_iter()
        .map(|e| (serde_json::to_value(&e.loc).unwrap(), e.msg))
        .collect()
}

#[test]
fn valid_body_has_no_field_errors() {
    let s = spec(json!({
        "secrets": {"k": ""},
        "nodes": [n("a", &["b"]), n("b", &[])],
        "store_config": {"required_keys": ["x"], "default_values": {"y": "1"}},
        "triggers": [{"type": "CRON", "value": {"expression": "0 0 31 2 *"}}],
    }));
    assert!(validate_fields(&s).is_empty());
}

#[test]
fn node_field_errors() {
    let mut bad = n("store", &["x", " ", "x", "y", " y"]);
    bad["node_name"] = json!("  ");
    let mut empty_id = u(" ", "  ", &[]);
    empty_id["identifier"] = json!("");
    let s = graph(vec![bad, empty_id, n(" store ", &[])]);
    assert_eq!(
        field_errors(&s),
        vec![
            (json!(["nodes", 0, "node_name"]), "Value error, Node name cannot be empty".to_owned()),
            (
                json!(["nodes", 0, "identifier"]),
                "Value error, Node identifier cannot be reserved word 'store'".to_owned()
            ),
            (
                json!(["nodes", 0, "next_nodes"]),
                "Value error, Next node identifier cannot be empty\nNext node identifier x is not unique\nNext node identifier y is not unique".to_owned()
            ),
            (json!(["nodes", 1, "identifier"]), "Value error, Node identifier cannot be empty".to_owned()),
            (json!(["nodes", 1, "unites"]), "Value error, Unites identifier cannot be empty".to_owned()),
            (
                json!(["nodes", 2, "identifier"]),
                "Value error, Node identifier cannot be reserved word 'store'".to_owned()
            ),
        ]
    );
    let first = &validate_fields(&s)[0];
    assert_eq!(first.error_type(), "value_error");
    assert_eq!(first.ctx(), Some(json!({"error": {}})));
}

#[test]
fn node_retry_policy_overrides_the_graph_policy() {
    let spec: GraphSpec = serde_json::from_value(json!({
        "secrets": {},
        "retry_policy": {"max_retries": 1},
        "nodes": [
            {"node_name": "A", "namespace": "ns", "identifier": "a", "inputs": {}, "next_nodes": ["b"],
             "retry_policy": {"max_retries": 7, "strategy": "LINEAR"}},
            {"node_name": "B", "namespace": "ns", "identifier": "b", "inputs": {},
             "retry_policy": {"max_retries": -2}},
        ]
    }))
    .unwrap();
    assert_eq!(spec.retry_policy_for("a").max_retries, 7);
    assert_eq!(spec.retry_policy_for("zz").max_retries, 1);
    let errs = validate_fields(&spec);
    let locs: Vec<_> = errs
        .iter()
        .map(|e| serde_json::to_value(&e.loc).unwrap())
        .collect();
    assert!(
        locs.contains(&json!(["nodes", 1, "retry_policy", "max_retries"])),
        "{locs:?}"
    );
    // Unset node policies are not serialised (the upstream node shape).
    let v = serde_json::to_value(&spec.nodes[1]).unwrap();
    assert!(v.get("retry_policy").is_some());
    let mut plain = spec.nodes[1].clone();
    plain.retry_policy = None;
    assert!(
        serde_json::to_value(&plain)
            .unwrap()
            .get("retry_policy")
            .is_none()
    );
}

#[test]
fn retry_policy_field_errors_are_prefixed() {
    let s = spec(json!({
        "secrets": {}, "nodes": [],
        "retry_policy": {"max_retries": -1, "backoff_factor": 0, "exponent": -3, "max_delay": 0}
    }));
    let errs = validate_fields(&s);
    let locs: Vec<Value> = errs
        .iter()
        .map(|e| serde_json::to_value(&e.loc).unwrap())
        .collect();
    assert_eq!(
        locs,
        vec![
            json!(["retry_policy", "max_retries"]),
            json!(["retry_policy", "backoff_factor"]),
            json!(["retry_policy", "exponent"]),
            json!(["retry_policy", "max_delay"]),
        ]
    );
    assert_eq!(errs[0].error_type(), "greater_than_equal");
    assert_eq!(errs[0].ctx(), Some(json!({"ge": 0})));
    assert_eq!(errs[1].error_type(), "greater_than");
    assert_eq!(errs[1].msg, "Input should be greater than 0");
}

#[test]
fn store_config_field_errors() {
    let s = spec(json!({
        "secrets": {}, "nodes": [],
        "store_config": {
            "required_keys": ["a", " ", "b.c", " a ", "d"],
            "default_values": {"x": "1", " x": "2", "": "3", "p.q": "4"}
        }
    }));
    assert_eq!(
        field_errors(&s),
        vec![
            (
                json!(["store_config", "required_keys"]),
                "Value error, Key cannot be empty or contain only whitespace\nKey 'b.c' cannot contain '.' character\nKey 'a' is duplicated".to_owned()
            ),
            (
                json!(["store_config", "default_values"]),
                // BTreeMap order: "", " x", "p.q", "x"
                "Value error, Key cannot be empty or contain only whitespace\nKey 'p.q' cannot contain '.' character\nKey 'x' is duplicated".to_owned()
            ),
        ]
    );
}

#[test]
fn trigger_field_errors() {
    let s = spec(json!({
        "secrets": {}, "nodes": [],
        "triggers": [
            {"type": "CRON", "value": {"expression": "not a cron"}},
            {"type": "CRON", "value": {}},
            {"type": "CRON", "value": {"expression": 5}},
            {"type": "CRON", "value": {"expression": "@daily", "other": "x", "tz": 1, "n": null}},
            {"type": "CRON", "value": {"expression": "H * * * *"}},
        ]
    }));
    let errs = validate_fields(&s);
    assert_eq!(
        field_errors(&s),
        vec![
            (
                json!(["triggers", 0, "expression"]),
                "Value error, Invalid cron expression".to_owned()
            ),
            (
                json!(["triggers", 1, "expression"]),
                "Field required".to_owned()
            ),
            (
                json!(["triggers", 2, "value", "expression"]),
                "Input should be a valid string".to_owned()
            ),
            (
                json!(["triggers", 4, "expression"]),
                "Value error, Invalid cron expression".to_owned()
            ),
        ]
    );
    assert_eq!(errs[1].error_type(), "missing");
    assert_eq!(errs[1].ctx(), None);
    assert_eq!(errs[2].error_type(), "string_type");
}

#[test]
fn field_error_helpers() {
    let e = FieldError::missing(["x".into()]).prefixed(["a".into(), 3usize.into()]);
    assert_eq!(
        serde_json::to_value(&e).unwrap(),
        json!({"loc": ["a", 3, "x"], "msg": "Field required", "kind": "missing"})
    );
    let back: FieldError = serde_json::from_value(json!({"loc": ["a", 3], "msg": "m"})).unwrap();
    assert_eq!(back.loc, vec![LocPart::Key("a".into()), LocPart::Index(3)]);
    assert_eq!(
        back.kind,
        FieldErrorKind::ValueError,
        "a value error unless said"
    );
}

// ----- analysis: valid graphs ------------------------------------------

#[test]
fn simple_chain_is_valid() {
    let s = graph(vec![
        with_inputs(n("a", &["b"]), json!({"x": "literal"})),
        with_inputs(n("b", &["c"]), json!({"x": "${{ a.outputs.o }}"})),
        with_inputs(
            n("c", &[]),
            json!({"x": "${{ a.outputs.o }}-${{ b.outputs.p }}"}),
        ),
    ]);
    let g = Graph::analyse(&s).unwrap();
    assert_eq!(g.root().identifier, "a");
    assert_eq!(g.nodes().len(), 3);
    assert_eq!(g.node("b").unwrap().node_name, "Nb");
    assert!(g.node("zz").is_none());
    assert_eq!(g.next_nodes("a"), ["b"]);
    assert!(g.next_nodes("c").is_empty());
    assert!(g.next_nodes("zz").is_empty());
    assert_eq!(g.ancestors("a"), &set(&[]));
    assert_eq!(g.ancestors("b"), &set(&["a"]));
    assert_eq!(g.ancestors("c"), &set(&["a", "b"]));
    assert!(g.ancestors("zz").is_empty());
    assert!(g.unites_targeting("a").is_empty());
    assert_eq!(g.spec(), &s);
}

#[test]
fn analyse_stores_the_normalised_spec() {
    let mut root = n(" a ", &[" b"]);
    root["node_name"] = json!(" A ");
    let s = graph(vec![root, n("b", &[])]);
    let g = Graph::analyse(&s).unwrap();
    assert_eq!(g.root().identifier, "a");
    assert_eq!(g.root().node_name, "A");
    assert_eq!(g.next_nodes("a"), ["b"]);
}

#[test]
fn unites_target_that_is_not_a_direct_parent() {
    // n1 → n2 → n3 (unites n1): ancestors(n3) = {n1}; n2 is not one.
    let s = graph(vec![n("n1", &["n2"]), n("n2", &["n3"]), u("n3", "n1", &[])]);
    let g = Graph::analyse(&s).unwrap();
    assert_eq!(g.ancestors("n3"), &set(&["n1"]));
    assert_eq!(g.unites_targeting("n1"), ["n3"]);
}

#[test]
fn unites_on_a_sibling() {
    // n1 → [n2, n3], n3 unites n2: ancestors(n3) = {n1, n2}.
    let s = graph(vec![
        n("n1", &["n2", "n3"]),
        n("n2", &[]),
        u("n3", "n2", &[]),
    ]);
    let g = Graph::analyse(&s).unwrap();
    assert_eq!(g.ancestors("n3"), &set(&["n1", "n2"]));
}

#[test]
fn unites_children_are_analysed_regardless_of_next_nodes_order() {
    for order in [["n3", "n2"], ["n2", "n3"]] {
        let s = graph(vec![
            n("n1", &order),
            n("n2", &[]),
            u("n3", "n2", &["n4"]),
            with_inputs(
                n("n4", &[]),
                json!({"x": "${{ n3.outputs.a }}${{ n2.outputs.b }}"}),
            ),
        ]);
        let g = Graph::analyse(&s).unwrap_or_else(|e| panic!("{order:?}: {e:?}"));
        assert_eq!(g.ancestors("n4"), &set(&["n1", "n2", "n3"]));
    }
}

#[test]
fn children_of_unites_nodes_see_the_unites_node() {
    // n1 → n2 → n3 (unites n1) → n4: upstream gave {n1}; the lineage has n3 too.
    let s = graph(vec![
        n("n1", &["n2"]),
        n("n2", &["n3"]),
        u("n3", "n1", &["n4"]),
        with_inputs(n("n4", &[]), json!({"x": "${{ n3.outputs.r }}"})),
    ]);
    let g = Graph::analyse(&s).unwrap();
    assert_eq!(g.ancestors("n4"), &set(&["n1", "n3"]));
}

#[test]
fn diamond_ancestors_are_the_intersection() {
    let s = graph(vec![
        n("a", &["b", "c"]),
        n("b", &["d"]),
        n("c", &["d"]),
        n("d", &["e"]),
        n("e", &[]),
    ]);
    let g = Graph::analyse(&s).unwrap();
    assert_eq!(g.ancestors("d"), &set(&["a"]));
    assert_eq!(g.ancestors("e"), &set(&["a", "d"]));
    // Referencing one branch from the join is rejected.
    let s = graph(vec![
        n("a", &["b", "c"]),
        n("b", &["d"]),
        n("c", &["d"]),
        with_inputs(
            n("d", &[]),
            json!({"x": "${{ b.outputs.o }}", "y": "${{ a.outputs.o }}"}),
        ),
    ]);
    assert_eq!(
        errors_of(&s),
        ["Input ${{ b.outputs.o }} depends on b but b is not a parent of d"]
    );
}

#[test]
fn unites_node_as_direct_child_of_its_target_is_allowed() {
    let s = graph(vec![n("a", &["b", "m"]), n("b", &["m"]), u("m", "a", &[])]);
    let g = Graph::analyse(&s).unwrap();
    assert_eq!(g.ancestors("m"), &set(&["a"]));
    assert_eq!(g.unites_targeting("a"), ["m"]);
}

#[test]
fn store_dependencies_need_declared_keys() {
    let s = spec(json!({
        "secrets": {},
        "nodes": [with_inputs(n("a", &[]), json!({"x": "${{ store.k }}", "y": "${{ store.outputs.d }}"}))],
        "store_config": {"required_keys": ["k"], "default_values": {"d": "1"}},
    }));
    assert!(Graph::analyse(&s).is_ok());
    let s = graph(vec![with_inputs(
        n("a", &[]),
        json!({"x": "${{ store.k }}"}),
    )]);
    assert_eq!(
        errors_of(&s),
        ["Input ${{ store.k }} depends on k but k is not a required key or a default value"]
    );
}

// ----- analysis: errors -------------------------------------------------

#[test]
fn structural_errors_are_all_reported() {
    let mut s = graph(vec![
        n("a", &["b", "ghost"]),
        n("b", &[]),
        n("b", &[]),
        u("s", "s", &[]),
        u("t", "missing", &[]),
    ]);
    s.secrets.insert(String::new(), "v".into());
    let errs = errors_of(&s);
    assert_eq!(
        errs,
        vec![
            "Secrets cannot be empty",
            "Node identifier b is not unique",
            "Node identifier ghost does not exist in the graph",
            "Node s has an unites target s that is the same as the node itself",
            "Node t has an unites target missing that does not exist",
            "There should be exactly one root node in the graph but found 2 nodes with zero in-degree: ['a', 'b']",
        ]
    );
}

#[test]
fn root_count_errors() {
    assert_eq!(
        errors_of(&graph(vec![])),
        [
            "There should be exactly one root node in the graph but found 0 nodes with zero in-degree: []"
        ]
    );
    // A cycle with no root: root error plus every node of the cycle.
    assert_eq!(
        errors_of(&graph(vec![n("a", &["b"]), n("b", &["a"])])),
        [
            "There should be exactly one root node in the graph but found 0 nodes with zero in-degree: []",
            "Node a is not acyclic",
            "Node b is not acyclic",
        ]
    );
    // A unites node counts as having a parent; a root with unites is not a root.
    assert_eq!(
        errors_of(&graph(vec![u("a", "b", &["b"]), n("b", &[])])),
        [
            "There should be exactly one root node in the graph but found 0 nodes with zero in-degree: []",
            "Node a is not acyclic",
            "Node b is not acyclic",
        ]
    );
    let errs = errors_of(&graph(vec![n("it's", &[]), n("x", &[])]));
    assert_eq!(
        errs,
        [
            r#"There should be exactly one root node in the graph but found 2 nodes with zero in-degree: ["it's", 'x']"#
        ]
    );
}

#[test]
fn connectivity_and_cycles() {
    let s = graph(vec![
        n("a", &["b"]),
        n("b", &["b2"]),
        n("b2", &["b"]),
        n("x", &["y"]),
        n("y", &["x"]),
        u("lonely", "a", &[]),
    ]);
    assert_eq!(
        errors_of(&s),
        [
            "Node x is not connected to the root node",
            "Node y is not connected to the root node",
            "Node lonely is not connected to the root node",
            "Node b is not acyclic",
            "Node b2 is not acyclic",
            "Node x is not acyclic",
            "Node y is not acyclic",
        ]
    );
    // Self loop.
    assert_eq!(
        errors_of(&graph(vec![n("a", &["b"]), n("b", &["b"])])),
        ["Node b is not acyclic"]
    );
    // Cycle through a unites edge: b unites c, c is b's child.
    assert_eq!(
        errors_of(&graph(vec![
            n("a", &["b"]),
            u("b", "c", &["c"]),
            n("c", &[])
        ])),
        ["Node b is not acyclic", "Node c is not acyclic"]
    );
}

#[test]
fn input_errors_are_all_reported() {
    let s = graph(vec![
        with_inputs(
            n("a", &["b"]),
            json!({
                "num": 5,
                "obj": {"k": [1, true, null, 1.5, "s"]},
                "bad": "${{ a.inputs.x }}",
                "open": "x ${{ a.outputs.y",
                "self": "${{ a.outputs.o }}",
            }),
        ),
        with_inputs(
            n("b", &[]),
            json!({
                "fine": "${{ a.outputs.o }}",
                "ghost": "${{ zz.outputs.o }}${{ zz.outputs.p }}${{ b.outputs.q }}",
            }),
        ),
    ]);
    assert_eq!(
        errors_of(&s),
        [
            "Input 5 is not a string",
            "Input {'k': [1, True, None, 1.5, 's']} is not a string",
            "Error creating dependent string for input ${{ a.inputs.x }} check syntax string: Invalid syntax string placeholder  a.inputs.x  for: ${{ a.inputs.x }}",
            "Error creating dependent string for input x ${{ a.outputs.y check syntax string: Invalid syntax string placeholder  a.outputs.y for: x ${{ a.outputs.y '${{' not closed",
            "Input ${{ a.outputs.o }} depends on a but a is not a parent of a",
            "Input ${{ zz.outputs.o }}${{ zz.outputs.p }}${{ b.outputs.q }} depends on zz but zz is not a parent of b",
            "Input ${{ zz.outputs.o }}${{ zz.outputs.p }}${{ b.outputs.q }} depends on b but b is not a parent of b",
        ]
    );
}

// ----- registry verification ---------------------------------------------

fn schema(props: Value) -> Value {
    json!({"type": "object", "properties": props})
}

fn registry(namespace: &str, name: &str) -> Option<RegisteredNodeSchema> {
    let s = |v: Value| schema(v);
    let (inputs, outputs, secrets) = match name {
        "Na" => (
            s(json!({"x": {"type": "string", "title": "X"}})),
            s(json!({"o": {"type": "string"}, "n": {"type": "integer"}})),
            vec!["api_key"],
        ),
        "Nb" => (
            s(json!({
                "x": {"type": "string", "default": "d"},
                "y": {"type": "integer"},
                "z": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "w": {"type": "string"},
            })),
            s(json!({})),
            vec!["api_key", "db"],
        ),
        _ => return None,
    };
    (namespace == "ns").then(|| RegisteredNodeSchema {
        name: name.into(),
        namespace: namespace.into(),
        inputs_schema: inputs,
        outputs_schema: outputs,
        secrets: secrets.into_iter().map(String::from).collect(),
    })
}

#[test]
fn registry_verification_reports_the_three_checks() {
    let mut ghost = n("c", &["b"]);
    ghost["node_name"] = json!("Ghost");
    let s = spec(json!({
        "secrets": {"api_key": "v"},
        "nodes": [
            with_inputs(n("a", &["c"]), json!({"x": "lit", "extra": "ignored"})),
            with_inputs(n("b", &[]), json!({
                "x": "${{ a.outputs.o }}",
                "y": "${{ a.outputs.n }}",
                "z": "${{ a.outputs.missing }}${{ store.k }}",
                "v": "${{ c.outputs.q }}",
            })),
            ghost,
        ],
        "store_config": {"required_keys": ["k"]},
    }));
    let g = Graph::analyse(&s).unwrap();
    let calls = std::cell::Cell::new(0);
    let errs = verify_against_registry(&g, |ns, name| {
        calls.set(calls.get() + 1);
        registry(ns, name)
    });
    assert_eq!(calls.get(), 3);
    assert_eq!(
        errs,
        [
            "Node Ghost in namespace ns does not exist.",
            "Secret db is required but not present in the graph template",
            "Input y in node Nb in namespace ns is not a string",
            "Input z in node Nb in namespace ns is not a string",
            "Input w in node Nb in namespace ns is not present in the graph template",
            "Field n in node Na in namespace ns is not a string",
            "Field missing in node Na in namespace ns does not exist",
            "Node Ghost in namespace ns does not exist",
            "Node Ghost in namespace ns does not exist",
        ]
    );
}

#[test]
fn registry_verification_passes_for_a_consistent_graph() {
    let s = spec(json!({
        "secrets": {"api_key": "v"},
        "nodes": [
            with_inputs(n("a", &[]), json!({"x": "${{ store.k }}"})),
        ],
        "store_config": {"default_values": {"k": "1"}},
    }));
    let g = Graph::analyse(&s).unwrap();
    assert!(verify_against_registry(&g, registry).is_empty());
}

#[test]
fn input_fields_and_string_properties() {
    let s = schema(json!({"b": {"type": "string"}, "a": {"type": "string"}, "c": {}}));
    assert_eq!(input_fields(&s), ["b", "a", "c"]);
    assert!(input_fields(&json!({"type": "object"})).is_empty());
    assert!(input_fields(&json!("nope")).is_empty());
    assert!(is_string_property(
        &json!({"type": "string", "default": "x", "title": "T"})
    ));
    assert!(!is_string_property(&json!({"type": "integer"})));
    assert!(!is_string_property(
        &json!({"type": "string", "enum": ["a"]})
    ));
    assert!(!is_string_property(
        &json!({"type": "string", "format": "date-time"})
    ));
    assert!(!is_string_property(
        &json!({"anyOf": [{"type": "string"}, {"type": "null"}]})
    ));
}

// ----- fingerprint ------------------------------------------------------

#[test]
fn fingerprint_matches_the_spec_test_vector() {
    let parents = vec![
        ("split".to_owned(), "507f1f77bcf86cd799439012".to_owned()),
        ("root".to_owned(), "507f1f77bcf86cd799439011".to_owned()),
    ];
    let fp = unites_fingerprint("Merger", "ns", "merger", "g", "r-1", 0, &parents, "");
    assert_eq!(
        fp,
        "8be7e2250243ee2098538bb7476bce6d170c6e4f806293174bdade2d6a0cf045"
    );
    let other = unites_fingerprint("Merger", "ns", "merger", "g", "r-1", 1, &parents, "");
    assert_ne!(fp, other);
    let manual = unites_fingerprint("Merger", "ns", "merger", "g", "r-1", 0, &parents, "f");
    assert_ne!(fp, manual);
}

#[test]
fn canonical_json_is_sorted_compact_and_ascii() {
    let v = json!({
        "b": [1, -2, true, null, 1.5],
        "a": {"z": "é😀\"\\\n\u{1}\u{7f}", "y": "~ "},
    });
    assert_eq!(
        canonical_json(&v),
        r#"{"a":{"y":"~ ","z":"\u00e9\ud83d\ude00\"\\\n\u0001\u007f"},"b":[1,-2,true,null,1.5]}"#
    );
}

/// The field errors of a one-node graph with one trigger of `kind`.
fn trigger_errors(kind: &str, value: Value) -> Vec<(Value, String)> {
    let mut s = spec(json!({"secrets": {}, "nodes": [n("a", &[])],
        "triggers": [{"type": kind, "value": value}]}));
    s.normalize();
    field_errors(&s)
}

#[test]
fn event_triggers_bind_subjects_users_may_bind() {
    let with = |value: Value| trigger_errors("EVENT", value);
    let good = json!({"subject": "orders.*.created", "store": {"x": "/id"}, "inputs": {"t": ""},
                      "idempotency_key": "/id"});
    assert_eq!(with(good.clone()), vec![]);
    let s =
        spec(json!({"secrets": {}, "nodes": [], "triggers": [{"type": "EVENT", "value": good}]}));
    assert_eq!(s.event_bindings()[0].subject, "orders.*.created");
    assert!(s.cron_specs().is_empty());
    for (value, says) in [
        (json!({}), "subject"),
        (json!({"subject": 3}), "subject"),
        (json!({"subject": "exo.v1.x"}), "reserved"),
        (json!({"subject": ">"}), "literal"),
        (json!({"subject": "a", "extra": 1}), "unknown field"),
        (
            json!({"subject": "a", "store": {"x": "id"}}),
            "JSON Pointer",
        ),
    ] {
        let errors = with(value.clone());
        assert_eq!(errors.len(), 1, "{value}: {errors:?}");
        assert!(errors[0].1.contains(says), "{value}: {errors:?}");
    }
}

#[test]
fn cron_triggers_may_carry_inputs_and_store() {
    let with = |value: Value| trigger_errors("CRON", value);
    let good = json!({"expression": "@daily", "inputs": {"t": "x"}, "store": {"k": "v"}});
    assert_eq!(with(good), vec![]);
    let errors = with(json!({"expression": "@daily", "store": {"k": 1}}));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].1.contains("store maps names to strings"),
        "{errors:?}"
    );
}
