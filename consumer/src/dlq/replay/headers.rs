//! Headers of a replayed record.
//!
//! A replay keeps the record's one retry budget: the first-failure time and the overall
//! deadline stay, so the replayed record gets a fresh first attempt but no retries after
//! its deadline. The attempt count, not-before time and the last error are dropped. The
//! origin headers stay, so the notifier still reports where the event came from. Every other header, such as `event-id`, `traceparent` or a foreign convention's
//! headers, is kept unchanged, and each `txnotify-*` header is written once.

use rdkafka::message::{Header, OwnedHeaders};
use txnotify_schemas::headers;

use crate::dlq::compat::Convention;
use crate::dlq::DeadLetter;

/// Builds the headers of the copy of `record` that replay `replay_id` produces.
pub fn replay_headers(record: &DeadLetter, replay_id: &str) -> OwnedHeaders {
    let mut out = OwnedHeaders::new();
    for (name, value) in &record.headers {
        if headers::is_notifier_header(name) {
            continue;
        }
        out = out.insert(Header {
            key: name,
            value: value.as_deref(),
        });
    }

    let mut set = |name: &str, value: String| {
        let current = std::mem::replace(&mut out, OwnedHeaders::new());
        out = current.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    };
    for kept in [headers::FIRST_FAILURE_MS, headers::DEADLINE_MS] {
        let value = record
            .headers
            .iter()
            .find(|(name, _)| name == kept)
            .and_then(|(_, value)| value.as_deref())
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .map(str::to_owned);
        if let Some(value) = value {
            set(kept, value);
        }
    }
    let info = &record.info;
    if let Some(origin) = &info.origin {
        set(headers::ORIGIN_TOPIC, origin.topic.clone());
        if let Some(partition) = origin.partition {
            set(headers::ORIGIN_PARTITION, partition.to_string());
        }
        if let Some(offset) = origin.offset {
            set(headers::ORIGIN_OFFSET, offset.to_string());
        }
        if let Some(timestamp) = origin.timestamp_ms {
            set(headers::ORIGIN_TIMESTAMP_MS, timestamp.to_string());
        }
    }
    // A foreign group name is not a txnotify consumer group, so only txnotify's is kept.
    if let (Convention::Txnotify, Some(group)) = (info.convention, &info.group) {
        set(headers::GROUP, group.clone());
    }
    set(headers::REPLAY_ID, replay_id.to_owned());
    set(
        headers::REPLAY_COUNT,
        info.replay_count.saturating_add(1).to_string(),
    );
    set(headers::REPLAY_SOURCE, source_position(record));
    out
}

/// Returns the value of the [`headers::REPLAY_SOURCE`] header for `record`.
pub fn source_position(record: &DeadLetter) -> String {
    format!("{}:{}:{}", record.topic, record.partition, record.offset)
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;
    use crate::dlq::compat::{DeadLetterInfo, HeaderList};

    fn dead_letter(entries: &[(&str, &[u8])]) -> DeadLetter {
        let headers: HeaderList = entries
            .iter()
            .map(|(name, value)| ((*name).to_owned(), Some(value.to_vec())))
            .collect();
        DeadLetter {
            topic: "g.dlq".into(),
            partition: 2,
            offset: 17,
            timestamp_ms: Some(1),
            key: Some(b"acct".to_vec()),
            value: Some(b"{}".to_vec()),
            info: DeadLetterInfo::from_headers(&headers),
            headers,
        }
    }

    fn pairs(headers: &OwnedHeaders) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|header| {
                (
                    header.key.to_owned(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect()
    }

    fn value(headers: &OwnedHeaders, name: &str) -> Option<String> {
        pairs(headers)
            .into_iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    fn txnotify_dead_letter(replay_count: &[u8]) -> DeadLetter {
        dead_letter(&[
            ("event-id", b"e-1"),
            ("traceparent", b"00-abc"),
            ("txnotify-attempt", b"3"),
            ("txnotify-first-failure-ms", b"100"),
            ("txnotify-deadline-ms", b"900"),
            ("txnotify-not-before-ms", b"200"),
            ("txnotify-error-class", b"exhausted"),
            ("txnotify-error-message", b"smtp 451"),
            ("txnotify-origin-topic", b"transactions.v1"),
            ("txnotify-origin-partition", b"1"),
            ("txnotify-origin-offset", b"40"),
            ("txnotify-origin-timestamp-ms", b"50"),
            ("txnotify-group", b"g"),
            ("txnotify-replay-id", b"old"),
            ("txnotify-replay-count", replay_count),
            ("txnotify-replay-source", b"g.dlq:0:1"),
        ])
    }

    #[test]
    fn replay_keeps_deadline_and_origin() {
        let written = replay_headers(&txnotify_dead_letter(b"1"), "r-2");
        for dropped in [
            "txnotify-attempt",
            "txnotify-not-before-ms",
            "txnotify-error-class",
            "txnotify-error-message",
        ] {
            assert_eq!(value(&written, dropped), None, "{dropped}");
        }
        let kept = [
            ("event-id", "e-1"),
            ("traceparent", "00-abc"),
            ("txnotify-first-failure-ms", "100"),
            ("txnotify-deadline-ms", "900"),
            ("txnotify-origin-topic", "transactions.v1"),
            ("txnotify-origin-partition", "1"),
            ("txnotify-origin-offset", "40"),
            ("txnotify-origin-timestamp-ms", "50"),
            ("txnotify-group", "g"),
            ("txnotify-replay-id", "r-2"),
            ("txnotify-replay-count", "2"),
            ("txnotify-replay-source", "g.dlq:2:17"),
        ];
        for (name, expected) in kept {
            assert_eq!(value(&written, name).as_deref(), Some(expected), "{name}");
        }
    }

    #[test]
    fn each_header_is_written_once() {
        let first = replay_headers(&txnotify_dead_letter(b"4"), "r");
        let mut names: Vec<String> = pairs(&first).into_iter().map(|(name, _)| name).collect();
        let total = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), total);
        // event-id, traceparent, first-failure, deadline, four origin headers, group and
        // the three replay headers.
        assert_eq!(total, 12);
    }

    #[test]
    fn first_replay_counts_one() {
        let record = dead_letter(&[("txnotify-origin-topic", b"t")]);
        let written = replay_headers(&record, "r");
        assert_eq!(
            value(&written, "txnotify-replay-count").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn spring_record_gains_origin_headers() {
        let record = dead_letter(&[
            ("kafka_dlt-original-topic", b"orders"),
            ("kafka_dlt-original-partition", &3i32.to_be_bytes()),
            ("kafka_dlt-original-offset", &77i64.to_be_bytes()),
            ("kafka_dlt-original-consumer-group", b"orders-app"),
        ]);
        let written = replay_headers(&record, "r");
        assert_eq!(
            value(&written, "txnotify-origin-topic").as_deref(),
            Some("orders")
        );
        assert_eq!(
            value(&written, "txnotify-origin-partition").as_deref(),
            Some("3")
        );
        assert_eq!(
            value(&written, "txnotify-origin-offset").as_deref(),
            Some("77")
        );
        assert_eq!(value(&written, "txnotify-group"), None);
        assert_eq!(
            value(&written, "kafka_dlt-original-consumer-group").as_deref(),
            Some("orders-app")
        );
    }
}
