//! Field-level (HTTP 422) validation errors, shaped like pydantic's so the
//! `api` renders them as FastAPI does: a location, a message and a kind
//! (pydantic's error `type` and its `ctx`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One element of a validation error location.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LocPart {
    /// An object key (serialised as a JSON string).
    Key(String),
    /// A list index (serialised as a JSON integer).
    Index(usize),
}

impl From<&str> for LocPart {
    fn from(s: &str) -> Self {
        LocPart::Key(s.to_owned())
    }
}

impl From<String> for LocPart {
    fn from(s: String) -> Self {
        LocPart::Key(s)
    }
}

impl From<usize> for LocPart {
    fn from(i: usize) -> Self {
        LocPart::Index(i)
    }
}

/// What kind of problem a [`FieldError`] is (pydantic's error `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldErrorKind {
    /// A required field is absent (`missing`).
    Missing,
    /// A string was expected (`string_type`).
    StringType,
    /// A number must be greater than the bound (`greater_than`).
    GreaterThan(i64),
    /// A number must be at least the bound (`greater_than_equal`).
    GreaterThanEqual(i64),
    /// A validator rejected the value (`value_error`).
    #[default]
    ValueError,
}

/// A field-level validation problem. The HTTP layer renders it as a FastAPI
/// 422 item, prefixing `loc` with `"body"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Location inside the request body (without the leading `"body"`).
    pub loc: Vec<LocPart>,
    /// Pydantic-style message, e.g. `"Value error, Invalid cron expression"`.
    pub msg: String,
    /// The kind of problem.
    #[serde(default)]
    pub kind: FieldErrorKind,
}

impl FieldError {
    /// An error of `kind` at `loc` with message `msg` as given.
    pub fn new(
        loc: impl IntoIterator<Item = LocPart>,
        kind: FieldErrorKind,
        msg: impl Into<String>,
    ) -> Self {
        FieldError {
            loc: loc.into_iter().collect(),
            msg: msg.into(),
            kind,
        }
    }

    /// A pydantic `value_error`: the message gets the `"Value error, "` prefix.
    pub fn value_error(loc: impl IntoIterator<Item = LocPart>, msg: &str) -> Self {
        Self::new(
            loc,
            FieldErrorKind::ValueError,
            format!("Value error, {msg}"),
        )
    }

    /// A required field is absent.
    pub fn missing(loc: impl IntoIterator<Item = LocPart>) -> Self {
        Self::new(loc, FieldErrorKind::Missing, "Field required")
    }

    /// A value that should have been a string.
    pub fn not_a_string(loc: impl IntoIterator<Item = LocPart>) -> Self {
        Self::new(
            loc,
            FieldErrorKind::StringType,
            "Input should be a valid string",
        )
    }

    /// A number not greater than `bound`.
    pub fn not_greater_than(loc: impl IntoIterator<Item = LocPart>, bound: i64) -> Self {
        Self::new(
            loc,
            FieldErrorKind::GreaterThan(bound),
            format!("Input should be greater than {bound}"),
        )
    }

    /// A number below `bound`.
    pub fn below(loc: impl IntoIterator<Item = LocPart>, bound: i64) -> Self {
        Self::new(
            loc,
            FieldErrorKind::GreaterThanEqual(bound),
            format!("Input should be greater than or equal to {bound}"),
        )
    }

    /// The same error with `prefix` prepended to its location.
    pub fn prefixed(mut self, prefix: impl IntoIterator<Item = LocPart>) -> Self {
        let mut loc: Vec<LocPart> = prefix.into_iter().collect();
        loc.append(&mut self.loc);
        self.loc = loc;
        self
    }

    /// The pydantic error `type` (`value_error`, `missing`, `greater_than`,
    /// `greater_than_equal`, `string_type`).
    pub fn error_type(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Missing => "missing",
            FieldErrorKind::StringType => "string_type",
            FieldErrorKind::GreaterThan(_) => "greater_than",
            FieldErrorKind::GreaterThanEqual(_) => "greater_than_equal",
            FieldErrorKind::ValueError => "value_error",
        }
    }

    /// The pydantic `ctx` object FastAPI renders for this error, if any
    /// (`{"error": {}}` for value errors, `{"gt": n}` / `{"ge": n}` for
    /// bounds).
    pub fn ctx(&self) -> Option<Value> {
        match self.kind {
            FieldErrorKind::ValueError => Some(serde_json::json!({ "error": {} })),
            FieldErrorKind::GreaterThan(n) => Some(serde_json::json!({ "gt": n })),
            FieldErrorKind::GreaterThanEqual(n) => Some(serde_json::json!({ "ge": n })),
            FieldErrorKind::Missing | FieldErrorKind::StringType => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_give_pydantic_types_messages_and_ctx() {
        let at = || [LocPart::from("f")];
        let cases = [
            (FieldError::missing(at()), "missing", "Field required", None),
            (
                FieldError::not_a_string(at()),
                "string_type",
                "Input should be a valid string",
                None,
            ),
            (
                FieldError::not_greater_than(at(), 0),
                "greater_than",
                "Input should be greater than 0",
                Some(serde_json::json!({"gt": 0})),
            ),
            (
                FieldError::below(at(), 0),
                "greater_than_equal",
                "Input should be greater than or equal to 0",
                Some(serde_json::json!({"ge": 0})),
            ),
            (
                FieldError::value_error(at(), "bad"),
                "value_error",
                "Value error, bad",
                Some(serde_json::json!({"error": {}})),
            ),
        ];
        for (e, ty, msg, ctx) in cases {
            assert_eq!((e.error_type(), e.msg.as_str(), e.ctx()), (ty, msg, ctx));
        }
    }

    #[test]
    fn prefixed_prepends_the_location() {
        let e = FieldError::missing([LocPart::from("x")]).prefixed(["a".into(), 3usize.into()]);
        assert_eq!(
            e.loc,
            vec![
                LocPart::from("a"),
                LocPart::from(3usize),
                LocPart::from("x")
            ]
        );
    }
}
