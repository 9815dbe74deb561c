//! An executed result with its outputs kept as the JSON text they arrived
//! in. A fan-out of a million outputs then costs its payload plus 8 bytes
//! per output while it is applied, whatever the outputs hold, and each
//! chunk converts only its own outputs to documents.

use bytes::Bytes;
use exo_engine::common::json_to_doc;
use exo_store::mongodb::bson::Document;
use exo_types::ids::StateId;
use exo_types::messages::Executed;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// An executed result (`exo.v1.<ns>.result.executed…`), outputs unparsed.
#[derive(Debug, Clone)]
pub struct ExecutedResult {
    /// State id.
    pub state_id: StateId,
    /// Attempt from the dispatch.
    pub attempt: u32,
    /// The outputs, checked.
    pub outputs: Outputs,
}

/// The outputs of an executed result: the message text and where each
/// output lies in it. Every output was checked to be a JSON object that
/// can be stored when the result was read.
#[derive(Debug, Clone)]
pub struct Outputs {
    text: Bytes,
    spans: Vec<(u32, u32)>,
    digest: String,
}

/// The wire form, borrowing each output's text from the payload.
#[derive(serde::Deserialize)]
struct Wire<'a> {
    state_id: StateId,
    attempt: u32,
    #[serde(borrow)]
    outputs: Vec<&'a RawValue>,
}

impl ExecutedResult {
    /// Reads a result message. `Err` names what is wrong with it (the
    /// message can never be applied).
    pub fn decode(payload: Bytes) -> Result<Self, String> {
        let wire: Wire<'_> = serde_json::from_slice(&payload).map_err(|e| e.to_string())?;
        if u32::try_from(payload.len()).is_err() {
            return Err(format!("result of {} bytes is too large", payload.len()));
        }
        let base = payload.as_ptr() as usize;
        let spans = wire
            .outputs
            .iter()
            .map(|raw| {
                let at = raw.get().as_ptr() as usize - base;
                (at as u32, raw.get().len() as u32)
            })
            .collect();
        let (state_id, attempt) = (wire.state_id, wire.attempt);
        let outputs = Outputs::checked(payload, spans)?;
        Ok(Self {
            state_id,
            attempt,
            outputs,
        })
    }
}

impl TryFrom<Executed> for ExecutedResult {
    type Error = String;

    fn try_from(m: Executed) -> Result<Self, String> {
        Self::decode(Bytes::from(
            serde_json::to_vec(&m).map_err(|e| e.to_string())?,
        ))
    }
}

impl Outputs {
    /// Checks every output (a JSON object BSON can hold) and computes the
    /// digest of the list, one output at a time.
    fn checked(text: Bytes, spans: Vec<(u32, u32)>) -> Result<Self, String> {
        let mut hash = Sha256::new();
        hash.update(b"[");
        for (j, &span) in spans.iter().enumerate() {
            if j > 0 {
                hash.update(b",");
            }
            let map = parse(&text, span).map_err(|e| format!("output {j}: {e}"))?;
            json_to_doc(&map).map_err(|e| format!("output {j}: {e}"))?;
            hash.update(serde_json::to_vec(&map).map_err(|e| e.to_string())?);
        }
        hash.update(b"]");
        let digest = hex::encode(hash.finalize());
        Ok(Self {
            text,
            spans,
            digest,
        })
    }

    /// How many states the result covers: one per output, at least one
    /// (a result without outputs records an empty one).
    pub fn len(&self) -> usize {
        self.spans.len().max(1)
    }

    /// Always false: a result covers at least its own state.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// SHA-256 (hex) of the outputs as a JSON list, each object written
    /// back in its own key order without spaces: equal results give equal
    /// digests however they were formatted.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Output `j` as a document (`j < len()`).
    pub fn doc(&self, j: usize) -> Document {
        let Some(&span) = self.spans.get(j) else {
            return Document::new();
        };
        // Checked when the result was read; the same text parses the same.
        parse(&self.text, span)
            .ok()
            .and_then(|m| json_to_doc(&m).ok())
            .unwrap_or_default()
    }
}

/// The output at `span` of `text`, as a JSON object.
fn parse(text: &[u8], (at, len): (u32, u32)) -> Result<Map<String, Value>, String> {
    let bytes = &text[at as usize..(at + len) as usize];
    serde_json::from_slice(bytes).map_err(|e| format!("not a JSON object: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executed(outputs: Vec<Map<String, Value>>) -> Executed {
        Executed {
            state_id: StateId::from_bytes([7; 12]),
            attempt: 2,
            outputs,
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn outputs_read_from_text_equal_the_parsed_ones() {
        let outs = vec![
            obj(serde_json::json!({"b": 1, "a": "x"})),
            obj(serde_json::json!({"nested": {"k": [1, 2.5, null]}})),
        ];
        let r = ExecutedResult::try_from(executed(outs.clone())).expect("valid");
        assert_eq!((r.state_id, r.attempt), (StateId::from_bytes([7; 12]), 2));
        assert_eq!(r.outputs.len(), 2);
        for (j, o) in outs.iter().enumerate() {
            assert_eq!(r.outputs.doc(j), json_to_doc(o).expect("doc"));
        }
        let whole = Sha256::digest(serde_json::to_vec(&outs).expect("json"));
        assert_eq!(r.outputs.digest(), hex::encode(whole));
    }

    #[test]
    fn formatting_does_not_change_the_digest() {
        let a = ExecutedResult::decode(Bytes::from_static(
            br#"{"state_id":"070707070707070707070707","attempt":1,"outputs":[{"a":1,"b":[true]}]}"#,
        ))
        .expect("a");
        let b = ExecutedResult::decode(Bytes::from_static(
            b"{ \"outputs\" : [ { \"a\" : 1 ,\n \"b\" : [ true ] } ], \"attempt\": 1, \"state_id\": \"070707070707070707070707\" }",
        ))
        .expect("b");
        assert_eq!(a.outputs.digest(), b.outputs.digest());
        assert_eq!(a.outputs.doc(0), b.outputs.doc(0));
    }

    #[test]
    fn no_outputs_is_one_empty_output() {
        let r = ExecutedResult::try_from(executed(Vec::new())).expect("valid");
        assert_eq!(r.outputs.len(), 1);
        assert_eq!(r.outputs.doc(0), Document::new());
        assert_eq!(
            r.outputs.digest(),
            hex::encode(Sha256::digest(b"[]")),
            "digest of the list as sent"
        );
    }

    #[test]
    fn a_bad_output_names_its_index() {
        for (body, want) in [
            (
                r#"{"state_id":"070707070707070707070707","attempt":1,"outputs":[{},3]}"#,
                "output 1",
            ),
            (
                r#"{"state_id":"070707070707070707070707","attempt":1,"outputs":[{"big":18446744073709551615}]}"#,
                "cannot be stored",
            ),
            (
                r#"{"state_id":"070707070707070707070707","outputs":[]}"#,
                "attempt",
            ),
            (
                r#"{"state_id":"s","attempt":1,"outputs":[]}"#,
                "24 hex digits",
            ),
        ] {
            let e = ExecutedResult::decode(Bytes::from(body)).expect_err(body);
            assert!(e.contains(want), "{body}: {e}");
        }
    }
}
