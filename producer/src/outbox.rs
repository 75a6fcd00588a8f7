//! The Postgres outbox relay: publishes rows that producing services inserted into
//! `txnotify_outbox` inside their own transactions.
//!
//! Guarantees:
//!
//! - Only committed rows are seen, so a rolled-back transaction never publishes.
//! - Rows are published in id order and then marked with `published_at` and their Kafka
//!   partition and offset in the same transaction that locked them. Rows are never
//!   deleted by the relay; [`prune`] is the separate retention step.
//! - Several relays may run against one table. Each batch runs in a transaction that
//!   first takes the transaction-level advisory lock [`OutboxConfig::lock_key`], so one
//!   relay works at a time and the others wait. The rows are also locked with
//!   `FOR UPDATE SKIP LOCKED`. A row is therefore marked published by one relay only.
//! - A row whose payload is not a valid event is quarantined with its reason, and the
//!   relay goes on with the next row.
//!
//! Delivery is at least once: if a relay dies after Kafka acknowledged a batch but
//! before its transaction committed, the next batch publishes those rows again, and
//! notifiers drop the duplicates by `event_id`.
//!
//! NOTE: ids come from an identity column, so two transactions can commit in the other
//! order than their ids. Events of one account stay in order only when the service
//! serializes that account's transactions, for example by locking the account row.
//!
//! NOTE: connections use no TLS (`NoTls`); run the relay next to the database or over a
//! secured network.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};

use crate::publisher::{Pending, PublishError, Publisher, PublisherConfig};
use crate::trace::TraceContext;

/// SQL that creates the outbox table and its indexes; running it twice is harmless.
pub const MIGRATION: &str = include_str!("../migrations/0001_txnotify_outbox.sql");

/// Statement a producing service runs inside its own transaction, with the event JSON as
/// `$1` and the optional `traceparent` and `tracestate` as `$2` and `$3`.
pub const INSERT_STATEMENT: &str =
    "INSERT INTO txnotify_outbox (payload, traceparent, tracestate) VALUES ($1, $2, $3)";

/// Maximum number of rows one prune statement deletes, so no statement holds locks long.
const PRUNE_CHUNK: i64 = 10_000;

/// Settings of the outbox relay.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// libpq connection string or URL, for example
    /// `host=127.0.0.1 user=postgres dbname=payments`.
    pub database_url: String,
    /// Maximum number of rows per batch.
    pub batch_size: u32,
    /// Wait before looking again when no row is waiting or another relay holds the
    /// lock, in milliseconds.
    pub poll_interval_ms: u64,
    /// Wait after a database or Kafka failure, in milliseconds.
    pub retry_backoff_ms: u64,
    /// Key of the advisory lock that relays of one table share.
    pub lock_key: i64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            database_url: String::new(),
            batch_size: 500,
            poll_interval_ms: 200,
            retry_backoff_ms: 1_000,
            // "txnotify" in ASCII.
            lock_key: 0x7478_6e6f_7469_6679,
        }
    }
}

impl OutboxConfig {
    /// Checks the settings and returns a message naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.database_url.trim().is_empty() {
            return Err("outbox.database_url is empty; set it to a libpq connection string, for example \"host=127.0.0.1 user=postgres dbname=payments\"".into());
        }
        if let Err(error) = tokio_postgres::Config::from_str(&self.database_url) {
            return Err(format!(
                "outbox.database_url is not a valid connection string ({error}); use key=value pairs or a postgres:// URL"
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(format!(
                "outbox.batch_size is {}; set it between 1 and 10000",
                self.batch_size
            ));
        }
        if self.poll_interval_ms == 0 {
            return Err("outbox.poll_interval_ms is 0; set it to 10 or more".into());
        }
        if self.retry_backoff_ms == 0 {
            return Err("outbox.retry_backoff_ms is 0; set it to 100 or more".into());
        }
        Ok(())
    }
}

/// Failure of the outbox relay or its commands.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The settings are invalid.
    #[error("invalid outbox configuration: {0}")]
    Config(String),
    /// A database call failed.
    #[error("outbox database call failed: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// The relay's publisher could not be created.
    #[error(transparent)]
    Publisher(#[from] PublishError),
}

/// Counts of one batch or of a whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Rows published and marked.
    pub published: u64,
    /// Rows quarantined.
    pub quarantined: u64,
    /// Rows Kafka did not acknowledge; they stay unpublished and are tried again.
    pub failed: u64,
    /// Whether another relay held the lock, so this batch did nothing.
    pub lock_busy: bool,
}

/// Relays rows from the outbox table to Kafka.
pub struct OutboxRelay {
    config: OutboxConfig,
    publisher: Publisher,
}

impl OutboxRelay {
    /// Creates a relay; it connects when [`OutboxRelay::run`] starts.
    pub fn new(config: &OutboxConfig, publisher: &PublisherConfig) -> Result<Self, OutboxError> {
        config.validate().map_err(OutboxError::Config)?;
        Ok(Self {
            config: config.clone(),
            publisher: Publisher::new(publisher)?,
        })
    }

    /// Relays batches until `stop` becomes true, reconnecting after failures. Returns the
    /// totals.
    pub async fn run(&self, mut stop: watch::Receiver<bool>) -> RelayStats {
        let mut totals = RelayStats::default();
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        let backoff = Duration::from_millis(self.config.retry_backoff_ms);
        while !*stop.borrow() {
            let mut client = match connect(&self.config.database_url).await {
                Ok(client) => client,
                Err(error) => {
                    tracing::warn!(error = %error, "Outbox relay could not connect to Postgres; it retries after a backoff.");
                    wait_or_stop(&mut stop, backoff).await;
                    continue;
                }
            };
            tracing::info!("Outbox relay connected to Postgres.");
            while !*stop.borrow() {
                match self.relay_batch(&mut client).await {
                    Ok(batch) => {
                        totals.published += batch.published;
                        totals.quarantined += batch.quarantined;
                        totals.failed += batch.failed;
                        if batch.failed > 0 {
                            wait_or_stop(&mut stop, backoff).await;
                        } else if batch.published + batch.quarantined == 0 {
                            wait_or_stop(&mut stop, poll).await;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "Outbox batch failed and was rolled back; the relay retries after a backoff.");
                        wait_or_stop(&mut stop, backoff).await;
                        if client.is_closed() {
                            break;
                        }
                    }
                }
            }
        }
        tracing::info!(
            published = totals.published,
            quarantined = totals.quarantined,
            "Outbox relay stopped."
        );
        totals
    }

    /// Publishes one batch of waiting rows in one transaction and marks them.
    ///
    /// Steps: take the advisory lock (or return at once if another relay has it), lock
    /// the oldest waiting rows, queue each valid row and quarantine each invalid one,
    /// await the acknowledgements in order, mark the acknowledged rows, commit.
    pub async fn relay_batch(&self, client: &mut Client) -> Result<RelayStats, OutboxError> {
        let transaction = client.transaction().await?;
        let locked: bool = transaction
            .query_one(
                "SELECT pg_try_advisory_xact_lock($1)",
                &[&self.config.lock_key],
            )
            .await?
            .get(0);
        if !locked {
            return Ok(RelayStats {
                lock_busy: true,
                ..RelayStats::default()
            });
        }

        let rows = transaction
            .query(
                "SELECT id, payload, traceparent, tracestate FROM txnotify_outbox \
                 WHERE published_at IS NULL AND quarantined_at IS NULL \
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&i64::from(self.config.batch_size)],
            )
            .await?;
        if rows.is_empty() {
            return Ok(RelayStats::default());
        }

        let mut pending: Vec<(i64, Pending)> = Vec::with_capacity(rows.len());
        let mut quarantined: Vec<(i64, String)> = Vec::new();
        let mut stats = RelayStats::default();
        for row in &rows {
            let id: i64 = row.get(0);
            let payload: &str = row.get(1);
            let traceparent: Option<&str> = row.get(2);
            let tracestate: Option<&str> = row.get(3);
            let trace = traceparent.and_then(|value| TraceContext::parse(value, tracestate));
            match self
                .publisher
                .enqueue_json(payload.as_bytes(), trace.as_ref())
            {
                Ok(record) => pending.push((id, record)),
                Err(PublishError::Invalid(errors)) => quarantined.push((id, errors.to_string())),
                Err(PublishError::Rejected(error)) => quarantined.push((id, error.to_string())),
                Err(error) => {
                    // Later rows stay waiting, so they cannot overtake this one.
                    tracing::warn!(outbox_id = id, error = %error, "Outbox relay could not queue a row; it retries after a backoff.");
                    stats.failed += 1;
                    break;
                }
            }
        }

        let mut ids = Vec::with_capacity(pending.len());
        let mut partitions = Vec::with_capacity(pending.len());
        let mut offsets = Vec::with_capacity(pending.len());
        for (id, record) in pending {
            match record.acknowledged().await {
                Ok(delivery) => {
                    ids.push(id);
                    partitions.push(delivery.partition);
                    offsets.push(delivery.offset);
                }
                // NOTE: later rows of this batch that were acknowledged are still marked,
                // so this row is published after them and breaks its key's order.
                Err(error) => {
                    tracing::warn!(outbox_id = id, error = %error, "Kafka did not acknowledge an outbox row; it stays unpublished and is tried again.");
                    stats.failed += 1;
                }
            }
        }

        transaction
            .execute(
                "UPDATE txnotify_outbox AS o \
                 SET published_at = now(), kafka_partition = d.partition, kafka_offset = d.kafka_offset \
                 FROM unnest($1::bigint[], $2::integer[], $3::bigint[]) AS d(id, partition, kafka_offset) \
                 WHERE o.id = d.id",
                &[&ids, &partitions, &offsets],
            )
            .await?;
        for (id, reason) in &quarantined {
            tracing::error!(outbox_id = id, error = %reason, "Outbox row is not a valid event and was quarantined.");
        }
        let (quarantine_ids, reasons): (Vec<i64>, Vec<String>) = quarantined.into_iter().unzip();
        transaction
            .execute(
                "UPDATE txnotify_outbox AS o \
                 SET quarantined_at = now(), quarantine_reason = q.reason \
                 FROM unnest($1::bigint[], $2::text[]) AS q(id, reason) \
                 WHERE o.id = q.id",
                &[&quarantine_ids, &reasons],
            )
            .await?;
        transaction.commit().await?;

        stats.published = ids.len() as u64;
        stats.quarantined = quarantine_ids.len() as u64;
        Ok(stats)
    }
}

/// Connects to Postgres and drives the connection on a background task.
pub async fn connect(database_url: &str) -> Result<Client, OutboxError> {
    let (client, connection) = tokio_postgres::connect(database_url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(error = %error, "Postgres connection closed with an error.");
        }
    });
    Ok(client)
}

/// Creates the outbox table and its indexes if they are missing.
pub async fn migrate(database_url: &str) -> Result<(), OutboxError> {
    let client = connect(database_url).await?;
    client.batch_execute(MIGRATION).await?;
    Ok(())
}

/// Deletes published rows whose `published_at` is older than `older_than`, in chunks,
/// and returns how many were deleted. Unpublished and quarantined rows stay.
pub async fn prune(database_url: &str, older_than: Duration) -> Result<u64, OutboxError> {
    let client = connect(database_url).await?;
    let seconds = older_than.as_secs_f64();
    let mut deleted = 0u64;
    loop {
        let count = client
            .execute(
                "DELETE FROM txnotify_outbox WHERE id IN ( \
                   SELECT id FROM txnotify_outbox \
                   WHERE published_at < now() - make_interval(secs => $1) \
                   ORDER BY published_at LIMIT $2)",
                &[&seconds, &PRUNE_CHUNK],
            )
            .await?;
        deleted += count;
        if count < PRUNE_CHUNK as u64 {
            return Ok(deleted);
        }
    }
}

async fn wait_or_stop(stop: &mut watch::Receiver<bool>, wait: Duration) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        _ = stop.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_settings_name_the_field() {
        let valid = OutboxConfig {
            database_url: "host=127.0.0.1 user=postgres dbname=payments".into(),
            ..OutboxConfig::default()
        };
        assert_eq!(valid.validate(), Ok(()));
        let cases = [
            (
                OutboxConfig {
                    database_url: " ".into(),
                    ..valid.clone()
                },
                "outbox.database_url is empty",
            ),
            (
                OutboxConfig {
                    database_url: "host=127.0.0.1 port=notaport".into(),
                    ..valid.clone()
                },
                "outbox.database_url is not a valid connection string",
            ),
            (
                OutboxConfig {
                    batch_size: 0,
                    ..valid.clone()
                },
                "outbox.batch_size is 0",
            ),
            (
                OutboxConfig {
                    poll_interval_ms: 0,
                    ..valid.clone()
                },
                "outbox.poll_interval_ms",
            ),
        ];
        for (config, expected) in cases {
            let message = config.validate().unwrap_err();
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn insert_statement_matches_migration_columns() {
        for column in ["payload", "traceparent", "tracestate"] {
            assert!(MIGRATION.contains(&format!("    {column} ")), "{column}");
            assert!(INSERT_STATEMENT.contains(column), "{column}");
        }
        assert!(MIGRATION.contains(INSERT_STATEMENT.split(" VALUES").next().unwrap()));
    }
}
