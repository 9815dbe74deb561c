//! `exo graph apply|get|list`: graph templates from YAML or JSON files,
//! their validation errors shown where they are in the file.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::client::{Api, Exit, Outcome};

/// A graph file: its text (for locating errors) and its value.
pub struct GraphFile {
    /// The path as given.
    pub path: String,
    /// The file's lines.
    pub lines: Vec<String>,
    /// The graph template.
    pub value: Value,
}

impl GraphFile {
    /// Reads `path`: JSON when it ends in `.json` (or starts with `{`),
    /// YAML otherwise.
    pub fn read(path: &Path) -> Outcome<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Exit::Failure(format!("cannot read {}: {e}", path.display())))?;
        let json =
            path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
        let value: Value = if json {
            serde_json::from_str(&text).map_err(|e| {
                Exit::GraphInvalid(format!(
                    "{}:{}:{}: {e}",
                    path.display(),
                    e.line(),
                    e.column()
                ))
            })?
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| {
                let at = e
                    .location()
                    .map(|l| format!(":{}:{}", l.line(), l.column()))
                    .unwrap_or_default();
                Exit::GraphInvalid(format!("{}{at}: {e}", path.display()))
            })?
        };
        if !value.is_object() {
            return Err(Exit::GraphInvalid(format!(
                "{}: a graph template is an object with `nodes`",
                path.display()
            )));
        }
        Ok(Self {
            path: path.display().to_string(),
            lines: text.lines().map(str::to_string).collect(),
            value,
        })
    }

    fn nodes(&self) -> &[Value] {
        self.value["nodes"].as_array().map_or(&[], Vec::as_slice)
    }

    /// 1-based line of the first line at or after `from` containing `key`
    /// and the whole word `value` (a YAML or JSON `key: value` pair).
    fn line_of(&self, from: usize, key: &str, value: &str) -> Option<usize> {
        self.lines
            .iter()
            .enumerate()
            .skip(from.saturating_sub(1))
            .find(|(_, l)| l.contains(key) && has_word(l, value))
            .map(|(i, _)| i + 1)
    }

    /// Line of node `i` (its `identifier`, else its `node_name`).
    fn node_line(&self, i: usize) -> Option<usize> {
        let node = self.nodes().get(i)?;
        let ident = node["identifier"].as_str().unwrap_or_default();
        let name = node["node_name"].as_str().unwrap_or_default();
        self.line_of(1, "identifier", ident)
            .or_else(|| self.line_of(1, "node_name", name))
            .or_else(|| {
                // No usable name: the i-th node by position, else `nodes`.
                let nth = self
                    .lines
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.contains("node_name"));
                nth.map(|(n, _)| n + 1).nth(i)
            })
            .or_else(|| self.line_of(1, "nodes", "nodes"))
    }

    /// Where a validation error of the API points in this file: the node
    /// (and input) it names.
    pub fn locate(&self, error: &str) -> Option<usize> {
        // A placeholder quoted by the error: the line that holds it.
        if let Some(line) = self.placeholder_line(error) {
            return Some(line);
        }
        let nodes = self.nodes();
        let named = |n: &Value, field: &str| {
            n[field]
                .as_str()
                .is_some_and(|v| !v.is_empty() && has_word(error, v))
        };
        let i = nodes
            .iter()
            .position(|n| named(n, "identifier"))
            .or_else(|| nodes.iter().position(|n| named(n, "node_name")));
        if let Some(i) = i {
            let at = self.node_line(i)?;
            let input = nodes[i]["inputs"]
                .as_object()
                .and_then(|m| m.keys().find(|k| has_word(error, &format!("Input {k}"))));
            return match input {
                Some(k) => self.line_of(at, k, k).or(Some(at)),
                None => Some(at),
            };
        }
        if let Some(secret) = error
            .strip_prefix("Secret ")
            .and_then(|r| r.split_whitespace().next())
        {
            return self.line_of(1, secret, secret);
        }
        None
    }

    /// The line of the first `${{ … }}` placeholder `error` quotes.
    fn placeholder_line(&self, error: &str) -> Option<usize> {
        let start = error.find("${{")?;
        let end = error[start..].find("}}")? + start + 2;
        let placeholder = &error[start..end];
        self.lines
            .iter()
            .position(|l| l.contains(placeholder))
            .map(|i| i + 1)
    }

    /// Where a request-validation location (`["body", "nodes", 1, …]`)
    /// points in this file.
    pub fn locate_loc(&self, loc: &[Value]) -> Option<usize> {
        let mut parts = loc.iter().skip_while(|p| p.as_str() == Some("body"));
        match (parts.next()?.as_str()?, parts.next()) {
            ("nodes", Some(i)) => {
                let at = self.node_line(usize::try_from(i.as_u64()?).ok()?)?;
                match parts.next().and_then(Value::as_str) {
                    Some(field) => self.line_of(at, field, field).or(Some(at)),
                    None => Some(at),
                }
            }
            (field, _) => self.line_of(1, field, field),
        }
    }
}

/// Whether `word` occurs in `text` not as part of a longer name.
fn has_word(text: &str, word: &str) -> bool {
    if word.is_empty() {
        return false;
    }
    let inner = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(inner) && !after.is_some_and(inner)
    })
}

/// `exo graph apply -f FILE [--name NAME]`: upserts, waits for validation,
/// prints each error with its place in the file.
pub async fn apply(api: &Api, file: &Path, name: Option<&str>, json: bool) -> Outcome {
    let graph = GraphFile::read(file)?;
    let name = match name {
        Some(n) => n.to_string(),
        None => graph.value["name"]
            .as_str()
            .map(str::to_string)
            .or_else(|| file.file_stem().map(|s| s.to_string_lossy().to_string()))
            .unwrap_or_default(),
    };
    let mut body = graph.value.clone();
    if let Some(m) = body.as_object_mut() {
        m.remove("name");
        // Required by the API; a file without secrets means none.
        m.entry("secrets").or_insert_with(|| serde_json::json!({}));
    }
    let path = api.ns_path(&format!("/graph/{name}"));
    let answer = match api.call(Method::PUT, &path, Some(&body)).await {
        Err(Exit::Rejected {
            status: 422,
            message,
            detail,
        }) => {
            return Err(Exit::GraphInvalid(request_errors(
                &graph, &message, &detail,
            )));
        }
        // The template itself refused (upstream's 400): its error located.
        Err(Exit::Rejected {
            status: 400,
            message: msg,
            ..
        }) => {
            let at = graph
                .locate(&msg)
                .map(|l| format!(":{l}"))
                .unwrap_or_default();
            return Err(Exit::GraphInvalid(format!("{}{at}: {msg}", graph.path)));
        }
        other => other?,
    };
    let answer = settled(api, &path, answer).await?;
    let status = answer["validation_status"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let errors: Vec<String> = answer["validation_errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
    } else {
        println!("graph {name} in namespace {}: {status}", api.namespace);
    }
    if status == "VALID" {
        return Ok(());
    }
    let shown: Vec<String> = errors
        .iter()
        .map(|e| match graph.locate(e) {
            Some(line) => format!("{}:{line}: {e}", graph.path),
            None => format!("{}: {e}", graph.path),
        })
        .collect();
    Err(Exit::GraphInvalid(if shown.is_empty() {
        format!("graph {name} is {status}")
    } else {
        shown.join("\n")
    }))
}

/// Polls the template until its validation is no longer PENDING (10 s).
async fn settled(api: &Api, path: &str, mut answer: Value) -> Outcome<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while answer["validation_status"] == "PENDING" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = api.call(Method::GET, path, None).await?;
    }
    Ok(answer)
}

/// A 422 answer's `detail` list, each located in the file.
fn request_errors(graph: &GraphFile, msg: &str, detail: &Value) -> String {
    let Some(items) = detail.as_array() else {
        return format!("{}: {msg}", graph.path);
    };
    items
        .iter()
        .map(|d| {
            let loc = d["loc"].as_array().cloned().unwrap_or_default();
            let text = d["msg"].as_str().unwrap_or("invalid");
            // The file is the body: its fields are named from its top.
            let path: Vec<String> = loc
                .iter()
                .skip_while(|p| p.as_str() == Some("body"))
                .map(|p| p.to_string().replace('"', ""))
                .collect();
            match graph.locate_loc(&loc) {
                Some(line) => format!("{}:{line}: {}: {text}", graph.path, path.join(".")),
                None => format!("{}: {}: {text}", graph.path, path.join(".")),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> GraphFile {
        let dir = std::env::temp_dir().join(format!("exo-cli-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("g.yaml");
        std::fs::write(&path, text).unwrap();
        GraphFile::read(&path).unwrap()
    }

    const YAML: &str = "\
secrets: {}
nodes:
  - node_name: Hello
    identifier: hello
    namespace: demo
    inputs:
      name: world
    next_nodes: [shout]
  - node_name: Shout
    identifier: shout
    namespace: demo
    inputs:
      text: ${{ hello.outputs.text }}
      extra: x
";

    #[test]
    fn api_errors_point_at_the_node_and_input_they_name() {
        let g = file(YAML);
        assert_eq!(
            g.locate("Node Shout in namespace demo does not exist"),
            Some(10)
        );
        assert_eq!(g.locate("Node identifier hello is not unique"), Some(4));
        assert_eq!(
            g.locate("Input extra in node Shout in namespace demo is not a string"),
            Some(14)
        );
        assert_eq!(g.locate("something else entirely"), None);
        assert_eq!(
            g.locate("Input ${{ hello.outputs.text }} depends on text but …"),
            Some(13)
        );
        assert!(!has_word("Node shouting", "shout"));
    }

    #[test]
    fn request_locations_point_at_the_node_field() {
        let g = file(YAML);
        let loc: Vec<Value> = serde_json::from_str(r#"["body", "nodes", 1, "inputs"]"#).unwrap();
        assert_eq!(g.locate_loc(&loc), Some(12));
        let loc: Vec<Value> = serde_json::from_str(r#"["body", "secrets"]"#).unwrap();
        assert_eq!(g.locate_loc(&loc), Some(1));
    }

    #[test]
    fn yaml_syntax_errors_name_the_line() {
        let dir = std::env::temp_dir().join(format!("exo-cli-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.yaml");
        std::fs::write(&path, "nodes:\n  - node_name: [unclosed\n").unwrap();
        let Err(e) = GraphFile::read(&path) else {
            panic!("a broken file was read")
        };
        assert_eq!(e.code(), 5);
        assert!(e.message().contains("bad.yaml:"), "{}", e.message());
    }
}
