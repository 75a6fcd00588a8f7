//! Tests that fail when `json/transaction-event.v1.json` and the Rust types disagree.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use serde_json::{json, Value};
use txnotify_schemas::validate::{
    MAX_ABS_MINOR_UNITS, MAX_DESCRIPTION_CHARS, MAX_DISPLAY_NAME_CHARS, MAX_ID_CHARS,
    MAX_LOCALE_CHARS, MAX_MERCHANT_CHARS, MAX_METADATA_ENTRIES, MAX_METADATA_VALUE_CHARS,
};
use txnotify_schemas::{
    decode, email, DecodeError, Limits, TransactionEvent, TransactionStatus, CURRENCIES,
    SCHEMA_VERSION,
};

use crate::{read_examples, valid_example};

/// Examples on which the JSON Schema and `decode` are expected to disagree, each with the
/// rule that JSON Schema cannot express. The schema accepts them and `decode` rejects them.
const RUST_ONLY: &[(&str, &str)] = &[
    (
        "amount-whole-float.json",
        "JSON Schema's integer type accepts 1999.0, but decode rejects any amount written \
         with a fraction so that no producer sends floats",
    ),
    (
        "amount-exponent.json",
        "JSON Schema's integer type accepts 2e3, but decode rejects exponent notation for the \
         same reason",
    ),
];

fn schema() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json/transaction-event.v1.json");
    let bytes = fs::read(path).expect("the JSON Schema file is readable");
    serde_json::from_slice(&bytes).expect("the JSON Schema file is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema())
        .expect("the JSON Schema compiles")
}

/// Returns the keys of the object at `pointer` in `value`.
fn keys(value: &Value, pointer: &str) -> BTreeSet<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("no object at {pointer}"))
        .keys()
        .cloned()
        .collect()
}

/// Returns the strings of the array at `pointer` in `value`.
fn strings(value: &Value, pointer: &str) -> BTreeSet<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no array at {pointer}"))
        .iter()
        .map(|item| item.as_str().expect("a string").to_owned())
        .collect()
}

/// Returns an event with every optional field set, as the Rust types serialize it.
fn full_event() -> Value {
    let bytes = serde_json::to_vec(&valid_example("completed-usd-all-fields.json")).unwrap();
    let event = decode(&bytes, &Limits::default()).unwrap();
    assert!(event.merchant.is_some());
    assert!(event.description.is_some());
    assert!(event.recipient.display_name.is_some());
    assert!(event.recipient.locale.is_some());
    assert!(!event.metadata.is_empty());
    serde_json::to_value(&event).unwrap()
}

/// The object levels of the event: schema pointer to the `properties` map, and the JSON
/// pointer of the same object in an event ("" for the top level).
const LEVELS: [(&str, &str); 3] = [
    ("", ""),
    ("/properties/amount", "/amount"),
    ("/properties/recipient", "/recipient"),
];

#[test]
fn schema_is_valid_draft_2020_12() {
    let schema = schema();
    assert!(jsonschema::draft202012::meta::is_valid(&schema));
    assert_eq!(
        schema["$schema"],
        json!("https://json-schema.org/draft/2020-12/schema")
    );
}

#[test]
fn properties_match_serialized_fields() {
    let schema = schema();
    let event = full_event();

    for (schema_pointer, event_pointer) in LEVELS {
        assert_eq!(
            keys(&schema, &format!("{schema_pointer}/properties")),
            keys(&event, event_pointer),
            "properties at level {event_pointer:?}"
        );
    }
}

#[test]
fn required_matches_decode() {
    let schema = schema();
    let event = full_event();

    for (schema_pointer, event_pointer) in LEVELS {
        let mut required_by_rust = BTreeSet::new();
        for property in keys(&schema, &format!("{schema_pointer}/properties")) {
            let mut without = event.clone();
            let object = if event_pointer.is_empty() {
                &mut without
            } else {
                without.pointer_mut(event_pointer).unwrap()
            };
            object.as_object_mut().unwrap().remove(&property);

            let path = format!("{}{property}", dotted_prefix(event_pointer));
            let bytes = serde_json::to_vec(&without).unwrap();
            let rejected_for_missing = match decode(&bytes, &Limits::default()) {
                Ok(_) => false,
                Err(DecodeError::Invalid(errors)) => errors
                    .0
                    .iter()
                    .any(|e| e.path == path && e.reason == "is required"),
                Err(other) => panic!("removing {path}: unexpected {other}"),
            };

            // The serde derive must agree with decode about which fields are required.
            let serde_rejects = serde_json::from_value::<TransactionEvent>(without).is_err();
            assert_eq!(
                serde_rejects, rejected_for_missing,
                "serde vs decode on {path}"
            );

            if rejected_for_missing {
                required_by_rust.insert(property);
            }
        }

        assert_eq!(
            strings(&schema, &format!("{schema_pointer}/required")),
            required_by_rust,
            "required at level {event_pointer:?}"
        );
    }
}

/// Turns "/recipient" into "recipient." and "" into "".
fn dotted_prefix(event_pointer: &str) -> String {
    match event_pointer.strip_prefix('/') {
        Some(name) => format!("{name}."),
        None => String::new(),
    }
}

#[test]
fn enums_match_rust() {
    let schema = schema();

    let statuses: BTreeSet<String> = TransactionStatus::ALL
        .iter()
        .map(|status| status.as_str().to_owned())
        .collect();
    assert_eq!(strings(&schema, "/properties/status/enum"), statuses);

    let currencies: BTreeSet<String> = CURRENCIES
        .iter()
        .map(|(code, _)| (*code).to_owned())
        .collect();
    assert_eq!(
        strings(&schema, "/properties/amount/properties/currency/enum"),
        currencies
    );
}

#[test]
fn limits_match_rust_constants() {
    let schema = schema();
    let cases = [
        ("/properties/schema_version/const", json!(SCHEMA_VERSION)),
        ("/properties/transaction_id/maxLength", json!(MAX_ID_CHARS)),
        ("/properties/account_id/maxLength", json!(MAX_ID_CHARS)),
        (
            "/properties/amount/properties/minor_units/maximum",
            json!(MAX_ABS_MINOR_UNITS),
        ),
        (
            "/properties/amount/properties/minor_units/minimum",
            json!(-MAX_ABS_MINOR_UNITS),
        ),
        (
            "/properties/recipient/properties/email/maxLength",
            json!(email::MAX_ADDRESS_CHARS),
        ),
        (
            "/properties/recipient/properties/display_name/maxLength",
            json!(MAX_DISPLAY_NAME_CHARS),
        ),
        (
            "/properties/recipient/properties/locale/maxLength",
            json!(MAX_LOCALE_CHARS),
        ),
        ("/properties/merchant/maxLength", json!(MAX_MERCHANT_CHARS)),
        (
            "/properties/description/maxLength",
            json!(MAX_DESCRIPTION_CHARS),
        ),
        (
            "/properties/metadata/maxProperties",
            json!(MAX_METADATA_ENTRIES),
        ),
        (
            "/properties/metadata/additionalProperties/maxLength",
            json!(MAX_METADATA_VALUE_CHARS),
        ),
    ];
    for (pointer, expected) in cases {
        assert_eq!(schema.pointer(pointer), Some(&expected), "{pointer}");
    }
}

#[test]
fn corpus_verdicts_agree() {
    let validator = validator();

    for kind in ["valid", "invalid"] {
        for (name, bytes) in read_examples(kind) {
            let rust_accepts = decode(&bytes, &Limits::default()).is_ok();
            let schema_accepts = serde_json::from_slice::<Value>(&bytes)
                .is_ok_and(|instance| validator.is_valid(&instance));

            if let Some((_, reason)) = RUST_ONLY.iter().find(|(file, _)| *file == name) {
                assert!(!rust_accepts, "{name}: decode should reject it ({reason})");
                assert!(
                    schema_accepts,
                    "{name}: no longer a Rust-only rule ({reason})"
                );
            } else {
                assert_eq!(
                    schema_accepts, rust_accepts,
                    "{kind}/{name}: schema accepts = {schema_accepts}, decode accepts = {rust_accepts}"
                );
            }
        }
    }
}

#[test]
fn rust_only_examples_exist() {
    let invalid: Vec<String> = read_examples("invalid")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    for (file, _) in RUST_ONLY {
        assert!(invalid.iter().any(|name| name == file), "{file} is missing");
    }
}

/// Sets one field of a valid event and returns (decode accepts, schema accepts).
fn verdicts(validator: &jsonschema::Validator, pointer: &str, value: Value) -> (bool, bool) {
    let mut event = valid_example("completed-usd-all-fields.json");
    *event.pointer_mut(pointer).unwrap() = value;

    let rust_accepts = decode(&serde_json::to_vec(&event).unwrap(), &Limits::default()).is_ok();
    let schema_accepts = validator.is_valid(&event);
    (rust_accepts, schema_accepts)
}

#[test]
fn email_pattern_agrees_with_rust() {
    let validator = validator();
    let long_local = format!("{}@example.com", "a".repeat(64));
    let too_long_local = format!("{}@example.com", "a".repeat(65));
    let long_label = format!("a@{}.com", "b".repeat(63));
    let too_long_label = format!("a@{}.com", "b".repeat(64));
    let addresses = [
        "jane@example.com",
        "JANE.DOE@EXAMPLE.COM",
        "o'brien+tag@mail.example-shop.co.uk",
        "!#$%&'*+-/=?^_`{|}~@example.com",
        "x@a.bc",
        "1@2.3",
        long_local.as_str(),
        too_long_local.as_str(),
        long_label.as_str(),
        too_long_label.as_str(),
        "",
        "@",
        "jane",
        "jane@",
        "@example.com",
        "jane@example",
        "jane@@example.com",
        "jane@doe@example.com",
        ".jane@example.com",
        "jane.@example.com",
        "ja..ne@example.com",
        "jane@.example.com",
        "jane@example.com.",
        "jane@example..com",
        "jane@-example.com",
        "jane@example-.com",
        "jane@ex-ample.com",
        "jane@exa_mple.com",
        "jane doe@example.com",
        "jane@example.com ",
        "jane@example.com\n",
        "\"jane\"@example.com",
        "<jane@example.com>",
        "jane,joe@example.com",
        "jane;joe@example.com",
        "jane\\@example.com",
        "jane(comment)@example.com",
        "jäne@example.com",
        "jane@exämple.com",
        "jane@[192.0.2.1]",
    ];

    for address in addresses {
        let (rust, schema) = verdicts(&validator, "/recipient/email", json!(address));
        assert_eq!(
            schema, rust,
            "{address:?}: schema accepts = {schema}, decode accepts = {rust}"
        );
    }
}

#[test]
fn locale_pattern_agrees_with_rust() {
    let validator = validator();
    let locales = [
        "de",
        "DE",
        "de-DE",
        "gsw-CH",
        "zh-Hant-TW",
        "es-419",
        "sl-rozaj-biske",
        "",
        "d",
        "deut",
        "de_DE",
        "de-",
        "-de",
        "de--DE",
        "de-D",
        "de-abcdefghi",
        "th-TH-u-nu-thai",
        "x-private",
        "de-DE\n",
        "dé",
        "en-abcdefgh-abcdefgh-abcdefgh-abcd",
        "en-abcdefgh-abcdefgh-abcdefgh-abcde",
    ];

    for locale in locales {
        let (rust, schema) = verdicts(&validator, "/recipient/locale", json!(locale));
        assert_eq!(
            schema, rust,
            "{locale:?}: schema accepts = {schema}, decode accepts = {rust}"
        );
    }
}

#[test]
fn text_rules_agree_with_rust() {
    let validator = validator();
    let texts = [
        "plain",
        "",
        "<b>HTML & entities</b>",
        "ünïcødé 李 🙂",
        "non-breaking\u{a0}space",
        "line\nbreak",
        "carriage\rreturn",
        "tab\there",
        "nul\u{0}byte",
        "delete\u{7f}",
        "c1 control\u{85}",
        "trailing newline\n",
    ];

    for pointer in [
        "/merchant",
        "/description",
        "/recipient/display_name",
        "/transaction_id",
    ] {
        for text in texts {
            let (rust, schema) = verdicts(&validator, pointer, json!(text));
            assert_eq!(
                schema, rust,
                "{pointer} = {text:?}: schema accepts = {schema}, decode accepts = {rust}"
            );
        }
    }
}

#[test]
fn metadata_rules_agree_with_rust() {
    let validator = validator();
    let max_entries: serde_json::Map<String, Value> = (0..MAX_METADATA_ENTRIES)
        .map(|i| (format!("k{i}"), json!("v")))
        .collect();
    let too_many: serde_json::Map<String, Value> = (0..=MAX_METADATA_ENTRIES)
        .map(|i| (format!("k{i}"), json!("v")))
        .collect();
    let cases = [
        json!({}),
        json!(null),
        json!({"order.id": "1", "a_b-c": ""}),
        json!({"k".repeat(64): "v"}),
        json!({"k".repeat(65): "v"}),
        json!({"": "v"}),
        json!({"has space": "v"}),
        json!({"ümlaut": "v"}),
        json!({"n": 1}),
        json!({"n": null}),
        json!({"v": "x".repeat(512)}),
        json!({"v": "x".repeat(513)}),
        json!({"v": "line\nbreak"}),
        Value::Object(max_entries),
        Value::Object(too_many),
        json!(["not", "an", "object"]),
    ];

    for metadata in cases {
        let value_text = metadata.to_string();
        let (rust, schema) = verdicts(&validator, "/metadata", metadata);
        assert_eq!(
            schema, rust,
            "metadata {value_text:.80}: schema accepts = {schema}, decode accepts = {rust}"
        );
    }
}

#[test]
fn scalar_rules_agree_with_rust() {
    let validator = validator();
    let cases = [
        ("/event_id", json!("3f1c9a52-8d4e-4b7a-9c21-5e8f0a6d2b13")),
        ("/event_id", json!("3F1C9A52-8D4E-4B7A-9C21-5E8F0A6D2B13")),
        ("/event_id", json!("00000000-0000-0000-0000-000000000000")),
        ("/event_id", json!("ffffffff-ffff-ffff-ffff-ffffffffffff")),
        ("/event_id", json!("{3f1c9a52-8d4e-4b7a-9c21-5e8f0a6d2b13}")),
        ("/event_id", json!("3f1c9a52-8d4e-4b7a-9c21-5e8f0a6d2b1g")),
        ("/occurred_at", json!("2024-05-01T12:30:00Z")),
        ("/occurred_at", json!("2024-05-01t12:30:00z")),
        ("/occurred_at", json!("2024-05-01T12:30:00.5-03:00")),
        ("/occurred_at", json!("2024-05-01T12:30:00+14:00")),
        ("/occurred_at", json!("2024-05-01T24:00:00Z")),
        ("/occurred_at", json!("2024-02-30T12:30:00Z")),
        ("/occurred_at", json!("2024-05-01T12:30Z")),
        ("/occurred_at", json!("2024-05-01T12:30:00+0200")),
        ("/occurred_at", json!("2024-05-01")),
        ("/status", json!("refunded")),
        ("/status", json!("Completed")),
        ("/amount/minor_units", json!(0)),
        ("/amount/minor_units", json!(-1)),
        ("/amount/minor_units", json!(MAX_ABS_MINOR_UNITS)),
        ("/amount/minor_units", json!(MAX_ABS_MINOR_UNITS + 1)),
        ("/amount/minor_units", json!(u64::MAX)),
        ("/amount/minor_units", json!("100")),
        ("/amount/currency", json!("JPY")),
        ("/amount/currency", json!("usd")),
        ("/amount/currency", json!("XXX")),
        ("/transaction_id", json!("t".repeat(MAX_ID_CHARS))),
        ("/transaction_id", json!("t".repeat(MAX_ID_CHARS + 1))),
        ("/account_id", json!(42)),
        ("/recipient/display_name", json!(null)),
        (
            "/recipient/display_name",
            json!("ü".repeat(MAX_DISPLAY_NAME_CHARS)),
        ),
        (
            "/recipient/display_name",
            json!("ü".repeat(MAX_DISPLAY_NAME_CHARS + 1)),
        ),
        ("/merchant", json!(null)),
        ("/merchant", json!(7)),
        ("/description", json!("d".repeat(MAX_DESCRIPTION_CHARS + 1))),
    ];

    for (pointer, value) in cases {
        let value_text = value.to_string();
        let (rust, schema) = verdicts(&validator, pointer, value);
        assert_eq!(
            schema, rust,
            "{pointer} = {value_text:.60}: schema accepts = {schema}, decode accepts = {rust}"
        );
    }
}
