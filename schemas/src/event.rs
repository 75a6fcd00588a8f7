//! The event that producers publish for every payment transaction worth a notification.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::money::Money;

/// One payment transaction, as published to the transactions topic keyed by `account_id`.
///
/// The serde form is the JSON wire format described by `json/transaction-event.v1.json`.
/// Unknown fields are ignored when deserializing, and optional fields may be absent or
/// `null`. Deserializing with serde checks types only: use [`decode`](fn@crate::decode) to read
/// untrusted payloads, or call [`TransactionEvent::validate`] afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionEvent {
    /// Unique id of the event and the notifier's idempotency key. Any UUID version except
    /// the nil UUID.
    pub event_id: Uuid,
    /// Layout version, always [`crate::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The producing system's id for the transaction.
    pub transaction_id: String,
    /// The account the transaction belongs to. It is also the Kafka record key, which keeps
    /// one account's events in order.
    pub account_id: String,
    /// Outcome of the transaction.
    pub status: TransactionStatus,
    /// Amount of the transaction.
    pub amount: Money,
    /// When the transaction reached `status`, written as RFC 3339.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// Recipient of the notification.
    pub recipient: Recipient,
    /// Name of the merchant shown to the customer. It may contain HTML, which renderers
    /// escape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant: Option<String>,
    /// Free-text description shown to the customer. It may contain HTML, which renderers
    /// escape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Producer-defined string pairs passed through to templates.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_empty_map"
    )]
    pub metadata: BTreeMap<String, String>,
}

impl TransactionEvent {
    /// Serializes the event as compact JSON, the record value on the wire.
    ///
    /// # Panics
    ///
    /// Panics if `occurred_at` cannot be written as RFC 3339, which happens only for a
    /// negative year or a UTC offset with a seconds component. [`TransactionEvent::validate`]
    /// rejects both, so a validated event never panics here.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a transaction event serializes to JSON")
    }
}

/// Outcome of a transaction. The wire form is the lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransactionStatus {
    /// The payment went through.
    Completed,
    /// The payment was declined or could not be processed.
    Failed,
    /// Money went back to the customer. Only refunds may carry a negative amount.
    Refunded,
}

impl TransactionStatus {
    /// Every status, in declaration order.
    pub const ALL: [TransactionStatus; 3] = [
        TransactionStatus::Completed,
        TransactionStatus::Failed,
        TransactionStatus::Refunded,
    ];

    /// Returns the wire form: `completed`, `failed` or `refunded`.
    pub fn as_str(&self) -> &'static str {
        match self {
            TransactionStatus::Completed => "completed",
            TransactionStatus::Failed => "failed",
            TransactionStatus::Refunded => "refunded",
        }
    }

    /// Returns whether the amount may be negative for this status.
    pub fn allows_negative_amount(&self) -> bool {
        matches!(self, TransactionStatus::Refunded)
    }
}

impl fmt::Display for TransactionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The person who receives the notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// Plain ASCII address such as `jane.doe@example.com`; [`crate::email`] gives the
    /// accepted syntax.
    pub email: String,
    /// Name shown in the greeting and the `To` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// BCP 47 language tag such as `de` or `de-DE` that selects the template language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
}

impl Recipient {
    /// Creates a recipient with only an email address.
    pub fn new(email: impl Into<String>) -> Self {
        Recipient {
            email: email.into(),
            display_name: None,
            locale: None,
        }
    }
}

/// Reads `null` as an empty map, matching the JSON Schema, which allows `"metadata": null`.
fn null_as_empty_map<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: Deserializer<'de>,
{
    let map = Option::<BTreeMap<String, String>>::deserialize(deserializer)?;
    Ok(map.unwrap_or_default())
}
