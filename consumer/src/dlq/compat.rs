//! Reading dead-letter metadata from record headers, in the conventions txnotify, Spring
//! Kafka and Kafka Connect write.
//!
//! - txnotify writes the `txnotify-*` headers of [`txnotify_schemas::headers`] as UTF-8
//!   decimal text.
//! - Spring Kafka's `DeadLetterPublishingRecoverer` writes `kafka_dlt-*` headers. The
//!   original partition is a 4-byte and the original offset and timestamp are 8-byte
//!   big-endian integers; the other values are UTF-8 text.
//! - Kafka Connect's dead-letter reporter (with `errors.deadletterqueue.context.headers.enable`)
//!   writes `__connect.errors.*` headers, all as UTF-8 text.
//!
//! Only txnotify records carry an error class. A Spring or Connect record whose failure is
//! a conversion or deserialization error is classed `invalid`, because its value cannot be
//! read however often it is replayed. Other foreign records have no class.

use serde::Serialize;
use txnotify_schemas::{headers, ErrorClass};

/// Record headers in wire order; a header may have no value.
pub type HeaderList = Vec<(String, Option<Vec<u8>>)>;

/// Spring Kafka header with the source topic.
pub const SPRING_ORIGINAL_TOPIC: &str = "kafka_dlt-original-topic";
/// Spring Kafka header with the source partition, a 4-byte big-endian integer.
pub const SPRING_ORIGINAL_PARTITION: &str = "kafka_dlt-original-partition";
/// Spring Kafka header with the source offset, an 8-byte big-endian integer.
pub const SPRING_ORIGINAL_OFFSET: &str = "kafka_dlt-original-offset";
/// Spring Kafka header with the source timestamp in epoch milliseconds, 8-byte big-endian.
pub const SPRING_ORIGINAL_TIMESTAMP: &str = "kafka_dlt-original-timestamp";
/// Spring Kafka header with the consumer group that failed.
pub const SPRING_ORIGINAL_GROUP: &str = "kafka_dlt-original-consumer-group";
/// Spring Kafka header with the exception's fully qualified class name.
pub const SPRING_EXCEPTION_FQCN: &str = "kafka_dlt-exception-fqcn";
/// Spring Kafka header with the exception message.
pub const SPRING_EXCEPTION_MESSAGE: &str = "kafka_dlt-exception-message";

/// Kafka Connect header with the source topic.
pub const CONNECT_TOPIC: &str = "__connect.errors.topic";
/// Kafka Connect header with the source partition, in decimal.
pub const CONNECT_PARTITION: &str = "__connect.errors.partition";
/// Kafka Connect header with the source offset, in decimal.
pub const CONNECT_OFFSET: &str = "__connect.errors.offset";
/// Kafka Connect header with the connector name.
pub const CONNECT_CONNECTOR: &str = "__connect.errors.connector.name";
/// Kafka Connect header with the failed stage, such as `VALUE_CONVERTER`.
pub const CONNECT_STAGE: &str = "__connect.errors.stage";
/// Kafka Connect header with the exception class name.
pub const CONNECT_EXCEPTION_CLASS: &str = "__connect.errors.exception.class.name";
/// Kafka Connect header with the exception message.
pub const CONNECT_EXCEPTION_MESSAGE: &str = "__connect.errors.exception.message";

/// Header convention a dead letter was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Convention {
    /// The `txnotify-*` headers.
    Txnotify,
    /// Spring Kafka's `kafka_dlt-*` headers.
    SpringKafka,
    /// Kafka Connect's `__connect.errors.*` headers.
    KafkaConnect,
    /// No known dead-letter headers.
    Unknown,
}

impl Convention {
    /// Returns the name shown in listings.
    pub fn as_str(&self) -> &'static str {
        match self {
            Convention::Txnotify => "txnotify",
            Convention::SpringKafka => "spring-kafka",
            Convention::KafkaConnect => "kafka-connect",
            Convention::Unknown => "unknown",
        }
    }
}

/// Position of the record that failed, before it was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OriginRef {
    /// Source topic.
    pub topic: String,
    /// Source partition, when the headers name it.
    pub partition: Option<i32>,
    /// Source offset, when the headers name it.
    pub offset: Option<i64>,
    /// Source record timestamp in epoch milliseconds, when the headers name it.
    pub timestamp_ms: Option<i64>,
}

/// Dead-letter metadata of one record, whatever convention wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterInfo {
    /// Header convention.
    pub convention: Convention,
    /// Failure class, for txnotify records and for foreign conversion failures.
    pub class: Option<ErrorClass>,
    /// Exception class or failed stage, for foreign records.
    pub exception: Option<String>,
    /// Failure message.
    pub message: Option<String>,
    /// Source position of the failed record.
    pub origin: Option<OriginRef>,
    /// Consumer group or connector that failed to process it.
    pub group: Option<String>,
    /// Delivery attempts made, for txnotify records.
    pub attempts: Option<u32>,
    /// Times the record was replayed from a dead-letter topic; 0 when never.
    pub replay_count: u32,
    /// Id of the last replay that re-drove it.
    pub replay_id: Option<String>,
    /// The `event-id` header.
    pub event_id: Option<String>,
}

/// Returns the first value of header `name`.
pub fn header<'a>(list: &'a HeaderList, name: &str) -> Option<&'a [u8]> {
    list.iter()
        .find(|(key, _)| key == name)
        .and_then(|(_, value)| value.as_deref())
}

fn text(list: &HeaderList, name: &str) -> Option<String> {
    header(list, name).map(|bytes| String::from_utf8_lossy(bytes).trim().to_owned())
}

fn decimal<T: std::str::FromStr>(list: &HeaderList, name: &str) -> Option<T> {
    std::str::from_utf8(header(list, name)?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads a Spring integer header: big-endian binary of the Java type's width, or decimal
/// text as some non-Java writers use.
fn spring_i32(list: &HeaderList, name: &str) -> Option<i32> {
    let bytes = header(list, name)?;
    match <[u8; 4]>::try_from(bytes) {
        Ok(array) => Some(i32::from_be_bytes(array)),
        Err(_) => decimal(list, name),
    }
}

fn spring_i64(list: &HeaderList, name: &str) -> Option<i64> {
    let bytes = header(list, name)?;
    match <[u8; 8]>::try_from(bytes) {
        Ok(array) => Some(i64::from_be_bytes(array)),
        Err(_) => decimal(list, name),
    }
}

/// Returns whether a Java exception class or Connect stage names a conversion failure.
fn is_conversion_failure(name: &str) -> bool {
    name.ends_with("DeserializationException")
        || name.ends_with("MessageConversionException")
        || name.ends_with("SerializationException")
        || name.ends_with("DataException")
        || name.ends_with("_CONVERTER")
}

impl DeadLetterInfo {
    /// Reads the metadata from `list`, preferring txnotify headers, then Spring Kafka,
    /// then Kafka Connect. A header that is present but unreadable counts as absent.
    pub fn from_headers(list: &HeaderList) -> Self {
        let replay_count = decimal(list, headers::REPLAY_COUNT).unwrap_or(0);
        let replay_id = text(list, headers::REPLAY_ID);
        let event_id = text(list, headers::EVENT_ID);
        let base = DeadLetterInfo {
            convention: Convention::Unknown,
            class: None,
            exception: None,
            message: None,
            origin: None,
            group: None,
            attempts: None,
            replay_count,
            replay_id,
            event_id,
        };

        if let Some(topic) = text(list, headers::ORIGIN_TOPIC) {
            return DeadLetterInfo {
                convention: Convention::Txnotify,
                class: text(list, headers::ERROR_CLASS).and_then(|value| value.parse().ok()),
                message: text(list, headers::ERROR_MESSAGE),
                origin: Some(OriginRef {
                    topic,
                    partition: decimal(list, headers::ORIGIN_PARTITION),
                    offset: decimal(list, headers::ORIGIN_OFFSET),
                    timestamp_ms: decimal(list, headers::ORIGIN_TIMESTAMP_MS),
                }),
                group: text(list, headers::GROUP),
                attempts: decimal(list, headers::ATTEMPT),
                ..base
            };
        }

        if let Some(topic) = text(list, SPRING_ORIGINAL_TOPIC) {
            let exception = text(list, SPRING_EXCEPTION_FQCN);
            return DeadLetterInfo {
                convention: Convention::SpringKafka,
                class: exception
                    .as_deref()
                    .filter(|name| is_conversion_failure(name))
                    .map(|_| ErrorClass::Invalid),
                exception,
                message: text(list, SPRING_EXCEPTION_MESSAGE),
                origin: Some(OriginRef {
                    topic,
                    partition: spring_i32(list, SPRING_ORIGINAL_PARTITION),
                    offset: spring_i64(list, SPRING_ORIGINAL_OFFSET),
                    timestamp_ms: spring_i64(list, SPRING_ORIGINAL_TIMESTAMP),
                }),
                group: text(list, SPRING_ORIGINAL_GROUP),
                ..base
            };
        }

        if let Some(topic) = text(list, CONNECT_TOPIC) {
            let stage = text(list, CONNECT_STAGE);
            let exception = text(list, CONNECT_EXCEPTION_CLASS);
            let conversion = stage
                .iter()
                .chain(exception.iter())
                .any(|name| is_conversion_failure(name));
            return DeadLetterInfo {
                convention: Convention::KafkaConnect,
                class: conversion.then_some(ErrorClass::Invalid),
                exception: exception.or(stage),
                message: text(list, CONNECT_EXCEPTION_MESSAGE),
                origin: Some(OriginRef {
                    topic,
                    partition: decimal(list, CONNECT_PARTITION),
                    offset: decimal(list, CONNECT_OFFSET),
                    timestamp_ms: None,
                }),
                group: text(list, CONNECT_CONNECTOR),
                ..base
            };
        }

        base
    }

    /// Returns the reason shown in listings and counted by `stats`: the txnotify message,
    /// or the foreign exception class with its message.
    pub fn reason(&self) -> String {
        match (&self.exception, &self.message) {
            (Some(exception), Some(message)) => format!("{exception}: {message}"),
            (Some(only), None) | (None, Some(only)) => only.clone(),
            (None, None) => "unknown".to_owned(),
        }
    }

    /// Returns the class shown in listings, `-` when the record has none.
    pub fn class_label(&self) -> &'static str {
        self.class.as_ref().map_or("-", ErrorClass::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[(&str, &[u8])]) -> HeaderList {
        entries
            .iter()
            .map(|(key, value)| ((*key).to_owned(), Some(value.to_vec())))
            .collect()
    }

    #[test]
    fn txnotify_headers_are_read() {
        let headers = list(&[
            ("event-id", b"e-1"),
            ("txnotify-attempt", b"3"),
            ("txnotify-error-class", b"exhausted"),
            ("txnotify-error-message", b"smtp 451"),
            ("txnotify-origin-topic", b"transactions.v1"),
            ("txnotify-origin-partition", b"2"),
            ("txnotify-origin-offset", b"41"),
            ("txnotify-origin-timestamp-ms", b"1700"),
            ("txnotify-group", b"g"),
            ("txnotify-replay-count", b"2"),
        ]);
        let info = DeadLetterInfo::from_headers(&headers);
        assert_eq!(info.convention, Convention::Txnotify);
        assert_eq!(info.class, Some(ErrorClass::Exhausted));
        assert_eq!(info.attempts, Some(3));
        assert_eq!(info.replay_count, 2);
        assert_eq!(info.event_id.as_deref(), Some("e-1"));
        assert_eq!(info.reason(), "smtp 451");
        assert_eq!(
            info.origin,
            Some(OriginRef {
                topic: "transactions.v1".into(),
                partition: Some(2),
                offset: Some(41),
                timestamp_ms: Some(1700),
            })
        );
    }

    #[test]
    fn spring_headers_decode_big_endian_numbers() {
        let headers = list(&[
            (SPRING_ORIGINAL_TOPIC, b"orders"),
            (SPRING_ORIGINAL_PARTITION, &7i32.to_be_bytes()),
            (SPRING_ORIGINAL_OFFSET, &123_456_789_012i64.to_be_bytes()),
            (
                SPRING_ORIGINAL_TIMESTAMP,
                &1_700_000_000_000i64.to_be_bytes(),
            ),
            (SPRING_EXCEPTION_FQCN, b"java.lang.IllegalStateException"),
            (SPRING_EXCEPTION_MESSAGE, b"boom"),
            (SPRING_ORIGINAL_GROUP, b"orders-app"),
        ]);
        let info = DeadLetterInfo::from_headers(&headers);
        assert_eq!(info.convention, Convention::SpringKafka);
        assert_eq!(info.class, None);
        assert_eq!(info.group.as_deref(), Some("orders-app"));
        assert_eq!(info.reason(), "java.lang.IllegalStateException: boom");
        let origin = info.origin.unwrap();
        assert_eq!(origin.topic, "orders");
        assert_eq!(origin.partition, Some(7));
        assert_eq!(origin.offset, Some(123_456_789_012));
        assert_eq!(origin.timestamp_ms, Some(1_700_000_000_000));
    }

    #[test]
    fn connect_headers_are_decimal_text() {
        let headers = list(&[
            (CONNECT_TOPIC, b"payments"),
            (CONNECT_PARTITION, b"1"),
            (CONNECT_OFFSET, b"99"),
            (CONNECT_STAGE, b"VALUE_CONVERTER"),
            (
                CONNECT_EXCEPTION_CLASS,
                b"org.apache.kafka.connect.errors.DataException",
            ),
            (CONNECT_EXCEPTION_MESSAGE, b"bad json"),
            (CONNECT_CONNECTOR, b"sink-1"),
        ]);
        let info = DeadLetterInfo::from_headers(&headers);
        assert_eq!(info.convention, Convention::KafkaConnect);
        assert_eq!(info.class, Some(ErrorClass::Invalid));
        let origin = info.origin.unwrap();
        assert_eq!(origin.partition, Some(1));
        assert_eq!(origin.offset, Some(99));
    }

    #[test]
    fn conversion_failures_are_invalid() {
        let cases = [
            (
                "org.springframework.kafka.support.serializer.DeserializationException",
                Some(ErrorClass::Invalid),
            ),
            (
                "org.springframework.messaging.converter.MessageConversionException",
                Some(ErrorClass::Invalid),
            ),
            ("java.net.SocketTimeoutException", None),
        ];
        for (fqcn, expected) in cases {
            let headers = list(&[
                (SPRING_ORIGINAL_TOPIC, b"t"),
                (SPRING_EXCEPTION_FQCN, fqcn.as_bytes()),
            ]);
            assert_eq!(
                DeadLetterInfo::from_headers(&headers).class,
                expected,
                "{fqcn}"
            );
        }
    }

    #[test]
    fn malformed_numbers_count_as_absent() {
        let headers = list(&[
            (SPRING_ORIGINAL_TOPIC, b"t"),
            (SPRING_ORIGINAL_PARTITION, b"\x01\x02"),
            ("txnotify-replay-count", b"many"),
        ]);
        let info = DeadLetterInfo::from_headers(&headers);
        assert_eq!(info.origin.unwrap().partition, None);
        assert_eq!(info.replay_count, 0);
    }

    #[test]
    fn record_without_known_headers_is_unknown() {
        let info = DeadLetterInfo::from_headers(&list(&[("event-id", b"x")]));
        assert_eq!(info.convention, Convention::Unknown);
        assert_eq!(info.origin, None);
        assert_eq!(info.reason(), "unknown");
        assert_eq!(info.class_label(), "-");
    }
}
