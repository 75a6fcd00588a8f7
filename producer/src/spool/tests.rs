//! Spool tests against librdkafka's mock cluster.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::ClientConfig;
use txnotify_schemas::{Money, Recipient, TransactionStatus};

use super::entry::Entry;

use super::*;

const TOPIC: &str = "transactions.v1";

/// Builds a valid event; `metadata_entries` entries of 500 bytes each make it larger.
fn event(account: &str, metadata_entries: usize) -> TransactionEvent {
    TransactionEvent {
        event_id: Uuid::new_v4(),
        schema_version: txnotify_schemas::SCHEMA_VERSION,
        transaction_id: format!("tx-{}", Uuid::new_v4()),
        account_id: account.to_owned(),
        status: TransactionStatus::Completed,
        amount: Money::new(1234, "EUR"),
        occurred_at: time::OffsetDateTime::UNIX_EPOCH,
        recipient: Recipient::new("customer@example.com"),
        merchant: None,
        description: None,
        metadata: (0..metadata_entries)
            .map(|index| (format!("key-{index:02}"), "v".repeat(500)))
            .collect(),
    }
}

fn configs(dir: &std::path::Path, bootstrap: &str) -> (SpoolConfig, PublisherConfig) {
    let spool = SpoolConfig {
        path: dir.join("spool"),
        max_bytes: 1024 * 1024,
        delivery_timeout_ms: 60_000,
        drain_timeout_ms: 5_000,
        retry_backoff_ms: 100,
        forward_window: 100,
    };
    let publisher = PublisherConfig {
        bootstrap_servers: bootstrap.to_owned(),
        topic: TOPIC.to_owned(),
        enqueue_timeout_ms: 2_000,
        ..PublisherConfig::default()
    };
    (spool, publisher)
}

fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 3, 1).unwrap();
    cluster
}

/// Reads `count` records from the topic, as (key, event id) pairs in partition order.
fn read_records(bootstrap: &str, count: usize) -> Vec<(String, Uuid)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "spool-tests")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while records.len() < count && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
            let event: TransactionEvent =
                serde_json::from_slice(message.payload().unwrap()).unwrap();
            records.push((key, event.event_id));
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_commits() {
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let (spool_config, publisher_config) = configs(dir.path(), &cluster.bootstrap_servers());
    let spool = Spool::open(&spool_config, &publisher_config).unwrap();

    let calls = (0..200).map(|index| {
        let spool = spool.clone();
        tokio::spawn(async move {
            spool
                .publish(&event(&format!("acct-{}", index % 7), 0), None)
                .await
        })
    });
    for call in futures::future::join_all(calls).await {
        call.unwrap().unwrap();
    }

    let stats = spool.stats();
    assert_eq!(stats.committed, 200);
    assert!(stats.commits < 200, "{stats:?}");
    spool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_keeps_order_per_key() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (spool_config, publisher_config) = configs(dir.path(), &bootstrap);
    let spool = Spool::open(&spool_config, &publisher_config).unwrap();

    let mut expected: std::collections::BTreeMap<String, Vec<Uuid>> = Default::default();
    for index in 0..300 {
        let event = event(&format!("acct-{}", index % 5), 0);
        expected
            .entry(event.account_id.clone())
            .or_default()
            .push(event.event_id);
        spool.publish(&event, None).await.unwrap();
    }
    let report = spool.shutdown().await.unwrap();
    assert_eq!(report.remaining_entries, 0);

    let records = tokio::task::spawn_blocking(move || read_records(&bootstrap, 300))
        .await
        .unwrap();
    let mut actual: std::collections::BTreeMap<String, Vec<Uuid>> = Default::default();
    for (key, event_id) in records {
        actual.entry(key).or_default().push(event_id);
    }
    assert_eq!(actual, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_rejects_with_spool_full() {
    let cluster = cluster();
    cluster.broker_down(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut spool_config, publisher_config) = configs(dir.path(), &cluster.bootstrap_servers());
    spool_config.drain_timeout_ms = 100;
    let spool = Spool::open(&spool_config, &publisher_config).unwrap();

    let mut accepted = 0u64;
    let mut full = None;
    let mut entry_bytes = 0u64;
    for _ in 0..200 {
        let event = event("acct-1", 30);
        entry_bytes = Entry {
            key: event.account_id.as_bytes().to_vec(),
            trace: None,
            payload: event.to_json_bytes(),
        }
        .encode()
        .len() as u64;
        match spool.publish(&event, None).await {
            Ok(_) => accepted += 1,
            Err(error) => {
                full = Some(error);
                break;
            }
        }
    }

    assert!(
        matches!(
            full,
            Some(SpoolError::SpoolFull {
                max_bytes: 1_048_576,
                ..
            })
        ),
        "{full:?}"
    );
    assert_eq!(accepted, 1_048_576 / entry_bytes);
    assert_eq!(spool.stats().backlog_entries, accepted);
    spool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_survives_reopen() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    cluster.broker_down(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut spool_config, publisher_config) = configs(dir.path(), &bootstrap);
    spool_config.drain_timeout_ms = 200;

    let spool = Spool::open(&spool_config, &publisher_config).unwrap();
    for index in 0..50 {
        spool
            .publish(&event(&format!("acct-{index}"), 0), None)
            .await
            .unwrap();
    }
    let report = spool.shutdown().await.unwrap();
    assert_eq!(report.remaining_entries, 50);
    drop(spool);

    cluster.broker_up(1).unwrap();
    let reopened = Spool::open(&spool_config, &publisher_config).unwrap();
    assert_eq!(reopened.stats().backlog_entries, 50);
    let receipt = reopened
        .publish(&event("acct-late", 0), None)
        .await
        .unwrap();
    assert_eq!(receipt.sequence, 50);

    spool_config.drain_timeout_ms = 20_000;
    let deadline = Instant::now() + Duration::from_secs(20);
    while reopened.stats().backlog_entries > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reopened.stats().backlog_entries, 0);
    assert_eq!(reopened.stats().backlog_bytes, 0);
    reopened.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_event_is_not_spooled() {
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let (spool_config, publisher_config) = configs(dir.path(), &cluster.bootstrap_servers());
    let spool = Spool::open(&spool_config, &publisher_config).unwrap();

    let error = spool
        .publish_json(br#"{"schema_version": 1}"#, None)
        .await
        .unwrap_err();

    assert!(
        matches!(error, SpoolError::Rejected(_) | SpoolError::Invalid(_)),
        "{error:?}"
    );
    assert_eq!(spool.stats().backlog_entries, 0);
    spool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_spool_rejects_publish() {
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let (spool_config, publisher_config) = configs(dir.path(), &cluster.bootstrap_servers());
    let spool = Spool::open(&spool_config, &publisher_config).unwrap();
    spool.shutdown().await.unwrap();

    let error = spool.publish(&event("acct-1", 0), None).await.unwrap_err();

    assert!(matches!(error, SpoolError::Closed), "{error:?}");
}
