//! End-to-end tests: every test starts its own nats-server, MongoDB-wire
//! server and the five service binaries, drives them through the HTTP API and
//! NATS, and checks the outcome by reading MongoDB and the API.

mod api_contract;
mod bad_input;
mod cli;
mod compat;
mod config_reference;
mod crashpoints;
mod cron;
mod events;
mod example_runtimes;
mod faults;
mod flows;
mod leases;
mod legacy_db;
mod live_view;
mod metrics;
mod nats_only;
mod openapi;
mod pinning;
mod protocol;
mod python_sdk;
mod redelivery;
mod secrecy;
mod tenants;
mod traces;
mod upgrade;
mod webhooks;
