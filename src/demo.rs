//! `txnotify demo`: the whole pipeline in one process, with no infrastructure.
//!
//! It starts librdkafka's mock cluster as the broker and an embedded SMTP sink, creates
//! the topics, publishes realistic events through the real [`Publisher`], runs the real
//! notifier worker, and prints what happened. The inputs include duplicates, a record
//! that is not JSON, a recipient whose server answers 451 twice, and one whose server
//! answers 550. The command exits 0 only when every published record is accounted for
//! and the counts match what the inputs imply.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use time::OffsetDateTime;
use txnotify_consumer::config::{KafkaConfig, NotifierConfig};
use txnotify_consumer::email::{RenderConfig, Renderer, SmtpConfig, SmtpSender, TlsMode};
use txnotify_consumer::ledger::{Ledger, LedgerConfig};
use txnotify_consumer::retry::RetryPolicy;
use txnotify_consumer::stats::{Stats, StatsSnapshot};
use txnotify_consumer::topics::{plan, TopicSettings};
use txnotify_consumer::worker::Notifier;
use txnotify_producer::{Publisher, PublisherConfig};
use txnotify_schemas::{headers, Money, Recipient, TransactionEvent, TransactionStatus};
use uuid::Uuid;

use crate::mail_sink::{MailSink, SinkFault};

/// Arguments of `txnotify demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Distinct events to publish.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    pub events: u32,
    /// Events published a second time with the same `event_id`, at most `events` - 10.
    #[arg(long, default_value_t = 25)]
    pub duplicates: u32,
    /// Maximum time to wait for every record to be accounted for, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

const FLAKY_RECIPIENT: &str = "flaky.inbox@example.net";
const BOUNCING_RECIPIENT: &str = "no.such.user@example.org";
const FIRST_DUPLICATE: usize = 10;
const GROUP: &str = "txnotify-demo";
const SOURCE_TOPIC: &str = "transactions.v1";

/// Counts the inputs imply the pipeline must report.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    records: u64,
    sent: u64,
    duplicates: u64,
    retried: u64,
    permanent: u64,
    invalid: u64,
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let duplicates = args.duplicates.min(args.events - FIRST_DUPLICATE as u32);

    // 1. Broker, mail sink, topics.
    let cluster = MockCluster::new(1)?;
    let bootstrap = cluster.bootstrap_servers();
    let settings = TopicSettings {
        partitions: 3,
        dlq_partitions: 3,
        replication_factor: 1,
        ..TopicSettings::default()
    };
    let notifier_config = NotifierConfig {
        group_id: GROUP.to_owned(),
        source_topic: SOURCE_TOPIC.to_owned(),
        max_in_flight: 16,
        session_timeout_ms: 6_000,
        drain_timeout_ms: 3_000,
        produce_timeout_ms: 10_000,
        retry: RetryPolicy {
            tiers_ms: vec![300, 900],
            max_attempts: 4,
            deadline_ms: 60_000,
        },
        ledger: LedgerConfig::default(),
        ..NotifierConfig::default()
    };
    for spec in plan(&notifier_config.topic_names(), &settings) {
        cluster.create_topic(&spec.name, spec.partitions, 1)?;
    }
    let sink = MailSink::start(vec![
        (FLAKY_RECIPIENT.to_owned(), SinkFault::TransientFirst(2)),
        (BOUNCING_RECIPIENT.to_owned(), SinkFault::AlwaysReject),
    ])?;

    // 2. The notifier, on a throwaway ledger.
    let ledger_dir = tempfile::tempdir()?;
    let notifier_config = NotifierConfig {
        ledger: LedgerConfig {
            path: ledger_dir.path().join("ledger").display().to_string(),
            ..LedgerConfig::default()
        },
        ..notifier_config
    };
    let kafka = KafkaConfig {
        bootstrap_servers: bootstrap.clone(),
        properties: Default::default(),
    };
    let smtp = SmtpConfig {
        host: sink.addr().ip().to_string(),
        port: Some(sink.addr().port()),
        tls: TlsMode::None,
        from: "Payments <notifications@txnotify.example>".to_owned(),
        message_id_domain: Some("txnotify.example".to_owned()),
        ..SmtpConfig::default()
    };
    let stats = Arc::new(Stats::default());
    let notifier = Notifier::new(
        notifier_config.clone(),
        kafka,
        SmtpSender::new(smtp)?,
        Renderer::new(&RenderConfig::default())?,
        Ledger::open(&notifier_config.ledger)?,
        stats.clone(),
    )?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(notifier.run(async {
        let _ = stop_rx.await;
    }));

    // 3. Publish: distinct events, then duplicates, then one record that is not JSON.
    let publisher = Publisher::new(&PublisherConfig {
        bootstrap_servers: bootstrap.clone(),
        topic: SOURCE_TOPIC.to_owned(),
        enqueue_timeout_ms: 1_000,
        ..PublisherConfig::default()
    })?;
    let events: Vec<TransactionEvent> = (0..args.events).map(sample_event).collect();
    let mut pending = Vec::new();
    for event in &events {
        pending.push(publisher.enqueue(event, None)?);
    }
    // Duplicates come from events with healthy recipients: a duplicate of an event that
    // was dead-lettered is attempted again, which is right but makes the count depend on
    // timing.
    for event in events
        .iter()
        .skip(FIRST_DUPLICATE)
        .take(usize::try_from(duplicates)?)
    {
        pending.push(publisher.enqueue(event, None)?);
    }
    for record in pending {
        record.acknowledged().await?;
    }
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    raw.send(
        FutureRecord::to(SOURCE_TOPIC)
            .key("acct-broken")
            .payload("{not json"),
        Timeout::After(Duration::from_secs(5)),
    )
    .await
    .map_err(|(error, _)| error)?;

    let expected = Expected {
        records: u64::from(args.events) + u64::from(duplicates) + 1,
        sent: u64::from(args.events) - 1,
        duplicates: u64::from(duplicates),
        retried: 2,
        permanent: 1,
        invalid: 1,
    };

    // 4. Wait until every source record has an outcome and the retries are done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    loop {
        let now = stats.snapshot();
        let finished = now.sent + now.duplicates + now.dead_lettered();
        if finished >= expected.records && now.retried() >= expected.retried {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(());
    worker.await??;

    // 5. Compare with the inputs, the mail sink and the dead-letter topic.
    let snapshot = stats.snapshot();
    let received = sink.received();
    let unique_ids: BTreeSet<&str> = received
        .iter()
        .filter_map(|message| message.message_id.as_deref())
        .collect();
    let dlq = read_dead_letters(
        &bootstrap,
        &notifier_config.topic_names().dlq(),
        settings.dlq_partitions,
    )?;
    sink.stop();

    let report = Report {
        expected: &expected,
        snapshot: &snapshot,
        mails_received: received.len() as u64,
        unique_message_ids: unique_ids.len() as u64,
        dlq_classes: dlq,
    };
    report.print();
    if report.matches() {
        println!("result: every record is accounted for");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("result: MISMATCH between inputs and outcomes");
        Ok(ExitCode::FAILURE)
    }
}

struct Report<'a> {
    expected: &'a Expected,
    snapshot: &'a StatsSnapshot,
    mails_received: u64,
    unique_message_ids: u64,
    dlq_classes: Vec<String>,
}

impl Report<'_> {
    fn dlq_count(&self, class: &str) -> u64 {
        self.dlq_classes
            .iter()
            .filter(|seen| seen.as_str() == class)
            .count() as u64
    }

    fn counted(&self, class: &str) -> u64 {
        self.snapshot.dead_letters.get(class).copied().unwrap_or(0)
    }

    fn rows(&self) -> Vec<(&'static str, u64, u64)> {
        let expected = self.expected;
        vec![
            (
                "records published",
                expected.records,
                self.snapshot
                    .consumed
                    .saturating_sub(self.snapshot.retried()),
            ),
            ("sent", expected.sent, self.snapshot.sent),
            (
                "emails received by the sink",
                expected.sent,
                self.mails_received,
            ),
            (
                "distinct Message-IDs at the sink",
                expected.sent,
                self.unique_message_ids,
            ),
            (
                "duplicates skipped",
                expected.duplicates,
                self.snapshot.duplicates,
            ),
            ("retried", expected.retried, self.snapshot.retried()),
            (
                "dead-lettered: permanent",
                expected.permanent,
                self.counted("permanent"),
            ),
            (
                "dead-lettered: invalid",
                expected.invalid,
                self.counted("invalid"),
            ),
            ("dead-lettered: exhausted", 0, self.counted("exhausted")),
            (
                "dead-lettered: unknown-outcome",
                0,
                self.counted("unknown-outcome"),
            ),
            (
                "dead letters on the topic: permanent",
                expected.permanent,
                self.dlq_count("permanent"),
            ),
            (
                "dead letters on the topic: invalid",
                expected.invalid,
                self.dlq_count("invalid"),
            ),
        ]
    }

    fn matches(&self) -> bool {
        self.rows()
            .iter()
            .all(|(_, expected, actual)| expected == actual)
            && self.dlq_classes.len() as u64 == self.expected.permanent + self.expected.invalid
    }

    fn print(&self) {
        println!("txnotify demo report");
        println!("{:<40} {:>9} {:>9}", "", "expected", "observed");
        for (label, expected, actual) in self.rows() {
            let mark = if expected == actual {
                ""
            } else {
                "  <-- differs"
            };
            println!("{label:<40} {expected:>9} {actual:>9}{mark}");
        }
    }
}

/// Reads every record of the dead-letter topic and returns their error classes.
fn read_dead_letters(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<Vec<String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "txnotify-demo-report")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut ends = 0i64;
    for partition in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(5))?;
        ends += high;
    }
    let mut classes = Vec::new();
    let deadline = std::time::Duration::from_secs(10);
    let started = std::time::SystemTime::now();
    while (classes.len() as i64) < ends && started.elapsed().unwrap_or_default() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let class = message
                .headers()
                .and_then(|found| {
                    found
                        .iter()
                        .find(|header| header.key == headers::ERROR_CLASS)
                })
                .and_then(|header| header.value)
                .map(|value| String::from_utf8_lossy(value).into_owned())
                .unwrap_or_default();
            classes.push(class);
        }
    }
    Ok(classes)
}

/// Builds the `index`-th sample event; a few indexes get the faulty recipients.
fn sample_event(index: u32) -> TransactionEvent {
    const NAMES: [&str; 6] = [
        "Ada Lovelace",
        "Jürgen Müller",
        "Grace Hopper",
        "Zoë Brontë",
        "Kenji Sato",
        "Amara Okafor",
    ];
    const MERCHANTS: [&str; 5] = [
        "Corner Bakery",
        "Bücherstube Lindau",
        "Metro Transit",
        "Café <Noir> & Co",
        "Nordic Outfitters",
    ];
    const CURRENCIES: [(&str, i64); 5] = [
        ("EUR", 100),
        ("USD", 100),
        ("GBP", 100),
        ("JPY", 1),
        ("BHD", 1000),
    ];
    let i = usize::try_from(index).unwrap_or(0);
    let (currency, scale) = CURRENCIES[i % CURRENCIES.len()];
    let email = match index {
        3 => FLAKY_RECIPIENT.to_owned(),
        7 => BOUNCING_RECIPIENT.to_owned(),
        _ => format!("customer{index}@example.com"),
    };
    let status = match index % 10 {
        8 => TransactionStatus::Refunded,
        9 => TransactionStatus::Failed,
        _ => TransactionStatus::Completed,
    };
    TransactionEvent {
        event_id: Uuid::new_v4(),
        schema_version: txnotify_schemas::SCHEMA_VERSION,
        transaction_id: format!("tx-{index:06}"),
        account_id: format!("acct-{}", index % 40),
        status,
        amount: Money {
            minor_units: (i64::from(index % 97) + 1) * scale + i64::from(index % 7),
            currency: currency.to_owned(),
        },
        occurred_at: OffsetDateTime::now_utc(),
        recipient: Recipient {
            email,
            display_name: Some(NAMES[i % NAMES.len()].to_owned()),
            locale: Some(if index % 3 == 0 { "de-DE" } else { "en-GB" }.to_owned()),
        },
        merchant: Some(MERCHANTS[i % MERCHANTS.len()].to_owned()),
        description: (index % 4 == 0).then(|| format!("Order #{index}")),
        metadata: Default::default(),
    }
}
