//! Publishing `TransactionEvent`s to Kafka for producing services.
//!
//! The [`Publisher`] validates every event before anything is sent, so an invalid event
//! is a typed error and never reaches the topic. It produces with idempotence and
//! `acks=all`, keys each record by `account_id` to keep per-account order, and writes
//! the contract headers. Waiting for local queue space is bounded by the enqueue
//! timeout, and nothing downstream of Kafka can make a publish wait or fail.
//!
//! Layout:
//!
//! - [`publisher`]: the publisher, its settings and errors.
//! - [`trace`]: W3C trace context written to the record headers.
//! - [`spool`]: the durable local spool, whose `publish` returns once the event is on
//!   local disk, and its forwarder to Kafka.
//! - [`outbox`]: the relay from a Postgres outbox table to Kafka, and the table's
//!   migration.

pub mod outbox;
pub mod publisher;
pub mod spool;
pub mod trace;

pub use publisher::{Delivery, PublishError, Publisher, PublisherConfig};
pub use spool::{Spool, SpoolConfig, SpoolError};
