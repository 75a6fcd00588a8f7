//! System tests of the first complete path: `publish` through a real broker to a real
//! SMTP server, with duplicates, invalid records, SMTP faults and restarts.
//!
//! Each test starts its own Tansu broker and SMTP server process on 127.0.0.1 and runs
//! the real `txnotify` binary with random topic and group names.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::{
    require_system_tests, run_txnotify, unique_name, wait_until, Broker, ReceivedMessage,
    SmtpServer, TxnotifyOutput, TxnotifyProcess,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tempfile::TempDir;

const PARTITIONS: i32 = 3;
const MAX_ATTEMPTS: u32 = 3;

/// A broker, an SMTP server and a configuration file naming fresh topics.
struct Stack {
    broker: Broker,
    smtp: SmtpServer,
    group: String,
    source: String,
    dir: TempDir,
    config: PathBuf,
}

impl Stack {
    fn start(rules: Value) -> Stack {
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

    fn config_arg(&self) -> &str {
        self.config.to_str().unwrap()
    }

    fn notify(&self) -> TxnotifyProcess {
        TxnotifyProcess::spawn(&["--config", self.config_arg(), "notify"], &[])
    }

    fn publish(&self, lines: &[String]) -> TxnotifyOutput {
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

    fn dlq(&self) -> String {
        format!("{}.dlq", self.group)
    }
}

/// Builds a valid event with an ASCII name, so the body stays 7-bit and readable raw.
fn event(index: usize, email: &str, account: &str) -> Value {
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

fn amount_text(event: &Value) -> String {
    let minor = event["amount"]["minor_units"].as_i64().unwrap();
    format!("{}.{:02} EUR", minor / 100, minor % 100)
}

/// A record read back from a topic.
struct Read {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: BTreeMap<String, String>,
}

/// Reads every record of `topic` that exists now, without committing anything.
fn read_topic(bootstrap: &str, topic: &str) -> Vec<Read> {
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
fn committed(bootstrap: &str, group: &str, topic: &str) -> Vec<i64> {
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

fn end_offsets(bootstrap: &str, topic: &str) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    (0..PARTITIONS)
        .map(|partition| {
            consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

fn produce_raw(bootstrap: &str, topic: &str, records: &[(&str, Vec<u8>)]) {
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

fn accepted_for<'a>(smtp: &'a [ReceivedMessage], email: &str) -> Vec<&'a ReceivedMessage> {
    smtp.iter()
        .filter(|message| {
            message.status == "accepted" && message.rcpt_tos.iter().any(|to| to == email)
        })
        .collect()
}

#[test]
fn duplicates_are_sent_once_and_restart_sends_nothing() {
    require_system_tests!();
    let stack = Stack::start(json!([]));

    let unique: Vec<Value> = (0..950)
        .map(|index| {
            event(
                index,
                &format!("customer{index}@example.com"),
                &format!("acct-{}", index % 37),
            )
        })
        .collect();
    let mut lines: Vec<String> = unique.iter().map(Value::to_string).collect();
    for index in (0..950).step_by(19) {
        lines.push(unique[index].to_string());
    }
    assert_eq!(lines.len(), 1000);

    let published = stack.publish(&lines);
    assert!(
        published.status.success(),
        "publish failed:\n{}\n{}",
        published.stdout,
        published.stderr
    );
    assert!(
        published
            .stdout
            .contains("published: 1000, rejected: 0, failed: 0"),
        "{}",
        published.stdout
    );

    let mut notifier = stack.notify();
    let received = stack.smtp.wait_for_messages(950, Duration::from_secs(180));
    // Give a wrongly resent duplicate time to arrive before counting.
    assert!(notifier.wait_for_output("Duplicate skipped", Duration::from_secs(60)));
    std::thread::sleep(Duration::from_secs(3));
    let received = {
        let again = stack.smtp.messages();
        assert!(again.len() >= received.len());
        again
    };
    assert_eq!(received.len(), 950, "emails received");

    let mut by_id: BTreeMap<String, &ReceivedMessage> = BTreeMap::new();
    for message in &received {
        let id = message
            .message_id
            .clone()
            .expect("every email has a Message-ID");
        assert!(
            by_id.insert(id.clone(), message).is_none(),
            "Message-ID {id} received twice"
        );
    }
    for event in &unique {
        let event_id = event["event_id"].as_str().unwrap();
        let (_, message) = by_id
            .iter()
            .find(|(id, _)| id.starts_with(&format!("<{event_id}@")))
            .unwrap_or_else(|| panic!("no email for event {event_id}"));
        let email = event["recipient"]["email"].as_str().unwrap();
        assert_eq!(message.rcpt_tos, [email.to_owned()]);
        let expected_subject = format!(
            "Payment of {} to {} completed",
            amount_text(event),
            event["merchant"].as_str().unwrap()
        );
        assert_eq!(message.subject.as_deref(), Some(expected_subject.as_str()));
        assert!(
            message.raw.contains(&amount_text(event)),
            "body of {event_id} lacks the amount"
        );
    }

    let status = notifier.stop();
    assert!(
        status.success(),
        "notify exited with {status}:\n{}",
        notifier.stderr()
    );
    let bootstrap = stack.broker.bootstrap();
    assert_eq!(
        committed(&bootstrap, &stack.group, &stack.source),
        end_offsets(&bootstrap, &stack.source)
    );

    let mut restarted = stack.notify();
    assert!(
        restarted.wait_for_output("Partitions assigned", Duration::from_secs(60)),
        "{}",
        restarted.stderr()
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        stack.smtp.messages().len(),
        950,
        "a restart sent emails again"
    );
    assert!(restarted.stop().success());
}

#[test]
fn invalid_records_are_dead_lettered_and_partition_moves_on() {
    require_system_tests!();
    let stack = Stack::start(json!([]));
    let bootstrap = stack.broker.bootstrap();

    let mut float_amount = event(1, "float@example.com", "acct-bad");
    float_amount["amount"]["minor_units"] = json!(12.5);
    let mut oversized = event(2, "big@example.com", "acct-bad");
    oversized["description"] = json!("x".repeat(70 * 1024));
    let after: Vec<Value> = (3..6)
        .map(|index| event(index, &format!("after{index}@example.com"), "acct-bad"))
        .collect();
    let mut records = vec![
        ("acct-bad", float_amount.to_string().into_bytes()),
        ("acct-bad", oversized.to_string().into_bytes()),
        ("acct-bad", b"this is not json".to_vec()),
    ];
    records.extend(
        after
            .iter()
            .map(|event| ("acct-bad", event.to_string().into_bytes())),
    );
    produce_raw(&bootstrap, &stack.source, &records);

    let mut notifier = stack.notify();
    let received = stack
        .smtp
        .wait_for_messages(after.len(), Duration::from_secs(120));
    assert_eq!(received.len(), after.len());
    for event in &after {
        let email = event["recipient"]["email"].as_str().unwrap();
        assert_eq!(accepted_for(&received, email).len(), 1, "{email}");
    }

    assert!(wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || { end_offsets(&bootstrap, &stack.dlq()).iter().sum::<i64>() >= 3 }
    ));
    let dead = read_topic(&bootstrap, &stack.dlq());
    assert_eq!(dead.len(), 3);
    let mut messages = Vec::new();
    for (record, original) in dead.iter().zip(&records) {
        assert_eq!(
            record
                .headers
                .get("txnotify-error-class")
                .map(String::as_str),
            Some("invalid")
        );
        assert_eq!(
            record.key.as_deref(),
            Some(original.0.as_bytes()),
            "key kept"
        );
        assert_eq!(
            record.value.as_deref(),
            Some(original.1.as_slice()),
            "value bytes kept"
        );
        assert_eq!(
            record.headers.get("txnotify-origin-topic"),
            Some(&stack.source)
        );
        assert_eq!(record.headers.get("txnotify-group"), Some(&stack.group));
        messages.push(record.headers["txnotify-error-message"].clone());
    }
    assert!(
        messages[0].contains("amount.minor_units"),
        "{}",
        messages[0]
    );
    assert!(messages[1].contains("bytes"), "{}", messages[1]);
    assert!(messages[2].contains("JSON"), "{}", messages[2]);
    assert!(notifier.stop().success());
}

#[test]
fn smtp_faults_are_retried_or_dead_lettered() {
    require_system_tests!();
    let stack = Stack::start(json!([
        {"recipient": "flaky@example.com", "action": "451", "times": 2},
        {"recipient": "always-busy@example.com", "action": "451"},
        {"recipient": "unknown-user@example.com", "action": "550"},
    ]));
    let bootstrap = stack.broker.bootstrap();
    let flaky = event(1, "flaky@example.com", "acct-1");
    let busy = event(2, "always-busy@example.com", "acct-2");
    let rejected = event(3, "unknown-user@example.com", "acct-3");
    let published = stack.publish(&[flaky.to_string(), busy.to_string(), rejected.to_string()]);
    assert!(published.status.success(), "{}", published.stderr);

    let mut notifier = stack.notify();
    let received = stack.smtp.wait_for_messages(1, Duration::from_secs(60));
    assert_eq!(accepted_for(&received, "flaky@example.com").len(), 1);

    assert!(wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || { end_offsets(&bootstrap, &stack.dlq()).iter().sum::<i64>() >= 2 }
    ));
    let dead = read_topic(&bootstrap, &stack.dlq());
    let class_of = |event: &Value| -> (String, String) {
        let id = event["event_id"].as_str().unwrap();
        let record = dead
            .iter()
            .find(|record| record.headers.get("event-id").map(String::as_str) == Some(id))
            .unwrap_or_else(|| panic!("event {id} is not in the dead-letter topic"));
        (
            record.headers["txnotify-error-class"].clone(),
            record.headers["txnotify-attempt"].clone(),
        )
    };
    assert_eq!(
        class_of(&busy),
        ("exhausted".to_owned(), MAX_ATTEMPTS.to_string())
    );
    assert_eq!(
        class_of(&rejected),
        ("permanent".to_owned(), "1".to_owned())
    );
    assert_eq!(dead.len(), 2);

    let flaky_id = flaky["event_id"].as_str().unwrap();
    let retries: usize = (1..=2)
        .map(|tier| {
            read_topic(&bootstrap, &format!("{}.retry.{tier}", stack.group))
                .iter()
                .filter(|record| {
                    record.headers.get("event-id").map(String::as_str) == Some(flaky_id)
                })
                .count()
        })
        .sum();
    assert_eq!(retries, 2, "the flaky recipient needs exactly two retries");

    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        accepted_for(&stack.smtp.messages(), "flaky@example.com").len(),
        1
    );
    assert!(notifier.stop().success());
}

#[test]
fn stall_after_data_times_out_and_worker_continues() {
    require_system_tests!();
    let stack = Stack::start(json!([
        {"recipient": "stall@example.com", "action": "stall-after-data"},
    ]));
    let bootstrap = stack.broker.bootstrap();
    let stalled = event(0, "stall@example.com", "acct-0");
    let mut lines = vec![stalled.to_string()];
    let others: Vec<Value> = (1..6)
        .map(|index| event(index, &format!("ok{index}@example.com"), "acct-0"))
        .collect();
    lines.extend(others.iter().map(Value::to_string));
    assert!(stack.publish(&lines).status.success());

    let mut notifier = stack.notify();
    let received = stack
        .smtp
        .wait_for_messages(others.len(), Duration::from_secs(60));
    for event in &others {
        let email = event["recipient"]["email"].as_str().unwrap();
        assert_eq!(accepted_for(&received, email).len(), 1, "{email}");
    }
    let stalled_records: Vec<_> = stack
        .smtp
        .records()
        .into_iter()
        .filter(|record| record.status == "stalled")
        .collect();
    assert_eq!(stalled_records.len(), 1, "the stalled message is sent once");

    assert!(wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || { end_offsets(&bootstrap, &stack.dlq()).iter().sum::<i64>() >= 1 }
    ));
    let dead = read_topic(&bootstrap, &stack.dlq());
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].headers["txnotify-error-class"], "unknown-outcome");
    assert_eq!(
        dead[0].headers["event-id"],
        stalled["event_id"].as_str().unwrap()
    );
    assert!(notifier.stop().success());
}

#[test]
fn publish_reports_rejected_lines_and_exits_nonzero() {
    require_system_tests!();
    let stack = Stack::start(json!([]));
    let good = event(1, "good@example.com", "acct-1");
    let mut bad_currency = event(2, "x@example.com", "acct-1");
    bad_currency["amount"]["currency"] = json!("XYZ");
    let lines = [
        good.to_string(),
        "{broken".to_owned(),
        bad_currency.to_string(),
    ];
    let output = stack.publish(&lines);
    assert!(!output.status.success());
    assert!(
        output
            .stdout
            .contains("published: 1, rejected: 2, failed: 0"),
        "{}",
        output.stdout
    );
    assert!(
        output.stderr.contains("line 2: rejected"),
        "{}",
        output.stderr
    );
    assert!(
        output.stderr.contains("line 3: rejected"),
        "{}",
        output.stderr
    );
    assert!(output.stderr.contains("XYZ"), "{}", output.stderr);
    assert_eq!(
        end_offsets(&stack.broker.bootstrap(), &stack.source)
            .iter()
            .sum::<i64>(),
        1
    );
}

#[test]
fn topics_ensure_twice_reports_no_drift() {
    require_system_tests!();
    let stack = Stack::start(json!([]));
    let output = run_txnotify(
        &[
            "--config",
            stack.config_arg(),
            "topics",
            "ensure",
            "--fail-on-drift",
        ],
        &[],
        Duration::from_secs(60),
    );
    assert!(
        output.status.success(),
        "{}\n{}",
        output.stdout,
        output.stderr
    );
    assert!(!output.stdout.contains("drift:"), "{}", output.stdout);
    // Source, two retry tiers, dead-letter topic and ledger changelog.
    assert_eq!(
        output.stdout.matches("exists: ").count(),
        5,
        "{}",
        output.stdout
    );
    assert!(output
        .stdout
        .contains(&format!("exists: {}.ledger", stack.group)));
    assert!(
        output
            .stdout
            .contains("topics: all 5 topics match the plan"),
        "{}",
        output.stdout
    );
}
