//! System tests of the notifier's telemetry on the real broker and SMTP server.
//!
//! - `/metrics` counts match what the SMTP server and the dead-letter topic saw, and
//!   `/healthz` and `/readyz` return 200.
//! - One trace id follows an event from `publish` through a retry to the SMTP send. The
//!   spans go to an OTLP/HTTP receiver that the test runs on 127.0.0.1.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    free_port, require_system_tests, run_txnotify, unique_name, wait_until, Broker, SmtpServer,
    TxnotifyOutput, TxnotifyProcess,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tempfile::TempDir;

const PARTITIONS: i32 = 2;

/// A broker, an SMTP server, fresh topics and a notifier configuration with a telemetry
/// endpoint on a free port.
struct Stack {
    broker: Broker,
    smtp: SmtpServer,
    group: String,
    source: String,
    dir: TempDir,
    config: PathBuf,
    telemetry: String,
}

impl Stack {
    fn start(rules: Value) -> Stack {
        let broker = Broker::start();
        let smtp = SmtpServer::start(rules);
        let group = unique_name("telemetry");
        let source = unique_name("transactions");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("txnotify.toml");
        let telemetry = format!("127.0.0.1:{}", free_port());
        let text = format!(
            r#"
[kafka]
bootstrap_servers = "{bootstrap}"
# Lag and connection state refresh every second instead of every five.
properties = {{ "statistics.interval.ms" = "1000" }}

[topics]
partitions = {PARTITIONS}
dlq_partitions = {PARTITIONS}
replication_factor = 1

[notifier]
group_id = "{group}"
source_topic = "{source}"
max_in_flight = 4
session_timeout_ms = 10000
drain_timeout_ms = 5000

[notifier.retry]
tiers_ms = [300, 600]
max_attempts = 3
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

[telemetry]
listen_address = "{telemetry}"
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
            telemetry,
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

    fn notify(&self, envs: &[(&str, &str)]) -> TxnotifyProcess {
        // The harness sets a free port for every process; this stack's port wins.
        let mut envs = envs.to_vec();
        envs.push(("TXNOTIFY_TELEMETRY__LISTEN_ADDRESS", &self.telemetry));
        TxnotifyProcess::spawn(&["--config", self.config_arg(), "notify"], &envs)
    }

    fn publish(&self, lines: &[String], envs: &[(&str, &str)]) -> TxnotifyOutput {
        let input = self
            .dir
            .path()
            .join(format!("{}.jsonl", unique_name("events")));
        std::fs::write(&input, lines.join("\n") + "\n").unwrap();
        let output = run_txnotify(
            &[
                "--config",
                self.config_arg(),
                "publish",
                "--input",
                input.to_str().unwrap(),
            ],
            envs,
            Duration::from_secs(120),
        );
        assert!(
            output.status.success(),
            "publish failed:\n{}\n{}",
            output.stdout,
            output.stderr
        );
        output
    }

    fn dlq(&self) -> String {
        format!("{}.dlq", self.group)
    }

    fn retry_topic(&self, tier: usize) -> String {
        format!("{}.retry.{tier}", self.group)
    }

    /// Sends `GET path` to the telemetry endpoint and returns the status and body.
    fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.telemetry, path)
    }
}

fn event(index: usize, email: &str, account: &str) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "schema_version": 1,
        "transaction_id": format!("tx-{index}"),
        "account_id": account,
        "status": "completed",
        "amount": {"minor_units": 100 + index as i64, "currency": "EUR"},
        "occurred_at": "2026-11-30T12:00:00Z",
        "recipient": {"email": email, "display_name": format!("Customer {index}"), "locale": "en"},
        "merchant": "Shop",
    })
}

fn http_get(address: &str, path: &str) -> (u16, String) {
    let mut stream = match TcpStream::connect(address) {
        Ok(stream) => stream,
        Err(_) => return (0, String::new()),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Returns the value of one sample in Prometheus text, or 0 when it is absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// Returns the sum of every sample of `name` whose labels contain `label`.
fn sum_samples(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next())
        .filter_map(|value| value.parse::<f64>().ok())
        .sum()
}

/// Headers of a record read back from a topic.
type RecordHeaders = BTreeMap<String, String>;

/// Reads every record of `topic` that exists now, without committing anything.
fn read_topic(bootstrap: &str, topic: &str) -> Vec<RecordHeaders> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    let mut expected = 0;
    for partition in 0..PARTITIONS {
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
            records.push(headers);
        }
        records.len() as i64 >= expected
    });
    assert_eq!(records.len() as i64, expected, "records read from {topic}");
    records
}

fn record_count(bootstrap: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    (0..PARTITIONS)
        .map(|partition| {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .unwrap();
            high - low
        })
        .sum()
}

fn produce_raw(bootstrap: &str, topic: &str, key: &str, value: &[u8]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    producer
        .send(BaseRecord::to(topic).key(key).payload(value))
        .map_err(|(error, _)| error)
        .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
}

#[test]
fn metrics_match_smtp_and_dead_letters() {
    require_system_tests!();
    let stack = Stack::start(json!([
        {"recipient": "flaky@example.com", "action": "451", "times": 2},
        {"recipient": "unknown-user@example.com", "action": "550"},
    ]));
    let bootstrap = stack.broker.bootstrap();

    // 5 plain events, one of them published twice; one that needs two retries; one
    // rejected for good; and one record that is not JSON.
    let plain: Vec<Value> = (0..5)
        .map(|index| event(index, &format!("customer{index}@example.com"), "acct-1"))
        .collect();
    let flaky = event(10, "flaky@example.com", "acct-2");
    let rejected = event(11, "unknown-user@example.com", "acct-3");
    let mut lines: Vec<String> = plain.iter().map(Value::to_string).collect();
    lines.push(plain[0].to_string());
    lines.push(flaky.to_string());
    lines.push(rejected.to_string());
    stack.publish(&lines, &[]);
    produce_raw(&bootstrap, &stack.source, "acct-4", b"not json");

    let mut notifier = stack.notify(&[]);
    stack.smtp.wait_for_messages(6, Duration::from_secs(90));
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            record_count(&bootstrap, &stack.dlq()) >= 2
        }),
        "two dead letters expected"
    );

    // The counters settle once the last record has its outcome; lag reaches 0 once the
    // offsets are committed and librdkafka's next statistics report arrives.
    let mut metrics = String::new();
    let settled = wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
        metrics = stack.get("/metrics").1;
        let lag_series = metrics
            .lines()
            .filter(|line| line.starts_with("txnotify_consumer_lag_records{"))
            .count();
        sample(&metrics, "txnotify_notifications_sent_total") >= 6.0
            && sample(&metrics, "txnotify_duplicates_skipped_total") >= 1.0
            && sample(&metrics, "txnotify_in_flight_records") == 0.0
            && lag_series > 0
            && sum_samples(&metrics, "txnotify_consumer_lag_records", &stack.source) == 0.0
    });
    assert!(settled, "metrics did not settle:\n{metrics}");

    let accepted = stack.smtp.messages().len() as f64;
    let dead = read_topic(&bootstrap, &stack.dlq());
    let dead_of = |class: &str| {
        dead.iter()
            .filter(|headers| {
                headers.get("txnotify-error-class").map(String::as_str) == Some(class)
            })
            .count() as f64
    };
    let retry_records: Vec<f64> = (1..=2)
        .map(|tier| record_count(&bootstrap, &stack.retry_topic(tier)) as f64)
        .collect();

    assert_eq!(accepted, 6.0, "accepted by the SMTP server");
    assert_eq!(
        sample(&metrics, "txnotify_notifications_sent_total"),
        accepted
    );
    assert_eq!(
        sample(
            &metrics,
            "txnotify_smtp_send_duration_seconds_count{result=\"accepted\"}"
        ),
        accepted
    );
    assert_eq!(
        sample(&metrics, "txnotify_end_to_end_latency_seconds_count"),
        accepted
    );
    assert_eq!(sample(&metrics, "txnotify_duplicates_skipped_total"), 1.0);
    assert_eq!(retry_records, [1.0, 1.0], "records in retry tiers 1 and 2");
    assert_eq!(
        sample(&metrics, "txnotify_retries_scheduled_total{tier=\"1\"}"),
        retry_records[0]
    );
    assert_eq!(
        sample(&metrics, "txnotify_retries_scheduled_total{tier=\"2\"}"),
        retry_records[1]
    );
    assert_eq!(dead.len(), 2, "records in the dead-letter topic");
    assert_eq!(
        sample(&metrics, "txnotify_dead_letters_total{class=\"permanent\"}"),
        dead_of("permanent")
    );
    assert_eq!(
        sample(&metrics, "txnotify_dead_letters_total{class=\"invalid\"}"),
        dead_of("invalid")
    );
    assert_eq!(dead_of("permanent"), 1.0);
    assert_eq!(dead_of("invalid"), 1.0);
    let source_records = record_count(&bootstrap, &stack.source) as f64;
    assert_eq!(source_records, 9.0);
    assert_eq!(
        sum_samples(&metrics, "txnotify_records_consumed_total", "topic="),
        source_records + retry_records.iter().sum::<f64>()
    );
    assert_eq!(sample(&metrics, "txnotify_ready"), 1.0);
    assert_eq!(sample(&metrics, "txnotify_consumer_stalled"), 0.0);

    let (status, body) = stack.get("/readyz");
    assert_eq!(status, 200, "{body}");
    let (status, _) = stack.get("/healthz");
    assert_eq!(status, 200);

    let probe = run_txnotify(
        &["probe", "--address", &stack.telemetry, "--path", "/readyz"],
        &[],
        Duration::from_secs(10),
    );
    assert!(probe.status.success(), "{}{}", probe.stdout, probe.stderr);

    assert!(notifier.stop().success());
    let stopped = run_txnotify(
        &["probe", "--address", &stack.telemetry],
        &[],
        Duration::from_secs(10),
    );
    assert!(!stopped.status.success(), "probe of a stopped notifier");
}

/// One span received by the OTLP receiver.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// An OTLP/HTTP receiver for the JSON encoding on 127.0.0.1 that keeps every span.
struct OtlpReceiver {
    address: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl OtlpReceiver {
    fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let received = spans.clone();
        // The thread ends with the test process; it only serves this test's exporters.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let received = received.clone();
                std::thread::spawn(move || serve_otlp(stream, &received));
            }
        });
        OtlpReceiver { address, spans }
    }

    fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

/// Responds to OTLP export requests on one keep-alive connection until the client closes
/// it.
fn serve_otlp(stream: TcpStream, spans: &Mutex<Vec<ReceivedSpan>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut content_length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body).unwrap();
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut found = Vec::new();
        for resource in request["resourceSpans"].as_array().into_iter().flatten() {
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    let text = |key: &str| span[key].as_str().unwrap_or_default().to_owned();
                    found.push(ReceivedSpan {
                        name: text("name"),
                        trace_id: text("traceId"),
                        span_id: text("spanId"),
                        parent_span_id: text("parentSpanId"),
                    });
                }
            }
        }
        spans.lock().unwrap().extend(found);
        let response =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn one_trace_from_publish_through_retry_to_send() {
    require_system_tests!();
    let receiver = OtlpReceiver::start();
    let endpoint = format!("http://{}", receiver.address);
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let stack = Stack::start(json!([
        {"recipient": "flaky@example.com", "action": "451", "times": 1},
    ]));
    let bootstrap = stack.broker.bootstrap();
    let flaky = event(1, "flaky@example.com", "acct-1");
    let event_id = flaky["event_id"].as_str().unwrap().to_owned();
    stack.publish(&[flaky.to_string()], &otel);

    let source = read_topic(&bootstrap, &stack.source);
    assert_eq!(source.len(), 1);
    let traceparent = source[0]["traceparent"].clone();
    let trace_id = traceparent.split('-').nth(1).unwrap().to_owned();
    assert_eq!(trace_id.len(), 32, "{traceparent}");

    let mut notifier = stack.notify(&otel);
    stack.smtp.wait_for_messages(1, Duration::from_secs(60));
    assert!(notifier.stop().success());

    let spans_of = |spans: &[ReceivedSpan], name: &str| -> Vec<ReceivedSpan> {
        spans
            .iter()
            .filter(|span| span.name == name && span.trace_id == trace_id)
            .cloned()
            .collect()
    };
    let mut spans = Vec::new();
    let complete = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        spans = receiver.spans();
        spans_of(&spans, "smtp.send").len() >= 2
    });
    assert!(complete, "spans received: {spans:#?}");

    let publish = spans_of(&spans, "txnotify.publish");
    assert_eq!(
        publish.len(),
        1,
        "publish spans in trace {trace_id}; all spans: {spans:#?}"
    );
    assert_eq!(
        traceparent.split('-').nth(2).unwrap(),
        publish[0].span_id,
        "the source record's parent is the publish span"
    );

    let process = spans_of(&spans, "txnotify.process");
    assert_eq!(
        process.len(),
        2,
        "first attempt and one retry: {process:#?}"
    );
    let sends = spans_of(&spans, "smtp.send");
    assert_eq!(sends.len(), 2, "one failed and one accepted send");
    for send in &sends {
        assert!(
            process
                .iter()
                .any(|span| span.span_id == send.parent_span_id),
            "send span {send:?} is a child of a process span"
        );
    }
    for name in ["ledger.reserve", "email.render"] {
        assert_eq!(spans_of(&spans, name).len(), 2, "{name} spans");
    }

    // The retry record's traceparent points at the first attempt's span, and the second
    // attempt's span is its child.
    let retry = read_topic(&bootstrap, &stack.retry_topic(1));
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0]["event-id"], event_id);
    let retry_parent: Vec<&str> = retry[0]["traceparent"].split('-').collect();
    assert_eq!(retry_parent[1], trace_id, "retry record keeps the trace id");
    let first = process
        .iter()
        .find(|span| span.parent_span_id == publish[0].span_id)
        .expect("a process span whose parent is the publish span");
    assert_eq!(retry_parent[2], first.span_id);
    assert!(
        process
            .iter()
            .any(|span| span.parent_span_id == first.span_id),
        "the retry's process span is a child of the first attempt: {process:#?}"
    );

    let by_trace: HashMap<&str, usize> = spans.iter().fold(HashMap::new(), |mut counts, span| {
        *counts.entry(span.trace_id.as_str()).or_default() += 1;
        counts
    });
    assert_eq!(
        by_trace.len(),
        1,
        "every exported span belongs to the one event's trace: {by_trace:?}"
    );
}
