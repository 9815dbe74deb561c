//! `exo-service`: the plumbing every service binary shares.
//!
//! - [`config`]: layered configuration (defaults → optional TOML file → `EXO_*`
//!   environment, plus the Exosphere-compatible aliases) and its validation;
//! - [`telemetry`]: tracing initialisation (`RUST_LOG`, `EXO_LOG_FORMAT`);
//! - [`otel`]: OpenTelemetry traces over OTLP, when configured;
//! - [`shutdown`]: a signal-driven [`tokio_util::sync::CancellationToken`];
//! - [`admin`]: the `/livez`, `/readyz` and `/metrics` admin endpoints;
//! - [`metrics`]: the process's Prometheus metrics (the `exo-metrics` crate);
//! - [`runtime`]: the tokio runtime, with its configured worker threads;
//! - [`binary`]: the `main` of a consuming service binary;
//! - [`reference`](mod@reference): the configuration reference, generated from the
//!   configuration structs.

pub mod admin;
pub mod binary;
pub mod config;
pub mod otel;
pub mod reference;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;

pub use exo_metrics as metrics;
