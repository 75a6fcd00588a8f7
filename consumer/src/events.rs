//! Named telemetry events. Each occurrence is one type that writes one log line and
//! updates the counters, so logs and counters cannot disagree.
//!
//! Log lines carry ids in fields (`event_id`, `topic`, `partition`, `offset`,
//! `attempt`) and never an address, a name or a payload.

use std::fmt;

use txnotify_schemas::ErrorClass;
use uuid::Uuid;

use crate::stats::Stats;

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
}

impl NotificationSent<'_> {
    /// Logs the event and counts it.
    pub fn emit(&self, stats: &Stats) {
        stats.record_sent();
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
        record_event!(
            warn,
            self.record,
            error = self.error,
            resend = self.resend,
            "Send outcome unknown after the message content was transmitted."
        );
    }
}
