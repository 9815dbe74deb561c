//! `exo-types`: the pure domain of the orchestrator.
//!
//! Nothing in this crate performs IO. It holds the state machine vocabulary
//! ([`status`]), graph templates and their validation ([`graph`]), the
//! `${{ id.outputs.field }}` placeholder language ([`placeholder`]), retry
//! delay formulas ([`retry`]), cron parsing ([`cron`]), deterministic ids
//! ([`ids`]), the wire messages exchanged over NATS ([`messages`]) and the
//! subject, stream and consumer name builders ([`subjects`]).

pub mod cron;
pub mod graph;
pub mod ids;
pub mod messages;
pub mod names;
pub mod placeholder;
pub mod pyrepr;
pub mod retry;
pub mod status;
pub mod subject_pattern;
pub mod subjects;
pub mod time;
pub mod validation;
