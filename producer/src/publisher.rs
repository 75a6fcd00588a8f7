//! The publisher: validate, then produce idempotently with bounded waits.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};
use txnotify_schemas::{headers, DecodeError, Limits, TransactionEvent, ValidationErrors};

use crate::trace::TraceContext;

/// Settings of a [`Publisher`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublisherConfig {
    /// Comma-separated `host:port` list of bootstrap brokers.
    pub bootstrap_servers: String,
    /// Topic to publish to.
    pub topic: String,
    /// Maximum wait for room in the local send queue, in milliseconds.
    pub enqueue_timeout_ms: u64,
    /// Maximum time librdkafka keeps trying to deliver a record, in milliseconds.
    pub delivery_timeout_ms: u64,
    /// Largest accepted event payload, in bytes.
    pub max_payload_bytes: usize,
    /// Extra librdkafka properties, for example `security.protocol`.
    pub properties: BTreeMap<String, String>,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            topic: "transactions.v1".to_owned(),
            enqueue_timeout_ms: 100,
            delivery_timeout_ms: 30_000,
            max_payload_bytes: txnotify_schemas::DEFAULT_MAX_PAYLOAD_BYTES,
            properties: BTreeMap::new(),
        }
    }
}

/// Properties that the publisher's guarantees depend on; configuration may not change them.
const FIXED_PROPERTIES: [&str; 3] = ["enable.idempotence", "acks", "bootstrap.servers"];

impl PublisherConfig {
    /// Checks the settings and returns a message naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(
                "kafka.bootstrap_servers is empty; set it to host:port of at least one broker"
                    .into(),
            );
        }
        if self.topic.trim().is_empty() {
            return Err(
                "notifier.source_topic is empty; set it to the source topic, for example transactions.v1"
                    .into(),
            );
        }
        if self.enqueue_timeout_ms == 0 {
            return Err("producer.enqueue_timeout_ms is 0; set it to the longest a caller may wait, for example 100".into());
        }
        if self.delivery_timeout_ms < 1_000 {
            return Err(format!(
                "producer.delivery_timeout_ms is {}; set it to 1000 or more",
                self.delivery_timeout_ms
            ));
        }
        if self.max_payload_bytes < 1024 {
            return Err(format!(
                "notifier.max_payload_bytes is {}; set it to 1024 or more",
                self.max_payload_bytes
            ));
        }
        if let Some(key) = FIXED_PROPERTIES
            .iter()
            .find(|key| self.properties.contains_key(**key))
        {
            return Err(format!(
                "kafka.properties sets {key}, which the publisher fixes; remove it"
            ));
        }
        Ok(())
    }
}

/// Partition and offset of a published record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
}

/// Failure to publish an event.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The settings are invalid.
    #[error("invalid producer configuration: {0}")]
    Config(String),
    /// The event failed validation; nothing was sent.
    #[error("invalid event, nothing was sent: {0}")]
    Invalid(#[from] ValidationErrors),
    /// The payload failed to decode or is too large; nothing was sent.
    #[error("rejected payload, nothing was sent: {0}")]
    Rejected(#[from] DecodeError),
    /// The local send queue stayed full for the whole enqueue timeout; nothing was sent.
    #[error(
        "send queue full for {timeout_ms} ms, nothing was sent; the broker may be unreachable"
    )]
    QueueFull {
        /// Enqueue timeout that passed.
        timeout_ms: u64,
    },
    /// Kafka did not acknowledge the record within the delivery timeout, or refused it.
    #[error("kafka did not acknowledge the record: {0}")]
    Delivery(KafkaError),
    /// The Kafka client failed.
    #[error("kafka client failed: {0}")]
    Kafka(KafkaError),
}

/// A record that is queued locally and awaits its acknowledgement.
pub struct Pending {
    future: DeliveryFuture,
    /// The `txnotify.publish` span, which ends with the acknowledgement.
    span: tracing::Span,
    /// Trace context written to the record.
    trace: TraceContext,
}

impl Pending {
    /// Returns the trace context written to the record's headers.
    pub fn trace(&self) -> &TraceContext {
        &self.trace
    }

    /// Waits for the broker's acknowledgement, at most the delivery timeout.
    pub async fn acknowledged(self) -> Result<Delivery, PublishError> {
        let result = match self.future.await {
            Ok(Ok(delivery)) => Ok(Delivery {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((error, _))) => Err(PublishError::Delivery(error)),
            Err(_) => Err(PublishError::Delivery(KafkaError::Canceled)),
        };
        match &result {
            Ok(delivery) => {
                self.span
                    .record("messaging.destination.partition.id", delivery.partition);
                self.span.record("messaging.kafka.offset", delivery.offset);
            }
            Err(error) => {
                self.span
                    .record("otel.status_code", "ERROR")
                    .record("error", tracing::field::display(error));
            }
        }
        result
    }
}

/// Publishes validated events to the source topic.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
    limits: Limits,
    enqueue_timeout: Duration,
    _flush: std::sync::Arc<FlushOnDrop>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Creates a publisher. No connection is made until the first record is sent.
    pub fn new(config: &PublisherConfig) -> Result<Self, PublishError> {
        config.validate().map_err(PublishError::Config)?;
        let mut client = rdkafka::ClientConfig::new();
        client
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", config.delivery_timeout_ms.to_string());
        for (key, value) in &config.properties {
            client.set(key, value);
        }
        client.set("enable.idempotence", "true").set("acks", "all");
        let producer: FutureProducer = client.create().map_err(PublishError::Kafka)?;
        let flush = std::sync::Arc::new(FlushOnDrop {
            producer: producer.clone(),
            timeout: Duration::from_millis(config.delivery_timeout_ms),
        });
        Ok(Self {
            _flush: flush,
            producer,
            topic: config.topic.clone(),
            limits: Limits {
                max_payload_bytes: config.max_payload_bytes,
            },
            enqueue_timeout: Duration::from_millis(config.enqueue_timeout_ms),
        })
    }

    /// Returns the topic this publisher writes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Validates and queues `event`, returning as soon as it is in the local send queue.
    ///
    /// The wait for queue space is bounded by the enqueue timeout; call
    /// [`Pending::acknowledged`] for the partition and offset.
    pub fn enqueue(
        &self,
        event: &TransactionEvent,
        trace: Option<&TraceContext>,
    ) -> Result<Pending, PublishError> {
        event.validate()?;
        let payload = event.to_json_bytes();
        if payload.len() > self.limits.max_payload_bytes {
            return Err(DecodeError::TooLarge {
                size: payload.len(),
                max: self.limits.max_payload_bytes,
            }
            .into());
        }
        self.enqueue_bytes(event, &payload, trace)
    }

    /// Decodes and validates `payload`, then queues the bytes unchanged, so fields that
    /// this version does not know survive for newer consumers.
    pub fn enqueue_json(
        &self,
        payload: &[u8],
        trace: Option<&TraceContext>,
    ) -> Result<Pending, PublishError> {
        let event = txnotify_schemas::decode(payload, &self.limits)?;
        self.enqueue_bytes(&event, payload, trace)
    }

    /// Validates, sends and waits for the acknowledgement of `event`.
    pub async fn publish(&self, event: &TransactionEvent) -> Result<Delivery, PublishError> {
        self.enqueue(event, None)?.acknowledged().await
    }

    /// Waits until every queued record is acknowledged or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        self.producer.flush(timeout).map_err(PublishError::Kafka)
    }

    /// Drops every record that is queued or in flight without waiting for it; each one
    /// fails with a purge error. Use it when a caller keeps its own copy of the records
    /// and will send them again, so that dropping the publisher does not wait for them.
    pub fn purge(&self) {
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
    }

    fn enqueue_bytes(
        &self,
        event: &TransactionEvent,
        payload: &[u8],
        trace: Option<&TraceContext>,
    ) -> Result<Pending, PublishError> {
        // The span's parent is the caller's current span, or `trace` when one is given.
        let span = tracing::info_span!(
            "txnotify.publish",
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.destination.name = %self.topic,
            messaging.destination.partition.id = tracing::field::Empty,
            messaging.kafka.offset = tracing::field::Empty,
            event_id = %event.event_id,
            error = tracing::field::Empty,
        );
        if let Some(trace) = trace {
            trace.set_as_parent_of(&span);
        }
        let trace = TraceContext::from_span(&span)
            .or_else(|| trace.cloned())
            .unwrap_or_else(TraceContext::new_root);
        let event_id = event.event_id.to_string();
        let mut record_headers = OwnedHeaders::new()
            .insert(Header {
                key: headers::EVENT_ID,
                value: Some(event_id.as_str()),
            })
            .insert(Header {
                key: headers::SCHEMA,
                value: Some(txnotify_schemas::SCHEMA_NAME),
            })
            .insert(Header {
                key: headers::CONTENT_TYPE,
                value: Some(txnotify_schemas::CONTENT_TYPE),
            })
            .insert(Header {
                key: headers::TRACEPARENT,
                value: Some(trace.traceparent.as_str()),
            });
        if let Some(state) = &trace.tracestate {
            record_headers = record_headers.insert(Header {
                key: headers::TRACESTATE,
                value: Some(state.as_str()),
            });
        }

        let record = FutureRecord::to(&self.topic)
            .key(event.account_id.as_bytes())
            .payload(payload)
            .headers(record_headers);

        // librdkafka reports a full queue at once; retry until the enqueue timeout passes,
        // the same bound FutureProducer::send applies, without holding an async task.
        let deadline = std::time::SystemTime::now() + self.enqueue_timeout;
        let mut record = record;
        loop {
            match self.producer.send_result(record) {
                Ok(future) => {
                    return Ok(Pending {
                        future,
                        span,
                        trace,
                    })
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    if std::time::SystemTime::now() >= deadline {
                        return Err(PublishError::QueueFull {
                            timeout_ms: u64::try_from(self.enqueue_timeout.as_millis())
                                .unwrap_or(u64::MAX),
                        });
                    }
                    record = returned;
                    self.producer
                        .poll(Timeout::After(Duration::from_millis(10)));
                }
                Err((error, _)) => return Err(PublishError::Kafka(error)),
            }
        }
    }
}

/// Flushes the shared producer when the last [`Publisher`] clone is dropped, because
/// librdkafka discards queued records when its handle is destroyed.
struct FlushOnDrop {
    producer: FutureProducer,
    timeout: Duration,
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        if let Err(error) = self.producer.flush(self.timeout) {
            tracing::warn!(error = %error, "Publisher flush at shutdown did not finish; unacknowledged records may be lost.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_properties_are_rejected() {
        let mut config = PublisherConfig::default();
        config.properties.insert("acks".into(), "1".into());
        assert!(config.validate().unwrap_err().contains("acks"));
    }

    #[test]
    fn zero_enqueue_timeout_is_rejected() {
        let config = PublisherConfig {
            enqueue_timeout_ms: 0,
            ..PublisherConfig::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .contains("enqueue_timeout_ms"));
    }
}
