//! The `TransactionEvent` wire contract shared by every txnotify component.
//!
//! Producers build a [`TransactionEvent`], call [`TransactionEvent::validate`] and publish
//! [`TransactionEvent::to_json_bytes`] with the [`headers`] this crate names. Notifiers turn
//! the record value back into an event with [`decode`](fn@decode), which rejects oversized payloads,
//! non-JSON input, unknown schema versions and every field that breaks a rule, and reports
//! each broken rule by field path.
//!
//! Non-Rust producers use the JSON Schema in `json/transaction-event.v1.json`. The tests
//! check that the schema and the Rust types accept the same corpus in `examples/`, apart from
//! the few rules that JSON Schema cannot express.
//!
//! # Layout
//!
//! - `lib.rs`: the schema name, version, content type and payload limit.
//! - [`event`]: [`TransactionEvent`], [`Recipient`] and [`TransactionStatus`].
//! - [`money`]: [`Money`], an amount in integer minor units of a currency.
//! - [`currency`]: the table of active ISO 4217 codes and their minor-unit exponents.
//! - [`validate`]: the field rules, their limits as constants, and [`TransactionEvent::validate`].
//! - [`email`]: the accepted syntax of a recipient address.
//! - [`decode`](mod@decode): [`decode`](fn@decode), which turns payload bytes into a validated event.
//! - [`error`]: [`DecodeError`], [`ValidationErrors`] and [`FieldError`].
//! - [`headers`]: Kafka header names, both the producer's and the notifier's own.
//! - [`error_class`]: [`ErrorClass`], the failure class carried on retry and dead-letter records.

pub mod currency;
pub mod decode;
pub mod email;
pub mod error;
pub mod error_class;
pub mod event;
pub mod headers;
pub mod money;
pub mod validate;

pub use currency::{currency_exponent, CURRENCIES};
pub use decode::{decode, Limits};
pub use error::{DecodeError, FieldError, ValidationErrors};
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
///
/// NOTE: the field limits in [`validate`] count characters, not bytes. A valid event whose
/// strings use many multi-byte UTF-8 characters can exceed this size, so producers should
/// check the encoded length as well as [`TransactionEvent::validate`].
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;
