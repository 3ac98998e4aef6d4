//! Warren's integration tests, in one test binary.
//!
//! Each module was its own `tests/*.rs` target once; eighteen binaries that
//! each link tokio, lapin, rustls, axum and the broker took 1.6 GB of disk and
//! eighteen links, which a clean CI machine could not hold. One binary holds
//! them all; the harness still runs at most one test per core, as before.
//! (The resource-alarm tests stay in `tests/alarms.rs`, their own binary:
//! they read free disk space and resident memory, which the tests here would
//! move under them.)
//! Run one group with `cargo test --test integration crash::`.

mod common;

mod access_control;
mod basic;
mod cli;
mod connection;
mod crash;
mod durability;
mod exchanges;
mod metrics;
mod mgmt_api;
mod mgmt_objects;
mod mgmt_stats;
mod perf;
mod policies;
mod queue_features;
mod queues;
mod rabbit_parity;
mod reply_to_and_dead_letter;
mod tls;
