//! Contract tests: the example corpus, the JSON Schema and the Rust types must agree.
//!
//! All modules share one test binary so the `jsonschema` dev-dependency is linked once.

mod corpus;
mod decode;
mod json_schema;

use std::fs;
use std::path::PathBuf;

/// Returns the path of `examples/<kind>` inside this crate.
pub fn examples_dir(kind: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(kind)
}

/// Reads every example in `examples/<kind>` except the `expected.json` sidecar, sorted by
/// file name, as (file name, bytes) pairs.
pub fn read_examples(kind: &str) -> Vec<(String, Vec<u8>)> {
    let mut examples: Vec<(String, Vec<u8>)> = fs::read_dir(examples_dir(kind))
        .expect("the examples folder is readable")
        .map(|entry| entry.expect("the examples folder lists its files").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .filter(|path| path.file_name().is_some_and(|name| name != "expected.json"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = fs::read(&path).expect("the example is readable");
            (name, bytes)
        })
        .collect();
    examples.sort();
    examples
}

/// Returns the example `examples/valid/<name>` parsed as JSON.
pub fn valid_example(name: &str) -> serde_json::Value {
    let bytes = fs::read(examples_dir("valid").join(name)).expect("the example is readable");
    serde_json::from_slice(&bytes).expect("the example is JSON")
}
