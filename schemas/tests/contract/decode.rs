//! Tests of `decode` that the corpus cannot express: size limits, exact messages and error
//! collection.

use serde_json::{json, Value};
use txnotify_schemas::{decode, DecodeError, Limits, TransactionStatus, DEFAULT_MAX_PAYLOAD_BYTES};

use crate::valid_example;

fn minimal() -> Value {
    valid_example("completed-eur-minimal.json")
}

fn decode_value(value: &Value) -> Result<txnotify_schemas::TransactionEvent, DecodeError> {
    decode(&serde_json::to_vec(value).unwrap(), &Limits::default())
}

/// Returns the `path: reason` strings of an `Invalid` error.
fn field_errors(value: &Value) -> Vec<String> {
    match decode_value(value) {
        Err(DecodeError::Invalid(errors)) => errors.0.iter().map(ToString::to_string).collect(),
        other => panic!("expected an invalid event, got {other:?}"),
    }
}

#[test]
fn oversized_payload_is_too_large() {
    let mut event = minimal();
    event["padding"] = json!("x".repeat(DEFAULT_MAX_PAYLOAD_BYTES));
    let bytes = serde_json::to_vec(&event).unwrap();

    match decode(&bytes, &Limits::default()) {
        Err(DecodeError::TooLarge { size, max }) => {
            assert_eq!(size, bytes.len());
            assert_eq!(max, DEFAULT_MAX_PAYLOAD_BYTES);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn size_is_checked_before_parsing() {
    let garbage = vec![b'{'; DEFAULT_MAX_PAYLOAD_BYTES + 1];
    assert!(matches!(
        decode(&garbage, &Limits::default()),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn payload_at_limit_is_accepted() {
    let bytes = serde_json::to_vec(&minimal()).unwrap();
    let limits = Limits {
        max_payload_bytes: bytes.len(),
    };
    assert!(decode(&bytes, &limits).is_ok());

    let smaller = Limits {
        max_payload_bytes: bytes.len() - 1,
    };
    assert!(matches!(
        decode(&bytes, &smaller),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn default_limit_is_64_kib() {
    assert_eq!(Limits::default().max_payload_bytes, 65_536);
}

#[test]
fn not_json_names_line_and_column() {
    let error = decode(b"{\n  \"event_id\": secret\n}", &Limits::default()).unwrap_err();
    let DecodeError::NotJson { message } = &error else {
        panic!("expected NotJson, got {error:?}");
    };
    assert!(message.contains("line 2"), "message {message:?}");
    assert!(!message.contains("secret"), "message {message:?}");
}

#[test]
fn empty_payload_is_not_json() {
    assert!(matches!(
        decode(b"", &Limits::default()),
        Err(DecodeError::NotJson { .. })
    ));
}

#[test]
fn float_amount_message() {
    let mut event = minimal();
    event["amount"]["minor_units"] = json!(12.5);
    assert_eq!(
        field_errors(&event),
        vec!["amount.minor_units: must be an integer count of minor units without a fraction or exponent, got 12.5"]
    );
}

#[test]
fn bad_occurred_at_names_component() {
    let mut event = minimal();
    event["occurred_at"] = json!("2024-02-30T10:00:00Z");
    assert_eq!(
        field_errors(&event),
        vec!["occurred_at: must be an RFC 3339 date-time such as \"2024-05-01T12:30:00Z\", but its day is out of range"]
    );
}

#[test]
fn missing_offset_is_named() {
    let mut event = minimal();
    event["occurred_at"] = json!("2024-05-01T12:30:00");
    assert_eq!(
        field_errors(&event),
        vec!["occurred_at: must be an RFC 3339 date-time such as \"2024-05-01T12:30:00Z\", but its UTC offset ('Z' or +hh:mm) is missing or invalid"]
    );
}

#[test]
fn unsupported_version_shows_value() {
    for (version, shown) in [(json!(2), "2"), (json!(0), "0"), (json!(1.5), "1.5")] {
        let mut event = minimal();
        event["schema_version"] = version;
        match decode_value(&event) {
            Err(DecodeError::UnsupportedSchemaVersion { found }) => assert_eq!(found, shown),
            other => panic!("expected UnsupportedSchemaVersion, got {other:?}"),
        }
    }
}

#[test]
fn version_is_checked_before_fields() {
    let event = json!({"schema_version": 2, "amount": "twelve"});
    assert!(matches!(
        decode_value(&event),
        Err(DecodeError::UnsupportedSchemaVersion { .. })
    ));
}

#[test]
fn missing_version_is_invalid() {
    let mut event = minimal();
    event.as_object_mut().unwrap().remove("schema_version");
    assert_eq!(field_errors(&event), vec!["schema_version: is required"]);
}

#[test]
fn every_broken_field_is_reported() {
    let mut event = minimal();
    event["transaction_id"] = json!("");
    event["amount"] = json!({"minor_units": -5, "currency": "eur"});
    event["recipient"]["email"] = json!("jane.doe");
    event["recipient"]["locale"] = json!("de_DE");
    event["metadata"] = json!({"ok": "fine", "n": 3});

    assert_eq!(
        field_errors(&event),
        vec![
            "transaction_id: must not be empty",
            "amount.minor_units: must not be negative when status is completed because only refunds may be negative, got -5",
            "amount.currency: must be an uppercase ISO 4217 code such as \"EUR\", got \"eur\"",
            "recipient.email: must contain exactly one '@', found 0",
            "recipient.locale: must be a BCP 47 language tag such as \"de\" or \"de-DE\": 2 or 3 letters, then subtags of 2 to 8 letters or digits, each after a '-'",
            "metadata.n: must be a string, got a number",
        ]
    );
}

#[test]
fn missing_fields_are_reported_together() {
    let event = json!({"schema_version": 1});
    let paths: Vec<String> = field_errors(&event)
        .into_iter()
        .map(|error| error.split(':').next().unwrap().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "event_id",
            "transaction_id",
            "account_id",
            "status",
            "amount",
            "occurred_at",
            "recipient"
        ]
    );
}

#[test]
fn top_level_must_be_object() {
    assert_eq!(
        field_errors(&json!("an event")),
        vec!["must be a JSON object, got a string"]
    );
}

#[test]
fn refund_may_be_negative() {
    let mut event = minimal();
    event["status"] = json!("refunded");
    event["amount"]["minor_units"] = json!(-1999);

    let decoded = decode_value(&event).unwrap();
    assert_eq!(decoded.status, TransactionStatus::Refunded);
    assert_eq!(decoded.amount.minor_units, -1999);
}

#[test]
fn validate_agrees_with_decode() {
    let mut event = minimal();
    event["amount"]["currency"] = json!("XYZ");
    event["recipient"]["display_name"] = json!("Jane\nDoe");
    let decode_errors = field_errors(&event);

    // Build the same event through serde, which checks types only, then validate it.
    let typed: txnotify_schemas::TransactionEvent = serde_json::from_value(event).unwrap();
    let validate_errors: Vec<String> = typed
        .validate()
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(decode_errors, validate_errors);
}

#[test]
fn to_json_bytes_compact_output() {
    let event = decode_value(&minimal()).unwrap();
    let text = String::from_utf8(event.to_json_bytes()).unwrap();

    assert!(!text.contains('\n'), "{text}");
    assert!(!text.contains(": "), "{text}");
    for absent in [
        "merchant",
        "description",
        "metadata",
        "display_name",
        "locale",
    ] {
        assert!(!text.contains(absent), "{absent} in {text}");
    }
    assert!(
        text.contains(r#""amount":{"minor_units":1999,"currency":"EUR"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#""occurred_at":"2024-05-01T12:30:00Z""#),
        "{text}"
    );
}
