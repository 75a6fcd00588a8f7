//! Text and JSON output of the `dlq` commands.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;
use serde_json::{json, Value};
use txnotify_consumer::dlq::compat::{
    SPRING_ORIGINAL_OFFSET, SPRING_ORIGINAL_PARTITION, SPRING_ORIGINAL_TIMESTAMP,
};
use txnotify_consumer::dlq::filter::format_ms;
use txnotify_consumer::dlq::mask::mask_personal_fields;
use txnotify_consumer::dlq::DeadLetter;

/// Maximum length of a reason in a table cell, in characters.
const REASON_CHARS: usize = 60;

fn lossy(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(String::new, |bytes| {
        String::from_utf8_lossy(bytes).into_owned()
    })
}

fn origin_text(record: &DeadLetter) -> String {
    let Some(origin) = &record.info.origin else {
        return "-".to_owned();
    };
    let partition = origin
        .partition
        .map_or_else(|| "?".to_owned(), |p| p.to_string());
    let offset = origin
        .offset
        .map_or_else(|| "?".to_owned(), |o| o.to_string());
    format!("{}/{partition}@{offset}", origin.topic)
}

fn shorten(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(max_chars - 1).collect();
    short.push('…');
    short
}

/// Formats `records` as an aligned table with a header row.
pub fn list_table(records: &[DeadLetter]) -> String {
    let header = [
        "POSITION", "TIME", "CLASS", "ORIGIN", "EVENT_ID", "REPLAYS", "REASON",
    ];
    let rows: Vec<[String; 7]> = records
        .iter()
        .map(|record| {
            [
                record.position(),
                record
                    .timestamp_ms
                    .map_or_else(|| "-".to_owned(), format_ms),
                record.info.class_label().to_owned(),
                origin_text(record),
                record
                    .event_id()
                    .map_or_else(|| "-".to_owned(), |id| id.to_string()),
                record.info.replay_count.to_string(),
                shorten(&record.info.reason(), REASON_CHARS),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if index + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let pad = width - cell.chars().count();
                let _ = write!(text, "{cell}{}  ", " ".repeat(pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

/// Formats one record as a JSON object for `list --json`.
pub fn list_json(record: &DeadLetter) -> String {
    let info = &record.info;
    let line = json!({
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp_ms.map(format_ms),
        "timestamp_ms": record.timestamp_ms,
        "key": record.key.as_deref().map(|key| String::from_utf8_lossy(key).into_owned()),
        "event_id": record.event_id(),
        "convention": info.convention,
        "class": info.class,
        "reason": info.reason(),
        "exception": info.exception,
        "message": info.message,
        "origin": info.origin,
        "group": info.group,
        "attempts": info.attempts,
        "replay_count": info.replay_count,
        "replay_id": info.replay_id,
    });
    line.to_string()
}

/// Decodes a header value for display: Spring Kafka's binary numbers as numbers, UTF-8
/// text as text, anything else as hex.
fn header_value(name: &str, value: Option<&[u8]>) -> String {
    let Some(bytes) = value else {
        return "(null)".to_owned();
    };
    let number = match name {
        SPRING_ORIGINAL_PARTITION => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|array| i32::from_be_bytes(array).to_string()),
        SPRING_ORIGINAL_OFFSET | SPRING_ORIGINAL_TIMESTAMP => <[u8; 8]>::try_from(bytes)
            .ok()
            .map(|array| i64::from_be_bytes(array).to_string()),
        _ => None,
    };
    if let Some(number) = number {
        return format!("{number} (big-endian binary)");
    }
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_owned(),
        _ => {
            let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

/// Formats one dead letter for `show`: metadata, every header and the payload, with
/// personal fields masked unless `reveal` is set.
pub fn show(record: &DeadLetter, reveal: bool) -> String {
    let info = &record.info;
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<12}{value}");
    };
    field(
        "position",
        format!("{} in {}", record.position(), record.topic),
    );
    field(
        "timestamp",
        record
            .timestamp_ms
            .map_or_else(|| "-".to_owned(), format_ms),
    );
    field("key", lossy(record.key.as_deref()));
    field(
        "event id",
        record
            .event_id()
            .map_or_else(|| "-".to_owned(), |id| id.to_string()),
    );
    field("convention", info.convention.as_str().to_owned());
    field("class", info.class_label().to_owned());
    field("reason", info.reason());
    let origin_time = info
        .origin
        .as_ref()
        .and_then(|origin| origin.timestamp_ms)
        .map(|ms| format!(" at {}", format_ms(ms)))
        .unwrap_or_default();
    field("origin", format!("{}{origin_time}", origin_text(record)));
    field("group", info.group.clone().unwrap_or_else(|| "-".into()));
    field(
        "attempts",
        info.attempts.map_or_else(|| "-".into(), |n| n.to_string()),
    );
    field("replays", info.replay_count.to_string());

    let _ = writeln!(out, "headers:");
    for (name, value) in &record.headers {
        let _ = writeln!(out, "  {name}: {}", header_value(name, value.as_deref()));
    }

    let payload = record.value.as_deref().unwrap_or_default();
    match serde_json::from_slice::<Value>(payload) {
        Ok(mut value) => {
            let masked = if reveal {
                0
            } else {
                mask_personal_fields(&mut value)
            };
            let note = if masked > 0 {
                format!(" ({masked} personal fields masked; --reveal shows them)")
            } else {
                String::new()
            };
            let _ = writeln!(out, "payload{note}:");
            let pretty = serde_json::to_string_pretty(&value).expect("a JSON value serializes");
            let _ = writeln!(out, "{pretty}");
        }
        Err(_) if reveal => {
            let _ = writeln!(out, "payload ({} bytes, not JSON):", payload.len());
            let _ = writeln!(out, "{}", String::from_utf8_lossy(payload));
        }
        Err(_) => {
            let _ = writeln!(
                out,
                "payload: {} bytes, not JSON, so personal fields cannot be masked; --reveal prints it",
                payload.len()
            );
        }
    }
    out
}

/// Age buckets of `stats`, by record timestamp, with their upper bounds in milliseconds.
const AGE_BUCKETS: [(&str, i64); 5] = [
    ("under 1h", 3_600_000),
    ("1h to 24h", 86_400_000),
    ("1d to 7d", 7 * 86_400_000),
    ("7d to 30d", 30 * 86_400_000),
    ("over 30d", i64::MAX),
];

/// Counts of `stats`.
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    /// Matching dead letters.
    pub total: u64,
    /// By error class; `-` for records without one.
    pub by_class: BTreeMap<String, u64>,
    /// By reason.
    pub by_reason: BTreeMap<String, u64>,
    /// By origin topic; `-` for records without one.
    pub by_origin_topic: BTreeMap<String, u64>,
    /// By age bucket.
    pub by_age: BTreeMap<String, u64>,
}

impl Stats {
    /// Counts one record, with ages measured from `now_ms`.
    pub fn add(&mut self, record: &DeadLetter, now_ms: i64) {
        self.total += 1;
        *self
            .by_class
            .entry(record.info.class_label().to_owned())
            .or_default() += 1;
        *self.by_reason.entry(record.info.reason()).or_default() += 1;
        let origin = record
            .info
            .origin
            .as_ref()
            .map_or_else(|| "-".to_owned(), |origin| origin.topic.clone());
        *self.by_origin_topic.entry(origin).or_default() += 1;
        let age_bucket = match record.timestamp_ms {
            Some(timestamp) => {
                let age = now_ms.saturating_sub(timestamp).max(0);
                AGE_BUCKETS
                    .iter()
                    .find(|(_, bound)| age < *bound)
                    .map_or("over 30d", |(name, _)| name)
            }
            None => "no timestamp",
        };
        *self.by_age.entry(age_bucket.to_owned()).or_default() += 1;
    }

    /// Formats the counts as sections, largest count first; ages in bucket order.
    pub fn render(&self, topic: &str) -> String {
        fn by_count(map: &BTreeMap<String, u64>) -> Vec<(&String, &u64)> {
            let mut counts: Vec<_> = map.iter().collect();
            counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            counts
        }

        let mut out = format!("{} dead letters in {topic} match\n", self.total);
        let mut section = |title: &str, counts: Vec<(&String, &u64)>| {
            let _ = writeln!(out, "\nby {title}:");
            for (name, count) in counts {
                let _ = writeln!(out, "  {count:>8}  {name}");
            }
        };
        section("class", by_count(&self.by_class));
        section("reason", by_count(&self.by_reason));
        section("origin topic", by_count(&self.by_origin_topic));
        let ages: Vec<_> = AGE_BUCKETS
            .iter()
            .map(|(name, _)| *name)
            .chain(["no timestamp"])
            .filter_map(|name| self.by_age.get_key_value(name))
            .collect();
        section("age", ages);
        out
    }
}

#[cfg(test)]
mod tests {
    use txnotify_consumer::dlq::compat::{DeadLetterInfo, HeaderList};

    use super::*;

    fn record(entries: &[(&str, &[u8])], value: &[u8], timestamp_ms: i64) -> DeadLetter {
        let headers: HeaderList = entries
            .iter()
            .map(|(name, value)| ((*name).to_owned(), Some(value.to_vec())))
            .collect();
        DeadLetter {
            topic: "g.dlq".into(),
            partition: 1,
            offset: 7,
            timestamp_ms: Some(timestamp_ms),
            key: Some(b"acct-1".to_vec()),
            value: Some(value.to_vec()),
            info: DeadLetterInfo::from_headers(&headers),
            headers,
        }
    }

    const EVENT: &[u8] = br#"{"event_id":"6f1c1a52-52a4-4d4f-9b8e-0d6f3c1d2e3f","recipient":{"email":"jane@example.com","display_name":"Jane Doe"}}"#;

    #[test]
    fn show_masks_unless_revealed() {
        let dead = record(
            &[
                ("txnotify-origin-topic", b"transactions.v1"),
                ("txnotify-error-class", b"permanent"),
            ],
            EVENT,
            0,
        );
        let masked = show(&dead, false);
        assert!(!masked.contains("jane@example.com"), "{masked}");
        assert!(!masked.contains("Jane Doe"), "{masked}");
        assert!(masked.contains("j***@e***.com"), "{masked}");
        assert!(masked.contains("2 personal fields masked"), "{masked}");
        let revealed = show(&dead, true);
        assert!(revealed.contains("jane@example.com"), "{revealed}");
    }

    #[test]
    fn show_hides_payload_that_cannot_be_masked() {
        let dead = record(&[], b"jane@example.com,Jane Doe", 0);
        let hidden = show(&dead, false);
        assert!(!hidden.contains("jane@example.com"), "{hidden}");
        assert!(hidden.contains("--reveal"), "{hidden}");
        assert!(show(&dead, true).contains("jane@example.com"));
    }

    #[test]
    fn header_values_are_decoded() {
        let cases: [(&str, &[u8], &str); 4] = [
            (
                SPRING_ORIGINAL_PARTITION,
                &3i32.to_be_bytes(),
                "3 (big-endian binary)",
            ),
            (
                SPRING_ORIGINAL_OFFSET,
                &99i64.to_be_bytes(),
                "99 (big-endian binary)",
            ),
            ("event-id", b"abc", "abc"),
            ("blob", &[0, 255], "0x00ff"),
        ];
        for (name, value, expected) in cases {
            assert_eq!(header_value(name, Some(value)), expected, "{name}");
        }
        assert_eq!(header_value("x", None), "(null)");
    }

    #[test]
    fn table_aligns_columns() {
        let records = [
            record(
                &[
                    ("txnotify-origin-topic", b"transactions.v1"),
                    ("txnotify-origin-partition", b"2"),
                    ("txnotify-origin-offset", b"40"),
                    ("txnotify-error-class", b"exhausted"),
                    ("txnotify-error-message", b"smtp 451"),
                ],
                EVENT,
                0,
            ),
            record(&[], b"x", 0),
        ];
        let table = list_table(&records);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("POSITION"));
        assert!(lines[1].contains("transactions.v1/2@40"), "{table}");
        assert!(lines[1].contains("exhausted"), "{table}");
        let column = lines[0].find("CLASS").unwrap();
        assert_eq!(&lines[1][column..column + 9], "exhausted");
    }

    #[test]
    fn stats_count_by_age_bucket() {
        let now = 100 * 86_400_000;
        let mut stats = Stats::default();
        for age in [0, 2 * 3_600_000, 3 * 86_400_000, 60 * 86_400_000] {
            stats.add(&record(&[], b"x", now - age), now);
        }
        assert_eq!(stats.total, 4);
        assert_eq!(stats.by_age["under 1h"], 1);
        assert_eq!(stats.by_age["1h to 24h"], 1);
        assert_eq!(stats.by_age["1d to 7d"], 1);
        assert_eq!(stats.by_age["over 30d"], 1);
        assert_eq!(stats.by_class["-"], 4);
        assert!(stats
            .render("g.dlq")
            .contains("4 dead letters in g.dlq match"));
    }
}
