//! Kafka header names, all lowercase.
//!
//! Producers set [`EVENT_ID`], [`SCHEMA`], [`CONTENT_TYPE`] and the W3C trace context headers
//! [`TRACEPARENT`] and [`TRACESTATE`]. The notifier adds the headers that start with
//! [`PREFIX`] to retry and dead-letter records, which otherwise keep the original key and
//! value bytes. A writer must replace an existing notifier header instead of adding a
//! second one, so that a record that cycles through retries or replays keeps a fixed set of
//! headers.

/// The event's `event_id` as a hyphenated UUID string.
pub const EVENT_ID: &str = "event-id";

/// The schema name, [`crate::SCHEMA_NAME`].
pub const SCHEMA: &str = "schema";

/// The media type of the value, [`crate::CONTENT_TYPE`].
pub const CONTENT_TYPE: &str = "content-type";

/// W3C Trace Context `traceparent`.
pub const TRACEPARENT: &str = "traceparent";

/// W3C Trace Context `tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// Prefix of every header that the notifier owns.
pub const PREFIX: &str = "txnotify-";

/// Number of delivery attempts made so far, as a decimal `u32`.
pub const ATTEMPT: &str = "txnotify-attempt";

/// Time of the first failed attempt, in Unix epoch milliseconds.
pub const FIRST_FAILURE_MS: &str = "txnotify-first-failure-ms";

/// Overall retry deadline, in Unix epoch milliseconds. No retry starts after it.
pub const DEADLINE_MS: &str = "txnotify-deadline-ms";

/// Earliest time a retry tier may process the record, in Unix epoch milliseconds.
pub const NOT_BEFORE_MS: &str = "txnotify-not-before-ms";

/// Failure class, one of the [`crate::ErrorClass::as_str`] values.
pub const ERROR_CLASS: &str = "txnotify-error-class";

/// Short description of the last failure. It must not contain personal data.
pub const ERROR_MESSAGE: &str = "txnotify-error-message";

/// Topic of the source record.
pub const ORIGIN_TOPIC: &str = "txnotify-origin-topic";

/// Partition of the source record, in decimal.
pub const ORIGIN_PARTITION: &str = "txnotify-origin-partition";

/// Offset of the source record, in decimal.
pub const ORIGIN_OFFSET: &str = "txnotify-origin-offset";

/// Timestamp of the source record, in Unix epoch milliseconds.
pub const ORIGIN_TIMESTAMP_MS: &str = "txnotify-origin-timestamp-ms";

/// Consumer group of the notifier that wrote the record.
pub const GROUP: &str = "txnotify-group";

/// Id of the replay run that re-drove a dead letter.
pub const REPLAY_ID: &str = "txnotify-replay-id";

/// Number of times the record has been replayed from the dead-letter topic, in decimal.
pub const REPLAY_COUNT: &str = "txnotify-replay-count";

/// Dead-letter position a replayed record was copied from, as `<topic>:<partition>:<offset>`.
/// `txnotify dlq replay` reads it back to resume without replaying a record twice.
pub const REPLAY_SOURCE: &str = "txnotify-replay-source";

/// Every header that the notifier writes, each of which starts with [`PREFIX`].
pub const NOTIFIER_HEADERS: [&str; 14] = [
    ATTEMPT,
    FIRST_FAILURE_MS,
    DEADLINE_MS,
    NOT_BEFORE_MS,
    ERROR_CLASS,
    ERROR_MESSAGE,
    ORIGIN_TOPIC,
    ORIGIN_PARTITION,
    ORIGIN_OFFSET,
    ORIGIN_TIMESTAMP_MS,
    GROUP,
    REPLAY_ID,
    REPLAY_COUNT,
    REPLAY_SOURCE,
];

/// Returns whether the notifier owns the header `name`, that is whether it starts with
/// [`PREFIX`]. Header names are compared case-sensitively because the notifier writes them
/// in lowercase.
pub fn is_notifier_header(name: &str) -> bool {
    name.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifier_headers_start_with_prefix() {
        for name in NOTIFIER_HEADERS {
            assert!(is_notifier_header(name), "header {name}");
        }
    }

    #[test]
    fn producer_headers_lack_prefix() {
        for name in [EVENT_ID, SCHEMA, CONTENT_TYPE, TRACEPARENT, TRACESTATE] {
            assert!(!is_notifier_header(name), "header {name}");
        }
    }

    #[test]
    fn header_names_are_lowercase() {
        let producer_headers = [EVENT_ID, SCHEMA, CONTENT_TYPE, TRACEPARENT, TRACESTATE];
        for name in producer_headers.iter().chain(NOTIFIER_HEADERS.iter()) {
            assert_eq!(*name, name.to_ascii_lowercase(), "header {name}");
        }
    }
}
