//! Named telemetry events. Each occurrence is one type that writes one log line and
//! updates the counters and the Prometheus metrics, so logs and metrics cannot disagree.
//!
//! Log lines carry ids in fields (`event_id`, `topic`, `partition`, `offset`,
//! `attempt`) and never an address, a name or a payload.

use std::fmt;
use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use txnotify_schemas::{headers, ErrorClass};
use uuid::Uuid;

use crate::record::header_bytes;
use crate::stats::Stats;
use crate::telemetry::metrics;
use crate::telemetry::ratelimit::RepeatLimiter;

/// Shortest interval between two log lines of the same repeating error.
const REPEAT_WINDOW: Duration = Duration::from_secs(10);

/// Identity of the record an event is about.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// Event id, when the payload decoded far enough to read it.
    pub event_id: Option<Uuid>,
    /// Topic the record was consumed from.
    pub topic: &'a str,
    /// Partition the record was consumed from.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// Attempt number, 1 for the first.
    pub attempt: u32,
}

struct EventId(Option<Uuid>);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => f.write_str("unknown"),
        }
    }
}

macro_rules! record_event {
    ($level:ident, $record:expr, $($rest:tt)+) => {
        tracing::$level!(
            event_id = %EventId($record.event_id),
            topic = $record.topic,
            partition = $record.partition,
            offset = $record.offset,
            attempt = $record.attempt,
            $($rest)+
        )
    };
}

/// The SMTP server accepted a notification.
pub struct NotificationSent<'a> {
    /// Record that was notified.
    pub record: RecordRef<'a>,
    /// Final SMTP reply code.
    pub smtp_code: u16,
    /// Time from the event's `occurred_at` to acceptance; `None` when the clock of the
    /// producer is ahead of this one.
    pub end_to_end: Option<Duration>,
}

impl NotificationSent<'_> {
    /// Logs the event and counts it.
    pub fn emit(&self, stats: &Stats) {
        stats.record_sent();
        metrics::count_sent(self.end_to_end);
        record_event!(
            info,
            self.record,
            smtp_code = self.smtp_code,
            "Notification sent."
        );
    }
}

/// The ledger showed the event as already sent.
pub struct DuplicateSkipped<'a> {
    /// Record that was skipped.
    pub record: RecordRef<'a>,
}

impl DuplicateSkipped<'_> {
    /// Logs the event and counts it.
    pub fn emit(&self, stats: &Stats) {
        stats.record_duplicate();
        metrics::count_duplicate();
        record_event!(
            info,
            self.record,
            "Duplicate skipped because the ledger shows it sent."
        );
    }
}

/// A transient failure was published to a retry tier.
pub struct RetryScheduled<'a> {
    /// Record that failed.
    pub record: RecordRef<'a>,
    /// Tier number, 1-based.
    pub tier: usize,
    /// Earliest time of the next attempt, in milliseconds since the Unix epoch.
    pub not_before_ms: i64,
    /// Failure that caused the retry.
    pub error: &'a str,
}

impl RetryScheduled<'_> {
    /// Logs the event and counts it.
    pub fn emit(&self, stats: &Stats) {
        stats.record_retry(self.tier);
        metrics::count_retry(self.tier);
        record_event!(
            warn,
            self.record,
            tier = self.tier,
            not_before_ms = self.not_before_ms,
            error = self.error,
            "Retry scheduled after a transient failure."
        );
    }
}

/// A record was published to the dead-letter topic.
pub struct DeadLettered<'a> {
    /// Record that was dead-lettered.
    pub record: RecordRef<'a>,
    /// Failure class.
    pub class: ErrorClass,
    /// Reason written to the error-message header.
    pub error: &'a str,
}

impl DeadLettered<'_> {
    /// Logs the event and counts it.
    pub fn emit(&self, stats: &Stats) {
        stats.record_dead_letter(self.class);
        metrics::count_dead_letter(self.class);
        record_event!(
            warn,
            self.record,
            class = self.class.as_str(),
            error = self.error,
            "Record dead-lettered."
        );
    }
}

/// A send timed out after the message content was transmitted.
pub struct OutcomeUnknown<'a> {
    /// Record whose send has an unknown outcome.
    pub record: RecordRef<'a>,
    /// Failure as reported by the sender.
    pub error: &'a str,
    /// True when the policy resends it, false when it is dead-lettered.
    pub resend: bool,
}

impl OutcomeUnknown<'_> {
    /// Logs the event and counts it.
    pub fn emit(&self, stats: &Stats) {
        stats.record_unknown_outcome();
        metrics::count_unknown_outcome();
        record_event!(
            warn,
            self.record,
            error = self.error,
            resend = self.resend,
            "Send outcome unknown after the message content was transmitted."
        );
    }
}

/// The worker took a record from the source topic or a retry tier.
pub struct RecordConsumed<'a> {
    /// The record, not yet decoded.
    pub message: &'a OwnedMessage,
}

impl RecordConsumed<'_> {
    /// Logs the event at debug level and counts it. The event id and attempt come from
    /// the `event-id` and `txnotify-attempt` headers, because the payload is not decoded
    /// yet.
    pub fn emit(&self, stats: &Stats) {
        stats.record_consumed();
        metrics::count_consumed(self.message.topic());
        let header_text = |name: &str| {
            header_bytes(self.message.headers(), name)
                .and_then(|bytes| std::str::from_utf8(bytes).ok())
        };
        let attempts_made: u32 = header_text(headers::ATTEMPT)
            .and_then(|text| text.parse().ok())
            .unwrap_or(0);
        let record = RecordRef {
            event_id: header_text(headers::EVENT_ID).and_then(|text| text.parse().ok()),
            topic: self.message.topic(),
            partition: self.message.partition(),
            offset: self.message.offset(),
            attempt: attempts_made.saturating_add(1),
        };
        record_event!(debug, record, "Record consumed.");
    }
}

/// Kafka refused a retry or dead-letter record; the worker tries again.
pub struct ForwardFailed<'a> {
    /// Record being forwarded.
    pub record: RecordRef<'a>,
    /// Retry or dead-letter topic.
    pub target_topic: &'a str,
    /// Failure reported by the producer.
    pub error: &'a str,
}

static FORWARD_FAILED: RepeatLimiter = RepeatLimiter::new(REPEAT_WINDOW);

impl ForwardFailed<'_> {
    /// Logs the event unless a line of this kind was logged within the last 10 s, for
    /// any record.
    pub fn emit(&self) {
        if let Some(suppressed) = FORWARD_FAILED.admit() {
            record_event!(
                error,
                self.record,
                target_topic = self.target_topic,
                error = self.error,
                suppressed,
                "Failed to publish a retry or dead-letter record; trying again."
            );
        }
    }
}

/// The Kafka consumer reported an error, for example a broker that is unreachable.
pub struct ConsumerFailed<'a> {
    /// Failure reported by librdkafka.
    pub error: &'a dyn fmt::Display,
}

static CONSUMER_FAILED: RepeatLimiter = RepeatLimiter::new(REPEAT_WINDOW);

impl ConsumerFailed<'_> {
    /// Logs the event unless a line of this kind was logged within the last 10 s.
    pub fn emit(&self) {
        if let Some(suppressed) = CONSUMER_FAILED.admit() {
            tracing::warn!(
                error = %self.error,
                suppressed,
                "Kafka consumer reported an error."
            );
        }
    }
}
