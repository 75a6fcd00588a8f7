//! Bounded, read-only scans of a dead-letter topic.
//!
//! The reader assigns partitions itself instead of joining a consumer group, turns off
//! offset commits and offset storing, and never writes. librdkafka requires a `group.id`
//! even for assigned partitions, so each reader sets a random one that never joins.
//!
//! A scan reads each partition from a start offset up to the high watermark taken when
//! the scan was planned, so records that arrive during the scan are left for the next one.
//!
//! With a `--since` bound the start offset comes from the broker's timestamp index
//! (`ListOffsets` by time). That lookup is only a hint: Tansu 0.6.0 returns offset 0 for
//! every lookup, so the reader clamps the result to the partition's watermarks, starts at
//! the low watermark when the result is missing, and the [`Filter`](super::filter::Filter)
//! still checks every record's own timestamp.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::compat::{DeadLetterInfo, HeaderList};
use super::DeadLetter;
use crate::config::KafkaConfig;

/// Error of a dead-letter read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The cluster did not respond to a metadata request.
    #[error(
        "failed to reach the broker at {servers} within {timeout_ms} ms: {error}; check kafka.bootstrap_servers and that the broker is running"
    )]
    Unreachable {
        /// Configured bootstrap servers.
        servers: String,
        /// Wait that passed.
        timeout_ms: u128,
        /// Client error.
        error: KafkaError,
    },
    /// The topic does not exist.
    #[error("topic {topic} not found; check the name, or run `txnotify topics ensure` to create the group's topics")]
    TopicNotFound {
        /// Requested topic.
        topic: String,
    },
    /// The partition does not exist.
    #[error("partition {partition} not found: topic {topic} has partitions 0 to {last}", last = .count - 1)]
    PartitionNotFound {
        /// Topic.
        topic: String,
        /// Requested partition.
        partition: i32,
        /// Partitions of the topic.
        count: i32,
    },
    /// The offset is outside the records the partition holds.
    #[error("offset {offset} not found in {topic} partition {partition}, which holds offsets {low} to {last}", last = .high - 1)]
    OffsetNotFound {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Requested offset.
        offset: i64,
        /// Low watermark.
        low: i64,
        /// High watermark.
        high: i64,
    },
    /// No record arrived for too long while records remained.
    #[error("timed out reading {topic} partition {partition} at offset {offset} after {timeout_ms} ms without a record")]
    TimedOut {
        /// Topic.
        topic: String,
        /// Partition that still had records.
        partition: i32,
        /// Next offset expected.
        offset: i64,
        /// Wait that passed.
        timeout_ms: u128,
    },
    /// Another client error.
    #[error("kafka request on topic {topic} failed: {error}")]
    Kafka {
        /// Topic.
        topic: String,
        /// Client error.
        error: KafkaError,
    },
}

/// Offsets of one partition to read: `start` inclusive, `end` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRange {
    /// Partition.
    pub partition: i32,
    /// First offset to read.
    pub start: i64,
    /// High watermark when the scan was planned.
    pub end: i64,
}

/// A read-only client of one topic.
pub struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
    timeout: Duration,
}

impl TopicReader {
    /// Connects and reads the topic's partition count. `timeout` bounds each broker
    /// request and the wait for a record during scans.
    pub fn open(kafka: &KafkaConfig, topic: &str, timeout: Duration) -> Result<Self, ReadError> {
        let mut config = kafka.client_config();
        // librdkafka needs a group id for assign(); this one never joins or commits.
        let group = format!("txnotify-dlq-reader-{}", uuid::Uuid::new_v4());
        config
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("allow.auto.create.topics", "false");
        let consumer: BaseConsumer = config.create().map_err(|error| ReadError::Kafka {
            topic: topic.to_owned(),
            error,
        })?;
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|error| ReadError::Unreachable {
                servers: kafka.bootstrap_servers.clone(),
                timeout_ms: timeout.as_millis(),
                error,
            })?;
        let found = metadata
            .topics()
            .iter()
            .find(|candidate| candidate.name() == topic);
        let partitions = match found {
            Some(found) if found.error().is_none() && !found.partitions().is_empty() => {
                i32::try_from(found.partitions().len()).unwrap_or(i32::MAX)
            }
            _ => {
                return Err(ReadError::TopicNotFound {
                    topic: topic.to_owned(),
                })
            }
        };
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            partitions,
            timeout,
        })
    }

    /// Returns the topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Returns the partition count.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    fn kafka_error(&self, error: KafkaError) -> ReadError {
        ReadError::Kafka {
            topic: self.topic.clone(),
            error,
        }
    }

    /// Returns the low and high watermark of `partition`.
    pub fn watermarks(&self, partition: i32) -> Result<(i64, i64), ReadError> {
        self.check_partition(partition)?;
        self.consumer
            .fetch_watermarks(&self.topic, partition, self.timeout)
            .map_err(|source| self.kafka_error(source))
    }

    fn check_partition(&self, partition: i32) -> Result<(), ReadError> {
        if (0..self.partitions).contains(&partition) {
            Ok(())
        } else {
            Err(ReadError::PartitionNotFound {
                topic: self.topic.clone(),
                partition,
                count: self.partitions,
            })
        }
    }

    /// Plans a scan of every partition up to its current high watermark, starting at the
    /// low watermark or, with `since_ms`, at the broker's timestamp-index hint.
    pub fn plan(&self, since_ms: Option<i64>) -> Result<Vec<PartitionRange>, ReadError> {
        let mut ranges = Vec::new();
        for partition in 0..self.partitions {
            let (low, high) = self.watermarks(partition)?;
            ranges.push(PartitionRange {
                partition,
                start: low,
                end: high,
            });
        }
        let Some(since_ms) = since_ms else {
            return Ok(ranges);
        };

        let mut lookup = TopicPartitionList::new();
        for range in &ranges {
            lookup
                .add_partition_offset(&self.topic, range.partition, Offset::Offset(since_ms))
                .map_err(|source| self.kafka_error(source))?;
        }
        // A failed lookup only costs reading from the low watermark.
        let Ok(found) = self.consumer.offsets_for_times(lookup, self.timeout) else {
            return Ok(ranges);
        };
        // NOTE: a broker that returned an offset past the first record at or after
        // `since_ms` would hide earlier matches. An offset that is too early, as Tansu's
        // 0, only costs reading more.
        for range in &mut ranges {
            let hint = found
                .find_partition(&self.topic, range.partition)
                .map(|element| element.offset());
            tracing::debug!(
                topic = %self.topic,
                partition = range.partition,
                since_ms,
                hint = ?hint,
                low = range.start,
                high = range.end,
                "Timestamp lookup returned a start hint."
            );
            if let Some(Offset::Offset(offset)) = hint {
                range.start = offset.clamp(range.start, range.end);
            }
        }
        Ok(ranges)
    }

    /// Starts reading `ranges`. Empty ranges are skipped.
    pub fn scan(&self, ranges: &[PartitionRange]) -> Result<Scan<'_>, ReadError> {
        let mut assignment = TopicPartitionList::new();
        let mut remaining = BTreeMap::new();
        for range in ranges.iter().filter(|range| range.start < range.end) {
            self.check_partition(range.partition)?;
            assignment
                .add_partition_offset(&self.topic, range.partition, Offset::Offset(range.start))
                .map_err(|source| self.kafka_error(source))?;
            remaining.insert(range.partition, (range.start, range.end));
        }
        self.consumer
            .assign(&assignment)
            .map_err(|source| self.kafka_error(source))?;
        Ok(Scan {
            reader: self,
            remaining,
            last_progress: Instant::now(),
        })
    }

    /// Reads the record at `partition`:`offset`.
    pub fn fetch(&self, partition: i32, offset: i64) -> Result<DeadLetter, ReadError> {
        let (low, high) = self.watermarks(partition)?;
        if offset < low || offset >= high {
            return Err(ReadError::OffsetNotFound {
                topic: self.topic.clone(),
                partition,
                offset,
                low,
                high,
            });
        }
        let range = PartitionRange {
            partition,
            start: offset,
            end: offset + 1,
        };
        let mut scan = self.scan(&[range])?;
        match scan.next() {
            Some(record) => record,
            // The offset lies in a gap, such as a transaction marker or a compacted record.
            None => Err(ReadError::OffsetNotFound {
                topic: self.topic.clone(),
                partition,
                offset,
                low,
                high,
            }),
        }
    }
}

/// Records of a planned scan, in the order the broker returns them: offset order within
/// a partition, interleaved across partitions.
pub struct Scan<'a> {
    reader: &'a TopicReader,
    /// Next offset and end offset of each partition not finished yet.
    remaining: BTreeMap<i32, (i64, i64)>,
    last_progress: Instant,
}

impl Scan<'_> {
    /// Removes the partitions whose fetch position passed their planned end. That happens
    /// when the last planned offsets hold no record, such as a transaction marker.
    fn drop_finished_partitions(&mut self) {
        let Ok(positions) = self.reader.consumer.position() else {
            return;
        };
        for element in positions.elements() {
            if let (Offset::Offset(position), Some(&(_, end))) =
                (element.offset(), self.remaining.get(&element.partition()))
            {
                if position >= end {
                    self.remaining.remove(&element.partition());
                }
            }
        }
    }
}

impl Iterator for Scan<'_> {
    type Item = Result<DeadLetter, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        let reader = self.reader;
        loop {
            let (&partition, &(next, _)) = self.remaining.iter().next()?;
            match reader.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    self.last_progress = Instant::now();
                    let Some(&(_, end)) = self.remaining.get(&message.partition()) else {
                        continue;
                    };
                    if message.offset() + 1 >= end {
                        self.remaining.remove(&message.partition());
                    } else {
                        self.remaining
                            .insert(message.partition(), (message.offset() + 1, end));
                    }
                    if message.offset() < end {
                        return Some(Ok(dead_letter(&message)));
                    }
                }
                Some(Err(source)) => {
                    if let KafkaError::MessageConsumption(
                        RDKafkaErrorCode::UnknownTopicOrPartition,
                    ) = source
                    {
                        return Some(Err(ReadError::TopicNotFound {
                            topic: reader.topic.clone(),
                        }));
                    }
                    return Some(Err(reader.kafka_error(source)));
                }
                None => {
                    self.drop_finished_partitions();
                    if self.remaining.is_empty() {
                        return None;
                    }
                    if self.last_progress.elapsed() >= reader.timeout {
                        return Some(Err(ReadError::TimedOut {
                            topic: reader.topic.clone(),
                            partition,
                            offset: next,
                            timeout_ms: reader.timeout.as_millis(),
                        }));
                    }
                }
            }
        }
    }
}

fn dead_letter(message: &BorrowedMessage<'_>) -> DeadLetter {
    let headers: HeaderList = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    DeadLetter {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        info: DeadLetterInfo::from_headers(&headers),
        headers,
    }
}
