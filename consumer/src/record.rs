//! Delivery metadata that travels with a record in its headers.
//!
//! The notifier owns every header whose name starts with `txnotify-`. When it forwards a
//! record to a retry tier or the dead-letter topic it keeps the key, the value and all
//! other headers unchanged, and writes each of its own headers exactly once, so a record
//! that cycles through retries and replays never grows its header list.

use rdkafka::message::{Header, Headers, OwnedHeaders};
use txnotify_schemas::{headers, ErrorClass};

use crate::retry::RetryBudget;
use crate::telemetry::trace::{current_trace_headers, TraceHeaders};

/// Source position of a record: where it was first consumed, before any retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Record timestamp on the source topic, in milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
}

/// Delivery state read from a consumed record's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryState {
    /// Attempts already made before this one.
    pub attempts_made: u32,
    /// Retry budget set at the first failure.
    pub budget: RetryBudget,
    /// Earliest time of the next attempt, for records read from a retry tier.
    pub not_before_ms: Option<i64>,
    /// Source position of the record.
    pub origin: Origin,
}

/// A notifier header that is present but unreadable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header {name} is malformed: expected {expected}")]
pub struct HeaderError {
    /// Header name.
    pub name: &'static str,
    /// Expected form of the value.
    pub expected: &'static str,
}

/// Returns the value of the first header called `name` as bytes.
pub fn header_bytes<'a, H: Headers>(headers: Option<&'a H>, name: &str) -> Option<&'a [u8]> {
    headers?
        .iter()
        .find(|header| header.key == name)
        .and_then(|header| header.value)
}

fn parse_number<H: Headers, T: std::str::FromStr>(
    headers: Option<&H>,
    name: &'static str,
    expected: &'static str,
) -> Result<Option<T>, HeaderError> {
    match header_bytes(headers, name) {
        None => Ok(None),
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .map(Some)
            .ok_or(HeaderError { name, expected }),
    }
}

impl DeliveryState {
    /// Reads the delivery state of a record consumed at `here`.
    ///
    /// A record without origin headers was consumed from its source, so `here` becomes
    /// its origin.
    pub fn from_headers<H: Headers>(
        headers: Option<&H>,
        here: Origin,
    ) -> Result<Self, HeaderError> {
        let attempts_made =
            parse_number::<H, u32>(headers, headers::ATTEMPT, "a decimal attempt count")?
                .unwrap_or(0);
        let budget = RetryBudget {
            first_failure_ms: parse_number(
                headers,
                headers::FIRST_FAILURE_MS,
                "epoch milliseconds",
            )?,
            deadline_ms: parse_number(headers, headers::DEADLINE_MS, "epoch milliseconds")?,
        };
        let not_before_ms = parse_number(headers, headers::NOT_BEFORE_MS, "epoch milliseconds")?;

        let origin_topic = header_bytes(headers, headers::ORIGIN_TOPIC)
            .map(|bytes| {
                std::str::from_utf8(bytes)
                    .map(str::to_owned)
                    .map_err(|_| HeaderError {
                        name: headers::ORIGIN_TOPIC,
                        expected: "a UTF-8 topic name",
                    })
            })
            .transpose()?;
        let origin = match origin_topic {
            Some(topic) => Origin {
                topic,
                partition: parse_number(headers, headers::ORIGIN_PARTITION, "a partition number")?
                    .unwrap_or(here.partition),
                offset: parse_number(headers, headers::ORIGIN_OFFSET, "an offset")?
                    .unwrap_or(here.offset),
                timestamp_ms: parse_number(
                    headers,
                    headers::ORIGIN_TIMESTAMP_MS,
                    "epoch milliseconds",
                )?,
            },
            None => here,
        };

        Ok(Self {
            attempts_made,
            budget,
            not_before_ms,
            origin,
        })
    }
}

/// Notifier headers to write on a forwarded record.
#[derive(Debug, Clone)]
pub struct Forward<'a> {
    /// Attempts made so far, this one included.
    pub attempts_made: u32,
    /// Time of the first failure.
    pub first_failure_ms: i64,
    /// Overall retry deadline, if one is set.
    pub deadline_ms: Option<i64>,
    /// Not-before time, for retry tiers only.
    pub not_before_ms: Option<i64>,
    /// Failure class.
    pub class: ErrorClass,
    /// Short failure message with no personal data.
    pub message: &'a str,
    /// Source position of the record.
    pub origin: &'a Origin,
    /// Consumer group that failed to deliver it.
    pub group: &'a str,
}

/// Maximum length of the error message written to a header, in bytes.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 256;

/// Builds the headers of a forwarded record: every header of `original` that the notifier
/// does not own, then each notifier header once. Replay headers are kept as they were.
///
/// When the current span has a trace context, `traceparent` and `tracestate` point at it,
/// so the next attempt's span is a child of this one. Otherwise they are copied.
pub fn forward_headers<H: Headers>(original: Option<&H>, forward: &Forward<'_>) -> OwnedHeaders {
    forward_headers_with_trace(original, forward, &current_trace_headers())
}

fn forward_headers_with_trace<H: Headers>(
    original: Option<&H>,
    forward: &Forward<'_>,
    trace: &TraceHeaders,
) -> OwnedHeaders {
    let replace_trace = trace.traceparent.is_some();
    let mut out = OwnedHeaders::new();
    if let Some(original) = original {
        for header in original.iter() {
            let owned = header.key.starts_with(headers::PREFIX);
            let kept_replay =
                header.key == headers::REPLAY_ID || header.key == headers::REPLAY_COUNT;
            let replaced = replace_trace
                && (header.key == headers::TRACEPARENT || header.key == headers::TRACESTATE);
            if (!owned || kept_replay) && !replaced {
                out = out.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
        }
    }

    let mut set = |name: &str, value: String| {
        let current = std::mem::replace(&mut out, OwnedHeaders::new());
        out = current.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    };
    if let Some(traceparent) = &trace.traceparent {
        set(headers::TRACEPARENT, traceparent.clone());
        if let Some(tracestate) = &trace.tracestate {
            set(headers::TRACESTATE, tracestate.clone());
        }
    }
    set(headers::ATTEMPT, forward.attempts_made.to_string());
    set(
        headers::FIRST_FAILURE_MS,
        forward.first_failure_ms.to_string(),
    );
    if let Some(deadline) = forward.deadline_ms {
        set(headers::DEADLINE_MS, deadline.to_string());
    }
    if let Some(not_before) = forward.not_before_ms {
        set(headers::NOT_BEFORE_MS, not_before.to_string());
    }
    set(headers::ERROR_CLASS, forward.class.as_str().to_owned());
    set(
        headers::ERROR_MESSAGE,
        truncate(forward.message, MAX_ERROR_MESSAGE_BYTES),
    );
    set(headers::ORIGIN_TOPIC, forward.origin.topic.clone());
    set(
        headers::ORIGIN_PARTITION,
        forward.origin.partition.to_string(),
    );
    set(headers::ORIGIN_OFFSET, forward.origin.offset.to_string());
    if let Some(timestamp) = forward.origin.timestamp_ms {
        set(headers::ORIGIN_TIMESTAMP_MS, timestamp.to_string());
    }
    set(headers::GROUP, forward.group.to_owned());
    out
}

fn truncate(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here() -> Origin {
        Origin {
            topic: "g.retry.1".into(),
            partition: 2,
            offset: 40,
            timestamp_ms: Some(7),
        }
    }

    fn source() -> Origin {
        Origin {
            topic: "transactions.v1".into(),
            partition: 1,
            offset: 9,
            timestamp_ms: Some(5),
        }
    }

    fn forward(origin: &Origin, attempts: u32) -> Forward<'_> {
        Forward {
            attempts_made: attempts,
            first_failure_ms: 100,
            deadline_ms: Some(900),
            not_before_ms: Some(200),
            class: ErrorClass::Transient,
            message: "smtp rcpt rejected with 451",
            origin,
            group: "txnotify-email",
        }
    }

    fn names(headers: &OwnedHeaders) -> Vec<String> {
        headers.iter().map(|header| header.key.to_owned()).collect()
    }

    #[test]
    fn record_without_headers_is_its_own_origin() {
        let state = DeliveryState::from_headers::<OwnedHeaders>(None, here()).unwrap();
        assert_eq!(state.attempts_made, 0);
        assert_eq!(state.origin, here());
        assert_eq!(state.not_before_ms, None);
    }

    #[test]
    fn forwarded_headers_round_trip() {
        let origin = source();
        let written = forward_headers::<OwnedHeaders>(None, &forward(&origin, 2));
        let state = DeliveryState::from_headers(Some(&written), here()).unwrap();
        assert_eq!(state.attempts_made, 2);
        assert_eq!(state.origin, source());
        assert_eq!(state.not_before_ms, Some(200));
        assert_eq!(state.budget.first_failure_ms, Some(100));
        assert_eq!(state.budget.deadline_ms, Some(900));
    }

    #[test]
    fn cycling_never_grows_headers() {
        let origin = source();
        let original = OwnedHeaders::new()
            .insert(Header {
                key: "event-id",
                value: Some("abc"),
            })
            .insert(Header {
                key: "traceparent",
                value: Some("00-x"),
            })
            .insert(Header {
                key: headers::REPLAY_COUNT,
                value: Some("1"),
            });
        let once = forward_headers(Some(&original), &forward(&origin, 1));
        let twice = forward_headers(Some(&once), &forward(&origin, 2));
        let thrice = forward_headers(Some(&twice), &forward(&origin, 3));
        assert_eq!(names(&once), names(&thrice));
        let mut unique = names(&thrice);
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), thrice.count());
        assert_eq!(header_bytes(Some(&thrice), "event-id"), Some(&b"abc"[..]));
        assert_eq!(
            header_bytes(Some(&thrice), headers::REPLAY_COUNT),
            Some(&b"1"[..])
        );
        assert_eq!(
            header_bytes(Some(&thrice), headers::ATTEMPT),
            Some(&b"3"[..])
        );
    }

    #[test]
    fn trace_headers_point_at_current_span() {
        let origin = source();
        let original = OwnedHeaders::new()
            .insert(Header {
                key: headers::TRACEPARENT,
                value: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            })
            .insert(Header {
                key: headers::TRACESTATE,
                value: Some("vendor=old"),
            });
        let current = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01";
        // (case, trace of the current span, expected traceparent, expected tracestate)
        let cases = [
            (
                "no span context: copied",
                TraceHeaders::default(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                Some("vendor=old"),
            ),
            (
                "span context: replaced",
                TraceHeaders {
                    traceparent: Some(current.into()),
                    tracestate: None,
                },
                current,
                None,
            ),
            (
                "span context with state: both replaced",
                TraceHeaders {
                    traceparent: Some(current.into()),
                    tracestate: Some("vendor=new".into()),
                },
                current,
                Some("vendor=new"),
            ),
        ];
        for (case, trace, traceparent, tracestate) in cases {
            let written = forward_headers_with_trace(Some(&original), &forward(&origin, 1), &trace);
            let count = |name: &str| written.iter().filter(|h| h.key == name).count();
            assert_eq!(count(headers::TRACEPARENT), 1, "{case}");
            assert_eq!(
                header_bytes(Some(&written), headers::TRACEPARENT),
                Some(traceparent.as_bytes()),
                "{case}"
            );
            assert_eq!(
                header_bytes(Some(&written), headers::TRACESTATE),
                tracestate.map(str::as_bytes),
                "{case}"
            );
        }
    }

    #[test]
    fn dead_letter_drops_not_before() {
        let origin = source();
        let retry = forward_headers::<OwnedHeaders>(None, &forward(&origin, 1));
        let dead = Forward {
            not_before_ms: None,
            class: ErrorClass::Exhausted,
            ..forward(&origin, 2)
        };
        let written = forward_headers(Some(&retry), &dead);
        assert_eq!(header_bytes(Some(&written), headers::NOT_BEFORE_MS), None);
        assert_eq!(
            header_bytes(Some(&written), headers::ERROR_CLASS),
            Some(&b"exhausted"[..])
        );
    }

    #[test]
    fn malformed_attempt_header_is_named() {
        let bad = OwnedHeaders::new().insert(Header {
            key: headers::ATTEMPT,
            value: Some("two"),
        });
        let error = DeliveryState::from_headers(Some(&bad), here()).unwrap_err();
        assert_eq!(error.name, headers::ATTEMPT);
        assert!(error.to_string().contains("txnotify-attempt"));
    }

    #[test]
    fn long_error_message_is_truncated_on_char_boundary() {
        let text = "é".repeat(200);
        let cut = truncate(&text, MAX_ERROR_MESSAGE_BYTES);
        assert!(cut.len() <= MAX_ERROR_MESSAGE_BYTES);
        assert!(text.starts_with(&cut));
    }
}
