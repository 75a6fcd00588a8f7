//! Contiguous offset watermarks per partition.
//!
//! Records finish out of order because different keys run concurrently. An offset is
//! stored for commit only when every earlier record of its partition has finished, so a
//! slow record holds the watermark and is never skipped by a commit.

use std::collections::{BTreeSet, HashMap};

/// A topic and partition.
pub type TopicPartition = (String, i32);

#[derive(Debug, Default)]
struct PartitionState {
    in_flight: BTreeSet<i64>,
    done: BTreeSet<i64>,
    last_started: Option<i64>,
    watermark: Option<i64>,
    /// Lowest abandoned offset; the watermark stays below it.
    abandoned: Option<i64>,
}

/// Tracks started and finished offsets and computes the contiguous watermark.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, PartitionState>,
}

impl OffsetTracker {
    /// Creates an empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `offset` as started. Returns false for an offset at or below one already
    /// started on this partition, which is a redelivery the caller should drop.
    pub fn start(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
        let state = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_default();
        if state.last_started.is_some_and(|last| offset <= last) {
            return false;
        }
        state.last_started = Some(offset);
        state.in_flight.insert(offset);
        true
    }

    /// Marks `offset` finished and returns the new watermark (the highest offset below which
    /// every started record has finished) when it advanced.
    pub fn finish(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let state = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        if !state.in_flight.remove(&offset) {
            return None;
        }
        state.done.insert(offset);

        let mut limit = match state.in_flight.first() {
            Some(&oldest_running) => oldest_running - 1,
            None => i64::MAX,
        };
        if let Some(abandoned) = state.abandoned {
            limit = limit.min(abandoned - 1);
        }
        let candidate = state.done.range(..=limit).next_back().copied()?;
        state.done = state.done.split_off(&(candidate + 1));
        if state.watermark.is_some_and(|current| candidate <= current) {
            return None;
        }
        state.watermark = Some(candidate);
        Some(candidate)
    }

    /// Drops a started record that will not be processed here, such as a held retry record
    /// of a revoked partition. The watermark never passes it, so it is read again later.
    pub fn abandon(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(state) = self.partitions.get_mut(&(topic.to_owned(), partition)) {
            if state.in_flight.remove(&offset) {
                state.abandoned = Some(state.abandoned.map_or(offset, |first| first.min(offset)));
            }
        }
    }

    /// Forgets a partition, for example after it was revoked.
    pub fn forget(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_owned(), partition));
    }

    /// Returns the number of records started and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.partitions
            .values()
            .map(|state| state.in_flight.len())
            .sum()
    }

    /// Returns the number of started and unfinished records of one partition.
    pub fn in_flight_on(&self, topic: &str, partition: i32) -> usize {
        self.partitions
            .get(&(topic.to_owned(), partition))
            .map_or(0, |state| state.in_flight.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_finishes_advance_each_time() {
        let mut tracker = OffsetTracker::new();
        for offset in 0..3 {
            assert!(tracker.start("t", 0, offset));
        }
        assert_eq!(tracker.finish("t", 0, 0), Some(0));
        assert_eq!(tracker.finish("t", 0, 1), Some(1));
        assert_eq!(tracker.finish("t", 0, 2), Some(2));
    }

    #[test]
    fn slow_record_holds_watermark() {
        let mut tracker = OffsetTracker::new();
        for offset in 10..15 {
            tracker.start("t", 0, offset);
        }
        assert_eq!(tracker.finish("t", 0, 11), None);
        assert_eq!(tracker.finish("t", 0, 12), None);
        assert_eq!(tracker.finish("t", 0, 14), None);
        assert_eq!(tracker.finish("t", 0, 10), Some(12));
        assert_eq!(tracker.finish("t", 0, 13), Some(14));
        assert_eq!(tracker.in_flight(), 0);
    }

    #[test]
    fn gaps_in_offsets_are_allowed() {
        let mut tracker = OffsetTracker::new();
        tracker.start("t", 0, 3);
        tracker.start("t", 0, 7);
        assert_eq!(tracker.finish("t", 0, 7), None);
        assert_eq!(tracker.finish("t", 0, 3), Some(7));
    }

    #[test]
    fn redelivered_offset_is_rejected() {
        let mut tracker = OffsetTracker::new();
        assert!(tracker.start("t", 1, 5));
        assert!(!tracker.start("t", 1, 5));
        assert!(!tracker.start("t", 1, 4));
        assert!(tracker.start("t", 0, 4));
    }

    #[test]
    fn partitions_are_independent() {
        let mut tracker = OffsetTracker::new();
        tracker.start("t", 0, 0);
        tracker.start("t", 1, 0);
        assert_eq!(tracker.finish("t", 1, 0), Some(0));
        assert_eq!(tracker.in_flight_on("t", 0), 1);
    }

    #[test]
    fn abandoned_record_caps_watermark() {
        let mut tracker = OffsetTracker::new();
        for offset in 0..4 {
            tracker.start("t", 0, offset);
        }
        assert_eq!(tracker.finish("t", 0, 0), Some(0));
        tracker.abandon("t", 0, 1);
        assert_eq!(tracker.finish("t", 0, 2), None);
        assert_eq!(tracker.finish("t", 0, 3), None);
        assert_eq!(tracker.in_flight_on("t", 0), 0);
    }

    #[test]
    fn forget_resets_partition() {
        let mut tracker = OffsetTracker::new();
        tracker.start("t", 0, 9);
        tracker.forget("t", 0);
        assert!(tracker.start("t", 0, 2));
        assert_eq!(tracker.finish("t", 0, 9), None);
    }
}
