//! NATS subject patterns (`*` one token, `>` one or more trailing tokens):
//! matching, covering and overlapping, and the smallest set of patterns a
//! JetStream stream can hold (a stream refuses two subjects that overlap).
//!
//! Event triggers bind graphs to patterns chosen by users; the inbound
//! stream captures the union of them all.

/// Why a pattern cannot be bound by an event trigger.
pub fn binding_problem(pattern: &str) -> Option<String> {
    const MAX_LEN: usize = 256;
    if pattern.is_empty() || pattern.len() > MAX_LEN {
        return Some(format!("subject must have 1 to {MAX_LEN} characters"));
    }
    let tokens: Vec<&str> = pattern.split('.').collect();
    let bad_char = |t: &str| t.chars().any(|c| c.is_whitespace() || c.is_control());
    if tokens.iter().any(|t| t.is_empty() || bad_char(t)) {
        return Some(format!(
            "subject {pattern:?} has an empty token or white space"
        ));
    }
    for (i, t) in tokens.iter().enumerate() {
        let wildcard_inside = t.len() > 1 && (t.contains('*') || t.contains('>'));
        if wildcard_inside || (*t == ">" && i + 1 != tokens.len()) {
            return Some(format!(
                "subject {pattern:?}: '*' and '>' must be whole tokens, '>' the last"
            ));
        }
    }
    let first = tokens[0];
    if first == "*" || first == ">" {
        return Some(format!(
            "subject {pattern:?} must start with a literal token"
        ));
    }
    if first == "exo" || first.starts_with('$') || first == "_INBOX" {
        return Some(format!(
            "subject {pattern:?} is reserved (exo.>, $..., _INBOX.> belong to the system)"
        ));
    }
    None
}

fn tokens(s: &str) -> Vec<&str> {
    s.split('.').collect()
}

/// True when the concrete subject `subject` matches `pattern`.
pub fn matches(pattern: &str, subject: &str) -> bool {
    covers(pattern, subject)
}

/// True when every subject matched by `b` is matched by `a`.
pub fn covers(a: &str, b: &str) -> bool {
    let (a, b) = (tokens(a), tokens(b));
    for (i, ta) in a.iter().enumerate() {
        match (*ta, b.get(i)) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            (_, Some(&">")) => return false,
            ("*", Some(_)) => {}
            (lit, Some(tb)) if lit == *tb => {}
            _ => return false,
        }
    }
    a.len() == b.len()
}

/// True when some subject is matched by both `a` and `b`.
pub fn overlaps(a: &str, b: &str) -> bool {
    let (a, b) = (tokens(a), tokens(b));
    for i in 0.. {
        match (a.get(i), b.get(i)) {
            (Some(&">"), Some(_)) | (Some(_), Some(&">")) => return true,
            (None, None) => return true,
            (None, _) | (_, None) => return false,
            (Some(&"*"), _) | (_, Some(&"*")) => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
    unreachable!("the loop returns")
}

/// A pattern covering both overlapping patterns `a` and `b`: equal tokens
/// kept, others `*`, and `>` from the first position where either has `>`.
fn join(a: &str, b: &str) -> String {
    let (a, b) = (tokens(a), tokens(b));
    let mut out = Vec::new();
    for i in 0..a.len().max(b.len()) {
        match (a.get(i), b.get(i)) {
            (Some(&">"), _) | (_, Some(&">")) | (None, _) | (_, None) => {
                out.push(">");
                break;
            }
            (Some(x), Some(y)) if x == y => out.push(x),
            _ => out.push("*"),
        }
    }
    out.join(".")
}

/// The fewest patterns, none overlapping another, that together match
/// every subject any of `patterns` matches (possibly more, where two
/// patterns overlap without one covering the other), sorted.
pub fn stream_subjects<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut set: Vec<String> = patterns.into_iter().map(str::to_string).collect();
    set.sort();
    set.dedup();
    'again: loop {
        for i in 0..set.len() {
            for j in 0..set.len() {
                if i == j || !overlaps(&set[i], &set[j]) {
                    continue;
                }
                let merged = if covers(&set[i], &set[j]) {
                    set[i].clone()
                } else if covers(&set[j], &set[i]) {
                    set[j].clone()
                } else {
                    join(&set[i], &set[j])
                };
                let (hi, lo) = (i.max(j), i.min(j));
                set.remove(hi);
                set.remove(lo);
                set.push(merged);
                set.sort();
                set.dedup();
                continue 'again;
            }
        }
        return set;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matching_and_covering() {
        assert!(matches("orders.*", "orders.created"));
        assert!(!matches("orders.*", "orders.created.eu"));
        assert!(matches("orders.>", "orders.created.eu"));
        assert!(!matches("orders.>", "orders"));
        assert!(covers("orders.>", "orders.*.eu"));
        assert!(!covers("orders.*.eu", "orders.>"));
        assert!(overlaps("a.*.c", "a.b.*"));
        assert!(!overlaps("a.b", "a.b.c"));
        assert!(overlaps("a.>", "a.b.c"));
    }

    #[test]
    fn stream_subjects_never_overlap() {
        assert_eq!(
            stream_subjects(["orders.>", "orders.created"]),
            ["orders.>"]
        );
        assert_eq!(stream_subjects(["a.*.c", "a.b.*"]), ["a.*.*"]);
        assert_eq!(stream_subjects(["x.y", "x.y", "z"]), ["x.y", "z"]);
        assert_eq!(stream_subjects(["a.b", "a.b.c"]), ["a.b", "a.b.c"]);
    }

    #[test]
    fn bindings_are_checked() {
        assert_eq!(binding_problem("orders.created.>"), None);
        for bad in [
            "", ">", "*.x", "exo.v1.x", "$JS.API", "a..b", "a b", "a.>.b", "a.b*", "_INBOX.x",
        ] {
            assert!(binding_problem(bad).is_some(), "{bad}");
        }
    }

    fn pattern() -> impl Strategy<Value = String> {
        let token = prop_oneof![Just("a"), Just("b"), Just("*")];
        (prop::collection::vec(token, 1..4), any::<bool>()).prop_map(|(t, tail)| {
            let mut s = format!("r.{}", t.join("."));
            if tail {
                s.push_str(".>");
            }
            s
        })
    }

    fn subject() -> impl Strategy<Value = String> {
        prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..6)
            .prop_map(|t| format!("r.{}", t.join(".")))
    }

    proptest! {
        /// Whatever users bind, the stream's subjects are pairwise
        /// disjoint and capture every subject some binding matches.
        #[test]
        fn the_cover_is_disjoint_and_complete(
            ps in prop::collection::vec(pattern(), 1..6),
            subjects in prop::collection::vec(subject(), 1..20),
        ) {
            let cover = stream_subjects(ps.iter().map(String::as_str));
            for (i, a) in cover.iter().enumerate() {
                for b in &cover[i + 1..] {
                    prop_assert!(!overlaps(a, b), "{a} overlaps {b} in {cover:?}");
                }
            }
            for s in &subjects {
                if ps.iter().any(|p| matches(p, s)) {
                    prop_assert!(cover.iter().any(|c| matches(c, s)), "{s} not captured by {cover:?}");
                }
            }
        }
    }
}
