//! Ledger changelog: the ledger's outcomes as a compacted Kafka topic.
//!
//! Every terminal outcome (`sent` or `unknown-outcome`) is appended to `<group>.ledger`
//! before its source offset can complete. Each entry goes explicitly to the partition
//! number of its source record, keyed by `event_id`, so one source partition restores
//! from exactly one changelog partition. When a source partition is assigned, the
//! worker pauses it and replays its changelog partition into the local ledger, starting
//! from the local checkpoint if there is one, before any of its records is processed.
//! A worker on an empty disk therefore never resends what another worker already sent.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::config::KafkaConfig;
use crate::ledger::{decode_entry, encode_entry, Entry, Ledger, LedgerError};
use crate::pipeline::now_ms;

/// Failure to restore a partition's ledger from its changelog.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Kafka failed while reading the changelog.
    #[error("reading changelog {topic} partition {partition} failed: {source}")]
    Kafka {
        /// Changelog topic.
        topic: String,
        /// Partition being restored.
        partition: i32,
        /// Client error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The changelog was not read to its end within the restore timeout.
    #[error(
        "reading changelog {topic} partition {partition} timed out at offset {reached} of {end}; \
         check the broker, or raise notifier.restore_timeout_ms"
    )]
    TimedOut {
        /// Changelog topic.
        topic: String,
        /// Partition being restored.
        partition: i32,
        /// Next offset that was not read.
        reached: i64,
        /// End offset the restore had to reach.
        end: i64,
    },
    /// The local ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Counts of one restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// First offset read.
    pub from: i64,
    /// End offset reached.
    pub to: i64,
    /// Entries that changed the local ledger.
    pub applied: u64,
}

/// Replays changelog partition `partition` into `ledger`, from the local checkpoint (or
/// the start of the partition) up to the end offset at the time of the call.
///
/// This blocks the calling thread; run it with `spawn_blocking`.
pub fn restore(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    ledger: &Ledger,
    timeout: Duration,
) -> Result<Restored, RestoreError> {
    let kafka_error = |source| RestoreError::Kafka {
        topic: topic.to_owned(),
        partition,
        source,
    };
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "txnotify-ledger-restore")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .map_err(kafka_error)?;
    let request_timeout = timeout.min(Duration::from_secs(10));
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, request_timeout)
        .map_err(kafka_error)?;
    let from = ledger
        .changelog_checkpoint(partition)?
        .unwrap_or(low)
        .max(low);
    if from >= high {
        return Ok(Restored {
            from,
            to: high,
            applied: 0,
        });
    }

    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(kafka_error)?;
    consumer.assign(&assignment).map_err(kafka_error)?;

    let started = std::time::SystemTime::now();
    let mut next = from;
    let mut applied = 0;
    while next < high {
        if started.elapsed().unwrap_or_default() > timeout {
            return Err(RestoreError::TimedOut {
                topic: topic.to_owned(),
                partition,
                reached: next,
                end: high,
            });
        }
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = result.map_err(kafka_error)?;
        next = message.offset() + 1;
        let (Some(key), Some(value)) = (message.key(), message.payload()) else {
            continue;
        };
        let Ok(event_id) = Uuid::from_slice(key) else {
            tracing::warn!(
                topic,
                partition,
                offset = message.offset(),
                "Skipped a changelog record whose key is not an event id."
            );
            continue;
        };
        match decode_entry(event_id, value) {
            Ok(entry) => {
                if ledger.apply_remote(event_id, &entry, now_ms())? {
                    applied += 1;
                }
            }
            Err(error) => {
                tracing::warn!(topic, partition, offset = message.offset(), error = %error, "Skipped an unreadable changelog record.");
            }
        }
    }
    ledger.set_changelog_checkpoint(partition, high)?;
    Ok(Restored {
        from,
        to: high,
        applied,
    })
}

/// Appends ledger outcomes to the changelog topic.
#[derive(Clone)]
pub struct Changelog {
    topic: String,
    timeout: Duration,
}

impl Changelog {
    /// Creates an appender that writes to `topic`.
    pub fn new(topic: String, timeout: Duration) -> Self {
        Self { topic, timeout }
    }

    /// Appends `entry` for `event_id` to changelog partition `partition` and waits for the
    /// acknowledgement.
    pub async fn append(
        &self,
        producer: &FutureProducer,
        partition: i32,
        event_id: Uuid,
        entry: &Entry,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let value = encode_entry(entry);
        let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
            .partition(partition)
            .key(event_id.as_bytes().as_slice())
            .payload(value.as_slice());
        producer
            .send(record, Timeout::After(self.timeout))
            .await
            .map(|_| ())
            .map_err(|(error, _)| error)
    }
}
