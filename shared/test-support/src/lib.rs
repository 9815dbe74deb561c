//! Test harness for the exo workspace: real servers and real service binaries.
//!
//! This crate is a **dev-dependency only**. It starts the external processes that integration
//! and end-to-end tests need, each on its own random loopback port with its own temporary
//! data directory, and kills them when the handle is dropped:
//!
//! - [`NatsServer`]: a `nats-server` (2.10 or newer, JetStream enabled) from
//!   [`nats_server_bin`].
//! - [`MongoServer`]: a MongoDB-wire server (`secantusd-rs`) from [`mongo_server_bin`], or an
//!   existing server named by `EXO_TEST_MONGO_URI`.
//! - [`Servers`]: both, started in parallel.
//! - [`ServiceProcess`]: one of the workspace's own binaries (`exo-api`, `exo-completion`, …)
//!   built by `cargo build --workspace --bins`, waited on until its `/readyz` answers 200.
//!
//! - [`ApiClient`]: calls the api with its key (upsert a VALID graph, trigger a run, ...).
//! - [`invariants`] and [`lifecycle`]: the oracles of a settled run's documents and of its
//!   lifecycle events.
//!
//! Plus small helpers: [`free_port`], [`unique_db_name`], [`workspace_root`], [`service_bin`]
//! and [`init_test_tracing`] (quiet unless `TEST_LOG` is set).
//!
//! The server binaries are installed by `deploy/install.sh` (see
//! `shared/design/local-servers.md` for the versions and why).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use exo_test_support::{Servers, ServiceProcess, free_port, unique_db_name};
//!
//! let servers = Servers::start().await?;
//! let admin = format!("127.0.0.1:{}", free_port());
//! let env = vec![
//!     ("EXO_NATS__URL".to_string(), servers.nats.url()),
//!     ("EXO_MONGO__URI".to_string(), servers.mongo.uri()),
//!     ("EXO_MONGO__DATABASE".to_string(), unique_db_name("e2e")),
//!     ("EXO_ADMIN__ADDR".to_string(), admin),
//! ];
//! let mut completion = ServiceProcess::spawn("exo-completion", &env).await?;
//! completion.kill9();
//! completion.restart().await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod handlers;
pub mod invariants;
pub mod lifecycle;
mod mongo;
mod names;
mod nats;
mod paths;
mod ports;
mod process;
mod servers;
mod service;
mod tracing_init;

pub use api::ApiClient;

/// The control-plane services, in start order.
pub const SERVICES: [&str; 5] = [
    "exo-trigger",
    "exo-scheduler",
    "exo-completion",
    "exo-retry",
    "exo-api",
];

pub use mongo::{MongoOptions, MongoServer};
pub use names::unique_db_name;
pub use nats::NatsServer;
pub use paths::{mongo_server_bin, nats_server_bin, service_bin, workspace_root};
pub use ports::free_port;
pub use servers::Servers;
pub use service::ServiceProcess;
pub use tracing_init::init_test_tracing;
