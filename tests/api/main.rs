//! Integration tests: the real app on port 0 against a fresh PostgreSQL database per test.
//! One test binary (modules below) so that the crate is linked once.

mod account;
mod alerts;
mod assets_and_headers;
mod audit_api;
mod bakes;
mod browser;
mod cli;
mod cloud_aws;
mod cloud_contract;
mod cloud_local;
mod csrf;
mod dashboards;
mod freezes;
mod guarded_releases;
mod health;
mod helpers;
mod images;
mod invariants;
mod jobs;
mod login;
mod metrics;
mod metrics_storage;
mod moto;
mod operator;
mod replicas;
mod retention;
mod role_matrix;
mod rollouts;
mod scaling;
mod servers;
mod statements;
mod strict_json;
mod tasks;
mod throttle;
mod users;
