//! Dead-letter operations: read, filter, mask and replay the records in a dead-letter
//! topic, with an audit record for every replay.
//!
//! Reading never changes the topic and never commits offsets: the reader assigns
//! partitions directly, without a consumer group, and has offset commits turned off.
//!
//! - [`compat`]: dead-letter metadata in txnotify, Spring Kafka and Kafka Connect headers.
//! - [`filter`]: the selection shared by `list`, `stats` and `replay`.
//! - [`reader`]: bounded scans of the topic and single-record fetches.
//! - [`mask`]: masking of personal fields in a payload.
//! - [`replay`]: replay decisions, header rewriting, rate limit and checkpoints.
//! - [`audit`]: the audit record that each replay writes.

pub mod audit;
pub mod compat;
pub mod filter;
pub mod mask;
pub mod reader;
pub mod replay;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use compat::{DeadLetterInfo, HeaderList};

/// One record read from a dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Dead-letter topic.
    pub topic: String,
    /// Partition in the dead-letter topic.
    pub partition: i32,
    /// Offset in the dead-letter topic.
    pub offset: i64,
    /// Record timestamp in epoch milliseconds, when the broker returned one.
    pub timestamp_ms: Option<i64>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Option<Vec<u8>>,
    /// Every header in wire order.
    pub headers: HeaderList,
    /// Metadata read from the headers.
    pub info: DeadLetterInfo,
}

impl DeadLetter {
    /// Returns the event id from the `event-id` header, or from the payload's `event_id`
    /// field when the header is missing or not a UUID.
    pub fn event_id(&self) -> Option<Uuid> {
        if let Some(id) = self.info.event_id.as_deref().and_then(|id| id.parse().ok()) {
            return Some(id);
        }
        let value: serde_json::Value = serde_json::from_slice(self.value.as_deref()?).ok()?;
        value.get("event_id")?.as_str()?.parse().ok()
    }

    /// Returns the position as `partition:offset`, the form `dlq show` takes.
    pub fn position(&self) -> String {
        format!("{}:{}", self.partition, self.offset)
    }
}

/// Settings of the `dlq` commands.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DlqConfig {
    /// Replays allowed per record: a record whose `txnotify-replay-count` header has
    /// reached it is rejected.
    pub max_replay_count: u32,
    /// Largest replay that runs without confirmation; above it a terminal prompts and other
    /// callers must pass `--yes`.
    pub confirm_above: u64,
    /// Maximum wait for the broker while reading, in milliseconds.
    pub read_timeout_ms: u64,
}

impl Default for DlqConfig {
    fn default() -> Self {
        Self {
            max_replay_count: 3,
            confirm_above: 100,
            read_timeout_ms: 15_000,
        }
    }
}

impl DlqConfig {
    /// Checks the settings and returns a message naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_replay_count == 0 {
            return Err(
                "dlq.max_replay_count is 0, which rejects every replay; set it to 1 or more".into(),
            );
        }
        if self.read_timeout_ms == 0 {
            return Err("dlq.read_timeout_ms is 0; set it to 15000 or similar".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_letter(headers: HeaderList, value: &[u8]) -> DeadLetter {
        DeadLetter {
            topic: "g.dlq".into(),
            partition: 1,
            offset: 9,
            timestamp_ms: None,
            key: None,
            value: Some(value.to_vec()),
            info: DeadLetterInfo::from_headers(&headers),
            headers,
        }
    }

    #[test]
    fn event_id_falls_back_to_payload() {
        let id = Uuid::new_v4();
        let payload = format!(r#"{{"event_id":"{id}"}}"#);
        let from_payload = dead_letter(Vec::new(), payload.as_bytes());
        assert_eq!(from_payload.event_id(), Some(id));

        let header = vec![("event-id".to_owned(), Some(id.to_string().into_bytes()))];
        let from_header = dead_letter(header, b"not json");
        assert_eq!(from_header.event_id(), Some(id));

        assert_eq!(dead_letter(Vec::new(), b"not json").event_id(), None);
        assert_eq!(from_header.position(), "1:9");
    }

    #[test]
    fn config_rejects_zero_cap() {
        DlqConfig::default().validate().unwrap();
        let error = DlqConfig {
            max_replay_count: 0,
            ..DlqConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(error.contains("dlq.max_replay_count"), "{error}");
    }
}
