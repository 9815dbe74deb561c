//! Request body validation with FastAPI-shaped 422 answers (spec §0).
//!
//! [`ValidJson`] reads the body (up to the router's body limit), parses it as
//! JSON and checks it with the request model's [`Model::check`], which
//! collects every problem as a pydantic error item
//! `{"type", "loc", "msg", "input", "ctx"?}` with `loc` starting at `"body"`.
//! The checks follow pydantic's lax mode where clients rely on it (integers
//! given as strings or integral floats are accepted).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use exo_types::graph::{FieldError, LocPart};
use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// A validation error location (`["body", "nodes", 0, "identifier"]`).
pub type Loc = Vec<Value>;

/// `loc` extended by one part.
pub fn at(loc: &[Value], part: impl Into<Value>) -> Loc {
    let mut l = loc.to_vec();
    l.push(part.into());
    l
}

/// Collects pydantic-style error items.
#[derive(Debug, Default)]
pub struct Checker {
    /// The items collected so far.
    pub errors: Vec<Value>,
}

impl Checker {
    /// Records one error item.
    pub fn error(
        &mut self,
        ty: &str,
        loc: &[Value],
        msg: impl Into<String>,
        input: &Value,
        ctx: Option<Value>,
    ) {
        let mut item = Map::new();
        item.insert("type".into(), ty.into());
        item.insert("loc".into(), Value::Array(loc.to_vec()));
        item.insert("msg".into(), msg.into().into());
        item.insert("input".into(), input.clone());
        if let Some(ctx) = ctx {
            item.insert("ctx".into(), ctx);
        }
        self.errors.push(Value::Object(item));
    }

    /// The value must be an object holding a model's fields. `class` names
    /// the nested model (pydantic's `model_type`); `None` is the request
    /// body itself.
    pub fn model<'a>(
        &mut self,
        loc: &[Value],
        v: &'a Value,
        class: Option<&str>,
    ) -> Option<&'a Map<String, Value>> {
        if let Some(m) = v.as_object() {
            return Some(m);
        }
        match class {
            Some(c) => self.error(
                "model_type",
                loc,
                format!("Input should be a valid dictionary or instance of {c}"),
                v,
                Some(json!({ "class_name": c })),
            ),
            None => self.error(
                "model_attributes_type",
                loc,
                "Input should be a valid dictionary or object to extract fields from",
                v,
                None,
            ),
        }
        None
    }

    /// The optional field `key` of `obj` (at `loc`): `default` when absent,
    /// else checked by `check` at its own location.
    pub fn optional<'a, T>(
        &mut self,
        loc: &[Value],
        obj: &'a Map<String, Value>,
        (key, default): (&str, T),
        check: impl FnOnce(&mut Self, &[Value], &'a Value) -> Option<T>,
    ) -> Option<T> {
        match obj.get(key) {
            None => Some(default),
            Some(v) => check(self, &at(loc, key), v),
        }
    }

    /// The required field `key` of `obj` (at `loc`), checked by `check` at
    /// its own location.
    pub fn field<'a, T>(
        &mut self,
        loc: &[Value],
        obj: &'a Map<String, Value>,
        key: &str,
        check: impl FnOnce(&mut Self, &[Value], &'a Value) -> Option<T>,
    ) -> Option<T> {
        let v = self.required(loc, obj, key)?;
        check(self, &at(loc, key), v)
    }

    /// A required field: records `missing` (with the whole object as input)
    /// when absent.
    pub fn required<'a>(
        &mut self,
        loc: &[Value],
        obj: &'a Map<String, Value>,
        key: &str,
    ) -> Option<&'a Value> {
        match obj.get(key) {
            Some(v) => Some(v),
            None => {
                self.error(
                    "missing",
                    &at(loc, key),
                    "Field required",
                    &Value::Object(obj.clone()),
                    None,
                );
                None
            }
        }
    }

    /// A `str` field (no coercion, as pydantic).
    pub fn string(&mut self, loc: &[Value], v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            _ => {
                self.error(
                    "string_type",
                    loc,
                    "Input should be a valid string",
                    v,
                    None,
                );
                None
            }
        }
    }

    /// An `int` field in lax mode: integers, integral floats and strings
    /// holding an integer.
    pub fn int(&mut self, loc: &[Value], v: &Value) -> Option<i64> {
        match v {
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    return Some(i);
                }
                if let Some(f) = n.as_f64()
                    && n.as_u64().is_none()
                {
                    if f.fract() == 0.0 && f.abs() < 9.0e18 {
                        return Some(f as i64);
                    }
                    if f.is_finite() && f.fract() != 0.0 {
                        self.error(
                            "int_from_float",
                            loc,
                            "Input should be a valid integer, got a number with a fractional part",
                            v,
                            None,
                        );
                        return None;
                    }
                }
                self.error(
                    "int_parsing_size",
                    loc,
                    "Unable to parse input string as an integer, exceeded maximum size",
                    v,
                    None,
                );
                None
            }
            Value::String(s) => match s.trim().parse::<i64>() {
                Ok(i) => Some(i),
                Err(_) => {
                    self.error(
                        "int_parsing",
                        loc,
                        "Input should be a valid integer, unable to parse string as an integer",
                        v,
                        None,
                    );
                    None
                }
            },
            _ => {
                self.error("int_type", loc, "Input should be a valid integer", v, None);
                None
            }
        }
    }

    /// An integer `> bound`.
    pub fn int_gt(&mut self, loc: &[Value], v: &Value, bound: i64) -> Option<i64> {
        let i = self.int(loc, v)?;
        self.bounded(
            i > bound,
            i,
            ("greater_than", "greater than", "gt"),
            loc,
            v,
            bound,
        )
    }

    /// An integer `>= bound`.
    pub fn int_ge(&mut self, loc: &[Value], v: &Value, bound: i64) -> Option<i64> {
        let i = self.int(loc, v)?;
        let rule = ("greater_than_equal", "greater than or equal to", "ge");
        self.bounded(i >= bound, i, rule, loc, v, bound)
    }

    /// `i` when `ok`; otherwise records pydantic's error for the bound rule
    /// `(error type, wording, context key)`.
    fn bounded(
        &mut self,
        ok: bool,
        i: i64,
        (kind, wording, key): (&str, &str, &str),
        loc: &[Value],
        v: &Value,
        bound: i64,
    ) -> Option<i64> {
        if ok {
            return Some(i);
        }
        let msg = format!("Input should be {wording} {bound}");
        self.error(kind, loc, msg, v, Some(json!({ key: bound })));
        None
    }

    /// A `list` field.
    pub fn list<'a>(&mut self, loc: &[Value], v: &'a Value) -> Option<&'a Vec<Value>> {
        match v {
            Value::Array(a) => Some(a),
            _ => {
                self.error("list_type", loc, "Input should be a valid list", v, None);
                None
            }
        }
    }

    /// A `list` field whose every item is checked by `item` (at its own
    /// location); `None` if the list or any item is wrong, every problem
    /// recorded.
    pub fn list_of<'v, T>(
        &mut self,
        loc: &[Value],
        v: &'v Value,
        mut item: impl FnMut(&mut Self, &[Value], &'v Value) -> Option<T>,
    ) -> Option<Vec<T>> {
        let list = self.list(loc, v)?;
        let mut out = Vec::with_capacity(list.len());
        let mut ok = true;
        for (i, x) in list.iter().enumerate() {
            match item(self, &at(loc, i), x) {
                Some(t) => out.push(t),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A `dict` field.
    pub fn dict<'a>(&mut self, loc: &[Value], v: &'a Value) -> Option<&'a Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            _ => {
                self.error(
                    "dict_type",
                    loc,
                    "Input should be a valid dictionary",
                    v,
                    None,
                );
                None
            }
        }
    }

    /// A `dict[str, str]` field; every non-string value is reported.
    pub fn str_dict(&mut self, loc: &[Value], v: &Value) -> Option<BTreeMap<String, String>> {
        let m = self.dict(loc, v)?;
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (k, val) in m {
            match self.string(&at(loc, k.as_str()), val) {
                Some(s) => {
                    out.insert(k.clone(), s);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A `list[str]` field; every non-string entry is reported.
    pub fn str_list(&mut self, loc: &[Value], v: &Value) -> Option<Vec<String>> {
        let a = self.list(loc, v)?;
        let mut out = Vec::with_capacity(a.len());
        let mut ok = true;
        for (i, item) in a.iter().enumerate() {
            match self.string(&at(loc, i), item) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A string enum (pydantic's `enum` error lists the allowed values).
    pub fn enumeration(&mut self, loc: &[Value], v: &Value, allowed: &[&str]) -> Option<String> {
        if let Some(s) = v.as_str()
            && allowed.contains(&s)
        {
            return Some(s.to_string());
        }
        let expected = expected_list(allowed);
        self.error(
            "enum",
            loc,
            format!("Input should be {expected}"),
            v,
            Some(json!({ "expected": expected })),
        );
        None
    }
}

/// pydantic's rendering of allowed values: `'A', 'B' or 'C'`.
pub fn expected_list(allowed: &[&str]) -> String {
    let quoted: Vec<String> = allowed.iter().map(|a| format!("'{a}'")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// A request model checked from JSON.
pub trait Model: Sized {
    /// Checks `v` (the request body, at location `["body"]`), recording
    /// problems in `c`; returns the model when `v` is acceptable.
    fn check(v: &Value, c: &mut Checker) -> Option<Self>;
}

/// The body location.
pub fn body_loc() -> Loc {
    vec![Value::from("body")]
}

/// The server's body limit, as a request extension (for the message).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The 413 message for a body over `limit` bytes.
pub fn body_too_large(limit: usize) -> String {
    let mib = limit as f64 / (1024.0 * 1024.0);
    format!("Request body is too large (limit {mib} MiB, EXO_API__MAX_BODY_BYTES)")
}

/// JSON body extractor with FastAPI-shaped rejections: 422 for a missing
/// body, invalid JSON and model violations, 413 over the body limit.
#[derive(Debug)]
pub struct ValidJson<T>(pub T);

impl<S: Send + Sync, T: Model> FromRequest<S> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(crate::BODY_LIMIT, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::Http(StatusCode::PAYLOAD_TOO_LARGE, body_too_large(limit))
            } else {
                ApiError::bad_request(e.body_text())
            }
        })?;
        let value = parse_body(&bytes)?;
        let mut c = Checker::default();
        match T::check(&value, &mut c) {
            Some(t) if c.errors.is_empty() => Ok(Self(t)),
            _ => Err(ApiError::Validation(c.errors)),
        }
    }
}

/// Parses a request body: empty → `missing`; invalid → `json_invalid`.
pub fn parse_body(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        let mut c = Checker::default();
        c.error("missing", &body_loc(), "Field required", &Value::Null, None);
        return Err(ApiError::Validation(c.errors));
    }
    serde_json::from_slice::<Value>(bytes).map_err(|e| {
        let pos = byte_offset(bytes, e.line(), e.column());
        let text = e.to_string();
        let reason = text
            .split(" at line ")
            .next()
            .unwrap_or(text.as_str())
            .to_string();
        let mut c = Checker::default();
        c.error(
            "json_invalid",
            &at(&body_loc(), pos),
            "JSON decode error",
            &json!({}),
            Some(json!({ "error": reason })),
        );
        ApiError::Validation(c.errors)
    })
}

/// Byte offset of a 1-based (line, column) position.
fn byte_offset(bytes: &[u8], line: usize, column: usize) -> usize {
    let mut offset = 0;
    for (i, l) in bytes.split(|b| *b == b'\n').enumerate() {
        if i + 1 == line {
            return (offset + column.saturating_sub(1)).min(bytes.len());
        }
        offset += l.len() + 1;
    }
    bytes.len()
}

/// Renders an [`exo_types::graph::FieldError`] found in `body` as a 422 item:
/// `loc` prefixed with `"body"`, the offending value as `input` (for
/// `missing`, the object that lacks the field), and the error's `ctx`.
pub fn field_error_item(body: &Value, err: &FieldError) -> Value {
    let mut path: Vec<&LocPart> = err.loc.iter().collect();
    // A trigger's expression lives in its `value` object.
    let value_key = LocPart::Key("value".into());
    if let [LocPart::Key(t), LocPart::Index(_), LocPart::Key(e)] = err.loc.as_slice()
        && t == "triggers"
        && e == "expression"
    {
        path.insert(2, &value_key);
    }
    let ty = err.error_type();
    if ty == "missing" {
        path.pop();
    }
    let input = lookup(body, &path).cloned().unwrap_or(Value::Null);
    let mut loc = body_loc();
    loc.extend(err.loc.iter().map(|p| match p {
        LocPart::Key(k) => Value::from(k.as_str()),
        LocPart::Index(i) => Value::from(*i),
    }));
    let mut c = Checker::default();
    c.error(ty, &loc, err.msg.clone(), &input, err.ctx());
    c.errors.pop().unwrap_or(Value::Null)
}

fn lookup<'a>(v: &'a Value, path: &[&LocPart]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = match p {
            LocPart::Key(k) => cur.get(k.as_str())?,
            LocPart::Index(i) => cur.get(*i)?,
        };
    }
    Some(cur)
}

/// `check`, with null accepted as `None` (a nullable field).
pub fn or_null<'a, T>(
    check: impl FnOnce(&mut Checker, &[Value], &'a Value) -> Option<T>,
) -> impl FnOnce(&mut Checker, &[Value], &'a Value) -> Option<Option<T>> {
    move |c, loc, v| {
        if v.is_null() {
            Some(None)
        } else {
            check(c, loc, v).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_field_item_has_the_parent_as_input() {
        let body = json!({"nodes": ["a"]});
        let mut c = Checker::default();
        let obj = c.model(&body_loc(), &body, None).unwrap();
        assert!(c.required(&body_loc(), obj, "batch_size").is_none());
        assert_eq!(
            Value::Array(c.errors),
            json!([{"type":"missing","loc":["body","batch_size"],"msg":"Field required","input":{"nodes":["a"]}}])
        );
    }

    #[test]
    fn ints_follow_lax_mode() {
        let mut c = Checker::default();
        let l = body_loc();
        assert_eq!(c.int(&l, &json!(5)), Some(5));
        assert_eq!(c.int(&l, &json!("5000")), Some(5000));
        assert_eq!(c.int(&l, &json!(5000.0)), Some(5000));
        assert!(c.errors.is_empty());
        assert_eq!(c.int(&l, &json!(1.5)), None);
        assert_eq!(c.int(&l, &json!("x")), None);
        assert_eq!(c.int(&l, &json!(null)), None);
        let types: Vec<&str> = c
            .errors
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["int_from_float", "int_parsing", "int_type"]);
        let mut c = Checker::default();
        assert_eq!(c.int_gt(&l, &json!(0), 0), None);
        assert_eq!(
            c.errors[0],
            json!({"type":"greater_than","loc":["body"],"msg":"Input should be greater than 0","input":0,"ctx":{"gt":0}})
        );
    }

    #[test]
    fn str_dict_reports_each_bad_value() {
        let mut c = Checker::default();
        let l = at(&body_loc(), "store");
        assert!(
            c.str_dict(&l, &json!({"a": "x", "b": 1, "c": null}))
                .is_none()
        );
        let locs: Vec<&Value> = c.errors.iter().map(|e| &e["loc"]).collect();
        assert_eq!(
            locs,
            [
                &json!(["body", "store", "b"]),
                &json!(["body", "store", "c"])
            ]
        );
        assert_eq!(c.errors[0]["msg"], "Input should be a valid string");
    }

    #[test]
    fn enum_message_lists_values() {
        assert_eq!(expected_list(&["A"]), "'A'");
        assert_eq!(expected_list(&["A", "B", "C"]), "'A', 'B' or 'C'");
        let mut c = Checker::default();
        assert!(
            c.enumeration(&body_loc(), &json!("X"), &["A", "B"])
                .is_none()
        );
        assert_eq!(c.errors[0]["msg"], "Input should be 'A' or 'B'");
        assert_eq!(c.errors[0]["ctx"], json!({"expected": "'A' or 'B'"}));
    }

    #[test]
    fn body_parsing_errors() {
        let ApiError::Validation(items) = parse_body(b"").unwrap_err() else {
            panic!()
        };
        assert_eq!(
            items,
            vec![json!({"type":"missing","loc":["body"],"msg":"Field required","input":null})]
        );
        let ApiError::Validation(items) = parse_body(b"{\"a\": }").unwrap_err() else {
            panic!()
        };
        assert_eq!(items[0]["type"], "json_invalid");
        assert_eq!(items[0]["loc"], json!(["body", 6]));
        assert_eq!(items[0]["msg"], "JSON decode error");
        assert_eq!(items[0]["input"], json!({}));
        assert!(items[0]["ctx"]["error"].is_string());
    }

    #[test]
    fn field_errors_render_with_inputs() {
        let body = json!({
            "nodes": [{"identifier": " store "}],
            "triggers": [{"type": "CRON", "value": {"expression": "bad"}}, {"type": "CRON", "value": {}}],
        });
        let e = FieldError::value_error(
            vec!["nodes".into(), 0usize.into(), "identifier".into()],
            "Node identifier cannot be reserved word 'store'",
        );
        assert_eq!(
            field_error_item(&body, &e),
            json!({"type":"value_error","loc":["body","nodes",0,"identifier"],
                   "msg":"Value error, Node identifier cannot be reserved word 'store'",
                   "input":" store ","ctx":{"error":{}}})
        );
        let e = FieldError::value_error(
            vec!["triggers".into(), 0usize.into(), "expression".into()],
            "Invalid cron expression",
        );
        assert_eq!(field_error_item(&body, &e)["input"], "bad");
        let e = FieldError::missing(vec!["triggers".into(), 1usize.into(), "expression".into()]);
        let item = field_error_item(&body, &e);
        assert_eq!(item["type"], "missing");
        assert_eq!(item["input"], json!({}));
        assert!(item.get("ctx").is_none());
    }
}
