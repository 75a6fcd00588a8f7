//! A broker, an SMTP server and a configuration file naming fresh topics, plus helpers
//! that build events and read topics back without committing anything.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tempfile::TempDir;

use super::{
    run_txnotify, unique_name, wait_until, Broker, ReceivedMessage, SmtpServer, TxnotifyOutput,
    TxnotifyProcess,
};

/// Partitions of the source topic, the retry tiers and the changelog.
pub const PARTITIONS: i32 = 3;
/// Attempts before a record is exhausted.
pub const MAX_ATTEMPTS: u32 = 3;

/// A broker, an SMTP server and a configuration file naming fresh topics.
pub struct Stack {
    pub broker: Broker,
    pub smtp: SmtpServer,
    pub group: String,
    pub source: String,
    pub dir: TempDir,
    pub config: PathBuf,
}

impl Stack {
    pub fn start(rules: Value) -> Stack {
        Stack::start_with(rules, "")
    }

    /// Starts a stack whose configuration gets `extra` appended, for example more
    /// `[notifier]` keys in their own tables.
    pub fn start_with(rules: Value, extra: &str) -> Stack {
        let broker = Broker::start();
        let smtp = SmtpServer::start(rules);
        let group = unique_name("notify");
        let source = unique_name("transactions");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("txnotify.toml");
        let text = format!(
            r#"
[kafka]
bootstrap_servers = "{bootstrap}"

[topics]
partitions = {PARTITIONS}
dlq_partitions = {PARTITIONS}
replication_factor = 1

[notifier]
group_id = "{group}"
source_topic = "{source}"
max_in_flight = 8
session_timeout_ms = 10000
drain_timeout_ms = 5000

[notifier.retry]
tiers_ms = [500, 1000]
max_attempts = {MAX_ATTEMPTS}
deadline_ms = 60000

[notifier.ledger]
path = "{ledger}"

[smtp]
host = "127.0.0.1"
port = {port}
tls = "none"
from = "Payments <payments@txnotify.test>"
connect_timeout_ms = 2000
command_timeout_ms = 2000
data_timeout_ms = 2000
{extra}
"#,
            bootstrap = broker.bootstrap(),
            ledger = dir.path().join("ledger").display(),
            port = smtp.port(),
        );
        std::fs::write(&config, text).unwrap();
        let stack = Stack {
            broker,
            smtp,
            group,
            source,
            dir,
            config,
        };
        let output = run_txnotify(
            &["--config", stack.config_arg(), "topics", "ensure"],
            &[],
            Duration::from_secs(60),
        );
        assert!(
            output.status.success(),
            "topics ensure failed:\n{}\n{}",
            output.stdout,
            output.stderr
        );
        stack
    }

    pub fn config_arg(&self) -> &str {
        self.config.to_str().unwrap()
    }

    pub fn notify(&self) -> TxnotifyProcess {
        self.notify_with(&[])
    }

    /// Starts `txnotify notify` with extra `TXNOTIFY_*` variables, which override the file.
    pub fn notify_with(&self, envs: &[(&str, &str)]) -> TxnotifyProcess {
        TxnotifyProcess::spawn(&["--config", self.config_arg(), "notify"], envs)
    }

    pub fn publish(&self, lines: &[String]) -> TxnotifyOutput {
        let input = self
            .dir
            .path()
            .join(format!("{}.jsonl", unique_name("events")));
        std::fs::write(&input, lines.join("\n") + "\n").unwrap();
        run_txnotify(
            &[
                "--config",
                self.config_arg(),
                "publish",
                "--input",
                input.to_str().unwrap(),
            ],
            &[],
            Duration::from_secs(120),
        )
    }

    pub fn dlq(&self) -> String {
        format!("{}.dlq", self.group)
    }
}

/// Builds a valid event with an ASCII name, so the body stays 7-bit and readable raw.
pub fn event(index: usize, email: &str, account: &str) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "schema_version": 1,
        "transaction_id": format!("tx-{index}"),
        "account_id": account,
        "status": "completed",
        "amount": {"minor_units": 100 + index as i64 * 7, "currency": "EUR"},
        "occurred_at": "2026-11-30T12:00:00Z",
        "recipient": {"email": email, "display_name": format!("Customer {index}"), "locale": "en"},
        "merchant": format!("Shop {}", index % 5),
    })
}

pub fn amount_text(event: &Value) -> String {
    let minor = event["amount"]["minor_units"].as_i64().unwrap();
    format!("{}.{:02} EUR", minor / 100, minor % 100)
}

/// A record read back from a topic.
pub struct Read {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

/// Reads every record of `topic` that exists now, without committing anything.
pub fn read_all(bootstrap: &str, topic: &str) -> Vec<Read> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut assignment = TopicPartitionList::new();
    let mut expected = 0;
    for partition in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .unwrap();
        expected += high - low;
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    wait_until(Duration::from_secs(30), Duration::from_millis(1), || {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let headers = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|header| {
                            (
                                header.key.to_owned(),
                                String::from_utf8_lossy(header.value.unwrap_or_default())
                                    .into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push(Read {
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
        records.len() as i64 >= expected
    });
    assert_eq!(
        records.len() as i64,
        expected,
        "records read back from {topic}"
    );
    records
}

/// Returns the committed offset of each partition of `topic` for `group`.
pub fn committed(bootstrap: &str, group: &str, topic: &str) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        list.add_partition(topic, partition);
    }
    let offsets = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    offsets
        .elements()
        .iter()
        .map(|element| match element.offset() {
            Offset::Offset(offset) => offset,
            _ => -1,
        })
        .collect()
}

pub fn end_offsets(bootstrap: &str, topic: &str) -> Vec<i64> {
    try_end_offsets(bootstrap, topic)
        .unwrap_or_else(|error| panic!("failed to read end offsets of {topic}: {error}"))
}

/// Returns the end offset of each partition of `topic`, or the error while the broker
/// is unreachable, for example during a restart.
pub fn try_end_offsets(
    bootstrap: &str,
    topic: &str,
) -> Result<Vec<i64>, rdkafka::error::KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    (0..PARTITIONS)
        .map(|partition| {
            consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .map(|(_, high)| high)
        })
        .collect()
}

pub fn produce_raw(bootstrap: &str, topic: &str, records: &[(&str, Vec<u8>)]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.max.bytes", "1000000")
        .create()
        .unwrap();
    for (key, value) in records {
        producer
            .send(BaseRecord::to(topic).key(*key).payload(value))
            .map_err(|(error, _)| error)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

pub fn accepted_for<'a>(smtp: &'a [ReceivedMessage], email: &str) -> Vec<&'a ReceivedMessage> {
    smtp.iter()
        .filter(|message| {
            message.status == "accepted" && message.rcpt_tos.iter().any(|to| to == email)
        })
        .collect()
}
