//! Dedupe ledger: the record of which events this channel has already notified.
//!
//! The ledger turns at-least-once consumption into one notification per `event_id`.
//! Every entry moves through compare-and-swap transitions only, so two workers that
//! race on the same event can never both win a reservation:
//!
//! ```text
//! absent | expired --reserve--> reserved(owner)
//! reserved(owner) --mark_sent--> sent
//! reserved(owner) --mark_unknown--> unknown-outcome
//! reserved(owner) --release--> absent
//! reserved(other owner) --reserve--> unknown-outcome
//! ```
//!
//! A reservation is made durable by [`Ledger::sync`] before the message is sent, so a
//! worker killed mid-send leaves a reservation of an owner that no longer runs. The next
//! worker cannot know whether the server accepted that message, so the entry becomes
//! `unknown-outcome` instead of being sent a second time. Each ledger directory has one
//! owner at a time, because sled locks it.
//!
//! Writes are never flushed one by one: [`Ledger::sync`] coalesces concurrent callers
//! into one flush, and offsets advance only after the flush that covers their outcome.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Failure to open, read or write the ledger store.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The store could not be opened, for example because another process holds its lock
    /// or its files are corrupt.
    #[error(
        "failed to open the ledger at {path}: {source}; if another notifier uses this \
         directory, give each worker its own ledger.path; if the files are corrupt, move the \
         directory aside and restart, knowing that an empty ledger no longer remembers which \
         events were sent"
    )]
    Open {
        /// Directory of the store.
        path: String,
        /// Cause reported by sled.
        #[source]
        source: sled::Error,
    },
    /// A read, write or flush failed.
    #[error("ledger i/o failed: {0}")]
    Io(#[from] sled::Error),
    /// An entry could not be decoded; the store was written by an incompatible version.
    #[error("ledger entry for event {event_id} is unreadable: {message}")]
    Corrupt {
        /// Event whose entry failed to decode.
        event_id: Uuid,
        /// Decoder message.
        message: String,
    },
    /// A transition found the entry in a state it did not expect.
    #[error("ledger entry for event {event_id} is not reserved by this worker")]
    NotReserved {
        /// Event whose entry was expected to be reserved.
        event_id: Uuid,
    },
}

/// State of one ledger entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum EntryState {
    /// A worker holds the event and may be sending it now.
    Reserved {
        /// Identity of the worker that reserved the entry; it changes with every process
        /// start and every partition assignment.
        owner: u64,
    },
    /// The SMTP server accepted the message.
    Sent,
    /// The send timed out after the message content was transmitted, so the server may
    /// or may not have accepted it.
    UnknownOutcome,
}

/// One ledger entry, stored as JSON under the 16 bytes of the `event_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Current state.
    #[serde(flatten)]
    pub state: EntryState,
    /// Time of the last transition, in milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
    /// Time after which the entry no longer deduplicates, in milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
    /// First line of the SMTP server's final reply, for entries in state `sent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
}

/// Result of [`Ledger::reserve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The caller now owns the entry and may send.
    Acquired,
    /// The event was already notified: a duplicate.
    AlreadySent,
    /// An earlier send ended with an unknown outcome.
    UnknownOutcome,
    /// A worker that no longer runs had reserved the event and may have sent it; the
    /// entry is now `unknown-outcome`.
    Interrupted,
}

/// Settings of the ledger store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Directory of the sled store. Each worker needs its own.
    pub path: String,
    /// How long a `sent` entry keeps deduplicating, in seconds.
    pub ttl_secs: u64,
    /// Memory sled may use for its page cache, in bytes.
    pub cache_capacity_bytes: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            path: "txnotify-ledger".to_owned(),
            ttl_secs: 7 * 24 * 60 * 60,
            cache_capacity_bytes: 64 * 1024 * 1024,
        }
    }
}

impl LedgerConfig {
    /// Checks the settings and returns a message naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.path.trim().is_empty() {
            return Err(
                "notifier.ledger.path is empty; set it to a directory the worker can write".into(),
            );
        }
        if self.cache_capacity_bytes < 1024 * 1024 {
            return Err(format!(
                "notifier.ledger.cache_capacity_bytes is {}; set it to 1048576 (1 MiB) or more",
                self.cache_capacity_bytes
            ));
        }
        if self.ttl_secs == 0 {
            return Err("notifier.ledger.ttl_secs is 0; set it to the dedupe window in seconds, for example 604800 (7 days)".into());
        }
        Ok(())
    }
}

/// The sled-backed dedupe ledger.
#[derive(Clone)]
pub struct Ledger {
    db: sled::Db,
    ttl: Duration,
    /// Count of writes so far, compared with `flushed` to coalesce flushes.
    writes: Arc<AtomicU64>,
    /// Value of `writes` covered by the last finished flush.
    flushed: Arc<tokio::sync::Mutex<u64>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Opens (or creates) the store described by `config`.
    pub fn open(config: &LedgerConfig) -> Result<Self, LedgerError> {
        Self::open_with(
            Path::new(&config.path),
            Duration::from_secs(config.ttl_secs),
            config.cache_capacity_bytes,
        )
    }

    /// Opens (or creates) a store at `path` with the given expiry time and the default cache.
    pub fn open_path(path: &Path, ttl: Duration) -> Result<Self, LedgerError> {
        Self::open_with(path, ttl, LedgerConfig::default().cache_capacity_bytes)
    }

    fn open_with(
        path: &Path,
        ttl: Duration,
        cache_capacity_bytes: u64,
    ) -> Result<Self, LedgerError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            // Durability comes from explicit batch flushes, not from a timer.
            .flush_every_ms(None)
            .open()
            .map_err(|source| LedgerError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self {
            db,
            ttl,
            writes: Arc::new(AtomicU64::new(0)),
            flushed: Arc::new(tokio::sync::Mutex::new(0)),
        })
    }

    /// Returns the entry for `event_id`, if any, whether or not it has expired.
    pub fn get(&self, event_id: Uuid) -> Result<Option<Entry>, LedgerError> {
        match self.db.get(event_id.as_bytes())? {
            Some(bytes) => decode_entry(event_id, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Reserves `event_id` for `owner` unless it is sent, unknown, or held by a live owner.
    pub fn reserve(
        &self,
        event_id: Uuid,
        owner: u64,
        now_ms: i64,
    ) -> Result<Reservation, LedgerError> {
        let key = event_id.as_bytes();
        loop {
            let current = self.db.get(key)?;
            let mut next_state = EntryState::Reserved { owner };
            if let Some(bytes) = &current {
                let entry = decode_entry(event_id, bytes)?;
                let expired = entry.expires_at_ms <= now_ms;
                if !expired {
                    match entry.state {
                        EntryState::Sent => return Ok(Reservation::AlreadySent),
                        EntryState::UnknownOutcome => return Ok(Reservation::UnknownOutcome),
                        // The owner's own reservation: an earlier attempt of this worker.
                        EntryState::Reserved { owner: holder } if holder == owner => {}
                        EntryState::Reserved { .. } => next_state = EntryState::UnknownOutcome,
                    }
                }
            }

            let next = Entry {
                state: next_state,
                updated_at_ms: now_ms,
                expires_at_ms: now_ms.saturating_add(duration_ms(self.ttl)),
                reply: None,
            };
            let swapped =
                self.db
                    .compare_and_swap(key, current.as_deref(), Some(encode_entry(&next)))?;
            if swapped.is_ok() {
                self.writes.fetch_add(1, Ordering::SeqCst);
                return Ok(match next_state {
                    EntryState::UnknownOutcome => Reservation::Interrupted,
                    _ => Reservation::Acquired,
                });
            }
            // Another writer changed the entry between the read and the swap: read again.
        }
    }

    /// Accepts an earlier unknown outcome as resolved by a new send, taking the entry for `owner`.
    pub fn reserve_after_unknown(
        &self,
        event_id: Uuid,
        owner: u64,
        now_ms: i64,
    ) -> Result<bool, LedgerError> {
        self.transition(event_id, now_ms, None, |entry| {
            (entry.state == EntryState::UnknownOutcome).then_some(EntryState::Reserved { owner })
        })
    }

    /// Moves a reservation of `owner` to `sent`, keeping the server's reply.
    pub fn mark_sent(
        &self,
        event_id: Uuid,
        owner: u64,
        reply: &str,
        now_ms: i64,
    ) -> Result<(), LedgerError> {
        let moved = self.transition(event_id, now_ms, Some(reply), |entry| {
            (entry.state == EntryState::Reserved { owner }).then_some(EntryState::Sent)
        })?;
        if moved {
            Ok(())
        } else {
            Err(LedgerError::NotReserved { event_id })
        }
    }

    /// Moves a reservation of `owner` to `unknown-outcome`.
    pub fn mark_unknown(&self, event_id: Uuid, owner: u64, now_ms: i64) -> Result<(), LedgerError> {
        let moved = self.transition(event_id, now_ms, None, |entry| {
            (entry.state == EntryState::Reserved { owner }).then_some(EntryState::UnknownOutcome)
        })?;
        if moved {
            Ok(())
        } else {
            Err(LedgerError::NotReserved { event_id })
        }
    }

    /// Removes a reservation of `owner`, so that a later attempt can reserve the event again.
    pub fn release(&self, event_id: Uuid, owner: u64) -> Result<(), LedgerError> {
        let key = event_id.as_bytes();
        loop {
            let Some(current) = self.db.get(key)? else {
                return Ok(());
            };
            let entry = decode_entry(event_id, &current)?;
            if entry.state != (EntryState::Reserved { owner }) {
                return Ok(());
            }
            if self
                .db
                .compare_and_swap(key, Some(current), None as Option<&[u8]>)?
                .is_ok()
            {
                self.writes.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
        }
    }

    /// Merges an entry read from the changelog topic. A terminal remote entry (`sent` or
    /// `unknown-outcome`) replaces a missing, expired, reserved or older local entry; a
    /// local terminal entry that is newer stays. Returns true when the entry changed.
    pub fn apply_remote(
        &self,
        event_id: Uuid,
        remote: &Entry,
        now_ms: i64,
    ) -> Result<bool, LedgerError> {
        if matches!(remote.state, EntryState::Reserved { .. }) || remote.expires_at_ms <= now_ms {
            return Ok(false);
        }
        let key = event_id.as_bytes();
        loop {
            let current = self.db.get(key)?;
            if let Some(bytes) = &current {
                let local = decode_entry(event_id, bytes)?;
                let local_terminal = !matches!(local.state, EntryState::Reserved { .. });
                let local_live = local.expires_at_ms > now_ms;
                if local_terminal && local_live && local.updated_at_ms >= remote.updated_at_ms {
                    return Ok(false);
                }
            }
            if self
                .db
                .compare_and_swap(key, current.as_deref(), Some(encode_entry(remote)))?
                .is_ok()
            {
                self.writes.fetch_add(1, Ordering::SeqCst);
                return Ok(true);
            }
        }
    }

    /// Returns the next changelog offset to read for `partition`, if a restore finished before.
    pub fn changelog_checkpoint(&self, partition: i32) -> Result<Option<i64>, LedgerError> {
        let tree = self.db.open_tree(CHECKPOINT_TREE)?;
        Ok(tree
            .get(partition.to_be_bytes())?
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_ref()).ok())
            .map(i64::from_be_bytes))
    }

    /// Records that the changelog of `partition` was applied up to, not including, `offset`.
    pub fn set_changelog_checkpoint(&self, partition: i32, offset: i64) -> Result<(), LedgerError> {
        let tree = self.db.open_tree(CHECKPOINT_TREE)?;
        tree.insert(partition.to_be_bytes(), &offset.to_be_bytes())?;
        Ok(())
    }

    /// Returns the entry stored for `event_id` after a transition, for the changelog.
    pub fn entry(&self, event_id: Uuid) -> Result<Entry, LedgerError> {
        self.get(event_id)?
            .ok_or(LedgerError::NotReserved { event_id })
    }

    /// Writes every change so far to disk and returns the number of bytes flushed.
    pub async fn flush(&self) -> Result<usize, LedgerError> {
        Ok(self.db.flush_async().await?)
    }

    /// Makes every write made before the call durable. Concurrent callers share one
    /// flush: a caller whose writes a finished flush already covered returns at once.
    pub async fn sync(&self) -> Result<(), LedgerError> {
        let target = self.writes.load(Ordering::SeqCst);
        let mut flushed = self.flushed.lock().await;
        if *flushed >= target {
            return Ok(());
        }
        let covered = self.writes.load(Ordering::SeqCst);
        self.db.flush_async().await?;
        *flushed = covered;
        Ok(())
    }

    /// Deletes entries whose expiry time is at or before `now_ms` and returns how many went.
    pub fn purge_expired(&self, now_ms: i64) -> Result<usize, LedgerError> {
        let mut removed = 0;
        for item in self.db.iter() {
            let (key, value) = item?;
            let Ok(entry) = serde_json::from_slice::<Entry>(&value) else {
                continue;
            };
            if entry.expires_at_ms <= now_ms
                && self
                    .db
                    .compare_and_swap(&key, Some(value), None as Option<&[u8]>)?
                    .is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Returns the number of entries, expired ones included.
    pub fn len(&self) -> usize {
        self.db.len()
    }

    /// Returns true when the ledger has no entries.
    pub fn is_empty(&self) -> bool {
        self.db.is_empty()
    }

    fn transition(
        &self,
        event_id: Uuid,
        now_ms: i64,
        reply: Option<&str>,
        next_state: impl Fn(&Entry) -> Option<EntryState>,
    ) -> Result<bool, LedgerError> {
        let key = event_id.as_bytes();
        loop {
            let Some(current) = self.db.get(key)? else {
                return Ok(false);
            };
            let entry = decode_entry(event_id, &current)?;
            let Some(state) = next_state(&entry) else {
                return Ok(false);
            };
            let next = Entry {
                state,
                updated_at_ms: now_ms,
                expires_at_ms: now_ms.saturating_add(duration_ms(self.ttl)),
                reply: reply.map(str::to_owned).or(entry.reply),
            };
            if self
                .db
                .compare_and_swap(key, Some(current), Some(encode_entry(&next)))?
                .is_ok()
            {
                self.writes.fetch_add(1, Ordering::SeqCst);
                return Ok(true);
            }
        }
    }
}

/// Name of the sled tree that keeps, per changelog partition, the next offset to restore from.
const CHECKPOINT_TREE: &str = "changelog-checkpoints";

/// Encodes an entry as stored in the ledger and in the changelog topic.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    serde_json::to_vec(entry).expect("ledger entries always serialize")
}

/// Decodes an entry stored in the ledger or read from the changelog topic.
pub fn decode_entry(event_id: Uuid, bytes: &[u8]) -> Result<Entry, LedgerError> {
    serde_json::from_slice(bytes).map_err(|error| LedgerError::Corrupt {
        event_id,
        message: error.to_string(),
    })
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open_path(dir.path(), Duration::from_secs(60)).unwrap();
        (dir, ledger)
    }

    #[test]
    fn reserve_then_sent_is_duplicate() {
        let (_dir, ledger) = ledger();
        let id = Uuid::new_v4();
        assert_eq!(ledger.reserve(id, 1, 1_000).unwrap(), Reservation::Acquired);
        ledger.mark_sent(id, 1, "250 ok", 1_100).unwrap();
        assert_eq!(
            ledger.reserve(id, 2, 1_200).unwrap(),
            Reservation::AlreadySent
        );
        assert_eq!(
            ledger.get(id).unwrap().unwrap().reply.as_deref(),
            Some("250 ok")
        );
    }

    #[test]
    fn own_reservation_is_acquired_again() {
        let (_dir, ledger) = ledger();
        let id = Uuid::new_v4();
        ledger.reserve(id, 1, 1_000).unwrap();
        assert_eq!(ledger.reserve(id, 1, 2_000).unwrap(), Reservation::Acquired);
    }

    #[test]
    fn other_owners_reservation_becomes_unknown() {
        let (_dir, ledger) = ledger();
        let id = Uuid::new_v4();
        ledger.reserve(id, 1, 1_000).unwrap();
        assert_eq!(
            ledger.reserve(id, 2, 2_000).unwrap(),
            Reservation::Interrupted
        );
        assert_eq!(
            ledger.get(id).unwrap().unwrap().state,
            EntryState::UnknownOutcome
        );
        assert!(ledger.mark_sent(id, 1, "250", 2_001).is_err());
        assert_eq!(
            ledger.reserve(id, 2, 2_002).unwrap(),
            Reservation::UnknownOutcome
        );
    }

    #[tokio::test]
    async fn sync_makes_reservation_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        {
            let ledger = Ledger::open_path(dir.path(), Duration::from_secs(60)).unwrap();
            ledger.reserve(id, 1, 1_000).unwrap();
            ledger.sync().await.unwrap();
            ledger.sync().await.unwrap();
        }
        let ledger = Ledger::open_path(dir.path(), Duration::from_secs(60)).unwrap();
        assert_eq!(
            ledger.reserve(id, 2, 2_000).unwrap(),
            Reservation::Interrupted
        );
    }

    #[test]
    fn release_allows_new_reservation() {
        let (_dir, ledger) = ledger();
        let id = Uuid::new_v4();
        ledger.reserve(id, 1, 1_000).unwrap();
        ledger.release(id, 1).unwrap();
        assert!(ledger.get(id).unwrap().is_none());
        assert_eq!(ledger.reserve(id, 2, 1_001).unwrap(), Reservation::Acquired);
    }

    #[test]
    fn unknown_outcome_is_reported() {
        let (_dir, ledger) = ledger();
        let id = Uuid::new_v4();
        ledger.reserve(id, 1, 1_000).unwrap();
        ledger.mark_unknown(id, 1, 1_001).unwrap();
        assert_eq!(
            ledger.reserve(id, 1, 1_002).unwrap(),
            Reservation::UnknownOutcome
        );
        assert!(ledger.reserve_after_unknown(id, 3, 1_003).unwrap());
        ledger.mark_sent(id, 3, "250", 1_004).unwrap();
    }

    #[test]
    fn expired_sent_entry_no_longer_deduplicates() {
        let (_dir, ledger) = ledger();
        let id = Uuid::new_v4();
        ledger.reserve(id, 1, 0).unwrap();
        ledger.mark_sent(id, 1, "250", 0).unwrap();
        assert_eq!(
            ledger.reserve(id, 2, 60_001).unwrap(),
            Reservation::Acquired
        );
    }

    #[test]
    fn purge_removes_only_expired() {
        let (_dir, ledger) = ledger();
        let old = Uuid::new_v4();
        let fresh = Uuid::new_v4();
        ledger.reserve(old, 1, 0).unwrap();
        ledger.reserve(fresh, 1, 50_000).unwrap();
        assert_eq!(ledger.purge_expired(60_000).unwrap(), 1);
        assert!(ledger.get(old).unwrap().is_none());
        assert!(ledger.get(fresh).unwrap().is_some());
    }

    #[tokio::test]
    async fn entries_survive_reopen_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::new_v4();
        {
            let ledger = Ledger::open_path(dir.path(), Duration::from_secs(60)).unwrap();
            ledger.reserve(id, 1, 1_000).unwrap();
            ledger.mark_sent(id, 1, "250", 1_000).unwrap();
            ledger.flush().await.unwrap();
        }
        let ledger = Ledger::open_path(dir.path(), Duration::from_secs(60)).unwrap();
        assert_eq!(
            ledger.reserve(id, 2, 2_000).unwrap(),
            Reservation::AlreadySent
        );
    }

    #[test]
    fn remote_sent_entry_replaces_reservation() {
        let (_dir, ledger) = ledger();
        let id = Uuid::new_v4();
        ledger.reserve(id, 1, 1_000).unwrap();
        let remote = Entry {
            state: EntryState::Sent,
            updated_at_ms: 900,
            expires_at_ms: 90_000,
            reply: Some("250".into()),
        };
        assert!(ledger.apply_remote(id, &remote, 1_000).unwrap());
        assert_eq!(
            ledger.reserve(id, 2, 1_100).unwrap(),
            Reservation::AlreadySent
        );
    }

    #[test]
    fn newer_local_entry_wins_over_remote() {
        let (_dir, ledger) = ledger();
        let id = Uuid::new_v4();
        ledger.reserve(id, 1, 1_000).unwrap();
        ledger.mark_sent(id, 1, "250 local", 2_000).unwrap();
        let older = Entry {
            state: EntryState::UnknownOutcome,
            updated_at_ms: 1_500,
            expires_at_ms: 90_000,
            reply: None,
        };
        assert!(!ledger.apply_remote(id, &older, 2_500).unwrap());
        assert_eq!(ledger.get(id).unwrap().unwrap().state, EntryState::Sent);
    }

    #[test]
    fn expired_or_reserved_remote_entries_are_ignored() {
        let (_dir, ledger) = ledger();
        let id = Uuid::new_v4();
        let expired = Entry {
            state: EntryState::Sent,
            updated_at_ms: 0,
            expires_at_ms: 10,
            reply: None,
        };
        assert!(!ledger.apply_remote(id, &expired, 20).unwrap());
        let reserved = Entry {
            state: EntryState::Reserved { owner: 3 },
            ..expired
        };
        assert!(!ledger.apply_remote(id, &reserved, 0).unwrap());
        assert!(ledger.get(id).unwrap().is_none());
    }

    #[test]
    fn checkpoints_are_kept_per_partition() {
        let (_dir, ledger) = ledger();
        assert_eq!(ledger.changelog_checkpoint(0).unwrap(), None);
        ledger.set_changelog_checkpoint(0, 42).unwrap();
        ledger.set_changelog_checkpoint(1, 7).unwrap();
        assert_eq!(ledger.changelog_checkpoint(0).unwrap(), Some(42));
        assert_eq!(ledger.changelog_checkpoint(1).unwrap(), Some(7));
        assert_eq!(ledger.len(), 0, "checkpoints are not ledger entries");
    }

    #[test]
    fn second_open_of_same_directory_fails_clearly() {
        let (dir, _ledger) = ledger();
        let error = Ledger::open_path(dir.path(), Duration::from_secs(1)).unwrap_err();
        assert!(
            error.to_string().contains("failed to open the ledger"),
            "{error}"
        );
    }
}
