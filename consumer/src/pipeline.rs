//! Processing of one record, from decode to a durable outcome.
//!
//! Every record ends in exactly one of: sent, duplicate skipped, published to a retry
//! tier, or published to the dead-letter topic. Only infrastructure failures (the ledger
//! store, or Kafka refusing the retry or dead-letter record until shutdown) end without
//! an outcome, and then the record's offset is never stored, so it is redelivered.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use tokio::sync::watch;
use txnotify_schemas::{headers, ErrorClass, Limits, TransactionEvent};

use crate::breaker::Breaker;
use crate::changelog::Changelog;
use crate::config::UnknownOutcomePolicy;
use crate::email::{build_message, Renderer, SendFailureClass, SmtpSender};
use crate::events::{
    DeadLettered, DuplicateSkipped, ForwardFailed, NotificationSent, OutcomeUnknown, RecordRef,
    RetryScheduled,
};
use crate::ledger::{Ledger, LedgerError, Reservation};
use crate::producer::WorkerProducer;
use crate::record::{forward_headers, header_bytes, DeliveryState, Forward, Origin};
use crate::retry::{Decision, RetryPolicy};
use crate::stats::Stats;
use crate::telemetry::metrics;
use crate::topics::TopicNames;

/// Failure that stops the worker: the record stays unacknowledged and is redelivered.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The ledger store failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The worker is shutting down and the record has no durable outcome yet.
    #[error("shutdown before the outcome of the record was durable")]
    ShuttingDown,
    /// The record's partition was revoked, or the worker is stopping, before its send
    /// began; the partition's next owner reads it again.
    #[error("partition revoked before the send began")]
    Fenced,
}

/// Everything a lane needs to process records.
pub struct Pipeline {
    /// Topic names of the group.
    pub topics: TopicNames,
    /// Retry bounds.
    pub retry: RetryPolicy,
    /// Unknown-outcome policy.
    pub unknown_outcome: UnknownOutcomePolicy,
    /// Payload limits.
    pub limits: Limits,
    /// Dedupe ledger.
    pub ledger: Ledger,
    /// Ledger owner id of this worker.
    pub owner: u64,
    /// Template renderer.
    pub renderer: Renderer,
    /// SMTP sender.
    pub sender: SmtpSender,
    /// Producer for retry and dead-letter records.
    pub producer: Arc<WorkerProducer>,
    /// Delivery timeout for retry and dead-letter records.
    pub produce_timeout: Duration,
    /// Appender of ledger outcomes to the changelog topic.
    pub changelog: Changelog,
    /// Circuit breaker of the SMTP endpoint.
    pub breaker: Arc<Breaker>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Becomes true when the worker shuts down.
    pub shutdown: watch::Receiver<bool>,
}

/// Final state of a processed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The SMTP server accepted the message.
    Sent,
    /// The ledger showed it as sent already.
    Duplicate,
    /// Published to retry tier `n`.
    Retried(usize),
    /// Published to the dead-letter topic.
    DeadLettered(ErrorClass),
}

/// Returns the current wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let elapsed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
}

/// Returns where a record was consumed: its topic, partition, offset and timestamp.
pub fn here(message: &OwnedMessage) -> Origin {
    Origin {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
    }
}

impl Pipeline {
    /// Processes one record to a durable outcome.
    ///
    /// 1. Read the delivery headers; malformed ones dead-letter as `invalid`.
    /// 2. Decode and validate the event; a failure dead-letters as `invalid`.
    /// 3. Reserve the event in the ledger; a sent event is a duplicate.
    /// 4. Render, build and send the email.
    /// 5. Record the outcome in the ledger, or route the failure to a retry tier or the
    ///    dead-letter topic.
    ///
    /// `current` returns false once the record's partition was revoked; the record then
    /// stops before its send with [`PipelineError::Fenced`].
    pub async fn process(
        &self,
        message: &OwnedMessage,
        current: &(dyn Fn() -> bool + Sync),
    ) -> Result<Outcome, PipelineError> {
        let here = here(message);
        let state = match DeliveryState::from_headers(message.headers(), here.clone()) {
            Ok(state) => state,
            Err(error) => {
                let state = DeliveryState {
                    attempts_made: 0,
                    budget: Default::default(),
                    not_before_ms: None,
                    origin: here,
                };
                let reason = error.to_string();
                return self
                    .dead_letter(message, &state, None, ErrorClass::Invalid, &reason)
                    .await;
            }
        };
        let attempt = state.attempts_made.saturating_add(1);

        let payload = message.payload().unwrap_or_default();
        let event = match txnotify_schemas::decode(payload, &self.limits) {
            Ok(event) => event,
            Err(error) => {
                let reason = error.to_string();
                return self
                    .dead_letter(message, &state, None, ErrorClass::Invalid, &reason)
                    .await;
            }
        };
        let record = RecordRef {
            event_id: Some(event.event_id),
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            attempt,
        };

        let reservation = tracing::info_span!("ledger.reserve")
            .in_scope(|| self.ledger.reserve(event.event_id, self.owner, now_ms()))?;
        match reservation {
            Reservation::Acquired => {
                // The reservation must be on disk before the send: a worker killed after
                // the send then leaves evidence that the outcome is unknown.
                self.ledger.sync().await?;
            }
            Reservation::AlreadySent => {
                DuplicateSkipped { record }.emit(&self.stats);
                return Ok(Outcome::Duplicate);
            }
            Reservation::Interrupted => {
                let reason = "a worker stopped while sending this event, so it may have been sent";
                self.append_changelog(&state, &event).await?;
                OutcomeUnknown {
                    record,
                    error: reason,
                    resend: self.unknown_outcome == UnknownOutcomePolicy::Resend,
                }
                .emit(&self.stats);
                match self.unknown_outcome {
                    UnknownOutcomePolicy::DeadLetter => {
                        return self
                            .dead_letter(
                                message,
                                &state,
                                Some(&record),
                                ErrorClass::UnknownOutcome,
                                reason,
                            )
                            .await;
                    }
                    UnknownOutcomePolicy::Resend => {
                        if !self.ledger.reserve_after_unknown(
                            event.event_id,
                            self.owner,
                            now_ms(),
                        )? {
                            return self.after_transient(message, &state, &record, reason).await;
                        }
                        self.ledger.sync().await?;
                        self.stats.record_resent_after_unknown();
                    }
                }
            }
            Reservation::UnknownOutcome => match self.unknown_outcome {
                UnknownOutcomePolicy::DeadLetter => {
                    let reason = "an earlier send of this event ended with an unknown outcome";
                    return self
                        .dead_letter(
                            message,
                            &state,
                            Some(&record),
                            ErrorClass::UnknownOutcome,
                            reason,
                        )
                        .await;
                }
                UnknownOutcomePolicy::Resend => {
                    if !self
                        .ledger
                        .reserve_after_unknown(event.event_id, self.owner, now_ms())?
                    {
                        let reason = "ledger entry changed while resending an unknown outcome";
                        return self.after_transient(message, &state, &record, reason).await;
                    }
                    self.stats.record_resent_after_unknown();
                }
            },
        }

        if !current() {
            self.ledger.release(event.event_id, self.owner)?;
            return Err(PipelineError::Fenced);
        }
        self.send(message, &state, &record, &event).await
    }

    async fn send(
        &self,
        message: &OwnedMessage,
        state: &DeliveryState,
        record: &RecordRef<'_>,
        event: &TransactionEvent,
    ) -> Result<Outcome, PipelineError> {
        let render_span = tracing::info_span!("email.render");
        let built = render_span
            .in_scope(|| self.renderer.render(event))
            .map_err(|error| error.to_string())
            .and_then(|rendered| {
                build_message(
                    event,
                    &rendered,
                    self.sender.sender_mailbox(),
                    self.sender.message_id_domain(),
                )
                .map_err(|error| error.to_string())
            });
        let email = match built {
            Ok(email) => email,
            Err(reason) => {
                self.ledger.release(event.event_id, self.owner)?;
                return self
                    .dead_letter(message, state, Some(record), ErrorClass::Permanent, &reason)
                    .await;
            }
        };

        loop {
            // While the breaker is open the record waits here instead of spending a retry.
            if self.breaker.state() != crate::breaker::BreakerState::Closed {
                let mut shutdown = self.shutdown.clone();
                tokio::select! {
                    _ = self.breaker.closed() => {}
                    _ = shutdown.wait_for(|stopping| *stopping) => return Err(PipelineError::ShuttingDown),
                }
            }

            let error = match self.sender.send(&email).await {
                Ok(receipt) => {
                    self.breaker.record_success();
                    tracing::info_span!("ledger.mark_sent").in_scope(|| {
                        self.ledger
                            .mark_sent(event.event_id, self.owner, &receipt.reply, now_ms())
                    })?;
                    self.append_changelog(state, event).await?;
                    NotificationSent {
                        record: *record,
                        smtp_code: receipt.code,
                        end_to_end: metrics::latency_since(event.occurred_at),
                    }
                    .emit(&self.stats);
                    return Ok(Outcome::Sent);
                }
                Err(error) => error,
            };

            let reason = error.to_string();
            if error.is_endpoint_failure() {
                if self.breaker.record_failure() {
                    tracing::warn!(
                        event_id = %event.event_id,
                        topic = record.topic,
                        partition = record.partition,
                        offset = record.offset,
                        attempt = record.attempt,
                        error = %reason,
                        "SMTP endpoint failing; holding the record until the circuit breaker closes."
                    );
                    continue;
                }
            } else {
                self.breaker.record_success();
            }

            return match error.class() {
                SendFailureClass::Transient => {
                    self.ledger.release(event.event_id, self.owner)?;
                    self.after_transient(message, state, record, &reason).await
                }
                SendFailureClass::Permanent => {
                    self.ledger.release(event.event_id, self.owner)?;
                    self.dead_letter(message, state, Some(record), ErrorClass::Permanent, &reason)
                        .await
                }
                SendFailureClass::UnknownOutcome => {
                    self.ledger
                        .mark_unknown(event.event_id, self.owner, now_ms())?;
                    self.append_changelog(state, event).await?;
                    let resend = self.unknown_outcome == UnknownOutcomePolicy::Resend;
                    OutcomeUnknown {
                        record: *record,
                        error: &reason,
                        resend,
                    }
                    .emit(&self.stats);
                    if resend {
                        self.after_transient(message, state, record, &reason).await
                    } else {
                        self.dead_letter(
                            message,
                            state,
                            Some(record),
                            ErrorClass::UnknownOutcome,
                            &reason,
                        )
                        .await
                    }
                }
            };
        }
    }

    /// Appends the event's ledger entry to the changelog partition of its source record,
    /// trying again with a capped backoff until it is acknowledged or the worker stops.
    async fn append_changelog(
        &self,
        state: &DeliveryState,
        event: &TransactionEvent,
    ) -> Result<(), PipelineError> {
        let entry = self.ledger.entry(event.event_id)?;
        let mut backoff = Duration::from_millis(100);
        let mut shutdown = self.shutdown.clone();
        loop {
            match self
                .changelog
                .append(
                    &self.producer.get(),
                    state.origin.partition,
                    event.event_id,
                    &entry,
                )
                .await
            {
                Ok(()) => {
                    self.producer.succeeded();
                    return Ok(());
                }
                Err(error) => {
                    self.producer.failed();
                    tracing::error!(
                    event_id = %event.event_id,
                    partition = state.origin.partition,
                    error = %error,
                    "Failed to append to the ledger changelog; trying again."
                    );
                }
            }
            if *shutdown.borrow() {
                return Err(PipelineError::ShuttingDown);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return Err(PipelineError::ShuttingDown),
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn after_transient(
        &self,
        message: &OwnedMessage,
        state: &DeliveryState,
        record: &RecordRef<'_>,
        reason: &str,
    ) -> Result<Outcome, PipelineError> {
        let attempt = state.attempts_made.saturating_add(1);
        match self.retry.after_transient(attempt, &state.budget, now_ms()) {
            Decision::Retry {
                tier,
                not_before_ms,
                first_failure_ms,
                deadline_ms,
            } => {
                let forward = Forward {
                    attempts_made: attempt,
                    first_failure_ms,
                    deadline_ms: Some(deadline_ms),
                    not_before_ms: Some(not_before_ms),
                    class: ErrorClass::Transient,
                    message: reason,
                    origin: &state.origin,
                    group: &self.topics.group,
                };
                // Retry tiers are co-partitioned with the source topic, so the member that owns
                // source partition p, and restored its ledger, also owns tier partition p.
                self.produce(
                    message,
                    &self.topics.retry(tier),
                    Some(state.origin.partition),
                    &forward,
                )
                .await?;
                RetryScheduled {
                    record: *record,
                    tier,
                    not_before_ms,
                    error: reason,
                }
                .emit(&self.stats);
                Ok(Outcome::Retried(tier))
            }
            Decision::DeadLetter { class, reason: why } => {
                let full = format!("{why}; last error: {reason}");
                self.dead_letter(message, state, Some(record), class, &full)
                    .await
            }
        }
    }

    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        state: &DeliveryState,
        record: Option<&RecordRef<'_>>,
        class: ErrorClass,
        reason: &str,
    ) -> Result<Outcome, PipelineError> {
        let attempt = state.attempts_made.saturating_add(1);
        let now = now_ms();
        let forward = Forward {
            attempts_made: attempt,
            first_failure_ms: state.budget.first_failure_ms.unwrap_or(now),
            deadline_ms: state.budget.deadline_ms,
            not_before_ms: None,
            class,
            message: reason,
            origin: &state.origin,
            group: &self.topics.group,
        };
        self.produce(message, &self.topics.dlq(), None, &forward)
            .await?;
        let record = record.copied().unwrap_or(RecordRef {
            event_id: None,
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            attempt,
        });
        DeadLettered {
            record,
            class,
            error: reason,
        }
        .emit(&self.stats);
        Ok(Outcome::DeadLettered(class))
    }

    /// Publishes the record's key and value unchanged to `topic` and waits for the
    /// acknowledgement. A refused record is tried again with a capped backoff until it is
    /// acknowledged or the worker shuts down.
    async fn produce(
        &self,
        message: &OwnedMessage,
        topic: &str,
        partition: Option<i32>,
        forward: &Forward<'_>,
    ) -> Result<(), PipelineError> {
        let headers = forward_headers(message.headers(), forward);
        let mut backoff = Duration::from_millis(100);
        let mut shutdown = self.shutdown.clone();
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(topic).headers(headers.clone());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(partition) = partition {
                record = record.partition(partition);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            let result = self
                .producer
                .get()
                .send(record, Timeout::After(self.produce_timeout))
                .await;
            match result {
                Ok(_) => {
                    self.producer.succeeded();
                    return Ok(());
                }
                Err((error, _)) => {
                    self.producer.failed();
                    let event_id = header_bytes(message.headers(), headers::EVENT_ID)
                        .and_then(|bytes| std::str::from_utf8(bytes).ok())
                        .and_then(|text| text.parse().ok());
                    ForwardFailed {
                        record: RecordRef {
                            event_id,
                            topic: message.topic(),
                            partition: message.partition(),
                            offset: message.offset(),
                            attempt: forward.attempts_made,
                        },
                        target_topic: topic,
                        error: &error.to_string(),
                    }
                    .emit();
                }
            }
            if *shutdown.borrow() {
                return Err(PipelineError::ShuttingDown);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return Err(PipelineError::ShuttingDown),
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
