#![recursion_limit = "256"]
//! Warren: an AMQP 0-9-1 message broker that RabbitMQ's clients use unchanged.
//!
//! Layering (imports run one way): `server` → `mgmt` → `connection` →
//! `broker` → `exchange` / `queue` → `message`, `protocol`, `config`, `error`.
//! - `protocol`: the wire codec (pure); `channel_map`: per-channel state by id.
//! - `message`: an immutable published message.
//! - `queue`: ready list, consumers, and the sink deliveries are encoded into.
//! - `exchange`: bindings and routing.
//! - `broker`: vhosts (declare/delete/bind rules) and users.
//! - `connection`: handshake, reader, writer, channel methods.
//! - `store`: sled definitions and the segment log of persistent messages.
//! - `mgmt`: the HTTP API.
//! - `server`: listeners and lifecycle.

pub mod broker;
pub mod channel_map;
pub mod config;
pub mod connection;
pub mod error;
pub mod exchange;
pub mod healthcheck;
pub mod message;
pub mod mgmt;
pub mod perf;
pub mod protocol;
pub mod queue;
pub mod server;
pub mod store;
pub mod tls;

pub use config::Config;
pub use server::{ServerHandle, start};
