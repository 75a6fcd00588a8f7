//! System tests of `txnotify outbox-relay` against a real broker and Postgres: two
//! relays at once, rolled-back transactions, malformed rows, and pruning.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use common::{
    create_topic, read_topic, require_system_tests, run_txnotify, unique_name, wait_until, Broker,
    TestDatabase, TxnotifyProcess,
};
use serde_json::json;
use uuid::Uuid;

const PARTITIONS: i32 = 3;
const ROWS: usize = 5_000;
const ROWS_PER_TRANSACTION: usize = 50;
const ROLLED_BACK_TRANSACTIONS: usize = 10;
const ACCOUNTS: usize = 40;

fn payload(event_id: Uuid, index: usize) -> String {
    json!({
        "event_id": event_id,
        "schema_version": 1,
        "transaction_id": format!("tx-{index}"),
        "account_id": format!("acct-{}", index % ACCOUNTS),
        "status": "completed",
        "amount": {"minor_units": 500 + index, "currency": "EUR"},
        "occurred_at": "2026-11-30T12:00:00Z",
        "recipient": {"email": format!("customer{index}@example.com"), "locale": "en"},
    })
    .to_string()
}

fn write_config(dir: &Path, bootstrap: &str, topic: &str, database_url: &str) -> String {
    let path = dir.join("txnotify.toml");
    let text = format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"

[notifier]
source_topic = "{topic}"

[outbox]
database_url = "{database_url}"
batch_size = 200
poll_interval_ms = 50
retry_backoff_ms = 200
"#
    );
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn relay(config: &str, args: &[&str]) -> common::TxnotifyOutput {
    let mut all = vec!["--config", config, "outbox-relay"];
    all.extend_from_slice(args);
    run_txnotify(&all, &[], Duration::from_secs(60))
}

#[test]
fn two_relays_publish_each_row_once() {
    require_system_tests!();
    let broker = Broker::start();
    let topic = unique_name("transactions");
    create_topic(&broker.bootstrap(), &topic, PARTITIONS);
    let database = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &broker.bootstrap(), &topic, &database.url());

    for _ in 0..2 {
        let migrated = relay(&config, &["migrate"]);
        assert!(
            migrated.status.success(),
            "migrate failed: {}",
            migrated.stderr
        );
    }
    let mut relays = [
        TxnotifyProcess::spawn(&["--config", &config, "outbox-relay"], &[]),
        TxnotifyProcess::spawn(&["--config", &config, "outbox-relay", "run"], &[]),
    ];

    // Insert the rows while both relays run: committed transactions, rolled-back ones
    // in between, and three malformed rows.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (committed, rolled_back) = runtime.block_on(async {
        let mut client = database.connect().await;
        let mut committed = Vec::new();
        let mut rolled_back = Vec::new();
        let mut index = 0;
        for batch in 0..ROWS / ROWS_PER_TRANSACTION {
            let transaction = client.transaction().await.unwrap();
            let mut ids = Vec::new();
            for _ in 0..ROWS_PER_TRANSACTION {
                let event_id = Uuid::new_v4();
                transaction
                    .execute(
                        txnotify_producer::outbox::INSERT_STATEMENT,
                        &[&payload(event_id, index), &None::<String>, &None::<String>],
                    )
                    .await
                    .unwrap();
                ids.push((format!("acct-{}", index % ACCOUNTS), event_id));
                index += 1;
            }
            if batch % (ROWS / ROWS_PER_TRANSACTION / ROLLED_BACK_TRANSACTIONS) == 3 {
                transaction.rollback().await.unwrap();
                rolled_back.extend(ids.iter().map(|(_, id)| *id));
                // The same number of rows again, committed this time.
                let transaction = client.transaction().await.unwrap();
                ids.clear();
                for _ in 0..ROWS_PER_TRANSACTION {
                    let event_id = Uuid::new_v4();
                    transaction
                        .execute(
                            txnotify_producer::outbox::INSERT_STATEMENT,
                            &[&payload(event_id, index), &None::<String>, &None::<String>],
                        )
                        .await
                        .unwrap();
                    ids.push((format!("acct-{}", index % ACCOUNTS), event_id));
                    index += 1;
                }
                transaction.commit().await.unwrap();
            } else {
                transaction.commit().await.unwrap();
            }
            committed.extend(ids);
        }
        for malformed in [
            "not json",
            r#"{"schema_version": 1}"#,
            r#"{"schema_version": 7}"#,
        ] {
            client
                .execute(
                    txnotify_producer::outbox::INSERT_STATEMENT,
                    &[&malformed, &None::<String>, &None::<String>],
                )
                .await
                .unwrap();
        }
        (committed, rolled_back)
    });
    assert_eq!(committed.len(), ROWS);
    assert_eq!(
        rolled_back.len(),
        ROLLED_BACK_TRANSACTIONS * ROWS_PER_TRANSACTION
    );

    let count = |sql: &str| -> i64 {
        runtime.block_on(async {
            database
                .connect()
                .await
                .query_one(sql, &[])
                .await
                .unwrap()
                .get(0)
        })
    };
    let settled = wait_until(Duration::from_secs(120), Duration::from_millis(250), || {
        count("SELECT count(*) FROM txnotify_outbox WHERE published_at IS NULL AND quarantined_at IS NULL") == 0
    });
    let mut totals = Vec::new();
    for relay in &mut relays {
        let status = relay.stop();
        assert!(
            status.success(),
            "relay exited with {status}:\n{}",
            relay.stderr()
        );
        let line = relay.stdout();
        let published: u64 = line
            .trim()
            .strip_prefix("published: ")
            .and_then(|rest| rest.split(',').next())
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("unexpected relay output {line:?}"));
        totals.push(published);
    }
    assert!(settled, "rows still waiting after 120 s");

    let records = read_topic(&broker.bootstrap(), &topic, Duration::from_secs(60));
    let mut in_kafka: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    for record in &records {
        let event: serde_json::Value = serde_json::from_slice(&record.value).unwrap();
        let event_id: Uuid = event["event_id"].as_str().unwrap().parse().unwrap();
        *seen.entry(event_id).or_default() += 1;
        in_kafka
            .entry(String::from_utf8(record.key.clone()).unwrap())
            .or_default()
            .push(event_id);
    }
    let mut expected: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for (account, event_id) in &committed {
        expected.entry(account.clone()).or_default().push(*event_id);
    }
    let rolled_back: HashSet<Uuid> = rolled_back.into_iter().collect();
    eprintln!("relays published {totals:?} rows");

    assert_eq!(records.len(), ROWS, "records in Kafka");
    assert_eq!(
        seen.values().filter(|count| **count > 1).count(),
        0,
        "event ids published twice"
    );
    assert!(
        seen.keys().all(|id| !rolled_back.contains(id)),
        "a rolled-back row was published"
    );
    assert_eq!(
        in_kafka, expected,
        "per-key order differs from insert order"
    );
    assert_eq!(
        totals.iter().sum::<u64>(),
        ROWS as u64,
        "sum of the relays' published counts"
    );
    assert_eq!(count("SELECT count(*) FROM txnotify_outbox WHERE published_at IS NOT NULL AND kafka_offset IS NOT NULL"), ROWS as i64);
    assert_eq!(count("SELECT count(*) FROM txnotify_outbox WHERE quarantined_at IS NOT NULL AND quarantine_reason <> ''"), 3);

    // Retention deletes published rows only; quarantined rows stay for inspection.
    let pruned = relay(&config, &["prune", "--older-than", "0s"]);
    assert!(pruned.status.success(), "prune failed: {}", pruned.stderr);
    assert!(
        pruned
            .stdout
            .contains(&format!("deleted {ROWS} published rows")),
        "{}",
        pruned.stdout
    );
    assert_eq!(count("SELECT count(*) FROM txnotify_outbox"), 3);
}

#[test]
fn outbox_relay_rejects_bad_settings() {
    require_system_tests!();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "127.0.0.1:9", "transactions", "");

    let missing_url = relay(&config, &[]);
    let bad_retention = relay(&config, &["prune", "--older-than", "7w"]);

    assert_eq!(missing_url.status.code(), Some(2), "{}", missing_url.stderr);
    assert!(
        missing_url.stderr.contains("outbox.database_url is empty"),
        "{}",
        missing_url.stderr
    );
    assert_eq!(
        bad_retention.status.code(),
        Some(2),
        "{}",
        bad_retention.stderr
    );
    assert!(
        bad_retention
            .stderr
            .contains("invalid retention period \"7w\""),
        "{}",
        bad_retention.stderr
    );
}
