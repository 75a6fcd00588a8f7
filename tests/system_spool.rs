//! System tests of the durable spool against a real broker: a 30-second broker outage
//! during 10,000 publishes, and `kill -9` of a producing service mid-run.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::{
    create_topic, payment_service_bin, post_json, read_topic, require_system_tests, unique_name,
    wait_until, Broker, TxnotifyProcess,
};
use serde_json::{json, Value};
use txnotify_producer::spool::{Spool, SpoolConfig};
use txnotify_producer::PublisherConfig;
use txnotify_schemas::{Money, Recipient, TransactionEvent, TransactionStatus};
use uuid::Uuid;

const PARTITIONS: i32 = 3;
const EVENTS: usize = 10_000;
const ACCOUNTS: usize = 50;
/// Bound on every `publish` call; the spool must stay under it while the broker is down.
const ENQUEUE_TIMEOUT_MS: u64 = 500;
/// Interval between publishes, so the 10,000 calls take about 50 s and span the outage.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(5);
const OUTAGE: Duration = Duration::from_secs(30);

fn event(index: usize) -> TransactionEvent {
    TransactionEvent {
        event_id: Uuid::new_v4(),
        schema_version: txnotify_schemas::SCHEMA_VERSION,
        transaction_id: format!("tx-{index}"),
        account_id: format!("acct-{}", index % ACCOUNTS),
        status: TransactionStatus::Completed,
        amount: Money::new(100 + index as i64, "EUR"),
        occurred_at: time::OffsetDateTime::now_utc(),
        recipient: Recipient::new(format!("customer{index}@example.com")),
        merchant: None,
        description: None,
        metadata: Default::default(),
    }
}

/// Returns the event ids of `records` grouped by record key, in topic order.
fn ids_by_key(records: &[common::TopicRecord]) -> BTreeMap<String, Vec<Uuid>> {
    let mut by_key: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for record in records {
        let event: TransactionEvent = serde_json::from_slice(&record.value).unwrap();
        by_key
            .entry(String::from_utf8(record.key.clone()).unwrap())
            .or_default()
            .push(event.event_id);
    }
    by_key
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

#[test]
fn spool_bridges_broker_outage() {
    require_system_tests!();
    let data = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_sqlite(data.path());
    let topic = unique_name("transactions");
    create_topic(&broker.bootstrap(), &topic, PARTITIONS);
    let spool_dir = tempfile::tempdir().unwrap();
    let spool_config = SpoolConfig {
        path: spool_dir.path().join("spool"),
        delivery_timeout_ms: 300_000,
        drain_timeout_ms: 30_000,
        ..SpoolConfig::default()
    };
    let publisher_config = PublisherConfig {
        bootstrap_servers: broker.bootstrap(),
        topic: topic.clone(),
        enqueue_timeout_ms: ENQUEUE_TIMEOUT_MS,
        ..PublisherConfig::default()
    };

    // Publish on a runtime of its own while this thread stops and restarts the broker.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let spool = runtime.block_on(async { Spool::open(&spool_config, &publisher_config).unwrap() });
    let publishing = {
        let spool = spool.clone();
        runtime.spawn(async move {
            let start = tokio::time::Instant::now();
            let mut results = Vec::with_capacity(EVENTS);
            for index in 0..EVENTS {
                tokio::time::sleep_until(start + PUBLISH_INTERVAL * index as u32).await;
                let event = event(index);
                let called = Instant::now();
                let outcome = spool.publish(&event, None).await;
                results.push((
                    event.account_id.clone(),
                    event.event_id,
                    called.elapsed(),
                    outcome.map(|_| ()).map_err(|e| e.to_string()),
                ));
            }
            results
        })
    };

    std::thread::sleep(Duration::from_secs(5));
    // NOTE: the outage is a SIGKILL. Tansu 0.6.0 stopped with SIGTERM while producers
    // are sending comes back failing every produce request (an internal `SendError`),
    // also for a new producer, which no client can bridge.
    broker.kill();
    let stopped_at = Instant::now();
    let backlog_at_stop = spool.stats().backlog_entries;
    std::thread::sleep(OUTAGE.saturating_sub(stopped_at.elapsed()));
    let backlog_before_restart = spool.stats().backlog_entries;
    broker.restart();

    let results = runtime.block_on(publishing).unwrap();
    let drained = wait_until(Duration::from_secs(180), Duration::from_millis(200), || {
        spool.stats().backlog_entries == 0
    });
    let stats = spool.stats();
    runtime.block_on(spool.shutdown()).unwrap();

    let failures: Vec<_> = results.iter().filter(|result| result.3.is_err()).collect();
    assert!(
        failures.is_empty(),
        "{} publishes failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    let mut latencies: Vec<Duration> = results.iter().map(|result| result.2).collect();
    latencies.sort();
    let p99 = percentile(&latencies, 0.99);
    let max = *latencies.last().unwrap();
    eprintln!(
        "spool publish latency over {EVENTS} calls with a {OUTAGE:?} broker outage: p50 {:?}, p99 {p99:?}, max {max:?}; \
         backlog {backlog_at_stop} at stop, {backlog_before_restart} before restart; {} commits for {} publishes",
        percentile(&latencies, 0.5),
        stats.commits,
        stats.committed,
    );
    assert!(
        max < Duration::from_millis(ENQUEUE_TIMEOUT_MS),
        "slowest publish took {max:?}, over the enqueue timeout"
    );
    assert!(backlog_before_restart > backlog_at_stop, "the outage did not build a backlog: {backlog_at_stop} at stop, {backlog_before_restart} before restart");
    assert!(
        drained,
        "spool still holds {} entries after the broker returned",
        stats.backlog_entries
    );

    let records = read_topic(&broker.bootstrap(), &topic, Duration::from_secs(60));
    let mut counts: HashMap<Uuid, usize> = HashMap::new();
    for ids in ids_by_key(&records).values() {
        for id in ids {
            *counts.entry(*id).or_default() += 1;
        }
    }
    let duplicates = counts.values().filter(|count| **count > 1).count();
    assert_eq!(records.len(), EVENTS, "records in Kafka");
    assert_eq!(duplicates, 0, "event ids written more than once");
    let mut expected: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for (account, event_id, _, _) in &results {
        expected.entry(account.clone()).or_default().push(*event_id);
    }
    assert_eq!(ids_by_key(&records), expected, "per-key order differs");
}

/// Starts the example service in spool mode and returns it with its address.
fn start_service(broker: &Broker, topic: &str, spool_dir: &str) -> (TxnotifyProcess, String) {
    let service = TxnotifyProcess::spawn_program(
        &payment_service_bin(),
        &[
            "--mode",
            "spool",
            "--listen",
            "127.0.0.1:0",
            "--bootstrap-servers",
            &broker.bootstrap(),
            "--topic",
            topic,
            "--spool-dir",
            spool_dir,
            "--enqueue-timeout-ms",
            "1000",
        ],
        &[],
    );
    assert!(
        service.wait_for_output("listening on ", Duration::from_secs(30)),
        "payment service did not start:\n{}",
        service.stderr()
    );
    let address = service
        .stdout()
        .lines()
        .find_map(|line| line.strip_prefix("listening on "))
        .unwrap()
        .trim()
        .to_string();
    (service, address)
}

fn transaction_body(index: usize) -> String {
    json!({
        "account_id": format!("acct-{}", index % 20),
        "amount_minor_units": 1000 + index,
        "currency": "EUR",
        "recipient_email": format!("customer{index}@example.com"),
        "recipient_name": "Customer",
        "locale": "en",
    })
    .to_string()
}

/// Posts transactions `range` and returns the event ids of the completed ones.
fn post_transactions(address: &str, range: std::ops::Range<usize>) -> Vec<Uuid> {
    range
        .map(|index| {
            let response = post_json(
                address,
                "/transactions",
                &transaction_body(index),
                Duration::from_secs(10),
            );
            assert_eq!(
                response.status, 201,
                "transaction {index}: {}",
                response.body
            );
            let body: Value = serde_json::from_str(&response.body).unwrap();
            body["event_id"].as_str().unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn spool_survives_kill_9() {
    require_system_tests!();
    let data = tempfile::tempdir().unwrap();
    let mut broker = Broker::start_sqlite(data.path());
    let topic = unique_name("transactions");
    create_topic(&broker.bootstrap(), &topic, PARTITIONS);
    let spool_dir = tempfile::tempdir().unwrap();
    let spool_path = spool_dir.path().join("spool");
    let spool_path = spool_path.to_str().unwrap();

    // 1. Forwarded normally, 2. spooled while the broker is frozen, then kill -9.
    let (mut service, address) = start_service(&broker, &topic, spool_path);
    let mut completed = post_transactions(&address, 0..500);
    broker.pause();
    completed.extend(post_transactions(&address, 500..1000));
    service.kill();
    broker.resume();

    // 3. The restarted service forwards what the killed one left, and takes new work.
    let (mut service, address) = start_service(&broker, &topic, spool_path);
    completed.extend(post_transactions(&address, 1000..1500));
    let delivered = wait_until(Duration::from_secs(120), Duration::from_millis(500), || {
        let records = read_topic(&broker.bootstrap(), &topic, Duration::from_secs(30));
        records.len() >= completed.len()
    });
    service.stop();

    let records = read_topic(&broker.bootstrap(), &topic, Duration::from_secs(60));
    let mut in_kafka: HashMap<Uuid, usize> = HashMap::new();
    for ids in ids_by_key(&records).values() {
        for id in ids {
            *in_kafka.entry(*id).or_default() += 1;
        }
    }
    let missing: Vec<_> = completed
        .iter()
        .filter(|id| !in_kafka.contains_key(id))
        .collect();
    let duplicates = in_kafka.values().filter(|count| **count > 1).count();
    eprintln!(
        "kill -9: {} completed transactions, {} records in Kafka, {duplicates} event ids sent twice",
        completed.len(),
        records.len()
    );
    assert!(
        delivered,
        "Kafka holds {} of {} events",
        records.len(),
        completed.len()
    );
    assert!(
        missing.is_empty(),
        "{} completed events are missing, first {:?}",
        missing.len(),
        missing.first()
    );
    assert_eq!(
        in_kafka.len(),
        completed.len(),
        "distinct event ids in Kafka"
    );
}
