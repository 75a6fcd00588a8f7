//! Builders shared by the email stage's unit tests.

use std::collections::BTreeMap;

use time::macros::datetime;
use txnotify_schemas::{Money, Recipient, TransactionEvent, TransactionStatus};

/// Returns a completed EUR 19.99 payment to "ACME Books" for an English
/// recipient named Alice.
pub(crate) fn sample_event() -> TransactionEvent {
    TransactionEvent {
        event_id: uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        schema_version: 1,
        transaction_id: "tx-1001".to_owned(),
        account_id: "acct-42".to_owned(),
        status: TransactionStatus::Completed,
        amount: Money {
            minor_units: 1999,
            currency: "EUR".to_owned(),
        },
        occurred_at: datetime!(2025-03-07 14:05:09 UTC),
        recipient: Recipient {
            email: "alice@example.com".to_owned(),
            display_name: Some("Alice".to_owned()),
            locale: Some("en".to_owned()),
        },
        merchant: Some("ACME Books".to_owned()),
        description: Some("Order 77".to_owned()),
        metadata: BTreeMap::new(),
    }
}
