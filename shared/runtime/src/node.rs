//! The node trait and its outcome type.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// What a node execution produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Output<T> {
    /// One output object.
    One(T),
    /// Several outputs: the state fans out into one sibling per output.
    Many(Vec<T>),
    /// No outputs (the state still succeeds and its successors run).
    Nothing,
    /// End this branch (Exosphere's `PruneSignal`), with free-form data.
    Prune(Map<String, Value>),
    /// Run this state again after the delay (Exosphere's `ReQueueAfterSignal`).
    RequeueAfter(Duration),
}

/// A node failure. The retry service applies the graph's retry policy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct NodeError(pub String);

impl NodeError {
    /// A failure with a message.
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// Facts about the execution at hand.
#[derive(Debug, Clone)]
pub struct Context {
    /// State id (24 hex).
    pub state_id: String,
    /// Run id.
    pub run_id: String,
    /// Graph name.
    pub graph_name: String,
    /// Node identifier in the graph.
    pub identifier: String,
    /// Dispatch attempt.
    pub attempt: u32,
    /// Delivery count of the dispatch message (more than 1 after a runtime
    /// died or timed out while holding it).
    pub delivered: i64,
    /// When JetStream stored the dispatch message (the server's clock), if
    /// the delivery says so: `now - published` is how long the work waited
    /// between the scheduler's hand-off and this execution.
    pub published: Option<std::time::SystemTime>,
    /// How to ask for this state's secrets (set when the runtime has an API
    /// key, see [`crate::Builder::register_with`]).
    pub secrets_access: Option<SecretsAccess>,
}

/// What [`Context::secrets`] needs: a NATS connection, the namespace and the
/// API key (never printed).
#[derive(Clone)]
pub struct SecretsAccess {
    /// NATS connection.
    pub client: async_nats::Client,
    /// Namespace of the runtime.
    pub namespace: String,
    /// API key (`Exo-Api-Key`).
    pub api_key: String,
}

impl std::fmt::Debug for SecretsAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsAccess")
            .field("namespace", &self.namespace)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

impl Context {
    /// The secrets of this state's graph (name → value), asked over NATS on
    /// `exo.v1.<ns>.secrets.get` with the runtime's API key: the same answer
    /// and authorization as `GET …/state/{id}/secrets`.
    pub async fn secrets(&self) -> Result<std::collections::BTreeMap<String, String>, NodeError> {
        let access = self.secrets_access.as_ref().ok_or_else(|| {
            NodeError::new("secrets need the runtime's API key (Builder::register_with)")
        })?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(exo_types::messages::HEADER_API_KEY, access.api_key.as_str());
        let body = json!({"state_id": self.state_id}).to_string();
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            access.client.request_with_headers(
                exo_types::subjects::secrets(&access.namespace),
                headers,
                body.into(),
            ),
        )
        .await
        .map_err(|_| NodeError::new("secrets: no answer within 10 s"))?
        .map_err(|e| NodeError::new(format!("secrets: {e}")))?;
        let v: Value = serde_json::from_slice(&reply.payload)
            .map_err(|e| NodeError::new(format!("secrets: malformed answer: {e}")))?;
        if v["status"] != 200 {
            return Err(NodeError::new(format!(
                "secrets: {} {}",
                v["status"],
                v["detail"].as_str().unwrap_or_default()
            )));
        }
        serde_json::from_value(v["secrets"].clone())
            .map_err(|e| NodeError::new(format!("secrets: malformed answer: {e}")))
    }
}

/// A graph node implemented in Rust. Exosphere's data model is string-only:
/// inputs and outputs are objects whose fields are strings.
pub trait Node: Send + Sync + 'static {
    /// Typed inputs, decoded from the dispatch.
    type Inputs: DeserializeOwned + Send;
    /// Typed outputs, encoded into the result.
    type Outputs: Serialize + Send;

    /// Registered node name (the routing key; `[A-Za-z0-9_-]`).
    fn name(&self) -> &str;

    /// Names of the input fields (all strings).
    fn input_fields(&self) -> Vec<&str>;

    /// Names of the output fields (all strings).
    fn output_fields(&self) -> Vec<&str>;

    /// Secret names the node needs.
    fn secrets(&self) -> Vec<&str> {
        Vec::new()
    }

    /// Runs the node.
    fn execute(
        &self,
        inputs: Self::Inputs,
        ctx: &Context,
    ) -> impl Future<Output = Result<Output<Self::Outputs>, NodeError>> + Send;
}

/// JSON Schema of an object with the given string fields, all required (the
/// shape pydantic emits for Exosphere's string-only models).
pub fn string_object_schema(title: &str, fields: &[&str]) -> Value {
    let props: Map<String, Value> = fields
        .iter()
        .map(|f| ((*f).to_string(), json!({"title": f, "type": "string"})))
        .collect();
    json!({"properties": props, "required": fields, "title": title, "type": "object"})
}

/// The outcome of one execution in wire form (what the runtime publishes).
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// Outputs of an `executed` result.
    Executed(Vec<Map<String, Value>>),
    /// Error text of an `errored` result.
    Errored(String),
    /// Data of a `pruned` result.
    Pruned(Map<String, Value>),
    /// Delay (ms) of a `requeue` result.
    Requeue(i64),
}

type BoxFut<'a> = Pin<Box<dyn Future<Output = Report> + Send + 'a>>;

/// Object-safe form of a [`Node`] (inputs and outputs as JSON), used by the
/// runtime to hold nodes of different types.
pub trait DynNode: Send + Sync + 'static {
    /// Registered node name.
    fn name(&self) -> &str;
    /// Registration payload: `{name, inputs_schema, outputs_schema, secrets}`.
    fn registration(&self) -> Value;
    /// Decodes the inputs, executes, and encodes the outcome.
    fn run<'a>(&'a self, inputs: Map<String, Value>, ctx: &'a Context) -> BoxFut<'a>;
}

impl<N: Node> DynNode for N {
    fn name(&self) -> &str {
        Node::name(self)
    }

    fn registration(&self) -> Value {
        let name = Node::name(self);
        json!({
            "name": name,
            "inputs_schema": string_object_schema("Inputs", &self.input_fields()),
            "outputs_schema": string_object_schema("Outputs", &self.output_fields()),
            "secrets": self.secrets(),
        })
    }

    fn run<'a>(&'a self, inputs: Map<String, Value>, ctx: &'a Context) -> BoxFut<'a> {
        Box::pin(async move {
            let typed: N::Inputs = match serde_json::from_value(Value::Object(inputs)) {
                Ok(t) => t,
                Err(e) => {
                    return Report::Errored(format!(
                        "inputs do not match node {}: {e}",
                        Node::name(self)
                    ));
                }
            };
            let encode = |o: N::Outputs| match serde_json::to_value(o) {
                Ok(Value::Object(m)) => Ok(m),
                Ok(other) => Err(format!("outputs must be an object, got {other}")),
                Err(e) => Err(format!("outputs cannot be encoded: {e}")),
            };
            match self.execute(typed, ctx).await {
                Ok(Output::One(o)) => match encode(o) {
                    Ok(m) => Report::Executed(vec![m]),
                    Err(e) => Report::Errored(e),
                },
                Ok(Output::Many(v)) => {
                    match v.into_iter().map(encode).collect::<Result<Vec<_>, _>>() {
                        Ok(ms) => Report::Executed(ms),
                        Err(e) => Report::Errored(e),
                    }
                }
                Ok(Output::Nothing) => Report::Executed(Vec::new()),
                Ok(Output::Prune(data)) => Report::Pruned(data),
                Ok(Output::RequeueAfter(d)) => Report::Requeue((d.as_millis() as i64).max(1)),
                Err(e) => Report::Errored(e.0),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_lists_string_fields() {
        let s = string_object_schema("Inputs", &["a", "b"]);
        assert_eq!(s["properties"]["a"]["type"], "string");
        assert_eq!(s["required"], json!(["a", "b"]));
        assert_eq!(
            exo_types::graph::input_fields(&s),
            vec!["a".to_string(), "b".to_string()]
        );
    }
}
