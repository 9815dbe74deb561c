//! End-to-end tests: every test starts its own nats-server, MongoDB-wire
//! server and the five service binaries, drives them through the HTTP API and
//! NATS, and checks the outcome by reading MongoDB and the API.

mod bad_input;
mod flows;
mod nats_only;
mod redelivery;
