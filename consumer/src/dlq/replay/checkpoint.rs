//! The replay checkpoint: a local JSON file that lets an interrupted replay resume.
//!
//! The file stores the replay id, what the replay selects (dead-letter topic, filter and
//! target), the planned offset ranges, the next unread offset of each partition, and the
//! high watermarks of each target topic before the first record was produced.
//!
//! Progress is saved every [`SAVE_INTERVAL_RECORDS`] records and at the end, so a crash
//! can lose the last few offsets. Resuming therefore first reads the target topics from
//! the saved watermarks and skips every dead letter whose copy carries this replay's id in
//! its `txnotify-replay-source` header. Together these replay nothing twice.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dlq::filter::Filter;
use crate::dlq::reader::PartitionRange;

/// Records between two checkpoint saves.
pub const SAVE_INTERVAL_RECORDS: u64 = 50;

/// Format version written to the file.
const VERSION: u32 = 1;

/// Counts of a replay, also in its audit record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayCounts {
    /// Dead letters that matched the filter.
    pub matched: u64,
    /// Dead letters copied to a target topic, including those found already copied when
    /// resuming.
    pub replayed: u64,
    /// Dead letters found already copied by an interrupted run of the same replay.
    pub found_replayed: u64,
    /// Rejected because their replay count reached the cap.
    pub rejected_cap: u64,
    /// Rejected because their class is `invalid` and `--include-invalid` was not given.
    pub rejected_invalid: u64,
    /// Rejected because they name no origin topic and the target is the origin.
    pub rejected_no_origin: u64,
    /// Skipped because a later dead letter of the same event has a higher replay count.
    pub superseded: u64,
}

impl ReplayCounts {
    /// Returns the rejected total.
    pub fn rejected(&self) -> u64 {
        self.rejected_cap + self.rejected_invalid + self.rejected_no_origin
    }
}

/// Saved state of one replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version.
    pub version: u32,
    /// Replay id, written to every copy.
    pub replay_id: String,
    /// Dead-letter topic.
    pub dlq_topic: String,
    /// The filter as resolved when the replay started; relative times stay fixed.
    pub filter: Filter,
    /// The filter options as given, compared on resume.
    pub filter_text: String,
    /// The target as given, compared on resume.
    pub target: String,
    /// Offsets planned when the replay started.
    pub ranges: Vec<PartitionRange>,
    /// Next offset to read in each partition.
    pub next: BTreeMap<i32, i64>,
    /// High watermarks of each target topic's partitions before the first copy.
    pub target_starts: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Counts so far.
    pub counts: ReplayCounts,
    /// Start of the first run, in epoch milliseconds.
    pub started_at_ms: i64,
    /// Whether every planned record was read.
    pub completed: bool,
}

/// Error reading, writing or matching a checkpoint file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read or written.
    #[error("failed to {action} checkpoint {path}: {error}")]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// File path.
        path: PathBuf,
        /// I/O error.
        error: std::io::Error,
    },
    /// The file is not a checkpoint of this version.
    #[error("checkpoint {path} is not a valid replay checkpoint: {reason}; move it away to start a new replay")]
    Invalid {
        /// File path.
        path: PathBuf,
        /// Description of the problem.
        reason: String,
    },
    /// The file belongs to a replay with other settings.
    #[error("checkpoint {path} belongs to replay {replay_id} with {field} {saved:?}, not {given:?}; repeat that replay's options to resume it, or pass another --checkpoint file")]
    Mismatch {
        /// File path.
        path: PathBuf,
        /// Replay id in the file.
        replay_id: String,
        /// Setting that differs.
        field: &'static str,
        /// Saved value.
        saved: String,
        /// Value given now.
        given: String,
    },
}

impl Checkpoint {
    /// Creates the state of a new replay.
    pub fn new(
        replay_id: String,
        dlq_topic: String,
        filter: Filter,
        filter_text: String,
        target: String,
        ranges: Vec<PartitionRange>,
        started_at_ms: i64,
    ) -> Self {
        let next = ranges
            .iter()
            .map(|range| (range.partition, range.start))
            .collect();
        Self {
            version: VERSION,
            replay_id,
            dlq_topic,
            filter,
            filter_text,
            target,
            ranges,
            next,
            target_starts: BTreeMap::new(),
            counts: ReplayCounts::default(),
            started_at_ms,
            completed: false,
        }
    }

    /// Loads the checkpoint at `path`, or returns `None` when the file does not exist.
    pub fn load(path: &Path) -> Result<Option<Self>, CheckpointError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(CheckpointError::Io {
                    action: "read",
                    path: path.to_owned(),
                    error,
                })
            }
        };
        let checkpoint: Checkpoint =
            serde_json::from_str(&text).map_err(|error| CheckpointError::Invalid {
                path: path.to_owned(),
                reason: error.to_string(),
            })?;
        if checkpoint.version != VERSION {
            return Err(CheckpointError::Invalid {
                path: path.to_owned(),
                reason: format!(
                    "version {} is not the supported {VERSION}",
                    checkpoint.version
                ),
            });
        }
        Ok(Some(checkpoint))
    }

    /// Checks that this checkpoint belongs to a replay of `dlq_topic` with the same
    /// filter options and target.
    pub fn check_matches(
        &self,
        path: &Path,
        dlq_topic: &str,
        filter_text: &str,
        target: &str,
    ) -> Result<(), CheckpointError> {
        let fields = [
            ("dead-letter topic", &self.dlq_topic, dlq_topic),
            ("filter", &self.filter_text, filter_text),
            ("target", &self.target, target),
        ];
        for (field, saved, given) in fields {
            if saved != given {
                return Err(CheckpointError::Mismatch {
                    path: path.to_owned(),
                    replay_id: self.replay_id.clone(),
                    field,
                    saved: saved.clone(),
                    given: given.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Writes the checkpoint to `path` atomically: a synced temporary file renamed over
    /// the old one.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let io_error = |error| CheckpointError::Io {
            action: "write",
            path: path.to_owned(),
            error,
        };
        let text = serde_json::to_vec_pretty(self).expect("a checkpoint serializes to JSON");
        let temporary = path.with_extension("tmp");
        let mut file = std::fs::File::create(&temporary).map_err(io_error)?;
        file.write_all(&text).map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
        std::fs::rename(&temporary, path).map_err(io_error)
    }

    /// Returns the ranges still to read.
    pub fn remaining(&self) -> Vec<PartitionRange> {
        self.ranges
            .iter()
            .map(|range| PartitionRange {
                start: self
                    .next
                    .get(&range.partition)
                    .copied()
                    .unwrap_or(range.start)
                    .max(range.start),
                ..*range
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> Checkpoint {
        Checkpoint::new(
            "r-1".into(),
            "g.dlq".into(),
            Filter::default(),
            "--class exhausted".into(),
            "origin".into(),
            vec![
                PartitionRange {
                    partition: 0,
                    start: 3,
                    end: 10,
                },
                PartitionRange {
                    partition: 1,
                    start: 0,
                    end: 4,
                },
            ],
            1_000,
        )
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.json");
        assert!(Checkpoint::load(&path).unwrap().is_none());

        let mut saved = checkpoint();
        saved.next.insert(0, 7);
        saved.counts.replayed = 4;
        saved
            .target_starts
            .insert("transactions.v1".into(), BTreeMap::from([(0, 12), (1, 30)]));
        saved.save(&path).unwrap();
        let loaded = Checkpoint::load(&path).unwrap().unwrap();
        assert_eq!(loaded, saved);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn remaining_starts_at_next_offsets() {
        let mut saved = checkpoint();
        saved.next.insert(0, 7);
        let remaining = saved.remaining();
        assert_eq!(remaining[0].start, 7);
        assert_eq!(remaining[0].end, 10);
        assert_eq!(remaining[1].start, 0);
    }

    #[test]
    fn mismatch_names_the_setting() {
        let saved = checkpoint();
        let path = Path::new("replay.json");
        saved
            .check_matches(path, "g.dlq", "--class exhausted", "origin")
            .unwrap();
        let cases = [
            (
                "other.dlq",
                "--class exhausted",
                "origin",
                "dead-letter topic",
            ),
            ("g.dlq", "--class invalid", "origin", "filter"),
            ("g.dlq", "--class exhausted", "retry", "target"),
        ];
        for (topic, filter, target, field) in cases {
            let error = saved
                .check_matches(path, topic, filter, target)
                .unwrap_err()
                .to_string();
            assert!(error.contains(field), "{error}");
            assert!(error.contains("r-1"), "{error}");
        }
    }

    #[test]
    fn garbage_file_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.json");
        std::fs::write(&path, "{}").unwrap();
        let error = Checkpoint::load(&path).unwrap_err().to_string();
        assert!(error.contains("not a valid replay checkpoint"), "{error}");
    }
}
