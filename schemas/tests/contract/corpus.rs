//! Table-driven tests over `examples/valid` and `examples/invalid`.

use std::collections::BTreeMap;
use std::fs;

use serde::Deserialize;
use txnotify_schemas::{decode, DecodeError, Limits, TransactionEvent};

use crate::{examples_dir, read_examples};

/// One entry of `examples/invalid/expected.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    /// `invalid`, `unsupported-schema-version` or `not-json`.
    error: String,
    /// Path of the only field error, for `invalid` and `unsupported-schema-version`.
    path: Option<String>,
}

fn expectations() -> BTreeMap<String, Expectation> {
    let bytes = fs::read(examples_dir("invalid").join("expected.json"))
        .expect("examples/invalid/expected.json is readable");
    serde_json::from_slice(&bytes).expect("examples/invalid/expected.json is valid")
}

#[test]
fn corpus_has_enough_examples() {
    assert!(read_examples("valid").len() >= 12);
    assert!(read_examples("invalid").len() >= 25);
}

#[test]
fn valid_examples_decode() {
    for (name, bytes) in read_examples("valid") {
        if let Err(error) = decode(&bytes, &Limits::default()) {
            panic!("{name} was rejected: {error}");
        }
    }
}

#[test]
fn valid_examples_round_trip() {
    for (name, bytes) in read_examples("valid") {
        let event = decode(&bytes, &Limits::default()).unwrap();

        let encoded = event.to_json_bytes();
        let decoded = decode(&encoded, &Limits::default()).unwrap();
        assert_eq!(decoded, event, "{name}: decode(to_json_bytes) differs");
    }
}

#[test]
fn serde_derive_matches_decode() {
    for (name, bytes) in read_examples("valid") {
        let decoded = decode(&bytes, &Limits::default()).unwrap();
        let derived: TransactionEvent = serde_json::from_slice(&bytes)
            .unwrap_or_else(|error| panic!("{name}: serde rejected a valid example: {error}"));
        assert_eq!(derived, decoded, "{name}");
    }
}

#[test]
fn every_invalid_example_has_an_expectation() {
    let files: Vec<String> = read_examples("invalid")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let listed: Vec<String> = expectations().into_keys().collect();
    assert_eq!(
        files, listed,
        "files in examples/invalid vs entries in expected.json"
    );
}

#[test]
fn invalid_examples_fail_at_expected_path() {
    let expectations = expectations();

    for (name, bytes) in read_examples("invalid") {
        let expected = &expectations[&name];
        let error = match decode(&bytes, &Limits::default()) {
            Ok(_) => panic!("{name} was accepted"),
            Err(error) => error,
        };

        match (&error, expected.error.as_str()) {
            (DecodeError::NotJson { .. }, "not-json") => {
                assert_eq!(expected.path, None, "{name}: not-json has no path");
            }
            (DecodeError::UnsupportedSchemaVersion { .. }, "unsupported-schema-version") => {
                assert_eq!(expected.path.as_deref(), Some("schema_version"), "{name}");
            }
            (DecodeError::Invalid(errors), "invalid") => {
                let paths: Vec<&str> = errors.paths().collect();
                assert_eq!(
                    paths,
                    vec![expected.path.as_deref().unwrap_or_default()],
                    "{name}: {errors}"
                );
            }
            _ => panic!("{name}: expected {expected:?}, got {error}"),
        }
    }
}

#[test]
fn invalid_examples_never_echo_the_recipient() {
    let personal = ["jane", "Jane", "victim", "jürgen", "Doe"];

    for (name, bytes) in read_examples("invalid") {
        let message = decode(&bytes, &Limits::default()).unwrap_err().to_string();
        for word in personal {
            assert!(
                !message.contains(word),
                "{name}: message {message:?} contains {word:?}"
            );
        }
    }
}
