//! Kiln: a web console for fleets of immutable servers.
//!
//! The crate is laid out by room (see ARCHITECTURE.md): `domain` holds validated types with
//! no I/O, `db` the queries, `auth` credentials and throttling, `web` the HTTP surface,
//! `cli` the command line, `agent` the process that runs on every server.

pub mod agent;
pub mod alerts;
pub mod auth;
pub mod bakes;
pub mod bench;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod db;
pub mod demo;
pub mod domain;
pub mod error;
pub mod fleet;
pub mod jobs;
pub mod metrics;
pub mod retention;
pub mod rollouts;
pub mod scaling;
pub mod startup;
pub mod tasks;
pub mod telemetry;
pub mod web;
