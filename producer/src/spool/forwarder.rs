//! The forwarder: drains the spool to Kafka in spool order.
//!
//! Each round reads up to `window` entries from the start of the spool, queues them all
//! with the idempotent publisher, then awaits the acknowledgements in order and removes
//! each acknowledged entry. librdkafka's idempotent producer keeps the order of records
//! within a partition across its own retries, so records with the same key arrive in
//! spool order.
//!
//! NOTE: a record that fails after the delivery timeout is sent again in the next round,
//! after records of the same partition that were acknowledged meanwhile. Keep
//! `spool.delivery_timeout_ms` longer than the broker outages the spool must bridge.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::entry::Entry;
use super::Shared;
use crate::publisher::{Pending, PublishError};

/// Wait for new entries when the spool is empty, before looking again anyway.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Runs until shutdown requests a stop and the spool is empty or the deadline has passed.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Option<Instant>>,
    backoff: Duration,
    window: usize,
) {
    loop {
        let deadline = *stop.borrow_and_update();
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            break;
        }

        let round = forward_round(&shared, window, &mut stop).await;
        match round {
            Round::Empty if deadline.is_some() => break,
            Round::Empty => {
                tokio::select! {
                    () = shared.added.notified() => {}
                    _ = stop.changed() => {}
                    () = tokio::time::sleep(IDLE_POLL) => {}
                }
            }
            Round::Progress => {}
            Round::Failed => {
                let wake = Instant::now() + backoff;
                let wake = deadline.map_or(wake, |deadline| wake.min(deadline));
                tokio::select! {
                    () = tokio::time::sleep_until(wake) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
    let remaining = shared.entries.len();
    if remaining > 0 {
        tracing::warn!(
            path = %shared.path.display(),
            backlog_entries = remaining,
            backlog_bytes = shared.used_bytes.load(Ordering::Relaxed),
            "Spool forwarder stopped at the drain deadline with entries left; they are forwarded after the next start."
        );
    }
}

/// Outcome of one forwarding round.
enum Round {
    /// The spool was empty.
    Empty,
    /// Every queued record was acknowledged.
    Progress,
    /// At least one record was not queued or not acknowledged.
    Failed,
}

/// A queued record and the spool key it came from.
struct InFlight {
    key: sled::IVec,
    size: u64,
    pending: Pending,
}

async fn forward_round(
    shared: &Shared,
    window: usize,
    stop: &mut watch::Receiver<Option<Instant>>,
) -> Round {
    // 1. Queue up to `window` entries, oldest first.
    let mut in_flight = Vec::new();
    let mut failed = false;
    let mut read = 0usize;
    for item in shared.entries.iter().take(window) {
        read += 1;
        let (key, value) = match item {
            Ok(item) => item,
            Err(error) => {
                tracing::error!(path = %shared.path.display(), error = %error, "Spool read failed.");
                failed = true;
                break;
            }
        };
        let size = value.len() as u64;
        let entry = match Entry::decode(&value) {
            Ok(entry) => entry,
            Err(error) => {
                set_aside(shared, &key, &value, &error.to_string());
                continue;
            }
        };
        match shared
            .publisher
            .enqueue_json(&entry.payload, entry.trace.as_ref())
        {
            Ok(pending) => in_flight.push(InFlight { key, size, pending }),
            Err(error @ (PublishError::Invalid(_) | PublishError::Rejected(_))) => {
                set_aside(shared, &key, &value, &error.to_string());
            }
            Err(error) => {
                tracing::warn!(
                    path = %shared.path.display(),
                    error = %error,
                    "Spool forwarder could not queue a record; it retries after a backoff."
                );
                failed = true;
                break;
            }
        }
    }
    if read == 0 {
        return Round::Empty;
    }

    // 2. Await acknowledgements in order and remove each acknowledged entry.
    let mut first_error = None;
    for record in in_flight {
        let mut acknowledgement = std::pin::pin!(record.pending.acknowledged());
        let acknowledged = loop {
            // Shutdown may start while this round waits; from then on the wait is bounded.
            let deadline = *stop.borrow();
            match deadline {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, &mut acknowledgement).await {
                        Ok(result) => break result,
                        // Left in the spool; librdkafka may still deliver it, so the next
                        // start may send it a second time.
                        Err(_) => return Round::Failed,
                    }
                }
                None => tokio::select! {
                    result = &mut acknowledgement => break result,
                    _ = stop.changed() => {}
                },
            }
        };
        match acknowledged {
            Ok(_) => remove(shared, &record.key, record.size),
            Err(error) => {
                failed = true;
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        tracing::warn!(
            path = %shared.path.display(),
            error = %error,
            backlog_entries = shared.entries.len(),
            backlog_bytes = shared.used_bytes.load(Ordering::Relaxed),
            "Kafka did not acknowledge spooled records; the forwarder retries after a backoff."
        );
    }
    if failed {
        Round::Failed
    } else {
        Round::Progress
    }
}

fn remove(shared: &Shared, key: &[u8], size: u64) {
    match shared.entries.remove(key) {
        Ok(Some(_)) => {
            shared.used_bytes.fetch_sub(size, Ordering::SeqCst);
            shared.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        }
        Ok(None) => {}
        Err(error) => {
            tracing::error!(path = %shared.path.display(), error = %error, "Spool removal failed; the entry may be sent again.");
        }
    }
}

/// Moves an entry that can never be sent to the quarantine tree, so it keeps neither
/// its partition's later records nor the spool's space.
fn set_aside(shared: &Shared, key: &sled::IVec, value: &[u8], reason: &str) {
    tracing::error!(
        path = %shared.path.display(),
        sequence = super::sequence_of(key),
        error = reason,
        "Spool entry cannot be sent and was moved to the quarantine tree."
    );
    let mut stored = reason.as_bytes().to_vec();
    stored.push(0);
    stored.extend_from_slice(value);
    if let Err(error) = shared.quarantine.insert(key, stored) {
        tracing::error!(path = %shared.path.display(), error = %error, "Spool quarantine write failed; the entry stays in place.");
        return;
    }
    remove(shared, key, value.len() as u64);
    shared.counters.forwarded.fetch_sub(1, Ordering::Relaxed);
    shared.counters.quarantined.fetch_add(1, Ordering::Relaxed);
}
