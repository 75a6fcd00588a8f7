//! System tests of `txnotify dlq`: listing, showing, dry runs and replays against a real
//! Tansu broker, a real SMTP server and the real `txnotify notify` worker.
//!
//! Each test starts its own broker and SMTP server on 127.0.0.1 and uses random topic
//! and group names.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{
    free_port, require_system_tests, run_txnotify, unique_name, wait_until, Broker, SmtpServer,
    TxnotifyOutput, TxnotifyProcess,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tempfile::TempDir;

const PARTITIONS: i32 = 3;

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
    /// Starts the stack with SMTP fault `rules` and `extra` TOML appended to the
    /// configuration, then runs `topics ensure`.
    fn start(rules: Value, extra: &str) -> Stack {
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
tiers_ms = [500]
max_attempts = 2
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
        let output = stack.run(&["topics", "ensure"]);
        assert!(output.status.success(), "topics ensure failed:\n{output:?}");
        stack
    }

    fn config_arg(&self) -> &str {
        self.config.to_str().unwrap()
    }

    fn bootstrap(&self) -> String {
        self.broker.bootstrap()
    }

    /// Runs `txnotify --config <file> <args>` to completion.
    fn run(&self, args: &[&str]) -> TxnotifyOutput {
        let mut full = vec!["--config", self.config_arg()];
        full.extend_from_slice(args);
        run_txnotify(&full, &[], Duration::from_secs(120))
    }

    /// Starts `txnotify --config <file> <args>` in the background.
    fn spawn(&self, args: &[&str]) -> TxnotifyProcess {
        let mut full = vec!["--config", self.config_arg()];
        full.extend_from_slice(args);
        TxnotifyProcess::spawn(&full, &[])
    }

    fn publish(&self, events: &[Value]) {
        let input = self
            .dir
            .path()
            .join(format!("{}.jsonl", unique_name("events")));
        let lines: Vec<String> = events.iter().map(Value::to_string).collect();
        std::fs::write(&input, lines.join("\n") + "\n").unwrap();
        let output = self.run(&["publish", "--input", input.to_str().unwrap()]);
        assert!(output.status.success(), "publish failed:\n{output:?}");
    }

    fn dlq(&self) -> String {
        format!("{}.dlq", self.group)
    }

    fn checkpoint(&self) -> String {
        self.dir
            .path()
            .join(format!("{}.json", unique_name("checkpoint")))
            .to_str()
            .unwrap()
            .to_owned()
    }
}

fn event(index: usize, email: &str) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "schema_version": 1,
        "transaction_id": format!("tx-{index}"),
        "account_id": format!("acct-{}", index % 13),
        "status": "completed",
        "amount": {"minor_units": 100 + index as i64, "currency": "EUR"},
        "occurred_at": "2026-11-30T12:00:00Z",
        "recipient": {"email": email, "display_name": format!("Customer {index}"), "locale": "en"},
        "merchant": "Shop",
    })
}

/// A record read back from a topic.
#[derive(Debug)]
struct Read {
    partition: i32,
    offset: i64,
    timestamp_ms: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: BTreeMap<String, String>,
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

fn partition_count(bootstrap: &str, topic: &str) -> i32 {
    let metadata = consumer(bootstrap)
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    metadata.topics()[0].partitions().len() as i32
}

/// Returns the high watermark of each partition of `topic`.
fn end_offsets(bootstrap: &str, topic: &str) -> Vec<i64> {
    let consumer = consumer(bootstrap);
    (0..partition_count(bootstrap, topic))
        .map(|partition| {
            consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

fn total(bootstrap: &str, topic: &str) -> i64 {
    end_offsets(bootstrap, topic).iter().sum()
}

/// Reads every record of `topic` that exists now, without a group and without commits.
fn read_topic(bootstrap: &str, topic: &str) -> Vec<Read> {
    let consumer = consumer(bootstrap);
    let mut assignment = TopicPartitionList::new();
    let mut expected = 0;
    for partition in 0..partition_count(bootstrap, topic) {
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
                partition: message.partition(),
                offset: message.offset(),
                timestamp_ms: message.timestamp().to_millis().unwrap_or(-1),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
        records.len() as i64 >= expected
    });
    assert_eq!(records.len() as i64, expected, "records read from {topic}");
    records
}

/// Returns the committed offsets of `group` on each partition of `topic`.
fn committed(bootstrap: &str, group: &str, topic: &str) -> Vec<Offset> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for partition in 0..partition_count(bootstrap, topic) {
        list.add_partition(topic, partition);
    }
    consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|element| element.offset())
        .collect()
}

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = runtime
        .block_on(admin.create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        ))
        .unwrap();
    for result in results {
        result.unwrap();
    }
}

/// Produces records with the given key, value and headers, all to `partition`.
fn produce(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    records: &[(String, Vec<u8>, OwnedHeaders)],
) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for (key, value, headers) in records {
        producer
            .send(
                BaseRecord::to(topic)
                    .partition(partition)
                    .key(key.as_str())
                    .payload(value)
                    .headers(headers.clone()),
            )
            .map_err(|(error, _)| error)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

fn headers(entries: &[(&str, &[u8])]) -> OwnedHeaders {
    entries
        .iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(*value),
            })
        })
}

/// Writes `count` txnotify dead letters of class `exhausted` from `origin` to `dlq`,
/// spread over its partitions.
fn write_dead_letters(bootstrap: &str, dlq: &str, origin: &str, count: usize) {
    for partition in 0..PARTITIONS {
        let records: Vec<_> = (0..count)
            .filter(|index| *index as i32 % PARTITIONS == partition)
            .map(|index| {
                let event = event(index, &format!("customer{index}@example.com"));
                let id = event["event_id"].as_str().unwrap().to_owned();
                let offset = index.to_string();
                let header_list = headers(&[
                    ("event-id", id.as_bytes()),
                    ("txnotify-attempt", b"2"),
                    ("txnotify-deadline-ms", b"1"),
                    ("txnotify-error-class", b"exhausted"),
                    ("txnotify-error-message", b"smtp reply 451"),
                    ("txnotify-origin-topic", origin.as_bytes()),
                    ("txnotify-origin-partition", b"0"),
                    ("txnotify-origin-offset", offset.as_bytes()),
                ]);
                (
                    event["account_id"].as_str().unwrap().to_owned(),
                    event.to_string().into_bytes(),
                    header_list,
                )
            })
            .collect();
        produce(bootstrap, dlq, partition, &records);
    }
}

fn assert_success(output: &TxnotifyOutput) {
    assert!(
        output.status.success(),
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        output.stdout,
        output.stderr
    );
}

#[test]
fn replay_delivers_once_and_again_sends_nothing() {
    require_system_tests!();
    let mut stack = Stack::start(json!([{"recipient": "*@outage.test", "action": "550"}]), "");
    let bootstrap = stack.bootstrap();
    let events: Vec<Value> = (0..100)
        .map(|index| event(index, &format!("customer{index}@outage.test")))
        .collect();
    stack.publish(&events);

    let mut notifier = stack.spawn(&["notify"]);
    assert!(
        wait_until(Duration::from_secs(120), Duration::from_millis(200), || {
            total(&bootstrap, &stack.dlq()) >= 100
        }),
        "the SMTP fault dead-letters every event"
    );
    assert!(notifier.stop().success(), "{}", notifier.stderr());
    assert_eq!(total(&bootstrap, &stack.dlq()), 100);
    assert!(stack.smtp.messages().is_empty());

    // Reading and a dry run change no topic and no group offset. Tansu 0.6.0 does not
    // support ListGroups, so the test cannot also check that no group was created.
    let topics = [
        stack.source.clone(),
        stack.dlq(),
        format!("{}.retry.1", stack.group),
        format!("{}.ledger", stack.group),
    ];
    let snapshot = |stack: &Stack| {
        let ends: Vec<Vec<i64>> = topics.iter().map(|t| end_offsets(&bootstrap, t)).collect();
        let offsets: Vec<Vec<Offset>> = topics
            .iter()
            .map(|t| committed(&bootstrap, &stack.group, t))
            .collect();
        (ends, offsets)
    };
    let before = snapshot(&stack);
    let list = stack.run(&["dlq", "list", "--json", "--limit", "0"]);
    assert_success(&list);
    assert_eq!(list.stdout.lines().count(), 100);
    let stats = stack.run(&["dlq", "stats", "--json"]);
    assert_success(&stats);
    let stats: Value = serde_json::from_str(stats.stdout.trim()).unwrap();
    assert_eq!(stats["total"], 100);
    assert_eq!(stats["by_class"]["permanent"], 100);
    assert_eq!(stats["by_origin_topic"][&stack.source], 100);
    let dry = stack.run(&["dlq", "replay", "--dry-run"]);
    assert_success(&dry);
    assert!(
        dry.stdout.contains("would replay 100 to origin"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("dry run: nothing was written"),
        "{}",
        dry.stdout
    );
    let after = snapshot(&stack);
    assert_eq!(
        after.0, before.0,
        "end offsets after list, stats and dry run"
    );
    assert_eq!(
        after.1, before.1,
        "group offsets after list, stats and dry run"
    );
    assert!(
        before.1[0]
            .iter()
            .all(|offset| matches!(offset, Offset::Offset(_))),
        "the notifier group has committed offsets to compare: {:?}",
        before.1[0]
    );

    // With the fault removed, one replay delivers each event exactly once.
    stack.smtp.set_rules(json!([]));
    let mut notifier = stack.spawn(&["notify"]);
    let checkpoint = stack.checkpoint();
    let replay = stack.run(&["dlq", "replay", "--yes", "--checkpoint", &checkpoint]);
    assert_success(&replay);
    assert!(
        replay.stdout.contains(": 100 replayed"),
        "{}",
        replay.stdout
    );
    assert!(replay.stdout.contains("audit: {"), "{}", replay.stdout);
    let received = stack.smtp.wait_for_messages(100, Duration::from_secs(120));
    assert_eq!(received.len(), 100);
    let mut message_ids = BTreeSet::new();
    for message in &received {
        assert!(message_ids.insert(message.message_id.clone().unwrap()));
    }
    for event in &events {
        let id = event["event_id"].as_str().unwrap();
        let count = message_ids
            .iter()
            .filter(|message_id| message_id.starts_with(&format!("<{id}@")))
            .count();
        assert_eq!(count, 1, "emails for event {id}");
    }

    // Replaying the same set again sends nothing new: the ledger skips sent events.
    let again = stack.run(&["dlq", "replay", "--yes"]);
    assert_success(&again);
    assert!(again.stdout.contains(": 100 replayed"), "{}", again.stdout);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            notifier.stderr().matches("Duplicate skipped").count() >= 100
        }),
        "{}",
        notifier.stderr()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        stack.smtp.messages().len(),
        100,
        "a second replay sent email"
    );
    assert_eq!(
        total(&bootstrap, &stack.dlq()),
        100,
        "the replays failed again"
    );

    let audit = read_topic(&bootstrap, &format!("{}.dlq.audit", stack.group));
    assert_eq!(audit.len(), 2, "one audit record per replay");
    let first: Value = serde_json::from_slice(audit[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(first["counts"]["replayed"], 100);
    assert_eq!(first["status"], "completed");
    assert_eq!(first["target"], "origin");
    assert!(first["user"].is_string());
    assert!(notifier.stop().success());
}

#[test]
fn killed_replay_resumes_with_the_remainder() {
    require_system_tests!();
    let stack = Stack::start(json!([]), "");
    let bootstrap = stack.bootstrap();
    write_dead_letters(&bootstrap, &stack.dlq(), &stack.source, 100);
    let checkpoint = stack.checkpoint();
    let args = [
        "dlq",
        "replay",
        "--yes",
        "--rate",
        "20",
        "--checkpoint",
        &checkpoint,
    ];

    let mut first = stack.spawn(&args);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(20), || {
            total(&bootstrap, &stack.source) >= 40
        }),
        "{}",
        first.stderr()
    );
    first.kill();
    let copied_first = total(&bootstrap, &stack.source);
    println!("{copied_first} copies before the kill");
    assert!(
        copied_first < 100,
        "the replay finished before it was killed"
    );

    let second = stack.run(&args);
    assert_success(&second);
    assert!(
        second.stdout.contains("resuming replay"),
        "{}",
        second.stdout
    );

    let copies = read_topic(&bootstrap, &stack.source);
    assert_eq!(
        copies.len(),
        100,
        "copies after resuming ({copied_first} before the kill)"
    );
    let sources: BTreeSet<&String> = copies
        .iter()
        .map(|copy| &copy.headers["txnotify-replay-source"])
        .collect();
    assert_eq!(sources.len(), 100, "each dead letter is copied once");
    let replay_ids: BTreeSet<&String> = copies
        .iter()
        .map(|copy| &copy.headers["txnotify-replay-id"])
        .collect();
    assert_eq!(replay_ids.len(), 1, "both runs are one replay");
    for copy in &copies {
        assert_eq!(copy.headers["txnotify-replay-count"], "1");
        assert!(!copy.headers.contains_key("txnotify-attempt"));
        // The copy keeps the event's retry deadline, if it had one.
        if let Some(deadline) = copy.headers.get("txnotify-deadline-ms") {
            assert!(deadline.parse::<i64>().is_ok(), "deadline {deadline:?}");
        }
        assert_eq!(copy.headers["txnotify-origin-topic"], stack.source);
    }

    // The checkpoint now records a completed replay, so a third run copies nothing.
    let third = stack.run(&args);
    assert_success(&third);
    assert!(
        third.stdout.contains("already completed"),
        "{}",
        third.stdout
    );
    assert_eq!(total(&bootstrap, &stack.source), 100);
}

#[test]
fn sigterm_stops_replay_resumably() {
    require_system_tests!();
    let stack = Stack::start(json!([]), "");
    let bootstrap = stack.bootstrap();
    write_dead_letters(&bootstrap, &stack.dlq(), &stack.source, 30);
    let checkpoint = stack.checkpoint();
    let args = ["dlq", "replay", "--rate", "10", "--checkpoint", &checkpoint];

    let mut first = stack.spawn(&args);
    assert!(wait_until(
        Duration::from_secs(60),
        Duration::from_millis(20),
        || total(&bootstrap, &stack.source) >= 5
    ));
    let status = first.stop();
    assert_eq!(status.code(), Some(130), "{}", first.stderr());
    assert!(
        first.stdout().contains("\"status\":\"interrupted\""),
        "{}",
        first.stdout()
    );
    let copied_first = total(&bootstrap, &stack.source);
    assert!(copied_first < 30);

    let second = stack.run(&args);
    assert_success(&second);
    assert!(
        second.stdout.contains("resuming replay"),
        "{}",
        second.stdout
    );
    assert_eq!(total(&bootstrap, &stack.source), 30);

    let audit = read_topic(&bootstrap, &format!("{}.dlq.audit", stack.group));
    let statuses: Vec<String> = audit
        .iter()
        .map(|record| {
            let value: Value = serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
            value["status"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(statuses, ["interrupted", "completed"]);
    let last: Value = serde_json::from_slice(audit[1].value.as_deref().unwrap()).unwrap();
    assert_eq!(last["counts"]["replayed"], 30);
    assert_eq!(last["resumed"], true);
}

#[test]
fn replay_keeps_key_and_value_bytes() {
    require_system_tests!();
    let stack = Stack::start(json!([]), "");
    let bootstrap = stack.bootstrap();
    write_dead_letters(&bootstrap, &stack.dlq(), &stack.source, 6);
    let target = unique_name("target");
    create_topic(&bootstrap, &target, 1);
    let replay = stack.run(&["dlq", "replay", "--to-topic", &target]);
    assert_success(&replay);

    let dead: BTreeMap<String, Read> = read_topic(&bootstrap, &stack.dlq())
        .into_iter()
        .map(|record| {
            (
                format!("{}:{}:{}", stack.dlq(), record.partition, record.offset),
                record,
            )
        })
        .collect();
    let copies = read_topic(&bootstrap, &target);
    assert_eq!(copies.len(), 6);
    for copy in &copies {
        let original = &dead[&copy.headers["txnotify-replay-source"]];
        assert_eq!(copy.key, original.key, "key bytes");
        assert_eq!(copy.value, original.value, "value bytes");
        assert_eq!(copy.headers["event-id"], original.headers["event-id"]);
        let mut names: Vec<&String> = copy.headers.keys().collect();
        names.dedup();
        assert_eq!(names.len(), copy.headers.len());
    }
}

#[test]
fn rate_limit_holds_over_ten_seconds() {
    require_system_tests!();
    let stack = Stack::start(json!([]), "");
    let bootstrap = stack.bootstrap();
    write_dead_letters(&bootstrap, &stack.dlq(), &stack.source, 120);
    let target = unique_name("paced");
    create_topic(&bootstrap, &target, 1);

    let started = Instant::now();
    let replay = stack.run(&[
        "dlq",
        "replay",
        "--yes",
        "--rate",
        "10",
        "--to-topic",
        &target,
    ]);
    let elapsed = started.elapsed();
    assert_success(&replay);
    let copies = read_topic(&bootstrap, &target);
    assert_eq!(copies.len(), 120);

    let first = copies.iter().map(|copy| copy.timestamp_ms).min().unwrap();
    let last = copies.iter().map(|copy| copy.timestamp_ms).max().unwrap();
    let span_s = (last - first) as f64 / 1000.0;
    let rate = 119.0 / span_s;
    println!("measured {rate:.3} records/s over {span_s:.2} s");
    assert!(span_s >= 10.0, "the run spans only {span_s} s");
    assert!(
        (rate - 10.0).abs() <= 1.0,
        "measured {rate:.2} records/s over {span_s:.1} s, expected 10 within 10 %"
    );
    assert!(
        elapsed >= Duration::from_secs(11),
        "the command took {elapsed:?}"
    );
}

#[test]
fn failing_record_stops_at_the_replay_cap() {
    require_system_tests!();
    let stack = Stack::start(
        json!([{"recipient": "stuck@example.com", "action": "550"}]),
        "[dlq]\nmax_replay_count = 2\n",
    );
    let bootstrap = stack.bootstrap();
    let stuck = event(1, "stuck@example.com");
    stack.publish(std::slice::from_ref(&stuck));
    let mut notifier = stack.spawn(&["notify"]);
    let wait_dead = |count: i64| {
        assert!(
            wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
                total(&bootstrap, &stack.dlq()) >= count
            }),
            "waiting for dead letter {count}"
        );
    };
    wait_dead(1);

    let first = stack.run(&["dlq", "replay"]);
    assert_success(&first);
    assert!(first.stdout.contains(": 1 replayed"), "{}", first.stdout);
    wait_dead(2);

    let second = stack.run(&["dlq", "replay"]);
    assert_success(&second);
    assert!(second.stdout.contains(": 1 replayed"), "{}", second.stdout);
    assert!(second.stdout.contains("1 superseded"), "{}", second.stdout);
    wait_dead(3);

    let source_before = total(&bootstrap, &stack.source);
    let third = stack.run(&["dlq", "replay"]);
    assert_success(&third);
    assert!(third.stdout.contains(": 0 replayed"), "{}", third.stdout);
    assert!(
        third.stdout.contains("1 rejected at the replay cap"),
        "{}",
        third.stdout
    );
    assert!(
        third.stderr.contains("reaches the cap of 2"),
        "{}",
        third.stderr
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(total(&bootstrap, &stack.source), source_before);
    assert_eq!(total(&bootstrap, &stack.dlq()), 3);

    let mut counts: Vec<String> = read_topic(&bootstrap, &stack.dlq())
        .iter()
        .map(|record| {
            record
                .headers
                .get("txnotify-replay-count")
                .cloned()
                .unwrap_or_else(|| "0".into())
        })
        .collect();
    counts.sort();
    assert_eq!(counts, ["0", "1", "2"]);
    assert!(stack.smtp.messages().is_empty());
    assert!(notifier.stop().success());
}

#[test]
fn foreign_dead_letters_are_listed_and_shown() {
    require_system_tests!();
    let stack = Stack::start(json!([]), "");
    let bootstrap = stack.bootstrap();
    let legacy = unique_name("legacy-dlt");
    create_topic(&bootstrap, &legacy, 1);
    let event = event(7, "jane.doe@example.com");
    let spring = headers(&[
        ("kafka_dlt-original-topic", b"orders"),
        ("kafka_dlt-original-partition", &7i32.to_be_bytes()),
        ("kafka_dlt-original-offset", &123_456i64.to_be_bytes()),
        (
            "kafka_dlt-original-timestamp",
            &1_700_000_000_000i64.to_be_bytes(),
        ),
        (
            "kafka_dlt-exception-fqcn",
            b"java.lang.IllegalStateException",
        ),
        (
            "kafka_dlt-exception-message",
            b"Listener failed: no handler",
        ),
    ]);
    let connect = headers(&[
        ("__connect.errors.topic", b"payments"),
        ("__connect.errors.partition", b"2"),
        ("__connect.errors.offset", b"99"),
        ("__connect.errors.stage", b"VALUE_CONVERTER"),
        (
            "__connect.errors.exception.class.name",
            b"org.apache.kafka.connect.errors.DataException",
        ),
        (
            "__connect.errors.exception.message",
            b"Converting byte[] to Kafka Connect data failed",
        ),
    ]);
    produce(
        &bootstrap,
        &legacy,
        0,
        &[
            ("acct-7".into(), event.to_string().into_bytes(), spring),
            ("acct-8".into(), b"not json".to_vec(), connect),
        ],
    );

    let list = stack.run(&["dlq", "--topic", &legacy, "list", "--json"]);
    assert_success(&list);
    let lines: Vec<Value> = list
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["convention"], "spring-kafka");
    assert_eq!(lines[0]["origin"]["topic"], "orders");
    assert_eq!(lines[0]["origin"]["partition"], 7);
    assert_eq!(lines[0]["origin"]["offset"], 123_456);
    assert_eq!(lines[0]["origin"]["timestamp_ms"], 1_700_000_000_000i64);
    assert_eq!(lines[0]["exception"], "java.lang.IllegalStateException");
    assert_eq!(lines[0]["message"], "Listener failed: no handler");
    assert_eq!(lines[0]["event_id"], event["event_id"]);
    assert_eq!(lines[1]["convention"], "kafka-connect");
    assert_eq!(lines[1]["origin"]["topic"], "payments");
    assert_eq!(lines[1]["origin"]["partition"], 2);
    assert_eq!(lines[1]["origin"]["offset"], 99);
    assert_eq!(lines[1]["class"], "invalid");

    let table = stack.run(&["dlq", "--topic", &legacy, "list"]);
    assert_success(&table);
    assert!(table.stdout.contains("orders/7@123456"), "{}", table.stdout);
    assert!(table.stdout.contains("payments/2@99"), "{}", table.stdout);

    let filtered = stack.run(&[
        "dlq",
        "--topic",
        &legacy,
        "list",
        "--json",
        "--origin-topic",
        "payments",
    ]);
    assert_success(&filtered);
    assert_eq!(filtered.stdout.lines().count(), 1);

    let shown = stack.run(&["dlq", "--topic", &legacy, "show", "0:0"]);
    assert_success(&shown);
    assert!(
        shown.stdout.contains("7 (big-endian binary)"),
        "{}",
        shown.stdout
    );
    assert!(
        !shown.stdout.contains("jane.doe@example.com"),
        "{}",
        shown.stdout
    );
    assert!(shown.stdout.contains("j***@e***.com"), "{}", shown.stdout);
    let revealed = stack.run(&["dlq", "--topic", &legacy, "show", "0:0", "--reveal"]);
    assert_success(&revealed);
    assert!(
        revealed.stdout.contains("jane.doe@example.com"),
        "{}",
        revealed.stdout
    );
    let by_id = stack.run(&[
        "dlq",
        "--topic",
        &legacy,
        "show",
        "--event-id",
        event["event_id"].as_str().unwrap(),
    ]);
    assert_success(&by_id);
    assert!(by_id.stdout.contains("position    0:0"), "{}", by_id.stdout);

    // The Connect record is invalid, so replay rejects it unless asked.
    let dry = stack.run(&[
        "dlq",
        "--topic",
        &legacy,
        "replay",
        "--dry-run",
        "--origin-topic",
        "payments",
    ]);
    assert_success(&dry);
    assert!(dry.stdout.contains("would replay 0"), "{}", dry.stdout);
    assert!(dry.stdout.contains("--include-invalid"), "{}", dry.stdout);
}

#[test]
fn bad_input_gives_clear_errors() {
    require_system_tests!();
    let stack = Stack::start(json!([]), "");
    write_dead_letters(&stack.bootstrap(), &stack.dlq(), &stack.source, 3);
    let cases: [(&[&str], &str); 5] = [
        (
            &["dlq", "--topic", "no-such-topic", "list"],
            "topic no-such-topic not found",
        ),
        (&["dlq", "show", "9:0"], "partition 9 not found"),
        (&["dlq", "show", "0:500"], "offset 500 not found"),
        (
            &["dlq", "list", "--since", "last tuesday"],
            "invalid time \"last tuesday\"",
        ),
        (&["dlq", "list", "--class", "flaky"], "flaky"),
    ];
    for (args, expected) in cases {
        let output = stack.run(args);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(
            output.stderr.contains(expected),
            "{args:?}: {}",
            output.stderr
        );
    }

    let port = free_port();
    let unreachable = run_txnotify(
        &[
            "--bootstrap-servers",
            &format!("127.0.0.1:{port}"),
            "--config",
            stack.config_arg(),
            "dlq",
            "list",
        ],
        &[("TXNOTIFY_DLQ__READ_TIMEOUT_MS", "2000")],
        Duration::from_secs(60),
    );
    assert!(!unreachable.status.success());
    assert!(
        unreachable.stderr.contains("failed to reach the broker"),
        "{}",
        unreachable.stderr
    );
}

#[test]
fn time_filters_use_record_timestamps() {
    require_system_tests!();
    let stack = Stack::start(json!([]), "");
    let bootstrap = stack.bootstrap();
    let topic = unique_name("aged-dlt");
    create_topic(&bootstrap, &topic, 1);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let minute = 60_000;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    // Written out of time order, so offset order and time order differ.
    for (key, age_minutes) in [("old", 180), ("recent", 10), ("middle", 120)] {
        let record_headers = headers(&[
            ("txnotify-origin-topic", b"transactions.v1"),
            ("txnotify-error-class", b"exhausted"),
        ]);
        producer
            .send(
                BaseRecord::to(&topic)
                    .partition(0)
                    .key(key)
                    .payload("{}")
                    .timestamp(now_ms - age_minutes * minute)
                    .headers(record_headers),
            )
            .map_err(|(error, _)| error)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let keys = |args: &[&str]| -> Vec<String> {
        let mut full = vec!["dlq", "--topic", topic.as_str(), "list", "--json"];
        full.extend_from_slice(args);
        let output = stack.run(&full);
        assert_success(&output);
        output
            .stdout
            .lines()
            .map(|line| {
                let value: Value = serde_json::from_str(line).unwrap();
                value["key"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    assert_eq!(keys(&["--since", "1h"]), ["recent"]);
    assert_eq!(keys(&["--since", "150m", "--until", "1h"]), ["middle"]);
    assert_eq!(keys(&["--until", "150m"]), ["old"]);
    assert_eq!(keys(&[]), ["old", "recent", "middle"]);
}
