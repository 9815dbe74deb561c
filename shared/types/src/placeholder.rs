//! The `${{ id.outputs.field }}` / `${{ store.key }}` placeholder language of
//! node inputs (spec §5.1).
//!
//! Parsing follows the upstream rules exactly, quirks included:
//!
//! * the value is split on the literal `${{`; the first piece is the literal
//!   head, every later piece must contain `}}` and is split at its **first**
//!   `}}` into the placeholder content and a literal tail;
//! * the content is split on `.` and each part trimmed; `a.outputs.b` is an
//!   output dependency, `store.k` a store dependency, anything else an error;
//! * whitespace inside the braces is allowed, empty identifiers or fields are
//!   not rejected, `${{ store.outputs.k }}` is a store dependency on `k`, and
//!   there is no escape for a literal `${{`; a stray `}}` outside a
//!   placeholder is literal text.

use std::collections::HashMap;
use std::fmt;

/// Identifier that designates the per-run store in a placeholder.
pub const STORE_IDENTIFIER: &str = "store";

/// Why a dependent string could not be parsed or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A `${{` has no matching `}}` after it.
    #[error("Invalid syntax string placeholder {piece} for: {input} '${{{{' not closed")]
    NotClosed {
        /// The text after the unclosed `${{`.
        piece: String,
        /// The whole input value.
        input: String,
    },
    /// The placeholder content is neither `id.outputs.field` nor `store.key`.
    #[error("Invalid syntax string placeholder {content} for: {input}")]
    InvalidPlaceholder {
        /// The text between `${{` and `}}`, untrimmed.
        content: String,
        /// The whole input value.
        input: String,
    },
    /// Rendering found no value for a placeholder.
    #[error("Dependent value is not set for: {0}")]
    ValueNotSet(Dependency),
}

/// What a placeholder refers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dependency {
    /// `${{ identifier.outputs.field }}`: an output field of an ancestor node
    /// (or of the node that just ran).
    Output {
        /// Node identifier in the graph template.
        identifier: String,
        /// Output field name.
        field: String,
    },
    /// `${{ store.key }}` (or `${{ store.outputs.key }}`): a per-run store value.
    Store {
        /// Store key.
        key: String,
    },
}

impl Dependency {
    /// The identifier the placeholder names: the node identifier, or
    /// `"store"` for store dependencies.
    pub fn identifier(&self) -> &str {
        match self {
            Dependency::Output { identifier, .. } => identifier,
            Dependency::Store { .. } => STORE_IDENTIFIER,
        }
    }

    /// The field (output field or store key) the placeholder names.
    pub fn field(&self) -> &str {
        match self {
            Dependency::Output { field, .. } => field,
            Dependency::Store { key } => key,
        }
    }
}

impl fmt::Display for Dependency {
    /// Renders the canonical placeholder content: `id.outputs.field` or
    /// `store.key`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dependency::Output { identifier, field } => write!(f, "{identifier}.outputs.{field}"),
            Dependency::Store { key } => write!(f, "{STORE_IDENTIFIER}.{key}"),
        }
    }
}

/// One placeholder occurrence and the literal text that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    /// Index into [`DependentString::dependencies`].
    dependency: usize,
    tail: String,
}

/// A parsed input value: a literal head followed by placeholders, each with a
/// literal tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependentString {
    head: String,
    segments: Vec<Segment>,
    /// Distinct dependencies in first-appearance order.
    dependencies: Vec<Dependency>,
}

impl DependentString {
    /// Parses `s` according to spec §5.1.
    pub fn parse(s: &str) -> Result<DependentString, Error> {
        let mut pieces = s.split("${{");
        let head = pieces.next().unwrap_or_default().to_owned();
        let mut out = DependentString {
            head,
            segments: Vec::new(),
            dependencies: Vec::new(),
        };
        for piece in pieces {
            let Some((content, tail)) = piece.split_once("}}") else {
                return Err(Error::NotClosed {
                    piece: piece.to_owned(),
                    input: s.to_owned(),
                });
            };
            let dependency = parse_content(content).ok_or_else(|| Error::InvalidPlaceholder {
                content: content.to_owned(),
                input: s.to_owned(),
            })?;
            let index = match out.dependencies.iter().position(|d| *d == dependency) {
                Some(i) => i,
                None => {
                    out.dependencies.push(dependency);
                    out.dependencies.len() - 1
                }
            };
            out.segments.push(Segment {
                dependency: index,
                tail: tail.to_owned(),
            });
        }
        Ok(out)
    }

    /// The distinct dependencies, in order of first appearance.
    pub fn dependencies(&self) -> impl Iterator<Item = &Dependency> {
        self.dependencies.iter()
    }

    /// Whether the value contains at least one placeholder.
    pub fn has_placeholders(&self) -> bool {
        !self.segments.is_empty()
    }

    /// The literal text before the first placeholder (the whole value when
    /// there is none).
    pub fn head(&self) -> &str {
        &self.head
    }

    /// Renders head + Σ (value + tail). `lookup` is called once per distinct
    /// dependency, in first-appearance order; the first dependency without a
    /// value gives [`Error::ValueNotSet`].
    pub fn render(
        &self,
        mut lookup: impl FnMut(&Dependency) -> Option<String>,
    ) -> Result<String, Error> {
        let mut values = Vec::with_capacity(self.dependencies.len());
        for dependency in &self.dependencies {
            match lookup(dependency) {
                Some(v) => values.push(v),
                None => return Err(Error::ValueNotSet(dependency.clone())),
            }
        }
        let mut out = self.head.clone();
        for segment in &self.segments {
            // `values` has one entry per dependency and every segment indexes
            // into `dependencies`, so the lookup always succeeds.
            if let Some(v) = values.get(segment.dependency) {
                out.push_str(v);
            }
            out.push_str(&segment.tail);
        }
        Ok(out)
    }

    /// Renders with values from a map keyed by dependency.
    pub fn render_with(&self, values: &HashMap<Dependency, String>) -> Result<String, Error> {
        self.render(|d| values.get(d).cloned())
    }
}

/// Interprets trimmed placeholder content.
fn parse_content(content: &str) -> Option<Dependency> {
    let parts: Vec<&str> = content.split('.').map(str::trim).collect();
    match parts.as_slice() {
        [identifier, "outputs", field] if *identifier == STORE_IDENTIFIER => {
            Some(Dependency::Store {
                key: (*field).to_owned(),
            })
        }
        [identifier, "outputs", field] => Some(Dependency::Output {
            identifier: (*identifier).to_owned(),
            field: (*field).to_owned(),
        }),
        [store, key] if *store == STORE_IDENTIFIER => Some(Dependency::Store {
            key: (*key).to_owned(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(id: &str, f: &str) -> Dependency {
        Dependency::Output {
            identifier: id.into(),
            field: f.into(),
        }
    }

    fn store(k: &str) -> Dependency {
        Dependency::Store { key: k.into() }
    }

    fn deps(s: &DependentString) -> Vec<Dependency> {
        s.dependencies().cloned().collect()
    }

    #[test]
    fn literal_values_have_no_placeholders() {
        for s in ["", "plain", "x }} y", "}}", "{{ a.outputs.b }}", "$ {{x}}"] {
            let d = DependentString::parse(s).unwrap();
            assert!(!d.has_placeholders(), "{s}");
            assert_eq!(d.render(|_| None).unwrap(), s);
        }
    }

    #[test]
    fn spec_example_head_and_tails() {
        let s = "a ${{ n.outputs.f }} b ${{store.k}} c";
        let d = DependentString::parse(s).unwrap();
        assert_eq!(d.head(), "a ");
        assert_eq!(deps(&d), vec![out("n", "f"), store("k")]);
        let r = d
            .render(|dep| match dep {
                Dependency::Output { .. } => Some("N".into()),
                Dependency::Store { .. } => Some("K".into()),
            })
            .unwrap();
        assert_eq!(r, "a N b K c");
    }

    #[test]
    fn repeated_dependency_is_looked_up_once() {
        let d = DependentString::parse("${{ n.outputs.f }}${{ n.outputs.f }}").unwrap();
        assert_eq!(deps(&d), vec![out("n", "f")]);
        let mut calls = 0;
        let r = d
            .render(|_| {
                calls += 1;
                Some("v".into())
            })
            .unwrap();
        assert_eq!(r, "vv");
        assert_eq!(calls, 1);
    }

    #[test]
    fn distinct_dependencies_keep_first_appearance_order() {
        let d = DependentString::parse(
            "${{ b.outputs.x }}-${{ a.outputs.y }}-${{ b.outputs.x }}-${{ store.z }}",
        )
        .unwrap();
        assert_eq!(deps(&d), vec![out("b", "x"), out("a", "y"), store("z")]);
    }

    #[test]
    fn whitespace_and_empty_parts_are_allowed() {
        let d = DependentString::parse("${{ n . outputs . f }}").unwrap();
        assert_eq!(deps(&d), vec![out("n", "f")]);
        let d = DependentString::parse("${{ .outputs. }}").unwrap();
        assert_eq!(deps(&d), vec![out("", "")]);
        let d = DependentString::parse("${{\tstore .  key\n}}").unwrap();
        assert_eq!(deps(&d), vec![store("key")]);
    }

    #[test]
    fn store_outputs_is_a_store_dependency() {
        let d = DependentString::parse("${{ store.outputs.k }}").unwrap();
        assert_eq!(deps(&d), vec![store("k")]);
    }

    #[test]
    fn tail_is_split_at_first_closing_braces() {
        let d = DependentString::parse("x${{ n.outputs.f }} }} y").unwrap();
        assert_eq!(d.render(|_| Some("V".into())).unwrap(), "xV }} y");
    }

    #[test]
    fn invalid_contents_are_rejected() {
        for (s, content) in [
            ("${{ n.outputs }}", " n.outputs "),
            ("a ${{ store.a.b }}", " store.a.b "),
            ("${{ n.inputs.f }}", " n.inputs.f "),
            ("${{ x }}", " x "),
            ("${{}}", ""),
            ("${{ a.outputs.b.c }}", " a.outputs.b.c "),
        ] {
            let err = DependentString::parse(s).unwrap_err();
            assert_eq!(
                err,
                Error::InvalidPlaceholder {
                    content: content.into(),
                    input: s.into()
                }
            );
            assert_eq!(
                err.to_string(),
                format!("Invalid syntax string placeholder {content} for: {s}")
            );
        }
    }

    #[test]
    fn unclosed_placeholder_is_rejected() {
        let s = "a ${{ n.outputs.f";
        let err = DependentString::parse(s).unwrap_err();
        assert!(matches!(err, Error::NotClosed { .. }));
        assert_eq!(
            err.to_string(),
            "Invalid syntax string placeholder  n.outputs.f for: a ${{ n.outputs.f '${{' not closed"
        );
        // A later unclosed piece fails even when earlier ones are fine.
        assert!(matches!(
            DependentString::parse("${{ a.outputs.b }} ${{ c"),
            Err(Error::NotClosed { .. })
        ));
    }

    #[test]
    fn missing_value_names_the_placeholder() {
        let d = DependentString::parse("${{ n.outputs.f }} ${{ store.k }}").unwrap();
        let err = d.render(|_| None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Dependent value is not set for: n.outputs.f"
        );
        let err = d
            .render(|dep| matches!(dep, Dependency::Output { .. }).then(|| "x".into()))
            .unwrap_err();
        assert_eq!(err, Error::ValueNotSet(store("k")));
        assert_eq!(err.to_string(), "Dependent value is not set for: store.k");
    }

    #[test]
    fn render_with_map() {
        let d = DependentString::parse("${{a.outputs.b}}/${{store.c}}").unwrap();
        let values = HashMap::from([
            (out("a", "b"), "1".to_owned()),
            (store("c"), "2".to_owned()),
        ]);
        assert_eq!(d.render_with(&values).unwrap(), "1/2");
    }

    #[test]
    fn dependency_accessors() {
        assert_eq!(out("a", "b").identifier(), "a");
        assert_eq!(out("a", "b").field(), "b");
        assert_eq!(store("k").identifier(), "store");
        assert_eq!(store("k").field(), "k");
    }
}
