//! System tests of the example payment service: `POST /transactions` responds with the
//! same status and latency class whether the broker, the SMTP server and the notifier
//! are up or down.

mod common;

use std::time::Duration;

use common::{
    http_get, payment_service_bin, post_json, require_system_tests, run_txnotify, unique_name,
    Broker, SmtpServer, TestDatabase, TxnotifyProcess,
};
use serde_json::{json, Value};

const REQUESTS: usize = 200;
/// Upper bound of the latency class both phases must stay in.
const LATENCY_CLASS: Duration = Duration::from_millis(250);

fn body(index: usize) -> String {
    json!({
        "account_id": format!("acct-{}", index % 10),
        "amount_minor_units": 2500 + index,
        "currency": "EUR",
        "recipient_email": format!("customer{index}@example.com"),
        "recipient_name": "Customer",
        "locale": "en",
    })
    .to_string()
}

/// Sends `REQUESTS` transactions and returns the statuses and the p99 latency.
fn measure(address: &str, offset: usize) -> (Vec<u16>, Duration) {
    let mut statuses = Vec::new();
    let mut latencies = Vec::new();
    for index in offset..offset + REQUESTS {
        let response = post_json(
            address,
            "/transactions",
            &body(index),
            Duration::from_secs(10),
        );
        if response.status == 201 {
            let body: Value = serde_json::from_str(&response.body).unwrap();
            assert_eq!(body["status"], "completed", "{}", response.body);
        }
        statuses.push(response.status);
        latencies.push(response.elapsed);
    }
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    (statuses, p99)
}

fn start_service(args: &[&str]) -> (TxnotifyProcess, String) {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let service = TxnotifyProcess::spawn_program(&payment_service_bin(), &all, &[]);
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

#[test]
fn spool_mode_ignores_notification_outage() {
    require_system_tests!();
    let mut broker = Broker::start();
    let mut smtp = SmtpServer::start(json!([]));
    let dir = tempfile::tempdir().unwrap();
    let group = unique_name("notify");
    let topic = unique_name("transactions");
    let config = dir.path().join("txnotify.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
bootstrap_servers = "{bootstrap}"

[topics]
partitions = 3
dlq_partitions = 3
replication_factor = 1

[notifier]
group_id = "{group}"
source_topic = "{topic}"

[notifier.ledger]
path = "{ledger}"

[smtp]
host = "127.0.0.1"
port = {port}
tls = "none"
from = "Payments <payments@txnotify.test>"
"#,
            bootstrap = broker.bootstrap(),
            ledger = dir.path().join("ledger").display(),
            port = smtp.port(),
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let ensured = run_txnotify(
        &["--config", config, "topics", "ensure"],
        &[],
        Duration::from_secs(60),
    );
    assert!(
        ensured.status.success(),
        "topics ensure failed: {}",
        ensured.stderr
    );
    let mut notifier = TxnotifyProcess::spawn(&["--config", config, "notify"], &[]);
    let spool = dir.path().join("spool");
    let (mut service, address) = start_service(&[
        "--mode",
        "spool",
        "--bootstrap-servers",
        &broker.bootstrap(),
        "--topic",
        &topic,
        "--spool-dir",
        spool.to_str().unwrap(),
        // A loaded test machine can stall one fsync past the 100 ms default, and the 503
        // that follows would say nothing about the notification side.
        "--enqueue-timeout-ms",
        "500",
    ]);

    let invalid = [
        (
            json!({"account_id": "a", "amount_minor_units": 1, "currency": "XXZ", "recipient_email": "c@example.com"}),
            "currency",
        ),
        (
            json!({"account_id": "a", "amount_minor_units": 1, "currency": "EUR", "recipient_email": "not an address"}),
            "email",
        ),
        (json!({"account_id": "a"}), "missing field"),
    ];
    for (request, needle) in invalid {
        let response = post_json(
            &address,
            "/transactions",
            &request.to_string(),
            Duration::from_secs(10),
        );
        assert_eq!(response.status, 422, "{request}: {}", response.body);
        assert!(
            response.body.contains(needle),
            "{request}: {}",
            response.body
        );
    }

    let (statuses_up, p99_up) = measure(&address, 0);
    notifier.kill();
    smtp.stop();
    broker.stop();
    let (statuses_down, p99_down) = measure(&address, REQUESTS);
    let scraped = http_get(&address, "/metrics", Duration::from_secs(10));
    let backlog: u64 = scraped
        .body
        .lines()
        .find_map(|line| line.strip_prefix("txnotify_spool_backlog_records "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no spool backlog in /metrics:\n{}", scraped.body));
    service.stop();

    eprintln!("POST /transactions p99: {p99_up:?} with everything up, {p99_down:?} with broker, SMTP and notifier down");
    assert!(
        statuses_up.iter().all(|status| *status == 201),
        "statuses while up: {statuses_up:?}"
    );
    assert!(
        statuses_down.iter().all(|status| *status == 201),
        "statuses while down: {statuses_down:?}"
    );
    assert!(p99_up < LATENCY_CLASS, "p99 while up is {p99_up:?}");
    assert!(p99_down < LATENCY_CLASS, "p99 while down is {p99_down:?}");
    // With the broker down nothing leaves the spool, so every request made then waits.
    assert!(backlog >= REQUESTS as u64, "spool backlog is {backlog}");
}

#[test]
fn outbox_mode_needs_no_broker() {
    require_system_tests!();
    let database = TestDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("txnotify.toml");
    std::fs::write(
        &config,
        format!("[outbox]\ndatabase_url = \"{}\"\n", database.url()),
    )
    .unwrap();
    let migrated = run_txnotify(
        &[
            "--config",
            config.to_str().unwrap(),
            "outbox-relay",
            "migrate",
        ],
        &[],
        Duration::from_secs(60),
    );
    assert!(
        migrated.status.success(),
        "migrate failed: {}",
        migrated.stderr
    );
    let (mut service, address) =
        start_service(&["--mode", "outbox", "--database-url", &database.url()]);

    let (statuses, p99) = measure(&address, 0);
    service.stop();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (outbox_rows, transactions): (i64, i64) = runtime.block_on(async {
        let client = database.connect().await;
        let outbox = client
            .query_one("SELECT count(*) FROM txnotify_outbox", &[])
            .await
            .unwrap()
            .get(0);
        let transactions = client
            .query_one("SELECT count(*) FROM payment_service_transactions", &[])
            .await
            .unwrap()
            .get(0);
        (outbox, transactions)
    });
    eprintln!("POST /transactions p99 in outbox mode with no broker: {p99:?}");
    assert!(
        statuses.iter().all(|status| *status == 201),
        "statuses: {statuses:?}"
    );
    assert!(p99 < LATENCY_CLASS, "p99 is {p99:?}");
    assert_eq!(outbox_rows, REQUESTS as i64);
    assert_eq!(transactions, REQUESTS as i64);
}
