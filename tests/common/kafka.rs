//! Kafka helpers for system tests: create a topic, read a topic back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Creates `topic` with `partitions` partitions and replication factor 1.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client builds");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    let results = runtime
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .unwrap_or_else(|error| panic!("failed to create topic {topic}: {error}"));
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("failed to create topic {name}: {code}"));
    }
}

/// Reads every record of `topic` up to the high watermarks of this moment, in
/// partition and offset order. Panics if that takes longer than `timeout`.
pub fn read_topic(bootstrap: &str, topic: &str, timeout: Duration) -> Vec<TopicRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", super::unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer builds");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|error| panic!("failed to read metadata of {topic}: {error}"));
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut assignment = TopicPartitionList::new();
    let mut high: HashMap<i32, i64> = HashMap::new();
    for partition in 0..partitions {
        let (_, end) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .unwrap_or_else(|error| panic!("failed to read watermarks of {topic}: {error}"));
        high.insert(partition, end);
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();

    let mut next: HashMap<i32, i64> = (0..partitions).map(|partition| (partition, 0)).collect();
    let mut records = Vec::new();
    let deadline = Instant::now() + timeout;
    while next
        .iter()
        .any(|(partition, offset)| *offset < high[partition])
    {
        assert!(
            Instant::now() < deadline,
            "reading {topic} took longer than {timeout:?}: at {next:?} of {high:?}"
        );
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = result.unwrap_or_else(|error| panic!("failed to read {topic}: {error}"));
        next.insert(message.partition(), message.offset() + 1);
        if message.offset() < high[&message.partition()] {
            records.push(TopicRecord {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().unwrap_or_default().to_vec(),
                value: message.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    records.sort_by_key(|record| (record.partition, record.offset));
    records
}
