//! Model-level (HTTP 400) analysis: the graph of templates, its edges,
//! ancestors, unites and the input placeholders each node may use.

use super::model::{GraphSpec, NodeTemplate};
use crate::placeholder::{Dependency, DependentString};
use crate::pyrepr;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

static EMPTY_SET: BTreeSet<String> = BTreeSet::new();

/// An analysed, valid graph template: unique identifiers, one root, every
/// node reachable, acyclic, and every input placeholder resolvable.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    spec: GraphSpec,
    pub(super) index: HashMap<String, usize>,
    root: usize,
    unites_targeting: HashMap<String, Vec<String>>,
    ancestors: HashMap<String, BTreeSet<String>>,
}

impl Graph {
    /// Runs the model-level rules of spec §12.1 on a normalised copy of
    /// `spec` (see [`GraphSpec::normalize`]) and returns every error found,
    /// each worded as upstream words it (plus the additions listed in the
    /// module docs).
    pub fn analyse(spec: &GraphSpec) -> Result<Graph, Vec<String>> {
        let mut spec = spec.clone();
        spec.normalize();
        match analyse_nodes(&spec) {
            Ok(Analysed {
                index,
                root,
                ancestors,
            }) => {
                let mut unites_targeting: HashMap<String, Vec<String>> = HashMap::new();
                for node in &spec.nodes {
                    if let Some(u) = &node.unites {
                        unites_targeting
                            .entry(u.identifier.clone())
                            .or_default()
                            .push(node.identifier.clone());
                    }
                }
                Ok(Graph {
                    spec,
                    index,
                    root,
                    unites_targeting,
                    ancestors,
                })
            }
            Err(errors) => Err(errors),
        }
    }

    /// The (normalised) template this graph was built from.
    pub fn spec(&self) -> &GraphSpec {
        &self.spec
    }

    /// All nodes, in template order.
    pub fn nodes(&self) -> &[NodeTemplate] {
        &self.spec.nodes
    }

    /// The root node (the only node with zero in-degree).
    pub fn root(&self) -> &NodeTemplate {
        &self.spec.nodes[self.root]
    }

    /// The node with this identifier.
    pub fn node(&self, identifier: &str) -> Option<&NodeTemplate> {
        self.index.get(identifier).map(|&i| &self.spec.nodes[i])
    }

    /// The `next_nodes` of `identifier` (empty for unknown identifiers).
    pub fn next_nodes(&self, identifier: &str) -> &[String] {
        self.node(identifier).map(NodeTemplate::next).unwrap_or(&[])
    }

    /// Identifiers of the unites nodes whose `unites.identifier` is
    /// `target_identifier`, in template order.
    pub fn unites_targeting(&self, target_identifier: &str) -> &[String] {
        self.unites_targeting
            .get(target_identifier)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The static ancestors of `identifier`: the nodes guaranteed to be in
    /// the lineage of every state of that node, i.e. those whose outputs its
    /// inputs may reference (empty for the root and unknown identifiers).
    pub fn ancestors(&self, identifier: &str) -> &BTreeSet<String> {
        self.ancestors.get(identifier).unwrap_or(&EMPTY_SET)
    }
}

/// What a successful analysis knows about a graph.
struct Analysed {
    index: HashMap<String, usize>,
    root: usize,
    ancestors: HashMap<String, BTreeSet<String>>,
}

/// Runs every model-level rule, in upstream's order, collecting every
/// error.
fn analyse_nodes(spec: &GraphSpec) -> Result<Analysed, Vec<String>> {
    let mut a = Analysis::new(spec);
    a.check_secrets();
    a.index_identifiers();
    a.check_next_nodes_exist();
    a.resolve_unites_targets();
    a.next_edges = a.edges_by_position();
    let root = a.find_root();
    if let Some(root) = root {
        a.check_connected(root);
    }
    a.check_acyclic();
    // Static ancestors (None where they cannot be known).
    let ancestors = lineage_ancestors(&spec.nodes, &a.next_edges, &a.unites_target);
    a.check_inputs(&ancestors);
    match root {
        Some(root) if a.errors.is_empty() => Ok(Analysed {
            index: a.index,
            root,
            ancestors: spec
                .nodes
                .iter()
                .zip(ancestors)
                .map(|(node, anc)| (node.identifier.clone(), anc.unwrap_or_default()))
                .collect(),
        }),
        _ => Err(a.errors),
    }
}

/// The state of an analysis in progress: what the rules found so far.
struct Analysis<'s> {
    spec: &'s GraphSpec,
    nodes: &'s [NodeTemplate],
    errors: Vec<String>,
    /// Identifier → position (the first occurrence owns an identifier).
    index: HashMap<String, usize>,
    /// Per node: `None` if it unites nothing, `Some(None)` if its target is
    /// invalid, `Some(Some(t))` for target position `t`.
    unites_target: Vec<Option<Option<usize>>>,
    /// Per node: the positions of its existing `next_nodes`.
    next_edges: Vec<Vec<usize>>,
}

impl<'s> Analysis<'s> {
    fn new(spec: &'s GraphSpec) -> Self {
        Self {
            spec,
            nodes: &spec.nodes,
            errors: Vec::new(),
            index: HashMap::new(),
            unites_target: vec![None; spec.nodes.len()],
            next_edges: Vec::new(),
        }
    }

    /// Secret names are non-empty.
    fn check_secrets(&mut self) {
        if self.spec.secrets.keys().any(String::is_empty) {
            self.errors.push("Secrets cannot be empty".to_owned());
        }
    }

    /// Identifiers are unique; each duplicate is reported once.
    fn index_identifiers(&mut self) {
        let mut reported = HashSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if self.index.contains_key(&node.identifier) {
                if reported.insert(node.identifier.as_str()) {
                    self.errors
                        .push(format!("Node identifier {} is not unique", node.identifier));
                }
            } else {
                self.index.insert(node.identifier.clone(), i);
            }
        }
    }

    /// Every `next_nodes` entry names a node.
    fn check_next_nodes_exist(&mut self) {
        for node in self.nodes {
            for next in node.next() {
                if !self.index.contains_key(next) {
                    self.errors.push(format!(
                        "Node identifier {next} does not exist in the graph"
                    ));
                }
            }
        }
    }

    /// Unites targets exist and are not the node itself.
    fn resolve_unites_targets(&mut self) {
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(u) = &node.unites else { continue };
            let target = if u.identifier == node.identifier {
                self.errors.push(format!(
                    "Node {0} has an unites target {0} that is the same as the node itself",
                    node.identifier
                ));
                None
            } else if let Some(&t) = self.index.get(&u.identifier) {
                Some(t)
            } else {
                self.errors.push(format!(
                    "Node {} has an unites target {} that does not exist",
                    node.identifier, u.identifier
                ));
                None
            };
            self.unites_target[i] = Some(target);
        }
    }

    /// The `next_nodes` edges by position (unknown identifiers left out).
    fn edges_by_position(&self) -> Vec<Vec<usize>> {
        self.nodes
            .iter()
            .map(|node| {
                node.next()
                    .iter()
                    .filter_map(|id| self.index.get(id).copied())
                    .collect()
            })
            .collect()
    }

    /// Exactly one root; a unites node counts its target as a virtual
    /// parent.
    fn find_root(&mut self) -> Option<usize> {
        let mut in_degree = vec![0usize; self.nodes.len()];
        for &t in self.next_edges.iter().flatten() {
            in_degree[t] += 1;
        }
        for (i, target) in self.unites_target.iter().enumerate() {
            if target.is_some() {
                in_degree[i] += 1;
            }
        }
        let roots: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| in_degree[i] == 0)
            .collect();
        if let [r] = roots.as_slice() {
            return Some(*r);
        }
        let names: Vec<String> = roots
            .iter()
            .map(|&i| pyrepr::repr_str(&self.nodes[i].identifier))
            .collect();
        self.errors.push(format!(
            "There should be exactly one root node in the graph but found {} nodes with zero in-degree: [{}]",
            roots.len(),
            names.join(", ")
        ));
        None
    }

    /// Every node is reachable from the root along `next_nodes` edges.
    fn check_connected(&mut self, root: usize) {
        let mut reached = vec![false; self.nodes.len()];
        reached[root] = true;
        let mut queue = VecDeque::from([root]);
        while let Some(v) = queue.pop_front() {
            for &w in &self.next_edges[v] {
                if !reached[w] {
                    reached[w] = true;
                    queue.push_back(w);
                }
            }
        }
        for (node, _) in self.nodes.iter().zip(reached).filter(|(_, r)| !r) {
            self.errors.push(format!(
                "Node {} is not connected to the root node",
                node.identifier
            ));
        }
    }

    /// No cycle over `next_nodes` edges plus target → unites-node edges.
    fn check_acyclic(&mut self) {
        let mut all_edges = self.next_edges.clone();
        for (i, target) in self.unites_target.iter().enumerate() {
            if let Some(Some(t)) = target {
                all_edges[*t].push(i);
            }
        }
        let cyclic = nodes_on_cycles(&all_edges);
        for (node, _) in self.nodes.iter().zip(cyclic).filter(|(_, c)| *c) {
            self.errors
                .push(format!("Node {} is not acyclic", node.identifier));
        }
    }

    /// Every input is a string whose placeholders parse and reference an
    /// ancestor's outputs or a declared store key.
    fn check_inputs(&mut self, ancestors: &[Option<BTreeSet<String>>]) {
        for (node, anc) in self.nodes.iter().zip(ancestors) {
            for value in node.inputs.values() {
                let Some(s) = value.as_str() else {
                    self.errors
                        .push(format!("Input {} is not a string", pyrepr::str_of(value)));
                    continue;
                };
                match DependentString::parse(s) {
                    Ok(parsed) => self.check_dependencies(node, anc.as_ref(), s, &parsed),
                    Err(e) => self.errors.push(format!(
                        "Error creating dependent string for input {s} check syntax string: {e}"
                    )),
                }
            }
        }
    }

    /// The placeholders of input `s` of `node` (each reported once).
    fn check_dependencies(
        &mut self,
        node: &NodeTemplate,
        ancestors: Option<&BTreeSet<String>>,
        s: &str,
        parsed: &DependentString,
    ) {
        let mut seen = HashSet::new();
        for dependency in parsed.dependencies() {
            match dependency {
                Dependency::Output { identifier, .. } => {
                    if seen.insert(("o", identifier.as_str()))
                        && ancestors.is_some_and(|anc| !anc.contains(identifier))
                    {
                        self.errors.push(format!(
                            "Input {s} depends on {identifier} but {identifier} is not a parent of {}",
                            node.identifier
                        ));
                    }
                }
                Dependency::Store { key } => {
                    if seen.insert(("s", key.as_str())) && !self.spec.store_config.declares(key) {
                        self.errors.push(format!(
                            "Input {s} depends on {key} but {key} is not a required key or a default value"
                        ));
                    }
                }
            }
        }
    }
}

/// Computes static ancestors over a topological order of the lineage graph:
/// a plain node's lineage parents are the nodes listing it in `next_nodes`;
/// a unites node's only lineage parent is its target. `None` marks nodes
/// whose ancestors cannot be known (on or after a cycle, invalid unites).
fn lineage_ancestors(
    nodes: &[NodeTemplate],
    next_edges: &[Vec<usize>],
    unites_target: &[Option<Option<usize>>],
) -> Vec<Option<BTreeSet<String>>> {
    let n = nodes.len();
    let mut parents: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    let mut unknown = vec![false; n];
    for (i, target) in unites_target.iter().enumerate() {
        match target {
            Some(Some(t)) => {
                parents[i].insert(*t);
            }
            Some(None) => unknown[i] = true,
            None => {}
        }
    }
    for (x, edges) in next_edges.iter().enumerate() {
        for &t in edges {
            if unites_target[t].is_none() {
                parents[t].insert(x);
            }
        }
    }
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut remaining: Vec<usize> = parents.iter().map(BTreeSet::len).collect();
    for (i, ps) in parents.iter().enumerate() {
        for &p in ps {
            children[p].push(i);
        }
    }
    let mut result: Vec<Option<BTreeSet<String>>> = vec![None; n];
    let mut queue: VecDeque<usize> = (0..n).filter(|&i| remaining[i] == 0).collect();
    while let Some(v) = queue.pop_front() {
        if !unknown[v] {
            let mut acc: Option<BTreeSet<String>> = None;
            let mut known = true;
            for &p in &parents[v] {
                let Some(anc_p) = &result[p] else {
                    known = false;
                    break;
                };
                let mut with_p = anc_p.clone();
                with_p.insert(nodes[p].identifier.clone());
                acc = Some(match acc {
                    None => with_p,
                    Some(a) => a.intersection(&with_p).cloned().collect(),
                });
            }
            if known {
                result[v] = Some(acc.unwrap_or_default());
            }
        }
        for &c in &children[v] {
            remaining[c] -= 1;
            if remaining[c] == 0 {
                queue.push_back(c);
            }
        }
    }
    result
}

/// Marks the vertices that lie on a cycle (a strongly connected component
/// with more than one vertex, or a self-loop), using an iterative Tarjan.
fn nodes_on_cycles(succ: &[Vec<usize>]) -> Vec<bool> {
    const UNVISITED: usize = usize::MAX;
    let n = succ.len();
    let mut index = vec![UNVISITED; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut cyclic = vec![false; n];
    let mut counter = 0usize;
    for start in 0..n {
        if index[start] != UNVISITED {
            continue;
        }
        index[start] = counter;
        low[start] = counter;
        counter += 1;
        stack.push(start);
        on_stack[start] = true;
        let mut calls: Vec<(usize, usize)> = vec![(start, 0)];
        while let Some(top) = calls.last_mut() {
            let v = top.0;
            if let Some(&w) = succ[v].get(top.1) {
                top.1 += 1;
                if index[w] == UNVISITED {
                    index[w] = counter;
                    low[w] = counter;
                    counter += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    calls.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(parent, _)) = calls.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 || succ[v].contains(&v) {
                    for w in component {
                        cyclic[w] = true;
                    }
                }
            }
        }
    }
    cyclic
}
