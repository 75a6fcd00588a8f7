//! The txnotify notifier: turns `TransactionEvent` records into customer emails, one
//! per event in effect, with bounded retries and a dead-letter topic for the rest.
//!
//! Layout, one pipeline stage per module:
//!
//! - [`worker`]: the consumer-group member; lanes, held retry records, offset storing.
//! - [`pipeline`]: one record from decode to a durable outcome.
//! - [`producer`]: the worker's producer, replaced when it stops working.
//! - [`ledger`]: the sled dedupe ledger with compare-and-swap transitions.
//! - [`changelog`]: the ledger's outcomes in a Kafka topic, and the restore from it.
//! - [`breaker`]: the circuit breaker of the SMTP endpoint.
//! - [`offsets`]: contiguous per-partition watermarks.
//! - [`retry`]: the retry policy and its decision value.
//! - [`record`]: delivery metadata in record headers.
//! - [`email`]: rendering, message building and the SMTP sender.
//! - [`dlq`]: reading, filtering and replaying dead letters, with an audit record.
//! - [`topics`]: topic names and the settings `topics ensure` applies.
//! - [`events`] and [`stats`]: telemetry events and counters.
//! - [`telemetry`]: Prometheus metrics, health, the HTTP endpoint and trace context.
//! - [`config`]: worker settings and their validation.

pub mod breaker;
pub mod changelog;
pub mod config;
pub mod dlq;
pub mod email;
pub mod events;
pub mod ledger;
pub mod offsets;
pub mod pipeline;
pub mod producer;
pub mod record;
pub mod retry;
pub mod stats;
pub mod telemetry;
pub mod topics;
pub mod worker;
