//! The `TransactionEvent` wire contract shared by every txnotify component.
//!
//! This crate defines the event types, the currency table and the Kafka header names.
//!
//! # Layout
//!
//! - `lib.rs`: the schema name, version, content type and payload limit.
//! - [`event`]: [`TransactionEvent`], [`Recipient`] and [`TransactionStatus`].
//! - [`money`]: [`Money`], an amount in integer minor units of a currency.
//! - [`currency`]: the table of active ISO 4217 codes and their minor-unit exponents.
//! - [`headers`]: Kafka header names, both the producer's and the notifier's own.
//! - [`error_class`]: [`ErrorClass`], the failure class carried on retry and dead-letter records.

pub mod currency;
pub mod error_class;
pub mod event;
pub mod headers;
pub mod money;

pub use currency::{currency_exponent, CURRENCIES};
pub use error_class::{ErrorClass, ParseErrorClassError};
pub use event::{Recipient, TransactionEvent, TransactionStatus};
pub use money::Money;

/// Version of the event layout that this crate reads and writes, carried in `schema_version`.
pub const SCHEMA_VERSION: u32 = 1;

/// Value of the `schema` header on every event record.
pub const SCHEMA_NAME: &str = "transaction-event.v1";

/// Value of the `content-type` header on every event record.
pub const CONTENT_TYPE: &str = "application/json";

/// Default maximum size of an encoded event in bytes (64 KiB), checked before parsing.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;
