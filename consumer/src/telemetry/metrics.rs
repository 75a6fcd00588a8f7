//! Prometheus metrics of the notifier, in base units (seconds, records) with bounded
//! labels: a topic name, a partition, a retry tier, an error class, a send result or a
//! configured endpoint name. No label contains an event id, an address or error text.
//!
//! Every name, unit and label is listed in `docs/metrics.md`. Other modules update the
//! metrics through the functions here, so the names live in one file.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use rdkafka::Statistics;
use txnotify_schemas::ErrorClass;

use super::health;

/// Bucket bounds of the SMTP send duration, in seconds.
const SEND_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Bucket bounds of the end-to-end latency, in seconds. 60 is a bound because the
/// notification SLO counts events notified within 60 seconds.
const END_TO_END_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Bucket bounds of the ledger restore duration, in seconds.
const RESTORE_BUCKETS: [f64; 9] = [0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0];

/// State of an SMTP circuit breaker, exported as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Sends go through: 0.
    Closed,
    /// One probe send is allowed: 1.
    HalfOpen,
    /// Sends are held back: 2.
    Open,
}

impl BreakerState {
    /// Returns the exported gauge value.
    pub fn value(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

/// Result label of one SMTP send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResult {
    /// The server accepted the message.
    Accepted,
    /// The send failed and may succeed later.
    Transient,
    /// The server rejected the message for good.
    Permanent,
    /// The connection failed after the message content was transmitted.
    UnknownOutcome,
}

impl SendResult {
    fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::UnknownOutcome => "unknown-outcome",
        }
    }
}

/// Every metric of the process.
struct Metrics {
    registry: Registry,
    records_consumed: IntCounterVec,
    notifications_sent: IntCounter,
    duplicates_skipped: IntCounter,
    retries_scheduled: IntCounterVec,
    dead_letters: IntCounterVec,
    outcomes_unknown: IntCounter,
    smtp_send_duration: HistogramVec,
    end_to_end_latency: Histogram,
    consumer_lag: IntGaugeVec,
    lag_series: Mutex<HashSet<(String, String)>>,
    assigned_partitions: IntGauge,
    breaker_state: IntGaugeVec,
    ledger_entries: IntGauge,
    ledger_restore_duration: Histogram,
    in_flight: IntGauge,
    spool_backlog: IntGauge,
    ready: IntGauge,
    stalled: IntGauge,
    last_progress: Gauge,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let metric = Histogram::with_opts(opts).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let smtp_send_duration = HistogramVec::new(
            HistogramOpts::new(
                "txnotify_smtp_send_duration_seconds",
                "Duration of one SMTP send, from taking a connection to the final reply.",
            )
            .buckets(SEND_BUCKETS.to_vec()),
            &["result"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(smtp_send_duration.clone()))
            .expect("unique metric");
        let last_progress = Gauge::new(
            "txnotify_last_progress_timestamp_seconds",
            "Unix time at which a record last reached a durable outcome.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(last_progress.clone()))
            .expect("unique metric");
        Self {
            records_consumed: counter_vec(
                r,
                "txnotify_records_consumed_total",
                "Records read from the source topic and the retry tiers.",
                &["topic"],
            ),
            notifications_sent: counter(
                r,
                "txnotify_notifications_sent_total",
                "Notifications the SMTP server accepted.",
            ),
            duplicates_skipped: counter(
                r,
                "txnotify_duplicates_skipped_total",
                "Records skipped because the ledger showed the event as sent.",
            ),
            retries_scheduled: counter_vec(
                r,
                "txnotify_retries_scheduled_total",
                "Records published to a retry tier, by 1-based tier number.",
                &["tier"],
            ),
            dead_letters: counter_vec(
                r,
                "txnotify_dead_letters_total",
                "Records published to the dead-letter topic, by error class.",
                &["class"],
            ),
            outcomes_unknown: counter(
                r,
                "txnotify_send_outcomes_unknown_total",
                "Sends that failed after the message content was transmitted.",
            ),
            smtp_send_duration,
            end_to_end_latency: histogram(
                r,
                "txnotify_end_to_end_latency_seconds",
                "Time from the event's occurred_at to SMTP acceptance.",
                &END_TO_END_BUCKETS,
            ),
            consumer_lag: gauge_vec(
                r,
                "txnotify_consumer_lag_records",
                "Records between the committed offset and the high watermark, per assigned partition.",
                &["topic", "partition"],
            ),
            lag_series: Mutex::new(HashSet::new()),
            assigned_partitions: gauge(
                r,
                "txnotify_assigned_partitions",
                "Partitions assigned to this consumer, source and retry topics together.",
            ),
            breaker_state: gauge_vec(
                r,
                "txnotify_smtp_breaker_state",
                "SMTP circuit breaker state per configured endpoint: 0 closed, 1 half-open, 2 open.",
                &["endpoint"],
            ),
            ledger_entries: gauge(
                r,
                "txnotify_ledger_entries",
                "Entries in the local dedupe ledger.",
            ),
            ledger_restore_duration: histogram(
                r,
                "txnotify_ledger_restore_duration_seconds",
                "Duration of a ledger restore from its changelog topic.",
                &RESTORE_BUCKETS,
            ),
            in_flight: gauge(
                r,
                "txnotify_in_flight_records",
                "Records handed to a lane and not yet at a durable outcome.",
            ),
            spool_backlog: gauge(
                r,
                "txnotify_spool_backlog_records",
                "Events in the producer's local spool that Kafka has not acknowledged yet.",
            ),
            ready: gauge(
                r,
                "txnotify_ready",
                "1 when /readyz returns 200, else 0.",
            ),
            stalled: gauge(
                r,
                "txnotify_consumer_stalled",
                "1 when records are in flight and none reached an outcome within the stall timeout.",
            ),
            last_progress,
            registry,
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Writes every metric in the Prometheus text exposition format, version 0.0.4.
///
/// The health gauges (`txnotify_ready`, `txnotify_consumer_stalled`) are computed at
/// this moment, so a scrape always agrees with `/readyz`.
pub fn encode() -> String {
    let readiness = health::readiness();
    METRICS.ready.set(i64::from(readiness.ready));
    METRICS.stalled.set(i64::from(readiness.stalled));
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&METRICS.registry.gather(), &mut out)
        .expect("text encoding into a Vec cannot fail");
    String::from_utf8(out).expect("the text encoder writes UTF-8")
}

/// Content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counts one record read from `topic`.
pub fn count_consumed(topic: &str) {
    METRICS.records_consumed.with_label_values(&[topic]).inc();
}

/// Counts one accepted notification and its end-to-end latency, when known.
pub fn count_sent(end_to_end: Option<Duration>) {
    METRICS.notifications_sent.inc();
    if let Some(latency) = end_to_end {
        METRICS.end_to_end_latency.observe(latency.as_secs_f64());
    }
}

/// Counts one skipped duplicate.
pub fn count_duplicate() {
    METRICS.duplicates_skipped.inc();
}

/// Counts one record published to retry tier `tier` (1-based).
pub fn count_retry(tier: usize) {
    METRICS
        .retries_scheduled
        .with_label_values(&[&tier.to_string()])
        .inc();
}

/// Counts one dead letter of class `class`.
pub fn count_dead_letter(class: ErrorClass) {
    METRICS
        .dead_letters
        .with_label_values(&[class.as_str()])
        .inc();
}

/// Counts one send with an unknown outcome.
pub fn count_unknown_outcome() {
    METRICS.outcomes_unknown.inc();
}

/// Returns the time since `occurred_at`, or `None` when `occurred_at` is in the future
/// because the producer's clock runs ahead.
pub fn latency_since(occurred_at: time::OffsetDateTime) -> Option<Duration> {
    (time::OffsetDateTime::now_utc() - occurred_at)
        .try_into()
        .ok()
}

/// Records the duration of one SMTP send and its result.
pub fn observe_smtp_send(duration: Duration, result: SendResult) {
    METRICS
        .smtp_send_duration
        .with_label_values(&[result.label()])
        .observe(duration.as_secs_f64());
}

/// Sets the state of the circuit breaker of `endpoint`, a configured endpoint name such
/// as `primary`; never pass a host name or address.
pub fn set_breaker_state(endpoint: &str, state: BreakerState) {
    METRICS
        .breaker_state
        .with_label_values(&[endpoint])
        .set(state.value());
}

/// Records how long a ledger restore took.
pub fn observe_ledger_restore(duration: Duration) {
    METRICS
        .ledger_restore_duration
        .observe(duration.as_secs_f64());
}

/// Sets the number of ledger entries.
pub fn set_ledger_entries(entries: usize) {
    METRICS
        .ledger_entries
        .set(i64::try_from(entries).unwrap_or(i64::MAX));
}

/// Sets the number of spooled events that Kafka has not acknowledged yet.
pub fn set_spool_backlog(records: u64) {
    METRICS
        .spool_backlog
        .set(i64::try_from(records).unwrap_or(i64::MAX));
}

/// Adds `delta` to the in-flight gauge.
pub(crate) fn add_in_flight(delta: i64) {
    METRICS.in_flight.add(delta);
}

/// Sets the progress timestamp to `unix_seconds`.
pub(crate) fn set_last_progress(unix_seconds: f64) {
    METRICS.last_progress.set(unix_seconds);
}

/// Sets the number of assigned partitions.
pub(crate) fn set_assigned_partitions(partitions: usize) {
    METRICS
        .assigned_partitions
        .set(i64::try_from(partitions).unwrap_or(i64::MAX));
}

/// Takes the per-partition lag and the broker connection state from librdkafka's
/// statistics, which it emits every `statistics.interval.ms`.
///
/// librdkafka reports a lag of -1 until it has the committed offset, and keeps
/// partitions that are no longer assigned with a lag of -1, so those series are removed
/// instead of left at their last value.
pub fn observe_consumer_statistics(statistics: &Statistics) {
    let mut current = HashSet::new();
    for (topic, topic_statistics) in &statistics.topics {
        for (partition, partition_statistics) in &topic_statistics.partitions {
            // Partition -1 is librdkafka's internal "unassigned" queue.
            if *partition < 0 || partition_statistics.consumer_lag < 0 {
                continue;
            }
            let key = (topic.clone(), partition.to_string());
            METRICS
                .consumer_lag
                .with_label_values(&[&key.0, &key.1])
                .set(partition_statistics.consumer_lag);
            current.insert(key);
        }
    }
    let mut series = METRICS
        .lag_series
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for (topic, partition) in series.difference(&current) {
        let _ = METRICS
            .consumer_lag
            .remove_label_values(&[topic.as_str(), partition.as_str()]);
    }
    *series = current;
    drop(series);

    let connected = statistics
        .brokers
        .values()
        .any(|broker| broker.nodeid >= 0 && broker.state == "UP");
    health::set_connected(connected);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn counters_appear_with_labels() {
        count_retry(2);
        count_dead_letter(ErrorClass::Permanent);
        observe_smtp_send(Duration::from_millis(20), SendResult::Accepted);
        let text = encode();
        let cases = [
            "txnotify_retries_scheduled_total{tier=\"2\"}",
            "txnotify_dead_letters_total{class=\"permanent\"}",
            "txnotify_smtp_send_duration_seconds_count{result=\"accepted\"}",
        ];
        for series in cases {
            let value = sample_value(&text, series);
            assert!(
                value.is_some_and(|v| v >= 1.0),
                "{series} missing in:\n{text}"
            );
        }
    }

    #[test]
    fn sixty_seconds_is_a_latency_bucket() {
        assert!(END_TO_END_BUCKETS.contains(&60.0));
    }

    #[test]
    fn breaker_states_map_to_numbers() {
        let cases = [
            (BreakerState::Closed, 0),
            (BreakerState::HalfOpen, 1),
            (BreakerState::Open, 2),
        ];
        for (state, value) in cases {
            assert_eq!(state.value(), value, "{state:?}");
        }
    }

    #[test]
    fn lag_of_unassigned_partitions_is_removed() {
        let statistics = |lags: &[(i32, i64)]| -> Statistics {
            let mut statistics = Statistics::default();
            let topic = statistics.topics.entry("lag-test".into()).or_default();
            for (partition, lag) in lags {
                let entry = topic.partitions.entry(*partition).or_default();
                entry.partition = *partition;
                entry.consumer_lag = *lag;
            }
            statistics
        };
        observe_consumer_statistics(&statistics(&[(-1, 0), (0, 5), (1, 7)]));
        let text = encode();
        let partition0 = "txnotify_consumer_lag_records{partition=\"0\",topic=\"lag-test\"}";
        let partition1 = "txnotify_consumer_lag_records{partition=\"1\",topic=\"lag-test\"}";
        assert_eq!(sample_value(&text, partition0), Some(5.0), "{text}");
        assert_eq!(sample_value(&text, partition1), Some(7.0), "{text}");
        assert!(!text.contains("partition=\"-1\""), "{text}");

        observe_consumer_statistics(&statistics(&[(0, 3), (1, -1)]));
        let text = encode();
        assert_eq!(sample_value(&text, partition0), Some(3.0), "{text}");
        assert_eq!(sample_value(&text, partition1), None, "{text}");
    }
}
