//! `exo-runtime`: the Rust runtime SDK.
//!
//! A runtime process serves some nodes of one namespace. For every node it
//! pulls from the node's durable JetStream queue (`exo.v1.<ns>.dispatch.<node>`,
//! shared by every replica serving that node), runs [`Node::execute`] with
//! typed inputs, and publishes the result (`exo.v1.<ns>.result.<kind>`) before
//! acking the dispatch. Long executions send heartbeats (JetStream progress
//! acks) so the work is not handed to another replica; if the process dies,
//! the dispatch is redelivered to another replica after the ack wait.
//!
//! ```no_run
//! use exo_runtime::{Node, Output, Context, Runtime};
//! use serde::{Deserialize, Serialize};
//!
//! struct Greet;
//! #[derive(Deserialize)]
//! struct In { name: String }
//! #[derive(Serialize)]
//! struct Out { greeting: String }
//!
//! impl Node for Greet {
//!     type Inputs = In;
//!     type Outputs = Out;
//!     fn name(&self) -> &str { "Greet" }
//!     fn input_fields(&self) -> Vec<&str> { vec!["name"] }
//!     fn output_fields(&self) -> Vec<&str> { vec!["greeting"] }
//!     async fn execute(&self, i: In, _: &Context) -> Result<Output<Out>, exo_runtime::NodeError> {
//!         Ok(Output::One(Out { greeting: format!("hello {}", i.name) }))
//!     }
//! }
//!
//! # async fn run() -> Result<(), exo_runtime::Error> {
//! let runtime = Runtime::builder("my-namespace", "my-runtime")
//!     .nats_url("nats://127.0.0.1:4222")
//!     .node(Greet)
//!     .build();
//! runtime.run(tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

mod node;
mod runner;

pub use exo_bus::NatsAuth;
pub use node::{
    Context, DynNode, Node, NodeError, Output, Report, SecretsAccess, string_object_schema,
};
pub use runner::{Builder, Error, Registration, Runtime};
