//! Durable local spool: `publish` returns once the event is on local disk, and a
//! forwarder drains the spool to Kafka in the background.
//!
//! Guarantees:
//!
//! - A successful [`Spool::publish`] means the event survives a process crash or
//!   `kill -9`: its batch was written and fsynced by sled before the call returned.
//! - Durability is group-committed. Concurrent callers register with one committer task,
//!   which runs one `flush` for everything queued since the previous one.
//! - Every call returns within the publisher's enqueue timeout, whatever Kafka does.
//! - The spool is bounded by [`SpoolConfig::max_bytes`]; past it, publishing fails with
//!   [`SpoolError::SpoolFull`] and the backlog is logged.
//! - The forwarder sends entries in spool order with the idempotent [`Publisher`], so
//!   records with the same key keep their order, and removes an entry only after Kafka
//!   acknowledged it. What is left on disk is sent after a restart.
//!
//! Delivery to Kafka is at least once. An entry whose removal was not yet on disk when the
//! process died is sent again after the restart, even if Kafka had acknowledged it. Notifiers
//! drop the duplicate by `event_id`.
//!
//! Layout: [`config`] holds the settings, `entry` the on-disk format, and `forwarder` the
//! drain loop.

pub mod config;
mod entry;
mod forwarder;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use txnotify_schemas::{DecodeError, Limits, TransactionEvent, ValidationErrors};
use uuid::Uuid;

pub use config::SpoolConfig;
use entry::Entry;

use crate::publisher::{PublishError, Publisher, PublisherConfig};
use crate::trace::TraceContext;

/// Name of the sled tree with entries waiting to be forwarded.
const ENTRIES_TREE: &str = "entries";
/// Name of the sled tree with entries the forwarder could not send and set aside.
const QUARANTINE_TREE: &str = "quarantine";
/// Minimum interval between two "spool full" log lines.
const FULL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Failure to spool an event.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The settings are invalid.
    #[error("invalid spool configuration: {0}")]
    Config(String),
    /// The spool directory could not be opened or written.
    #[error("spool storage at {path} failed: {source}")]
    Storage {
        /// Spool directory.
        path: PathBuf,
        /// The sled error.
        source: sled::Error,
    },
    /// The disk flush of the group commit failed; the entry may not survive a crash.
    #[error("spool commit to {path} failed: {message}")]
    CommitFailed {
        /// Spool directory.
        path: PathBuf,
        /// The sled error, as text because one error goes to every caller of the batch.
        message: String,
    },
    /// The event failed validation; nothing was spooled.
    #[error("invalid event, nothing was spooled: {0}")]
    Invalid(#[from] ValidationErrors),
    /// The payload failed to decode or is too large; nothing was spooled.
    #[error("rejected payload, nothing was spooled: {0}")]
    Rejected(#[from] DecodeError),
    /// The spool already contains `max_bytes` of entries, so nothing was spooled.
    #[error(
        "spool full: {used_bytes} of {max_bytes} bytes in use, nothing was spooled; \
         Kafka is likely unreachable, retry later or raise spool.max_bytes"
    )]
    SpoolFull {
        /// Bytes of spooled entries.
        used_bytes: u64,
        /// Configured bound.
        max_bytes: u64,
    },
    /// The group commit did not finish within the enqueue timeout. The entry is written
    /// but may not be on disk, so it may or may not be forwarded. A retry with the same
    /// `event_id` is safe.
    #[error("spool commit did not finish within {timeout_ms} ms; the event may or may not be delivered, retry with the same event_id")]
    CommitTimeout {
        /// Enqueue timeout that passed.
        timeout_ms: u64,
    },
    /// The spool is shutting down and takes no new events.
    #[error("spool is shut down and takes no new events")]
    Closed,
    /// The forwarder's publisher could not be created.
    #[error(transparent)]
    Publisher(#[from] PublishError),
}

/// Proof that an event is durable in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolReceipt {
    /// The event's idempotency key.
    pub event_id: Uuid,
    /// Position in the spool; later publishes get larger numbers.
    pub sequence: u64,
}

/// Counts since the spool was opened, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Entries waiting to be forwarded.
    pub backlog_entries: u64,
    /// Bytes of the waiting entries.
    pub backlog_bytes: u64,
    /// Entries made durable by a `publish` call.
    pub committed: u64,
    /// Disk flushes the committer ran for them.
    pub commits: u64,
    /// Entries that Kafka acknowledged and the forwarder removed.
    pub forwarded: u64,
    /// Entries set aside because Kafka rejected them for good.
    pub quarantined: u64,
}

/// Result of a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Entries still in the spool, to be forwarded after the next start.
    pub remaining_entries: u64,
}

/// Durable local spool in front of a [`Publisher`]. Clones share one spool.
///
/// Call [`Spool::shutdown`] before exit: the forwarder task runs until then, and keeps
/// the spool open even when every handle is dropped.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

/// State shared by the handles, the committer and the forwarder.
struct Shared {
    path: PathBuf,
    db: sled::Db,
    entries: sled::Tree,
    quarantine: sled::Tree,
    limits: Limits,
    max_bytes: u64,
    enqueue_timeout: Duration,
    used_bytes: AtomicU64,
    next_sequence: AtomicU64,
    closed: AtomicBool,
    committer: mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>>,
    /// Wakes the forwarder when an entry was added.
    added: Notify,
    counters: Counters,
    full_log: Mutex<FullLog>,
    /// Shutdown deadline. `Some` makes the forwarder drain and stop.
    stop: watch::Sender<Option<Instant>>,
    forwarder: Mutex<Option<JoinHandle<()>>>,
    publisher: Publisher,
    drain_timeout: Duration,
}

#[derive(Default)]
struct Counters {
    committed: AtomicU64,
    commits: AtomicU64,
    forwarded: AtomicU64,
    quarantined: AtomicU64,
}

/// Rate limit of the "spool full" warning.
#[derive(Default)]
struct FullLog {
    last: Option<Instant>,
    rejected_since: u64,
}

impl Spool {
    /// Opens (or creates) the spool, counts what an earlier run left, and starts the
    /// committer and the forwarder on the current Tokio runtime.
    pub fn open(config: &SpoolConfig, publisher: &PublisherConfig) -> Result<Spool, SpoolError> {
        config.validate().map_err(SpoolError::Config)?;
        publisher.validate().map_err(SpoolError::Config)?;
        let storage = |source| SpoolError::Storage {
            path: config.path.clone(),
            source,
        };
        let db = sled::Config::new()
            .path(&config.path)
            .open()
            .map_err(storage)?;
        let entries = db.open_tree(ENTRIES_TREE).map_err(storage)?;
        let quarantine = db.open_tree(QUARANTINE_TREE).map_err(storage)?;

        let mut used_bytes = 0u64;
        let mut backlog = 0u64;
        for item in entries.iter() {
            let (_, value) = item.map_err(storage)?;
            used_bytes += value.len() as u64;
            backlog += 1;
        }
        let next_sequence = match entries.last().map_err(storage)? {
            Some((key, _)) => sequence_of(&key) + 1,
            None => 0,
        };

        let forward_publisher = Publisher::new(&PublisherConfig {
            delivery_timeout_ms: config.delivery_timeout_ms,
            ..publisher.clone()
        })?;
        let (committer, commit_requests) = mpsc::unbounded_channel();
        let (stop, stop_requests) = watch::channel(None);
        let shared = Arc::new(Shared {
            path: config.path.clone(),
            db,
            entries,
            quarantine,
            limits: Limits {
                max_payload_bytes: publisher.max_payload_bytes,
            },
            max_bytes: config.max_bytes,
            enqueue_timeout: Duration::from_millis(publisher.enqueue_timeout_ms),
            used_bytes: AtomicU64::new(used_bytes),
            next_sequence: AtomicU64::new(next_sequence),
            closed: AtomicBool::new(false),
            committer,
            added: Notify::new(),
            counters: Counters::default(),
            full_log: Mutex::new(FullLog::default()),
            stop,
            forwarder: Mutex::new(None),
            publisher: forward_publisher,
            drain_timeout: Duration::from_millis(config.drain_timeout_ms),
        });
        tracing::info!(
            path = %config.path.display(),
            backlog_entries = backlog,
            backlog_bytes = used_bytes,
            "Spool opened."
        );

        tokio::spawn(run_committer(
            shared.db.clone(),
            Arc::downgrade(&shared),
            commit_requests,
        ));
        let forwarder = tokio::spawn(forwarder::run(
            shared.clone(),
            stop_requests,
            Duration::from_millis(config.retry_backoff_ms),
            config.forward_window,
        ));
        *shared.forwarder.lock().expect("forwarder lock") = Some(forwarder);
        Ok(Spool { shared })
    }

    /// Validates `event` and returns once it is durable in the spool.
    pub async fn publish(
        &self,
        event: &TransactionEvent,
        trace: Option<&TraceContext>,
    ) -> Result<SpoolReceipt, SpoolError> {
        let started = Instant::now();
        event.validate()?;
        let payload = event.to_json_bytes();
        if payload.len() > self.shared.limits.max_payload_bytes {
            return Err(DecodeError::TooLarge {
                size: payload.len(),
                max: self.shared.limits.max_payload_bytes,
            }
            .into());
        }
        self.append(event, payload, trace, started).await
    }

    /// Decodes and validates `payload`, then spools the bytes unchanged and returns once
    /// they are durable.
    pub async fn publish_json(
        &self,
        payload: &[u8],
        trace: Option<&TraceContext>,
    ) -> Result<SpoolReceipt, SpoolError> {
        let started = Instant::now();
        let event = txnotify_schemas::decode(payload, &self.shared.limits)?;
        self.append(&event, payload.to_vec(), trace, started).await
    }

    /// Returns the current counts.
    pub fn stats(&self) -> SpoolStats {
        let counters = &self.shared.counters;
        SpoolStats {
            backlog_entries: self.shared.entries.len() as u64,
            backlog_bytes: self.shared.used_bytes.load(Ordering::Relaxed),
            committed: counters.committed.load(Ordering::Relaxed),
            commits: counters.commits.load(Ordering::Relaxed),
            forwarded: counters.forwarded.load(Ordering::Relaxed),
            quarantined: counters.quarantined.load(Ordering::Relaxed),
        }
    }

    /// Stops taking events, forwards until the spool is empty or the configured drain
    /// timeout passes, and flushes what is left to disk for the next start.
    pub async fn shutdown(&self) -> Result<ShutdownReport, SpoolError> {
        let shared = &self.shared;
        shared.closed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + shared.drain_timeout;
        shared.stop.send_replace(Some(deadline));
        let forwarder = shared.forwarder.lock().expect("forwarder lock").take();
        if let Some(forwarder) = forwarder {
            if let Err(error) = forwarder.await {
                tracing::error!(error = %error, "Spool forwarder task failed.");
            }
        }
        // Records still in librdkafka's queue are also on disk. They get until the
        // deadline and are then dropped, so that the publisher's flush on drop does not
        // wait the whole delivery timeout. The next start sends them again.
        let publisher = shared.publisher.clone();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let flushed = tokio::task::spawn_blocking(move || publisher.flush(remaining))
            .await
            .expect("flush task does not panic");
        if flushed.is_err() {
            shared.publisher.purge();
        }

        let db = shared.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .expect("flush task does not panic")
            .map_err(|source| SpoolError::Storage {
                path: shared.path.clone(),
                source,
            })?;
        let remaining_entries = shared.entries.len() as u64;
        tracing::info!(
            path = %shared.path.display(),
            remaining_entries,
            forwarded = shared.counters.forwarded.load(Ordering::Relaxed),
            "Spool shut down; remaining entries are forwarded after the next start."
        );
        Ok(ShutdownReport { remaining_entries })
    }

    async fn append(
        &self,
        event: &TransactionEvent,
        payload: Vec<u8>,
        trace: Option<&TraceContext>,
        started: Instant,
    ) -> Result<SpoolReceipt, SpoolError> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::SeqCst) {
            return Err(SpoolError::Closed);
        }
        let value = Entry {
            key: event.account_id.as_bytes().to_vec(),
            trace: trace.cloned(),
            payload,
        }
        .encode();
        let size = value.len() as u64;
        self.reserve(size)?;

        let sequence = shared.next_sequence.fetch_add(1, Ordering::SeqCst);
        if let Err(source) = shared.entries.insert(sequence.to_be_bytes(), value) {
            shared.used_bytes.fetch_sub(size, Ordering::SeqCst);
            return Err(SpoolError::Storage {
                path: shared.path.clone(),
                source,
            });
        }
        shared.added.notify_one();

        let (done, committed) = oneshot::channel();
        if shared.committer.send(done).is_err() {
            return Err(SpoolError::Closed);
        }
        let deadline = started + shared.enqueue_timeout;
        match tokio::time::timeout_at(deadline, committed).await {
            Ok(Ok(Ok(()))) => {
                shared.counters.committed.fetch_add(1, Ordering::Relaxed);
                Ok(SpoolReceipt {
                    event_id: event.event_id,
                    sequence,
                })
            }
            Ok(Ok(Err(message))) => Err(SpoolError::CommitFailed {
                path: shared.path.clone(),
                message,
            }),
            Ok(Err(_)) => Err(SpoolError::Closed),
            Err(_) => Err(SpoolError::CommitTimeout {
                timeout_ms: u64::try_from(shared.enqueue_timeout.as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    /// Adds `size` to the bytes in use, or fails with `SpoolFull` and logs the backlog.
    fn reserve(&self, size: u64) -> Result<(), SpoolError> {
        let shared = &self.shared;
        let reserved = shared
            .used_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used + size <= shared.max_bytes).then_some(used + size)
            });
        let Err(used_bytes) = reserved else {
            return Ok(());
        };

        let mut log = shared.full_log.lock().expect("full log lock");
        log.rejected_since += 1;
        let now = Instant::now();
        if log.last.is_none_or(|last| now - last >= FULL_LOG_INTERVAL) {
            tracing::warn!(
                path = %shared.path.display(),
                backlog_entries = shared.entries.len(),
                backlog_bytes = used_bytes,
                max_bytes = shared.max_bytes,
                rejected = log.rejected_since,
                "Spool is full, so publishing fails until the forwarder reaches Kafka."
            );
            log.last = Some(now);
            log.rejected_since = 0;
        }
        Err(SpoolError::SpoolFull {
            used_bytes,
            max_bytes: shared.max_bytes,
        })
    }
}

/// Runs one sled flush for every batch of waiting callers, so many publishes share one
/// fsync. sled 0.34 documents `Db::flush` as flushing all dirty buffers and calling fsync.
async fn run_committer(
    db: sled::Db,
    shared: std::sync::Weak<Shared>,
    mut requests: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), String>>>,
) {
    while let Some(first) = requests.recv().await {
        let mut waiters = vec![first];
        while let Ok(waiter) = requests.try_recv() {
            waiters.push(waiter);
        }
        let flushing = db.clone();
        let result = tokio::task::spawn_blocking(move || flushing.flush())
            .await
            .expect("flush task does not panic")
            .map(|_| ())
            .map_err(|error| error.to_string());
        if let Err(error) = &result {
            tracing::error!(error = %error, waiters = waiters.len(), "Spool commit failed.");
        }
        if let Some(shared) = shared.upgrade() {
            shared.counters.commits.fetch_add(1, Ordering::Relaxed);
        }
        for waiter in waiters {
            // A caller that timed out has dropped its receiver; nothing waits for it.
            let _ = waiter.send(result.clone());
        }
    }
}

fn sequence_of(key: &[u8]) -> u64 {
    let bytes: [u8; 8] = key.try_into().unwrap_or([0; 8]);
    u64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests;
