//! Filters that select dead letters for `list`, `stats` and `replay`.
//!
//! Time bounds compare with the dead letter's own record timestamp, never only with a
//! broker's timestamp index: the index lookup is a starting hint (see
//! [`crate::dlq::reader`]), and some brokers return offset 0 for it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use txnotify_schemas::ErrorClass;
use uuid::Uuid;

use super::DeadLetter;

/// A `--since` or `--until` bound: an absolute time, or a duration before now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeBound {
    /// A time in epoch milliseconds.
    At(i64),
    /// That many milliseconds before the command started.
    Ago(i64),
}

impl TimeBound {
    /// Returns the bound in epoch milliseconds, with `now_ms` as the reference for
    /// durations.
    pub fn resolve(&self, now_ms: i64) -> i64 {
        match *self {
            TimeBound::At(ms) => ms,
            TimeBound::Ago(ms) => now_ms.saturating_sub(ms),
        }
    }
}

/// Error returned for a filter value that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Not an RFC 3339 time, a date or a duration.
    #[error(
        "invalid time {value:?}: use an RFC 3339 time such as 2026-12-01T08:00:00Z, a date such as 2026-12-01, or a duration before now such as 90m, 6h or 7d"
    )]
    Time {
        /// The rejected input.
        value: String,
    },
    /// A header match without a name.
    #[error("invalid header match {value:?}: write NAME=VALUE, or NAME to require the header")]
    Header {
        /// The rejected input.
        value: String,
    },
    /// `--since` is not before `--until`.
    #[error("the time range is empty: --since ({since}) is not before --until ({until})")]
    EmptyRange {
        /// Resolved lower bound, RFC 3339.
        since: String,
        /// Resolved upper bound, RFC 3339.
        until: String,
    },
}

impl FromStr for TimeBound {
    type Err = FilterError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let trimmed = value.trim();
        let invalid = || FilterError::Time {
            value: value.to_owned(),
        };
        if let Ok(at) = OffsetDateTime::parse(trimmed, &Rfc3339) {
            return Ok(TimeBound::At(epoch_ms(at)));
        }
        let date_format = time::macros::format_description!("[year]-[month]-[day]");
        if let Ok(date) = time::Date::parse(trimmed, &date_format) {
            return Ok(TimeBound::At(epoch_ms(date.midnight().assume_utc())));
        }
        let starts_with_digit = trimmed.chars().next().is_some_and(|c| c.is_ascii_digit());
        if !starts_with_digit {
            return Err(invalid());
        }
        let duration = humantime::parse_duration(trimmed).map_err(|_| invalid())?;
        let ms = i64::try_from(duration.as_millis()).map_err(|_| invalid())?;
        Ok(TimeBound::Ago(ms))
    }
}

fn epoch_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Formats epoch milliseconds as RFC 3339 in UTC.
pub fn format_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// A `--header` match: the header must exist and, when a value is given, equal it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMatch {
    /// Header name, compared exactly.
    pub name: String,
    /// Expected UTF-8 value; `None` only requires the header.
    pub value: Option<String>,
}

impl FromStr for HeaderMatch {
    type Err = FilterError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (name, expected) = match value.split_once('=') {
            Some((name, expected)) => (name, Some(expected.to_owned())),
            None => (value, None),
        };
        if name.trim().is_empty() {
            return Err(FilterError::Header {
                value: value.to_owned(),
            });
        }
        Ok(HeaderMatch {
            name: name.to_owned(),
            value: expected,
        })
    }
}

impl fmt::Display for HeaderMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={value}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Selection of dead letters. Every set criterion must match; an empty filter matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Accepted error classes; empty accepts every class and records without one.
    pub classes: Vec<ErrorClass>,
    /// Earliest record timestamp, inclusive, in epoch milliseconds.
    pub since_ms: Option<i64>,
    /// Latest record timestamp, exclusive, in epoch milliseconds.
    pub until_ms: Option<i64>,
    /// Exact record key, compared as UTF-8 text.
    pub key: Option<String>,
    /// Event id from the `event-id` header, or from the payload when the header is missing.
    pub event_id: Option<Uuid>,
    /// Origin topic.
    pub origin_topic: Option<String>,
    /// Header matches.
    pub headers: Vec<HeaderMatch>,
}

impl Filter {
    /// Checks that the time range is not empty.
    pub fn validate(&self) -> Result<(), FilterError> {
        if let (Some(since), Some(until)) = (self.since_ms, self.until_ms) {
            if since >= until {
                return Err(FilterError::EmptyRange {
                    since: format_ms(since),
                    until: format_ms(until),
                });
            }
        }
        Ok(())
    }

    /// Returns whether `record` matches every set criterion.
    pub fn matches(&self, record: &DeadLetter) -> bool {
        let info = &record.info;
        if !self.classes.is_empty() && !info.class.is_some_and(|c| self.classes.contains(&c)) {
            return false;
        }
        if self.since_ms.is_some() || self.until_ms.is_some() {
            let Some(timestamp) = record.timestamp_ms else {
                return false;
            };
            if self.since_ms.is_some_and(|since| timestamp < since) {
                return false;
            }
            if self.until_ms.is_some_and(|until| timestamp >= until) {
                return false;
            }
        }
        if let Some(key) = &self.key {
            if record.key.as_deref() != Some(key.as_bytes()) {
                return false;
            }
        }
        if let Some(event_id) = self.event_id {
            if record.event_id() != Some(event_id) {
                return false;
            }
        }
        if let Some(topic) = &self.origin_topic {
            if info.origin.as_ref().map(|origin| &origin.topic) != Some(topic) {
                return false;
            }
        }
        self.headers.iter().all(|wanted| {
            record.headers.iter().any(|(name, value)| {
                name == &wanted.name
                    && match &wanted.value {
                        None => true,
                        Some(expected) => value.as_deref() == Some(expected.as_bytes()),
                    }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::compat::{DeadLetterInfo, HeaderList};

    fn record(headers: &[(&str, &str)], key: &str, timestamp_ms: i64) -> DeadLetter {
        let headers: HeaderList = headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), Some(value.as_bytes().to_vec())))
            .collect();
        DeadLetter {
            topic: "g.dlq".into(),
            partition: 0,
            offset: 5,
            timestamp_ms: Some(timestamp_ms),
            key: Some(key.as_bytes().to_vec()),
            value: Some(b"{}".to_vec()),
            info: DeadLetterInfo::from_headers(&headers),
            headers,
        }
    }

    #[test]
    fn time_bounds_parse() {
        let cases = [
            ("2026-12-01T08:00:00Z", TimeBound::At(1_796_112_000_000)),
            ("2026-12-01", TimeBound::At(1_796_083_200_000)),
            ("90m", TimeBound::Ago(90 * 60_000)),
            ("6h", TimeBound::Ago(6 * 3_600_000)),
            ("7d", TimeBound::Ago(7 * 86_400_000)),
            ("1h 30m", TimeBound::Ago(90 * 60_000)),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<TimeBound>(), Ok(expected), "{input}");
        }
    }

    #[test]
    fn bad_time_bounds_name_the_value() {
        for input in ["", "yesterday", "-5m", "5 parsecs", "2026-13-01"] {
            let error = input.parse::<TimeBound>().unwrap_err().to_string();
            assert!(error.contains(&format!("{input:?}")), "{error}");
        }
    }

    #[test]
    fn ago_resolves_against_now() {
        assert_eq!(TimeBound::Ago(1_000).resolve(5_000), 4_000);
        assert_eq!(TimeBound::At(7).resolve(5_000), 7);
    }

    #[test]
    fn header_match_parses() {
        let cases = [
            ("tenant=acme", "tenant", Some("acme")),
            ("tenant=", "tenant", Some("")),
            ("a=b=c", "a", Some("b=c")),
            ("traceparent", "traceparent", None),
        ];
        for (input, name, value) in cases {
            let parsed: HeaderMatch = input.parse().unwrap();
            assert_eq!(parsed.name, name, "{input}");
            assert_eq!(parsed.value.as_deref(), value, "{input}");
        }
        assert!("=x".parse::<HeaderMatch>().is_err());
    }

    #[test]
    fn empty_range_is_rejected() {
        let filter = Filter {
            since_ms: Some(10),
            until_ms: Some(10),
            ..Filter::default()
        };
        assert!(matches!(
            filter.validate(),
            Err(FilterError::EmptyRange { .. })
        ));
    }

    #[test]
    fn filters_select_records() {
        let event_id = Uuid::new_v4();
        let event_text = event_id.to_string();
        let dead = record(
            &[
                ("event-id", &event_text),
                ("txnotify-error-class", "permanent"),
                ("txnotify-origin-topic", "transactions.v1"),
                ("tenant", "acme"),
            ],
            "acct-1",
            1_000,
        );
        let all = Filter::default();
        let cases = [
            ("empty", all.clone(), true),
            (
                "class hit",
                Filter {
                    classes: vec![ErrorClass::Exhausted, ErrorClass::Permanent],
                    ..all.clone()
                },
                true,
            ),
            (
                "class miss",
                Filter {
                    classes: vec![ErrorClass::Invalid],
                    ..all.clone()
                },
                false,
            ),
            (
                "since inclusive",
                Filter {
                    since_ms: Some(1_000),
                    ..all.clone()
                },
                true,
            ),
            (
                "until exclusive",
                Filter {
                    until_ms: Some(1_000),
                    ..all.clone()
                },
                false,
            ),
            (
                "key hit",
                Filter {
                    key: Some("acct-1".into()),
                    ..all.clone()
                },
                true,
            ),
            (
                "key miss",
                Filter {
                    key: Some("acct-2".into()),
                    ..all.clone()
                },
                false,
            ),
            (
                "event id hit",
                Filter {
                    event_id: Some(event_id),
                    ..all.clone()
                },
                true,
            ),
            (
                "event id miss",
                Filter {
                    event_id: Some(Uuid::new_v4()),
                    ..all.clone()
                },
                false,
            ),
            (
                "origin hit",
                Filter {
                    origin_topic: Some("transactions.v1".into()),
                    ..all.clone()
                },
                true,
            ),
            (
                "origin miss",
                Filter {
                    origin_topic: Some("other".into()),
                    ..all.clone()
                },
                false,
            ),
            (
                "header value hit",
                Filter {
                    headers: vec!["tenant=acme".parse().unwrap()],
                    ..all.clone()
                },
                true,
            ),
            (
                "header value miss",
                Filter {
                    headers: vec!["tenant=other".parse().unwrap()],
                    ..all.clone()
                },
                false,
            ),
            (
                "header presence miss",
                Filter {
                    headers: vec!["traceparent".parse().unwrap()],
                    ..all.clone()
                },
                false,
            ),
        ];
        for (name, filter, expected) in cases {
            assert_eq!(filter.matches(&dead), expected, "{name}");
        }
    }

    #[test]
    fn class_filter_skips_unclassified_records() {
        let foreign = record(&[("kafka_dlt-original-topic", "t")], "k", 1);
        let filter = Filter {
            classes: vec![ErrorClass::Transient],
            ..Filter::default()
        };
        assert!(!filter.matches(&foreign));
    }
}
